"""The benchmark rig: jobs through a master (in this process) and a worker process.

``Rig`` is the building block (``geventsched bench`` and the suite in ``bench/`` compose it): one
worker process and an in-process master for one configuration, on a fresh namespace deleted
afterwards, with

* ``throughput(jobs)``: all jobs submitted at once; time from the first submit to the last result,
  and the submit-to-result latency of every job (which includes time queued behind the others). A
  durable rig counts what a producer sees: its ``Client`` submits with replies on and takes every
  result (``collect="client"``); the master's own tally of the same run rides along. A rig that
  submits in the master's process has no producer to hand results to: the master's tally is the
  figure (``collect="master"``). Each run also gives CPU per job of master (with the producer, in
  this process), worker and Redis, Redis commands per job (``INFO commandstats``, the commands
  scripts run included) and any sign that a subscriber lost messages (``drops``);
* ``sequential(count)``: one job at a time through the client, submit to result;
* ``open_loop(rate, seconds)``: jobs submitted on a fixed schedule, latency measured from each job's
  scheduled time, so a stall shows up in every job it delays (no coordinated omission).

Durable runs submit through ``Client`` (the Redis intake, as any producer would); fire-and-forget runs
(``durability="none"``) submit in the master's own process, as the original design's master made
its jobs, unless ``intake=True``. Redis figures are the whole server's: run against a private one.

``RedisFor(url)`` gives the Redis at ``url``, or an embedded server started for the run and stopped
at the end when nothing answers there.
"""

import itertools
import os
import platform
import resource
import subprocess
import sys
import time
from operator import attrgetter, itemgetter
from urllib.parse import urlparse

import gevent
from gevent.event import Event

from geventsched import __version__, embedded, transport
from geventsched.client import Client
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.errors import RedisUnavailable
from geventsched.hooks import MasterHooks
from geventsched.master import Master
from geventsched.store import Store

SUBMIT_BATCH = 5000
#: Results a producer waits for at once, in submission order: a chunk's results are in its hands when
#: its ``Client.wait`` returns, so this is also the grain of the end-to-end latencies.
WAIT_CHUNK = 1000
_id = attrgetter("id")
_job, _status, _latency = itemgetter(0), itemgetter(1), itemgetter(2)


class Recorder(MasterHooks):
    """When each job finished (``time.time()``) and with what latency; ``done`` fires at ``expected``
    (``done_at``: its ``perf_counter``). Also counts what the master saw go astray: a dispatch that
    reached no subscriber, jobs sent back to the queue, fire-and-forget jobs given up, reconnects.
    A subscriber that Redis cut off (its output buffer over the limit) shows up there."""

    def __init__(self):
        self.expected = None
        self.done = Event()
        self.expect(None)

    def expect(self, count):
        self.finished, self.latencies, self.failed = {}, [], 0
        self.expected, self.done_at = count, None
        self.astray = {}
        self.done.clear()

    def on_finished(self, finished):
        jobs, statuses = list(map(_job, finished)), list(map(_status, finished))
        self.finished.update(zip(map(_id, jobs), itertools.repeat(time.time())))
        self.latencies += map(_latency, finished)
        self.failed += len(statuses) - statuses.count("ok")
        if self.expected is not None and len(self.latencies) >= self.expected and not self.done.is_set():
            self.done_at = time.perf_counter()
            self.done.set()

    def _count(self, what, count=1):
        self.astray[what] = self.astray.get(what, 0) + count

    def on_dispatch_failed(self, reason):
        self._count(f"dispatch_failed_{reason}")

    def on_redispatched(self, reason, count):
        self._count(f"redispatched_{reason}", count)

    def on_lost(self, count):
        self._count("lost", count)

    def on_reconnect(self, what):
        self._count(f"master_reconnect_{what}")


