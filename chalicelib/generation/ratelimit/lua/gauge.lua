-- KEYS: requests bucket, tokens bucket, cooldown_until, limits. ARGV: ceiling rpm, ceiling tpm,
-- start rpm, remaining, ms until the provider's budget is full again, margin (the share of the
-- estimate the rate is set to), window ms (how long the largest remaining seen is remembered: one
-- to two windows), how long an estimate stays fresh, ms, the dimension ('requests' or 'tokens'),
-- what the answer's own call took from that budget (1 request; its tokens, as estimated).
-- Returns '<estimate per minute or -1> <pause ms or 0>'.
--
-- A provider that states no limit but sends x-ratelimit-remaining-<dimension> (k) and
-- x-ratelimit-reset-<dimension> (s), as gateways and Azure do: one design for requests and for
-- tokens (their fields: common.lua's dimension). Its budget is a bucket of some size C refilled
-- at r per second (OpenAI's headers mean that: s is the time until it is full again), so
-- C - k = r * s at the instant the answer was made (both read on the provider's clock: no
-- latency enters). C is the largest k + u seen lately (u what the answer's own call took: the
-- first answer on a full bucket shows C - u), so r = (C - k - 0.5) / s (the 0.5: k is the level
-- rounded down). An estimate is taken only while the budget is at least half used (else C - k is
-- a few calls and the rounding dominates) and smoothed; while fresh it caps the rate (set to
-- margin x it when above, or in slow start, and grow.lua does not probe past it). The request rate
-- is the controller's (found from 429s when there is no estimate); the token rate exists only
-- once gauged (before, no token limit is known) and then grows the same way (grow.lua). k = 0
-- means the next call would be refused: every worker pauses until one call's worth fits
-- (s * u / (C - 0.5), at most s), before the 429 comes.
local p, stated_field = dimension(ARGV[9])
local unit = math.max(1, tonumber(ARGV[10]) or 1)
local k, reset_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local s = redis.call('HMGET', KEYS[4], stated_field, p .. 'found', p .. 'cmax', p .. 'cmax_prev', p .. 'cmax_at',
                      p .. 'est', p .. 'est_at', 'gen', p .. 'phase', p .. 'rend', p .. 'rk', p .. 'rat', p .. 'fixed')
local stated, found = tonumber(s[1]), tonumber(s[2])
-- a stated limit wins (learn.lua runs first); the request controller starts with the first answer
if stated == nil or stated > 0 or (p == '' and found == nil) then return '-1 0' end

-- Set the rate to margin x `est` (from `was`), booked again when that is a real cut, not a nudge.
local function set_rate(est, was)
  local target = est * tonumber(ARGV[6])
  redis.call('HSET', KEYS[4], p .. 'found', string.format('%.3f', target), p .. 'peak', string.format('%.3f', est),
             p .. 'phase', 'avoid', p .. 'by', 'remaining-reset', p .. 'last', string.format('%.3f', now),
             p .. 'win', string.format('%.3f', now), p .. 'used', 0)
  if was ~= nil and was > 1.1 * target then
    redis.call('HSET', KEYS[4], 'gen', (tonumber(s[8]) or 0) + 1)
    forgive_bookings()
  end
end

-- A fixed window (a counter reset at the minute: gateways, LiteLLM) is no bucket: the time its
-- budget is full again (now + s) stays put however much is used, while a bucket's moves on as it
-- is drained (by the drain over the refill rate: at least the time passed while k falls). So two
-- answers at least a second apart with k fallen (and not 0: a bucket below empty stays at 0 while
-- it refills) tell which it is. In a fixed window the rate that fits is the remaining spread over
-- the time left, k / s, set as it is (up at a window's start, down when the budget went early);
-- none remaining pauses every worker until the window's end, the reset as it is.
local endms = now + reset_ms
local rend, rk, rat, fixed = tonumber(s[10]), tonumber(s[11]), tonumber(s[12]), s[13] == '1'
if rat == nil or k > rk or now - rat > tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[4], p .. 'rend', string.format('%.3f', endms), p .. 'rk', k, p .. 'rat', string.format('%.3f', now))
elseif now - rat >= 1000 and k < rk and k > 0 then
  fixed = math.abs(endms - rend) < 0.25 * (now - rat)
  redis.call('HSET', KEYS[4], p .. 'fixed', fixed and 1 or 0, p .. 'rend', string.format('%.3f', endms), p .. 'rk', k,
             p .. 'rat', string.format('%.3f', now))
end
if fixed and reset_ms > 0 then
  if k == 0 then
    local rpm, tpm = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
    pause_until(endms, rpm, tpm)
    return string.format('-1 %.3f', reset_ms)
  end
  local est = 60000 * k / reset_ms
  redis.call('HSET', KEYS[4], p .. 'est', string.format('%.3f', est), p .. 'est_at', string.format('%.3f', now))
  set_rate(est, found)
  return string.format('%.3f 0', est)
end
local window = tonumber(ARGV[7])
local cmax, prev, at = tonumber(s[3]) or 0, tonumber(s[4]) or 0, tonumber(s[5]) or now
if now - at >= 2 * window then
  cmax, prev, at = 0, 0, now
elseif now - at >= window then
  cmax, prev, at = 0, cmax, now
end
cmax = math.max(cmax, k + unit)
redis.call('HSET', KEYS[4], p .. 'cmax', cmax, p .. 'cmax_prev', prev, p .. 'cmax_at', string.format('%.3f', at))
local c = math.max(cmax, prev)
local est = tonumber(s[6])
local fresh = tonumber(ARGV[8])
if reset_ms > 0 and k <= c / 2 and c - k - 0.5 >= 1 then
  local sample = 60000 * (c - k - 0.5) / reset_ms
  if est == nil or now - (tonumber(s[7]) or 0) >= fresh then est = sample else est = est + 0.25 * (sample - est) end
  redis.call('HSET', KEYS[4], p .. 'est', string.format('%.3f', est), p .. 'est_at', string.format('%.3f', now))
  -- in slow start the estimate is a better guess than doubling; a token rate starts with it
  if found == nil or found > est * tonumber(ARGV[6]) or s[9] == 'slow' then set_rate(est, found) end
elseif est ~= nil and now - (tonumber(s[7]) or 0) >= fresh then
  est = nil
end
local pause = 0
if k == 0 and reset_ms > 0 then
  pause = math.min(reset_ms, reset_ms * unit / math.max(1, c - 0.5))
  local rpm, tpm = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
  pause_until(now + pause, rpm, tpm)
end
return string.format('%.3f %.3f', est or -1, pause)
