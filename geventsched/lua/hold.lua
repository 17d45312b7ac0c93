-- hold.lua: park claimed jobs that their task's limit holds back (Store.hold, master): off the
-- in-flight set and onto the task's held list, where the master takes them from again once the limit
-- allows (claim.lua, or take.lua, on that list). Holding a job is not an attempt: ``attempts`` and
-- ``retries`` are left alone.
--
-- KEYS[1] inflight  zset id -> deadline (a claimed job is there, with its claim deadline)
-- KEYS[2] jobs      hash id -> job body
-- KEYS[3] held      set of the names of tasks that have a held list
-- KEYS[4...]        one held list per group of ARGV, in order
-- ARGV[1] durable   '1': a job is parked only while it is still claimed (in ``inflight``): one the
--                   reaper took back meanwhile is in the intake again; '0' (--durability none): the
--                   job's record went with the take and is written back (its body follows its id)
-- then per group: task, front ('1': back to the head, jobs that were taken from there and could not
-- go after all; '0': the tail), n, then n ids (durable) or n id, body pairs
--
-- Returns the length of each group's list afterwards, in order.
local durable = ARGV[1] == '1'
local out, i = {}, 2
for k = 4, #KEYS do
  local task, front, n = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2])
  i = i + 3
  local ids = {}
  for _ = 1, n do
    local id = ARGV[i]
    if durable then
      if redis.call('ZREM', KEYS[1], id) == 1 then ids[#ids + 1] = id end
      i = i + 1
    else
      redis.call('HSET', KEYS[2], id, ARGV[i + 1])
      ids[#ids + 1] = id
      i = i + 2
    end
  end
  if #ids > 0 then
    if front then
      local reversed = {}
      for j = #ids, 1, -1 do reversed[#reversed + 1] = ids[j] end
      redis.call('LPUSH', KEYS[k], unpack(reversed))
    else
      redis.call('RPUSH', KEYS[k], unpack(ids))
    end
    redis.call('SADD', KEYS[3], task)
  end
  out[#out + 1] = redis.call('LLEN', KEYS[k])
end
return out
