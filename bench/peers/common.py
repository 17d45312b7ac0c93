"""What every peer script shares: its command line, the worker subprocess, timing and cleanup.

A peer script runs inside the peer's own virtualenv, so this module needs nothing
but the standard library (and redis-py, which every peer installs, for cleanup).

Each script defines a Peer class and calls ``main(name, package, Peer)``; the
same script started with ``--role worker`` runs the peer's worker instead. The
producer side then measures:

* throughput: enqueue N no-op jobs, then fetch every result in order, as a user
  would; the clock runs from the first enqueue to the last result;
* latency: R sequential round trips (enqueue one job, wait for its result).
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time


class Peer:
    """Base of the per-system classes. Subclasses set up their client in __init__."""

    # Jobs the one worker runs at once, when the system fixes it (RQ: 1); else --concurrency.
    concurrency = None

    def __init__(self, args):
        self.args = args

    # -- the two calls a simple synchronous client needs --------------------------------------

    def submit(self):
        """Enqueue one no-op job and return a handle to its result."""
        raise NotImplementedError

    def wait(self, handle, timeout):
        """Block until the job behind ``handle`` has finished and its result is fetched."""
        raise NotImplementedError

    # -- measurements; an asyncio client (arq) overrides these instead ------------------------

    def throughput(self, jobs):
        """Seconds from the first enqueue to the last fetched result."""
        start = time.perf_counter()
        handles = [self.submit() for _ in range(jobs)]
        for handle in handles:
            self.wait(handle, self.args.result_timeout)
        return time.perf_counter() - start

    def round_trips(self, count, timeout):
        """Seconds of each of ``count`` sequential enqueue -> result round trips."""
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            self.wait(self.submit(), timeout)
            samples.append(time.perf_counter() - t0)
        return samples

    def close(self):
        pass


def parse_args(argv=None, extra=None):
    """The shared command line; ``extra(parser)`` adds a peer's own options."""
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                   help="the peer's Redis; run_peers.py gives each peer its own db number")
    p.add_argument("--jobs", type=int, default=2000, help="jobs in the throughput phase")
    p.add_argument("--round-trips", type=int, default=200, help="sequential round trips in the latency phase")
    p.add_argument("--concurrency", type=int, default=100, help="greenlets / threads / jobs of the one worker")
    p.add_argument("--warmup", type=int, default=20, help="jobs run first (also waits for the worker to be up)")
    p.add_argument("--result-timeout", type=float, default=60.0, help="seconds to wait for any one result")
    p.add_argument("--timeout", type=int, default=280, help="seconds for the whole run before giving up")
    p.add_argument("--json", action="store_true", help="accepted for symmetry; output is always one JSON line")
    # Worker side, set by the producer when it starts the worker subprocess.
    p.add_argument("--role", choices=["producer", "worker"], default="producer", help=argparse.SUPPRESS)
    p.add_argument("--tag", default=None, help=argparse.SUPPRESS)
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if args.jobs < 1 or args.round_trips < 1:
        p.error("--jobs and --round-trips must be at least 1")
    # A name unique to this run: the queue name and/or key prefix of every key the peer
    # writes, so that cleanup can delete exactly those and nothing else. Letters and
    # digits only, because some peers (Huey) strip anything else from their names.
    args.tag = args.tag or f"gsbench{os.getpid()}x{secrets.token_hex(3)}"
    return args


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def summarize_ms(seconds):
    s = sorted(x * 1000.0 for x in seconds)
    return {"p50": round(percentile(s, 50), 3), "p90": round(percentile(s, 90), 3),
            "p99": round(percentile(s, 99), 3), "max": round(s[-1], 3)}


def package_version(package):
    from importlib.metadata import version

    return version(package)


# ---- the worker subprocess ---------------------------------------------------------------------


def start_worker(script, args):
    """Start ``script --role worker`` with the same settings; its output goes to a temp file.

    The worker stays in our process group, so whoever kills this script's group on a
    timeout (run_peers.py does) takes the worker down too.
    """
    log = tempfile.TemporaryFile()
    env = dict(os.environ)
    # The workers import tasks by module name (RQ does so per job): make this folder importable.
    here = os.path.dirname(os.path.abspath(script))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(script), "--role", "worker", "--tag", args.tag,
           "--redis-url", args.redis_url, "--concurrency", str(args.concurrency)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    return proc


def stop_worker(proc):
    """SIGTERM (each peer's warm shutdown), then SIGKILL if it is still there after 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log.close()


def worker_tail(proc, lines=1):
    """The last non-empty lines the worker printed, for an error message."""
    proc.log.seek(0)
    text = proc.log.read().decode(errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:]) if text else "(no output)"


def cleanup(url, tag):
    """Delete every key whose name carries this run's tag (in the peer's own db only)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
        return len(keys)
    finally:
        client.close()


# ---- the producer's run ------------------------------------------------------------------------


class RunTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise RunTimeout("run took longer than --timeout")


def measure(name, package, peer_class, script, args):
    worker = start_worker(script, args)
    peer = None
    # A hard stop for the whole run: any blocking Redis call is interrupted by the alarm.
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(args.timeout)
    try:
        peer = peer_class(args)
        # The first results also tell that the worker is up; its start-up is not measured.
        try:
            peer.round_trips(args.warmup, timeout=max(args.result_timeout, 60.0))
        except Exception as exc:
            if worker.poll() is not None:  # the usual cause: say what the worker said
                raise RuntimeError(f"worker exited with {worker.returncode}: {worker_tail(worker)}") from exc
            raise
        seconds = peer.throughput(args.jobs)
        samples = peer.round_trips(args.round_trips, timeout=args.result_timeout)
    finally:
        signal.alarm(0)
        # Each step on its own: one failing must not skip the others or hide the real error.
        try:
            if peer is not None:
                peer.close()
        except Exception as exc:
            print(f"closing the client failed: {exc}", file=sys.stderr)
        stop_worker(worker)
        try:
            cleanup(args.redis_url, args.tag)
        except Exception as exc:
            print(f"cleanup failed: {exc}", file=sys.stderr)
    return {
        "system": name,
        "version": package_version(package),
        "jobs": args.jobs,
        "seconds": round(seconds, 4),
        "jobs_per_s": round(args.jobs / seconds, 1),
        "latency_ms": summarize_ms(samples),
        "round_trips": args.round_trips,
        "concurrency": peer_class.concurrency or args.concurrency,
    }


def main(name, package, peer_class, run_worker, script, argv=None):
    """Entry point of a peer script: producer by default, worker with ``--role worker``."""
    args = parse_args(argv)
    if args.role == "worker":
        run_worker(args)
        return 0
    try:
        out = measure(name, package, peer_class, script, args)
    except BaseException as exc:  # report any failure as one JSON line, as run_peers expects
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        print(json.dumps({"system": name, "error": msg}))
        return 1
    print(json.dumps(out))
    return 0
