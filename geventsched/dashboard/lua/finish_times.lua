-- finish_times.lua: when the jobs at some places of the index of finished jobs finished (the
-- dashboard's charts). finish.lua stores a result with SET EX ttl in the same script that appends its
-- id to the index, so its finish time is now - ttl + its remaining time to live: read without
-- reading the result itself. Along the list, oldest first, these times never decrease.
--
-- KEYS[1] done           list of finished ids, oldest first
-- ARGV[1] result_prefix  result:<id> keys
-- ARGV[2] ttl            seconds results are kept
-- ARGV[3..]              places in the list counted from its tail (0 = the newest)
--
-- Returns, for each place, its id ('' past the head) and its finish time as a string ('0' past the
-- head, or for a result gone already: older than anything the charts show).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ttl = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local id = redis.call('LINDEX', KEYS[1], -1 - tonumber(ARGV[i]))
  local at = 0
  if id then
    local left = redis.call('PTTL', ARGV[1] .. id)
    if left > 0 then at = now - ttl + left / 1000 end
  end
  out[#out + 1] = id or ''
  out[#out + 1] = string.format('%.3f', at)
end
return out
