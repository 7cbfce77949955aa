-- KEYS: requests bucket, tokens bucket, cooldown_until, learned limits. ARGV: ceiling rpm,
-- ceiling tpm, seconds, start rpm. Returns '<remaining ms> <until ms>' (the pause in force, which
-- a shorter new one never cuts, and when it ends on the server clock, in Unix milliseconds).
local rpm, tpm = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]))
local untilms = math.max(now + tonumber(ARGV[3]) * 1000, now + cooldown_left())
redis.call('SET', KEYS[3], string.format('%.3f', untilms), 'PX', math.ceil(untilms - now) + 1000)

-- Freeze a bucket until `untilms`. Debt (negative level) is the reservations still waiting to
-- fire; the ones due inside the pause will find the cooldown when they wake and reserve again,
-- so their share is forgiven here. Debt due after the pause stays, and credit is carried over.
local function freeze(key, limit)
  if limit <= 0 then return end
  local rate = limit / 60000
  local burst = math.max(limit / 60, 1)
  local level, ts = load(key, rate, burst)
  if ts >= untilms then return end
  if level < 0 then level = math.min(0, level + (untilms - ts) * rate) end
  store(key, rate, burst, level, untilms)
end

freeze(KEYS[1], rpm)
freeze(KEYS[2], tpm)
return string.format('%.3f %.3f', untilms - now, untilms)
