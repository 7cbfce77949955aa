-- KEYS: requests bucket, tokens bucket, cooldown_until, active accounts (zset), the account's
-- share buckets (requests, tokens), learned limits, the model's calls counter, the job's calls
-- counter. ARGV: ceiling rpm, ceiling tpm, requests, tokens, account ('' = no share), active
-- window ms, max ahead ms, start rpm, count (1: a granted booking is counted as a call admitted,
-- in the model's counter, and the job's when 2; 0: this caller's call was counted already).
-- Returns 'g<ms>:<starting>:<gen>:<rpm>' (granted: due in ms) or 'r<ms>:<starting>:<gen>' (not
-- reserved: ask again in ms), starting 1 while the limits are not known yet, gen the rate
-- controller's generation the booking was made in (a cut of the rate makes it stale: see
-- cooldown.lua), rpm the request rate in force (0: none); a string because Lua numbers would be
-- truncated to integers.
-- The bucket after taking `need`, and how long until that is covered (not stored yet).
local function take(key, limit, need)
  local rate = limit / 60000
  local burst = math.max(limit / 60, need)
  local level, ts = load(key, rate, burst)
  level = level - need
  local ready = ts
  if level < 0 then ready = ts - level / rate end
  return {rate, burst, level, ts, ready - now}
end

local function reserve(key, limit, need)
  if limit <= 0 or need <= 0 then return 0 end
  local t = take(key, limit, need)
  store(key, t[1], t[2], t[3], t[4])
  return t[5]
end

local rpm, tpm, starting, gen, gauged = effective(KEYS[7], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[8]))
local wait = cooldown_left()
local account = ARGV[5]
if account ~= '' then
  local window = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[4], now, account)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[4], math.ceil(window * 2))
  local n = math.max(1, redis.call('ZCARD', KEYS[4]))
  local shares = {}
  local share_wait = 0
  for i, spec in ipairs({{KEYS[5], rpm, tonumber(ARGV[3])},
                         {KEYS[6], tpm, tonumber(ARGV[4])}}) do
    if spec[2] > 0 and spec[3] > 0 then
      local t = take(spec[1], spec[2] / n, spec[3])
      shares[#shares + 1] = {spec[1], t}
      share_wait = math.max(share_wait, t[5])
    end
  end
  local ahead = tonumber(ARGV[7])
  if share_wait > ahead then
    return string.format('r%.3f:%d:%d', share_wait - ahead, starting, gen)
  end
  for _, s in ipairs(shares) do
    store(s[1], s[2][1], s[2][2], s[2][3], s[2][4])
  end
  wait = math.max(wait, share_wait)
end
wait = math.max(wait, reserve(KEYS[1], rpm, tonumber(ARGV[3])))
-- The requests (and tokens, paced at a gauged rate) booked since the controller's window opened:
-- whether the rate is used (grow.lua).
if starting == 0 then redis.call('HINCRBY', KEYS[7], 'used', tonumber(ARGV[3])) end
if gauged == 1 then redis.call('HINCRBY', KEYS[7], 't_used', tonumber(ARGV[4])) end
wait = math.max(wait, reserve(KEYS[2], tpm, tonumber(ARGV[4])))
local count = tonumber(ARGV[9]) or 0
if count > 0 then
  count_call(KEYS[8])
  if count > 1 then count_call(KEYS[9]) end
end
return string.format('g%.3f:%d:%d:%d', math.max(wait, 0), starting, gen, rpm)
