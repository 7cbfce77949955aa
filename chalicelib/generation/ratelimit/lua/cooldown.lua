-- KEYS: requests bucket, tokens bucket, cooldown_until, limits. ARGV: ceiling rpm, ceiling tpm,
-- seconds, start rpm, period ms, decrease factor, lowest rpm, the budgets the 429 showed used up
-- ('requests', 'tokens', 'requests tokens'; '' when it did not say). Returns '<remaining ms>
-- <until ms> <cut>' (the pause in force, which a shorter new one never cuts; when it ends on the
-- server clock, in Unix milliseconds; 1 if this 429 cut a rate, else 0).

-- The multiplicative decrease: a 429 cuts the rate the controller runs at (`found`) by the
-- factor, at most once per period, so the burst of 429s that the calls already in flight bring
-- back counts as one signal, not as many cuts that would collapse the rate. `peak` remembers where
-- the 429 came (grow.lua returns there quickly, then probes past it). Which rate: the request
-- rate, unless the 429 showed only the token budget used up; the token rate gauged from
-- remaining/reset (`t_found`, common.lua's dimension) when it showed that one used up. cut
-- returns 1 (cut), 0 (cut less than a period ago) or -1 (no such rate).
local function cut(p, lowest)
  local s = redis.call('HMGET', KEYS[4], p .. 'found', p .. 'cut', p .. 'cmax', p .. 'cmax_prev', p .. 'est')
  local found, last_cut = tonumber(s[1]), tonumber(s[2])
  if found == nil then return -1 end
  if last_cut ~= nil and now - last_cut < tonumber(ARGV[5]) then return 0 end
  local f = tonumber(ARGV[6])
  redis.call('HSET', KEYS[4], p .. 'found', string.format('%.3f', math.max(lowest, found * f)),
             p .. 'peak', string.format('%.3f', found), p .. 'phase', 'avoid', p .. 'by', '429s',
             p .. 'cut', string.format('%.3f', now), p .. 'last', string.format('%.3f', now),
             p .. 'win', string.format('%.3f', now), p .. 'used', 0)
  -- A rate gauged from remaining/reset (gauge.lua) came with this 429: the budget's size it rests
  -- on is too large (the provider lowered its limit: the largest remaining seen is stale), so it
  -- shrinks by the same factor, and the estimate with it.
  if tonumber(s[3]) ~= nil then
    redis.call('HSET', KEYS[4], p .. 'cmax', string.format('%.3f', math.max(1, tonumber(s[3]) * f)),
               p .. 'cmax_prev', string.format('%.3f', (tonumber(s[4]) or 0) * f))
    if tonumber(s[5]) ~= nil then redis.call('HSET', KEYS[4], p .. 'est', string.format('%.3f', tonumber(s[5]) * f)) end
  end
  return 1
end

local spent = ARGV[8] or ''
local cuts = -1 -- no token rate to cut (none gauged, or the 429 did not name the tokens)
if string.find(spent, 'tokens', 1, true) then cuts = cut('t_', 1) end
if cuts < 0 or string.find(spent, 'requests', 1, true) then
  cuts = math.max(cuts, 0) + cut('', tonumber(ARGV[7]))
end
if cuts > 0 then
  redis.call('HSET', KEYS[4], 'gen', (tonumber(redis.call('HGET', KEYS[4], 'gen') or '') or 0) + 1)
  forgive_bookings()
end

local rpm, tpm = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]))
local untilms = pause_until(now + tonumber(ARGV[3]) * 1000, rpm, tpm)
return string.format('%.3f %.3f %d', untilms - now, untilms, math.min(math.max(cuts, 0), 1))
