-- KEYS: calls counters (see count_call). ARGV: seconds (at most 60). Returns, per counter, the
-- calls admitted in the last ARGV[1] whole seconds and the current one (the one under way counts
-- from its start: a lower bound of at most one second's calls).
local sec = math.floor(now / 1000)
local span = math.min(60, tonumber(ARGV[1]))
local out = {}
for i, key in ipairs(KEYS) do
  local total = 0
  local s = redis.call('HGETALL', key)
  local h = {}
  for j = 1, #s, 2 do h[s[j]] = tonumber(s[j + 1]) end
  for slot = 0, 63 do
    local t = h['t' .. slot]
    if t ~= nil and t > sec - span and t <= sec then total = total + (h['n' .. slot] or 0) end
  end
  out[i] = total
end
return out
