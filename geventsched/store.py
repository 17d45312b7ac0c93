"""Durable job state in Redis: the source of truth that pub/sub messages only announce.

Every multi-key change is one Lua script over a whole batch, so a batch of jobs costs one round trip
and a crash can never leave half of a change behind. Key layout: see ``keys.py``.

A job's life::

    submit   HSET jobs id body; RPUSH intake id; PUBLISH wakeup       (Client)
    claim    LPOP intake n; HMGET jobs; ZADD inflight deadline id ...     (Master, one script per batch)
    finish   SET result:id NX EX ttl -> if new: HINCRBY finished status; ZREM inflight; HDEL jobs;
             PUBLISH reply; and PUBLISH CHANNEL_RESULT                (Worker, one script per batch)
             (a failure with retries left goes to ``scheduled`` instead, due after its backoff)
    promote  scheduled retries that are due -> intake                 (Master, once a second)
    reap     in flight past its deadline -> back to the intake, or dead after the last attempt
                                                                      (Master, once a second)

``SET result NX`` makes the first result the only one recorded, so a job that ran twice (its worker
was thought dead, or its deadline passed while it still ran) is counted once.
"""

import json
import time
from dataclasses import dataclass

DEFAULT_RESULT_TTL = 24 * 3600
#: Extra time past a job's own timeout before the master thinks it lost: covers time queued on the worker.
DEADLINE_SLACK = 30.0
#: Deadline of a claimed job not yet published: a master that dies holding it loses it for this long.
CLAIM_GRACE = 10.0

# Scripts batch their writes: one ZADD/HDEL/ZREM for the whole batch, never one per job where a
# single call can carry many. In Redis 7 each redis.call() costs about a microsecond of overhead, as
# much as the command itself, so this is what sets the durable-mode ceiling (bench/README.md).
#
# ``attempts`` counts the dispatches that did not produce a result (deadline passed, worker lost,
# handed back); a job's current attempt is that count + 1.

_CLAIM = """
-- KEYS: intake, jobs, inflight, attempts; ARGV: count, deadline
-- The deadline is short: the master moves it to the job's own once the job is published, so a job
-- claimed by a master that died before publishing it comes back within seconds.
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
local attempts = redis.call('HMGET', KEYS[4], unpack(ids))
local deadlines, out = {}, {}
for i, id in ipairs(ids) do
  local body = bodies[i]
  if body then
    deadlines[#deadlines + 1] = ARGV[2]
    deadlines[#deadlines + 1] = id
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = (tonumber(attempts[i]) or 0) + 1
  end
end
if #deadlines > 0 then redis.call('ZADD', KEYS[3], unpack(deadlines)) end
return out
"""

_FINISH = """
-- KEYS: finished, inflight, jobs, attempts, retries, scheduled, dispatched
-- ARGV: result_prefix, ttl, result_channel ('' = do not announce to the master), final count F,
--       trusted ('1': the master records results of jobs it holds itself; no token check),
--       then id, status, payload, reply, token for each of the F results,
--       then id, status, payload, reply, token, task, max_retries, backoff for each failure that may retry
-- A result counts only with the token of the job's dispatch in flight (``dispatched``): a stranger's
-- message, or a late copy of a job dispatched again meanwhile, is dropped without a trace.
local prefix, ttl, channel, finals = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local trusted = ARGV[5] == '1'
local recorded, counts = {}, {}
local function current(id, token)
  if trusted then return true end
  local dispatch = redis.call('HGET', KEYS[7], id)
  return dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' '
end
local function record(id, status, payload, reply)
  if redis.call('SET', prefix .. id, payload, 'NX', 'EX', ttl) then
    recorded[#recorded + 1] = id
    counts[status] = (counts[status] or 0) + 1
    if reply ~= '' then redis.call('PUBLISH', reply, payload) end
    if channel ~= '' then redis.call('PUBLISH', channel, payload) end
  end
end
local last = 5 + finals * 5
local dispatches = {}
if finals > 0 and not trusted then  -- one HMGET for every final result, not one HGET each
  local ids = {}
  for i = 6, last, 5 do ids[#ids + 1] = ARGV[i] end
  dispatches = redis.call('HMGET', KEYS[7], unpack(ids))
end
local n = 0
for i = 6, last, 5 do
  n = n + 1
  local token, dispatch = ARGV[i + 4], dispatches[n]
  if trusted or (dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' ') then
    record(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
local now
for i = last + 1, #ARGV, 8 do
  local id, token, task = ARGV[i], ARGV[i + 4], ARGV[i + 5]
  local max_retries, backoff = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
  if current(id, token) then
    local retried = redis.call('HINCRBY', KEYS[5], id, 1)
    if retried > max_retries then
      record(id, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    else
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) + tonumber(t[2]) / 1e6
      end
      -- Exponential backoff; the worker already scaled backoff by a random jitter factor.
      redis.call('ZADD', KEYS[6], now + math.min(3600, backoff * 2 ^ (retried - 1)), id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[7], id)
      if channel ~= '' then
        redis.call('PUBLISH', channel, cjson.encode({v = 1, id = id, task = task, status = 'retry', tok = token}))
      end
    end
  end
end
if #recorded > 0 then
  redis.call('ZREM', KEYS[2], unpack(recorded))
  redis.call('HDEL', KEYS[3], unpack(recorded))
  redis.call('HDEL', KEYS[4], unpack(recorded))
  redis.call('HDEL', KEYS[5], unpack(recorded))
  redis.call('HDEL', KEYS[7], unpack(recorded))
end
for status, n in pairs(counts) do redis.call('HINCRBY', KEYS[1], status, n) end
return #recorded
"""

