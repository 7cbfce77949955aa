-- Shared helpers. Times are milliseconds (with a fraction) on the Redis server clock, which
-- every process sees alike; no client clock takes part in the accounting.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

-- Load a bucket and bring it up to date. A bucket whose ts lies in the future is frozen by a
-- cooldown: it gains nothing until then.
local function load(key, rate, burst)
  local s = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(s[1]), tonumber(s[2])
  if level == nil or ts == nil then
    return burst, now
  end
  if ts < now then
    level = level + (now - ts) * rate
    ts = now
  end
  return math.min(level, burst), ts
end

local function store(key, rate, burst, level, ts)
  redis.call('HSET', key, 'level', level, 'ts', ts)
  -- Expire a little after the bucket would be full again: a missing key reads as full.
  redis.call('PEXPIRE', key, math.ceil(math.max(ts - now, 0) + (burst - level) / rate) + 1000)
end

local function cooldown_left()
  local u = tonumber(redis.call('GET', KEYS[3]) or '')
  if u == nil or u <= now then return 0 end
  return u - now
end

-- One rate of the limits hash per dimension the provider limits: the requests' fields are named
-- plainly (found, est, cmax, ...), the tokens' with 't_' (t_found, t_est, t_cmax, ...); `stated`
-- is the field of the limit the provider states for it. gauge.lua, grow.lua and cooldown.lua
-- run one design on either.
local function dimension(name)
  if name == 'tokens' then return 't_', 'tpm' end
  return '', 'rpm'
end

-- The limits in force (rpm, tpm, 1 while the provider has not answered yet else 0, the
-- controller's generation: it grows by one at every cut of the rate, see cooldown.lua; and 1
-- when the token limit in force is the rate gauged from the provider's remaining/reset tokens,
-- else 0), read from the model's limits hash: `rpm`/`tpm` as the provider stated them (-1: it
-- sends no such limit), `found`, the request rate the controller runs at (the stated limit, or
-- the rate found from 429s: see grow.lua and cooldown.lua), and `t_found`, the token rate gauged
-- from remaining/reset (gauge.lua) for a provider that states no token limit, each capped by the
-- operator's ceilings (0: none); until the provider has answered, at most start_rpm requests
-- per minute.
local function effective(key, ceil_rpm, ceil_tpm, start_rpm)
  local s = redis.call('HMGET', key, 'rpm', 'tpm', 'found', 'gen', 't_found')
  local lr, lt, found, gen = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]) or 0
  if lr == nil or lt == nil then
    if start_rpm > 0 and (ceil_rpm <= 0 or start_rpm < ceil_rpm) then
      return start_rpm, ceil_tpm, 1, gen, 0
    end
    return ceil_rpm, ceil_tpm, 1, gen, 0
  end
  local function cap(learned, ceiling)
    if learned <= 0 then return ceiling end
    if ceiling > 0 and ceiling < learned then return ceiling end
    return learned
  end
  if found ~= nil then lr = found end
  local gauged = 0
  if lt <= 0 and tonumber(s[5]) ~= nil then
    lt = tonumber(s[5])
    gauged = 1
  end
  return cap(lr, ceil_rpm), cap(lt, ceil_tpm), 0, gen, gauged
end

-- Every booking not yet due was made at an older, higher rate: forgive them all (KEYS[1] and
-- KEYS[2], the buckets). Their callers see the new generation (bumped by the caller) when they
-- wake and book again at the new rate (acquire).
local function forgive_bookings()
  for _, key in ipairs({KEYS[1], KEYS[2]}) do
    local level = tonumber(redis.call('HGET', key, 'level') or '')
    if level ~= nil and level < 0 then
      redis.call('HSET', key, 'level', 0)
    end
  end
end

-- Pause every acquirer until `untilms` (KEYS[3]; a pause in force is never shortened) and freeze
-- the buckets (KEYS[1], KEYS[2], paced at rpm and tpm) until then. Debt (negative level) is the
-- reservations still waiting to fire; the ones due inside the pause will find the cooldown when
-- they wake and reserve again, so their share is forgiven here. Debt due after the pause stays,
-- and credit is carried over. Returns when the pause ends.
local function pause_until(untilms, rpm, tpm)
  untilms = math.max(untilms, now + cooldown_left())
  redis.call('SET', KEYS[3], string.format('%.3f', untilms), 'PX', math.ceil(untilms - now) + 1000)
  for _, spec in ipairs({{KEYS[1], rpm}, {KEYS[2], tpm}}) do
    local limit = spec[2]
    if limit > 0 then
      local rate = limit / 60000
      local burst = math.max(limit / 60, 1)
      local level, ts = load(spec[1], rate, burst)
      if ts < untilms then
        if level < 0 then level = math.min(0, level + (untilms - ts) * rate) end
        store(spec[1], rate, burst, level, untilms)
      end
    end
  end
  return untilms
end

-- Calls admitted per second, in a hash of 64 one-second slots (n<slot>: how many, t<slot>: which
-- second): one call costs a few hash operations, and the last minute's sum reads 64 fields
-- (calls.lua). Forgotten two minutes after the last call.
local function count_call(key)
  local sec = math.floor(now / 1000)
  local slot = sec % 64
  if tonumber(redis.call('HGET', key, 't' .. slot)) == sec then
    redis.call('HINCRBY', key, 'n' .. slot, 1)
  else
    redis.call('HSET', key, 't' .. slot, sec, 'n' .. slot, 1)
  end
  redis.call('PEXPIRE', key, 120000)
end
