"""--codec raw interoperates with the original design's scripts, unmodified (stand-ins in seed/).

The original scripts know no namespace, so these tests use bare channel names on a database of
their own; pub/sub is server-wide, so they do not run concurrently with each other.
"""

import os
import subprocess
import sys

import pytest

from conftest import run_cli, wait_until, workers_registered

SEED = os.path.join(os.path.dirname(__file__), "seed")


@pytest.fixture
def bare_url(redis_url, r):
    url = redis_url.rsplit("/", 1)[0] + "/9"
    import redis

    own = redis.Redis.from_url(url)
    own.flushdb()
    yield url
    own.flushdb()
    own.close()


def test_original_master_against_our_worker(spawn, bare_url):
    import redis

    r9 = redis.Redis.from_url(bare_url)
    spawn("worker", "--redis-url", bare_url, "--channels", "3", "--codec", "raw", "--metrics-port", "0",
          namespaced=False)
    wait_until(workers_registered(r9, ""), timeout=20, message="worker registration")
    done = subprocess.run([sys.executable, os.path.join(SEED, "original_master.py"), bare_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dispatched 99 failed 0 returned 99" in done.stdout


def test_our_master_against_original_slave(spawn, bare_url):
    slave = subprocess.Popen([sys.executable, os.path.join(SEED, "original_slave.py"), bare_url, "3"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert slave.stdout.readline().strip() == "slave ready"
        spawn("master", "--redis-url", bare_url, "--codec", "raw", "--channels", "3", "--metrics-port", "0",
              namespaced=False)
        done = run_cli("submit", "echo", "1", "--wait", "--timeout", "30", "--redis-url", bare_url)
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        assert job_id.isdigit()
        many = run_cli("submit", "noop", "--count", "50", "--wait", "--timeout", "30", "--redis-url", bare_url)
        assert many.returncode == 0, many.stderr
        ids = many.stdout.split()
        assert len(ids) == 50 and len(set(ids)) == 50 and job_id not in ids
    finally:
        slave.kill()
        slave.wait()


def test_our_master_waits_when_no_original_slave_listens(spawn, bare_url):
    """PUBLISH = 0 is 'nobody there': the job waits and goes out once a slave subscribes."""
    spawn("master", "--redis-url", bare_url, "--codec", "raw", "--channels", "2", "--metrics-port", "0",
          namespaced=False)
    submitted = run_cli("submit", "echo", "1", "--redis-url", bare_url)
    job_id = submitted.stdout.strip()
    slave = subprocess.Popen([sys.executable, os.path.join(SEED, "original_slave.py"), bare_url, "2"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert slave.stdout.readline().strip() == "slave ready"
        done = run_cli("submit", "echo", "2", "--wait", "--timeout", "30", "--redis-url", bare_url)
        assert done.returncode == 0, done.stderr
        import redis

        r9 = redis.Redis.from_url(bare_url)
        wait_until(lambda: r9.exists(f"geventsched:result:{job_id}"), message="the early job's result")
    finally:
        slave.kill()
        slave.wait()
