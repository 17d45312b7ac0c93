-- reap.lua: jobs in flight past their deadline go back to the intake, or are dead-lettered after
-- their last attempt (Store.reap, master).
--
-- KEYS[1] inflight    zset id -> deadline
-- KEYS[2] jobs        hash id -> job body
-- KEYS[3] attempts    hash id -> dispatches without a result
-- KEYS[4] intake      list of queued job ids
-- KEYS[5] dead        list of dead-lettered ids
-- KEYS[6] finished    hash status -> count
-- KEYS[7] dispatched  hash id -> "<token> <time> <channel> <worker>" of the dispatch in flight
-- KEYS[8] priority    hash id -> priority above 0 (priority p's intake is KEYS[4] .. ':' .. p)
-- KEYS[9] wfcounts    hash outcome -> workflows
-- ARGV[1] now            unix seconds
-- ARGV[2] limit          at most this many per call
-- ARGV[3] max_attempts   a job dies at this many attempts
-- ARGV[4] result_prefix  result:<id> keys (a job with a result is only dropped from in flight)
-- ARGV[5] ttl            seconds a dead letter's result is kept
-- ARGV[6] publish        'PUBLISH', or 'SPUBLISH' on a cluster: a dead job's result goes to its reply channel
-- ARGV[7] workflow_prefix  wf:<wid> keys (workflow.lua, put in front of this script)
-- ARGV[8] wakeup         the master's wake-up channel
--
-- A dead workflow step fails its workflow in this same call (workflow.lua).
--
-- Returns {requeued ids, dead ids}.
WF.jobs, WF.intake, WF.priority, WF.counts = KEYS[2], KEYS[4], KEYS[8], KEYS[9]
WF.result_prefix, WF.ttl, WF.publish, WF.prefix, WF.wakeup = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local max_attempts = tonumber(ARGV[3])
local requeued, dead = {}, {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[7], id)
  local body = redis.call('HGET', KEYS[2], id)
  if body and redis.call('EXISTS', ARGV[4] .. id) == 0 then
    local attempts = redis.call('HINCRBY', KEYS[3], id, 1)
    if attempts < max_attempts then
      local p = redis.call('HGET', KEYS[8], id)
      redis.call('LPUSH', p and (KEYS[4] .. ':' .. p) or KEYS[4], id)
      requeued[#requeued + 1] = id
    else
      local ok, job = pcall(cjson.decode, body)
      if not ok or type(job) ~= 'table' then job = {} end
      local result = cjson.encode({v = 1, id = id, task = job.task or '', status = 'dead',
        error = {type = 'DeadLetter', message = 'no result after ' .. attempts .. ' attempts',
                 traceback = ''}})
      redis.call('SET', ARGV[4] .. id, result, 'EX', ARGV[5])
      redis.call('RPUSH', KEYS[5], id)
      redis.call('HINCRBY', KEYS[6], 'dead', 1)
      if type(job.reply) == 'string' and job.reply ~= '' then redis.call(ARGV[6], job.reply, result) end
      local wid, node = wf_of(body)
      if wid then wf_guarded_step(wid, node, id, 'dead', result) end
      dead[#dead + 1] = id
    end
  end
end
return {requeued, dead}
