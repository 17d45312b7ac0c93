"""``geventsched bench``: N no-op jobs through a master (in this process) and a worker process.

Runs against the Redis at ``--redis-url``; when nothing answers there, against an embedded server
started for the run and stopped at the end. Everything lives in a fresh namespace, deleted afterwards.

Figures: throughput from the first submit to the last result, submit-to-result latency of every
job in that run (which includes time queued behind the others), and the latency of sequential
round trips through the client (submit, wait, next).
"""

import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from urllib.parse import urlparse

import gevent

from geventsched import __version__, embedded, transport
from geventsched.client import Client
from geventsched.config import MasterConfig
from geventsched.hooks import MasterHooks
from geventsched.keys import Keys
from geventsched.master import Master

SUBMIT_BATCH = 5000
SEQUENTIAL = 300


class Recorder(MasterHooks):
    """Collects the latency of every finished job; ``done`` fires at ``expected`` jobs."""

    def __init__(self, expected):
        self.latencies = []
        self.expected = expected
        self.done = gevent.event.Event()
        self.failed = 0

    def on_finished(self, job, status, latency):
        self.latencies.append(latency)
        if status != "ok":
            self.failed += 1
        if len(self.latencies) >= self.expected:
            self.done.set()


def percentiles(seconds):
    ordered = sorted(seconds)
    if not ordered:
        return {"p50": None, "p90": None, "p99": None, "max": None}

    def at(q):
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3)}


def reachable(url):
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss") and parsed.hostname:
        return embedded.answers(parsed.hostname, parsed.port or 6379)
    try:
        transport.connect(url)
        return True
    except Exception:
        return False


def main(args):
    if args.log_level == "INFO":  # the figures are the output; keep the master's info lines out of them
        logging.getLogger("geventsched").setLevel(logging.WARNING)
    url, server = args.redis_url, None
    if not reachable(url):
        server = embedded.EmbeddedRedis().start()
        print(f"no Redis answers at {transport.redact(url)}; using an embedded server "
              f"({os.path.basename(server.binary)}) on port {server.port}", file=sys.stderr)
        url = server.url
    try:
        figures = run(url, args.jobs, args.channels, args.concurrency, args.durability)
    finally:
        if server is not None:
            server.stop()
    print(report(figures))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def run(url, jobs, channels, concurrency, durability="redis"):
    client = transport.connect(url)
    namespace = f"bench-{os.urandom(4).hex()}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "geventsched", "worker", "--redis-url", url, "--namespace", namespace,
         "--channels", str(channels), "--concurrency", str(concurrency), "--metrics-port", "0",
         "--durability", durability,
         "--log-level", "WARNING"])
    try:
        _wait_for_worker(client, Keys(namespace), worker)
        recorder = Recorder(jobs)
        master = Master(MasterConfig(namespace=namespace, durability=durability), client, hooks=recorder)
        master.start()
        try:
            cpu = CpuMeter(client, worker.pid)
            figures = _throughput(client, namespace, recorder, jobs)
            figures["cpu_us_per_job"] = cpu.per_job(jobs)
            figures["sequential_latency_ms"] = _sequential(client, namespace)
        finally:
            master.stop()
    finally:
        worker.terminate()
        worker.wait(30)
        _delete_namespace(client, namespace)
    figures.update(channels=channels, concurrency=concurrency, durability=durability,
                   environment=_environment(client))
    return figures


class CpuMeter:
    """CPU time spent by this process (master and producer), the worker and Redis since creation.

    On a shared, noisy machine, CPU per job is steadier than jobs per second: it shows where the time
    goes even when another process steals a core.
    """

    def __init__(self, client, worker_pid):
        self.client, self.worker_pid = client, worker_pid
        self.start = self._read()

    def _read(self):
        info = self.client.info("cpu")
        return {"master": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
                "worker": _process_cpu(self.worker_pid),
                "redis": info["used_cpu_user"] + info["used_cpu_sys"]}

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


def _wait_for_worker(client, keys, worker, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not client.scard(keys.workers):
        if worker.poll() is not None:
            raise RuntimeError(f"the benchmark worker exited with status {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark worker did not register in time")
        gevent.sleep(0.05)


def _throughput(client, namespace, recorder, jobs):
    producer = Client(client, namespace)
    started = time.perf_counter()
    for i in range(0, jobs, SUBMIT_BATCH):
        producer.submit_many([("noop", (), {})] * min(SUBMIT_BATCH, jobs - i), reply=False)
    while not recorder.done.wait(1.0):
        print(f"\r  {len(recorder.latencies):>9,} / {jobs:,} jobs", end="", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    print(f"\r  {jobs:>9,} / {jobs:,} jobs", file=sys.stderr)
    return {"jobs": jobs, "seconds": round(seconds, 4), "jobs_per_s": round(jobs / seconds, 1),
            "failed": recorder.failed, "latency_ms": percentiles(recorder.latencies)}


def _sequential(client, namespace, count=SEQUENTIAL):
    producer = Client(client, namespace)
    rtts = []
    for _ in range(count):
        started = time.perf_counter()
        producer.submit("noop").result(timeout=30)
        rtts.append(time.perf_counter() - started)
    producer.close()
    return percentiles(rtts)


def _delete_namespace(client, namespace):
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])


def _environment(client):
    import gevent as gevent_module
    import hiredis
    import redis

    info = client.info("server")
    return {
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "redis": info.get("redis_version"), "geventsched": __version__, "gevent": gevent_module.__version__,
        "redis-py": redis.__version__, "hiredis": hiredis.__version__,
    }


def report(f):
    lat, seq = f["latency_ms"], f["sequential_latency_ms"]
    return "\n".join([
        f"geventsched bench: {f['jobs']:,} no-op jobs, 1 worker x {f['channels']} channels, "
        f"concurrency {f['concurrency']}, durability {f['durability']} (Redis {f['environment']['redis']}, {f['environment']['cpus']} CPUs)",
        f"  throughput   {f['jobs_per_s']:>12,.0f} jobs/s   ({f['seconds']:.3f} s, {f['failed']} failed)",
        "  cpu per job  " + "   ".join(f"{k} {v} us" for k, v in f["cpu_us_per_job"].items()),
        f"  latency      p50 {lat['p50']:.2f} ms   p90 {lat['p90']:.2f} ms   p99 {lat['p99']:.2f} ms   "
        f"max {lat['max']:.2f} ms   (submit to result, all jobs submitted at once)",
        f"  round trip   p50 {seq['p50']:.2f} ms   p90 {seq['p90']:.2f} ms   p99 {seq['p99']:.2f} ms   "
        f"max {seq['max']:.2f} ms   (sequential, one job at a time)",
    ])
