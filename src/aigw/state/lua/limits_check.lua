-- Rate limit, check: admit one request for a tenant (requests/min and tokens/min over a rolling window)?
-- The same sliding-window log as aigw/ratelimit.py (RateLimiter.check), run atomically inside Redis so every
-- replica shares one log per tenant. Nothing is written unless both dimensions admit.
--
-- KEYS[1]  request log: sorted set, member = entry number, score = admission time (epoch seconds)
-- KEYS[2]  token log: sorted set, member = entry number, score = reservation time
-- KEYS[3]  hash: 'n' = last entry number, 'sum' = tokens in the token log, <entry> = tokens charged to that entry
--          (the three keys share a {tenant} hash tag, so they live on one cluster slot)
-- ARGV[1]  now in epoch seconds, or "" to use the server's TIME (production; tests pass a fake clock here)
-- ARGV[2]  rpm, or "" = unlimited (the request log is neither read nor written)
-- ARGV[3]  tpm, or "" = unlimited
-- ARGV[4]  tokens to reserve (the caller's estimate, >= 0)
-- ARGV[5]  window in seconds (60)
-- ARGV[6]  TTL of the keys in seconds, refreshed on every write (so idle tenants expire)
--
-- Returns {admitted, entry, now, requests used, requests free_at, requests newest, tokens used, tokens free_at,
-- tokens newest}; times are strings ("" = none) because Redis truncates Lua numbers to integers.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local estimate = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local cutoff = string.format('%.17g', now - window)  -- an entry at exactly now - window has left the window

local function fmt(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end

local admitted = true

-- Requests: drop what left the window; refused when rpm entries are still live.
local rused, rfree, rnewest = 0, nil, nil
if rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  rused = redis.call('ZCARD', KEYS[1])
  if rused > 0 then
    rnewest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  end
  if rused >= rpm then
    -- rused - rpm + 1 entries must leave first; the last of them is the (rused - rpm)-th oldest (0-based).
    admitted = false
    rfree = tonumber(redis.call('ZRANGE', KEYS[1], rused - rpm, rused - rpm, 'WITHSCORES')[2]) + window
  end
end

-- Tokens: drop expired entries and subtract their amounts from 'sum' (in chunks: unpack has a stack limit).
local tused, tfree, tnewest = 0, nil, nil
if tpm then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  local freed = 0
  for i = 1, #gone, 1000 do
    local chunk = {unpack(gone, i, math.min(i + 999, #gone))}
    local amounts = redis.call('HMGET', KEYS[3], unpack(chunk))
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('HDEL', KEYS[3], unpack(chunk))
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
    redis.call('HINCRBY', KEYS[3], 'sum', -freed)
  end
  local live = redis.call('ZCARD', KEYS[2])
  if live == 0 then
    redis.call('HDEL', KEYS[3], 'sum')  -- self-heal: an empty log holds no tokens
  else
    tused = tonumber(redis.call('HGET', KEYS[3], 'sum')) or 0
    tnewest = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
  end
  -- Refused only when the window already holds tokens and this estimate would go over (a lone request passes).
  if tused > 0 and tused + estimate > tpm then
    admitted = false
    local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')  -- oldest first (refusals only)
    local left = tused
    for i = 1, #entries, 2 do
      left = left - (tonumber(redis.call('HGET', KEYS[3], entries[i])) or 0)
      if left <= 0 or left + estimate <= tpm then
        tfree = tonumber(entries[i + 1]) + window
        break
      end
    end
  end
end

local entry = 0
if admitted and (rpm or tpm) then
  entry = redis.call('HINCRBY', KEYS[3], 'n', 1)
  if rpm then
    redis.call('ZADD', KEYS[1], fmt(now), entry)  -- fmt: Lua's own tostring keeps only 14 digits
    redis.call('EXPIRE', KEYS[1], ARGV[6])
  end
  if tpm then
    redis.call('ZADD', KEYS[2], fmt(now), entry)
    redis.call('HSET', KEYS[3], entry, estimate)
    redis.call('HINCRBY', KEYS[3], 'sum', estimate)
    redis.call('EXPIRE', KEYS[2], ARGV[6])
  end
  -- The hash is refreshed whenever a log is, so it outlives both and entry numbers never repeat within a log.
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end

return {admitted and 1 or 0, entry, fmt(now), rused, fmt(rfree), fmt(rnewest), tused, fmt(tfree), fmt(tnewest)}