class Rig:
    """A worker process and an in-process master on a fresh namespace. Use as a context manager."""

    def __init__(self, url, channels=100, concurrency=WorkerConfig.concurrency,
                 durability=MasterConfig.durability, metrics=False, intake=None, strategy=MasterConfig.strategy,
                 collect=None):
        """``collect``: who counts a throughput run's results, ``"client"`` (the producer receives
        every one: the default of a durable rig that submits through the intake) or ``"master"``
        (its tally; the only choice when jobs are submitted in the master's process)."""
        self.url, self.channels, self.concurrency = url, channels, concurrency
        self.durability, self.metrics, self.strategy = durability, metrics, strategy
        self.intake = durability == "redis" if intake is None else intake
        if collect is None:
            collect = "client" if self.intake and durability == "redis" else "master"
        if collect not in ("client", "master") or (collect == "client" and not self.intake):
            raise ValueError(f"collect={collect!r}: 'client' needs intake=True, else 'master'")
        self.collect = collect
        self.namespace = f"bench-{os.urandom(4).hex()}"
        self.client = transport.connect(url)
        self.store = Store.for_namespace(self.client, self.namespace)
        self.keys = self.store.keys
        self.recorder = Recorder()
        self.worker = self.master = self.metrics_port = None

    def __enter__(self):
        self.metrics_port = embedded.free_port() if self.metrics else 0
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "geventsched", "worker", "--redis-url", self.url, "--namespace", self.namespace,
             "--channels", str(self.channels), "--concurrency", str(self.concurrency),
             "--durability", self.durability, "--metrics-port", str(self.metrics_port),
             "--metrics-addr", "127.0.0.1", "--log-level", "WARNING"])
        try:
            self.subscribe_seconds = _wait_for_worker(self.client, self.keys, self.worker, self.channels)
            hooks = [self.recorder]
            if self.metrics:
                from geventsched import metrics
                from geventsched.builtin import default_registry

                hooks.append(metrics.MasterMetrics(metrics.new_registry(), default_registry().names()))
            config = MasterConfig(namespace=self.namespace, durability=self.durability, strategy=self.strategy)
            self.master = Master(config, self.client, hooks=hooks)
            if self.metrics:
                hooks[1].bind(self.master)
            self.master.start()
            _wait_for(lambda: len(self.master.table) == self.channels, 30, "the master to see every channel")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.master is not None:
            self.master.stop()
        embedded.stop_process(self.worker, 30)
        self.store.delete_namespace()

    # -- scenarios ------------------------------------------------------------------------------

    def submit(self, specs, producer, reply=False):
        if self.intake:
            return producer.submit_many(specs, reply=reply)
        return self.master.submit_local(specs)

    def throughput(self, jobs, task="noop", args=(), progress=None):
        """One burst of ``jobs`` jobs: the figures of the module docstring. With ``collect="client"``
        ``seconds``, ``jobs_per_s`` and ``latency_ms`` are the producer's (submit to the result in
        its hands) and ``master_tally`` has the master's count of the same run."""
        recorder, producer = self.recorder, Client(self.client, self.namespace)
        recorder.expect(jobs)
        cpu_meter, command_meter = CpuMeter(self.client, self.worker.pid), CommandMeter(self.client)
        limit = 60 + jobs / 100  # a run that stops making progress fails instead of hanging
        try:
            started = time.perf_counter()
            if self.collect == "client":
                latencies, failed = self._through_client(producer, jobs, (task, args, {}), started + limit, progress,
                                                         command_meter)
                seconds = time.perf_counter() - started
                if not recorder.done.wait(30):
                    raise RuntimeError(f"the producer has every result, the master counted {len(recorder.latencies)}")
            else:
                for i in range(0, jobs, SUBMIT_BATCH):
                    self.submit([(task, args, {})] * min(SUBMIT_BATCH, jobs - i), producer)
                    gevent.sleep(0)  # let results flow while a big run is still being submitted
                while not recorder.done.wait(0.5):
                    if progress:
                        progress(len(recorder.latencies), jobs)
                    if time.perf_counter() - started > limit:
                        raise RuntimeError(f"{len(recorder.latencies)} of {jobs} jobs finished after {limit:.0f} s")
                latencies, failed = recorder.latencies, recorder.failed
                seconds = recorder.done_at - started
            # Before the producer's subscriber goes: it must not count as one cut off.
            cpu, ops = cpu_meter.per_job(jobs), command_meter.per_job(jobs)
        finally:
            producer.close()
        if progress:
            progress(jobs, jobs)
        tally = recorder.done_at - started
        figures = {"jobs": jobs, "seconds": round(seconds, 4), "jobs_per_s": round(jobs / seconds, 1),
                   "failed": failed, "latency_ms": percentiles(latencies), "collect": self.collect,
                   "cpu_us_per_job": cpu, "redis_ops_per_job": ops["calls"],
                   "redis_commands_per_job": ops["commands"],
                   "drops": {**recorder.astray, **ops["drops"]}}
        if self.collect == "client":
            figures["master_tally"] = {"seconds": round(tally, 4), "jobs_per_s": round(jobs / tally, 1),
                                       "failed": recorder.failed, "latency_ms": percentiles(recorder.latencies)}
        return figures

    def _through_client(self, producer, jobs, spec, deadline, progress, command_meter):
        """Submit ``jobs`` jobs in batches with replies on, then take every result in submission order,
        ``WAIT_CHUNK`` at a time, as a producer would: ``(latencies, failed)``. A job's latency runs
        from just before its batch was submitted to the return of the wait that handed over its result."""
        batches = []
        for i in range(0, jobs, SUBMIT_BATCH):
            submitted = time.perf_counter()
            batches.append((submitted, self.submit([spec] * min(SUBMIT_BATCH, jobs - i), producer, reply=True)))
            if i == 0:
                command_meter.see_subscribers()  # the producer's, made by its first submit
            gevent.sleep(0)
        latencies, failed, received = [], 0, 0
        for submitted, handles in batches:
            for i in range(0, len(handles), WAIT_CHUNK):
                chunk = handles[i:i + WAIT_CHUNK]
                results = producer.wait(chunk, timeout=max(0.0, deadline - time.perf_counter()))
                if len(results) < len(chunk):
                    raise RuntimeError(f"the producer received {received + len(results)} of {jobs} results "
                                       f"in time (the master counted {len(self.recorder.latencies)})")
                now = time.perf_counter()
                latencies.extend([now - submitted] * len(chunk))
                failed += sum(1 for result in results.values() if not result.ok)
                received += len(chunk)
                if progress:
                    progress(received, jobs)
        return latencies, failed

    def sequential(self, count=300, task="noop", args=()):
        producer = Client(self.client, self.namespace)
        rtts = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                producer.submit(task, *args).result(timeout=30)
                rtts.append(time.perf_counter() - started)
        finally:
            producer.close()
        return percentiles(rtts)

    def open_loop(self, rate, seconds, tick=0.002):
        """Submit ``rate`` jobs/s for ``seconds`` on a schedule; latency from each scheduled time."""
        recorder, producer = self.recorder, Client(self.client, self.namespace)
        total = max(1, int(rate * seconds))
        recorder.expect(total)
        scheduled = {}
        start = time.time() + 0.05
        sent = 0
        while sent < total:
            due = min(total, int((time.time() - start) * rate) + 1)
            if due > sent:
                submitted = self.submit([("noop", (), {})] * (due - sent), producer)
                ids = [h.id for h in submitted] if self.intake else submitted
                for i, job_id in enumerate(ids, sent):
                    scheduled[job_id] = start + i / rate
                sent = due
            gevent.sleep(tick)
        if not recorder.done.wait(60 + seconds):
            raise RuntimeError(f"open loop at {rate}/s: only {len(recorder.finished)} of {total} jobs finished")
        latencies = [recorder.finished[j] - t for j, t in scheduled.items() if j in recorder.finished]
        return {"rate": rate, "jobs": total, "latency_ms": percentiles(latencies),
                "achieved_per_s": round(total / (max(recorder.finished.values()) - start), 1)}


