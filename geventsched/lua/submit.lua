-- submit.lua: enqueue jobs that carry options: a due time, a priority, a unique key (Store.submit,
-- both clients; plain jobs take a pipelined HSET + RPUSH instead).
--
-- KEYS[1] jobs       hash id -> job body
-- KEYS[2] scheduled  zset id -> when the job is due
-- KEYS[3] priority   hash id -> priority above 0
-- KEYS[4] unique     hash unique key -> id of the job holding it
-- KEYS[5] intake     the priority-0 intake list; priority p's is KEYS[5] .. ':' .. p
-- ARGV[1] result_prefix  result:<id> keys (a unique key whose job has a result is free)
-- ARGV[2] wakeup         channel to tell the master about new work ('' = none): '1' for queued jobs,
--                        'scheduled' when one was scheduled (the master's timer looks again)
-- ARGV[3] publish        'PUBLISH', or 'SPUBLISH' on a cluster
-- then id, body, priority (0..9), due (unix seconds, '' = now), unique key ('' = none) per job
--
-- A unique key is held while its job has a record (scheduled, queued, running or dead) and no result;
-- a job whose key is held is not submitted and the holder's id is returned in its place.
-- Returns the ids, in order: each job's own, or the holder of its unique key.
local ids, queued, scheduled = {}, false, false
for i = 4, #ARGV, 5 do
  local id, body, priority, due, unique = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local holder = unique ~= '' and redis.call('HGET', KEYS[4], unique)
  if holder and redis.call('HEXISTS', KEYS[1], holder) == 1
      and redis.call('EXISTS', ARGV[1] .. holder) == 0 then
    ids[#ids + 1] = holder
  else
    if unique ~= '' then redis.call('HSET', KEYS[4], unique, id) end
    redis.call('HSET', KEYS[1], id, body)
    if priority ~= '0' then redis.call('HSET', KEYS[3], id, priority) end
    if due ~= '' then
      redis.call('ZADD', KEYS[2], due, id)
      scheduled = true
    else
      queued = true
      redis.call('RPUSH', priority ~= '0' and (KEYS[5] .. ':' .. priority) or KEYS[5], id)
    end
    ids[#ids + 1] = id
  end
end
if ARGV[2] ~= '' then
  if queued then redis.call(ARGV[3], ARGV[2], '1') end
  if scheduled then redis.call(ARGV[3], ARGV[2], 'scheduled') end
end
return ids
