"""The master: takes jobs from the intake, picks a channel for each, publishes, and collects results.

Greenlets:

* dispatcher  claims as many jobs as the channels have room for (one script call per batch: in-flight
              record and deadline written before anything is published), picks a channel per job
              with the strategy, and publishes the batch in one write. ``PUBLISH`` = 0 means nobody
              is subscribed there: the job goes back to the front of the line and the channel sits
              out until discovery (or, for static channels, a short cool-down) brings it back.
* collector   reads CHANNEL_RESULT (and the intake's wake-up channel) through hiredis; each result
              that carries its dispatch's token frees its channel's slot (``ledger.py``). Others
              (unknown jobs, stale copies, a stranger's) are counted and ignored.
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
from geventsched.loops import Loops
from geventsched.outbox import Outbox
from geventsched.protocol import RETRY, Job, JsonCodec, error_result, make_codec
from geventsched.schedules import Scheduler
from geventsched.store import Outcome, Store

log = logging.getLogger(__name__)

#: A static channel that answered PUBLISH = 0 sits out this long.
COOL_DOWN = 0.5


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
        self._wake = Event()
        self._timer = Event()  # a job was scheduled: the timer looks for the earliest due time again
        self._wakeup = self.keys.wakeup_channel.encode()  # the intake's cue, among the results
        self.discovery = Discovery(self.store, self.table, config, self.hooks, self._lose_worker, self._wake.set)
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
        channels (from memory), and jobs queued (claimed and waiting here, plus the intake) and dead
        letters, read from Redis; those two are left out when Redis does not answer."""
        state = {"in_flight": len(self.ledger), "workers": len(self.discovery.workers), "channels": len(self.table)}
        pending = len(self.pending)  # read before the round trip, which lets the loops run
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
                self._claim()
                progressed = self._dispatch()
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
                # Nothing to send, or no room: sleep until a result, a wake-up or a new channel.
                self._wake.wait(1.0)

    def _claim(self):
        room = min(self.table.free_slots() - len(self.pending), self.config.claim_batch)
        if room <= 0:
            return
        if self.durable:
            claimed = self.store.claim(room)
        else:
            claimed = self.store.take(room)
        handed_back = 0
        for job_id, body, attempt in claimed:
            job = self._readable(job_id, body)
            if job is None:
                continue
            if self.ledger.pop(job_id) is not None:  # handed back by its worker, or re-queued
                handed_back += 1
            if attempt == 1:
                self.hooks.on_submitted(job)
            self.pending.append(job)
        if handed_back:
            self.hooks.on_redispatched("handed_back", handed_back)

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
        self.hooks.on_finished(job, "error", time.time() - job.submitted_at if job.submitted_at else 0.0)

    def deadline_for(self, job, now=None):
        """When a dispatch of ``job`` counts as lost: its time limit (the job's, else its task's as the
        workers registered it, else the default) plus slack for time queued on the worker."""
        limit = job.timeout or self.discovery.task_timeouts.get(job.task) or self.config.default_timeout
        return (now or time.time()) + limit + self.config.deadline_slack

    def _dispatch(self):
        """Publish pending jobs to channels with room, in one write (``outbox.py``: a message per job,
        or batch frames for workers that read them). Returns True if any job was sent."""
        pending, table, choose, ledger = self.pending, self.table, self.strategy, self.ledger
        budget = self.config.max_inflight_bytes
        sent, full = [], {}  # full: channels of subscribers whose window is full -> cap
        token = new_token()  # one per batch: each job's dispatch record binds it to the job
        outbox = Outbox(self.codec, token, self.config.max_payload, self.durable)
        now, deadline_for = time.time(), self.deadline_for
        while pending:
            job = pending[0]
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
            entry = ledger.add(job, channel, len(piece), token, deadline_for(job, now))
            sent.append(entry)
            outbox.put(entry, piece)
        for channel, cap in full.items():
            channel.cap = cap
            table.total_cap += cap
        if not sent:
            return False
        commands = []
        if self.durable:  # in the same write: published jobs get their full deadline and their dispatch record
            commands.append(self.store.deadline_command([(int(e.deadline), e.job.id) for e in sent]))
            commands.append(self.store.dispatch_command([(e.job.id, e.channel) for e in sent], token, now))
        messages = outbox.messages()
        try:
            replies = self._publisher.send([(name, payload) for name, payload, _ in messages], commands)
        except transport.ConnectionLost:
            # Nothing is known to have gone out: the whole batch waits for the next connection.
            for entry in sent:
                ledger.pop(entry.job.id)
            pending.extendleft(reversed([entry.job for entry in sent]))
            raise
        if self._publisher_broken:
            self._publisher_broken = False
            self.hooks.on_reconnect("dispatch")
        missed = []
        for (_, _, entries), receivers in zip(messages, replies):
            if receivers and not transport.is_error(receivers):
                for entry in entries:
                    self.hooks.on_dispatched(entry.job, now - entry.job.submitted_at, receivers)
                continue
            reason = "redis_error" if transport.is_error(receivers) else "no_subscriber"
            for entry in entries:
                self.hooks.on_dispatch_failed(reason)
                ledger.pop(entry.job.id)
                missed.append(entry.job)
            self._bench(entries[0].channel, reason, receivers)
        pending.extendleft(reversed(missed))
        return len(missed) < len(sent)

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
        raw_results = []
        for channel, data in messages:
            if channel != wakeup:
                self._collect(data, raw_results)
            elif data == b"scheduled":
                self._timer.set()
        if raw_results:
            self._record_raw(raw_results)

    def _collect(self, data, raw_results):
        """The results of one message: a result, or a result frame."""
        try:
            results, errors = self.codec.decode_results(data)
        except DecodeError as exc:
            results, errors = (), [exc]
        for exc in errors:
            log.warning("master: ignored an unreadable result: %s", exc)
            self.hooks.on_unknown_result()
        for result in results:
            self._take_result(result, raw_results)

    def _take_result(self, result, raw_results, trusted=False):
        """A result frees its slot only if it answers the dispatch in flight: the same token (the raw
        codec has none), or ``trusted`` (read back from Redis, where only such results are recorded)."""
        ledger = self.ledger
        entry = ledger.get(result.id)
        if entry is None or not (trusted or self.raw or result.token == entry.token):
            self.hooks.on_unknown_result()
            return
        ledger.pop(result.id)
        job = entry.job
        if result.status == RETRY:  # failed, scheduled to run again: the slot is free, the job not done
            self.hooks.on_redispatched("retry", 1)
            return
        if self.raw:
            raw_results.append(Outcome(job.id, "ok", self.stored.encode_result(result), job.reply, entry.token))
        self.hooks.on_finished(job, result.status, time.time() - job.submitted_at)

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
        stored results of every job we think in flight, and finish those that have one."""
        if not self.durable or not len(self.ledger):
            return
        ids = self.ledger.ids()
        stored = [data for data in self.store.get_results(ids) if data is not None]
        for data in stored:
            try:
                self._take_result(self.stored.decode_result(data, max_payload=None), [], trusted=True)
            except DecodeError as exc:
                log.warning("master: ignored an unreadable stored result: %s", exc)
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
        for job_id in dead:
            entry = self.ledger.pop(job_id)
            if entry is not None:
                self.hooks.on_finished(entry.job, "dead", time.time() - entry.job.submitted_at)
        if dead:
            log.warning("master: %d jobs ran out of attempts, dead-lettered", len(dead))
        self.store.trim_dead()
        self.store.trim_done()

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
