-- KEYS: limits. ARGV: ceiling rpm, ceiling tpm, start rpm, how long an estimate stays fresh, ms.
-- Returns the limits in force, the learned ones as stored (nil: not heard from yet), the
-- controller's rate and phase (nil: none yet), what set that rate last ('stated', '429s',
-- 'remaining-reset'; nil: none yet) and the rate estimated from remaining/reset while it is
-- fresh (nil: none), then the same two of the token rate gauged from remaining/reset (t_found,
-- nil: none), as strings (Lua numbers would be truncated to integers).
local rpm, tpm = effective(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local s = redis.call('HMGET', KEYS[1], 'rpm', 'tpm', 'found', 'phase', 'by', 'est', 'est_at', 't_found', 't_est',
                      't_est_at')
local function fresh(est, at)
  if est and now - (tonumber(at) or 0) >= tonumber(ARGV[4]) then return false end
  return est
end
return {string.format('%.3f', rpm), string.format('%.3f', tpm), s[1], s[2], s[3], s[4], s[5], fresh(s[6], s[7]),
        s[8], fresh(s[9], s[10])}
