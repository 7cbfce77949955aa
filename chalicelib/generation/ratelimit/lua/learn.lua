-- KEYS: limits, requests bucket, tokens bucket. ARGV: rpm, tpm (-1: not sent), ttl ms, the rate
-- a controller without a stated limit starts at.
-- Returns 1 when these are the model's first known limits, else 0. Then the cautious start's
-- bookings not yet due are dropped (their callers book again at the real limits), but what it
-- used stays used: a bucket it emptied starts empty, not full, since the provider's own bucket
-- has not refilled either (starting full sent a burst into it: a few 429s at every start).
-- The rate controller (`found`, see grow.lua and cooldown.lua) is set to a newly stated request
-- limit (a tier upgrade, or a first answer); a server that states none starts it at the given
-- rate in slow start, so the rate is found from its 429s.
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'found')
local first = tonumber(s[1]) == nil or tonumber(s[2]) == nil
local stated = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'rpm', ARGV[1], 'tpm', ARGV[2])
if stated > 0 and (tonumber(s[1]) ~= stated or s[3] == false) then
  redis.call('HSET', KEYS[1], 'found', ARGV[1], 'peak', ARGV[1], 'phase', 'avoid', 'last', string.format('%.3f', now),
             'win', string.format('%.3f', now), 'used', 0)
elseif s[3] == false then
  redis.call('HSET', KEYS[1], 'found', ARGV[4], 'phase', 'slow', 'last', string.format('%.3f', now),
             'win', string.format('%.3f', now), 'used', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if not first then
  return 0
end
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  local level = tonumber(redis.call('HGET', key, 'level') or '')
  if level ~= nil and level < 0 then
    redis.call('HSET', key, 'level', 0)
  end
end
return 1