_PROMOTE = """
-- Retries whose backoff ran out go back to the intake. KEYS: scheduled, intake; ARGV: now, limit
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('RPUSH', KEYS[2], unpack(ids))
return #ids
"""

_REAP = """
-- KEYS: inflight, jobs, attempts, intake, dead, finished, dispatched
-- ARGV: now, limit, max_attempts, result_prefix, ttl
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
      redis.call('LPUSH', KEYS[4], id)
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
      if type(job.reply) == 'string' and job.reply ~= '' then redis.call('PUBLISH', job.reply, result) end
      dead[#dead + 1] = id
    end
  end
end
return {requeued, dead}
"""

_TAKE = """
-- --durability none: take jobs off the intake with no in-flight record (at most once).
-- KEYS: intake, jobs; ARGV: count
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local bodies = redis.call('HMGET', KEYS[2], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  if bodies[i] then
    out[#out + 1] = id
    out[#out + 1] = bodies[i]
  end
end
return out
"""

_REQUEUE = """
-- Jobs handed back unrun (a worker or master shutting down): not a failed attempt.
-- KEYS: inflight, intake, dispatched; ARGV[1]: result_prefix, ARGV[2]: trusted ('1': claimed by the
-- master and never dispatched), then id, token of each job handed back (a worker hands back only the
-- dispatch it was given: a job a stranger published under a real id stays where it is)
local n = 0
local trusted = ARGV[2] == '1'
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local dispatch = redis.call('HGET', KEYS[3], id)
  local mine = trusted or (dispatch and string.sub(dispatch, 1, #token + 1) == token .. ' ')
  if mine then
    redis.call('HDEL', KEYS[3], id)
    if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('EXISTS', ARGV[1] .. id) == 0 then
      redis.call('LPUSH', KEYS[2], id)
      n = n + 1
    end
  end
end
return n
"""

_REQUEUE_DEAD = """
-- One slice of the dead letters back to the queue. KEYS: dead, jobs, intake, attempts, finished, retries
-- ARGV: result_prefix, task ('' = any), start, count. Returns {requeued, removed, scanned}: the caller
-- goes on at start + scanned - removed while scanned == count.
local ids = redis.call('LRANGE', KEYS[1], ARGV[3], tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1)
local n, removed = 0, 0
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  local match = ARGV[2] == ''
  if body and not match then
    local ok, job = pcall(cjson.decode, body)
    match = ok and type(job) == 'table' and job.task == ARGV[2]
  end
  if match then
    redis.call('LREM', KEYS[1], 1, id)
    removed = removed + 1
    if body then
      redis.call('DEL', ARGV[1] .. id)
      redis.call('HDEL', KEYS[4], id)
      redis.call('HDEL', KEYS[6], id)
      redis.call('HINCRBY', KEYS[5], 'dead', -1)
      redis.call('RPUSH', KEYS[3], id)
      n = n + 1
    end
  end
end
return {n, removed, #ids}
"""

