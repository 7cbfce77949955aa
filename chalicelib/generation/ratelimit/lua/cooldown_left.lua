-- KEYS: requests bucket, tokens bucket, cooldown_until, limits. Returns '<remaining cooldown ms>
-- <gen>', gen the rate controller's generation (a booking made in an older one is stale).
local gen = tonumber(redis.call('HGET', KEYS[4], 'gen') or '') or 0
return string.format('%.3f %d', cooldown_left(), gen)
