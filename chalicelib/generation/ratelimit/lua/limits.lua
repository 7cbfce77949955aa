-- KEYS: learned limits. ARGV: ceiling rpm, ceiling tpm, start rpm. Returns the limits in force
-- and the learned ones as stored (nil: not heard from yet).
local rpm, tpm = effective(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local learned = redis.call('HMGET', KEYS[1], 'rpm', 'tpm')
return {rpm, tpm, learned[1], learned[2]}
