"""The master: takes jobs from the intake, picks a channel for each, publishes, and collects results.

Greenlets:

* dispatcher  claims as many jobs as the channels have room for (one script call per batch: in-flight
              record and deadline written before anything is published), picks a channel per job
              with the strategy, and publishes the batch in one write. ``PUBLISH`` = 0 means nobody
              is subscribed there: the job goes back to the front of the line and the channel sits
              out until discovery (or, for static channels, a short cool-down) brings it back.
* collector   reads CHANNEL_RESULT (and the intake's wake-up channel) through hiredis; each result
              frees its channel's slot. Results for jobs it does not know are counted and ignored.
* discovery   once a second: live workers and the channels they hold; a worker that stopped
              heartbeating loses its channels and its in-flight jobs go back to the intake.
* reaper      once a second: in-flight jobs past their deadline go back to the intake, or to the
              dead-letter list after the last attempt.

The master keeps only soft state in memory (which channel holds which job); everything a restart
needs is in Redis (``store.py``).
"""

import logging
import os
import signal
import time
from collections import defaultdict, deque

import gevent
from gevent.event import Event

from geventsched import transport
from geventsched.dispatch import ChannelTable, get_strategy
from geventsched.errors import DecodeError, GeventschedError
from geventsched.hooks import MasterHooks, guarded
from geventsched.keys import Keys
from geventsched.lease import Lease
from geventsched.protocol import RETRY, Job, JsonCodec, error_result, make_codec
from geventsched.store import CLAIM_GRACE, DEADLINE_SLACK, Store

log = logging.getLogger(__name__)

#: A static channel that answered PUBLISH = 0 sits out this long.
COOL_DOWN = 0.5


