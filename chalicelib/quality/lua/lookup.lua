-- What a new opener must be compared with (read only).
-- KEYS: 1 first8 (hash: first-words key -> id), 2 texts (hash: id -> record: the opener's
--       compared words, a line break, the opener), 3 bands (hash: band bucket -> "adds|id,id,...")
-- ARGV: 1 the opener's first-words key, 2.. its band buckets
-- Returns {1, id, record} when an opener with the same first words is stored, else
-- {0, stamps, ids, words}: each bucket's count of adds (compared again by add.lua), and the
-- compared words of the stored openers of those buckets, each once, with the line break that
-- ends them (the openers themselves stay here: the caller needs one only when it is repeated).
-- A record of an index written before the words were stored (no line break) is returned whole.
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then
  return {1, id, redis.call('HGET', KEYS[2], id) or ''}
end
local stamps, ids, seen = {}, {}, {}
if #ARGV > 1 then
  local values = redis.call('HMGET', KEYS[3], unpack(ARGV, 2))
  for i = 1, #ARGV - 1 do
    local value = values[i]
    if value then
      local bar = string.find(value, '|', 1, true)
      stamps[i] = string.sub(value, 1, bar - 1)
      for member in string.gmatch(string.sub(value, bar + 1), '[^,]+') do
        if not seen[member] then
          seen[member] = true
          ids[#ids + 1] = member
        end
      end
    else
      stamps[i] = '0'
    end
  end
end
local texts = {}
if #ids > 0 then
  texts = redis.call('HMGET', KEYS[2], unpack(ids))
  for i = 1, #ids do
    local text = texts[i]
    if not text then
      texts[i] = ''
    else
      local nl = string.find(text, '\n', 1, true)
      if nl then texts[i] = string.sub(text, 1, nl) end
    end
  end
end
return {0, stamps, ids, texts}
