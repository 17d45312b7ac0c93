-- take.lua: --durability none: take jobs off the intake with no in-flight record, at most once
-- (Store.take, master).
--
-- KEYS[1] intake  list of queued job ids
-- KEYS[2] jobs    hash id -> job body (the bodies taken are deleted)
-- ARGV[1] count   how many ids to take at most
--
-- Returns a flat list {id, body, ...}; an id whose body is gone is dropped.
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  if bodies[i] then
    out[#out + 1] = id
    out[#out + 1] = bodies[i]
  end
end
return out