class Master:
    def __init__(self, config, client, hooks=None):
        self.config = config
        self.client = client
        self.hooks = guarded(hooks, MasterHooks)
        self.keys = Keys(config.namespace, cluster=transport.is_cluster(client))
        self.store = Store(client, self.keys, config.result_ttl)
        self.codec = make_codec(config.codec, max_payload=config.max_payload)
        self.stored = JsonCodec(max_payload=config.max_payload)  # jobs in Redis are always JSON
        self.raw = config.codec == "raw"
        self.durable = config.durability == "redis"
        self.strategy = get_strategy(config.strategy)
        self.table = ChannelTable()
        self.pending = deque()  # claimed jobs waiting for a channel
        self.in_flight = {}  # job id -> (job, channel, size of its message)
        # Bytes in flight per subscriber (worker id, or channel name for workers that never register):
        # Redis cuts off a subscriber whose output buffer outgrows client-output-buffer-limit pubsub.
        self._window = defaultdict(int)
        self.workers = {}  # worker id -> last heartbeat
        self._static = [self.keys.dispatch_channel(c) for c in config.channels]
        self._benched = {}  # static channel name -> (time it may come back, cap)
        self._stale = False  # a discovered channel answered PUBLISH = 0: ask Redis again
        self._mismatched = set()  # workers whose durability differs from ours (logged once)
        self._local_prefix = f"m{os.urandom(3).hex()}-"  # ids of submit_local jobs
        self._local_seq = 0
        self._wake = Event()
        self._stop = Event()
        self._greenlets = []
        self._subscriber = None
        self._publisher = transport.Publisher(client, self.keys.inflight)
        self._publisher_broken = False
        self.lease = Lease(client, self.keys.master, config.lease_ttl)
        self.lease_lost = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        """Take the master lease (standing by while another master holds it), then start the loops.
        Returns False if ``stop()`` came first."""
        if not self.lease.acquire(self._stop):
            return False
        self._greenlets.append(self.lease.spawn_keeper(self._stop, self._lose_lease))
        self._subscriber = self._subscribe()
        for name in self._static:
            self.table.add(name.encode(), None, self.config.prefetch or self.config.static_prefetch)
        if not self._static:
            self._discover()
        self._greenlets += [gevent.spawn(self._collect_loop), gevent.spawn(self._dispatch_loop)]
        if self.durable:
            self._greenlets.append(gevent.spawn(self._every, self.config.reap_interval, self._reap))
        if not self._static:
            self._greenlets.append(gevent.spawn(self._every, self.config.discovery_interval, self._discover))
        log.info("master: %d channels, strategy %s, codec %s, durability %s%s", len(self.table),
                 self.config.strategy, self.codec.name, self.config.durability,
                 ", Redis Cluster" if self.keys.cluster else "")
        return True

    def run(self):
        """Serve until SIGTERM/SIGINT (standing by first if another master is active). Returns the exit
        code: 1 if the lease was lost to another master."""
        handlers = [gevent.signal_handler(sig, self._stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            if self.start():
                self._stop.wait()
        finally:
            for handler in handlers:
                handler.cancel()
            self.stop()
        return 1 if self.lease_lost else 0

    def _lose_lease(self):
        self.lease_lost = True
        self._stop.set()

    def stop(self):
        """Stop the loops and put claimed, undispatched jobs back on the intake. Jobs in flight stay
        recorded in Redis for the next master (``--durability redis``)."""
        self._stop.set()
        self._wake.set()
        gevent.killall(self._greenlets, timeout=5)
        if not self.lease_lost:
            self._return_pending()
            self.lease.release()
        if self._subscriber is not None:
            self._subscriber.close()
        self._publisher.close()
        log.info("master: stopped with %d jobs in flight", len(self.in_flight))

    def _return_pending(self):
        jobs, self.pending = list(self.pending), deque()
        if not jobs:
            return
        try:
            if self.durable:
                self.store.requeue([job.id for job in jobs])
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
        while not self._stop.wait(interval):
            try:
                step()
            except transport.RedisError as exc:
                log.warning("master: %s failed: %s", step.__name__.strip("_"), transport.describe(exc))

    # -- dispatching -----------------------------------------------------------------------------

    def _dispatch_loop(self):
        delay = 0.1
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._claim()
                progressed = self._dispatch()
                delay = 0.1
            except transport.ConnectionLost as exc:
                log.warning("master: dispatch connection lost (%s); reconnecting in %.1fs",
                            transport.describe(exc), delay)
                self._publisher_broken = True
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            except transport.RedisError as exc:
                log.warning("master: dispatch failed: %s", transport.describe(exc))
                self._stop.wait(delay)
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
            try:
                job = self.stored.decode_job(body)
            except DecodeError as exc:
                log.error("master: job %s in the intake is unreadable (%s); recording it as failed", job_id, exc)
                self.store.finish([(job_id, "error", self.stored.encode_result(error_result(
                    _Unreadable(job_id), "error", "DecodeError", str(exc))), "")], announce=False)
                continue
            if self._free(job_id) is not None:  # handed back by its worker, or re-queued
                handed_back += 1
            if attempt == 1:
                self.hooks.on_submitted(job)
            self.pending.append(job)
        if handed_back:
            self.hooks.on_redispatched("handed_back", handed_back)

    def _dispatch(self):
        """Publish pending jobs to channels with room. Returns True if any job was sent."""
        pending, table, choose = self.pending, self.table, self.strategy
        encode, in_flight, window = self.codec.encode_job, self.in_flight, self._window
        budget = self.config.max_inflight_bytes
        sent, messages = [], []
        while pending:
            job = pending[0]
            channel = choose(table, job)
            if channel is None:
                break
            payload = encode(job)
            subscriber = channel.worker or channel.name
            size = len(payload)
            if window[subscriber] + size > budget and window[subscriber]:
                break  # that subscriber's output buffer is full enough: wait for results
            pending.popleft()
            table.acquire(channel)
            window[subscriber] += size
            in_flight[job.id] = (job, channel, size)
            sent.append((job, channel))
            messages.append((channel.name, payload))
        if not sent:
            return False
        now = time.time()
        commands = []
        if self.durable:  # in the same write: published jobs get their full deadline and their owner
            base, default = int(now + DEADLINE_SLACK), self.config.default_timeout
            commands.append(self.store.deadline_command(
                [(base + int(job.timeout or default), job.id) for job, _ in sent]))
            owners = [(job.id, channel.worker) for job, channel in sent if channel.worker]
            if owners:
                commands.append(self.store.owner_command(owners))
        try:
            replies = self._publisher.send(messages, commands)
        except transport.ConnectionLost:
            # Nothing is known to have gone out: the whole batch waits for the next connection.
            for job, _ in sent:
                self._free(job.id)
            pending.extendleft(reversed([job for job, _ in sent]))
            raise
        if self._publisher_broken:
            self._publisher_broken = False
            self.hooks.on_reconnect("dispatch")
        missed = []
        for (job, channel), receivers in zip(sent, replies):
            if receivers and not transport.is_error(receivers):
                self.hooks.on_dispatched(job, now - job.submitted_at, receivers)
                continue
            reason = "redis_error" if transport.is_error(receivers) else "no_subscriber"
            self.hooks.on_dispatch_failed(reason)
            self._free(job.id)
            missed.append(job)
            self._bench(channel, reason, receivers)
        pending.extendleft(reversed(missed))
        return len(missed) < len(sent)

    def _bench(self, channel, reason, reply):
        if channel.name not in self.table:
            return
        if reason == "redis_error":
            log.warning("master: PUBLISH to %s failed: %s", channel.name.decode(), reply)
        self.table.remove(channel.name)
        self._stale = True
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
        wakeup = self.keys.wakeup_channel.encode()
        while not self._stop.is_set():
            try:
                messages = self._subscriber.read()
            except transport.ConnectionLost as exc:
                self._resubscribe(exc)
                continue
            raw_results = []
            for channel, data in messages:
                if channel == wakeup:
                    continue
                self._collect(data, raw_results)
            if raw_results:
                self._record_raw(raw_results)
            self._wake.set()

    def _collect(self, data, raw_results):
        try:
            result = self.codec.decode_result(data)
        except DecodeError as exc:
            log.warning("master: ignored an unreadable result: %s", exc)
            self.hooks.on_unknown_result()
            return
        self._take_result(result, raw_results)

    def _take_result(self, result, raw_results):
        entry = self._free(result.id)
        if entry is None:
            self.hooks.on_unknown_result()
            return
        job = entry[0]
        if result.status == RETRY:  # failed, scheduled to run again: the slot is free, the job not done
            self.hooks.on_redispatched("retry", 1)
            return
        if self.raw:
            raw_results.append((job.id, "ok", self.stored.encode_result(result), job.reply))
        self.hooks.on_finished(job, result.status, time.time() - job.submitted_at)

    def _record_raw(self, results):
        """The original slaves record nothing: in raw mode the master writes their results."""
        try:
            self.store.finish(results, announce=False)
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
        if not self.durable or not self.in_flight:
            return
        ids = list(self.in_flight)
        stored = [data for data in self.store.get_results(ids) if data is not None]
        for data in stored:
            try:
                self._take_result(self.stored.decode_result(data), [])
            except DecodeError as exc:
                log.warning("master: ignored an unreadable stored result: %s", exc)
        if stored:
            log.info("master: %d results came in while the result connection was down", len(stored))
            self._wake.set()

    # -- housekeeping ----------------------------------------------------------------------------

    def _reap(self, reason="deadline"):
        if self.store.promote():
            self._wake.set()
        if self.pending and self.durable:  # still ours, waiting for room: keep the reaper off them
            self.store.extend([job.id for job in self.pending], time.time() + CLAIM_GRACE)
        requeued, dead = self.store.reap(self.config.max_attempts)
        for job_id in requeued:
            self._forget(job_id)
        if requeued:
            log.warning("master: %d jobs re-queued (%s)", len(requeued), reason.replace("_", " "))
            self.hooks.on_redispatched(reason, len(requeued))
            self._wake.set()
        for job_id in dead:
            job = self._forget(job_id)
            if job is not None:
                self.hooks.on_finished(job, "dead", time.time() - job.submitted_at)
        if dead:
            log.warning("master: %d jobs ran out of attempts, dead-lettered", len(dead))

    def _forget(self, job_id):
        entry = self._free(job_id)
        return None if entry is None else entry[0]

    def _free(self, job_id):
        """Forget a job in flight: its channel slot and its bytes are free again. Returns its entry
        ``(job, channel, size)``, or None if it was not in flight here."""
        entry = self.in_flight.pop(job_id, None)
        if entry is not None:
            _, channel, size = entry
            self.table.release(channel)
            self._window[channel.worker or channel.name] -= size
        return entry

    def _discover(self):
        workers = self.store.workers()
        gone = [w for w, beat in workers.items() if beat is None]
        for worker_id in gone:
            self._lose_worker(worker_id)
        live = {w: beat for w, beat in workers.items() if beat is not None and self._compatible(w, beat)}
        if live.keys() != self.workers.keys() or gone or self._stale:
            self._stale = False
            self._refresh_channels(live)
        self.workers = live

    def _compatible(self, worker_id, beat):
        mode = beat.get("durability", "redis")
        if mode == self.config.durability:
            return True
        if worker_id not in self._mismatched:
            self._mismatched.add(worker_id)
            log.error("master: worker %s runs with --durability %s, this master with %s: not using it",
                      worker_id, mode, self.config.durability)
        return False

    def _lose_worker(self, worker_id):
        log.warning("master: worker %s stopped heartbeating; taking its channels away", worker_id)
        self.store.release_worker(worker_id)
        lost = [job_id for job_id, (_, ch, _) in self.in_flight.items() if ch.worker == worker_id]
        for job_id in lost:
            self._forget(job_id)
        if self.durable:  # and those a master before us sent it
            lost = sorted(set(lost).union(self.store.owned_by(worker_id)))
        if not self.durable:
            if lost:
                log.warning("master: %d jobs were in flight on worker %s and are lost (durability none)",
                            len(lost), worker_id)
            return
        # Through the reaper, so a job that keeps killing its workers ends in the dead letters.
        self.store.expire_now(lost)
        self._reap(reason="worker_lost")

    def _refresh_channels(self, live):
        owners = self.store.channel_owners()
        held = {}
        for channel, worker_id in owners.items():
            beat = live.get(worker_id)
            if beat is not None:
                held[channel.encode()] = (worker_id, self._cap(beat))
        for name in [c.name for c in self.table.order if c.name not in held]:
            self.table.remove(name)
        for name, (worker_id, cap) in held.items():
            self.table.add(name, worker_id, cap)
        log.info("master: %d workers, %d channels", len(live), len(self.table))
        self._wake.set()

    def _cap(self, beat):
        if self.config.prefetch:
            return self.config.prefetch
        return max(1, int(beat.get("capacity", 100)) // max(1, int(beat.get("channels", 1))))


class _Unreadable:
    """Stands in for a job whose stored record could not be decoded, to build its error result."""

    def __init__(self, job_id):
        self.id = job_id
        self.task = ""
