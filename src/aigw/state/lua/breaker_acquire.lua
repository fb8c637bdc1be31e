-- Circuit breaker, acquire: may this replica call the target now?
-- The same state machine as aigw/breaker.py (CircuitBreaker.acquire), run atomically inside Redis so that all
-- replicas share one state and at most one of them holds the half-open trial.
--
-- KEYS[1]  the target's hash
-- ARGV[1]  now in epoch seconds, or "" to use the server's TIME (production: replicas with skewed clocks agree;
--          tests pass a fake clock here)
-- ARGV[2]  cooldown_s
-- ARGV[3]  trial_lease_s
-- ARGV[4]  the hash's TTL in seconds (refreshed on every write, so abandoned targets expire)
--
-- Hash fields (shared with breaker_release.lua and the Python snapshot):
--   st  state: closed | open | half_open (absent: closed)     ep  epoch, moved by every transition and trial grant
--   cf  consecutive failures                                  le  last error message
--   oa  opened_at, epoch seconds                              tu  trial lease deadline (absent: no trial in flight)
--   wb<i> / wr<i> / wf<i>  window bucket i: its index, requests, failures
--
-- Returns {allowed, epoch, trial, moved, clean}: allowed 0 = skip the target; moved 1 = this call took it
-- open -> half_open; clean 1 = closed with no consecutive failures (the caller may then batch its success verdict).

local key = KEYS[1]
local h = redis.call('HMGET', key, 'st', 'ep', 'oa', 'tu', 'cf')
local st = h[1]
local ep = tonumber(h[2]) or 0
if not st or st == 'closed' then
  -- The hot path: one read, no write, no clock.
  local clean = 0
  if (tonumber(h[5]) or 0) == 0 then
    clean = 1
  end
  return {1, ep, 0, 0, clean}
end

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

if st == 'open' then
  if now < tonumber(h[3]) + tonumber(ARGV[2]) then
    return {0, ep, 0, 0, 0}
  end
elseif h[4] and now < tonumber(h[4]) then
  -- half_open, and the trial's holder still has its lease
  return {0, ep, 0, 0, 0}
end

-- Grant the trial. A new epoch makes the holder of an expired lease a straggler whose verdict no longer counts.
ep = ep + 1
redis.call('HSET', key, 'st', 'half_open', 'ep', ep, 'tu', string.format('%.17g', now + tonumber(ARGV[3])))
redis.call('EXPIRE', key, ARGV[4])
if st == 'open' then
  return {1, ep, 1, 1, 0}
end
return {1, ep, 1, 0, 0}
