-- trim_done.lua: the index of finished jobs keeps an id as long as its result (the result TTL): the
-- oldest, at the list's head, whose result has expired, go (Store.trim_done, master).
--
-- KEYS[1] done  list of finished ids, oldest first
-- ARGV[1] result_prefix  result:<id> keys
-- ARGV[2] limit          look at most at this many
--
-- Returns how many went.
local n = 0
for _ = 1, tonumber(ARGV[2]) do
  local id = redis.call('LRANGE', KEYS[1], 0, 0)[1]
  if not id or redis.call('EXISTS', ARGV[1] .. id) == 1 then break end  -- younger ones follow: all kept
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n
