"""SIGTERM drains: running jobs finish within the grace period; what cannot finish is handed back."""

import signal

from conftest import wait_until
from helpers import client_for, start_system, status


def running_jobs(r, namespace):
    workers = status(r, namespace)["workers"]
    return workers[0]["running"] if workers else 0


def test_sigterm_lets_running_jobs_finish(spawn, r, namespace, redis_url):
    (worker,), _ = start_system(spawn, r, namespace, worker_args=("--channels", "2", "--grace", "20"))
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("sleep", (1.5,), {})] * 3)
    wait_until(lambda: running_jobs(r, namespace) == 3, message="3 running jobs")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    results = client.wait(handles, timeout=5)
    client.close()
    assert [results[h.id].status for h in handles] == ["ok"] * 3
    assert status(r, namespace)["workers"] == []  # deregistered


def test_jobs_that_outlive_the_grace_period_are_handed_back(spawn, r, namespace, redis_url):
    (worker,), _ = start_system(spawn, r, namespace, worker_args=("--channels", "1", "--grace", "0.3"))
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("sleep", (2,), {})] * 2)
    wait_until(lambda: running_jobs(r, namespace) == 2, message="2 running jobs")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "handing them back" in worker.output()
    # A new worker gets them long before their deadline (time limit 300 s) would bring them back.
    spawn("worker", "--channels", "1", "--metrics-port", "0")
    results = client.wait(handles, timeout=30)
    client.close()
    assert [results[h.id].status for h in handles] == ["ok", "ok"]


def test_second_signal_stops_at_once(spawn, r, namespace, redis_url):
    (worker,), _ = start_system(spawn, r, namespace, worker_args=("--channels", "1", "--grace", "60"))
    client = client_for(redis_url, namespace)
    client.submit_many([("sleep", (30,), {})])
    wait_until(lambda: running_jobs(r, namespace) == 1, message="1 running job")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "stopping" in worker.output(), message="the first signal to be seen")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0  # well before the 60 s grace and the 30 s job
    client.close()


def test_sigterm_while_subscribing_drains_and_deregisters(spawn, r, namespace):
    # The heartbeat is written before the 10,000 channels are subscribed: a SIGTERM in that window
    # (a supervisor dying, systemd stopping a unit that just started) must still drain.
    worker = spawn("worker", "--channels", "10000", "--metrics-port", "0")
    wait_until(lambda: status(r, namespace)["workers"], interval=0.001, message="the registration")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert status(r, namespace)["workers"] == []
