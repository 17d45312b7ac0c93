"""Durable job state in Redis: the source of truth that pub/sub messages only announce.

Every multi-key change is one Lua script over a whole batch, so a batch of jobs costs one round trip
and a crash can never leave half of a change behind. Key layout: see ``keys.py``.

A job's life::

    submit   HSET jobs id body; RPUSH intake id; PUBLISH wakeup       (Client)
             (with a due time, a priority or a unique key: one script, ``submit.lua``; a delayed job
             waits in ``scheduled``, a job of priority p in ``intake:p``)
    claim    LPOP intake n (highest priority first); HMGET jobs; ZADD inflight deadline id ...
                                                                      (Master, one script per batch)
    finish   SET result:id NX EX ttl -> if new: HINCRBY finished status; ZREM inflight; HDEL jobs;
             RPUSH done; PUBLISH reply; and PUBLISH CHANNEL_RESULT     (Worker, one script per batch)
             (a failure with retries left goes to ``scheduled`` instead, due after its backoff)
    promote  scheduled jobs that are due -> intake                    (Master, at the due time)
    reap     in flight past its deadline -> back to the intake, or dead after the last attempt
                                                                      (Master, once a second)
    cancel   a job not finished: result 'cancelled' recorded, record gone, then announced (Client)

``SET result NX`` makes the first result the only one recorded, so a job that ran twice (its worker
was thought dead, or its deadline passed while it still ran) is counted once.

A workflow's steps are jobs whose record names the workflow: ``run_workflow`` queues those that can
start and keeps the others in Redis; ``finish`` (and ``reap``, for a dead step), on recording a step's
result, releases what that result was waiting for in the same script call, so each next step or
callback is queued exactly once (``lua/workflow.lua``).
"""

import functools
import json
import math
import time
from dataclasses import dataclass
from importlib import resources

from geventsched import transport
from geventsched.config import CLAIM_GRACE, DEFAULT_RESULT_TTL
from geventsched.keys import Keys
from geventsched.protocol import STATUSES


# Scripts batch their writes: one ZADD/HDEL/ZREM for the whole batch, never one per job where a
# single call can carry many. In Redis 7 each redis.call() costs about a microsecond of overhead, as
# much as the command itself, so this is what sets the durable-mode ceiling (bench/README.md).
#
# ``attempts`` counts the dispatches that did not produce a result (deadline passed, worker lost,
# handed back); a job's current attempt is that count + 1.
#
# Each script lives in ``geventsched/lua/<name>.lua``, its KEYS/ARGV contract and what it returns in
# its header. Those that publish take the command as an argument (``PUBLISH``, or ``SPUBLISH`` on a
# cluster), so one script text serves both.


@functools.cache
def lua_script(name):
    """The source of ``geventsched/lua/<name>.lua``, read once per process (installed with the
    package as package data)."""
    return resources.files("geventsched").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


#: Scripts that move workflows on: ``workflow.lua`` (the engine) goes in front of each, since a Redis
#: script cannot call another.
WORKFLOW_SCRIPTS = ("finish", "reap", "cancel", "wf_run", "wf_cancel")


