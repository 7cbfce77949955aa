-- KEYS: limits. ARGV: ceiling rpm, period ms, step (a fraction of the peak), how long a rate
-- estimated from remaining/reset headers (gauge.lua) caps the increase, ms, ceiling tpm.
-- A call succeeded: the additive increase of the request rate the controller runs at (`found`),
-- and of the token rate gauged from remaining/reset (`t_found`, if there is one: the same
-- design on the tokens' fields, see common.lua's dimension), each at most once per period
-- (since its last change, up or down). Returns the new request rate, or '' when it stays. A rate
-- grows only while it is used (at least half of it booked since the window opened: acquire.lua
-- counts `used`, `t_used`; the window is reopened at least every period): a success at a
-- fraction of the rate says nothing about a higher one.
--   slow start (phase 'slow', until the first 429; requests only): doubles, to find the rate quickly;
--   below `peak` (the rate the last 429 came at, or the estimate): half the way back, at least one step;
--   at or past it: probing, the distance past it doubling (one step, two, four...), so a limit
--   that was raised (a tier upgrade, another tenant stopping) is found within a few periods.
-- Never past the stated limit (it is not probed) nor the ceiling (the operator's cap), nor, while
-- it is fresh, the rate estimated from remaining/reset (gauge.lua: the provider's budget is being
-- drained at it; once the budget stops draining the estimate ages and the probing goes on).
local period = tonumber(ARGV[2])

local function grow(p, stated_field, ceiling)
  local s = redis.call('HMGET', KEYS[1], stated_field, p .. 'found', p .. 'phase', p .. 'last', p .. 'peak',
                        p .. 'win', p .. 'used', p .. 'est', p .. 'est_at')
  local stated, found = tonumber(s[1]) or -1, tonumber(s[2])
  if found == nil then return '' end
  if now - (tonumber(s[4]) or 0) < period then return '' end
  local cap = math.huge
  if stated > 0 then cap = stated end
  if ceiling > 0 and ceiling < cap then cap = ceiling end
  local est = tonumber(s[8])
  if est ~= nil and now - (tonumber(s[9]) or 0) < tonumber(ARGV[4]) and est < cap then cap = est end
  if found >= cap then return '' end
  local elapsed = now - (tonumber(s[6]) or tonumber(s[4]) or now)
  if elapsed < period then return '' end
  local used = tonumber(s[7]) or 0
  redis.call('HSET', KEYS[1], p .. 'win', string.format('%.3f', now), p .. 'used', 0)
  if used < 0.5 * math.min(found, cap) / 60000 * math.max(elapsed, 1) then return '' end
  local grown
  if s[3] == 'slow' then
    grown = found * 2
  else
    local peak = tonumber(s[5]) or found
    local step = math.max(1, peak * tonumber(ARGV[3]))
    if found < peak then
      grown = math.min(peak, found + math.max(step, (peak - found) / 2))
    else
      grown = found + math.max(step, found - peak)
    end
  end
  grown = math.min(grown, cap)
  redis.call('HSET', KEYS[1], p .. 'found', string.format('%.3f', grown), p .. 'last', string.format('%.3f', now))
  return string.format('%.3f', grown)
end

local requests = grow('', 'rpm', tonumber(ARGV[1]))
if requests ~= '' then redis.call('HSET', KEYS[1], 'by', '429s') end
-- a token rate is kept only while no token limit is stated (effective ignores it then)
if tonumber(redis.call('HGET', KEYS[1], 'tpm') or '') == -1 then grow('t_', 'tpm', tonumber(ARGV[5]) or 0) end
return requests
