"""The worker: one gevent process serving many dispatch channels.

Greenlets, each with one job (watched by ``loops.Loops``: one that dies stops the worker, exit 1):

* reader      one subscribed connection for every channel; each ``recv`` goes to ``hiredis.Reader``
              and every complete message is decoded and queued for the runners (``runner.Runners``).
* runners     run jobs under a time limit (``deadlines.py``); a result is encoded and appended to the out-buffer.
* writer      wakes when the out-buffer is non-empty and writes all of it in one script call: results
              recorded once, in-flight cleared, result announced (``Store.finish``). While that round
              trip is under way new results collect, so batches grow with load and never wait for it.
* heartbeat   refreshes the worker's registration (``registration.py``) once a second, with its free
              slots. A worker that finds its registration gone (it was paused, or cut off, past its TTL, and thought dead)
              stops serving at once, hands back what it has not started, and registers again with
              the channels nobody took meanwhile.

Every result carries its dispatch's token (``protocol.py``), and only the dispatch in flight is
recorded: a job a stranger published, or a copy the master already sent elsewhere, runs to no effect.

Cancels (``lua/cancel.lua``) are recorded in Redis before any worker hears of them. The reader also
listens on the cancel channel; a notice there is only a cue: the ids it names whose stored result
says ``cancelled`` are stopped (``runners.stop``: dropped unrun, or interrupted with
``errors.Cancelled``) and remembered for a while, so that a dispatch of one that comes later (the
master sent it as the cancel was under way) is dropped unrun; a dispatch that comes while a notice
naming its job is being checked waits for the answer. A worker never writes a result for a cancelled
job. A notice lost with a connection is made up for after the reconnect (``_resync``): a job the
worker holds whose dispatch is no longer in flight (cancelled, or sent elsewhere) is stopped.

Shutdown is two-step (warm, then cold): the first SIGTERM/SIGINT unsubscribes, gives the channels up for
a successor, hands queued jobs back, and lets running ones finish for ``grace`` seconds while the worker
goes on heartbeating (``draining``), so the master never takes it for dead; a second signal or the end
of the grace period kills what still runs and hands it back.
"""

import logging
import random
import signal
import time
import traceback
from collections import OrderedDict

import gevent
import orjson
from gevent import getcurrent
from gevent.event import Event

from geventsched import transport
from geventsched.backoff import Backoff
from geventsched.deadlines import DeadlineExceeded, Deadlines
from geventsched.errors import Cancelled, DecodeError
from geventsched.hooks import WorkerHooks, guarded
from geventsched.loops import Loops
from geventsched.registration import LOST, MOVED, Registration, describe_host
from geventsched.protocol import CANCELLED, DISPATCH_ROOM, FRAMES, Result, error_result, make_codec
from geventsched.runner import Runners
from geventsched.store import Outcome, Store

log = logging.getLogger(__name__)

#: Results per script call; a bigger backlog goes out as several calls in a row.
WRITE_BATCH = 2000
#: A worker asks for up to this many times its concurrency in flight (Celery's default prefetch
#: multiplier, too): enough queued to keep the pipeline full while results travel back, and bounded
#: in bytes by the master's --max-inflight-bytes.
PREFETCH_MULTIPLIER = 4
#: After a reconnect, messages published before the new subscription were lost with the old one. The
#: jobs the master sent us that have not arrived this long after we read its records are handed back.
RESYNC_SETTLE = 1.0
#: A failed job is logged, at most this many lines a second (the rest are counted in the next line).
FAILURE_LOG_RATE = 10
#: Ids of cancelled jobs remembered (the oldest forgotten first), to drop a dispatch of one that comes
#: after its cancel: that happens within milliseconds of the cancel, or not at all.
CANCELLED_MEMORY = 10_000


