-- claim.lua: move up to ARGV[1] jobs from the intake to in flight (Store.claim, durable mode).
--
-- KEYS[1] jobs       hash id -> job body
-- KEYS[2] inflight   zset id -> deadline
-- KEYS[3] attempts   hash id -> dispatches that ended without a result
-- KEYS[4...] the intake lists, highest priority first: a list is only reached once those before
--            it are empty, so the claim takes jobs in strict priority order (FIFO within one)
-- ARGV[1] count      how many ids to take off the intake at most
-- ARGV[2] deadline   unix seconds; short: the master moves it to the job's own once the job is
--                    published, so a job claimed by a master that died before publishing it comes
--                    back within seconds
--
-- Returns a flat list {id, body, attempt, ...}; an id whose body is gone is dropped.
local want, ids = tonumber(ARGV[1]), {}
for k = 4, #KEYS do
  local taken = redis.call('LPOP', KEYS[k], want - #ids)
  if taken then
    for _, id in ipairs(taken) do ids[#ids + 1] = id end
    if #ids >= want then break end
  end
end
if #ids == 0 then return {} end
local bodies = redis.call('HMGET', KEYS[1], unpack(ids))
local attempts = redis.call('HMGET', KEYS[3], unpack(ids))
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
if #deadlines > 0 then redis.call('ZADD', KEYS[2], unpack(deadlines)) end
return out
