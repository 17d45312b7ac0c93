-- lease_release.lua: give the master lease up, only if we hold it (Lease.release).
--
-- KEYS[1] master  string, id of the active master, with a TTL
-- ARGV[1] holder  our id
--
-- Returns 1 when released, 0 when the lease is someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
