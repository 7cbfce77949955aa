-- KEYS: requests bucket, tokens bucket, cooldown_until, limits. ARGV: rpm, tpm (-1: not sent),
-- ttl ms, the rate a controller without a stated limit starts at.
-- Returns 1 when these are the model's first known limits, else 0. Then the cautious start's
-- bookings not yet due are dropped (their callers book again at the real limits), but what it
-- used stays used: a bucket it emptied starts empty, not full, since the provider's own bucket
-- has not refilled either (starting full sent a burst into it: a few 429s at every start).
-- The rate controller (`found`, see grow.lua and cooldown.lua) is set to a newly stated request
-- limit (a tier upgrade, or a first answer); a server that states none starts it at the given
-- rate in slow start, so the rate is found from its 429s (or its remaining/reset: gauge.lua).
-- A stated limit lower than the rate in use takes effect at once, as a cut does: the bookings
-- made at the old rate are forgiven and booked again (the generation moves on).
local s = redis.call('HMGET', KEYS[4], 'rpm', 'tpm', 'found', 'gen')
local first = tonumber(s[1]) == nil or tonumber(s[2]) == nil
local stated = tonumber(ARGV[1])
redis.call('HSET', KEYS[4], 'rpm', ARGV[1], 'tpm', ARGV[2])
local lowered = false
if stated > 0 and (tonumber(s[1]) ~= stated or s[3] == false) then
  redis.call('HSET', KEYS[4], 'found', ARGV[1], 'peak', ARGV[1], 'phase', 'avoid', 'by', 'stated',
             'last', string.format('%.3f', now), 'win', string.format('%.3f', now), 'used', 0)
  if not first and tonumber(s[3]) ~= nil and stated < tonumber(s[3]) then
    redis.call('HSET', KEYS[4], 'gen', (tonumber(s[4]) or 0) + 1)
    lowered = true
  end
elseif s[3] == false then
  redis.call('HSET', KEYS[4], 'found', ARGV[4], 'phase', 'slow', 'by', '429s', 'last', string.format('%.3f', now),
             'win', string.format('%.3f', now), 'used', 0)
end
redis.call('PEXPIRE', KEYS[4], ARGV[3])
if first or lowered then
  forgive_bookings()
end
return first and 1 or 0
