"""``geventsched bench``: the no-op job benchmark of the README, durable and fire-and-forget, then
the raw pub/sub echo through the same Redis (the limit), printed and optionally written as JSON.

The durable figure (the headline, the JSON's top level) counts what other job systems' benchmarks
count: a producer submits every job through ``Client`` and receives every result. The master's
own tally of the same run is ``master_tally``. Fire-and-forget jobs are submitted in the master's
process and have no producer to answer: the master's tally is their figure. Each mode also has CPU
per job (master with the producer, worker, Redis) and Redis commands per job; the Redis figures are
the whole server's, so they mean most on a private server (the embedded one, or one of your own).

Runs against the Redis at ``--redis-url``; when nothing answers there, against an embedded server
started for the run and stopped at the end. The CLI parses the arguments; this module only runs
the rig (``rig.py``) and reports.
"""

import json
import logging
import sys

from geventsched import transport
from geventsched.rig import rawecho
from geventsched.rig.rig import RedisFor, Rig, environment, progress_bar


def main(args):
    if args.log_level == "INFO":  # the figures are the output; keep the master's info lines out of them
        logging.getLogger("geventsched").setLevel(logging.WARNING)
    modes = [args.durability] if args.durability else ["redis", "none"]
    runs = {}
    with RedisFor(args.redis_url) as url:
        for mode in modes:
            with Rig(url, args.channels, args.concurrency, mode) as rig:
                runs[mode] = rig.throughput(args.jobs, progress=progress_bar(f"{args.jobs:,} jobs, durability {mode}"))
                runs[mode]["sequential_latency_ms"] = rig.sequential()
            runs[mode].update(channels=args.channels, concurrency=args.concurrency, durability=mode)
        env = environment(rig.client)
        raw = None
        if not transport.is_cluster(rig.client):  # the echo speaks plain PUBLISH to one server
            print("  raw pub/sub echo (the limit)...", file=sys.stderr, flush=True)
            raw = rawecho.measure(url, messages=min(200_000, max(20_000, 2 * args.jobs)))
    # The first mode (durable, the default) is the headline; the other rides along under its name.
    figures = runs[modes[0]]
    if len(modes) > 1:
        figures["fire_and_forget"] = runs["none"]
    figures["environment"] = env
    if raw is not None:
        figures["raw_limit"] = raw
        for mode in modes:
            runs[mode]["of_raw_limit"] = round(runs[mode]["jobs_per_s"] / raw["jobs_per_s"], 4)
    print("\n".join(report(runs[mode], env) for mode in modes))
    if raw is not None:
        lat = raw["latency_ms"]
        print(f"raw limit: a pub/sub echo with no job machinery, same Redis, same run: {raw['jobs_per_s']:,.0f} msg/s, "
              f"round trip p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms\n  geventsched reaches "
              + ", ".join(f"{runs[mode]['of_raw_limit']:.1%} of it ({'durable' if mode == 'redis' else 'fire-and-forget'})"
                          for mode in modes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


#: Commands named in the printed breakdown, the most time first; the JSON has them all.
SHOWN_COMMANDS = 6


def report(f, env):
    lat, seq = f["latency_ms"], f["sequential_latency_ms"]
    by_client = f["collect"] == "client"
    lines = [
        f"geventsched bench: {f['jobs']:,} no-op jobs, 1 worker x {f['channels']} channels, "
        f"concurrency {f['concurrency']}, durability {f['durability']} "
        f"(Redis {env['redis']}, {env['cpus']} CPUs)",
        f"  throughput   {f['jobs_per_s']:>12,.0f} jobs/s   ({f['seconds']:.3f} s, {f['failed']} failed; "
        + ("end to end: a Client submits every job and receives every result)" if by_client
           else "the master's tally: submitted in its process, no producer to answer)"),
    ]
    if by_client:
        tally = f["master_tally"]
        lines.append(f"  master tally {tally['jobs_per_s']:>12,.0f} jobs/s   ({tally['seconds']:.3f} s to the master's "
                     "last finished job, the same run)")
    cpu = f["cpu_us_per_job"]
    lines.append("  cpu per job  " + "   ".join(f"{name} {_us(cpu[key])}" for key, name in
                                              (("master", "master+producer"), ("worker", "worker"),
                                               ("redis", "redis"))))
    shown = ", ".join(f"{name} {c['calls']:g} ({c['usec']:g} us)"
                      for name, c in list(f["redis_commands_per_job"].items())[:SHOWN_COMMANDS])
    lines.append(f"  redis ops    {f['redis_ops_per_job']:g} calls per job, the commands scripts run included; "
                 f"by time: {shown or '-'}")
    drops = {k: v for k, v in f["drops"].items() if v}
    if drops:
        lines.append("  astray       " + ", ".join(f"{k} {v}" for k, v in drops.items())
                     + "   (a subscriber that lost messages, or a worker that was slow to answer)")
    lines += [
        f"  latency      p50 {lat['p50']:.2f} ms   p90 {lat['p90']:.2f} ms   p99 {lat['p99']:.2f} ms   "
        f"max {lat['max']:.2f} ms   (submit to result, all jobs submitted at once"
        + (", results taken in submission order)" if by_client else ")"),
        f"  round trip   p50 {seq['p50']:.2f} ms   p90 {seq['p90']:.2f} ms   p99 {seq['p99']:.2f} ms   "
        f"max {seq['max']:.2f} ms   (sequential, one job at a time)",
    ]
    return "\n".join(lines)


def _us(value):
    return "-" if value is None else f"{value} us"
