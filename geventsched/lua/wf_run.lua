-- wf_run.lua: start a workflow: write its tree and the job records of its steps, and queue the steps
-- that can run at once (Store.run_workflow, Client.run). workflow.lua is put in front of it.
--
-- KEYS[1] jobs       hash id -> job body
-- KEYS[2] intake     the priority-0 intake list; priority p's is KEYS[2] .. ':' .. p
-- KEYS[3] priority   hash id -> priority above 0
-- KEYS[4] wfcounts   hash outcome -> workflows ('started' counts them here)
-- KEYS[5] wf:<wid>   the workflow's hash (workflow.lua)
-- KEYS[6] wf:<wid>:t node -> job record of each step not released yet
-- ARGV[1] wid             the workflow's id, 'w' and digits
-- ARGV[2] reply           the client's reply channel ('' = none): told the workflow's result
-- ARGV[3] workflow_prefix wf:<wid> keys
-- ARGV[4] result_prefix   result:<id> keys
-- ARGV[5] ttl             seconds a result is kept
-- ARGV[6] publish         'PUBLISH', or 'SPUBLISH' on a cluster
-- ARGV[7] wakeup          the master's wake-up channel
-- then for each node, in preorder from 1 (the root): its line n<i> (workflow.lua), its job record
-- ('' unless a step) and its children's numbers, comma separated ('' unless a group)
--
-- Returns how many steps were queued.
WF.jobs, WF.intake, WF.priority, WF.counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
WF.prefix, WF.result_prefix, WF.ttl, WF.publish, WF.wakeup = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local wid = ARGV[1]
if not string.match(wid, '^w%d+$') then return redis.error_reply('ERR bad workflow id ' .. wid) end
if redis.call('EXISTS', KEYS[5]) == 1 then return redis.error_reply('ERR workflow ' .. wid .. ' exists') end
local fields, groups, n = {}, {}, 0
local function flush_fields(key)
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
  fields = {}
end
for a = 8, #ARGV, 3 do
  n = n + 1
  wf_local.metas[n] = ARGV[a]
  fields[#fields + 1] = 'n' .. n
  fields[#fields + 1] = ARGV[a]
  if ARGV[a + 1] ~= '' then wf_local.records[n] = ARGV[a + 1] end
  if ARGV[a + 2] ~= '' then
    wf_local.children[n] = ARGV[a + 2]
    fields[#fields + 1] = 'k' .. n
    fields[#fields + 1] = ARGV[a + 2]
    groups[#groups + 1] = n
  end
  if #fields >= 1000 then flush_fields(KEYS[5]) end
end
fields[#fields + 1] = 'state'
fields[#fields + 1] = 'running'
fields[#fields + 1] = 'reply'
fields[#fields + 1] = ARGV[2]
fields[#fields + 1] = 'nodes'
fields[#fields + 1] = n
fields[#fields + 1] = 'created'
fields[#fields + 1] = wf_clock()
fields[#fields + 1] = 'groups'
fields[#fields + 1] = table.concat(groups, ' ')
flush_fields(KEYS[5])
wf_start(wid, 1, nil)
-- The steps that wait for others keep their records in wf:<wid>:t until released.
for i = 1, n do
  local record = wf_local.records[i]
  if record then
    fields[#fields + 1] = i
    fields[#fields + 1] = record
    if #fields >= 1000 then flush_fields(KEYS[6]) end
  end
end
flush_fields(KEYS[6])
local queued = #wf_released
wf_flush()
redis.call('HINCRBY', KEYS[4], 'started', 1)
return queued
