-- take.lua: --durability none: take jobs off the intake with no in-flight record, at most once
-- (Store.take, master).
--
-- KEYS[1] jobs      hash id -> job body (the bodies taken are deleted)
-- KEYS[2] priority  hash id -> priority above 0 (the entries taken are deleted)
-- KEYS[3...] the intake lists, highest priority first
-- ARGV[1] count   how many ids to take at most
--
-- Returns a flat list {id, body, ...}; an id whose body is gone is dropped.
local want, ids = tonumber(ARGV[1]), {}
for k = 3, #KEYS do
  local taken = redis.call('LPOP', KEYS[k], want - #ids)
  if taken then
    for _, id in ipairs(taken) do ids[#ids + 1] = id end
    if #ids >= want then break end
  end
end
if #ids == 0 then return {} end
local bodies = redis.call('HMGET', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[1], unpack(ids))
if #KEYS > 3 then redis.call('HDEL', KEYS[2], unpack(ids)) end
local out = {}
for i, id in ipairs(ids) do
  if bodies[i] then
    out[#out + 1] = id
    out[#out + 1] = bodies[i]
  end
end
return out