_TRIM_DEAD = """
-- Dead letters are kept as long as their result (the result TTL): the oldest, whose result has expired,
-- go, body and counters too. KEYS: dead, jobs, attempts, retries; ARGV: result_prefix, limit
local ids = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local n = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then break end  -- younger ones follow: all still kept
  redis.call('LPOP', KEYS[1])
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  n = n + 1
end
return n
"""

_CLAIM_CHANNELS = """
-- KEYS: channels, workers, worker_key; ARGV: worker_id, heartbeat, ttl, worker_prefix, partial, channel...
-- Returns the channels held by another live worker, with their holder: {channel, holder, ...}. With
-- partial = '0' nothing is claimed when there is any such channel; with '1' the free ones are.
local me = ARGV[1]
local held, free = {}, {}
for i = 6, #ARGV do
  local owner = redis.call('HGET', KEYS[1], ARGV[i])
  if owner and owner ~= me and redis.call('EXISTS', ARGV[4] .. owner) == 1 then
    held[#held + 1] = ARGV[i]
    held[#held + 1] = owner
  else
    free[#free + 1] = ARGV[i]
  end
end
if #held > 0 and ARGV[5] ~= '1' then return held end
for i = 1, #free, 1000 do
  local batch = {}
  for j = i, math.min(i + 999, #free) do
    batch[#batch + 1] = free[j]
    batch[#batch + 1] = me
  end
  redis.call('HSET', KEYS[1], unpack(batch))
end
redis.call('SADD', KEYS[2], me)
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
return held
"""

_RELEASE_WORKER = """
-- KEYS: channels, workers, worker_key; ARGV: worker_id, channels_only ('1': a draining worker gives
-- its channels up for its successor, and keeps its registration until its last job is recorded)
local me = ARGV[1]
local owned = redis.call('HGETALL', KEYS[1])
local mine = {}
for i = 1, #owned, 2 do
  if owned[i + 1] == me then mine[#mine + 1] = owned[i] end
end
for i = 1, #mine, 1000 do
  redis.call('HDEL', KEYS[1], unpack(mine, i, math.min(i + 999, #mine)))
end
if ARGV[2] ~= '1' then
  redis.call('SREM', KEYS[2], me)
  redis.call('DEL', KEYS[3])
end
return #mine
"""


@dataclass(slots=True)
class Outcome:
    """One result on its way to ``Store.finish``: the job, its status, the encoded result, where to
    announce it and the dispatch token it answers. A failure that may run again also carries its
    task, its retries and its backoff (seconds before the first retry, jitter applied)."""

    id: str
    status: str
    payload: bytes
    reply: str | None
    token: str | None
    task: str = ""
    max_retries: int = 0
    backoff: float = 0.0


