"""A node (``geventsched worker --processes 2``) rides out a Redis outage: a child started while Redis is
away waits for it (weather, not a crash loop), and the node must not give up."""

import os
import signal
import time

import pytest

from conftest import wait_until
from faults import HERE, executions
from geventsched.client import Client
from geventsched.keys import Keys
from geventsched.store import Store


@pytest.fixture
def redis_url(private_redis):
    return private_redis.url


def live_workers(r, namespace):
    return {w: beat for w, beat in Store(r, Keys(namespace)).workers().items() if beat is not None}


def test_a_node_whose_child_is_killed_during_a_redis_outage_serves_again_when_redis_is_back(
        spawn, private_redis, r, namespace, tmp_path):
    node = spawn("worker", "--processes", "2", "--channels", "10", "--app", "faults", "--concurrency", "2",
                 "--metrics-port", "0", cwd=HERE)
    wait_until(lambda: len(live_workers(r, namespace)) == 2, timeout=20, message="two workers")
    victim = next(iter(live_workers(r, namespace).values()))["pid"]

    private_redis.stop()
    os.kill(victim, signal.SIGKILL)
    time.sleep(6)  # its successors cannot reach Redis all that time: the old node gave up within 5 s
    alive, output = node.process.poll() is None, node.output()
    private_redis.start()
    assert alive and "giving up" not in output, output

    wait_until(lambda: len(live_workers(r, namespace)) == 2, timeout=20, message="two workers again")
    spawn("master", "--metrics-port", "0")
    log_path = str(tmp_path / "executions.log")
    client = Client.from_url(private_redis.url, namespace)
    try:
        handles = client.submit_many([("faults.record", [log_path, str(i), 0.2], {}) for i in range(12)], timeout=10)
        results = client.wait(handles, timeout=30)
    finally:
        client.close()
    assert len(results) == 12 and all(result.ok for result in results.values())
    children = {beat["pid"] for beat in live_workers(r, namespace).values()}
    assert victim not in children
    assert {pid for pids in executions(log_path).values() for pid in pids} == children  # both serve
