-- requeue.lua: jobs handed back unrun (a worker or master shutting down); not a failed attempt
-- (Store.requeue).
--
-- KEYS[1] inflight    zset id -> deadline
-- KEYS[2] intake      list of queued job ids
-- KEYS[3] dispatched  hash id -> "<token> <time> <channel> <worker>" of the dispatch in flight
-- KEYS[4] priority    hash id -> priority above 0 (priority p's intake is KEYS[2] .. ':' .. p)
-- ARGV[1] result_prefix  result:<id> keys (a job with a result stays finished)
-- ARGV[2] trusted        '1': claimed by the master and never dispatched; no token check
-- then id, token of each job handed back (a worker hands back only the dispatch it was given: a job
-- a stranger published under a real id stays where it is)
--
-- Returns how many went back to the intake.
local n = 0
local trusted = ARGV[2] == '1'
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local dispatch = redis.call('HGET', KEYS[3], id)
  local mine = trusted or (dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' ')
  if mine then
    redis.call('HDEL', KEYS[3], id)
    if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('EXISTS', ARGV[1] .. id) == 0 then
      local p = redis.call('HGET', KEYS[4], id)
      redis.call('LPUSH', p and (KEYS[2] .. ':' .. p) or KEYS[2], id)
      n = n + 1
    end
  end
end
return n
