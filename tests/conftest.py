from gevent import monkey

monkey.patch_all()  # before anything imports socket

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

from geventsched import transport  # noqa: E402
from geventsched.embedded import EmbeddedRedis  # noqa: E402
from geventsched.rig.cluster import EmbeddedCluster  # noqa: E402
from geventsched.keys import Keys  # noqa: E402
from geventsched.store import Store  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def redis_server():
    """A private Redis for the whole session (redis-server on PATH, else the embedded binary).

    GEVENTSCHED_TEST_REDIS_URL points the suite at a server of your own instead.
    """
    url = os.environ.get("GEVENTSCHED_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster():
    """A private 3-primary Redis Cluster for the session; the URL of one node (not the first)."""
    with EmbeddedCluster(primaries=3) as cluster:
        yield cluster.servers[1].url


@pytest.fixture
def private_redis(request, tmp_path):
    """A Redis of this test's own, which the test may stop and start again (``faults.RestartableRedis``;
    extra server arguments via indirect parametrization)."""
    from faults import RestartableRedis

    server = RestartableRedis(tmp_path / "redis", getattr(request, "param", ()))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server


def on_one_server_and_a_cluster(request):
    """For a module's ``redis_url`` fixture with params ["server", "cluster"]: its integration tests
    then run twice, against one server and against a 3-primary cluster."""
    return request.getfixturevalue("redis_cluster" if request.param == "cluster" else "redis_server")


@pytest.fixture
def r(redis_url):
    """A client of the test's Redis: redis-py's cluster client when that is a cluster."""
    client = transport.connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def namespace(r):
    """A fresh key namespace per test; its keys are deleted afterwards."""
    ns = f"gs-test-{uuid.uuid4().hex[:12]}"
    yield ns
    Store.for_namespace(r, ns).delete_namespace()


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Proc:
    """A geventsched command in a subprocess, with its output in a file for post-mortems."""

    def __init__(self, args, env=None, cwd=None, log_path=None):
        self.args = args
        self.log_path = log_path
        self.log = open(log_path, "w+b")
        self.process = subprocess.Popen([sys.executable, "-m", "geventsched", *args], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def signal(self, sig):
        self.process.send_signal(sig)

    def wait(self, timeout=30):
        return self.process.wait(timeout)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def spawn(redis_url, namespace, tmp_path):
    """``spawn("worker", "--channels", "3")`` runs a geventsched command against this test's Redis
    and namespace; every process is killed at the end of the test."""
    procs = []

    def start(*args, namespaced=True, env=None, cwd=None):
        full = [args[0], "--redis-url", redis_url, *(["--namespace", namespace] if namespaced else []),
                *args[1:]]
        environ = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   **(env or {})}
        proc = Proc(full, env=environ, cwd=cwd, log_path=tmp_path / f"{args[0]}-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def run_cli(*args, input=None, env=None, timeout=60):
    """Run ``python -m geventsched ARGS`` to completion; returns the CompletedProcess."""
    environ = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-m", "geventsched", *args], input=input, capture_output=True,
                          text=True, env=environ, timeout=timeout)


def workers_registered(r, namespace, count=1):
    keys = Keys(namespace, cluster=transport.is_cluster(r))
    return lambda: r.scard(keys.workers) >= count and all(
        r.exists(keys.worker(w.decode())) for w in r.smembers(keys.workers))
