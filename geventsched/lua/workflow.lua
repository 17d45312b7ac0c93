-- workflow.lua: the workflow engine (chains, groups, chords), a library: Store puts it in front of the
-- scripts that record results (finish.lua, reap.lua) and of wf_run.lua and wf_cancel.lua, so the step
-- a result releases is queued by the same atomic call that records that result, and only by it.
--
-- It takes no KEYS or ARGV of its own: the script it is put in front of fills WF first:
--   WF.prefix          workflow keys' prefix, 'geventsched:wf:' (keys.py: workflow_prefix)
--   WF.jobs            the jobs hash; WF.intake the priority-0 intake list (priority p's: .. ':' .. p)
--   WF.priority        hash id -> priority above 0; WF.counts: wfcounts, hash outcome -> workflows
--   WF.result_prefix   result:<id> keys; WF.ttl: seconds a result is kept
--   WF.publish         'PUBLISH' or 'SPUBLISH'; WF.wakeup: the master's wake-up channel
--
-- A workflow is a tree whose nodes are numbered in preorder from 1 (the root). wf:<wid> holds
--   state    running | ok | failed | cancelled         reply    the client's reply channel ('' none)
--   nodes    how many nodes                             created, ended    unix seconds
--   groups   the group nodes, space separated           failed   job id of the step that failed it
--   n<i>     node i: "<kind> <parent> <position> <next>", then for a step (kind s) " <job id>
--            <priority> <task>", for a group (g) " <children>" (k<i>: their numbers, comma separated);
--            c is a chain, d a chord (a chain of its header group and its callback). <next> is the
--            node after i in its chain: 0 when i ends its chain (or is the root), -1 in a group.
-- A step's job record waits in wf:<wid>:t under its node until released; it ends with
-- ,"wf":"<wid>","ws":<node>}. Released, it takes the value passed to it as its first argument and
-- goes to its intake list. A step's result completes its node: a finished node starts the next one
-- of its chain with its value, or (a group's child) records its value in wf:<wid>:r under
-- "<group>:<position>" and leaves wf:<wid>:p:<group>, the group's pending set (SREM: only the
-- first time counts, so a step that ran twice counts once); the child that empties the set builds
-- the group's list from wf:<wid>:r, in order, in this one place. The root's value is the workflow's
-- result, stored under result:<wid>; the reply channel hears a cue (the result without its value). A step that fails (after
-- its retries) or dies fails the workflow: nothing more is released.
--
-- Returns nothing: it defines WF and the wf_* functions.
local WF = {}
local wf_released = {}  -- {id, record, priority} released by this call: wf_flush() queues them
local wf_local = {records = {}, metas = {}, children = {}}  -- wf_run.lua's nodes, before they are read back
local wf_now

local function wf_clock()
  if not wf_now then
    local t = redis.call('TIME')
    wf_now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  return wf_now
end

-- The workflow and node of a step's job record (the client writes them last), or nil. A plain job
-- costs one plain find over the record's last 24 bytes ("ws" ends it); the pattern, which tries
-- each of the last 64 positions (about 1 us a job in the finish script), runs only for a step.
local function wf_of(body)
  if not string.find(body, '"ws":', -24, true) then return nil end
  return string.match(body, ',"wf":"(w%d+)","ws":(%d+)}$', -64)
end

local function wf_meta(wid, i)
  local text = wf_local.metas[i] or redis.call('HGET', WF.prefix .. wid, 'n' .. i)
  if not text then return nil end
  local kind, parent, pos, nxt, rest = string.match(text, '^(%a) (%d+) (%d+) (%-?%d+) ?(.*)$')
  if not kind then return nil end
  local m = {kind = kind, parent = tonumber(parent), pos = tonumber(pos), next = tonumber(nxt)}
  if kind == 's' then
    m.job, m.prio = string.match(rest, '^(%S+) (%d+)')
  elseif kind == 'g' then
    m.n = tonumber(rest)
  end
  return m
end

