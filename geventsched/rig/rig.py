"""The benchmark rig: jobs through a master (in this process) and a worker process.

``Rig`` is the building block (``geventsched bench`` and the suite in ``bench/`` compose it): one
worker process and an in-process master for one configuration, on a fresh namespace deleted
afterwards, with

* ``throughput(jobs)``: all jobs submitted at once; time from the first submit to the last result,
  and the submit-to-result latency of every job (which includes time queued behind the others);
* ``sequential(count)``: one job at a time through the client, submit to result;
* ``open_loop(rate, seconds)``: jobs submitted on a fixed schedule, latency measured from each job's
  scheduled time, so a stall shows up in every job it delays (no coordinated omission).

Durable runs submit through ``Client`` (the Redis intake, as any producer would); fire-and-forget runs
(``durability="none"``) submit in the master's own process, as the original design's master made
its jobs, unless ``intake=True``.

``RedisFor(url)`` gives the Redis at ``url``, or an embedded server started for the run and stopped
at the end when nothing answers there.
"""

import os
import platform
import resource
import subprocess
import sys
import time
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


class Recorder(MasterHooks):
    """When each job finished (``time.time()``) and with what latency; ``done`` fires at ``expected``."""

    def __init__(self):
        self.finished = {}
        self.latencies = []
        self.failed = 0
        self.expected = None
        self.done = Event()

    def expect(self, count):
        self.finished, self.latencies, self.failed = {}, [], 0
        self.expected = count
        self.done.clear()

    def on_finished(self, job, status, latency):
        self.finished[job.id] = time.time()
        self.latencies.append(latency)
        if status != "ok":
            self.failed += 1
        if self.expected is not None and len(self.latencies) >= self.expected:
            self.done.set()


class Rig:
    """A worker process and an in-process master on a fresh namespace. Use as a context manager."""

    def __init__(self, url, channels=100, concurrency=WorkerConfig.concurrency,
                 durability=MasterConfig.durability, metrics=False, intake=None, strategy=MasterConfig.strategy):
        self.url, self.channels, self.concurrency = url, channels, concurrency
        self.durability, self.metrics, self.strategy = durability, metrics, strategy
        self.intake = durability == "redis" if intake is None else intake
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

    def submit(self, specs, producer):
        if self.intake:
            return [h.id for h in producer.submit_many(specs, reply=False)]
        return self.master.submit_local(specs)

    def throughput(self, jobs, task="noop", args=(), progress=None):
        recorder, producer = self.recorder, Client(self.client, self.namespace)
        recorder.expect(jobs)
        cpu = CpuMeter(self.client, self.worker.pid)
        started = time.perf_counter()
        for i in range(0, jobs, SUBMIT_BATCH):
            self.submit([(task, args, {})] * min(SUBMIT_BATCH, jobs - i), producer)
            gevent.sleep(0)  # let results flow while a big run is still being submitted
        while not recorder.done.wait(0.5):
            if progress:
                progress(len(recorder.latencies), jobs)
        seconds = time.perf_counter() - started
        if progress:
            progress(jobs, jobs)
        return {"jobs": jobs, "seconds": round(seconds, 4), "jobs_per_s": round(jobs / seconds, 1),
                "failed": recorder.failed, "latency_ms": percentiles(recorder.latencies),
                "cpu_us_per_job": cpu.per_job(jobs)}

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
                ids = self.submit([("noop", (), {})] * (due - sent), producer)
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
