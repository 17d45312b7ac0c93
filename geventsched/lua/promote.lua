-- promote.lua: scheduled jobs that are due (delayed jobs, retries whose backoff ran out) go to the
-- intake list of their priority (Store.promote, master).
--
-- KEYS[1] scheduled  zset id -> when the job is due
-- KEYS[2] intake     the priority-0 intake list; priority p's is KEYS[2] .. ':' .. p
-- KEYS[3] priority   hash id -> priority above 0
-- ARGV[1] now        unix seconds
-- ARGV[2] limit      at most this many per call
--
-- Returns {how many went, the next due time still waiting (a string) or false}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  local priorities = redis.call('HMGET', KEYS[3], unpack(ids))
  local lists = {}
  for i, id in ipairs(ids) do
    local p = priorities[i]
    local list = p and (KEYS[2] .. ':' .. p) or KEYS[2]
    lists[list] = lists[list] or {}
    table.insert(lists[list], id)
  end
  for list, members in pairs(lists) do redis.call('RPUSH', list, unpack(members)) end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#ids, next_due[2] or false}
