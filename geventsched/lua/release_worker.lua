-- release_worker.lua: drop a worker's channel leases and, unless ARGV[2] says so, its registration
-- (Store.release_worker).
--
-- KEYS[1] channels    hash channel -> id of the worker holding it
-- KEYS[2] workers     set of registered worker ids
-- KEYS[3] worker_key  string, this worker's heartbeat
-- ARGV[1] worker_id
-- ARGV[2] channels_only  '1': a draining worker gives its channels up for its successor, and keeps
--                        its registration until its last job is recorded
--
-- Returns how many channels it held.
local me = ARGV[1]
local owned = redis.call('HGETALL', KEYS[1])
local mine = {}
for i = 1, #owned, 2 do
  if owned[i + 1] == me then mine[#mine + 1] = owned[i] end
end
for i = 1, #mine, 1000 do
  redis.call('HDEL', KEYS[1], unpack(mine, i, math.min(i + 999, #mine)))
end
if ARGV[2] ~= '1' then
  redis.call('SREM', KEYS[2], me)
  redis.call('DEL', KEYS[3])
end
return #mine