@dataclass(slots=True)
class Outcome:
    """One result on its way to ``Store.finish``: the job, its status, the encoded result, where to
    announce it and the dispatch token it answers; whether it goes to the master in a result frame
    (its job came in a frame) and to its client in a reply frame (its client reads them). A failure
    that may run again also carries its task, its retries and its backoff (seconds before the first
    retry, jitter applied)."""

    id: str
    status: str
    payload: bytes
    reply: str | None
    token: str | None
    framed: bool = False
    reply_frames: bool = False
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
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"

        def register(name):
            source = lua_script(name)
            if name in WORKFLOW_SCRIPTS:
                source = lua_script("workflow") + "\n" + source
            return client.register_script(source)

        self._submit = register("submit")
        self._claim = register("claim")
        self._take = register("take")
        self._finish = register("finish")
        self._promote = register("promote")
        self._reap = register("reap")
        self._requeue = register("requeue")
        self._requeue_dead = register("requeue_dead")
        self._trim_dead = register("trim_dead")
        self._trim_done = register("trim_done")
        self._claim_channels = register("claim_channels")
        self._release_worker = register("release_worker")
        self._cancel = register("cancel")
        self._hold = register("hold")
        self._held_counts = register("held_counts")
        self._wf_run = register("wf_run")
        self._wf_cancel = register("wf_cancel")

    def run_script(self, script, keys, args, via=None):
        """Run a registered script: through ``via`` when given on one server (a
        ``transport.Publisher``: EVALSHA packed for hiredis on a plain connection, a round trip with
        none of redis-py's per-call work; loaded on NOSCRIPT), else through redis-py. Error replies
        raise what redis-py raises for them."""
        if via is None or self.keys.cluster:
            return script(keys=keys, args=args)
        call = transport.pack("EVALSHA", script.sha, len(keys), *keys, *args)
        reply = via.run([call])[0]
        if transport.is_error(reply) and str(reply).startswith("NOSCRIPT"):  # Redis restarted, or flushed its scripts
            loaded, reply = via.run([transport.pack("SCRIPT", "LOAD", script.script), call])
            transport.raise_for(loaded)  # (a user not allowed SCRIPT LOAD hears that, not NOSCRIPT)
        return transport.raise_for(reply)

    # -- client side ---------------------------------------------------------------------------

    def new_ids(self, count):
        """``count`` fresh job ids (decimal strings, as the original design's ids were)."""
        last = self.client.incrby(self.keys.seq, count)
        return [str(n) for n in range(last - count + 1, last + 1)]

    def submit(self, encoded, front=False, via=None):
        """Enqueue ``[(id, body), ...]`` atomically and wake the master (``front``: ahead of the rest).
        ``via``: as for ``run_script``, one MULTI ... EXEC write read by hiredis."""
        if not encoded:
            return
        commands = self._submit_commands(encoded, front)
        if via is not None and not self.keys.cluster:
            replies = via.run([_MULTI, *[transport.pack(*command) for command in commands], _EXEC])
            for reply in replies[:-1]:  # OK, then QUEUED for each (an error: the EXEC is refused too)
                transport.raise_for(reply)
            for reply in transport.raise_for(replies[-1]):
                transport.raise_for(reply)
            return
        pipe = self.client.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()

    def _submit_commands(self, encoded, front):
        """A submit's commands: per thousand jobs an HSET of their records and a push of their ids,
        then the master's wake-up."""
        k, commands = self.keys, []
        for i in range(0, len(encoded), 1000):
            chunk = encoded[i:i + 1000]
            ids = [job_id for job_id, _ in chunk]
            commands.append(("HSET", k.jobs, *[part for pair in chunk for part in pair]))
            commands.append(("LPUSH", k.intake, *reversed(ids)) if front else ("RPUSH", k.intake, *ids))
        commands.append((self._publish_command, k.wakeup_channel, b"1"))
        return commands

    def submit_with_options(self, entries, wake=True):
        """Enqueue ``[(id, body, priority, due, unique_key), ...]`` (``due``: unix seconds or None for
        now; ``unique_key`` or None) in one script call per thousand, and wake the master. Returns the
        ids in order: each job's own, or the id of the job already holding its unique key (that job
        was then not submitted)."""
        k = self.keys
        out = []
        for i in range(0, len(entries), 1000):
            args = [k.result_prefix, k.wakeup_channel if wake else "", self._publish_command]
            for job_id, body, priority, due, unique in entries[i:i + 1000]:
                args += (job_id, body, int(priority), "" if due is None else repr(float(due)), unique or "")
            ids = self._submit(keys=[k.jobs, k.scheduled, k.priority, k.unique, k.intake], args=args)
            out.extend(i.decode() for i in ids)
        return out

    def run_workflow(self, workflow_id, reply, nodes):
        """Start a workflow in one script call: ``nodes`` are ``[(line, job record or "", children or
        ""), ...]`` in preorder (``workflow.py`` builds them, ``lua/workflow.lua`` says what they hold).
        The steps that can run at once are queued and the master woken; the others wait in Redis for
        the result that releases them. Returns how many were queued."""
        k = self.keys
        args = [workflow_id, reply or "", k.workflow_prefix, k.result_prefix, self.result_ttl,
                self._publish_command, k.wakeup_channel]
        for entry in nodes:
            args.extend(entry)
        return self._wf_run(keys=[k.jobs, k.intake, k.priority, k.workflow_counts, k.workflow(workflow_id),
                                  k.workflow_templates(workflow_id)], args=args)

    def cancel_workflow(self, workflow_id, status):
        """End a running workflow as cancelled (its result gets ``status``): nothing more of it starts.
        Returns ``(word, ids)``: "cancelled" and the ids of its steps already queued or running, or
        "finished" (it had ended) or "unknown", with no ids."""
        k = self.keys
        reply = self._wf_cancel(keys=[k.workflow(workflow_id), k.jobs, k.workflow_counts],
                                args=[workflow_id, k.workflow_prefix, k.result_prefix, self.result_ttl,
                                      self._publish_command, status])
        return reply[0].decode(), [job_id.decode() for job_id in reply[1:]]

    def workflow_counts(self):
        """``{outcome: workflows}`` for started, ok, failed and cancelled, kept in Redis."""
        counts = {"started": 0, "ok": 0, "failed": 0, "cancelled": 0}
        counts.update({o.decode(): int(n) for o, n in self.client.hgetall(self.keys.workflow_counts).items()})
        return counts

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

    def results_and_records(self, ids):
        """For each id: ``(stored result or None, is the job recorded?)`` (recorded: queued, in flight,
        scheduled or dead; a finished job's record is gone, and without durability there never is
        one). One round trip when every job has its result, as after an announcement it has."""
        results = self.get_results(ids)
        missing = [job_id for job_id, result in zip(ids, results) if result is None]
        recorded = dict(zip(missing, self.client.hmget(self.keys.jobs, missing))) if missing else {}
        return [(result, result is not None or recorded[job_id] is not None) for job_id, result in zip(ids, results)]

    def cancel(self, ids, batch=200):
        """Cancel jobs (``lua/cancel.lua``): ``{id: "cancelled" | "finished" | "unknown"}``, "finished"
        for a job that already has its result or is dead (nothing changes then). A cancelled job never
        runs again; the one running it is told to stop (see the script's header). ``batch`` ids per
        script call: a queued job is looked for on the intake from its head, so a call that cancels
        jobs at the far end of a long backlog holds Redis for a while (10,000 jobs newest first, in a
        backlog of 10,000: about 30 ms per call of 200; oldest first, under 1 ms)."""
        k = self.keys
        ids = list(dict.fromkeys(ids))
        words = {}
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            replies = self._cancel(
                keys=[k.jobs, k.scheduled, k.inflight, k.dispatched, k.attempts, k.retries, k.finished, k.intake,
                      k.priority, k.unique, k.done, k.workflow_counts],
                args=[k.result_prefix, self.result_ttl, k.result_channel, k.cancel_channel, self._publish_command,
                      k.workflow_prefix, k.wakeup_channel, *chunk])
            words.update(zip(chunk, (word.decode() for word in replies)))
        return words

    # -- master side ---------------------------------------------------------------------------

    def claim(self, count, grace=CLAIM_GRACE, now=None, via=None):
        """Move up to ``count`` jobs from the intake to in-flight, with a deadline ``grace`` seconds
        away (see ``deadline_command``). Returns ``[(id, body, attempt), ...]``. ``via``: see
        ``run_script``."""
        return self.claimed(self.run_script(*self._claim_call(count, grace, now), via))

    def claim_command(self, count, durable=True):
        """``claim`` (``take`` if not ``durable``) packed, for a write of the master's own
        (``Publisher.send``'s ``after``); ``claimed`` reads its reply. A NOSCRIPT reply (Redis forgot
        the script) is for ``claim`` to cure."""
        script, keys, args = self._claim_call(count) if durable else self._take_call(count)
        return transport.pack("EVALSHA", script.sha, len(keys), *keys, *args)

    @staticmethod
    def claimed(flat, durable=True):
        """``[(id, body, attempt), ...]`` from the reply of ``claim`` (of ``take`` if not ``durable``)."""
        if not durable:
            return [(flat[i].decode(), flat[i + 1], 1) for i in range(0, len(flat), 2)]
        return [(flat[i].decode(), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def _claim_call(self, count, grace=CLAIM_GRACE, now=None):
        k = self.keys
        return self._claim, [k.jobs, k.inflight, k.attempts, *k.intakes], [count, (now or time.time()) + grace]

    def _take_call(self, count):
        k = self.keys
        return self._take, [k.jobs, k.priority, *k.intakes], [count]

    def deadline_command(self, deadlines):
        """``ZADD inflight XX`` packed for ``[(deadline, id), ...]``, deadlines in whole seconds (each
        stored one second later: rounded up): set when a job is published (its time limit plus slack).
        XX: a job that has finished meanwhile stays finished. Runs once per dispatched batch."""
        return transport.pack_pairs("ZADD", self.keys.inflight, deadlines, flags=("XX",),
                                    shared=0, shared_value=_round_up)

    def dispatch_command(self, dispatches, token, now):
        """``HSET dispatched id "token time channel worker" ...`` packed for ``[(id, channel), ...]``
        (``dispatch.Channel`` entries) dispatched under ``token`` at ``now``: the dispatch each job is in
        flight under (its token, checked by ``finish`` and ``requeue``), when it went, the channel and
        the worker it went to, so a master that starts after a crash finds a lost worker's jobs, and a
        lookup shows where a job runs. Runs once per dispatched batch."""
        return transport.pack_pairs(
            "HSET", self.keys.dispatched, dispatches, shared=1,
            shared_value=lambda channel: b"%s %.3f %s %s" % (token.encode(), now, channel.name,
                                                           (channel.worker or "").encode()))

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
        return {job_id.decode(): value.split(b" ", 1)[0].decode()  # "<token> <time> <channel> <worker>"
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

    def take(self, count, via=None):
        """``--durability none``: remove up to ``count`` jobs from the intake, keeping no record.
        Returns ``[(id, body, 1), ...]``. ``via``: see ``run_script``."""
        return self.claimed(self.run_script(*self._take_call(count), via), durable=False)

    def reap(self, max_attempts, limit=1000, now=None):
        """Requeue in-flight jobs past their deadline; dead-letter those out of attempts.

        Returns ``(requeued_ids, dead_ids)``.
        """
        k = self.keys
        requeued, dead = self._reap(
            keys=[k.inflight, k.jobs, k.attempts, k.intake, k.dead, k.finished, k.dispatched, k.priority,
                  k.workflow_counts],
            args=[now or time.time(), limit, max_attempts, k.result_prefix, self.result_ttl,
                  self._publish_command, k.workflow_prefix, k.wakeup_channel])
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
            total += self._requeue(keys=[k.inflight, k.intake, k.dispatched, k.priority], args=args)
        if total:
            self._wake_up(k.wakeup_channel, b"1")
        return total

    # -- limits (limits.py) ------------------------------------------------------------------------

    def hold(self, groups, durable=True):
        """Park claimed jobs that their task's limit holds back on the task's held list: ``groups`` is
        ``[(task, front, [(id, body), ...]), ...]`` (``front``: back to the head of the list; the
        bodies are written back only without durability, whose take removed them). Returns the length
        of each group's list afterwards."""
        k = self.keys
        keys, args = [k.inflight, k.jobs, k.held], ["1" if durable else "0"]
        for task, front, jobs in groups:
            keys.append(k.held_for(task))
            args += (task, "1" if front else "0", len(jobs))
            for job_id, body in jobs:
                args.append(job_id)
                if not durable:
                    args.append(body)
        return self._hold(keys=keys, args=args)

    def claim_held(self, task, count, grace=CLAIM_GRACE, now=None, durable=True):
        """``claim`` (or, without durability, ``take``) from the head of ``task``'s held list."""
        k = self.keys
        if not durable:
            flat = self._take(keys=[k.jobs, k.priority, k.held_for(task)], args=[count])
            return [(flat[i].decode(), flat[i + 1], 1) for i in range(0, len(flat), 2)]
        flat = self._claim(keys=[k.jobs, k.inflight, k.attempts, k.held_for(task)],
                           args=[count, (now or time.time()) + grace])
        return [(flat[i].decode(), flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]

    def held_counts(self):
        """``{task: jobs in its held list}`` of the tasks that have held jobs."""
        flat = self._held_counts(keys=[self.keys.held], args=[self.keys.held_prefix])
        return {flat[i].decode(errors="replace"): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def limit_commands(self, now, starts=(), running=(), gone=()):
        """Commands for the write that dispatches a batch (``transport.Publisher``), packed: the start
        times of rate-limited tasks (``starts``: ``[(task, how many started at now, N, period), ...]``:
        one entry "<time> <how many>" per batch, LPUSHed and trimmed to the newest N entries, which
        hold N starts or more; the key expires a period after the last) and the ids of jobs of
        max_running tasks dispatched (``running``: ``[(task, [id, ...]), ...]``) or seen finished
        (``gone``, same shape)."""
        k, out = self.keys, []
        for task, count, keep, period in starts:
            key = k.rate_for(task)
            out.append(transport.pack("LPUSH", key, b"%.6f %d" % (now, count)))
            out.append(transport.pack("LTRIM", key, 0, keep - 1))
            out.append(transport.pack("PEXPIRE", key, int(period * 1000) + 1000))
        for task, ids in running:
            out.append(transport.pack("SADD", k.running_for(task), *ids))
        for task, ids in gone:
            out.append(transport.pack("SREM", k.running_for(task), *ids))
        return out

    def limit_state(self, rated, counted):
        """What a master needs to apply limits it did not apply before: ``{task: [start time, ...]}``
        for the rate-limited tasks ``rated`` (``{task: N}``: the newest N of its recorded starts), and
        ``{task: {id: token}}`` for the max_running tasks ``counted``: the jobs of its ``running`` set
        that ``dispatched`` still holds, with their dispatch tokens (the others leave the set)."""
        k = self.keys
        rated, counted = dict(rated), list(counted)
        if not rated and not counted:
            return {}, {}
        pipe = self.client.pipeline(transaction=False)
        for task, keep in rated.items():
            pipe.lrange(k.rate_for(task), 0, keep - 1)
        for task in counted:
            pipe.smembers(k.running_for(task))
        replies = pipe.execute()
        starts = {task: _start_times(entries, rated[task]) for task, entries in zip(rated, replies)}
        members = {task: sorted(m.decode() for m in ids) for task, ids in zip(counted, replies[len(rated):])}
        everyone = [job_id for ids in members.values() for job_id in ids]
        records = dict(zip(everyone, self.client.hmget(k.dispatched, everyone))) if everyone else {}
        inherited, stale = {}, []
        for task, ids in members.items():
            inherited[task] = {}
            for job_id in ids:
                record = records.get(job_id)
                if record:
                    inherited[task][job_id] = record.split(b" ", 1)[0].decode()
                else:
                    stale.append((task, job_id))
        if stale:
            pipe = self.client.pipeline(transaction=False)
            for task, job_id in stale:
                pipe.srem(k.running_for(task), job_id)
            pipe.execute()
        return starts, inherited

    # -- worker side ---------------------------------------------------------------------------

    def finish(self, results, announce=True, retries=(), trusted=False, via=None):
        """Record ``[Outcome, ...]`` (see ``Outcome``); the first result per job wins, and only a
        result with the token of the job's dispatch in flight counts (``trusted``: the master's own
        records of jobs it holds, checked against its ledger instead).

        ``retries`` are failures that may run again, ``[Outcome, ...]`` with ``task``, ``max_retries``
        and ``backoff`` set; each is scheduled after ``backoff * 2**(n-1)`` seconds (n = its retry
        number) while n <= max_retries, and recorded like the others once out of retries. With
        ``announce`` each payload (or a ``retry`` notice) is published on CHANNEL_RESULT for the master.
        Returns how many results were new. ``via``: see ``run_script``.
        """
        k = self.keys
        args = [k.result_prefix, self.result_ttl, k.result_channel if announce else "", len(results),
                "1" if trusted else "0", self._publish_command, k.workflow_prefix, k.wakeup_channel,
                k.reply_key_prefix]
        for o in results:
            args += (o.id, o.status, o.payload, o.reply or "", o.token or "", _frames(o))
        for o in retries:
            args += (o.id, o.status, o.payload, o.reply or "", o.token or "", _frames(o), o.task, o.max_retries,
                     o.backoff)
        return self.run_script(self._finish, [k.finished, k.inflight, k.jobs, k.attempts, k.retries, k.scheduled,
                                              k.dispatched, k.done, k.priority, k.unique, k.intake,
                                              k.workflow_counts], args, via)

    def promote(self, limit=1000, now=None):
        """Move scheduled jobs that are due (delayed jobs, retries after their backoff) to their intake
        list. Returns ``(how many, when the next one is due or None)``."""
        k = self.keys
        n, next_due = self._promote(keys=[k.scheduled, k.intake, k.priority], args=[now or time.time(), limit])
        if n:
            self._wake_up(k.wakeup_channel, b"1")
        return n, float(next_due) if next_due else None

    def trim_done(self, limit=1000):
        """Forget finished jobs whose results have expired from the index of finished jobs (oldest
        first). Returns how many went."""
        return self._trim_done(keys=[self.keys.done], args=[self.keys.result_prefix, limit])

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

    def depths(self):
        """``(queued, dead, scheduled)``: jobs in the intake lists, dead letters and scheduled jobs, in
        one round trip."""
        queued, (dead, scheduled) = self._with_queues(("llen", self.keys.dead), ("zcard", self.keys.scheduled))
        return sum(queued), dead, scheduled

    def queued_by_priority(self):
        """``{priority: jobs in its intake list}`` for priorities 0..9."""
        queued, _ = self._with_queues()
        return dict(zip(range(len(queued) - 1, -1, -1), queued))

    def counts(self):
        k = self.keys
        queued, (in_flight, dead, finished, scheduled) = self._with_queues(
            ("zcard", k.inflight), ("llen", k.dead), ("hgetall", k.finished), ("zcard", k.scheduled))
        totals = dict.fromkeys(STATUSES, 0)
        totals.update({s.decode(): int(n) for s, n in finished.items()})
        # "retrying" is the older name of "scheduled" (retries waiting for their backoff are scheduled).
        return {"queued": sum(queued), "in_flight": in_flight, "scheduled": scheduled, "retrying": scheduled,
                "dead": dead, "finished": totals}

    def _with_queues(self, *reads):
        """In one round trip, the length of each intake list (highest priority first) and the replies
        of ``reads``, ``(command, key)`` pairs: ``(lengths, replies)``."""
        pipe = self.client.pipeline(transaction=False)
        for intake in self.keys.intakes:
            pipe.llen(intake)
        for command, key in reads:
            getattr(pipe, command)(key)
        replies = pipe.execute()
        return replies[:len(self.keys.intakes)], replies[len(self.keys.intakes):]

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
                keys=[k.dead, k.jobs, k.intake, k.attempts, k.finished, k.retries, k.priority],
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
        return self._trim_dead(keys=[k.dead, k.jobs, k.attempts, k.retries, k.priority],
                               args=[k.result_prefix, limit])

    @classmethod
    def for_namespace(cls, client, namespace, result_ttl=DEFAULT_RESULT_TTL):
        """The store of ``namespace`` on ``client``, its keys laid out for a cluster when ``client`` is one."""
        return cls(client, Keys(namespace, cluster=transport.is_cluster(client)), result_ttl)


def _frames(outcome):
    """The finish script's flags for how an outcome is announced: R, in a result frame; C, in a reply
    frame to its client."""
    return ("R" if outcome.framed else "") + ("C" if outcome.reply_frames else "")


_MULTI, _EXEC = transport.pack("MULTI"), transport.pack("EXEC")


def _round_up(deadline):
    """A deadline in whole seconds as stored: one second on, so Redis never reaps a job before the
    master's own deadline for it (the caller cut the fraction off)."""
    return deadline + 1


def _start_times(entries, most):
    """The newest ``most`` start times in a rate list's entries ("<time> <how many>", newest first),
    oldest first. An entry that does not parse is skipped."""
    times = []
    for entry in entries:
        stamp, _, count = entry.partition(b" ")
        try:
            at, count = float(stamp), int(count or 1)
        except ValueError:
            continue
        if math.isfinite(at) and count > 0:
            times.extend([at] * min(count, most - len(times)))
        if len(times) >= most:
            break
    return sorted(times)


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
