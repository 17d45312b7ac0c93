"""The geventsched benchmark suite: throughput, latency, channel density, concurrency, payload size, large
bodies, a cluster and peer systems.

    python bench/suite.py [--redis-url URL] [--quick] [--only SCENARIOS] [--json FILE] [--plots DIR]
                          [--no-peers]

Every scenario drives ``geventsched.rig.rig.Rig`` (a worker process and an in-process master on a
fresh namespace) against one Redis: the one at ``--redis-url``, or an embedded server when nothing
answers there. Configurations that are compared with each other are open at the same time and run
in turn (A B A B A B), so a burst of load from elsewhere on the machine hits all of them alike; the
tables show the median and every run. bench/README.md explains each scenario.
"""

from gevent import monkey

monkey.patch_all()  # the rigs run gevent code in this process: patch before anything opens a socket

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

import gevent  # noqa: E402

from geventsched import transport  # noqa: E402
from geventsched.config import tune_gc  # noqa: E402
from geventsched.rig.rig import RedisFor, Rig, environment, percentiles, progress_bar  # noqa: E402
from geventsched.keys import Keys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ("throughput", "latency", "density", "concurrency", "payload", "large", "delayed", "cluster", "peers")
ALIASES = {"fanout": "density"}         # density grew out of the fan-out scenario and replaced it
MIB = 1024 * 1024
CHANNELS, CONCURRENCY = 100, 1000       # the worker of every scenario but density (as `geventsched bench`)


@dataclass(frozen=True)
class Sizes:
    repeats: int               # interleaved runs of each configuration
    warmup_jobs: int           # run once per rig and thrown away: first-call costs stay out of the figures
    throughput_jobs: int
    round_trips: int
    open_loop_seconds: float
    density_channels: tuple
    density_jobs: int
    concurrency_jobs: tuple    # N sleep jobs at once on a worker of concurrency N
    payload_jobs: int
    payload_budget: int        # bytes per run: big payloads get fewer jobs, so Redis memory stays bounded
    peer_jobs: int
    raw_messages: int
    delayed_jobs: int = 100_000  # delayed jobs due in the same second, then spread over delay_spread s
    delay_spread: float = 10.0


FULL = Sizes(repeats=3, warmup_jobs=5_000, throughput_jobs=100_000, round_trips=1_000, open_loop_seconds=10.0,
             density_channels=(1, 100, 1_000, 10_000), density_jobs=50_000, concurrency_jobs=(1_000, 5_000, 10_000),
             payload_jobs=50_000, payload_budget=256 * MIB, peer_jobs=10_000, raw_messages=200_000)
QUICK = Sizes(repeats=3, warmup_jobs=500, throughput_jobs=3_000, round_trips=100, open_loop_seconds=1.0,
              density_channels=(1, 100, 1_000, 10_000), density_jobs=2_000, concurrency_jobs=(100, 500),
              payload_jobs=2_000, payload_budget=16 * MIB, peer_jobs=500, raw_messages=10_000, delayed_jobs=2_000,
              delay_spread=2.0)

# name -> Rig keyword arguments, in the order the runs interleave (metrics off, then on, side by side).
THROUGHPUT_CONFIGS = {
    "none": dict(durability="none", intake=False, metrics=False),
    "none+metrics": dict(durability="none", intake=False, metrics=True),
    "redis": dict(durability="redis", intake=True, metrics=False),
    "redis+metrics": dict(durability="redis", intake=True, metrics=True),
    "none-intake": dict(durability="none", intake=True, metrics=False),
}
CONFIG_LABELS = {
    "none": "none, in-process submit",
    "none+metrics": "none, in-process, metrics",
    "redis": "redis (durable), end to end",
    "redis+metrics": "redis, end to end, metrics",
    "none-intake": "none, submit via intake",
}
MODES = ("redis", "none")               # the latency scenario's two durability modes
OPEN_LOOP_LOADS = (0.1, 0.5, 0.9)       # fractions of the measured maximum throughput
PAYLOAD_SIZES = (16, 1024, 64 * 1024)
# Flow control counts jobs, not bytes: 1000 jobs of 64 KiB in flight are 64 MiB, past the 32 MiB that
# Redis lets a pub/sub subscriber's output buffer hold by default, and Redis drops the worker's
# connection. Big payloads therefore get a smaller concurrency, keeping the bytes in flight within
# the default soft limit (8 MiB).
PAYLOAD_IN_FLIGHT = 8 * MIB
# The large-body scenario: 64 KiB echo jobs at the worker's own concurrency (up to 64 MiB in flight,
# past that limit) next to the payload scenario's cap, to show whether a subscriber is cut off.
LARGE_BYTES = 64 * 1024


# -- running ---------------------------------------------------------------------------------------


