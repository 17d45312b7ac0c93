"""The master: takes jobs from the intake, picks a channel for each, publishes, and collects results.

Greenlets:

* dispatcher  claims as many jobs as the channels have room for (one script call per batch: in-flight
              record and deadline written before anything is published), picks a channel per job
              with the strategy, and publishes the batch in one write; while busy, that write ends
              with the claim of the next batch (one round trip a batch). ``PUBLISH`` = 0 means nobody
              is subscribed there: the job goes back to the front of the line and the channel sits
              out until discovery (or, for static channels, a short cool-down) brings it back.
              A job whose task's rate limit or max_running does not let it start now is parked on
              its task's held list and taken back when the limit allows (``limits.py``); the others
              go on meanwhile.
* collector   reads CHANNEL_RESULT (and the intake's wake-up channel) through hiredis; each result
              that carries its dispatch's token frees its channel's slot (``ledger.py``). Others
              (unknown jobs, stale copies, a stranger's) are counted and ignored. A job cancelled
              while this master held it unsent has a result without a token (``lua/cancel.lua``),
              believed only as stored: the job leaves the line unsent, or frees the slot it was
              sent to as the cancel ran.
* discovery   once a second (``discovery.py``): live workers and the channels they hold; a worker that
              stopped heartbeating loses its channels and its in-flight jobs go back to the intake.
* timer       at the earliest due time of a scheduled job (a delayed job, a retry after its backoff)
              or of a periodic schedule, or once a second: moves the due jobs to the intake
              (``promote``) and fires the due schedules (``schedules.py``); a new scheduled job's or
              schedule's wake-up makes it look again.
* reaper      once a second: in-flight jobs past their deadline go back to the intake, or to the
              dead-letter list after the last attempt (without durability: dispatches past their
              deadline are forgotten, and their slots come back).

Every loop is watched (``loops.py``): one that dies stops the master with exit 1, lease released.
A master that loses its lease to another goes back to standing by. The master keeps only soft state
in memory (which channel holds which job); everything a restart needs is in Redis (``store.py``).
"""

import logging
import os
import signal
import time
from collections import deque

import gevent
from gevent.event import Event

from geventsched import transport
from geventsched.backoff import Backoff
from geventsched.config import CLAIM_GRACE
from geventsched.discovery import Discovery
from geventsched.dispatch import ChannelTable, get_strategy
from geventsched.errors import DecodeError, GeventschedError
from geventsched.hooks import MasterHooks, guarded
from geventsched.lease import Lease
from geventsched.ledger import Ledger, new_token
from geventsched.limits import Limiter
from geventsched.loops import Loops
from geventsched.outbox import Outbox
from geventsched.protocol import CANCELLED, RETRY, Job, JsonCodec, error_result, make_codec
from geventsched.schedules import Scheduler
from geventsched.store import Outcome, Store

log = logging.getLogger(__name__)

#: A static channel that answered PUBLISH = 0 sits out this long.
COOL_DOWN = 0.5
#: While limits are in use, the held lists' lengths are read again this often (seconds).
HELD_SYNC = 1.0


