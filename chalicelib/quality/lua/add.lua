-- Store openers the caller found to be no duplicates, unless the job changed under them.
-- KEYS: 1 first8, 2 texts, 3 bands (as in lookup.lua), 4 seq (the job's last id)
-- ARGV: 1 ttl seconds, 2 bucket cap, 3 force ('1': no stamp check, as when seeding), then one
--       record per opener: its first-words key, its record (compared words, a line break, the
--       opener; see lookup.lua), n, its n band buckets, and (unless
--       forced) the n stamps lookup.lua returned for them
-- Returns, for the last record: {1, id, record} when an opener with the same first words is
-- stored already, {2} when a bucket gained an opener since the lookup (look again), else
-- {0, id}. Unforced, it stops at the first record that is not stored.
local cap, force = tonumber(ARGV[2]), ARGV[3] == '1'

local function add(first8, opener, n, at, stamps_at)
  local id = redis.call('HGET', KEYS[1], first8)
  if id then
    return {1, id, redis.call('HGET', KEYS[2], id) or ''}
  end
  local values = {}
  if n > 0 then
    values = redis.call('HMGET', KEYS[3], unpack(ARGV, at, at + n - 1))
  end
  if not force then
    for i = 1, n do
      local stamp = '0'
      if values[i] then
        stamp = string.sub(values[i], 1, string.find(values[i], '|', 1, true) - 1)
      end
      if stamp ~= ARGV[stamps_at + i - 1] then
        return {2}
      end
    end
  end
  id = tostring(redis.call('INCR', KEYS[4]))
  redis.call('HSET', KEYS[2], id, opener)
  redis.call('HSET', KEYS[1], first8, id)
  for i = 1, n do
    local value = values[i]
    if value then
      local bar = string.find(value, '|', 1, true)
      local adds = tonumber(string.sub(value, 1, bar - 1)) + 1
      local members = string.sub(value, bar + 1)
      local _, commas = string.gsub(members, ',', '')
      -- A full bucket keeps its first members: the work per opener stays bounded however many
      -- openers of the job share a bucket; only the count of adds (the stamp) goes on.
      if commas + 1 < cap then
        members = members .. ',' .. id
      end
      redis.call('HSET', KEYS[3], ARGV[at + i - 1], adds .. '|' .. members)
    else
      redis.call('HSET', KEYS[3], ARGV[at + i - 1], '1|' .. id)
    end
  end
  return {0, id}
end

local result = {0}
local at = 4
while at <= #ARGV do
  local n = tonumber(ARGV[at + 2])
  local stamps_at = at + 3 + n
  result = add(ARGV[at], ARGV[at + 1], n, at + 3, stamps_at)
  if force then
    at = stamps_at
  else
    at = stamps_at + n
    if result[1] ~= 0 then
      return result
    end
  end
end
for i = 1, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return result