class Store:
    """Batched operations on the durable state of one namespace. ``client`` is a redis-py client."""

    def __init__(self, client, keys, result_ttl=DEFAULT_RESULT_TTL):
        self.client = client
        self.keys = keys
        self.result_ttl = int(result_ttl)
        # On a cluster every key and channel of ours shares one slot (keys.py): scripts and wake-ups
        # publish on the sharded twin of PUBLISH, which stays on that slot's shard.
        sharded = keys.cluster
        self._wake_up = client.spublish if sharded else client.publish

        def register(script):
            return client.register_script(script.replace("'PUBLISH'", "'SPUBLISH'") if sharded else script)

        self._claim = register(_CLAIM)
        self._take = register(_TAKE)
        self._finish = register(_FINISH)
        self._promote = register(_PROMOTE)
        self._reap = register(_REAP)
        self._requeue = register(_REQUEUE)
        self._requeue_dead = register(_REQUEUE_DEAD)
        self._trim_dead = register(_TRIM_DEAD)
        self._claim_channels = register(_CLAIM_CHANNELS)
        self._release_worker = register(_RELEASE_WORKER)

    # -- client side ---------------------------------------------------------------------------

    def new_ids(self, count):
        """``count`` fresh job ids (decimal strings, as the original design's ids were)."""
        last = self.client.incrby(self.keys.seq, count)
        return [str(n) for n in range(last - count + 1, last + 1)]

    def submit(self, encoded, front=False):
        """Enqueue ``[(id, body), ...]`` atomically and wake the master (``front``: ahead of the rest)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        for i in range(0, len(encoded), 1000):
            chunk = encoded[i:i + 1000]
            pipe.hset(k.jobs, mapping=dict(chunk))
            ids = [job_id for job_id, _ in chunk]
            if front:
                pipe.lpush(k.intake, *reversed(ids))
            else:
                pipe.rpush(k.intake, *ids)
        (pipe.spublish if k.cluster else pipe.publish)(k.wakeup_channel, b"1")
        pipe.execute()

    def get_results(self, ids):
        """Stored results for ``ids`` (None where there is none yet)."""
        prefix = self.keys.result_prefix
        out = []
        for i in range(0, len(ids), 1000):
            out.extend(self.client.mget([prefix + job_id for job_id in ids[i:i + 1000]]))
        return out

    def announce(self, channel, payload):
        """Publish ``payload`` on one of our channels (a reply channel), sharded on a cluster."""
        self._wake_up(channel, payload)

    def jobs_exist(self, ids):
        """For each id: is its job recorded (queued, in flight, scheduled, or dead)?"""
        return [body is not None for body in self.client.hmget(self.keys.jobs, ids)] if ids else []

    # -- master side ---------------------------------------------------------------------------

    def claim(self, count, grace=CLAIM_GRACE, now=None):
        """Move up to ``count`` jobs from the intake to in-flight, with a deadline ``grace`` seconds
        away (see ``deadline_command``). Returns ``[(id, body, attempt), ...]``."""
        k = self.keys
        flat = self._claim(keys=[k.intake, k.jobs, k.inflight, k.attempts],
                           args=[count, (now or time.time()) + grace])
        return [(flat[i].decode(), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def deadline_command(self, deadlines):
        """``ZADD inflight XX`` packed for ``[(deadline, id), ...]``, deadlines in whole seconds: set
        when a job is published (its time limit plus slack). XX: a job that has finished meanwhile
        stays finished. Packed by hand: it runs once per dispatched batch, one pair per job."""
        scores = {}  # jobs mostly share a deadline: format each one once
        parts = []
        for deadline, job_id in deadlines:
            score = scores.get(deadline)
            if score is None:
                text = b"%d" % (deadline + 1)
                score = scores[deadline] = b"$%d\r\n%s\r\n" % (len(text), text)
            job_id = job_id.encode()
            parts.append(b"%s$%d\r\n%s\r\n" % (score, len(job_id), job_id))
        key = self.keys.inflight.encode()
        head = b"*%d\r\n$4\r\nZADD\r\n$%d\r\n%s\r\n$2\r\nXX\r\n" % (3 + 2 * len(parts), len(key), key)
        return head + b"".join(parts)

    def dispatch_command(self, dispatches, token):
        """``HSET dispatched id "token worker" ...`` packed for ``[(id, worker_id), ...]`` dispatched
        under ``token``: the dispatch each job is in flight under (its token, checked by ``finish`` and
        ``requeue``) and the worker it went to, so a master that starts after a crash finds a lost
        worker's jobs. Packed by hand: it runs once per dispatched batch, one pair per job."""
        values = {}  # a batch goes to a few workers: pack each value once
        parts = []
        for job_id, worker_id in dispatches:
            value = values.get(worker_id)
            if value is None:
                text = b"%s %s" % (token.encode(), (worker_id or "").encode())
                value = values[worker_id] = b"$%d\r\n%s\r\n" % (len(text), text)
            job_id = job_id.encode()
            parts.append(b"$%d\r\n%s\r\n%s" % (len(job_id), job_id, value))
        key = self.keys.dispatched.encode()
        return b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * len(parts), len(key), key) + b"".join(parts)

    def current(self, dispatches):
        """For each ``(id, token)``: is that dispatch the one in flight?"""
        if not dispatches:
            return []
        records = self.client.hmget(self.keys.dispatched, [job_id for job_id, _ in dispatches])
        return [record is not None and record.startswith(b"%s " % (token or "").encode())
                for (_, token), record in zip(dispatches, records)]

    def owned_by(self, worker_id):
        """``{id: token}`` of the jobs in flight that were dispatched to ``worker_id``."""
        mine = b" " + worker_id.encode()
        return {job_id.decode(): value[:-len(mine)].decode()
                for job_id, value in self.client.hscan_iter(self.keys.dispatched, count=1000)
                if value.endswith(mine)}

    def expire_now(self, ids):
        """Make in-flight jobs due for the reaper at once (their worker died): it re-queues them, or
        dead-letters those out of attempts."""
        self.extend(ids, 0)

    def extend(self, ids, deadline):
        """Move the deadline of jobs still in flight (not those that finished meanwhile)."""
        for i in range(0, len(ids), 1000):
            self.client.zadd(self.keys.inflight, {job_id: deadline for job_id in ids[i:i + 1000]}, xx=True)

    def take(self, count):
        """``--durability none``: remove up to ``count`` jobs from the intake, keeping no record.
        Returns ``[(id, body, 1), ...]``."""
        flat = self._take(keys=[self.keys.intake, self.keys.jobs], args=[count])
        return [(flat[i].decode(), flat[i + 1], 1) for i in range(0, len(flat), 2)]

    def reap(self, max_attempts, limit=1000, now=None):
        """Requeue in-flight jobs past their deadline; dead-letter those out of attempts.

        Returns ``(requeued_ids, dead_ids)``.
        """
        k = self.keys
        requeued, dead = self._reap(
            keys=[k.inflight, k.jobs, k.attempts, k.intake, k.dead, k.finished, k.dispatched],
            args=[now or time.time(), limit, max_attempts, k.result_prefix, self.result_ttl])
        return [i.decode() for i in requeued], [i.decode() for i in dead]

    def requeue(self, dispatches, trusted=False):
        """Hand in-flight jobs back to the intake unrun (no attempt counted): ``[(id, token), ...]``,
        each only while that dispatch is the one in flight; ``trusted`` (the master's own claimed,
        undispatched jobs): ``[(id, None), ...]``. Returns how many went back."""
        if not dispatches:
            return 0
        k = self.keys
        total = 0
        for i in range(0, len(dispatches), 1000):
            args = [k.result_prefix, "1" if trusted else "0"]
            for job_id, token in dispatches[i:i + 1000]:
                args += (job_id, token or "")
            total += self._requeue(keys=[k.inflight, k.intake, k.dispatched], args=args)
        if total:
            self._wake_up(k.wakeup_channel, b"1")
        return total

    # -- worker side ---------------------------------------------------------------------------

    def finish(self, results, announce=True, retries=(), trusted=False):
        """Record ``[Outcome, ...]`` (see ``Outcome``); the first result per job wins, and only a
        result with the token of the job's dispatch in flight counts (``trusted``: the master's own
        records of jobs it holds, checked against its ledger instead).

        ``retries`` are failures that may run again, ``[Outcome, ...]`` with ``task``, ``max_retries``
        and ``backoff`` set; each is scheduled after ``backoff * 2**(n-1)`` seconds (n = its retry
        number) while n <= max_retries, and recorded like the others once out of retries. With
        ``announce`` each payload (or a ``retry`` notice) is published on CHANNEL_RESULT for the master.
        Returns how many results were new.
        """
        k = self.keys
        args = [k.result_prefix, self.result_ttl, k.result_channel if announce else "", len(results),
                "1" if trusted else "0"]
        for o in results:
            args += (o.id, o.status, o.payload, o.reply or "", o.token or "")
        for o in retries:
            args += (o.id, o.status, o.payload, o.reply or "", o.token or "", o.task, o.max_retries, o.backoff)
        return self._finish(keys=[k.finished, k.inflight, k.jobs, k.attempts, k.retries, k.scheduled,
                                  k.dispatched], args=args)

    def promote(self, limit=1000, now=None):
        """Move retries that are due back to the intake. Returns how many."""
        n = self._promote(keys=[self.keys.scheduled, self.keys.intake], args=[now or time.time(), limit])
        if n:
            self._wake_up(self.keys.wakeup_channel, b"1")
        return n

    def register_worker(self, worker_id, heartbeat, ttl, channels, partial=False):
        """Claim ``channels`` for ``worker_id`` and register it. Returns ``{channel: holder}`` of the
        channels a live worker holds: with any, nothing is claimed, unless ``partial`` (then the free
        ones are)."""
        k = self.keys
        held = self._claim_channels(
            keys=[k.channels, k.workers, k.worker(worker_id)],
            args=[worker_id, heartbeat, int(ttl), k.worker_prefix, "1" if partial else "0", *channels])
        return {held[i].decode(): held[i + 1].decode() for i in range(0, len(held), 2)}

    def heartbeat(self, worker_id, heartbeat, ttl, create=False):
        """Refresh a registration. False when it is gone (Redis lost it, or we were thought dead);
        ``create``: write it anyway (a draining worker, which claims no channel)."""
        return bool(self.client.set(self.keys.worker(worker_id), heartbeat, ex=int(ttl), xx=not create))

    def release_worker(self, worker_id, channels_only=False):
        """Drop a worker's channel leases and (unless ``channels_only``) its registration. Returns how
        many channels it held."""
        k = self.keys
        return self._release_worker(keys=[k.channels, k.workers, k.worker(worker_id)],
                                    args=[worker_id, "1" if channels_only else "0"])

    def heartbeat_of(self, worker_id):
        """A worker's heartbeat dict, or None when it has none."""
        return _load_json(self.client.get(self.keys.worker(worker_id)))

    def end_lease(self, worker_id):
        """End a dead worker's channel leases at once (its heartbeat key goes; it stays in the set of
        workers, so the master sees it stopped beating and sends its jobs back to the queue)."""
        self.client.delete(self.keys.worker(worker_id))

    def register_tasks(self, options):
        """``{task name: options dict}`` of a worker's tasks, for the master (time limits, names)."""
        if options:
            self.client.hset(self.keys.tasks, mapping={name: json.dumps(o) for name, o in options.items()})

    def task_options(self):
        """``{task name: options dict}`` the workers registered (entries that do not parse are left out)."""
        out = {}
        for name, data in self.client.hgetall(self.keys.tasks).items():
            options = _load_json(data)
            if options is not None:
                out[name.decode(errors="replace")] = options
        return out

    def workers(self):
        """``{worker_id: heartbeat dict or None}`` for every registered worker (None = stopped beating)."""
        ids = sorted(i.decode() for i in self.client.smembers(self.keys.workers))
        beats = self.client.mget([self.keys.worker(i) for i in ids]) if ids else []
        return {i: _load_json(beat) for i, beat in zip(ids, beats)}

    def channel_owners(self):
        return {c.decode(): w.decode() for c, w in self.client.hgetall(self.keys.channels).items()}

    # -- status ----------------------------------------------------------------------------------

    def counts(self):
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.intake)
        pipe.zcard(k.inflight)
        pipe.llen(k.dead)
        pipe.hgetall(k.finished)
        pipe.zcard(k.scheduled)
        queued, in_flight, dead, finished, scheduled = pipe.execute()
        totals = {status: 0 for status in ("ok", "error", "timeout", "dead")}
        totals.update({s.decode(): int(n) for s, n in finished.items()})
        return {"queued": queued, "in_flight": in_flight, "retrying": scheduled, "dead": dead,
                "finished": totals}

    def delete_namespace(self):
        """Delete every key of this namespace (hash-tagged ones too): the clean-up of a benchmark run
        or a test. Refuses the empty namespace, whose keys are not ours alone."""
        k = self.keys
        if not k.namespace:
            raise ValueError("refusing to delete the keys of the empty namespace")
        found = sorted({key for pattern in {k.own + "*", k.prefix + "*"}
                        for key in self.client.scan_iter(match=pattern, count=1000)})
        for i in range(0, len(found), 1000):
            self.client.delete(*found[i:i + 1000])

    def requeue_dead(self, task=None, batch=1000):
        """Move dead letters (of ``task``, or all) back to the queue, ``batch`` per script call so that
        a long list never holds Redis up. Returns how many."""
        k = self.keys
        total, start = 0, 0
        while True:
            moved, removed, scanned = self._requeue_dead(
                keys=[k.dead, k.jobs, k.intake, k.attempts, k.finished, k.retries],
                args=[k.result_prefix, task or "", start, batch])
            total += moved
            if scanned < batch:
                break
            start += scanned - removed
        if total:
            self._wake_up(k.wakeup_channel, b"1")
        return total

    def trim_dead(self, limit=1000):
        """Forget dead letters whose result has expired (oldest first). Returns how many went."""
        k = self.keys
        return self._trim_dead(keys=[k.dead, k.jobs, k.attempts, k.retries], args=[k.result_prefix, limit])

    @classmethod
    def for_namespace(cls, client, namespace, result_ttl=DEFAULT_RESULT_TTL):
        """The store of ``namespace`` on ``client``, its keys laid out for a cluster when ``client`` is one."""
        # Neither module imports the store: these two imports may join the others at the top.
        from geventsched import transport
        from geventsched.keys import Keys

        return cls(client, Keys(namespace, cluster=transport.is_cluster(client)), result_ttl)


def _load_json(data):
    """A JSON object read from Redis, or None when there is none or it is not an object (a key
    someone else wrote must not stop a loop)."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
