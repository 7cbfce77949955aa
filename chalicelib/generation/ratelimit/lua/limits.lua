-- KEYS: limits. ARGV: ceiling rpm, ceiling tpm, start rpm, how long an estimate stays fresh, ms.
-- Returns the limits in force, the learned ones as stored (nil: not heard from yet), the
-- controller's rate and phase (nil: none yet), what set that rate last ('stated', '429s',
-- 'remaining-reset'; nil: none yet) and the rate estimated from remaining/reset while it is
-- fresh (nil: none), as strings (Lua numbers would be truncated to integers).
local rpm, tpm = effective(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'found', 'phase', 'by', 'est', 'est_at')
local est = s[6]
if est and now - (tonumber(s[7]) or 0) >= tonumber(ARGV[4]) then est = false end
return {string.format('%.3f', rpm), string.format('%.3f', tpm), s[1], s[2], s[3], s[4], s[5], est}