class CpuMeter:
    """CPU time spent by this process (master and producer), the worker and Redis since creation.

    On a shared, noisy machine, CPU per job is steadier than jobs per second: it shows where the time
    goes even when another process steals a core.
    """

    def __init__(self, client, worker_pid):
        self.client, self.worker_pid = client, worker_pid
        self.start = self._read()

    def _read(self):
        if transport.is_cluster(self.client):  # every primary's
            infos = self.client.info("cpu", target_nodes=self.client.PRIMARIES).values()
        else:
            infos = [self.client.info("cpu")]
        return {"master": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
                "worker": _process_cpu(self.worker_pid),
                "redis": sum(info["used_cpu_user"] + info["used_cpu_sys"] for info in infos)}

    def per_job(self, jobs):
        end = self._read()
        return {k: round((end[k] - self.start[k]) / jobs * 1e6, 2) if end[k] is not None else None for k in end}


class CommandMeter:
    """Redis commands run since creation, from ``INFO commandstats`` (every primary's on a cluster).

    Redis counts the commands a script runs under their own names beside the EVALSHA that ran them,
    so the total is every operation Redis did; a command given many keys or fields (a batch's HSET)
    counts once, which is why each command's microseconds are there too (a script's include those of
    the commands it ran). The server's, not only ours: run on a private one.

    And whether a subscriber was cut off: Redis closes a subscriber whose output buffer outgrows its
    limit (one too slow for what is published to it), and every message meant for it meanwhile is
    lost. ``subscribers_gone`` counts the subscriber connections seen at the start (or at the last
    ``see_subscribers`` call) that are gone at the end (one server only): a lower bound, since one
    made again and cut off again counts once (Redis's log names each). Where the server counts such
    disconnections itself (Redis 8, Valkey 8) that count is there too.
    """

    DISCONNECTIONS = "client_output_buffer_limit_disconnections"
    #: The meters' own commands: no job's work.
    OWN = ("info", "client|list")

    def __init__(self, client):
        self.client = client
        self.cluster = transport.is_cluster(client)
        self.subscribers = set()
        self.see_subscribers()
        self.start = self._read()

    def _subscriber_ids(self):
        return {c["id"] for c in self.client.client_list(_type="pubsub")}

    def see_subscribers(self):
        """Watch the subscriber connections there are now: called again once a producer has
        subscribed. (Not added to the first look: a producer closed just before the start may
        still be listed then, and would be taken for one cut off.)"""
        if not self.cluster:
            self.subscribers = self._subscriber_ids()

    def _infos(self, section):
        if transport.is_cluster(self.client):
            return list(self.client.info(section, target_nodes=self.client.PRIMARIES).values())
        return [self.client.info(section)]

    def _read(self):
        totals = {}
        for info in self._infos("commandstats"):
            for key, stats in info.items():
                name = key[len("cmdstat_"):] if key.startswith("cmdstat_") else key
                calls, usec = totals.get(name, (0, 0))
                totals[name] = (calls + stats["calls"], usec + stats["usec"])
        stats = self._infos("stats")
        cut = sum(s[self.DISCONNECTIONS] for s in stats) if all(self.DISCONNECTIONS in s for s in stats) else None
        return totals, cut

    def per_job(self, jobs):
        """``{"calls": total per job, "commands": {name: {"calls": .., "usec": ..} per job}, "drops":
        {...}}``, the commands by time spent, most first."""
        (totals, cut), (before, cut_before) = self._read(), self.start
        delta = {}
        for name, (calls, usec) in totals.items():
            was_calls, was_usec = before.get(name, (0, 0))
            if name not in self.OWN and calls > was_calls:
                delta[name] = (calls - was_calls, usec - was_usec)
        commands = {name: {"calls": _significant(calls / jobs), "usec": _significant(usec / jobs)}
                    for name, (calls, usec) in sorted(delta.items(), key=lambda kv: (-kv[1][1], -kv[1][0]))}
        drops = {} if cut is None or cut_before is None else {"redis_output_buffer_disconnections": cut - cut_before}
        if not self.cluster:
            drops["subscribers_gone"] = len(self.subscribers - self._subscriber_ids())
        return {"calls": round(sum(calls for calls, _ in delta.values()) / jobs, 3), "commands": commands,
                "drops": drops}


