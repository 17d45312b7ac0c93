-- finish.lua: record a batch of results, the first per job wins (Store.finish, worker and master).
--
-- KEYS[1] finished    hash status -> count
-- KEYS[2] inflight    zset id -> deadline
-- KEYS[3] jobs        hash id -> job body
-- KEYS[4] attempts    hash id -> dispatches without a result
-- KEYS[5] retries     hash id -> retries so far
-- KEYS[6] scheduled   zset id -> when a failed job runs again
-- KEYS[7] dispatched  hash id -> "<token> <time> <channel> <worker>" of the dispatch in flight
-- KEYS[8] done        list of finished ids, oldest first (the index of finished jobs)
-- KEYS[9] priority    hash id -> priority above 0
-- KEYS[10] unique     hash unique key -> id of the job holding it
-- KEYS[11] intake     the priority-0 intake list (priority p's is KEYS[11] .. ':' .. p): released steps
-- KEYS[12] wfcounts   hash outcome -> workflows
-- ARGV[1] result_prefix   result:<id> keys
-- ARGV[2] ttl             seconds a result is kept
-- ARGV[3] result_channel  '' = do not announce to the master
-- ARGV[4] F               how many final results follow
-- ARGV[5] trusted         '1': the master records results of jobs it holds itself; no token check
-- ARGV[6] publish         'PUBLISH', or 'SPUBLISH' on a cluster (our channels share our keys' slot)
-- ARGV[7] workflow_prefix wf:<wid> keys (workflow.lua, put in front of this script)
-- ARGV[8] wakeup          the master's wake-up channel, told when a workflow step is released
-- ARGV[9] reply_keys      replykey:<channel> keys' prefix: a reply frame for a client that keeps its
--                         secret there is signed with it ('' = sign nothing; protocol.reply_mac)
-- then id, status, payload, reply, token, frames for each of the F results,
-- then id, status, payload, reply, token, frames, task, max_retries, backoff for each failure that
-- may retry; frames: 'R' = announce it to the master in the batch's result frame, 'C' = to its client
-- in a reply frame (one per client per batch), else one message each (protocol.py)
--
-- A result counts only with the token of the job's dispatch in flight (``dispatched``): a stranger's
-- message, or a late copy of a job dispatched again meanwhile, is dropped without a trace.
-- The stored result keeps the job's record: the result's JSON object with ``"job": <record>`` (and
-- ``"worker"``, the worker it was dispatched to) added, so a finished job can still be looked up
-- whole (a record over 64 KiB is replaced by ``{"omitted": its size}``; a result over 16 KiB is
-- stored alone: copying it inside the script cost more than the rest of the call). Announcements
-- carry the result alone; of one over 16 KiB, client and master hear only a cue (``cue``: its id,
-- status and token, all the master reads of any result; the client reads the stored one), so no
-- subscriber's buffer fills with large values.
-- A result of a workflow's step (its record ends with "wf" and "ws") moves its workflow on, in
-- this same call: the next step is queued, or the workflow fails (workflow.lua).
-- Returns how many results were new.
local prefix, ttl, channel, finals = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local trusted = ARGV[5] == '1'
local publish = ARGV[6]
local recorded, counts, uniques, steps = {}, {}, {}, {}
WF.jobs, WF.priority, WF.intake, WF.counts = KEYS[3], KEYS[9], KEYS[11], KEYS[12]
WF.result_prefix, WF.ttl, WF.publish, WF.prefix, WF.wakeup = prefix, ttl, publish, ARGV[7], ARGV[8]
-- Frames being filled, per channel: {payloads, bytes}. A frame goes out before it passes FRAME_BYTES
-- (a result over 16 KiB is announced as a cue instead), so no frame outgrows what a reader takes.
local FRAME_BYTES = 262144  -- protocol.FRAME_BYTES
-- A result larger than this is stored without its job's record (copying it inside the script cost
-- more than the rest of the call) and announced as a cue, not in a frame.
local LARGE = 16384
local frames_of, secrets, reply_keys = {}, {}, ARGV[9]
-- A reply frame ends with a MAC of its results under its client's secret, which only that client
-- and Redis know: the client then believes the frame as it is, without reading the results back.
local function secret_of(to)
  local secret = secrets[to]
  if secret == nil then
    secret = to ~= channel and reply_keys ~= '' and redis.pcall('GET', reply_keys .. to)
    if type(secret) ~= 'string' then secret = false end  -- none (or not ours to read): unsigned
    secrets[to] = secret
  end
  return secret
end
local function flush(to)
  local frame = frames_of[to]
  if frame and #frame[1] > 0 then
    local results, secret = table.concat(frame[1], ','), secret_of(to)
    if secret then
      redis.call(publish, to, '{"v":2,"results":[' .. results .. '],"mac":"'
        .. redis.sha1hex(secret .. results .. secret) .. '"}')
    else
      redis.call(publish, to, '{"v":2,"results":[' .. results .. ']}')
    end
    frames_of[to] = nil
  end
end
local function add(to, payload)  -- (a payload over 16 KiB never comes here: see announce)
  local frame = frames_of[to]
  if frame and frame[2] + #payload > FRAME_BYTES then
    flush(to)
    frame = nil
  end
  if not frame then
    frame = {{}, 0}
    frames_of[to] = frame
  end
  frame[1][#frame[1] + 1] = payload
  frame[2] = frame[2] + #payload + 1
end
-- What client and master hear of a result over 16 KiB (protocol.py): the value stays in Redis.
local function cue(id, status, token)
  return '{"v":1,"id":' .. cjson.encode(id) .. ',"status":' .. cjson.encode(status) .. ',"tok":'
    .. cjson.encode(token) .. ',"cue":true}'
end
local function announce(reply, payload, frames, id, status, token)
  if #payload > LARGE then
    local message = cue(id, status, token)
    if reply ~= '' then redis.call(publish, reply, message) end
    if channel ~= '' then redis.call(publish, channel, message) end
    return
  end
  if reply ~= '' then
    if string.find(frames, 'C', 1, true) then add(reply, payload) else redis.call(publish, reply, payload) end
  end
  if channel ~= '' then
    if string.find(frames, 'R', 1, true) then
      add(channel, payload)
    else
      redis.call(publish, channel, payload)
    end
  end
end
local function stored(payload, body, dispatch)
  if not body or #payload > LARGE or string.byte(payload, -1) ~= 125 then return payload end  -- 125: '}'
  if #body > 65536 then body = cjson.encode({omitted = #body}) end  -- a large record is not kept twice
  local worker = dispatch and string.match(dispatch, '^%S+ %S+ %S+ (.+)$')  -- token time channel worker
  if not worker then return string.sub(payload, 1, -2) .. ',"job":' .. body .. '}' end
  -- One concatenation, and cjson only for a name that needs escaping: this runs once per job.
  if string.find(worker, '[%c"\\]') then worker = cjson.encode(worker) else worker = '"' .. worker .. '"' end
  return string.sub(payload, 1, -2) .. ',"job":' .. body .. ',"worker":' .. worker .. '}'
end
local function record(id, status, payload, reply, frames, body, dispatch, token)
  if redis.call('SET', prefix .. id, stored(payload, body, dispatch), 'NX', 'EX', ttl) then
    recorded[#recorded + 1] = id
    counts[status] = (counts[status] or 0) + 1
    if body then
      if string.find(body, '"uniq":', 1, true) then uniques[#uniques + 1] = body end
      local wid, node = wf_of(body)
      if wid then steps[#steps + 1] = {wid, node, id, status, payload} end
    end
    announce(reply, payload, frames, id, status, token)
  end
end
local last = 9 + finals * 6
local dispatches, bodies = {}, {}
if finals > 0 then  -- one HMGET each for every final result, not one HGET per job
  local ids = {}
  for i = 10, last, 6 do ids[#ids + 1] = ARGV[i] end
  dispatches = redis.call('HMGET', KEYS[7], unpack(ids))
  bodies = redis.call('HMGET', KEYS[3], unpack(ids))
end
local n = 0
for i = 10, last, 6 do
  n = n + 1
  local token, dispatch = ARGV[i + 4], dispatches[n]
  if trusted or (dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' ') then
    record(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 5], bodies[n], dispatch, token)
  end
end
local clock = wf_clock  -- Redis's clock, read once per call (lua/workflow.lua comes first)
for i = last + 1, #ARGV, 9 do
  local id, token, frames, task = ARGV[i], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local max_retries, backoff = tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
  local dispatch = redis.call('HGET', KEYS[7], id)
  if trusted or (dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' ') then
    local retried = redis.call('HINCRBY', KEYS[5], id, 1)
    if retried > max_retries then
      record(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], frames, redis.call('HGET', KEYS[3], id), dispatch, token)
    else
      -- Exponential backoff; the worker already scaled backoff by a random jitter factor.
      redis.call('ZADD', KEYS[6], clock() + math.min(3600, backoff * 2 ^ (retried - 1)), id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[7], id)
      announce('', cjson.encode({v = 1, id = id, task = task, status = 'retry', tok = token}), frames)
    end
  end
end
if #recorded > 0 then
  redis.call('ZREM', KEYS[2], unpack(recorded))
  redis.call('HDEL', KEYS[3], unpack(recorded))
  redis.call('HDEL', KEYS[4], unpack(recorded))
  redis.call('HDEL', KEYS[5], unpack(recorded))
  redis.call('HDEL', KEYS[7], unpack(recorded))
  redis.call('HDEL', KEYS[9], unpack(recorded))
  redis.call('RPUSH', KEYS[8], unpack(recorded))
end
-- A unique key is free again once its job has a result (only the job holding it frees it).
for _, body in ipairs(uniques) do
  local ok, job = pcall(cjson.decode, body)
  if ok and type(job) == 'table' and type(job.uniq) == 'string' and type(job.id) == 'string'
      and redis.call('HGET', KEYS[10], job.uniq) == job.id then
    redis.call('HDEL', KEYS[10], job.uniq)
  end
end
for status, n in pairs(counts) do redis.call('HINCRBY', KEYS[1], status, n) end
for _, step in ipairs(steps) do wf_guarded_step(unpack(step)) end
wf_flush()
for to in pairs(frames_of) do flush(to) end
return #recorded
