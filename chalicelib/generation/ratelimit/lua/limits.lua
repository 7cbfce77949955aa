-- KEYS: limits. ARGV: ceiling rpm, ceiling tpm, start rpm. Returns the limits in force, the
-- learned ones as stored (nil: not heard from yet), and the controller's rate and phase (nil:
-- none yet), as strings (Lua numbers would be truncated to integers).
local rpm, tpm = effective(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'found', 'phase')
return {string.format('%.3f', rpm), string.format('%.3f', tpm), s[1], s[2], s[3], s[4]}