def _significant(value, digits=4):
    """``value`` to ``digits`` significant digits: a command run once in a 100,000-job run stays
    visible (1e-05 per job) and a frequent one keeps no spurious decimals."""
    return float(f"{value:.{digits}g}")


def _process_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def percentiles(seconds):
    ordered = sorted(seconds)
    if not ordered:
        return {"p50": None, "p90": None, "p99": None, "max": None}

    def at(q):
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3)}


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        gevent.sleep(0.02)


def _wait_for_worker(client, keys, worker, channels, timeout=60.0):
    """Seconds until the worker registered with all its channels subscribed."""
    started = time.monotonic()
    while not client.scard(keys.workers):
        if worker.poll() is not None:
            raise RuntimeError(f"the benchmark worker exited with status {worker.returncode}")
        if time.monotonic() - started > timeout:
            raise RuntimeError("the benchmark worker did not register in time")
        gevent.sleep(0.01)
    return time.monotonic() - started


def environment(client):
    import gevent as gevent_module
    import hiredis
    import orjson
    import redis

    info = client.info("server")
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(), "redis": info.get("redis_version"), "geventsched": __version__,
        "gevent": gevent_module.__version__, "redis-py": redis.__version__, "hiredis": hiredis.__version__,
        "orjson": orjson.__version__,
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def reachable(url):
    """Whether a Redis answers at ``url``. A URL that cannot name one raises ConfigError: only a
    valid URL where nothing answers is a reason to run against a server of our own."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss") and parsed.hostname:
        return embedded.answers(parsed.hostname, parsed.port or 6379)
    try:
        transport.connect(url)
        return True
    except RedisUnavailable:
        return False


class RedisFor:
    """The Redis at ``url``, or an embedded one when nothing answers there. Context manager -> url."""

    def __init__(self, url):
        self.url, self.server = url, None

    def __enter__(self):
        if reachable(self.url):
            return self.url
        self.server = embedded.EmbeddedRedis().start()
        print(f"no Redis answers at {transport.redact(self.url)}; using an embedded server "
              f"({os.path.basename(self.server.binary)}) on port {self.server.port}", file=sys.stderr)
        return self.server.url

    def __exit__(self, *exc):
        if self.server is not None:
            self.server.stop()


def progress_bar(label):
    def show(done, total):
        width = 30
        filled = int(width * done / total) if total else width
        end = "\n" if done >= total else ""
        print(f"\r  {label:<28} [{'#' * filled}{'.' * (width - filled)}] {done:>9,}/{total:,}", end=end,
              file=sys.stderr, flush=True)
    return show
