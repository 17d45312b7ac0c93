-- cancel.lua: cancel jobs that have not finished; their result is status 'cancelled' (Store.cancel).
--
-- KEYS[1] jobs        hash id -> job body
-- KEYS[2] scheduled   zset id -> when a delayed job or a retry is due
-- KEYS[3] inflight    zset id -> deadline
-- KEYS[4] dispatched  hash id -> "<token> <time> <channel> <worker>" of the dispatch in flight
-- KEYS[5] attempts    hash id -> dispatches without a result (a dead letter has some)
-- KEYS[6] retries     hash id -> retries so far
-- KEYS[7] finished    hash status -> count
-- KEYS[8] intake      the priority-0 intake list; priority p's is KEYS[8] .. ':' .. p
-- KEYS[9] priority    hash id -> priority above 0
-- KEYS[10] unique     hash unique key -> id of the job holding it
-- KEYS[11] done       list of finished ids, oldest first (the index of finished jobs)
-- KEYS[12] wfcounts   hash outcome -> workflows (lua/workflow.lua)
-- ARGV[1] result_prefix   result:<id> keys
-- ARGV[2] ttl             seconds a result is kept
-- ARGV[3] result_channel  CHANNEL_RESULT, read by the master
-- ARGV[4] cancel_channel  read by every worker
-- ARGV[5] publish         'PUBLISH', or 'SPUBLISH' on a cluster (our channels share our keys' slot)
-- ARGV[6] workflow_prefix wf:<id> keys (lua/workflow.lua, which this script is run after)
-- ARGV[7] wakeup          the master's wake-up channel
-- then the ids
--
-- A cancelled step of a workflow fails its workflow, as a failed step does (lua/workflow.lua).
--
-- The cancel is the job's result, written here like any other (stored with the job's record, as
-- finish.lua stores one; a worker's result that comes later is dropped, its dispatch no longer being
-- in flight). The job's record goes, so nothing can run it again: a copy of its id left on an intake
-- is dropped by claim. Its unique key is free again. Who is told, once the change is durable, depends
-- on what the job was doing:
--   scheduled or queued   its waiting client (its reply channel): nobody else holds it
--   claimed by the master (in flight, no dispatch yet)   also the master, by a result without a token
--                         (it drops the job unsent, or frees the slot if it sent it meanwhile), and
--                         the workers, which drop a dispatch of it that still comes
--   running (dispatched)  also the master, by a result with the dispatch's token (it frees the slot),
--                         and the workers: the one running it interrupts it
-- The workers get one notice per call, {"v":1,"ids":[...]}: a cue, checked against the stored results.
--
-- Returns one word per id: 'cancelled', 'finished' (it has a result, or it is dead) or 'unknown'.
local prefix, ttl, result_channel, cancel_channel, publish = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local words, gone, notice, uniques, steps = {}, {}, {}, {}, {}
WF.jobs, WF.priority, WF.intake, WF.counts = KEYS[1], KEYS[9], KEYS[8], KEYS[12]
WF.result_prefix, WF.ttl, WF.publish, WF.prefix, WF.wakeup = prefix, ttl, publish, ARGV[6], ARGV[7]

-- Where a job with a record and no result is, taking it out of there (only commands the README's
-- ACL line allows: ZREM and LREM say whether the id was there).
local function where(id)
  local dispatch = redis.call('HGET', KEYS[4], id)
  if dispatch then return 'running', dispatch end
  if redis.call('ZREM', KEYS[3], id) == 1 then return 'claimed' end
  if redis.call('ZREM', KEYS[2], id) == 1 then return 'scheduled' end
  -- From the list's head, stopping at the first match: a backlog cancelled in the order it was
  -- submitted costs one step per job, not one pass over the list. (A second copy of the id, which
  -- only a race leaves, stays behind: with the record gone, claim drops it.)
  local p = redis.call('HGET', KEYS[9], id)
  if redis.call('LREM', p and (KEYS[8] .. ':' .. p) or KEYS[8], 1, id) > 0 then return 'queued' end
  -- On no list but with attempts counted: a dead letter whose result has expired, not trimmed yet.
  if redis.call('HGET', KEYS[5], id) then return 'dead' end
  return 'queued'  -- a record on no list: nothing runs it, but it goes all the same
