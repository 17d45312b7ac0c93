-- claim.lua: move up to ARGV[1] jobs from the intake to in flight (Store.claim, durable mode).
--
-- KEYS[1] intake     list of queued job ids
-- KEYS[2] jobs       hash id -> job body
-- KEYS[3] inflight   zset id -> deadline
-- KEYS[4] attempts   hash id -> dispatches that ended without a result
-- ARGV[1] count      how many ids to take off the intake at most
-- ARGV[2] deadline   unix seconds; short: the master moves it to the job's own once the job is
--                    published, so a job claimed by a master that died before publishing it comes
--                    back within seconds
--
-- Returns a flat list {id, body, attempt, ...}; an id whose body is gone is dropped.
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
local attempts = redis.call('HMGET', KEYS[4], unpack(ids))
local deadlines, out = {}, {}
for i, id in ipairs(ids) do
  local body = bodies[i]
  if body then
    deadlines[#deadlines + 1] = ARGV[2]
    deadlines[#deadlines + 1] = id
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = (tonumber(attempts[i]) or 0) + 1
  end
end
if #deadlines > 0 then redis.call('ZADD', KEYS[3], unpack(deadlines)) end
return out
