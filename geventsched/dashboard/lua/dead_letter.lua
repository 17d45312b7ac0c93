-- dead_letter.lua: requeue or delete chosen dead letters (the dashboard's buttons; requeue_dead.lua
-- moves them all, or all of a task).
--
-- KEYS[1] dead      list of dead-lettered ids
-- KEYS[2] jobs      hash id -> job body
-- KEYS[3] attempts  hash id -> dispatches without a result
-- KEYS[4] retries   hash id -> retries so far
-- KEYS[5] finished  hash status -> count
-- KEYS[6] priority  hash id -> priority p > 0
-- KEYS[7] unique    hash unique key -> id of the job holding it
-- KEYS[8..]         the intake lists of priority 0, 1, ... (as many as there are priorities)
-- ARGV[1] action         'requeue': back to the queue, on its priority's list, with fresh attempts;
--                        'delete': forgotten, record and result
-- ARGV[2] result_prefix  result:<id> keys
-- ARGV[3..] ids
--
-- Only ids still in the dead list are touched (a second click, or a dead letter requeued meanwhile,
-- does nothing). Returns how many were.
local action, prefix = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('LREM', KEYS[1], 1, id) > 0 then
    n = n + 1
    redis.call('DEL', prefix .. id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    local body = redis.call('HGET', KEYS[2], id)
    if action == 'requeue' and body then
      redis.call('HINCRBY', KEYS[5], 'dead', -1)  -- it will be counted again, once, when it ends
      local p = tonumber(redis.call('HGET', KEYS[6], id)) or 0
      if p < 0 or 8 + p > #KEYS then p = 0 end
      redis.call('RPUSH', KEYS[8 + p], id)
    else
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[6], id)
      local ok, job = pcall(cjson.decode, body or '')
      if ok and type(job) == 'table' and type(job.uniq) == 'string' and redis.call('HGET', KEYS[7], job.uniq) == id then
        redis.call('HDEL', KEYS[7], job.uniq)  -- a deleted job holds its unique key no more
      end
    end
  end
end
return n
