-- KEYS: requests bucket, tokens bucket, cooldown_until, limits. ARGV: ceiling rpm, ceiling tpm,
-- seconds, start rpm, period ms, decrease factor, lowest rpm. Returns '<remaining ms> <until ms>
-- <cut>' (the pause in force, which a shorter new one never cuts; when it ends on the server
-- clock, in Unix milliseconds; 1 if this 429 cut the rate, else 0).

-- The multiplicative decrease: a 429 cuts the request rate the controller runs at (`found`) by
-- the factor, at most once per period, so the burst of 429s that the calls already in flight
-- bring back counts as one signal, not as many cuts that would collapse the rate. `peak`
-- remembers where the 429 came (grow.lua returns there quickly, then probes past it).
local s = redis.call('HMGET', KEYS[4], 'found', 'cut', 'gen', 'cmax', 'cmax_prev', 'est')
local found, last_cut, gen = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]) or 0
local cut = 0
if found ~= nil and (last_cut == nil or now - last_cut >= tonumber(ARGV[5])) then
  local lowered = math.max(tonumber(ARGV[7]), found * tonumber(ARGV[6]))
  redis.call('HSET', KEYS[4], 'found', string.format('%.3f', lowered), 'peak', string.format('%.3f', found),
             'phase', 'avoid', 'by', '429s', 'cut', string.format('%.3f', now), 'last', string.format('%.3f', now),
             'gen', gen + 1, 'win', string.format('%.3f', now), 'used', 0)
  cut = 1
  forgive_bookings()
  -- A rate gauged from remaining/reset (gauge.lua) came with this 429: the budget's size it rests
  -- on is too large (the provider lowered its limit: the largest remaining seen is stale), so it
  -- shrinks by the same factor, and the estimate with it.
  if tonumber(s[4]) ~= nil then
    local f = tonumber(ARGV[6])
    redis.call('HSET', KEYS[4], 'cmax', string.format('%.3f', math.max(1, tonumber(s[4]) * f)),
               'cmax_prev', string.format('%.3f', (tonumber(s[5]) or 0) * f))
    if tonumber(s[6]) ~= nil then redis.call('HSET', KEYS[4], 'est', string.format('%.3f', tonumber(s[6]) * f)) end
  end
end

local rpm, tpm = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]))
local untilms = pause_until(now + tonumber(ARGV[3]) * 1000, rpm, tpm)
return string.format('%.3f %.3f %d', untilms - now, untilms, cut)
