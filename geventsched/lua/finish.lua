-- finish.lua: record a batch of results, the first per job wins (Store.finish, worker and master).
--
-- KEYS[1] finished    hash status -> count
-- KEYS[2] inflight    zset id -> deadline
-- KEYS[3] jobs        hash id -> job body
-- KEYS[4] attempts    hash id -> dispatches without a result
-- KEYS[5] retries     hash id -> retries so far
-- KEYS[6] scheduled   zset id -> when a failed job runs again
-- KEYS[7] dispatched  hash id -> "<token> <worker>" of the dispatch in flight
-- ARGV[1] result_prefix   result:<id> keys
-- ARGV[2] ttl             seconds a result is kept
-- ARGV[3] result_channel  '' = do not announce to the master
-- ARGV[4] F               how many final results follow
-- ARGV[5] trusted         '1': the master records results of jobs it holds itself; no token check
-- ARGV[6] publish         'PUBLISH', or 'SPUBLISH' on a cluster (our channels share our keys' slot)
-- then id, status, payload, reply, token for each of the F results,
-- then id, status, payload, reply, token, task, max_retries, backoff for each failure that may retry
--
-- A result counts only with the token of the job's dispatch in flight (``dispatched``): a stranger's
-- message, or a late copy of a job dispatched again meanwhile, is dropped without a trace.
-- Returns how many results were new.
local prefix, ttl, channel, finals = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local trusted = ARGV[5] == '1'
local publish = ARGV[6]
local recorded, counts = {}, {}
local function current(id, token)
  if trusted then return true end
  local dispatch = redis.call('HGET', KEYS[7], id)
  return dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' '
end
local function record(id, status, payload, reply)
  if redis.call('SET', prefix .. id, payload, 'NX', 'EX', ttl) then
    recorded[#recorded + 1] = id
    counts[status] = (counts[status] or 0) + 1
    if reply ~= '' then redis.call(publish, reply, payload) end
    if channel ~= '' then redis.call(publish, channel, payload) end
  end
end
local last = 6 + finals * 5
local dispatches = {}
if finals > 0 and not trusted then  -- one HMGET for every final result, not one HGET each
  local ids = {}
  for i = 7, last, 5 do ids[#ids + 1] = ARGV[i] end
  dispatches = redis.call('HMGET', KEYS[7], unpack(ids))
end
local n = 0
for i = 7, last, 5 do
  n = n + 1
  local token, dispatch = ARGV[i + 4], dispatches[n]
  if trusted or (dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' ') then
    record(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
local now
for i = last + 1, #ARGV, 8 do
  local id, token, task = ARGV[i], ARGV[i + 4], ARGV[i + 5]
  local max_retries, backoff = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
  if current(id, token) then
    local retried = redis.call('HINCRBY', KEYS[5], id, 1)
    if retried > max_retries then
      record(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    else
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) + tonumber(t[2]) / 1e6
      end
      -- Exponential backoff; the worker already scaled backoff by a random jitter factor.
      redis.call('ZADD', KEYS[6], now + math.min(3600, backoff * 2 ^ (retried - 1)), id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[7], id)
      if channel ~= '' then
        redis.call(publish, channel, cjson.encode({v = 1, id = id, task = task, status = 'retry', tok = token}))
      end
    end
  end
end
if #recorded > 0 then
  redis.call('ZREM', KEYS[2], unpack(recorded))
  redis.call('HDEL', KEYS[3], unpack(recorded))
  redis.call('HDEL', KEYS[4], unpack(recorded))
  redis.call('HDEL', KEYS[5], unpack(recorded))
  redis.call('HDEL', KEYS[7], unpack(recorded))
end
for status, n in pairs(counts) do redis.call('HINCRBY', KEYS[1], status, n) end
return #recorded
