"""Run the no-op job benchmark through other job systems, each from a virtualenv (or npm folder) of its own.

    python bench/peers/run_peers.py --redis-url redis://127.0.0.1:6379/0 --jobs 2000 --json

For each peer this creates (if missing) a virtualenv under --venv-dir, installs
the peer's requirements (pinned by major version) when they changed, and runs
bench/peers/peer_<name>.py with that virtualenv's Python. Each peer script starts
one worker of its system, measures, stops it and prints one JSON line; this
script collects the lines. A peer that fails to install or run is reported as
{"system": name, "error": "..."} and the others still run.

BullMQ runs on Node.js: peer_bullmq.py needs no virtualenv (it runs with --python and the
standard library); it npm-installs its pinned packages into <venv-dir>/bullmq itself, and
reports itself skipped, with the reason, where node or npm is missing.

Each peer gets a Redis db of its own on the server of --redis-url (celery 10,
dramatiq 11, rq 12, arq 13, huey 14, bullmq 15; --first-db moves the block) and, inside
it, keys named after a per-run tag that the peer deletes when done. Nothing is flushed.

Only the standard library is used here, so any Python 3.10+ can run it.
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> requirements. Pinned by major version so that a rerun in a year measures the
# same generation of each system; arq is 0.x, where the minor version is the major one.
PEERS = {
    "celery": ["celery[redis]==5.*", "gevent==26.*"],
    "dramatiq": ["dramatiq[redis]==1.*", "gevent==26.*"],
    "rq": ["rq==2.*"],
    "arq": ["arq==0.28.*"],
    "huey": ["huey==2.*", "redis==8.*", "gevent==26.*"],
    "bullmq": None,  # Node.js: bench/peers/bullmq/package.json pins it, peer_bullmq.py installs it
}

INSTALL_TIMEOUT = 900  # seconds; a cold install of celery + gevent can take minutes


def default_venv_dir():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "geventsched-bench", "peers")


def with_db(url, db):
    """``url`` pointing at Redis db number ``db`` instead of its own."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise SystemExit(f"--redis-url must be redis:// or rediss://, not {parts.scheme}://")
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def one_line(text):
    """The most telling line of a tool's output: the last error line, else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR") or "Error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def venv_python(venv):
    return os.path.join(venv, "Scripts" if os.name == "nt" else "bin", "python")


def ensure_venv(name, requirements, venv_dir, python, log):
    """Create the peer's virtualenv and install its requirements; return its Python.

    A stamp file holds a hash of the requirements, so reruns skip pip entirely and a
    change of the pins above reinstalls.
    """
    venv = os.path.join(venv_dir, name)
    py = venv_python(venv)
    if not os.path.exists(py):
        log(f"{name}: creating virtualenv")
        subprocess.run([python, "-m", "venv", venv], check=True, capture_output=True, text=True, timeout=300)
    stamp = os.path.join(venv, ".gsbench-requirements")
    wanted = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read().strip() == wanted:
        return py
    log(f"{name}: pip install {' '.join(requirements)}")
    proc = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed: {one_line(proc.stderr + proc.stdout)}")
    with open(stamp, "w") as f:
        f.write(wanted + "\n")
    return py


def run_peer(name, py, url, args, extra=()):
    """Run peer_<name>.py; return its JSON result (or an error record)."""
    cmd = [py, os.path.join(HERE, f"peer_{name}.py"), "--redis-url", url,
           "--jobs", str(args.jobs), "--round-trips", str(args.round_trips),
           "--concurrency", str(args.concurrency), "--timeout", str(max(10, args.timeout - 20)), *extra]
    # A session of its own, so a timeout can kill the script and its worker together.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=HERE)
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"system": name, "error": f"timed out after {args.timeout} s"}
    for line in reversed(out.strip().splitlines()):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and result.get("system") == name:
            return result
    return {"system": name, "error": f"exit {proc.returncode}: {one_line(err or out)}"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                   help="the server to use; its db number is replaced by each peer's own")
    p.add_argument("--jobs", type=int, default=2000, help="no-op jobs in each throughput run")
    p.add_argument("--round-trips", type=int, default=200, help="sequential round trips for the latency figures")
    p.add_argument("--concurrency", type=int, default=100, help="greenlets / jobs at once in each worker")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list out of {','.join(PEERS)}")
    p.add_argument("--venv-dir", default=default_venv_dir(),
                   help="where the peers' virtualenvs (and BullMQ's npm packages) live")
    p.add_argument("--python", default=sys.executable, help="the interpreter the virtualenvs are made from")
    p.add_argument("--first-db", type=int, default=10, help="db number of the first peer; the others follow")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed for each peer's run")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of one JSON line per peer")
    args = p.parse_args(argv)
    args.peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in args.peers if name not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return args


def main(argv=None):
    args = parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = []
    for name in args.peers:
        url = with_db(args.redis_url, args.first_db + list(PEERS).index(name))
        try:
            if PEERS[name] is None:  # not Python: the script sets up its own runtime
                py, extra = args.python, ["--node-dir", os.path.join(args.venv_dir, name)]
            else:
                py, extra = ensure_venv(name, PEERS[name], args.venv_dir, args.python, log), []
            log(f"{name}: running {args.jobs} jobs on db {urlsplit(url).path.lstrip('/')}")
            t0 = time.monotonic()
            result = run_peer(name, py, url, args, extra)
            log(f"{name}: done in {time.monotonic() - t0:.1f} s")
        except Exception as exc:  # install or start-up failure: report it and go on
            result = {"system": name, "error": one_line(f"{type(exc).__name__}: {exc}")}
        results.append(result)
        if not args.json:
            print(json.dumps(result), flush=True)
    if args.json:
        print(json.dumps(results))
    # Exit 0 even if some peers failed: their errors are in the output, and a caller that
    # treats a non-zero exit as "no output" (bench/suite.py does) keeps the other figures.
    return 0


if __name__ == "__main__":
    sys.exit(main())
