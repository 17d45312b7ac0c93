"""Workflow benchmark: what a chord and a long chain cost next to plain jobs.

    python bench/workflows.py [--redis-url URL] [--quick] [--repeats N] [--json FILE]

One rig (``geventsched.rig.rig.Rig``: a worker process with 100 channels, an in-process master, a
fresh namespace, durability redis) serves every run, in turn (A B C A B C ...):

* chord      ``chord(group(10,000 x noop), echo)``: from ``Client.run`` to the callback's value in the
             client (the run's one script call, every child, the callback released by the last
             child's result and run). Next to it, 10,000 plain ``noop`` jobs submitted in one batch,
             to their last result: the ceiling a chord's header can reach.
* chain      ``chain(echo(0), echo, ... 1,000 steps)``: per step, from ``Client.run`` to the last
             value. Each step is a full round trip (queued by the previous step's result, claimed,
             dispatched, run, recorded); next to it, the median round trip of one plain job submitted
             and awaited alone.

Runs on its own (the suite in bench/suite.py is left alone); needs no peer systems.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from geventsched.client import Client  # noqa: E402
from geventsched.rig.rig import RedisFor, Rig, environment  # noqa: E402
from geventsched.workflow import chain, chord, group, sig  # noqa: E402


def chord_seconds(client, children):
    started = time.perf_counter()
    handle = client.run(chord(group(sig("noop") for _ in range(children)), sig("echo")))
    queued = time.perf_counter() - started
    value = handle.result(timeout=600)
    assert len(value) == children
    return time.perf_counter() - started, queued


def plain_seconds(client, jobs):
    started = time.perf_counter()
    handles = client.submit_many([("noop", (), {})] * jobs)
    results = client.wait(handles, timeout=600)
    assert len(results) == jobs and all(r.ok for r in results.values())
    return time.perf_counter() - started


def chain_seconds(client, steps):
    started = time.perf_counter()
    value = client.run(chain(sig("echo", 0), *[sig("echo") for _ in range(steps - 1)])).result(timeout=600)
    assert value == 0
    return time.perf_counter() - started


def round_trip_seconds(client, count):
    out = []
    for _ in range(count):
        started = time.perf_counter()
        client.submit("echo", 0).result(timeout=30)
        out.append(time.perf_counter() - started)
    return statistics.median(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("GEVENTSCHED_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--quick", action="store_true", help="1,000 children and 100 steps (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    children, steps = (1_000, 100) if args.quick else (10_000, 1_000)
    runs = {"chord_s": [], "chord_run_call_s": [], "plain_s": [], "chain_s": [], "round_trip_s": []}
    with RedisFor(args.redis_url) as url, Rig(url, channels=100, concurrency=1000, durability="redis") as rig:
        client = Client(rig.client, rig.namespace)
        chord_seconds(client, 100)  # warm-up: first-call costs stay out of the figures
        chain_seconds(client, 10)
        for i in range(args.repeats):
            total, queued = chord_seconds(client, children)
            runs["chord_s"].append(total)
            runs["chord_run_call_s"].append(queued)
            runs["plain_s"].append(plain_seconds(client, children))
            runs["chain_s"].append(chain_seconds(client, steps))
            runs["round_trip_s"].append(round_trip_seconds(client, 200))
            print(f"run {i + 1}/{args.repeats}: chord {total:.3f}s (run() {queued:.3f}s), "
                  f"plain {runs['plain_s'][-1]:.3f}s, chain {runs['chain_s'][-1]:.3f}s, "
                  f"round trip {runs['round_trip_s'][-1] * 1e3:.2f}ms", file=sys.stderr)
        env = environment(rig.client)
        client.close()
    med = {name: statistics.median(values) for name, values in runs.items()}
    report = {
        "environment": env,
        "children": children,
        "steps": steps,
        "chord_to_callback_s": round(med["chord_s"], 3),
        "chord_run_call_s": round(med["chord_run_call_s"], 3),
        "chord_children_per_s": round(children / med["chord_s"]),
        "plain_jobs_s": round(med["plain_s"], 3),
        "plain_jobs_per_s": round(children / med["plain_s"]),
        "chain_s": round(med["chain_s"], 3),
        "chain_ms_per_step": round(med["chain_s"] / steps * 1e3, 3),
        "plain_round_trip_ms": round(med["round_trip_s"] * 1e3, 3),
        "runs": {name: [round(v, 4) for v in values] for name, values in runs.items()},
    }
    print(f"chord of {children} noop children: {report['chord_to_callback_s']}s to the callback's value "
          f"({report['chord_children_per_s']} children/s; Client.run itself {report['chord_run_call_s']}s); "
          f"{children} plain noop jobs: {report['plain_jobs_s']}s ({report['plain_jobs_per_s']} jobs/s)")
    print(f"chain of {steps} echo steps: {report['chain_s']}s, {report['chain_ms_per_step']} ms per step; "
          f"a plain job's round trip alone: {report['plain_round_trip_ms']} ms (median)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
