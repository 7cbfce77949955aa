-- KEYS: requests bucket, tokens bucket, cooldown_until, learned limits. ARGV: ceiling rpm,
-- ceiling tpm, delta (tokens to give back; negative takes more), start rpm, the delta while the
-- token limit is a rate gauged from the provider's remaining/reset tokens (gauge.lua): that rate
-- is in what the provider charged (prompt and max_tokens up front, as OpenAI counts), so the
-- bucket is corrected to that, not to the usage.
local _, limit, _, _, gauged = effective(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]))
local delta = tonumber(ARGV[3])
if gauged == 1 then delta = tonumber(ARGV[5]) or delta end
if limit <= 0 or delta == 0 then return 0 end
local rate = limit / 60000
local burst = math.max(limit / 60, 1)
local level, ts = load(KEYS[2], rate, burst)
store(KEYS[2], rate, burst, math.min(burst, level + delta), ts)
return 1