class Master:
    def __init__(self, config, client, hooks=None):
        self.config = config
        self.client = client
        self.hooks = guarded(hooks, MasterHooks)
        self.store = Store.for_namespace(client, config.namespace, config.result_ttl)
        self.keys = self.store.keys
        self.codec = make_codec(config.codec, max_payload=config.max_payload)
        self.stored = JsonCodec(max_payload=config.max_payload)  # jobs in Redis are always JSON
        self.raw = config.codec == "raw"
        self.durable = config.durability == "redis"
        self.strategy = get_strategy(config.strategy)
        self.table = ChannelTable()
        self.pending = deque()  # claimed jobs waiting for a channel
        self.ledger = Ledger(self.table)
        self.limits = Limiter(self.ledger.get)  # tasks' rate limits and max_running (limits.py)
        self._held_read_at = 0.0  # when the held lists' lengths were last read
        self._wake = Event()
        self._timer = Event()  # a job was scheduled: the timer looks for the earliest due time again
        self._wakeup = self.keys.wakeup_channel.encode()  # the intake's cue, among the results
        self.discovery = Discovery(self.store, self.table, config, self.hooks, self._lose_worker, self._wake.set,
                                   on_limits=self._apply_limits)
        self.scheduler = Scheduler(self.store, self.hooks)  # periodic schedules, fired while we hold the lease
        self._static = [self.keys.dispatch_channel(c) for c in config.channels]
        self._benched = {}  # static channel name -> (time it may come back, cap)
        self._local_prefix = f"m{os.urandom(3).hex()}-"  # ids of submit_local jobs
        self._local_seq = 0
        self._shutdown = Event()  # a signal or stop(): the master is done
        self._stop = Event()  # this term as the active master is over (shutdown, lease lost, a loop died)
        self._loops = Loops("master", self._on_loop_death)
        self._subscriber = None
        self._publisher = transport.Publisher(client, self.keys.inflight)
        self._publisher_broken = False
        self.lease = Lease(client, self.keys.master, config.lease_ttl)
        self.lease_lost = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        """Take the master lease (standing by while another master holds it), then start the loops.
        Returns False if ``stop()`` came first."""
        if not self.lease.acquire(self._shutdown):
            return False
        self._loops.spawn("lease", self.lease.keep, self._stop, self._lose_lease)
        self._open()
        self._loops.spawn("collector", self._collect_loop)
        self._loops.spawn("dispatcher", self._dispatch_loop)
        if self.durable:
            self._loops.spawn("timer", self._timer_loop)
        self._loops.spawn("reaper", self._every, self.config.reap_interval,
                          self._reap if self.durable else self._expire)
        if not self._static:
            self._loops.spawn("discovery", self._every, self.config.discovery_interval, self.discovery.refresh)
        else:  # no workers to watch; their tasks' limits may still change
            self._loops.spawn("tasks", self._every, self.config.discovery_interval, self.discovery.learn_tasks)
        log.info("master: %d channels, strategy %s, codec %s, durability %s%s", len(self.table),
                 self.config.strategy, self.codec.name, self.config.durability,
                 ", Redis Cluster" if self.keys.cluster else "")
        return True

    def _open(self):
        """With the lease held: listen for results, and find the channels."""
        self._subscriber = self._subscribe()
        for name in self._static:
            self.table.add(name.encode(), None, self.config.prefetch or self.config.static_prefetch)
        if not self._static:
            self.discovery.refresh()
        else:
            self.discovery.learn_tasks()
        self._read_held()  # jobs an earlier master held back, also of tasks no longer limited

    # -- stepping (no greenlets: tests and embedding) ----------------------------------------------

    def open(self):
        """Become the active master without starting a loop, to be driven by ``run_once``. Returns
        False if another master holds the lease."""
        if not self.lease.try_acquire():
            return False
        self._open()
        return True

    def run_once(self, timeout=0.0):
        """One pass of every loop, in the calling greenlet (huey's ``loop()``): renew the lease, look
        for workers, reap, claim and dispatch what has room, then take the results that arrive within
        ``timeout`` seconds. Returns how many messages it read."""
        if not self.lease.renew():
            raise GeventschedError("another master holds the lease now")
        if not self._static:
            self.discovery.refresh()
        if self.durable:
            self._promote()
            self.scheduler.fire_due()
        (self._reap if self.durable else self._expire)()
        self._claim()
        self._dispatch()
        messages = self._subscriber.read(timeout)
        self._take(messages)
        return len(messages)

    def run(self):
        """Serve until SIGTERM/SIGINT (standing by first if another master is active, and again after
        losing the lease to another). Returns the exit code: 1 if a loop died."""
        handlers = [gevent.signal_handler(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            while self.start():
                self._stop.wait()
                if not self.lease_lost or self._shutdown.is_set():
                    break
                self._stand_down()
        finally:
            for handler in handlers:
                handler.cancel()
            self.stop()
        return 1 if self._loops.failure else 0

    def _on_signal(self):
        self._shutdown.set()
        self._stop.set()

    def _on_loop_death(self, name, exc):
        self._shutdown.set()
        self._stop.set()
        self._wake.set()

    def _lose_lease(self):
        self.lease_lost = True
        self._stop.set()

    def _stand_down(self):
        """Another master holds the lease now: stop dispatching, forget this term's soft state (the
        jobs it held are in Redis, the new master's to reap) and stand by again."""
        log.warning("master: standing by again; the jobs this master held are the active master's now")
        self._loops.kill()
        self._close_connections()
        self.pending.clear()
        self.ledger.clear()
        self.limits.reset()
        self.discovery.forget()
        self._stop = Event()
        self.lease_lost = False

    def stop(self):
        """Stop the loops and put claimed, undispatched jobs back on the intake. Jobs in flight stay
        recorded in Redis for the next master (``--durability redis``)."""
        self._shutdown.set()
        self._stop.set()
        self._wake.set()
        self._loops.kill()
        if not self.lease_lost:
            self._return_pending()
            self.lease.release()
        self._close_connections()
        log.info("master: stopped with %d jobs in flight", len(self.ledger))

    def state(self):
        """What this master holds and sees, for metrics and status: jobs in flight, live workers and
        channels, jobs held back by a limit (from memory), and jobs queued (claimed and waiting here,
        held back, plus the intake) and dead letters, read from Redis; those two are left out when
        Redis does not answer."""
        held = sum(self.limits.held.values())
        state = {"in_flight": len(self.ledger), "workers": len(self.discovery.workers), "channels": len(self.table),
                 "held": held}
        pending = len(self.pending) + held  # read before the round trip, which lets the loops run
        try:
            intake, dead, scheduled = self.store.depths()
        except transport.RedisError as exc:
            log.warning("master: cannot read the queue depth from Redis: %s", transport.describe(exc))
            return state
        state.update(queued=pending + intake, dead=dead, scheduled=scheduled)
        return state

    def _close_connections(self):
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        self._publisher.close()

    def _return_pending(self):
        jobs, self.pending = list(self.pending), deque()
        if not jobs:
            return
        try:
            if self.durable:
                self.store.requeue([(job.id, None) for job in jobs], trusted=True)
            else:
                self.store.submit([(job.id, self.stored.encode_job(job)) for job in jobs], front=True)
        except transport.RedisError as exc:
            log.warning("master: could not put %d undispatched jobs back: %s", len(jobs), transport.describe(exc))

    def submit_local(self, specs, timeout=None):
        """Queue ``[(task, args, kwargs), ...]`` in this process, as the original design's master made
        its own jobs: no Redis intake, no record, ids made here. ``--durability none`` only (a durable
        job must be in Redis before submit returns: use ``Client``). Returns the job ids."""
        if self.durable:
            raise GeventschedError("submit_local needs durability none; durable jobs go through Client")
        now = time.time()
        ids = []
        for task, args, kwargs in specs:
            self._local_seq += 1
            job = Job(f"{self._local_prefix}{self._local_seq}", task, list(args), dict(kwargs), timeout,
                      None, now)
            self.pending.append(job)
            ids.append(job.id)
        self._wake.set()
        return ids

    def _every(self, interval, step):
        stop = self._stop
        while not stop.wait(interval):
            try:
                step()
            except transport.RedisError as exc:
                log.warning("master: %s failed: %s", step.__name__.strip("_"), transport.describe(exc))

    # -- dispatching -----------------------------------------------------------------------------

    def _dispatch_loop(self):
        backoff = Backoff(first=0.1, cap=5.0)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                ahead = self._may_claim_ahead()
                if not (ahead and self.pending):  # else the write that sends them claims what comes next
                    self._claim()
                progressed = self._dispatch(claim_ahead=ahead)
                backoff.reset()
            except transport.ConnectionLost as exc:
                delay = backoff.next()
                log.warning("master: dispatch connection lost (%s); reconnecting in %.1fs",
                            transport.describe(exc), delay)
                self._publisher_broken = True
                self._stop.wait(delay)
                continue
            except transport.RedisError as exc:
                log.warning("master: dispatch failed: %s", transport.describe(exc))
                self._stop.wait(backoff.delay)
                continue
            if not progressed:
                # Nothing to send, or no room: sleep until a result, a wake-up or a new channel (or
                # until a rate limit lets a held job go).
                self._wake.wait(self._idle_time())

    def _idle_time(self):
        if not self.limits.held:
            return 1.0
        now = time.time()
        opening = self.limits.next_opening(now)
        return 1.0 if opening is None else min(1.0, max(0.001, opening - now))

    def _claim(self):
        room = min(self.table.free_slots() - len(self.pending), self.config.claim_batch)
        if room <= 0:
            return
        limits = self.limits
        if limits.limits or limits.held:
            now = time.time()
            if now >= self._held_read_at + HELD_SYNC:
                self._read_held(now)
            if limits.held:
                room -= self._release(room, now)
                if room <= 0:
                    return
        if self.durable:
            claimed = self.store.claim(room, via=self._publisher)
        else:
            claimed = self.store.take(room, via=self._publisher)
        self._queue_claimed(claimed)

    def _may_claim_ahead(self):
        """Can the next jobs be claimed in the write that dispatches these (one server, no limits:
        a limited task's held jobs come first, ``_claim``)?"""
        return not self.keys.cluster and not (self.limits.limits or self.limits.held)

    def _queue_claimed(self, claimed):
        """Claimed ``[(id, body, attempt), ...]``: their jobs join the line for a channel."""
        handed_back, new = 0, []
        for job_id, body, attempt in claimed:
            job = self._readable(job_id, body)
            if job is None:
                continue
            if self.ledger.pop(job_id) is not None:  # handed back by its worker, or re-queued
                handed_back += 1
            if attempt == 1:
                new.append(job)
            self.pending.append(job)
        if new:
            self.hooks.on_submitted(new)
        if handed_back:
            self.hooks.on_redispatched("handed_back", handed_back)

    # -- limits (limits.py) ------------------------------------------------------------------------

    def _apply_limits(self, limits):
        """Discovery read the tasks' limits (``{task: Limit}``). For tasks this master did not limit
        yet, first load what Redis keeps for them: the start times of their recent dispatches, and
        their jobs an earlier master left running; then apply them all."""
        new = self.limits.new_tasks(limits)
        starts, inherited, running_now = {}, {}, {}
        if new:
            counted = [task for task in new if limits[task].max_running is not None]
            starts, inherited = self.store.limit_state(
                {task: limits[task].rate for task in new if limits[task].rate is not None},
                counted if self.durable else ())
            if counted:  # jobs of theirs this master sent before it knew the limit
                running_now = {task: [] for task in counted}
                for job_id in self.ledger.ids():
                    entry = self.ledger.get(job_id)
                    if entry is not None and entry.job.task in running_now:
                        running_now[entry.job.task].append(job_id)
        if limits != self.limits.limits:
            described = [_describe(task, limit) for task, limit in sorted(limits.items())]
            log.info("master: task limits: %s", ", ".join(described) or "none")
        self.limits.configure(limits, starts, inherited, running_now)
        self._wake.set()

    def _read_held(self, now=None):
        """Read how many jobs each task has held back (exact; the dispatcher counts in between)."""
        self.limits.held = self.store.held_counts()
        self._held_read_at = now or time.time()

    def _release(self, room, now):
        """Take back held jobs that their limit lets start now, oldest first, at most ``room``: they
        go ahead of what the intake holds. Returns how many were taken."""
        limits, taken = self.limits, 0
        for task, count in list(limits.held.items()):
            n = min(count, room - taken, limits.allowance(task, now))
            if n <= 0:
                continue
            claimed = self.store.claim_held(task, n, durable=self.durable)
            if count > n:
                limits.held[task] = count - n
            else:
                del limits.held[task]
            taken += len(claimed)
            limited = task in limits.limits  # else held by a limit since removed: they all go
            for job_id, body, _ in claimed:
                job = self._readable(job_id, body)
                if job is not None:
                    if limited:
                        limits.released.add(job_id)
                    self.pending.append(job)
            if taken >= room:
                break
        return taken

    def _park(self, jobs):
        """Put jobs that their limit holds back on their tasks' held lists (one script call): those
        taken from a list go back to its head, new ones to its tail."""
        limits, groups = self.limits, {}
        for job in jobs:
            groups.setdefault((job.task, limits.park(job.id)), []).append(job)
        encode = None if self.durable else self.stored.encode_job
        try:
            lengths = self.store.hold([(task, front, [(job.id, encode and encode(job)) for job in group])
                                       for (task, front), group in groups.items()], self.durable)
        except transport.RedisError:
            # Still claimed (or, without durability, here only): they wait here for the next round.
            for (_, front), group in groups.items():
                if front:
                    limits.released.update(job.id for job in group)
            self.pending.extendleft(reversed(jobs))
            raise
        for (task, _), length in zip(groups, lengths):  # a task's last group saw its final length
            limits.held[task] = length

    def _prune_inherited(self):
        """Jobs an earlier master left running stop counting against max_running once their dispatch
        is gone from Redis (a result whose announcement we missed, a re-queue)."""
        inherited = self.limits.inherited()
        if not inherited:
            return
        ended = [job_id for (job_id, _), live in zip(inherited, self.store.current(inherited)) if not live]
        if ended:
            self.limits.drop_inherited(ended)
            self._wake.set()

    def _readable(self, job_id, body):
        """The job of a claimed record, or None after recording why it cannot be dispatched: a record
        that does not decode, or one larger than any worker takes (``--max-payload``), fails at once
        with an error its waiter hears, rather than being sent to fail on every worker in turn."""
        try:
            job = self.stored.decode_job(body, max_payload=None)
        except DecodeError as exc:
            log.error("master: job %s in the intake is unreadable (%s); recording it as failed", job_id, exc)
            self._record_failure(_Unreadable(job_id), "DecodeError", str(exc))
            return None
        if len(body) > self.config.max_payload:
            log.error("master: job %s (%s) is %d bytes, over the max payload of %d; recording it as failed",
                      job_id, job.task, len(body), self.config.max_payload)
            self._record_failure(job, "PayloadTooLarge", f"the job is {len(body)} bytes, over the max payload "
                                 f"of {self.config.max_payload} (--max-payload)")
            return None
        return job

    def _record_failure(self, job, exc_type, message):
        result = error_result(job, "error", exc_type, message)
        if not self.durable:  # nothing to record: tell the waiter, if any
            if job.reply:
                self.store.announce(job.reply, self.stored.encode_result(result))
            return
        self.store.finish([Outcome(job.id, "error", self.stored.encode_result(result), job.reply, None)],
                          announce=False, trusted=True)
        self.hooks.on_finished([(job, "error", time.time() - job.submitted_at if job.submitted_at else 0.0)])

    def deadline_for(self, job, now=None):
        """When a dispatch of ``job`` counts as lost: its time limit (the job's, else its task's as the
        workers registered it, else the default) plus slack for time queued on the worker."""
        limit = job.timeout or self.discovery.task_timeouts.get(job.task) or self.config.default_timeout
        return (now or time.time()) + limit + self.config.deadline_slack

    def _dispatch(self, claim_ahead=False):
        """Publish pending jobs to channels with room, in one write (``outbox.py``: a message per job,
        or batch frames for workers that read them); park those a limit holds back. With
        ``claim_ahead`` the same write ends with the claim of the jobs that fill the room left, so a
        busy master takes a round trip per batch, not two. Returns True if the dispatcher should go
        round again at once: jobs were sent or parked; with a claim ahead, jobs were claimed or
        parked (none claimed: the intake was empty, and a wake-up says when it is not)."""
        pending, table, choose, ledger = self.pending, self.table, self.strategy, self.ledger
        budget = self.config.max_inflight_bytes
        limits = self.limits
        limited = limits.limits  # {task: Limit}, usually empty: one dict lookup per job otherwise
        admitted, parked = [], []  # jobs of limited tasks that may start now, and those held back
        sent, full = [], {}  # full: channels of subscribers whose window is full -> cap
        token = new_token()  # one per batch: each job's dispatch record binds it to the job
        outbox = Outbox(self.codec, token, self.config.max_payload, self.durable)
        now, deadline_for = time.time(), self.deadline_for
        while pending:
            job = pending[0]
            is_limited = limited and job.task in limited
            if is_limited:
                if not limits.may_start(job.task, job.id, now):
                    parked.append(pending.popleft())
                    continue
            channel = choose(table, job)
            if channel is None:
                break
            piece = outbox.piece(job, channel)
            subscriber = channel.worker or channel.name
            held = ledger.bytes(subscriber)
            if held and held + len(piece) > budget:
                # That subscriber's output buffer is full enough: its channels sit out this round
                # (cap 0), the others go on.
                full[channel] = channel.cap
                table.total_cap -= channel.cap
                channel.cap = 0
                continue
            pending.popleft()
            if is_limited:  # and may start (above): it counts now
                limits.start(job.task, job.id, now)
                admitted.append(job)
            entry = ledger.add(job, channel, len(piece), token, deadline_for(job, now))
            sent.append(entry)
            outbox.put(entry, piece)
        for channel, cap in full.items():
            channel.cap = cap
            table.total_cap += cap
        if not sent:
            if parked:
                self._park(parked)
            return bool(parked)
        commands = []
        if self.durable:  # in the same write: published jobs get their full deadline and their dispatch record
            commands.append(self.store.deadline_command([(int(e.deadline), e.job.id) for e in sent]))
            commands.append(self.store.dispatch_command([(e.job.id, e.channel) for e in sent], token, now))
        if limited:  # and the limits' state that a master taking over needs
            commands += self._limit_commands(admitted, now)
        messages = outbox.messages()
        ahead = ()
        if claim_ahead:
            room = min(table.free_slots() - len(pending), self.config.claim_batch)
            if room > 0:
                ahead = (self.store.claim_command(room, self.durable),)
        try:
            replies = self._publisher.send([(name, payload) for name, payload, _ in messages], commands, ahead)
        except transport.ConnectionLost:
            # Nothing is known to have gone out: the whole batch waits for the next connection.
            for entry in sent:
                ledger.pop(entry.job.id)
            for job in admitted:
                limits.revoke(job.task, job.id)
            pending.extendleft(reversed([entry.job for entry in sent] + parked))
            raise
        if self._publisher_broken:
            self._publisher_broken = False
            self.hooks.on_reconnect("dispatch")
        missed, dispatched, duplicates = [], [], 0
        for (_, _, entries), receivers in zip(messages, replies):
            if receivers and not transport.is_error(receivers):
                dispatched += [entry.job for entry in entries]
                if receivers > 1:
                    duplicates += len(entries)
                continue
            reason = "redis_error" if transport.is_error(receivers) else "no_subscriber"
            for entry in entries:
                job = entry.job
                self.hooks.on_dispatch_failed(reason)
                ledger.pop(job.id)
                if limited and job.task in limited:  # it did not start: its slot in the window is free
                    limits.revoke(job.task, job.id)
                missed.append(job)
            self._bench(entries[0].channel, reason, receivers)
        if dispatched:
            self.hooks.on_dispatched(dispatched, now, duplicates)
        pending.extendleft(reversed(missed))
        if parked:
            self._park(parked)
        if ahead:
            claimed = replies[-1]
            if transport.is_error(claimed):  # NOSCRIPT (Redis forgot it), ...: a claim of its own cures or says it
                log.debug("master: the claim sent with a batch failed: %s", claimed)
                return True
            claimed = self.store.claimed(claimed, self.durable)
            self._queue_claimed(claimed)
            return bool(claimed) or bool(parked)
        return len(missed) < len(sent) or bool(parked)

    def _limit_commands(self, admitted, now):
        """The Redis side of ``admitted`` (jobs of limited tasks in this batch): their start times and,
        for max_running, their ids; plus the ids seen finished since the last batch."""
        limits, durable = self.limits.limits, self.durable
        started, running = {}, {}
        for job in admitted:
            started[job.task] = started.get(job.task, 0) + 1
            if durable and limits[job.task].max_running is not None:
                running.setdefault(job.task, []).append(job.id)
        starts = [(task, n, limits[task].rate, limits[task].period) for task, n in started.items()
                  if limits[task].rate is not None]
        gone = self.limits.take_gone()
        if not durable:
            gone = {}
        return self.store.limit_commands(now, starts, running.items(), gone.items())

    def _bench(self, channel, reason, reply):
        if channel.name not in self.table:
            return
        if reason == "redis_error":
            log.warning("master: PUBLISH to %s failed: %s", channel.name.decode(), reply)
        self.table.remove(channel.name)
        self.discovery.stale = True
        if self._static:
            self._benched[channel.name] = (time.monotonic() + COOL_DOWN, channel.cap)
            gevent.spawn_later(COOL_DOWN, self._unbench, channel.name)

    def _unbench(self, name):
        _, cap = self._benched.pop(name, (0, 0))
        if cap and not self._stop.is_set():
            self.table.add(name, None, cap)
            self._wake.set()

    # -- collecting ------------------------------------------------------------------------------

    def _subscribe(self):
        return transport.subscribe(self.client, [self.keys.result_channel, self.keys.wakeup_channel])

    def _collect_loop(self):
        while not self._stop.is_set():
            try:
                messages = self._subscriber.read()
            except transport.ConnectionLost as exc:
                self._resubscribe(exc)
                continue
            self._take(messages)
            self._wake.set()

    def _take(self, messages):
        """Results read from CHANNEL_RESULT (wake-ups are only cues)."""
        wakeup = self._wakeup
        raw_results, cancels, finished = [], [], []
        for channel, data in messages:
            if channel != wakeup:
                self._collect(data, raw_results, cancels, finished)
            elif data == b"scheduled":
                self._timer.set()
        if finished:
            self.hooks.on_finished(finished)
        if raw_results:
            self._record_raw(raw_results)
        if cancels:
            self._take_cancels(cancels)

    def _collect(self, data, raw_results, cancels, finished):
        """The results of one message: a result, or a result frame."""
        try:
            results, errors = self.codec.decode_results(data)
        except DecodeError as exc:
            results, errors = (), [exc]
        for exc in errors:
            log.warning("master: ignored an unreadable result: %s", exc)
            self.hooks.on_unknown_result()
        for result in results:
            if result.token is None and result.status == CANCELLED:
                cancels.append(result.id)  # no token to check it by: checked against Redis
                continue
            self._take_result(result, raw_results, finished)

    def _take_cancels(self, ids):
        """Jobs cancelled while this master held them claimed and unsent (``lua/cancel.lua``). Their
        announcement carries no dispatch token, so the stored result is the one believed."""
        try:
            stored = self.store.get_results(ids)
        except transport.RedisError as exc:  # the workers drop the jobs if they are sent: no harm done
            log.warning("master: could not check %d cancelled jobs: %s", len(ids), transport.describe(exc))
            return
        for job_id, data in zip(ids, stored):
            try:
                cancelled = data is not None and self.stored.decode_result(data, None).status == CANCELLED
            except DecodeError:
                cancelled = False
            if cancelled:
                self._forget_cancelled(job_id)
            else:
                self.hooks.on_unknown_result()

    def _forget_cancelled(self, job_id):
        """A job cancelled before it was dispatched: out of the line if still there, or its slot freed
        if it was sent as the cancel ran (the worker drops it unrun)."""
        entry = self.ledger.pop(job_id)
        job = entry.job if entry is not None else self._unqueue(job_id)
        if job is None:  # claimed by a master before this one, or heard of twice
            self.hooks.on_unknown_result()
            return
        self.hooks.on_finished([(job, CANCELLED, time.time() - job.submitted_at)])

    def _unqueue(self, job_id):
        """Take a claimed job off the line of jobs waiting for a channel. Returns it, or None."""
        for job in self.pending:
            if job.id == job_id:
                self.pending.remove(job)
                return job
        return None

    def _take_result(self, result, raw_results, finished, trusted=False):
        """A result frees its slot only if it answers the dispatch in flight: the same token (the raw
        codec has none), or ``trusted`` (read back from Redis, where only such results are recorded).
        Its job goes on ``finished`` for the hooks."""
        ledger = self.ledger
        entry = ledger.get(result.id)
        if entry is None or not (trusted or self.raw or result.token == entry.token):
            if entry is None:  # one an earlier master sent, counted against a max_running?
                self.limits.finished(result.id, result.token)
            self.hooks.on_unknown_result()
            return
        ledger.pop(result.id)
        job = entry.job
        if result.status == RETRY:  # failed, scheduled to run again: the slot is free, the job not done
            self.hooks.on_redispatched("retry", 1)
            return
        if self.raw:
            raw_results.append(Outcome(job.id, "ok", self.stored.encode_result(result), job.reply, entry.token))
        finished.append((job, result.status, time.time() - job.submitted_at))

    def _record_raw(self, results):
        """The original slaves record nothing: in raw mode the master writes their results."""
        try:
            self.store.finish(results, announce=False, trusted=True)
        except transport.RedisError as exc:
            log.warning("master: recording %d raw results failed: %s", len(results), transport.describe(exc))

    def _resubscribe(self, exc):
        log.warning("master: lost the result connection (%s); reconnecting", transport.describe(exc))
        self._subscriber.close()
        subscriber = transport.keep_trying(self._subscribe, self._stop, "master")
        if subscriber is not None:
            self._subscriber = subscriber
            self.hooks.on_reconnect("collector")
            transport.keep_trying(self._reconcile, self._stop, "master")

    def _reconcile(self):
        """Results announced while we were not listening are lost to us, not to Redis: read the
        stored results of every job we think in flight, and finish those that have one; and of the jobs
        claimed and waiting for a channel, of which only a cancel can have one."""
        if not self.durable or not (len(self.ledger) or self.pending):
            return
        ids = self.ledger.ids() + [job.id for job in self.pending]
        stored = [data for data in self.store.get_results(ids) if data is not None]
        finished = []
        for data in stored:
            try:
                result = self.stored.decode_result(data, max_payload=None)
            except DecodeError as exc:
                log.warning("master: ignored an unreadable stored result: %s", exc)
                continue
            if self.ledger.get(result.id) is not None:
                self._take_result(result, [], finished, trusted=True)
            elif result.status == CANCELLED:
                self._forget_cancelled(result.id)
        if finished:
            self.hooks.on_finished(finished)
        if stored:
            log.info("master: %d results came in while the result connection was down", len(stored))
            self._wake.set()

    # -- housekeeping ----------------------------------------------------------------------------

    def _timer_loop(self):
        """Promote scheduled jobs as they come due: sleep until the earliest due time (at most a second,
        so a job scheduled by a process whose wake-up was lost still runs on time), or until a new
        scheduled job's wake-up."""
        stop, timer = self._stop, self._timer
        backoff = Backoff(first=0.1, cap=5.0)
        while not stop.is_set():
            timer.clear()
            try:
                next_due = _earliest(self._promote(), self.scheduler.fire_due())
                backoff.reset()
            except transport.RedisError as exc:
                log.warning("master: promoting scheduled jobs failed: %s", transport.describe(exc))
                stop.wait(backoff.next())
                continue
            delay = 1.0 if next_due is None else min(1.0, next_due - time.time())
            if delay > 0:
                timer.wait(delay)

    def _promote(self):
        """Move the scheduled jobs that are due to the intake. Returns when the next one is due, or None."""
        moved, next_due = self.store.promote()
        if moved:
            self._wake.set()
        return next_due

    def _reap(self, reason="deadline"):
        if self.pending and self.durable:  # still ours, waiting for room: keep the reaper off them
            self.store.extend([job.id for job in self.pending], time.time() + CLAIM_GRACE)
        requeued, dead = self.store.reap(self.config.max_attempts)
        for job_id in requeued:
            self.ledger.pop(job_id)
        if requeued:
            log.warning("master: %d jobs re-queued (%s)", len(requeued), reason.replace("_", " "))
            self.hooks.on_redispatched(reason, len(requeued))
            self._wake.set()
        finished = []
        for job_id in dead:
            entry = self.ledger.pop(job_id)
            if entry is not None:
                finished.append((entry.job, "dead", time.time() - entry.job.submitted_at))
        if finished:
            self.hooks.on_finished(finished)
        if dead:
            log.warning("master: %d jobs ran out of attempts, dead-lettered", len(dead))
        self.store.trim_dead()
        self.store.trim_done()
        self._prune_inherited()

    def _expire(self):
        """Without durability: forget dispatches past their deadline (their message was lost, refused,
        or their worker went away), so their slots come back."""
        expired = self.ledger.expired(time.time())
        if expired:
            log.warning("master: %d dispatches got no result by their deadline; given up (durability none)",
                        len(expired))
            self.hooks.on_lost(len(expired))
            self._wake.set()

    def _lose_worker(self, worker_id):
        """Discovery found ``worker_id`` gone: its jobs go back to the queue."""
        lost = self.ledger.held_by(worker_id)
        for job_id in lost:
            self.ledger.pop(job_id)
        if not self.durable:
            if lost:
                log.warning("master: %d jobs were in flight on worker %s and are lost (durability none)",
                            len(lost), worker_id)
                self.hooks.on_lost(len(lost))
            return
        # And those a master before us sent it; through the reaper, so a job that keeps killing its
        # workers ends in the dead letters.
        self.store.expire_now(sorted(set(lost).union(self.store.owned_by(worker_id))))
        self._reap(reason="worker_lost")


def _earliest(*times):
    """The earliest of unix times, None among them meaning "none"."""
    return min((t for t in times if t is not None), default=None)


class _Unreadable:
    """Stands in for a job whose stored record could not be decoded, to build its error result."""

    def __init__(self, job_id):
        self.id = job_id
        self.task = ""
        self.token = None
        self.reply = None
        self.submitted_at = 0


def _describe(task, limit):
    """``task (20/s, 2 running)``: a limit as the log says it."""
    parts = []
    if limit.rate is not None:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(limit.period, f"{limit.period:g}s")
        parts.append(f"{limit.rate}/{unit}")
    if limit.max_running is not None:
        parts.append(f"{limit.max_running} running")
    return f"{task} ({', '.join(parts)})"
