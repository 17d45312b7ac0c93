-- trim_dead.lua: dead letters are kept as long as their result (the result TTL): the oldest, whose
-- result has expired, go, body and counters too (Store.trim_dead, master).
--
-- KEYS[1] dead      list of dead-lettered ids, oldest first
-- KEYS[2] jobs      hash id -> job body
-- KEYS[3] attempts  hash id -> dispatches without a result
-- KEYS[4] retries   hash id -> retries so far
-- KEYS[5] priority  hash id -> priority above 0
-- ARGV[1] result_prefix  result:<id> keys
-- ARGV[2] limit          look at most at this many
--
-- Returns how many went.
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local n = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then break end  -- younger ones follow: all still kept
  redis.call('LPOP', KEYS[1])
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  n = n + 1
end
return n
