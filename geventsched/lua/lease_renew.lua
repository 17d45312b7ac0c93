-- lease_renew.lua: extend the master lease, only while we hold it (Lease.keep).
--
-- KEYS[1] master  string, id of the active master, with a TTL
-- ARGV[1] holder  our id
-- ARGV[2] ttl_ms  the new TTL in milliseconds
--
-- Returns 1 when renewed, 0 when the lease is someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