class Worker:
    def __init__(self, config, client, registry, hooks=None):
        self.config = config
        self.client = client
        self.registry = registry
        self.hooks = guarded(hooks, WorkerHooks)
        self.store = Store.for_namespace(client, config.namespace, config.result_ttl)
        self.keys = self.store.keys
        self.codec = make_codec(config.codec, config.raw_task, config.max_payload + DISPATCH_ROOM)
        self.raw = config.codec == "raw"
        # The raw codec's master (the original script) records nothing, and neither do we without durability.
        self.recording = not self.raw and config.durability == "redis"
        self._publisher = transport.Publisher(client, self.keys.result_channel)
        self.id = config.worker_id
        # "3" and "CHANNEL_DISPATCH_3" name the same channel: subscribe it once.
        self.channels = list(dict.fromkeys(self.keys.dispatch_channel(c) for c in config.channels))
        self.runners = Runners(config.concurrency, self._execute, self._crashed)
        self._deadlines = Deadlines()
        # Tasks declared blocking=True run here. A timeout stops the wait, not the thread: the thread
        # finishes its call in the background, as any thread would.
        self._threads = gevent.get_hub().threadpool
        self._threads.maxsize = max(1, min(config.threads, config.concurrency))
        self._out = []  # Outcomes to record
        self._retry_out = []  # failures that may run again (Store.finish ``retries``)
        self._writing = []  # the Outcomes of the write under way
        self._finished = []  # (job, status, seconds) of jobs run, for the hooks: told by the writer
        self._out_ready = Event()
        self._stop = Event()
        self._hard_stop = Event()
        self._stopping = False
        self.stopped = False
        self._draining = False
        self._subscriber = None
        self._loops = Loops(f"worker {self.id}", self._on_loop_death)
        self.registration = Registration(self.store, self.id, self.channels, config.heartbeat_ttl, self._heartbeat)
        self._seen = None  # ids received since a reconnect, while a resync is under way
        self._refs = []  # (id, token) of jobs sent by reference, to read from Redis (the fetcher)
        self._refs_ready = Event()
        # Cancel notices are read only where there are records to check them against.
        self._cancel_channel = self.keys.cancel_channel.encode() if self.recording else None
        self._cancelled = OrderedDict()  # ids of jobs found cancelled (CANCELLED_MEMORY at most) -> None
        self._checking = {}  # id named by a notice being checked -> jobs of that id that arrived meanwhile
        self._failures = _RateLimit(FAILURE_LOG_RATE)
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        """Claim the channels, subscribe them all, register. Returns once jobs can arrive.

        A channel held by a worker that is gone (on this host with its process dead) is taken over at
        once; one held by a live-looking worker is waited for until its lease runs out (saying so
        once). Raises ChannelConflict when the holder keeps renewing it: that worker is alive. While
        Redis does not answer, keeps trying (a service rides out an outage). Returns False if
        ``request_stop`` came first.
        """
        # The tasks first: a master that sees this worker's channels finds their limits already there
        # (again below, in case Redis did not answer yet).
        self.registration.register_tasks(self.registry)
        if transport.keep_trying(lambda: self.registration.claim(self._stop), self._stop, f"worker {self.id}",
                                 retry_on=transport.ConnectionLost, what="registering") is None:
            return False
        try:
            self._subscriber = self._subscribe()
        except BaseException:  # (a user not allowed to subscribe): leave no registration behind
            try:
                self.registration.release()
            except transport.RedisError:
                pass  # it expires with its heartbeat key
            raise
        self.registration.register_tasks(self.registry)
        self._loops.spawn("reader", self._read_loop)
        self._loops.spawn("writer", self._write_loop)
        self._loops.spawn("fetcher", self._fetch_loop)
        self._loops.spawn("heartbeat", self._heartbeat_loop)
        log.info("worker %s: %d channels subscribed%s, concurrency %d, codec %s", self.id, len(self.channels),
                 " (sharded, Redis Cluster)" if self.keys.cluster else "", self.config.concurrency, self.codec.name)
        return True

    # -- stepping (tests and embedding) ------------------------------------------------------------

    def open(self):
        """Claim the channels and subscribe without starting a loop, to be driven by ``run_once``.
        Returns False if ``request_stop`` came while waiting for a channel."""
        self.registration.register_tasks(self.registry)  # before the channels: see start()
        if not self.registration.claim(self._stop):
            return False
        self._subscriber = self._subscribe()
        return True

    def run_once(self, timeout=0.0):
        """One pass of every loop in the calling greenlet (huey's ``loop()``): read what the channels
        hold (waiting up to ``timeout`` seconds for it), run those jobs to the end, write their results
        and heartbeat. Returns how many jobs it received."""
        messages = self._subscriber.read(timeout)
        for channel, data in messages:
            self._accept(channel, data)
        self._fetch()
        self.runners.wake()
        self.runners.join()
        self._write_pending()
        self._beat()
        return len(messages)

    def run(self):
        """Start, serve until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code: 1 if
        one of the worker's loops died."""
        # The handlers go in before the worker registers: a signal that comes while it subscribes must
        # drain it, not kill it with its registration still in Redis.
        handlers = [gevent.signal_handler(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            if self.start():
                self._stop.wait()
                self.stop(self.config.grace)
        finally:
            for handler in handlers:
                handler.cancel()
        return 1 if self._loops.failure else 0

    def _on_loop_death(self, name, exc):
        if name == "writer":  # nothing can be recorded any more: do not wait for running jobs
            self._hard_stop.set()
        self._stop.set()

    def _on_signal(self):
        # Runs in the hub: only set flags, the loop does the work.
        if self._stop.is_set():
            self._hard_stop.set()
        else:
            self._stop.set()

    def request_stop(self, hard=False):
        (self._hard_stop if hard else self._stop).set()
        self._stop.set()

    def stop(self, grace):
        """Stop taking jobs, finish or hand back the running ones within ``grace`` seconds, deregister.

        While it drains the worker has given its channels up (a successor may take them at once) but
        keeps its registration and heartbeat, marked ``draining``: its jobs stay its own until their
        results are recorded."""
        if self.stopped:
            return
        self._stopping = True
        self._stop.set()
        log.info("worker %s: stopping, %d running, %d queued", self.id, self.runners.running,
                 self.runners.queued)
        if self._subscriber is not None:
            self._subscriber.close()  # from now on, PUBLISH to our channels returns 0 and the master looks elsewhere
        self._draining = True
        try:
            self.registration.release(channels_only=True)
        except transport.RedisError as exc:
            log.warning("worker %s: could not give its channels up: %s", self.id, transport.describe(exc))
        self._hand_back(self.runners.close())
        deadline = time.monotonic() + grace
        while self.runners.running and not self._hard_stop.is_set() and time.monotonic() < deadline:
            self._hard_stop.wait(0.05)
        if self.runners.running:
            log.warning("worker %s: %d jobs still running, handing them back", self.id, self.runners.running)
            self._hand_back(self.runners.kill())
        self._deadlines.close()
        self._out_ready.set()
        self._loops.kill("reader", block=False)
        writer = self._loops.get("writer")
        if writer is not None:
            writer.join(timeout=max(1.0, deadline - time.monotonic()))
        self._loops.kill()
        self._publisher.close()
        try:
            self.registration.release()
        except transport.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.id, transport.describe(exc))
        self.stopped = True
        log.info("worker %s: stopped", self.id)

    def _hand_back(self, jobs):
        if not jobs or not self.recording:
            return
        try:
            n = self.store.requeue([(job.id, job.token) for job in jobs])
            log.info("worker %s: handed %d jobs back", self.id, n)
        except transport.RedisError as exc:
            log.warning("worker %s: could not hand %d jobs back (the master's reaper will): %s",
                        self.id, len(jobs), transport.describe(exc))

    # -- reading ---------------------------------------------------------------------------------

    def _subscribe(self):
        channels = self.registration.owned()
        # With jobs coming, their cancels too (a worker left without a channel gets no new job, and its
        # running ones lost their dispatch with the channels: see ``_registration_lost``).
        listen = [*channels, self.keys.cancel_channel] if channels and self.recording else channels
        subscriber = transport.subscribe(self.client, listen) if channels else _Idle()
        self.hooks.on_subscribed(len(channels))
        return subscriber

    def _read_loop(self):
        accept, runners = self._accept, self.runners
        while not self._stopping:
            subscriber = self._subscriber
            try:
                messages = subscriber.read()
            except transport.ConnectionLost as exc:
                if subscriber is not self._subscriber:
                    continue  # replaced on purpose (``_serve``): read the new one
                if self._stopping or not self._reconnect(exc):
                    return  # stopping: nothing more to read
                continue
            seen = self._seen
            for channel, data in messages:
                accept(channel, data, seen)
            if time.monotonic() - self.registration.confirmed > self.config.heartbeat_ttl:
                # We were away (paused, cut off), maybe thought dead: before anything runs, check, and
                # keep only the jobs whose dispatch is still ours (``_registration_lost``).
                self._check_registration()
            runners.wake()
            # A recv that finds data waiting does not yield: let the runners and writer have a turn.
            gevent.sleep(0)

    def _accept(self, channel, data, seen=None):
        """Queue the jobs of one dispatch message (one job, or a batch frame), or act on a cancel notice."""
        if channel == self._cancel_channel:
            self._cancel_notice(data)
            return
        try:
            jobs, refs, errors = self.codec.decode_dispatch(data)
        except DecodeError as exc:
            errors, jobs, refs = [exc], (), ()
        for exc in errors:
            self._reject(channel, exc)
        if refs:
            if seen is not None:
                seen.update(job_id for job_id, _ in refs)
            self._refs += refs
            self._refs_ready.set()
        if jobs:
            self.hooks.on_received(jobs)
        held_back = self._cancelled or self._checking
        for job in jobs:
            if seen is not None:
                seen.add(job.id)
            if held_back and self._held_back(job):
                continue
            self.runners.put(job)

    def _reject(self, channel, exc):
        self.hooks.on_rejected(exc.reason)
        log.warning("rejected a message on %s: %s", channel.decode(errors="replace"), exc)

    def _fetch_loop(self):
        backoff = Backoff(first=0.1, cap=5.0)
        while True:
            self._refs_ready.wait()
            self._refs_ready.clear()
            try:
                self._fetch()
                backoff.reset()
            except transport.RedisError as exc:
                log.warning("worker %s: reading %d jobs sent by reference failed (%s), retrying in %.1fs",
                            self.id, len(self._refs), transport.describe(exc), backoff.delay)
                self._refs_ready.set()
                gevent.sleep(backoff.next())

    def _fetch(self):
        """Jobs sent by reference: their records, read from Redis (one HMGET per thousand), then queued.
        A record that is gone (the job finished, or was cancelled, meanwhile) is skipped. Raises
        RedisError with the refs still waiting."""
        while self._refs:
            refs = self._refs[:1000]
            records = self.client.hmget(self.keys.jobs, [job_id for job_id, _ in refs])
            del self._refs[:len(refs)]
            jobs = []
            for (job_id, token), record in zip(refs, records):
                if record is None:
                    continue
                try:
                    jobs.append(self.codec.job_of_record(record, token))
                except DecodeError as exc:
                    self._reject(b"(a job sent by reference)", exc)
            if jobs:
                self.hooks.on_received(jobs)
            for job in jobs:
                if (self._cancelled or self._checking) and self._held_back(job):
                    continue
                self.runners.put(job)
            self.runners.wake()

    def _reconnect(self, exc):
        log.warning("worker %s: lost the subscriber connection (%s); reconnecting", self.id,
                    transport.describe(exc))
        self._subscriber.close()
        subscriber = transport.keep_trying(self._subscribe, self._stop, f"worker {self.id}")
        if subscriber is None:
            return False
        self._subscriber = subscriber
        self.hooks.on_reconnect("subscriber")
        log.info("worker %s: resubscribed %d channels", self.id, len(self.channels))
        if self.recording:
            self._seen = set()
            gevent.spawn(self._resync)
        return True

    def _resync(self):
        """Messages published while we were not subscribed are lost: hand back, at once rather than at
        their deadline, the jobs the master sent us that never arrived. We read its records of them
        after resubscribing; whatever it published before that has reached us within RESYNC_SETTLE."""
        try:
            if transport.keep_trying(self._stop_stale, self._stop, f"worker {self.id}",
                                     what="checking its jobs' dispatches") is None:
                return
            sent = transport.keep_trying(lambda: self.store.owned_by(self.id), self._stop, f"worker {self.id}")
            if sent is None or self._stop.wait(RESYNC_SETTLE):
                return
            held = self._seen | {job.id for job in self.runners.jobs()}
            held.update(o.id for o in (*self._out, *self._retry_out, *self._writing))
            lost = [(job_id, token) for job_id, token in sent.items() if job_id not in held]
            if lost:
                n = self.store.requeue(lost)
                log.warning("worker %s: %d jobs sent while its connection was down never arrived; handed %d back",
                            self.id, len(lost), n)
        except transport.RedisError as exc:
            log.warning("worker %s: could not check for lost jobs (their deadline brings them back): %s",
                        self.id, transport.describe(exc))
        finally:
            self._seen = None

    # -- cancelling ------------------------------------------------------------------------------

    def _cancel_notice(self, data):
        """A cancel notice (``{"v": 1, "ids": [...]}``, published by ``lua/cancel.lua``): check the ids it
        names against their stored results, in a greenlet of its own; the reader goes on meanwhile."""
        try:
            ids = orjson.loads(data)["ids"]
            if type(ids) is not list:
                raise TypeError("ids must be a list")
        except (ValueError, TypeError, KeyError) as exc:
            self.hooks.on_rejected("bad_field")
            log.warning("worker %s: ignored an unreadable cancel notice: %s", self.id, exc)
            return
        ids = [job_id for job_id in ids[:CANCELLED_MEMORY] if type(job_id) is str and job_id not in self._cancelled]
        fresh = [job_id for job_id in dict.fromkeys(ids) if job_id not in self._checking]
        for job_id in fresh:
            self._checking[job_id] = []
        if fresh:
            gevent.spawn(self._check_cancels, fresh)

    def _held_back(self, job):
        """Keep a dispatch of a cancelled job from running: dropped if its cancel is known, set aside
        while a notice naming it is checked. True if it was."""
        if job.id in self._cancelled:
            self._release([job])
            return True
        waiting = self._checking.get(job.id)
        if waiting is None:
            return False
        waiting.append(job)
        return True

    def _check_cancels(self, ids):
        """Stop the jobs of ``ids`` whose stored result says they were cancelled; let the others run."""
        try:
            stored = self.store.get_results(ids)
        except transport.RedisError as exc:
            log.warning("worker %s: could not check a cancel notice (%s); its jobs run, and their results "
                        "count only if they were not cancelled", self.id, transport.describe(exc))
            stored = [None] * len(ids)
        cancelled = {job_id for job_id, data in zip(ids, stored) if data is not None and self._says_cancelled(data)}
        for job_id in cancelled:
            self._cancelled[job_id] = None
        while len(self._cancelled) > CANCELLED_MEMORY:
            self._cancelled.popitem(last=False)
        dropped, resumed = [], []
        for job_id in ids:
            (dropped if job_id in cancelled else resumed).extend(self._checking.pop(job_id, ()))
        if resumed:
            if self._stopping:
                self._hand_back(resumed)
            else:
                for job in resumed:
                    self.runners.put(job)
                self.runners.wake()
        if cancelled:
            queued, interrupted = self.runners.stop(lambda job: job.id in cancelled)
            dropped += queued
            self._release(dropped + interrupted)
            log.info("worker %s: cancelled: %d jobs interrupted, %d dropped unrun", self.id, len(interrupted),
                     len(dropped))

    def _says_cancelled(self, data):
        try:
            return self.codec.decode_result(data, None).status == CANCELLED
        except DecodeError:
            return False

    def _release(self, jobs):
        """Give up the dispatch records of cancelled jobs dropped or interrupted here. The cancel removed
        those it found; a record the master wrote as the cancel ran would stay behind. The job is not
        queued again: it has its result."""
        if not jobs:
            return

        def release():
            try:
                self.store.requeue([(job.id, job.token) for job in jobs])
            except transport.RedisError as exc:
                log.warning("worker %s: could not clear the dispatch records of %d cancelled jobs: %s", self.id,
                            len(jobs), transport.describe(exc))

        gevent.spawn(release)

    def _stop_stale(self):
        """After a reconnect: stop the jobs held here whose dispatch is no longer in flight (cancelled,
        or re-queued and maybe sent elsewhere), as a cancel notice lost with the connection would have.
        Their records are read after the jobs were listed, so a job that arrives meanwhile is not taken
        for one of them. Returns how many were stopped."""
        held = self.runners.jobs()
        current = self.store.current([(job.id, job.token) for job in held])
        stale = {id(job) for job, mine in zip(held, current) if not mine}
        if not stale:
            return 0
        dropped, interrupted = self.runners.stop(lambda job: id(job) in stale)
        log.warning("worker %s: %d jobs it held lost their dispatch while its connection was down (cancelled, "
                    "or sent elsewhere): %d interrupted, %d dropped unrun", self.id, len(stale), len(interrupted),
                    len(dropped))
        return len(stale)

    # -- running ---------------------------------------------------------------------------------

    def _crashed(self, job, exc):
        """Running ``job`` failed outside the task (a bug of ours): it still gets an answer."""
        log.error("worker %s: job %s (%s) could not be run", self.id, job.id, job.task,
                  exc_info=(type(exc), exc, exc.__traceback__))
        self._emit(job, error_result(job, "error", "WorkerError", f"{type(exc).__name__}: {exc}",
                                     "".join(traceback.format_exception(exc))), retry=False)

    def _execute(self, job):
        task = self.registry.get(job.task)
        if task is None:
            self.hooks.on_rejected("unknown_task")
            self._log_failure(job, "UnknownTask")
            self._emit(job, error_result(job, "error", "UnknownTask",
                                         f"no task named {job.task!r} is registered on this worker"), retry=False)
            return
        seconds = job.timeout if job.timeout is not None else task.timeout
        me = getcurrent()
        armed = self._deadlines.arm(me, seconds) if seconds else None
        started, began = time.perf_counter(), time.time()
        try:
            if task.blocking:
                value = self._threads.apply(task.fn, job.args, job.kwargs)
            else:
                value = task.fn(*job.args, **job.kwargs)
            result = Result(job.id, "ok", value, task=job.task, token=job.token)
        except DeadlineExceeded:
            armed = None  # it fired: nothing left to disarm
            result = error_result(job, "timeout", "JobTimeout", f"job exceeded its {seconds:g}s time limit")
        except Cancelled:  # its result, 'cancelled', is recorded already: there is nothing to write
            self._finished.append((job, CANCELLED, time.perf_counter() - started))
            self._out_ready.set()  # for the hooks
            return
        except Exception as exc:
            result = error_result(job, "error", type(exc).__name__, str(exc), traceback.format_exc())
        finally:
            if armed is not None:
                self._deadlines.disarm(me, armed)
        elapsed = time.perf_counter() - started
        result.started, result.ended = began, began + elapsed
        self._finished.append((job, result.status, elapsed))  # told with its result's write
        if result.status != "ok":
            self._log_failure(job, result.error["type"])
        self._emit(job, result, task)

    def _log_failure(self, job, error_type):
        if self._failures.allow():
            skipped = self._failures.take_skipped()
            log.info("worker %s: job %s (%s) failed: %s%s", self.id, job.id, job.task, error_type,
                     f" ({skipped} more failures not logged)" if skipped else "")

    def _emit(self, job, result, task=None, retry=True):
        try:
            payload = self.codec.encode_result(result, job)
        except (TypeError, ValueError) as exc:
            result = error_result(job, "error", "EncodeError", f"result is not JSON-serialisable: {exc}")
            payload = self.codec.encode_result(result, job)
        outcome = Outcome(job.id, result.status, payload, job.reply, job.token, framed=job.framed,
                          reply_frames=job.reply_frames)
        retries = job.max_retries if job.max_retries is not None else task.max_retries if task else 0
        if retry and retries and result.status != "ok" and self.recording:
            outcome.task, outcome.max_retries = job.task, retries
            outcome.backoff = (task.retry_backoff if task else 1.0) * random.uniform(0.5, 1.5)
            self._retry_out.append(outcome)
        else:
            self._out.append(outcome)
        if not self._out_ready.is_set():
            self._out_ready.set()

    # -- writing ---------------------------------------------------------------------------------

    def _write_loop(self):
        ready = self._out_ready
        while True:
            ready.wait()
            ready.clear()
            self._write_pending()
            if self._stopping and not self._out and not self._retry_out and not self.runners.running:
                return

    def _write_pending(self):
        """Write every result waiting, ``WRITE_BATCH`` to a script call, having told the hooks of
        the jobs that ran."""
        finished, self._finished = self._finished, []
        if finished:
            self.hooks.on_finished(finished)
        batch, self._out = self._out, []
        retries, self._retry_out = self._retry_out, []
        for i in range(0, max(len(batch), 1), WRITE_BATCH):
            self._write(batch[i:i + WRITE_BATCH], retries if i == 0 else ())

    def _write(self, batch, retries=()):
        """Write one batch, retrying while Redis is away: a result is never dropped for that. An error
        retrying cannot cure (a permission refused, a bad value) drops the batch, said once: its jobs
        stay in flight, and the master's reaper runs them again at their deadline."""
        if not batch and not retries:
            return
        self._writing = [*batch, *retries]
        backoff = Backoff(first=0.1, cap=5.0)
        try:
            while True:
                try:
                    if self.recording:
                        self.store.finish(batch, retries=retries, via=self._publisher)
                    else:
                        self._publish(batch)
                    self.hooks.on_results_written(len(batch) + len(retries))
                    return
                except (*transport.RedisError, TypeError, ValueError) as exc:
                    if isinstance(exc, transport.ConnectionLost) and not self.recording and self._hard_stop.is_set():
                        return  # fire-and-forget, stopping at once: nobody waits for these
                    if transport.is_permanent(exc):
                        log.error("worker %s: dropped a batch of %d results it could not write (%s); their "
                                  "jobs will run again", self.id, len(batch) + len(retries),
                                  transport.describe(exc) if isinstance(exc, transport.RedisError) else exc)
                        return
                    log.warning("worker %s: writing %d results failed (%s), retrying in %.1fs", self.id,
                                len(batch) + len(retries), transport.describe(exc), backoff.delay)
                gevent.sleep(backoff.next())
        finally:
            self._writing = []

    def _publish(self, batch):
        """Results without a record: PUBLISH them to CHANNEL_RESULT (and their reply channels), one
        write: in one result frame those of jobs that came in frames, and one reply frame per client
        that reads them; the others one message each. A message Redis refused is not sent again (the
        others went out); the master gives its dispatch up at its deadline."""
        channel = self.keys.result_channel.encode()
        messages, framed, replies = [], [], {}
        for outcome in batch:
            if outcome.framed:
                framed.append(outcome.payload)
            else:
                messages.append((channel, outcome.payload))
            if outcome.reply:
                if outcome.reply_frames:
                    replies.setdefault(outcome.reply.encode(), []).append(outcome.payload)
                else:
                    messages.append((outcome.reply.encode(), outcome.payload))
        if framed or replies:  # (never with the raw codec: it has no frames)
            encode = self.codec.encode_results
            messages += [(channel, frame) for frame in encode(framed)]
            messages += [(reply, frame) for reply, payloads in replies.items() for frame in encode(payloads)]
        refused = [reply for reply in self._publisher.send(messages) if type(reply) is not int]  # PUBLISH: a count
        if refused:
            log.error("worker %s: Redis refused %d of %d result messages: %s", self.id, len(refused),
                      len(messages), refused[0])

    # -- registration ----------------------------------------------------------------------------

    def _heartbeat(self):
        runners = self.runners
        return {
            "id": self.id, **describe_host(),
            "concurrency": runners.size, "running": runners.running, "queued": runners.queued,
            "free": runners.free, "capacity": PREFETCH_MULTIPLIER * runners.size,
            "channels": len(self.channels), "draining": self._draining, "codec": self.codec.name,
            "durability": self.config.durability, "started": self.started_at, "beat": time.time(),
            "frames": [] if self.raw else list(FRAMES),
        }

    def _heartbeat_loop(self):
        """Until the worker is stopped, draining included: ``stop`` ends it once the last result is in."""
        interval = self.config.heartbeat_interval
        while True:
            if self._stopping:
                gevent.sleep(interval)
            else:
                self._stop.wait(interval)
            try:
                self._beat()
            except transport.RedisError as exc:
                log.warning("worker %s: heartbeat failed: %s", self.id, transport.describe(exc))

    def _beat(self):
        state = self.registration.refresh(draining=self._stopping)
        if state == LOST:
            self._registration_lost()
        elif state == MOVED:
            self._serve()

    def _check_registration(self):
        """Check the registration now (after a pause the heartbeat greenlet may not have run yet)."""
        try:
            self._beat()
        except transport.RedisError:
            pass  # cannot tell: the reader carries on, the heartbeat loop will know

    def _registration_lost(self):
        """Our registration is gone: Redis restarted, or we were away past its TTL and thought dead (our
        jobs went back to the queue, and another worker may hold our channels now). Stop serving what
        we no longer hold, drop the jobs not started whose dispatch is over, and register again with
        what is free."""
        if self.registration.reclaim():
            self._serve()
        if self.recording:
            queued = self.runners.take_queued()
            current = self.store.current([(job.id, job.token) for job in queued])
            for job, mine in zip(queued, current):
                if mine:
                    self.runners.put(job)
            if len(queued) > sum(current):
                log.warning("worker %s: dropped %d queued jobs the master gave to others meanwhile", self.id,
                            len(queued) - sum(current))
            self.runners.wake()

    def _serve(self):
        """Subscribe exactly the channels we hold now: a fresh subscription replaces the current one
        (the reader sees the old one closed and moves to the new one)."""
        old, self._subscriber = self._subscriber, self._subscribe()
        old.close()


class _Idle:
    """The subscription of a worker left with no channel: reading waits until it is replaced."""

    def __init__(self):
        self._closed = Event()

    def read(self, timeout=None):
        self._closed.wait(timeout)
        raise transport.ConnectionLost[0]("subscription replaced")

    def close(self):
        self._closed.set()


class _RateLimit:
    """At most ``rate`` events a second pass; the others are counted."""

    def __init__(self, rate):
        self.rate = rate
        self._second = 0
        self._count = 0
        self._skipped = 0

    def allow(self):
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._count = second, 0
        self._count += 1
        if self._count > self.rate:
            self._skipped += 1
            return False
        return True

    def take_skipped(self):
        skipped, self._skipped = self._skipped, 0
        return skipped
