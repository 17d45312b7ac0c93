-- wf_cancel.lua: cancel a running workflow: nothing more of it is released, and its result says it
-- was cancelled (Store.cancel_workflow, WorkflowHandle.cancel). workflow.lua is put in front of it.
--
-- KEYS[1] wf:<wid>   the workflow's hash (workflow.lua)
-- KEYS[2] jobs       hash id -> job body
-- KEYS[3] wfcounts   hash outcome -> workflows ('cancelled' counts them)
-- ARGV[1] wid             the workflow's id
-- ARGV[2] workflow_prefix wf:<wid> keys
-- ARGV[3] result_prefix   result:<id> keys
-- ARGV[4] ttl             seconds a result is kept
-- ARGV[5] publish         'PUBLISH', or 'SPUBLISH' on a cluster: the result goes to the client's reply channel
-- ARGV[6] status          the status of the cancelled workflow's result
--
-- Returns {'cancelled', ids of its released steps that have no result yet (queued, running or
-- scheduled for a retry), ...}, or {'finished'} (it had ended: nothing changed), or {'unknown'}.
WF.jobs, WF.counts = KEYS[2], KEYS[3]
WF.prefix, WF.result_prefix, WF.ttl, WF.publish = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local wid = ARGV[1]
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'unknown'} end
if state ~= 'running' then return {'finished'} end
wf_end(wid, 'cancelled', ARGV[6], cjson.encode({
  v = 1, id = wid, task = 'workflow', status = ARGV[6],
  error = {type = 'Cancelled', message = 'workflow ' .. wid .. ' was cancelled', traceback = ''}}))
local out = {'cancelled'}
local nodes = tonumber(redis.call('HGET', KEYS[1], 'nodes')) or 0
for i = 1, nodes do
  local m = wf_meta(wid, i)
  if m and m.kind == 's' and redis.call('HEXISTS', KEYS[2], m.job) == 1
      and redis.call('EXISTS', ARGV[3] .. m.job) == 0 then
    out[#out + 1] = m.job
  end
end
return out
