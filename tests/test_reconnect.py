"""Connections cut by Redis (CLIENT KILL) are made again; garbage is counted in the metrics."""

import json
import urllib.request

from conftest import wait_until, workers_registered
from helpers import client_for, start_system, status
from geventsched.embedded import free_port
from geventsched.keys import Keys


def test_client_kill_of_every_subscriber_loses_no_job(spawn, r, namespace, redis_url):
    (worker,), master = start_system(spawn, r, namespace, worker_args=("--channels", "2"))
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("sleep", (0.05,), {})] * 300, timeout=2)
    wait_until(lambda: status(r, namespace)["finished"]["ok"] >= 20, message="the first results")
    killed = r.client_kill_filter(_type="pubsub")  # the worker's, the master's and this client's
    assert killed >= 3
    results = client.wait(handles, timeout=60)
    client.close()
    assert len(results) == 300 and all(result.ok for result in results.values())
    snap = wait_until(lambda: (s := status(r, namespace))["in_flight"] == 0 and s, message="nothing in flight")
    assert snap["finished"]["ok"] == 300 and snap["queued"] == 0
    wait_until(lambda: "resubscribed 2 channels" in worker.output(), message="the worker to resubscribe")


GARBAGE = {
    "invalid_json": b"{nope",
    "bad_version": json.dumps({"v": 7, "id": "1", "task": "noop"}).encode(),
    "not_utf8": b"\xff\xfe",
    "empty": b"",
    "too_large": b"x" * (2 << 20),
    "not_an_object": b"[]",
    "missing_field": json.dumps({"v": 1, "id": "1"}).encode(),
    "bad_field": json.dumps({"v": 1, "id": 5, "task": "noop"}).encode(),
}


def test_garbage_is_counted_by_reason_and_the_worker_serves_on(spawn, r, namespace, redis_url):
    port = free_port()
    spawn("worker", "--channels", "1", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
    wait_until(workers_registered(r, namespace), message="worker registration")
    channel = Keys(namespace).dispatch_channel(1)
    for data in GARBAGE.values():
        assert r.publish(channel, data) == 1
    spawn("master", "--metrics-port", "0")
    client = client_for(redis_url, namespace)
    assert client.submit("echo", "alive").result(timeout=20) == "alive"
    client.close()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for reason in GARBAGE:
        assert f'geventsched_worker_messages_rejected_total{{reason="{reason}"}} 1.0' in text, reason
