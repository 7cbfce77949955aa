-- KEYS: requests bucket, tokens bucket, cooldown_until. Returns the remaining cooldown in ms.
return string.format('%.3f', cooldown_left())
