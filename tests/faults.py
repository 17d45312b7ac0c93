"""Helpers for ``test_faults.py``: private Redis servers the tests can stop and start again, a tiny
task app that workers import to leave evidence of every execution, and readers for that evidence.

This module is also imported *by worker processes* (``geventsched worker --app faults``, started with
``cwd`` = this directory), so at module level it imports only the standard library and geventsched.
"""

import json
import os
import signal
import time
import urllib.request

from geventsched.embedded import EmbeddedRedis, free_port
from geventsched.registry import App

HERE = os.path.dirname(os.path.abspath(__file__))

# -- tasks run by the workers (``--app faults``) -----------------------------------------------------

app = App(prefix="faults")


def _note(log_path, *fields):
    # One short O_APPEND write per line: lines from several worker processes never interleave.
    line = " ".join(str(f) for f in fields) + "\n"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task
def record(log_path, token, seconds=0.0):
    """Write ``start TOKEN PID`` to ``log_path``, sleep (yielding), write ``end TOKEN PID``."""
    import gevent

    _note(log_path, "start", token, os.getpid())
    gevent.sleep(float(seconds))
    _note(log_path, "end", token, os.getpid())
    return token


@app.task
def poison(log_path, token, antidote_path):
    """Kill the worker running it (SIGKILL: no hand-back, no deregistration), unless ``antidote_path``
    exists. A job that always loses its worker."""
    _note(log_path, "start", token, os.getpid())
    if not os.path.exists(antidote_path):
        os.kill(os.getpid(), signal.SIGKILL)
    _note(log_path, "end", token, os.getpid())
    return "survived"


def executions(log_path, phase="start"):
    """``{token: [pid, ...]}`` of the ``phase`` lines ``record``/``poison`` wrote, in order."""
    out = {}
    if not os.path.exists(log_path):
        return out
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[0] == phase:
                out.setdefault(parts[1], []).append(int(parts[2]))
    return out


def count_lines(log_path, phase="start"):
    return sum(len(pids) for pids in executions(log_path, phase).values())


# -- Redis servers ---------------------------------------------------------------------------------


class RestartableRedis:
    """A private Redis on a fixed port that a test can stop (SIGTERM) and start again on that port.

    ``data_dir``: where it keeps its files (with ``--appendonly yes`` the data survives a restart);
    the server's own log goes to ``data_dir/redis.log``.
    """

    def __init__(self, data_dir, extra_args=()):
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = str(data_dir)
        self.log_path = os.path.join(self.data_dir, "redis.log")
        self.port = free_port()
        self.extra_args = [*extra_args, "--dir", self.data_dir, "--logfile", self.log_path]
        self._server = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self._server = EmbeddedRedis(port=self.port, extra_args=self.extra_args, start_timeout=20).start()
        return self

    def stop(self):
        """Graceful stop (SIGTERM): Redis flushes its append-only file, as in a service restart."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def restart(self, down_for=0.0):
        self.stop()
        if down_for:
            time.sleep(down_for)
        return self.start()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


# -- observing processes ---------------------------------------------------------------------------


def metrics(port):
    """``{'name{labels}': value}`` from a geventsched metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(port, name, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics(port).items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def master_view(port):
    """The master's own gauges (what it believes), for failure messages; never raises."""
    if port is None:
        return {}
    try:
        values = metrics(port)
    except OSError as exc:
        return {"metrics": f"unreachable: {exc}"}
    prefix = "geventsched_master_"
    return {k[len(prefix):]: v for k, v in values.items()
            if k.startswith(prefix) and k[len(prefix):] in ("jobs_in_flight", "jobs_queued", "workers", "channels")}


def status_json(run_cli, redis_url, namespace):
    """``geventsched status --json`` run as a command, parsed."""
    done = run_cli("status", "--json", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def subscribers_with(redis_client, channels):
    """Ids of the connections subscribed to exactly ``channels`` channels (CLIENT LIST ``sub=``)."""
    return [c["id"] for c in redis_client.client_list() if int(c.get("sub", 0)) == channels]


class Stopwatch:
    def __init__(self):
        self.start = time.monotonic()

    def __call__(self):
        return time.monotonic() - self.start


def report(name, **figures):
    """One line per measurement, for the log of a ``pytest -s`` run."""
    print(f"\nFAULTS {name}: " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in figures.items()), flush=True)
