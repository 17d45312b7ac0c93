-- promote.lua: retries whose backoff ran out go back to the intake (Store.promote, master).
--
-- KEYS[1] scheduled  zset id -> when a failed job runs again
-- KEYS[2] intake     list of queued job ids
-- ARGV[1] now        unix seconds
-- ARGV[2] limit      at most this many per call
--
-- Returns how many went back.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('RPUSH', KEYS[2], unpack(ids))
return #ids
