-- KEYS: requests bucket, tokens bucket, cooldown_until, learned limits. ARGV: ceiling rpm,
-- ceiling tpm, delta (tokens to give back; negative takes more), start rpm.
-- Not for a token rate gauged from the provider's remaining/reset (gauge.lua): that is the rate
-- its budget drains at what it charged up front (prompt and max_tokens, as OpenAI counts), so the
-- bucket paced at it counts the same, not the usage after.
local _, limit, _, _, gauged = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]))
local delta = tonumber(ARGV[3])
if limit <= 0 or delta == 0 or gauged == 1 then return 0 end
local rate = limit / 60000
local burst = math.max(limit / 60, 1)
local level, ts = load(KEYS[2], rate, burst)
store(KEYS[2], rate, burst, math.min(burst, level + delta), ts)
return 1
