"""The worker: one gevent process serving many dispatch channels.

Greenlets, each with one job:

* reader      one subscribed connection for every channel; each ``recv`` goes to ``hiredis.Reader``
              and every complete message is decoded and queued for the runners (``runner.Runners``).
* runners     run jobs under a time limit (``deadlines.py``); a result is encoded and appended to the out-buffer.
* writer      wakes when the out-buffer is non-empty and writes all of it in one script call: results
              recorded once, in-flight cleared, result announced (``Store.finish``). While that round
              trip is under way new results collect, so batches grow with load and never wait for it.
* heartbeat   refreshes the worker's registration once a second, with its free slots.

Shutdown is two-step (warm, then cold): the first SIGTERM/SIGINT unsubscribes, hands queued jobs
back, and lets running ones finish for ``grace`` seconds; a second signal or the end of the grace
period kills what still runs and hands it back.
"""

import json
import logging
import os
import random
import signal
import socket
import time
import traceback

import gevent
from gevent import getcurrent
from gevent.event import Event

from geventsched import transport
from geventsched.deadlines import DeadlineExceeded, Deadlines
from geventsched.errors import ChannelConflict, DecodeError
from geventsched.hooks import WorkerHooks, guarded
from geventsched.keys import Keys
from geventsched.protocol import Result, error_result, make_codec
from geventsched.runner import Runners
from geventsched.store import Store

log = logging.getLogger(__name__)

#: Results per script call; a bigger backlog goes out as several calls in a row.
WRITE_BATCH = 2000
#: A worker asks for up to this many times its concurrency in flight (Celery's default prefetch
#: multiplier, too): enough queued to keep the pipeline full while results travel back, and bounded
#: in bytes by the master's --max-inflight-bytes.
PREFETCH_MULTIPLIER = 4