-- Where the JSON string opening at s[i] ends (its closing quote).
local function wf_string_end(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if not k then return nil end
    if string.byte(s, k) == 92 then j = k + 2 else return k end  -- 92: a backslash
  end
end

-- Where the JSON value starting at s[i] ends: jumps from one bracket or quote to the next.
local function wf_value_end(s, i)
  local c = string.byte(s, i)
  if c == 34 then return wf_string_end(s, i) end  -- '"'
  if c ~= 91 and c ~= 123 then  -- neither '[' nor '{': a number, true, false or null
    local j = string.find(s, '[,}%]%s]', i)
    return j and j - 1 or #s
  end
  local depth, j = 0, i
  while true do
    j = string.find(s, '[%[%]{}"]', j)
    if not j then return nil end
    local b = string.byte(s, j)
    if b == 34 then
      j = wf_string_end(s, j)
      if not j then return nil end
    elseif b == 91 or b == 123 then
      depth = depth + 1
    else
      depth = depth - 1
      if depth == 0 then return j end
    end
    j = j + 1
  end
end

-- The JSON text of an ok result's value, as the worker wrote it: never decoded and encoded again
-- (cjson would round floats to 14 digits).
local function wf_value(payload)
  local _, e = string.find(payload, '"value":', 1, true)  -- in a quoted string '"' is escaped: the key
  if not e then return 'null' end
  local i = string.find(payload, '%S', e + 1)
  local j = i and wf_value_end(payload, i)
  return j and string.sub(payload, i, j) or nil
end

-- A step's record with ``value`` as its first argument.
local function wf_splice(record, value)
  local _, e = string.find(record, '"args":[', 1, true)
  if not e then return record end
  local rest = string.sub(record, e + 1)
  return string.sub(record, 1, e) .. value .. (string.byte(rest, 1) == 93 and '' or ',') .. rest
end

local function wf_children(wid, i)
  local text = wf_local.children[i] or redis.call('HGET', WF.prefix .. wid, 'k' .. i) or ''
  local out = {}
  for c in string.gmatch(text, '%d+') do out[#out + 1] = tonumber(c) end
  return out
end

local function wf_release(wid, i, m, input)
  local record = wf_local.records[i]
  if record then
    wf_local.records[i] = false  -- queued now: not written to wf:<wid>:t
  else
    local templates = WF.prefix .. wid .. ':t'
    record = redis.call('HGET', templates, i)
    if not record then return end
    redis.call('HDEL', templates, i)
  end
  if input then record = wf_splice(record, input) end
  wf_released[#wf_released + 1] = {m.job, record, m.prio or '0'}
end

-- The workflow ends in ``state`` with ``result`` (its JSON, status ``status``). Its client hears a
-- cue without the value, which may be larger than any message it reads: it reads the stored result.
local function wf_end(wid, state, status, result, failed)
  local key = WF.prefix .. wid
  local groups = redis.call('HGET', key, 'groups')
  redis.call('HSET', key, 'state', state, 'ended', wf_clock())
  if failed then redis.call('HSET', key, 'failed', failed) end
  redis.call('SET', WF.result_prefix .. wid, result, 'EX', WF.ttl)
  redis.call('HINCRBY', WF.counts, state, 1)
  -- What only a running workflow needs goes; its tree stays for lookups as long as its result.
  local gone = {key .. ':r'}
  for g in string.gmatch(groups or '', '%d+') do
    gone[#gone + 1] = key .. ':p:' .. g
    if #gone == 1000 then
      redis.call('DEL', unpack(gone))
      gone = {}
    end
  end
  if #gone > 0 then redis.call('DEL', unpack(gone)) end
  redis.call('PEXPIRE', key, WF.ttl * 1000)
  redis.call('PEXPIRE', key .. ':t', WF.ttl * 1000)
  local reply = redis.call('HGET', key, 'reply')
  if reply and reply ~= '' then
    redis.call(WF.publish, reply, '{"v":1,"id":"' .. wid .. '","task":"workflow","status":"' .. status .. '"}')
  end
end

local FAILED_STATUSES = {error = true, timeout = true, dead = true, cancelled = true}

local function wf_fail(wid, id, status, payload)
  local ok, result = pcall(cjson.decode, payload)
  if not ok or type(result) ~= 'table' then result = {} end
  local err = type(result.error) == 'table' and result.error or {}
  local task = type(result.task) == 'string' and result.task ~= '' and result.task or '?'
  local message = type(err.message) == 'string' and err.message or status
  status = FAILED_STATUSES[status] and status or 'error'
  wf_end(wid, 'failed', status, cjson.encode({
    v = 1, id = wid, task = 'workflow', status = status,
    error = {type = type(err.type) == 'string' and err.type or status,
             message = 'step ' .. task .. ' (job ' .. id .. ') failed: ' .. message,
             traceback = type(err.traceback) == 'string' and err.traceback or ''},
    step = id, step_task = task}), id)
end

-- All of a group's values, in order, as one JSON list; its entries in wf:<wid>:r go.
local function wf_collect(results, g, n)
  local parts = {}
  for first = 1, n, 1000 do
    local fields = {}
    for p = first, math.min(n, first + 999) do fields[#fields + 1] = g .. ':' .. p end
    local values = redis.call('HMGET', results, unpack(fields))
    for k = 1, #fields do parts[#parts + 1] = values[k] or 'null' end
    redis.call('HDEL', results, unpack(fields))
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

local wf_start, wf_complete

-- Start node i with ``input`` (JSON text, or nil: nothing is passed) as its first argument.
wf_start = function(wid, i, input)
  local m = wf_meta(wid, i)
  if not m then return end
  if m.kind == 's' then return wf_release(wid, i, m, input) end
  if m.kind ~= 'g' then return wf_start(wid, i + 1, input) end  -- a chain or chord: its first node
  local children = wf_children(wid, i)
  local pending, positions = WF.prefix .. wid .. ':p:' .. i, {}
  for p = 1, #children do
    positions[#positions + 1] = p
    if #positions == 1000 or p == #children then
      redis.call('SADD', pending, unpack(positions))
      positions = {}
    end
  end
  for _, child in ipairs(children) do wf_start(wid, child, input) end
end

-- Node i finished with ``value`` (JSON text).
wf_complete = function(wid, i, value)
  local m = wf_meta(wid, i)
  if not m then return end
  if m.parent == 0 then
    return wf_end(wid, 'ok', 'ok', '{"v":1,"id":"' .. wid .. '","task":"workflow","status":"ok","value":' .. value .. '}')
  end
  if m.next > 0 then return wf_start(wid, m.next, value) end
  if m.next == 0 then return wf_complete(wid, m.parent, value) end
  local key = WF.prefix .. wid
  local pending = key .. ':p:' .. m.parent
  if redis.call('SREM', pending, m.pos) == 0 then return end  -- this child was counted already
  redis.call('HSET', key .. ':r', m.parent .. ':' .. m.pos, value)
  if redis.call('EXISTS', pending) == 1 then return end  -- an empty set is no key: every child is in
  local group = wf_meta(wid, m.parent)
  if not group or not group.n then error('workflow ' .. wid .. ': no group at node ' .. m.parent) end
  return wf_complete(wid, m.parent, wf_collect(key .. ':r', m.parent, group.n))
end

-- The hook: step ``node`` of workflow ``wid`` (job ``id``) has its result, recorded just now.
local function wf_step(wid, node, id, status, payload)
  if redis.call('HGET', WF.prefix .. wid, 'state') ~= 'running' then return end
  if status == 'ok' then
    local value = wf_value(payload)
    if value then return wf_complete(wid, tonumber(node), value) end
    status, payload = 'error', cjson.encode({error = {type = 'BadResult', message = 'its value does not parse'}})
  end
  wf_fail(wid, id, status, payload)
end

-- wf_step, guarded: an error in it (a bug, a key someone else wrote, a command the ACL denies)
-- fails that workflow, and only it, rather than the whole call, which would leave the batch's
-- results recorded (Redis does not roll a script back) and the workflow waiting for ever.
local function wf_guarded_step(wid, node, id, status, payload)
  local released = #wf_released
  local ok, err = pcall(wf_step, wid, node, id, status, payload)
  if ok then return end
  for i = #wf_released, released + 1, -1 do wf_released[i] = nil end  -- nothing of it is queued
  local message = type(err) == 'table' and (err.err or err.message) or err
  pcall(wf_end, wid, 'failed', 'error', cjson.encode({
    v = 1, id = wid, task = 'workflow', status = 'error',
    error = {type = 'WorkflowError', message = 'workflow ' .. wid .. ' broke on the result of job ' .. id .. ': '
             .. tostring(message), traceback = ''}, step = id}), id)
end

-- Queue the steps released by this call and wake the master.
local function wf_flush()
  if #wf_released == 0 then return end
  local fields, lists, order, priorities = {}, {}, {}, {}
  for _, r in ipairs(wf_released) do
    fields[#fields + 1] = r[1]
    fields[#fields + 1] = r[2]
    if #fields >= 1000 then
      redis.call('HSET', WF.jobs, unpack(fields))
      fields = {}
    end
    local list = WF.intake
    if r[3] ~= '0' then
      list = WF.intake .. ':' .. r[3]
      priorities[#priorities + 1] = r[1]
      priorities[#priorities + 1] = r[3]
    end
    if not lists[list] then
      lists[list] = {}
      order[#order + 1] = list
    end
    table.insert(lists[list], r[1])
  end
  if #fields > 0 then redis.call('HSET', WF.jobs, unpack(fields)) end
  for first = 1, #priorities, 1000 do
    redis.call('HSET', WF.priority, unpack(priorities, first, math.min(#priorities, first + 999)))
  end
  for _, list in ipairs(order) do
    local ids = lists[list]
    for first = 1, #ids, 1000 do redis.call('RPUSH', list, unpack(ids, first, math.min(#ids, first + 999))) end
  end
  redis.call(WF.publish, WF.wakeup, '1')
  wf_released = {}
end
