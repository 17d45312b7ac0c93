-- fire.lua: fire one periodic schedule for one fire time, at most once (Scheduler.fire_due, master).
--
-- KEYS[1] schedules  hash name -> schedule record (JSON)
-- KEYS[2] jobs       hash id -> job body
-- KEYS[3] intake     list of queued job ids
-- KEYS[4] claim      fire:<name>:<fire time>, the fire time's deterministic claim
-- ARGV[1] name
-- ARGV[2] the record as the caller read it (the fire was computed from it)
-- ARGV[3] the record after the fire: next, last and job moved on
-- ARGV[4] the record when the fire time was claimed already: only next moved on
-- ARGV[5] job id
-- ARGV[6] job body
-- ARGV[7] seconds the claim is kept
-- ARGV[8] publish   'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[9] the wake-up channel
--
-- The record must be exactly as read: a second master that read it too, or a schedule replaced or
-- removed meanwhile, changes nothing. Claim, enqueue and the record's update are one step, so a
-- master dying halfway can neither lose the fire nor leave its time unclaimed.
-- Returns 1 fired, 0 the fire time was claimed already (next moved on), -1 the record changed.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
if not redis.call('SET', KEYS[4], ARGV[5], 'NX', 'EX', ARGV[7]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
redis.call('RPUSH', KEYS[3], ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call(ARGV[8], ARGV[9], '1')
return 1
