-- Circuit breaker, release: record the outcome of a call made under a permit.
-- The same rules as aigw/breaker.py (CircuitBreaker.release; its docstring explains stragglers), run atomically.
--
-- KEYS[1]   the target's hash (fields: see breaker_acquire.lua)
-- ARGV[1]   now in epoch seconds, or "" to use the server's TIME
-- ARGV[2]   outcome: success | failure | neutral
-- ARGV[3]   the permit's epoch
-- ARGV[4]   1 if the permit is the half-open trial, else 0
-- ARGV[5]   error message for a failure ("" = none), already truncated by the caller
-- ARGV[6]   failure_threshold
-- ARGV[7]   failure_rate, or "" when rate-based opening is off
-- ARGV[8]   min_requests
-- ARGV[9]   bucket width in seconds (window_s / buckets)
-- ARGV[10]  number of window buckets
-- ARGV[11]  the hash's TTL in seconds
-- ARGV[12]  successes this replica batched since its last release call (clean permits, see RedisBreakerStore):
--           counted as requests in the current bucket, and as more recent than the failures counted so far
--
-- Returns {from, to} when this call moved the circuit, else an empty array.

local key = KEYS[1]
local outcome = ARGV[2]
local trial = ARGV[4] == '1'
local h = redis.call('HMGET', key, 'st', 'ep', 'cf', 'tu')
local st = h[1] or 'closed'
local ep = tonumber(h[2]) or 0

-- A verdict is current only for the trial of the running half-open epoch, or a plain permit of the running
-- closed epoch; anything else was granted before the state moved on (a straggler).
local current = false
if tonumber(ARGV[3]) == ep then
  if trial then
    current = st == 'half_open' and h[4] ~= false
  else
    current = st == 'closed'
  end
end

if outcome == 'neutral' then
  -- No verdict; a neutral trial frees the slot so that the next acquire becomes the trial.
  if current and trial then
    redis.call('HDEL', key, 'tu')
  end
  return {}
end
if not current and st == 'closed' then
  -- A straggler from before the target recovered: the trial's success is newer evidence.
  return {}
end

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Count the verdict in the rolling window: a ring of buckets, slot = bucket index mod buckets.
local n = tonumber(ARGV[10])
local index = math.floor(now / tonumber(ARGV[9]))
local slot = index % n
if tonumber(redis.call('HGET', key, 'wb' .. slot)) ~= index then
  -- the slot holds an expired bucket: recycle it
  redis.call('HSET', key, 'wb' .. slot, index, 'wr' .. slot, 0, 'wf' .. slot, 0)
end
local batched = tonumber(ARGV[12]) or 0
redis.call('HINCRBY', key, 'wr' .. slot, 1 + batched)
local failed = outcome == 'failure'
local stored_cf = tonumber(h[3]) or 0
local cf = stored_cf
if batched > 0 and current then
  cf = 0  -- a success came after the failures counted so far
end
if failed then
  redis.call('HINCRBY', key, 'wf' .. slot, 1)
  cf = cf + 1
  redis.call('HSET', key, 'cf', cf)
  if ARGV[5] == '' then
    redis.call('HDEL', key, 'le')
  else
    redis.call('HSET', key, 'le', ARGV[5])
  end
end
redis.call('EXPIRE', key, ARGV[11])

if not current then
  -- A straggler while open or half-open: counted above, but only the trial moves the state, and opened_at stays,
  -- so stragglers cannot extend the cooldown.
  return {}
end

local function open(from)
  redis.call('HSET', key, 'st', 'open', 'ep', ep + 1, 'oa', string.format('%.17g', now))
  redis.call('HDEL', key, 'tu')
  return {from, 'open'}
end

if trial then
  if failed then
    return open('half_open')
  end
  -- The trial succeeded: close, with the failure count and the window reset (last error and opened_at stay as
  -- history for operators).
  local gone = {'tu'}
  for i = 0, n - 1 do
    gone[#gone + 1] = 'wb' .. i
    gone[#gone + 1] = 'wr' .. i
    gone[#gone + 1] = 'wf' .. i
  end
  redis.call('HDEL', key, unpack(gone))
  redis.call('HSET', key, 'st', 'closed', 'ep', ep + 1, 'cf', 0)
  return {'half_open', 'closed'}
end

if not failed then
  if stored_cf ~= 0 then
    redis.call('HSET', key, 'cf', 0)
  end
  return {}
end
if cf >= tonumber(ARGV[6]) then
  return open('closed')
end
if ARGV[7] ~= '' then
  -- Failure-rate opening: sum the buckets still inside the window ending at this bucket.
  local fields = {}
  for i = 0, n - 1 do
    fields[#fields + 1] = 'wb' .. i
    fields[#fields + 1] = 'wr' .. i
    fields[#fields + 1] = 'wf' .. i
  end
  local v = redis.call('HMGET', key, unpack(fields))
  local requests, failures = 0, 0
  for i = 1, #v, 3 do
    local b = tonumber(v[i])
    if b and b > index - n and b <= index then
      requests = requests + tonumber(v[i + 1])
      failures = failures + tonumber(v[i + 2])
    end
  end
  -- The same division as breaker.rate_trips, so both stores decide identically.
  if requests >= tonumber(ARGV[8]) and failures / requests >= tonumber(ARGV[7]) then
    return open('closed')
  end
end
return {}
