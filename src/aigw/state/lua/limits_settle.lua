-- Rate limit, settle: replace a token reservation by the usage the upstream reported.
-- The same rules as aigw/ratelimit.py (RateLimiter.settle), run atomically.
--
-- KEYS[1]  token log (sorted set; see limits_check.lua)
-- KEYS[2]  the tenant's hash ('n', 'sum', <entry> = tokens)
-- ARGV[1]  now in epoch seconds, or "" to use the server's TIME
-- ARGV[2]  the reservation's entry number
-- ARGV[3]  actual tokens (>= 0)
-- ARGV[4]  window in seconds
-- ARGV[5]  TTL of the keys in seconds
--
-- Returns 0 when the entry was settled in place (a refund or extra charge at its original time), 1 when it had
-- left the window and the actual usage was charged as a new entry at now.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local entry = ARGV[2]
local actual = tonumber(ARGV[3])
local window = tonumber(ARGV[4])

local at = tonumber(redis.call('ZSCORE', KEYS[1], entry))
local held = tonumber(redis.call('HGET', KEYS[2], entry))
if at and held and at > now - window then
  redis.call('HSET', KEYS[2], entry, actual)
  redis.call('HINCRBY', KEYS[2], 'sum', actual - held)
  return 0
end

-- Gone, or expired but not yet trimmed: remove what is left of it, then charge the usage now.
if at then redis.call('ZREM', KEYS[1], entry) end
if held then
  redis.call('HDEL', KEYS[2], entry)
  redis.call('HINCRBY', KEYS[2], 'sum', -held)
end
local fresh = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('ZADD', KEYS[1], string.format('%.17g', now), fresh)  -- not tostring: 14 digits only
redis.call('HSET', KEYS[2], fresh, actual)
redis.call('HINCRBY', KEYS[2], 'sum', actual)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