end

local clock = wf_clock  -- Redis's clock, read once per call (lua/workflow.lua comes first)

-- The cancel's result: announced as it is, stored with the job's record (and, for a job that was
-- dispatched, its worker) as finish.lua stores results. It ends at the cancel ("t1"); a job that was
-- dispatched started when it was sent ("t0"), as far as Redis knows.
local function result_of(id, body, state, dispatch)
  local ok, job = pcall(cjson.decode, body)
  if not ok or type(job) ~= 'table' then job = {} end
  local message = state == 'running' and 'cancelled while running' or 'cancelled before it ran'
  local result = {v = 1, id = id, task = type(job.task) == 'string' and job.task or '', status = 'cancelled',
                  error = {type = 'Cancelled', message = message, traceback = ''}}
  local token = dispatch and string.match(dispatch, '^(%S+)')
  if token then result.tok = token end
  local sent = dispatch and tonumber(string.match(dispatch, '^%S+ (%S+)'))
  if sent then result.t0 = sent end
  result.t1 = clock()
  local payload = cjson.encode(result)
  local extra = ''
  if string.byte(body, 1) == 123 then  -- 123: '{', a record of ours
    extra = ',"job":' .. (#body > 65536 and cjson.encode({omitted = #body}) or body)
  end
  local worker = dispatch and string.match(dispatch, '^%S+ %S+ %S+ (.+)$')  -- token time channel worker
  if worker then extra = extra .. ',"worker":' .. cjson.encode(worker) end
  return payload, string.sub(payload, 1, -2) .. extra .. '}', job
end

for i = 8, #ARGV do
  local id = ARGV[i]
  local word = 'unknown'
  if redis.call('EXISTS', prefix .. id) == 1 then
    word = 'finished'
  else
    local body = redis.call('HGET', KEYS[1], id)
    if body then
      local state, dispatch = where(id)
      if state == 'dead' then
        word = 'finished'
      else
        word = 'cancelled'
        local payload, stored, job = result_of(id, body, state, dispatch)
        redis.call('SET', prefix .. id, stored, 'EX', ttl)
        gone[#gone + 1] = id
        if type(job.uniq) == 'string' then uniques[#uniques + 1] = {job.uniq, id} end
        local wid, node = wf_of(body)
        if wid then steps[#steps + 1] = {wid, node, id, 'cancelled', payload} end
        if type(job.reply) == 'string' and job.reply ~= '' then redis.call(publish, job.reply, payload) end
        if state == 'running' or state == 'claimed' then
          redis.call(publish, result_channel, payload)
          notice[#notice + 1] = id
        end
      end
    end
  end
  words[#words + 1] = word
end
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[3], unpack(gone))
  redis.call('HDEL', KEYS[4], unpack(gone))
  redis.call('HDEL', KEYS[5], unpack(gone))
  redis.call('HDEL', KEYS[6], unpack(gone))
  redis.call('HDEL', KEYS[9], unpack(gone))
  redis.call('RPUSH', KEYS[11], unpack(gone))
  redis.call('HINCRBY', KEYS[7], 'cancelled', #gone)
end
-- A unique key is free again (only the job holding it frees it).
for _, held in ipairs(uniques) do
  if redis.call('HGET', KEYS[10], held[1]) == held[2] then redis.call('HDEL', KEYS[10], held[1]) end
end
if #notice > 0 then
  redis.call(publish, cancel_channel, cjson.encode({v = 1, ids = notice}))
end
for _, step in ipairs(steps) do wf_guarded_step(unpack(step)) end
wf_flush()
return words
