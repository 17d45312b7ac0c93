"""Connections cut by Redis (CLIENT KILL) are made again, the worker's, the master's and a waiting
client's at once (tests/test_faults_extra.py cuts the worker's alone)."""

from conftest import wait_until
from helpers import client_for, start_system, status


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
