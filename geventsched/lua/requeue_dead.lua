-- requeue_dead.lua: one slice of the dead letters back to the queue (Store.requeue_dead).
--
-- KEYS[1] dead      list of dead-lettered ids
-- KEYS[2] jobs      hash id -> job body
-- KEYS[3] intake    list of queued job ids
-- KEYS[4] attempts  hash id -> dispatches without a result
-- KEYS[5] finished  hash status -> count
-- KEYS[6] retries   hash id -> retries so far
-- KEYS[7] priority  hash id -> priority above 0 (priority p's intake is KEYS[3] .. ':' .. p)
-- ARGV[1] result_prefix  result:<id> keys (the dead letter's result is deleted)
-- ARGV[2] task           only this task's jobs; '' = any
-- ARGV[3] start          index in the dead list where this slice starts
-- ARGV[4] count          slice length
--
-- Returns {requeued, removed, scanned}: the caller goes on at start + scanned - removed while
-- scanned == count.
local ids = redis.call('LRANGE', KEYS[1], ARGV[3], tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1)
local n, removed = 0, 0
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  local match = ARGV[2] == ''
  if body and not match then
    local ok, job = pcall(cjson.decode, body)
    match = ok and type(job) == 'table' and job.task == ARGV[2]
  end
  if match then
    redis.call('LREM', KEYS[1], 1, id)
    removed = removed + 1
    if body then
      redis.call('DEL', ARGV[1] .. id)
      redis.call('HDEL', KEYS[4], id)
      redis.call('HDEL', KEYS[6], id)
      redis.call('HINCRBY', KEYS[5], 'dead', -1)
      local p = redis.call('HGET', KEYS[7], id)
      redis.call('RPUSH', p and (KEYS[3] .. ':' .. p) or KEYS[3], id)
      n = n + 1
    end
  end
end
return {n, removed, #ids}