class Worker:
    def __init__(self, config, client, registry, hooks=None):
        self.config = config
        self.client = client
        self.registry = registry
        self.hooks = guarded(hooks, WorkerHooks)
        self.keys = Keys(config.namespace, cluster=transport.is_cluster(client))
        self.store = Store(client, self.keys, config.result_ttl)
        self.codec = make_codec(config.codec, config.raw_task, config.max_payload)
        self.raw = config.codec == "raw"
        # The raw codec's master (the original script) records nothing, and neither do we without durability.
        self.recording = not self.raw and config.durability == "redis"
        self._publisher = transport.Publisher(client, self.keys.result_channel)
        self.id = config.worker_id
        # "3" and "CHANNEL_DISPATCH_3" name the same channel: subscribe it once.
        self.channels = list(dict.fromkeys(self.keys.dispatch_channel(c) for c in config.channels))
        self.runners = Runners(config.concurrency, self._execute)
        self._deadlines = Deadlines()
        # Tasks declared blocking=True run here. A timeout stops the wait, not the thread: the thread
        # finishes its call in the background, as any thread would.
        self._threads = gevent.get_hub().threadpool
        self._threads.maxsize = max(1, min(config.threads, config.concurrency))
        self._out = []
        self._retry_out = []  # failures that may run again (Store.finish ``retries``)
        self._out_ready = Event()
        self._stop = Event()
        self._hard_stop = Event()
        self._stopping = False
        self._subscriber = None
        self._greenlets = []
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        """Claim the channels, subscribe them all, register. Returns once jobs can arrive.

        Raises ChannelConflict when a live worker holds one of the channels.
        """
        conflict = self.store.register_worker(self.id, self._heartbeat(), self.config.heartbeat_ttl,
                                              self.channels)
        if conflict:
            channel, owner = conflict
            raise ChannelConflict(f"channel {channel} is held by live worker {owner}")
        try:
            self._subscriber = self._subscribe()
        except BaseException:  # (a user not allowed to subscribe): leave no registration behind
            try:
                self.store.release_worker(self.id)
            except transport.RedisError:
                pass  # it expires with its heartbeat key
            raise
        self._greenlets = [gevent.spawn(self._read_loop), gevent.spawn(self._write_loop),
                           gevent.spawn(self._heartbeat_loop)]
        log.info("worker %s: %d channels subscribed%s, concurrency %d, codec %s", self.id, len(self.channels),
                 " (sharded, Redis Cluster)" if self.keys.cluster else "", self.config.concurrency, self.codec.name)

    def run(self):
        """Start, serve until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
        # The handlers go in before the worker registers: a signal that comes while it subscribes must
        # drain it, not kill it with its registration still in Redis.
        handlers = [gevent.signal_handler(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            self.start()
            self._stop.wait()
            self.stop(self.config.grace)
        finally:
            for handler in handlers:
                handler.cancel()
        return 0

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
        """Stop taking jobs, finish or hand back the running ones within ``grace`` seconds, deregister."""
        self._stopping = True
        self._stop.set()
        log.info("worker %s: stopping, %d running, %d queued", self.id, self.runners.running,
                 self.runners.queued)
        self._subscriber.close()  # from now on, PUBLISH to our channels returns 0 and the master looks elsewhere
        self._hand_back(self.runners.close())
        deadline = time.monotonic() + grace
        while self.runners.running and not self._hard_stop.is_set() and time.monotonic() < deadline:
            self._hard_stop.wait(0.05)
        if self.runners.running:
            log.warning("worker %s: %d jobs still running, handing them back", self.id, self.runners.running)
            self._hand_back(self.runners.kill())
        self._deadlines.close()
        self._out_ready.set()
        for greenlet in self._greenlets:
            if greenlet is not self._greenlets[1]:
                greenlet.kill(block=False)
        self._greenlets[1].join(timeout=max(1.0, deadline - time.monotonic()))
        self._greenlets[1].kill()
        self._publisher.close()
        try:
            self.store.release_worker(self.id)
        except transport.RedisError as exc:
            log.warning("worker %s: could not deregister: %s", self.id, transport.describe(exc))
        log.info("worker %s: stopped", self.id)

    def _hand_back(self, jobs):
        if not jobs or not self.recording:
            return
        try:
            n = self.store.requeue([job.id for job in jobs])
            log.info("worker %s: handed %d jobs back", self.id, n)
        except transport.RedisError as exc:
            log.warning("worker %s: could not hand %d jobs back (the master's reaper will): %s",
                        self.id, len(jobs), transport.describe(exc))

    # -- reading ---------------------------------------------------------------------------------

    def _subscribe(self):
        subscriber = transport.subscribe(self.client, self.channels)
        self.hooks.on_subscribed(len(self.channels))
        return subscriber

    def _read_loop(self):
        accept, runners = self._accept, self.runners
        while not self._stopping:
            try:
                messages = self._subscriber.read()
            except transport.ConnectionLost as exc:
                if self._stopping or not self._reconnect(exc):
                    return  # stopping: nothing more to read
                continue
            for channel, data in messages:
                accept(channel, data)
            runners.wake()
            # A recv that finds data waiting does not yield: let the runners and writer have a turn.
            gevent.sleep(0)

    def _accept(self, channel, data):
        try:
            job = self.codec.decode_job(data)
        except DecodeError as exc:
            self.hooks.on_rejected(exc.reason)
            log.warning("rejected a message on %s: %s", channel.decode(errors="replace"), exc)
            return
        self.hooks.on_received(job)
        self.runners.put(job)

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
        return True

    # -- running ---------------------------------------------------------------------------------

    def _execute(self, job):
        task = self.registry.get(job.task)
        if task is None:
            self.hooks.on_rejected("unknown_task")
            self._emit(job, error_result(job, "error", "UnknownTask",
                                         f"no task named {job.task!r} is registered on this worker"))
            return
        seconds = job.timeout if job.timeout is not None else task.timeout
        me = getcurrent()
        armed = self._deadlines.arm(me, seconds) if seconds else None
        started = time.perf_counter()
        try:
            if task.blocking:
                value = self._threads.apply(task.fn, job.args, job.kwargs)
            else:
                value = task.fn(*job.args, **job.kwargs)
            result = Result(job.id, "ok", value, task=job.task)
        except DeadlineExceeded:
            armed = None  # it fired: nothing left to disarm
            result = error_result(job, "timeout", "JobTimeout", f"job exceeded its {seconds:g}s time limit")
        except Exception as exc:
            result = error_result(job, "error", type(exc).__name__, str(exc), traceback.format_exc())
        finally:
            if armed is not None:
                self._deadlines.disarm(me, armed)
        self.hooks.on_finished(job, result.status, time.perf_counter() - started)
        self._emit(job, result, task)

    def _emit(self, job, result, task=None):
        try:
            payload = self.codec.encode_result(result, job)
        except (TypeError, ValueError) as exc:
            result = error_result(job, "error", "EncodeError", f"result is not JSON-serialisable: {exc}")
            payload = self.codec.encode_result(result, job)
        retries = job.max_retries if job.max_retries is not None else task.max_retries if task else 0
        if retries and result.status != "ok" and self.recording:
            backoff = task.retry_backoff * random.uniform(0.5, 1.5)
            self._retry_out.append((job.id, result.status, payload, job.reply or "", job.task, retries, backoff))
        else:
            self._out.append((job.id, result.status, payload, job.reply))
        if not self._out_ready.is_set():
            self._out_ready.set()

    # -- writing ---------------------------------------------------------------------------------

    def _write_loop(self):
        ready = self._out_ready
        while True:
            ready.wait()
            ready.clear()
            batch, self._out = self._out, []
            retries, self._retry_out = self._retry_out, []
            for i in range(0, max(len(batch), 1), WRITE_BATCH):
                self._write(batch[i:i + WRITE_BATCH], retries if i == 0 else ())
            if self._stopping and not self._out and not self.runners.running:
                return

    def _write(self, batch, retries=()):
        """Write one batch, retrying until Redis takes it: a result is never dropped."""
        if not batch and not retries:
            return
        delay = 0.1
        while True:
            try:
                if self.recording:
                    self.store.finish(batch, retries=retries)
                else:
                    self._publish(batch)
                self.hooks.on_results_written(len(batch) + len(retries))
                return
            except (transport.DataError, TypeError, ValueError) as exc:
                # Not Redis's fault, and retrying cannot help: the jobs stay in flight, and the
                # master's reaper runs them again once their deadline passes.
                log.error("worker %s: dropped a batch of %d results it could not write (%s); their jobs "
                          "will run again", self.id, len(batch) + len(retries), exc)
                return
            except transport.RedisError as exc:
                log.warning("worker %s: writing %d results failed (%s), retrying in %.1fs", self.id,
                            len(batch), transport.describe(exc), delay)
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _publish(self, batch):
        """Results without a record: PUBLISH each to CHANNEL_RESULT (and its reply channel), one write."""
        channel = self.keys.result_channel.encode()
        messages = []
        for _, _, payload, reply in batch:
            messages.append((channel, payload))
            if reply:
                messages.append((reply.encode(), payload))
        for reply in self._publisher.send(messages):
            if transport.is_error(reply):
                raise transport.ResponseError(str(reply))

    # -- registration ----------------------------------------------------------------------------

    def _heartbeat(self):
        runners = self.runners
        return json.dumps({
            "id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "concurrency": runners.size, "running": runners.running, "queued": runners.queued,
            "free": runners.free, "capacity": PREFETCH_MULTIPLIER * runners.size,
            "channels": len(self.channels),
            "codec": self.codec.name, "durability": self.config.durability, "started": self.started_at, "beat": time.time(),
        })

    def _register_again(self):
        conflict = self.store.register_worker(self.id, self._heartbeat(), self.config.heartbeat_ttl,
                                              self.channels)
        if conflict:
            log.error("worker %s: lost channel %s to worker %s while away", self.id, *conflict)
        else:
            log.info("worker %s: registration was gone (Redis restarted?), registered again", self.id)

    def _heartbeat_loop(self):
        interval = self.config.heartbeat_interval
        while not self._stopping:
            self._stop.wait(interval)
            if self._stopping:
                return
            try:
                if not self.store.heartbeat(self.id, self._heartbeat(), self.config.heartbeat_ttl):
                    self._register_again()
            except transport.RedisError as exc:
                log.warning("worker %s: heartbeat failed: %s", self.id, transport.describe(exc))