class Progress:
    """One progress bar per scenario, counted in jobs (or steps) done."""

    def __init__(self, label, total):
        self.show, self.total, self.done = progress_bar(label), max(1, total), 0
        self.drawn = None
        self._draw(0)

    def _draw(self, done):
        done = min(done, self.total)
        # Redraw only on change, and never after the total: progress_bar ends the line there.
        if done != self.drawn and self.drawn != self.total:
            self.drawn = done
            self.show(done, self.total)

    def advance(self, units):
        self.done += units
        self._draw(self.done)

    def part(self, units):
        """A ``progress(done, total)`` callback for a run that covers the next ``units`` of the bar
        (``advance(units)`` when the run is over)."""
        base = self.done
        return lambda done, total: self._draw(base + units * done // max(1, total))

    @contextlib.contextmanager
    def timed(self, units, seconds):
        """Move the bar with the clock while a run of known duration (an open loop) goes on."""
        base, started = self.done, time.monotonic()

        def tick():
            while True:
                gevent.sleep(0.5)
                fraction = min(0.99, (time.monotonic() - started) / seconds)
                self._draw(base + int(units * fraction))

        ticker = gevent.spawn(tick)
        try:
            yield
        finally:
            ticker.kill()
            self.advance(units)

    def close(self):
        self._draw(self.total)


def open_rigs(stack, url, configs):
    """A Rig per configuration ({name: Rig kwargs}), all open at once so that their runs interleave."""
    return {name: stack.enter_context(Rig(url, **{"channels": CHANNELS, "concurrency": CONCURRENCY, **kwargs}))
            for name, kwargs in configs.items()}


def forget_results(rig):
    """Delete the stored results of the finished runs (kept for a day otherwise).

    Every run then starts on the same keyspace: a Redis that keeps growing would make later runs pay
    for rehashing and memory the earlier ones did not.
    """
    keys = rig.keys
    batch = []
    for key in rig.client.scan_iter(match=keys.result_prefix + "*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            rig.client.unlink(*batch)
            batch = []
    if batch:
        rig.client.unlink(*batch)


def interleaved(rigs, task_for, repeats, jobs, progress, run=None):
    """A throughput run on each rig in turn, ``repeats`` rounds: {name: [figures, ...]}.

    ``task_for(name)`` gives the (task, args) of a rig's jobs and ``jobs[name]`` its (warm-up,
    measured) job counts. Each rig first runs a warm-up that is thrown away. ``run`` (default
    ``_one_run``) makes one run and returns its figures.
    """
    run = run or _one_run
    for name, rig in rigs.items():
        run(name, rig, task_for(name), jobs[name][0], progress)
    runs = {name: [] for name in rigs}
    for _ in range(repeats):
        for name, rig in rigs.items():
            runs[name].append(run(name, rig, task_for(name), jobs[name][1], progress))
    return runs


def _one_run(name, rig, task, jobs, progress):
    # A run that stops making progress (a worker stuck on an error) fails its scenario instead of
    # hanging the suite: allow a generous floor of 100 jobs/s.
    limit = 60 + jobs / 100
    with gevent.Timeout(limit, RuntimeError(f"{name}: {jobs:,} jobs not done after {limit:.0f} s")):
        figures = rig.throughput(jobs, *task, progress=progress.part(jobs))
    progress.advance(jobs)
    if figures["failed"]:
        raise RuntimeError(f"{name}: {figures['failed']} of {figures['jobs']} jobs failed")
    forget_results(rig)
    return figures


def noop_task(name):
    return "noop", ()


def sleep_task(name):
    return "sleep", (1,)


# -- what the worker process uses ------------------------------------------------------------------


def process_mib(pid, field):
    """``VmRSS`` (resident now) or ``VmHWM`` (resident at its peak so far) of a process, in MiB; None
    where /proc cannot tell (not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)  # the kernel gives kB
    except OSError:
        pass
    return None


LAG = "geventsched_worker_loop_lag_seconds"
LAG_BUCKET = re.compile(rf'^{LAG}_bucket\{{le="([^"]+)"\}} (\S+)$', re.M)
LAG_SUM = re.compile(rf"^{LAG}_sum (\S+)$", re.M)


def loop_lag(port):
    """The worker's hub-lag histogram from its metrics endpoint: cumulative count per bucket bound
    (``{"0.001": n, ..., "+Inf": n}``) and the sum of the lags in seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {"buckets": {le: float(n) for le, n in LAG_BUCKET.findall(text)},
            "sum_s": float(LAG_SUM.search(text).group(1))}


def lag_since(before, after):
    """The histogram of the lags observed between two readings."""
    return {"buckets": {le: n - before["buckets"].get(le, 0) for le, n in after["buckets"].items()},
            "sum_s": round(after["sum_s"] - before["sum_s"], 6)}


def lag_total(histograms):
    """One histogram holding the observations of all of ``histograms``."""
    return {"buckets": {le: sum(h["buckets"].get(le, 0) for h in histograms) for le in histograms[0]["buckets"]},
            "sum_s": round(sum(h["sum_s"] for h in histograms), 6)}


def lag_summary(histogram):
    """Samples, mean, and the upper bounds (ms) of the buckets that hold the p99 and the maximum (None:
    beyond the largest bound). The monitor samples every 50 ms, so a stall of the hub counts once."""
    buckets = histogram["buckets"]
    total = buckets.get("+Inf", 0)
    if not total:
        return {"samples": 0, "mean_ms": None, "p99_ms": None, "max_ms": None}

    def bound(q):
        le = next(le for le in sorted(buckets, key=float) if buckets[le] >= q * total)
        return None if le == "+Inf" else round(float(le) * 1000, 3)

    return {"samples": int(total), "mean_ms": round(histogram["sum_s"] / total * 1000, 3), "p99_ms": bound(0.99),
            "max_ms": bound(1.0)}


def lagged_run(name, rig, task, jobs, progress):
    """``_one_run`` on a rig with metrics on, plus the worker's hub-lag histogram over the run."""
    before = loop_lag(rig.metrics_port)
    figures = _one_run(name, rig, task, jobs, progress)
    figures["loop_lag"] = lag_since(before, loop_lag(rig.metrics_port))
    return figures


# -- summaries -------------------------------------------------------------------------------------


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _median_dict(dicts):
    return {key: _median([d.get(key) for d in dicts]) for key in dicts[0]}


def summarize(runs):
    """Median and spread of repeated runs: on a shared machine one run proves little. Durable runs
    are end to end (the producer received every result); ``drops`` adds up what went astray in all
    of them (see ``Rig.throughput``)."""
    rates = [r["jobs_per_s"] for r in runs]
    cpu = _median_dict([r["cpu_us_per_job"] for r in runs])
    parts = list(cpu.values())
    cpu["total"] = round(sum(parts), 2) if None not in parts else None
    middle = statistics.median(rates)
    return {"jobs_per_s": round(middle, 1), "min_jobs_per_s": min(rates), "max_jobs_per_s": max(rates),
            "spread_pct": round(100 * (max(rates) - min(rates)) / middle, 1),
            "cpu_us_per_job": cpu, "redis_ops_per_job": _median([r.get("redis_ops_per_job") for r in runs]),
            "latency_ms": _median_dict([r["latency_ms"] for r in runs]), "drops": drops_total(runs)}


def drops_total(runs):
    """Every non-zero count of ``drops`` over ``runs``, added up: {} when nothing went astray."""
    total = {}
    for run in runs:
        for what, count in run.get("drops", {}).items():
            if count:
                total[what] = total.get(what, 0) + count
    return total


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def metrics_ratios(configs):
    """Metrics on / off, for jobs/s and for CPU per job, per durability mode."""
    out = {}
    for off in ("none", "redis"):
        on = off + "+metrics"
        if off in configs and on in configs:
            a, b = configs[on]["median"], configs[off]["median"]
            out[off] = {"jobs_per_s": _ratio(a["jobs_per_s"], b["jobs_per_s"]),
                        "cpu_us_per_job": _ratio(a["cpu_us_per_job"]["total"], b["cpu_us_per_job"]["total"])}
    return out


# -- scenarios -------------------------------------------------------------------------------------


def scenario_throughput(url, sizes, results, configs=THROUGHPUT_CONFIGS):
    jobs = {name: (sizes.warmup_jobs, sizes.throughput_jobs) for name in configs}
    progress = Progress("throughput", len(configs) * (sizes.warmup_jobs + sizes.repeats * sizes.throughput_jobs))
    with contextlib.ExitStack() as stack:
        rigs = open_rigs(stack, url, configs)
        runs = interleaved(rigs, noop_task, sizes.repeats, jobs, progress)
    progress.close()
    out = {name: {**configs[name], "label": CONFIG_LABELS.get(name, name), "runs": runs[name],
                  "median": summarize(runs[name])} for name in configs}
    return {"jobs": sizes.throughput_jobs, "repeats": sizes.repeats, "channels": CHANNELS, "concurrency": CONCURRENCY,
            "configs": out, "metrics_ratio": metrics_ratios(out)}


def max_rates(url, sizes, results):
    """Median no-op jobs/s per durability mode: from the throughput scenario, or measured now."""
    configs = results.get("throughput", {}).get("configs", {})
    if all(mode in configs for mode in MODES):
        return {mode: configs[mode]["median"]["jobs_per_s"] for mode in MODES}, "throughput scenario"
    measured = scenario_throughput(url, sizes, results, {mode: THROUGHPUT_CONFIGS[mode] for mode in MODES})
    return {mode: measured["configs"][mode]["median"]["jobs_per_s"] for mode in MODES}, "measured for this scenario"


def scenario_latency(url, sizes, results):
    rates, source = max_rates(url, sizes, results)
    loops = [(load, mode) for load in OPEN_LOOP_LOADS for mode in MODES]
    open_jobs = sum(int(rates[mode] * load * sizes.open_loop_seconds) for load, mode in loops)
    progress = Progress("latency", len(MODES) * sizes.round_trips + open_jobs)
    sequential, open_loop = {}, {mode: [] for mode in MODES}
    with contextlib.ExitStack() as stack:
        rigs = open_rigs(stack, url, {mode: THROUGHPUT_CONFIGS[mode] for mode in MODES})
        for mode, rig in rigs.items():
            rig.sequential(min(50, sizes.round_trips))  # warm-up: a fresh rig's first round trips are slow
            sequential[mode] = rig.sequential(sizes.round_trips)
            progress.advance(sizes.round_trips)
        for load, mode in loops:  # low load first; the two modes side by side at each load
            rate = max(1.0, round(rates[mode] * load, 1))
            with progress.timed(int(rate * sizes.open_loop_seconds), sizes.open_loop_seconds):
                figures = rigs[mode].open_loop(rate, sizes.open_loop_seconds)
            open_loop[mode].append({"load": load, **figures})
            forget_results(rigs[mode])
    progress.close()
    return {"round_trips": sizes.round_trips, "sequential_ms": sequential, "open_loop_seconds": sizes.open_loop_seconds,
            "max_jobs_per_s": rates, "max_source": source, "open_loop": open_loop}


def open_density_rig(stack, url, channels):
    """A durable rig whose worker serves ``channels`` channels, and the seconds from the worker's start
    until Redis has every one of them subscribed. (``Rig.subscribe_seconds`` ends when the worker
    registers, which it does before it subscribes.)"""
    rig = Rig(url, channels=channels, concurrency=CONCURRENCY, durability="redis")
    last = Keys(rig.namespace).dispatch_channel(channels)  # the worker subscribes its channels in order
    started = time.monotonic()
    watcher = gevent.spawn(_subscribed_at, rig.client, last)
    try:
        stack.enter_context(rig)
        return rig, round(watcher.get(timeout=60) - started, 3)
    finally:
        watcher.kill()


def _subscribed_at(client, channel):
    while not client.pubsub_numsub(channel)[0][1]:
        gevent.sleep(0.005)
    return time.monotonic()


def scenario_density(url, sizes, results):
    """Channels per worker process: start-up, idle memory, throughput (formerly "fan-out")."""
    names = [str(c) for c in sizes.density_channels]
    jobs = {name: (sizes.warmup_jobs, sizes.density_jobs) for name in names}
    progress = Progress("density", len(names) * (sizes.warmup_jobs + sizes.repeats * sizes.density_jobs))
    with contextlib.ExitStack() as stack:
        opened = {name: open_density_rig(stack, url, int(name)) for name in names}
        rigs = {name: rig for name, (rig, _) in opened.items()}
        idle = {name: process_mib(rig.worker.pid, "VmRSS") for name, rig in rigs.items()}
        runs = interleaved(rigs, noop_task, sizes.repeats, jobs, progress)
    progress.close()
    rows = [{"channels": int(name), "registered_s": round(rigs[name].subscribe_seconds, 3),
             "subscribed_s": opened[name][1], "idle_rss_mib": idle[name], "runs": runs[name],
             "median": summarize(runs[name])} for name in names]
    return {"jobs": sizes.density_jobs, "repeats": sizes.repeats, "concurrency": CONCURRENCY, "durability": "redis",
            "channels": rows}


def scenario_concurrency(url, sizes, results):
    """N ``sleep 1`` jobs at once on a worker of concurrency N: drain time, memory, hub lag."""
    names = [str(n) for n in sizes.concurrency_jobs]
    jobs = {name: (int(name), int(name)) for name in names}  # the warm-up grows the worker to its full size
    configs = {name: dict(concurrency=int(name), metrics=True) for name in names}
    progress = Progress("concurrency", (1 + sizes.repeats) * sum(sizes.concurrency_jobs))
    with contextlib.ExitStack() as stack:
        rigs = open_rigs(stack, url, configs)
        idle = {name: process_mib(rig.worker.pid, "VmRSS") for name, rig in rigs.items()}
        runs = interleaved(rigs, sleep_task, sizes.repeats, jobs, progress, run=lagged_run)
        peak = {name: process_mib(rig.worker.pid, "VmHWM") for name, rig in rigs.items()}
    progress.close()
    rows = [concurrency_row(int(name), runs[name], idle[name], peak[name]) for name in names]
    return {"task": "sleep", "seconds": 1, "repeats": sizes.repeats, "channels": CHANNELS, "durability": "redis",
            "sizes": rows}


def concurrency_row(jobs, runs, idle_mib, peak_mib):
    grown = peak_mib - idle_mib if None not in (peak_mib, idle_mib) else None
    return {"jobs": jobs, "concurrency": jobs, "runs": runs, "median": summarize(runs),
            "drain_s": _median([run["seconds"] for run in runs]), "idle_rss_mib": idle_mib, "peak_rss_mib": peak_mib,
            "kib_per_job": round(grown * 1024 / jobs, 2) if grown is not None else None,
            "loop_lag": lag_summary(lag_total([run["loop_lag"] for run in runs]))}


def echo_task(name):
    """The payload scenario's configurations are named after their argument's size in bytes."""
    return "echo", ("x" * int(name),)


def payload_jobs(sizes, size):
    return max(100, min(sizes.payload_jobs, sizes.payload_budget // size))


def payload_concurrency(size):
    """The worker concurrency for ``size``-byte arguments (see PAYLOAD_IN_FLIGHT)."""
    return max(1, min(CONCURRENCY, PAYLOAD_IN_FLIGHT // size))


def scenario_payload(url, sizes, results):
    names = [str(size) for size in PAYLOAD_SIZES]
    jobs = {name: (min(sizes.warmup_jobs, payload_jobs(sizes, int(name))), payload_jobs(sizes, int(name)))
            for name in names}
    configs = {name: dict(durability="redis", concurrency=payload_concurrency(int(name))) for name in names}
    progress = Progress("payload", sum(w + sizes.repeats * n for w, n in jobs.values()))
    with contextlib.ExitStack() as stack:
        runs = interleaved(open_rigs(stack, url, configs), echo_task, sizes.repeats, jobs, progress)
    progress.close()
    rows = []
    for name in names:
        median = summarize(runs[name])
        rows.append({"bytes": int(name), "jobs": jobs[name][1], "concurrency": configs[name]["concurrency"],
                     "runs": runs[name], "median": median,
                     "mib_per_s": round(median["jobs_per_s"] * int(name) / MIB, 2),
                     "drops": median["drops"], "dropped": bool(median["drops"])})
    return {"repeats": sizes.repeats, "durability": "redis", "task": "echo", "channels": CHANNELS,
            "in_flight_bytes": PAYLOAD_IN_FLIGHT, "sizes": rows}


def large_task(name):
    return "echo", ("x" * LARGE_BYTES,)


def scenario_large(url, sizes, results):
    """64 KiB echo jobs, durable, end to end: at the worker's own concurrency (nothing caps the bytes
    in flight) and at the payload scenario's cap, interleaved. MiB/s each way, CPU and Redis commands
    per job, and whether a subscriber was cut off on the way (``drops``)."""
    jobs = payload_jobs(sizes, LARGE_BYTES)
    configs = {"default concurrency": dict(durability="redis", concurrency=CONCURRENCY),
               "capped concurrency": dict(durability="redis", concurrency=payload_concurrency(LARGE_BYTES))}
    counts = {name: (min(sizes.warmup_jobs, jobs), jobs) for name in configs}
    progress = Progress("large", len(configs) * (counts[next(iter(configs))][0] + sizes.repeats * jobs))
    with contextlib.ExitStack() as stack:
        runs = interleaved(open_rigs(stack, url, configs), large_task, sizes.repeats, counts, progress)
    progress.close()
    rows = []
    for name, config in configs.items():
        median = summarize(runs[name])
        rows.append({"name": name, "concurrency": config["concurrency"], "runs": runs[name], "median": median,
                     "mib_per_s": round(median["jobs_per_s"] * LARGE_BYTES / MIB, 2),
                     "drops": median["drops"], "dropped": bool(median["drops"])})
    return {"bytes": LARGE_BYTES, "jobs": jobs, "repeats": sizes.repeats, "durability": "redis", "task": "echo",
            "channels": CHANNELS, "configs": rows}



def run_json_command(argv, timeout):
    """Run a script (or ``-m module``) that prints JSON (one document, or one per line); its stderr shows on ours."""
    done = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, text=True, timeout=timeout)
    if done.returncode != 0:
        name = argv[1] if argv[0] == "-m" else os.path.basename(argv[0])
        raise RuntimeError(f"{name} exited with status {done.returncode}")
    try:
        parsed = json.loads(done.stdout)
        return parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip().startswith("{")]


def scenario_peers(url, sizes, results):
    rates, source = max_rates(url, sizes, results)
    # No bar here: the two scripts report their own progress on stderr.
    print("  peers: the raw echo (geventsched.rig.rawecho), then bench/peers/run_peers.py", file=sys.stderr, flush=True)
    systems = _run_system("raw-echo", ["-m", "geventsched.rig.rawecho", "--redis-url", url,
                                       "--messages", str(sizes.raw_messages), "--json"], timeout=600)
    runner = os.path.join(HERE, "peers", "run_peers.py")
    if os.path.exists(runner):  # the first run builds a virtualenv per peer: the timeout allows for installs
        systems += _run_system("peers", [runner, "--redis-url", url, "--jobs", str(sizes.peer_jobs), "--json"],
                               timeout=3600)
    else:
        systems.append({"system": "peers", "error": "bench/peers/run_peers.py not found"})
    for system in systems:
        for figures in (system, system.get("worker_only") or {}):  # BullMQ's worker-only drain too
            if "jobs_per_s" in figures:
                figures["ratio"] = {mode: _ratio(figures["jobs_per_s"], rates[mode]) for mode in MODES}
    return {"geventsched_jobs_per_s": rates, "geventsched_source": source, "peer_jobs": sizes.peer_jobs,
            "systems": systems}


def _run_system(name, argv, timeout):
    """The JSON figures of one script, or one error entry standing in for them."""
    try:
        return run_json_command(argv, timeout)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        return [{"system": name, "error": str(exc)}]


def scenario_cluster(url, sizes, results):
    """The throughput and sequential round trips of both durability modes on the Redis at ``url``
    and on a private 3-primary cluster started here, runs interleaved."""
    from geventsched.rig.cluster import EmbeddedCluster

    servers = {"1 node": url}
    configs = {f"{where}, {mode}": (where, THROUGHPUT_CONFIGS[mode]) for where in ("1 node", "3 shards")
               for mode in MODES}
    jobs = {name: (sizes.warmup_jobs, sizes.throughput_jobs) for name in configs}
    progress = Progress("cluster", len(configs) * (sizes.warmup_jobs + sizes.repeats * sizes.throughput_jobs
                                                   + sizes.round_trips))
    with contextlib.ExitStack() as stack:
        servers["3 shards"] = stack.enter_context(EmbeddedCluster(primaries=3)).url
        rigs = {name: stack.enter_context(Rig(servers[where], **{"channels": CHANNELS, "concurrency": CONCURRENCY,
                                                                  **kwargs}))
                for name, (where, kwargs) in configs.items()}
        runs = interleaved(rigs, noop_task, sizes.repeats, jobs, progress)
        sequential = {}
        for name, rig in rigs.items():
            rig.sequential(min(50, sizes.round_trips))
            sequential[name] = rig.sequential(sizes.round_trips)
            progress.advance(sizes.round_trips)
    progress.close()
    return {"jobs": sizes.throughput_jobs, "repeats": sizes.repeats, "round_trips": sizes.round_trips,
            "configs": {name: {"runs": runs[name], "median": summarize(runs[name]), "sequential_ms": sequential[name]}
                        for name in configs}}


def scenario_delayed(url, sizes, results):
    """Delayed jobs: N jobs due in the same second, then N spread over ``delay_spread`` seconds, all
    submitted before the first is due. How late each starts (its start on the worker minus its due
    time) and how long after the last due time the last one finishes."""
    runs = []
    progress = Progress("delayed", 2 * sizes.delayed_jobs)
    with Rig(url, durability="redis") as rig:
        for spread in (0.0, sizes.delay_spread):
            runs.append(delayed_run(rig, sizes.delayed_jobs, spread, progress))
    progress.close()
    return {"jobs": sizes.delayed_jobs, "durability": "redis", "task": "noop", "runs": runs}


def delayed_run(rig, jobs, spread, progress, chunks=100):
    """One delayed run: ``jobs`` no-op jobs in ``chunks`` submits, each due at its own time from
    ``lead`` seconds on (all at once when ``spread`` is 0)."""
    from geventsched.client import Client

    client = Client(transport.connect(rig.url), rig.namespace)
    try:
        lead = 2.0 + jobs / 20_000  # time to submit them all before the first is due
        first_due = time.time() + lead
        per_chunk = -(-jobs // chunks)
        handles, dues = [], {}
        for k in range(chunks):
            count = min(per_chunk, jobs - k * per_chunk)
            if count <= 0:
                break
            due = first_due + spread * k / chunks
            for handle in client.submit_many([("noop", (), {})] * count, at=due):
                handles.append(handle)
                dues[handle.id] = due
        late, ended = [], []
        for i in range(0, len(handles), 5_000):
            chunk = handles[i:i + 5_000]
            results = client.wait(chunk, timeout=lead + spread + 120)
            if len(results) < len(chunk):
                raise RuntimeError(f"{len(chunk) - len(results)} delayed jobs had no result in time")
            for job_id, result in results.items():
                late.append(result.started - dues[job_id])
                ended.append(result.ended)
            progress.advance(len(chunk))
        last_due = max(dues.values())
        return {"spread_s": spread, "jobs": len(handles), "early": sum(1 for x in late if x < 0),
                "lateness_ms": percentiles(late), "drain_s": round(max(ended) - last_due, 3)}
    finally:
        client.close()


def report_delayed(r):
    rows = [[f"{run['spread_s']:g} s", _n(run["jobs"]), *(_n(run["lateness_ms"][k], 1) for k in ("p50", "p90", "p99", "max")),
             _n(run["drain_s"], 2), _n(run["early"])] for run in r["runs"]]
    return "\n".join([
        f"delayed jobs: {r['jobs']:,} no-op jobs due at once, then spread out; lateness = start on the worker minus due time",
        table(["due times spread over", "jobs", "late p50 ms", "p90", "p99", "max", "drain after last due s", "started early"],
              rows)])


SCENARIO_FUNCTIONS = {
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "density": scenario_density,
    "concurrency": scenario_concurrency,
    "payload": scenario_payload,
    "large": scenario_large,
    "delayed": scenario_delayed,
    "cluster": scenario_cluster,
    "peers": scenario_peers,
}


# -- tables ----------------------------------------------------------------------------------------


def table(headers, rows):
    """Columns padded to their widest cell; the first column left-aligned, numbers right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def _n(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def _runs(runs, key="jobs_per_s", digits=0):
    """One figure of every run, as the tables show them."""
    return " ".join(_n(run[key], digits) for run in runs)


def _cpu(cpu):
    return " / ".join(_n(cpu.get(k), 1) for k in ("master", "worker", "redis")) + f"  ({_n(cpu.get('total'), 1)})"


def _drops(drops):
    return ", ".join(f"{what} {count}" for what, count in drops.items()) or "none"


def report_throughput(r):
    rows = []
    for config in r["configs"].values():
        m = config["median"]
        rows.append([config["label"], _n(m["jobs_per_s"]), _runs(config["runs"]), f"{m['spread_pct']}%",
                     _cpu(m["cpu_us_per_job"]), _n(m.get("redis_ops_per_job"), 2), _n(m["latency_ms"]["p99"], 1)])
    ratios = "; ".join(f"{mode}: {v['jobs_per_s']}x jobs/s, {v['cpu_us_per_job']}x CPU/job"
                       for mode, v in r["metrics_ratio"].items())
    return "\n".join([
        f"throughput: {r['jobs']:,} no-op jobs per run, {r['repeats']} interleaved runs per configuration; durable "
        "rows end to end (the producer receives every result), the others the master's tally",
        table(["durability, submission", "jobs/s (median)", "runs", "spread", "CPU us/job master/worker/redis",
               "redis calls/job", "p99 ms (burst)"], rows),
        f"metrics on/off (medians): {ratios or '-'}"])


def _pcts(lat):
    return [_n(lat[k], 2) for k in ("p50", "p90", "p99", "max")]


def report_latency(r):
    rows = [[f"sequential, {mode}", "-", "-", *_pcts(lat)] for mode, lat in r["sequential_ms"].items()]
    for mode, loops in r["open_loop"].items():
        for loop in loops:
            rows.append([f"open loop, {mode}, {loop['load']:.0%} of max", _n(loop["rate"]),
                         _n(loop["achieved_per_s"]), *_pcts(loop["latency_ms"])])
    maxima = ", ".join(f"{mode} {_n(rate)}/s" for mode, rate in r["max_jobs_per_s"].items())
    return "\n".join([
        f"latency (ms): {r['round_trips']:,} sequential round trips; open loop {r['open_loop_seconds']:g} s "
        "per load, measured from each job's scheduled time",
        f"  (max throughput: {maxima}, {r['max_source']})",
        table(["run", "offered/s", "achieved/s", "p50", "p90", "p99", "max"], rows)])


def report_density(r):
    rows = [[_n(row["channels"]), _n(row["registered_s"], 2), _n(row["subscribed_s"], 2), _n(row["idle_rss_mib"], 1),
             _n(row["median"]["jobs_per_s"]), _runs(row["runs"]), _n(row["median"]["latency_ms"]["p99"], 1)]
            for row in r["channels"]]
    return "\n".join([
        f"density: one worker process, concurrency {r['concurrency']}, {r['jobs']:,} no-op jobs per run, durability "
        f"{r['durability']}, {r['repeats']} interleaved runs; times from the worker's start",
        table(["channels", "registered s", "subscribed s", "idle RSS MiB", "jobs/s (median)", "runs",
               "p99 ms (burst)"], rows)])


def report_concurrency(r):
    rows = [[_n(row["jobs"]), _n(row["drain_s"], 2), _runs(row["runs"], "seconds", 2),
             _n(row["median"]["latency_ms"]["p99"]), _n(row["idle_rss_mib"], 1), _n(row["peak_rss_mib"], 1),
             _n(row["kib_per_job"], 1), _n(row["loop_lag"]["p99_ms"], 1), _n(row["loop_lag"]["max_ms"], 1)]
            for row in r["sizes"]]
    return "\n".join([
        f"concurrency: N jobs of `{r['task']} {r['seconds']}` submitted at once to one worker of concurrency N, "
        f"{r['channels']} channels, durability {r['durability']}, {r['repeats']} interleaved runs after a warm-up",
        "  (peak RSS: the worker's high-water mark; hub lag: bucket bounds, over the measured runs)",
        table(["N", "drain s (median)", "runs", "p99 ms", "idle RSS MiB", "peak RSS MiB", "KiB/job",
               "hub lag p99 ms", "hub lag max ms"], rows)])


def report_payload(r):
    rows = [[f"{row['bytes']:,} B", _n(row["jobs"]), _n(row["concurrency"]), _n(row["median"]["jobs_per_s"]),
             _runs(row["runs"]), _n(row["mib_per_s"], 1),
             _n(row["median"]["latency_ms"]["p99"], 1), _drops(row.get("drops", {}))] for row in r["sizes"]]
    return "\n".join([
        f"payload: echo jobs with a string argument, durability {r['durability']}, end to end, {r['repeats']} "
        f"interleaved runs; concurrency capped at {r['in_flight_bytes'] // MIB} MiB in flight",
        table(["argument", "jobs/run", "concurrency", "jobs/s (median)", "runs", "MiB/s each way", "p99 ms (burst)",
               "astray (all runs)"], rows)])


def report_large(r):
    rows = [[row["name"], _n(row["concurrency"]), _n(row["median"]["jobs_per_s"]), _runs(row["runs"]),
             _n(row["mib_per_s"], 1), _cpu(row["median"]["cpu_us_per_job"]),
             _n(row["median"]["redis_ops_per_job"], 2), _n(row["median"]["latency_ms"]["p99"], 1),
             "yes: " + _drops(row["drops"]) if row["dropped"] else "no"] for row in r["configs"]]
    return "\n".join([
        f"large bodies: {r['bytes'] // 1024} KiB echo jobs, {r['jobs']:,} per run, durability {r['durability']}, end "
        f"to end, {r['repeats']} interleaved runs; the argument goes to the worker, the result comes back",
        table(["worker", "concurrency", "jobs/s (median)", "runs", "MiB/s each way", "CPU us/job master/worker/redis",
               "redis calls/job", "p99 ms (burst)", "subscriber cut off / jobs astray"], rows)])


def report_peers(r, results):
    sequential = results.get("latency", {}).get("sequential_ms", {})
    ours = r["geventsched_jobs_per_s"]
    rows = [(rate, [f"geventsched ({mode})", "", "", _n(rate), _n(sequential.get(mode, {}).get("p50"), 2),
                    _n(sequential.get(mode, {}).get("p99"), 2), _n(_ratio(rate, ours["redis"]), 3),
                    _n(_ratio(rate, ours["none"]), 3)])
            for mode, rate in ours.items()]
    errors = [f"  {s['system']}: {s['error']}" for s in r["systems"] if "error" in s]
    for s in r["systems"]:
        if "error" not in s:
            lat = s.get("latency_ms") or {}
            rows.append((s["jobs_per_s"], [s["system"], s.get("version", ""), _n(s.get("jobs")), _n(s["jobs_per_s"]),
                                           _n(lat.get("p50"), 2), _n(lat.get("p99"), 2), _n(s["ratio"]["redis"], 3),
                                           _n(s["ratio"]["none"], 3)]))
            drain = s.get("worker_only")
            if drain and "ratio" in drain:  # jobs queued first, then drained: no producer in the clock
                rows.append((drain["jobs_per_s"], [f"{s['system']} (worker only)", s.get("version", ""),
                                                   _n(drain["jobs"]), _n(drain["jobs_per_s"]), "", "",
                                                   _n(drain["ratio"]["redis"], 3), _n(drain["ratio"]["none"], 3)]))
    rows.sort(key=lambda pair: -pair[0])
    return "\n".join([
        f"peers: no-op jobs, every result fetched (worker only: queued first, then drained); x durable / x none = "
        f"jobs/s over geventsched's in that mode ({r['geventsched_source']}; durable end to end); rtt = sequential "
        "round trips",
        table(["system", "version", "jobs", "jobs/s", "rtt p50 ms", "rtt p99 ms", "x durable", "x none"],
              [row for _, row in rows]),
        *(["not measured:"] + errors if errors else [])])


def report_cluster(r):
    rows = []
    for name, config in r["configs"].items():
        m = config["median"]
        rows.append([name, _n(m["jobs_per_s"]), _runs(config["runs"]), _cpu(m["cpu_us_per_job"]),
                     *_pcts(config["sequential_ms"])])
    return "\n".join([
        f"cluster: {r['jobs']:,} no-op jobs per run, {r['repeats']} interleaved runs; {r['round_trips']:,} "
        "sequential round trips (ms)",
        table(["server, durability", "jobs/s (median)", "runs", "CPU us/job master/worker/redis",
               "rtt p50", "p90", "p99", "max"], rows)])


REPORTS = {"throughput": report_throughput, "delayed": report_delayed, "latency": report_latency, "density": report_density,
           "concurrency": report_concurrency, "payload": report_payload, "large": report_large,
           "cluster": report_cluster, "peers": report_peers}


def report(name, result, results):
    if "error" in result:
        return f"{name}: FAILED: {result['error']}"
    return REPORTS[name](result, results) if name == "peers" else REPORTS[name](result)


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("GEVENTSCHED_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis to run against (an embedded server when nothing answers there)")
    parser.add_argument("--quick", action="store_true", help="small runs: the whole suite in well under a minute")
    parser.add_argument("--only", default=",".join(SCENARIOS), metavar="SCENARIOS",
                        help=f"comma list out of {','.join(SCENARIOS)} (default: all; fanout is density's old name)")
    parser.add_argument("--json", metavar="FILE",
                        help="write every figure here (default: bench/results/suite-<time>.json)")
    parser.add_argument("--plots", metavar="DIR", help="write PNG charts here (needs matplotlib)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers scenario")
    args = parser.parse_args(argv)
    chosen = [ALIASES.get(s.strip(), s.strip()) for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown or not chosen:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {','.join(SCENARIOS)}")
    args.scenarios = [s for s in SCENARIOS if s in chosen and not (s == "peers" and args.no_peers)]
    return args


def command_line(argv):
    """The command as run, with any password in a Redis URL blanked out."""
    return ["python", "bench/suite.py", *(transport.redact(a) if "://" in a else a for a in argv)]


def source_commit():
    """The commit the figures were measured on, when run from a git checkout (read-only query)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def run_scenarios(url, args, sizes):
    results, failed = {}, False
    for name in args.scenarios:
        started = time.monotonic()
        try:
            results[name] = SCENARIO_FUNCTIONS[name](url, sizes, results)
        except Exception as exc:  # one broken scenario should not cost the figures of the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
        print(report(name, results[name], results) + "\n", flush=True)
    return results, failed


def write_json(path, document):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
    print(f"figures written to {path}", file=sys.stderr)


def make_plots(document, directory):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("--plots: matplotlib is not installed (pip install 'geventsched[bench]'); no charts", file=sys.stderr)
        return
    sys.path.insert(0, HERE)
    from plot import plot_all

    for path in plot_all(document, directory):
        print(f"chart written to {path}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # The figures are the output: keep the masters' and workers' info lines out of the terminal.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes = QUICK if args.quick else FULL
    tune_gc()  # the rigs' masters run in this process: as `geventsched master` does
    started = datetime.datetime.now(datetime.timezone.utc)
    with RedisFor(args.redis_url) as url:
        env = {**environment(transport.connect(url)), "commit": source_commit(),
               "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
        results, failed = run_scenarios(url, args, sizes)
        env["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    document = {"command": command_line(argv), "timestamp": started.isoformat(timespec="seconds"),
                "quick": args.quick, "sizes": asdict(sizes), "environment": env, "scenarios": results}
    stamp = started.strftime("%Y%m%d-%H%M%S")
    write_json(args.json or os.path.join(HERE, "results", f"suite-{stamp}.json"), document)
    if args.plots:
        make_plots(document, args.plots)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
