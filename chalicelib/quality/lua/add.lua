-- Store an opener the caller found to be no duplicate, unless the job changed under it.
-- KEYS: 1 first8, 2 texts, 3 bands (as in lookup.lua), 4 seq (the job's last id)
-- ARGV: 1 first-words key, 2 opener, 3 ttl seconds, 4 bucket cap, 5 force ('1': skip the
--       stamp check), 6 n, 7..6+n band buckets, 7+n..6+2n their stamps as lookup.lua saw them
-- Returns {1, id, text} when an opener with the same first words was stored meanwhile,
-- {2} when a bucket gained an opener since the lookup (look again), else {0, id}.
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then
  return {1, id, redis.call('HGET', KEYS[2], id) or ''}
end
local n = tonumber(ARGV[6])
local values = {}
if n > 0 then
  values = redis.call('HMGET', KEYS[3], unpack(ARGV, 7, 6 + n))
end
if ARGV[5] ~= '1' then
  for i = 1, n do
    local stamp = '0'
    if values[i] then
      stamp = string.sub(values[i], 1, string.find(values[i], '|', 1, true) - 1)
    end
    if stamp ~= ARGV[6 + n + i] then
      return {2}
    end
  end
end
id = tostring(redis.call('INCR', KEYS[4]))
redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
local cap = tonumber(ARGV[4])
for i = 1, n do
  local value = values[i]
  if value then
    local bar = string.find(value, '|', 1, true)
    local adds = tonumber(string.sub(value, 1, bar - 1)) + 1
    local members = string.sub(value, bar + 1)
    local _, commas = string.gsub(members, ',', '')
    -- A full bucket keeps its first members: the work per opener stays bounded however many
    -- openers of the job share a bucket; only the count of adds goes on (the stamp).
    if commas + 1 < cap then
      members = members .. ',' .. id
    end
    redis.call('HSET', KEYS[3], ARGV[6 + i], adds .. '|' .. members)
  else
    redis.call('HSET', KEYS[3], ARGV[6 + i], '1|' .. id)
  end
end
for i = 1, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return {0, id}
