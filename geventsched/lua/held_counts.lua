-- held_counts.lua: how many jobs each task has held back by its limit (Store.held_counts, master);
-- a task whose held list is empty leaves the set of names.
--
-- KEYS[1] held    set of the names of tasks that have a held list
-- ARGV[1] prefix  the held lists' names are prefix .. task (our keys' slot: see keys.py)
--
-- Returns a flat list {task, count, ...} of the tasks with held jobs.
local out = {}
for _, task in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = redis.call('LLEN', ARGV[1] .. task)
  if n > 0 then
    out[#out + 1] = task
    out[#out + 1] = n
  else
    redis.call('SREM', KEYS[1], task)
  end
end
return out
