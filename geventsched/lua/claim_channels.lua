-- claim_channels.lua: a worker claims its channels and registers (Store.register_worker).
--
-- KEYS[1] channels    hash channel -> id of the worker holding it
-- KEYS[2] workers     set of registered worker ids
-- KEYS[3] worker_key  string, this worker's heartbeat
-- ARGV[1] worker_id
-- ARGV[2] heartbeat      JSON written to worker_key
-- ARGV[3] ttl            seconds worker_key lives without a refresh
-- ARGV[4] worker_prefix  worker:<id> keys (a holder without one is dead: its channels are free)
-- ARGV[5] partial        '0': nothing is claimed when another live worker holds any of the channels;
--                        '1': the free ones are
-- ARGV[6...] the channels
--
-- Returns the channels held by another live worker, with their holder: {channel, holder, ...}.
local me = ARGV[1]
local held, free = {}, {}
for i = 6, #ARGV do
  local owner = redis.call('HGET', KEYS[1], ARGV[i])
  if owner and owner ~= me and redis.call('EXISTS', ARGV[4] .. owner) == 1 then
    held[#held + 1] = ARGV[i]
    held[#held + 1] = owner
  else
    free[#free + 1] = ARGV[i]
  end
end
if #held > 0 and ARGV[5] ~= '1' then return held end
for i = 1, #free, 1000 do
  local batch = {}
  for j = i, math.min(i + 999, #free) do
    batch[#batch + 1] = free[j]
    batch[#batch + 1] = me
  end
  redis.call('HSET', KEYS[1], unpack(batch))
end
redis.call('SADD', KEYS[2], me)
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
return held
