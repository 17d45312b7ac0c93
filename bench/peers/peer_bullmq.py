"""BullMQ peer: Node.js, driven from here. The workload and the worker are in bullmq/bench.js.

    python bench/peers/peer_bullmq.py --redis-url redis://127.0.0.1:6379/15 --jobs 50000

BullMQ is the fastest Redis job queue in wide use, and it is not Python: this wrapper gives it the
command line and the one JSON line of the other peers (common.py), so run_peers.py and the suite
treat it like them. It needs ``node`` and ``npm`` on PATH; without them it prints one line saying
so (stderr) and a JSON record ``{"system": "bullmq", "skipped": true, "error": "skipped: ..."}``
and exits 0, so that the other peers' figures stand.

Installing: bullmq/package.json pins BullMQ (and ioredis) exactly. They are installed with
``npm install`` into ``--node-dir`` (by default beside the Python peers' virtualenvs, under
~/.cache/geventsched-bench/peers/bullmq), never into the repository; a stamp holds a hash of
package.json, so a rerun installs nothing. bench.js finds them through NODE_PATH.

What is measured (bench.js has the details): one Worker process of concurrency --concurrency (100);
throughput end to end, the jobs added with ``Queue.addBulk`` and every result taken from a
QueueEvents 'completed' event (which carries the return value); sequential round trips with
``Job.waitUntilFinished``; and ``worker_only``, the jobs queued first and then drained by a fresh
Worker, the figure BullMQ publishes. Namespacing: the run's tag is BullMQ's key prefix and the
queue name, in the peer's own db (run_peers.py gives it 15); every key carrying it is deleted at
the end.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from common import parse_args

NAME = "bullmq"
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "bullmq")
INSTALL_TIMEOUT = 600  # seconds; npm fetches about 20 small packages


def default_node_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "geventsched-bench", "peers", NAME)


def add_options(parser):
    parser.add_argument("--node-dir", default=default_node_dir(),
                        help="where package.json's packages are installed (a cache, outside the repository)")


def missing_tools():
    """The tools this peer needs that are not on PATH."""
    return [tool for tool in ("node", "npm") if shutil.which(tool) is None]


def one_line(text):
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERR" in ln or "Error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def ensure_installed(node_dir):
    """npm install package.json's pins into ``node_dir`` unless the stamp says they are there."""
    with open(os.path.join(SOURCE, "package.json"), "rb") as f:
        manifest = f.read()
    wanted = hashlib.sha256(manifest).hexdigest()
    stamp = os.path.join(node_dir, ".gsbench-package")
    if os.path.exists(stamp) and open(stamp).read().strip() == wanted and \
            os.path.isdir(os.path.join(node_dir, "node_modules", "bullmq")):
        return
    os.makedirs(node_dir, exist_ok=True)
    with open(os.path.join(node_dir, "package.json"), "wb") as f:
        f.write(manifest)
    print(f"{NAME}: npm install into {node_dir}", file=sys.stderr, flush=True)
    # --ignore-scripts: nothing is built; msgpackr's optional native part ships prebuilt.
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev"],
                          cwd=node_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"npm install failed: {one_line(done.stderr + done.stdout)}")
    with open(stamp, "w") as f:
        f.write(wanted + "\n")


def run_node(args, seconds_left):
    env = dict(os.environ)
    modules = os.path.join(args.node_dir, "node_modules")
    env["NODE_PATH"] = modules + (os.pathsep + env["NODE_PATH"] if env.get("NODE_PATH") else "")
    cmd = ["node", os.path.join(SOURCE, "bench.js"), "--redis-url", args.redis_url, "--jobs", str(args.jobs),
           "--round-trips", str(args.round_trips), "--concurrency", str(args.concurrency),
           "--warmup", str(args.warmup), "--result-timeout", str(args.result_timeout),
           "--timeout", str(max(10, int(seconds_left))), "--tag", args.tag]
    # The worker processes bench.js forks stay in this process group: whoever kills the group on a
    # timeout (run_peers.py does) takes them too. Node's own --timeout stops it first.
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          timeout=seconds_left + 30)
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and result.get("system") == NAME:
            return result
    return {"system": NAME, "error": f"node exited with {done.returncode}: {one_line(done.stderr or done.stdout)}"}


def main(argv=None):
    started = time.monotonic()
    args = parse_args(argv, extra=add_options)
    missing = missing_tools()
    if missing:
        reason = f"skipped: {' and '.join(missing)} not found on PATH (BullMQ runs on Node.js)"
        print(f"{NAME}: {reason}", file=sys.stderr)
        print(json.dumps({"system": NAME, "skipped": True, "error": reason}))
        return 0
    try:
        ensure_installed(args.node_dir)
        result = run_node(args, args.timeout - (time.monotonic() - started))
    except Exception as exc:  # one JSON line, as run_peers expects
        result = {"system": NAME, "error": one_line(f"{type(exc).__name__}: {exc}")}
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
