"""Cancelling jobs in every state: scheduled, queued, claimed by the master, running in a greenlet or in
the thread pool, finished, unknown; a notice lost with a worker's connection; the command line.

Master and workers run in this process (``test_hardening``'s ``system``), on a private Redis. What the
tests check is what a user relies on: a cancelled job never runs or stops within a second, its result is
``cancelled``, recorded and counted once, its waiting client is told, and the slot it held comes back.
"""

import logging
import time

import gevent
import pytest
from gevent import monkey
from prometheus_client import generate_latest

from conftest import run_cli, wait_until
from geventsched import cli, metrics, transport
from geventsched.config import WorkerConfig
from geventsched.errors import Cancelled, JobFailed
from geventsched.hooks import MasterHooks, WorkerHooks
from geventsched.lookup import job_info
from geventsched.store import Store
from geventsched.worker import Worker
from test_hardening import _registry, app, stored_result, system  # noqa: F401 (system: a fixture)
from test_silent_network import proxy, quick_health_checks  # noqa: F401 (fixtures)

events = []  # what the tasks below did: ("start" | "end" | "interrupted", token)
_blocking_sleep = monkey.get_original("time", "sleep")  # sleeps in its thread, not in the hub


@app.task(name="hard.nap")
def nap(token, seconds=0.0):
    events.append(("start", token))
    try:
        gevent.sleep(seconds)
    except Cancelled:
        events.append(("interrupted", token))
        raise
    events.append(("end", token))
    return token


@app.task(name="hard.block", blocking=True)
def block(token, seconds):
    events.append(("start", token))
    _blocking_sleep(seconds)
    events.append(("end", token))
    return token


@pytest.fixture(autouse=True)
def _fresh_events():
    events.clear()


@pytest.fixture
def redis_url(request):
    """One private server; a 3-primary cluster for the tests marked ``on_a_cluster_too`` (the cancel
    channel is sharded there, and the worker subscribes it on its own shard)."""
    return request.getfixturevalue("redis_cluster" if getattr(request, "param", "") == "cluster" else "redis_server")


on_a_cluster_too = pytest.mark.parametrize("redis_url", ["server", "cluster"], indirect=True)


def did(what, token):
    return (what, token) in events


def finished_counts(system):
    return {status.decode(): int(n) for status, n in system.redis.hgetall(system.keys.finished).items()}


class _WorkerSeen(WorkerHooks):
    def __init__(self):
        self.received = []

    def on_received(self, jobs):
        self.received += [job.id for job in jobs]


class _MasterSeen(MasterHooks):
    def __init__(self):
        self.finished = []

    def on_finished(self, finished):
        self.finished += [(job.id, status) for job, status, _ in finished]


# -- before it runs ------------------------------------------------------------------------------------

@on_a_cluster_too
def test_a_queued_job_never_runs_and_its_waiting_client_is_told(system):
    client = system.client()
    handle = client.submit("hard.nap", "queued")
    waiter = gevent.spawn(handle.wait, 10)
    gevent.sleep(0.05)  # the waiter is waiting
    assert handle.cancel() == "cancelled"
    result = waiter.get(timeout=5)
    assert result.status == "cancelled" and result.error["type"] == "Cancelled"
    with pytest.raises(JobFailed, match="Cancelled: cancelled before it ran"):
        handle.result(1)
    assert system.redis.llen(system.keys.intake) == 0 and not system.redis.hexists(system.keys.jobs, handle.id)
    # A copy of the id left on the intake (as a hand-back racing the cancel would leave it) is dropped unrun.
    system.redis.rpush(system.keys.intake, handle.id)
    system.worker()
    system.master()
    assert client.submit("hard.nap", "after").result(10) == "after"
    assert not did("start", "queued")
    assert finished_counts(system) == {"cancelled": 1, "ok": 1}
    assert stored_result(system, handle.id)["job"]["args"] == ["queued"]  # it can still be looked up


def test_a_scheduled_job_never_runs(system):
    client = system.client()
    handle = client.submit("hard.nap", "scheduled", _delay=0.5)
    assert system.redis.zscore(system.keys.scheduled, handle.id) is not None
    assert handle.cancel() == "cancelled"
    assert system.redis.zcard(system.keys.scheduled) == 0
    system.worker()
    system.master()
    gevent.sleep(0.7)  # its time comes and goes: the master's timer finds nothing to promote
    assert client.submit("hard.nap", "after").result(10) == "after"
    assert not did("start", "scheduled")
    assert handle.wait(1).status == "cancelled"


def test_a_queued_job_of_a_priority_and_a_unique_key_is_cancelled_whole(system):
    client = system.client()
    handle = client.submit("hard.nap", "keyed", _priority=5, _unique_key="nightly")
    assert handle.cancel() == "cancelled"
    assert system.redis.llen(system.keys.intake_for(5)) == 0
    assert not system.redis.hexists(system.keys.priority, handle.id)
    assert client.submit("hard.nap", "again", _unique_key="nightly").id != handle.id  # the key is free
    assert system.redis.lrange(system.keys.done, 0, -1) == [handle.id.encode()]  # listed among the finished
    info = job_info(Store.for_namespace(system.redis, system.namespace), handle.id)
    assert (info["state"], info["status"], info["task"], info["args"], info["priority"], info["unique_key"]) == (
        "finished", "cancelled", "hard.nap", ["keyed"], 5, "nightly")
    assert info["error"]["type"] == "Cancelled" and info["finished"] >= info["submitted"]


def test_a_job_the_master_claimed_is_dropped_unsent(system):
    seen = _WorkerSeen()
    system.worker(hooks=seen)
    master_seen = _MasterSeen()
    master = system.master(start=False, hooks=master_seen)
    assert master.open()
    client = system.client()
    handle = client.submit("hard.nap", "claimed")
    master._claim()  # claimed (in flight, no dispatch yet), waiting for its turn to be sent
    assert [job.id for job in master.pending] == [handle.id]
    assert handle.cancel() == "cancelled"
    assert system.redis.zcard(system.keys.inflight) == 0
    wait_until(lambda: master._take(master._subscriber.read(0.1)) or not master.pending,
               message="the master hearing of the cancel")
    master.run_once(timeout=0.3)
    assert len(master.ledger) == 0 and handle.id not in seen.received
    assert master_seen.finished == [(handle.id, "cancelled")]
    assert not did("start", "claimed")


def test_a_job_claimed_by_a_master_that_died_never_runs(system):
    client = system.client()
    handle = client.submit("hard.nap", "orphan")
    store = Store.for_namespace(system.redis, system.namespace)
    assert [job_id for job_id, _, _ in store.claim(1)] == [handle.id]  # then the master was killed -9
    assert handle.cancel() == "cancelled"
    system.worker()
    system.master()  # its reaper would bring the claim back within seconds: nothing is left to bring
    assert store.reap(5, now=time.time() + 3600) == ([], [])
    assert client.submit("hard.nap", "after").result(10) == "after"
    assert not did("start", "orphan")


def test_a_job_sent_as_its_cancel_ran_is_dropped_by_the_worker(system):
    seen = _WorkerSeen()
    system.worker(hooks=seen)
    master = system.master(start=False)
    assert master.open()
    client = system.client()
    handle = client.submit("hard.nap", "raced", 5)
    master._claim()
    assert handle.cancel() == "cancelled"
    master._dispatch()  # sent all the same: the master has not read the cancel's announcement yet
    wait_until(lambda: handle.id in seen.received, message="the dispatch reaching the worker")
    wait_until(lambda: master.run_once(timeout=0.1) is not None and len(master.ledger) == 0,
               message="the master freeing the slot")
    # The worker drops it unrun and clears the dispatch record the master wrote after the cancel.
    wait_until(lambda: not system.redis.hexists(system.keys.dispatched, handle.id), message="the record cleared")
    gevent.sleep(0.2)
    assert not did("start", "raced")
    assert finished_counts(system) == {"cancelled": 1}
    assert system.redis.llen(system.keys.intake) == 0


# -- while it runs -------------------------------------------------------------------------------------

@on_a_cluster_too
def test_a_running_job_stops_within_a_second_and_its_slot_comes_back(system):
    registry = metrics.new_registry()
    worker_metrics = metrics.WorkerMetrics(registry, ["hard.nap"])
    master_registry = metrics.new_registry()
    master_metrics = metrics.MasterMetrics(master_registry, ["hard.nap"])
    worker = system.worker(concurrency=1, hooks=worker_metrics)
    master = system.master(hooks=master_metrics)
    client = system.client()
    handle = client.submit("hard.nap", "long", 60)
    wait_until(lambda: did("start", "long"), message="the job running")
    waiter = gevent.spawn(handle.wait, 10)
    gevent.sleep(0.05)
    clock = time.monotonic()
    assert handle.cancel() == "cancelled"
    result = waiter.get(timeout=5)
    told = time.monotonic() - clock
    wait_until(lambda: did("interrupted", "long"), timeout=1.0, message="the task interrupted")
    wait_until(lambda: worker.runners.running == 0 and len(master.ledger) == 0, timeout=1.0,
               message="the runner and the master's slot free")
    stopped = time.monotonic() - clock
    assert result.status == "cancelled" and result.error["message"] == "cancelled while running"
    assert told < 1.0 and stopped < 1.0
    # The worker's only slot serves the next job.
    assert client.submit("hard.nap", "next").result(5) == "next"
    assert not did("end", "long")
    stored = stored_result(system, handle.id)
    assert stored["status"] == "cancelled" and stored["worker"] == worker.id and stored["t0"] <= stored["t1"]
    assert finished_counts(system) == {"cancelled": 1, "ok": 1}
    for key in (system.keys.inflight, system.keys.dispatched, system.keys.jobs):
        assert not system.redis.exists(key), key
    # Counted once on each side.
    assert 'geventsched_master_jobs_finished_total{status="cancelled",task="hard.nap"} 1.0' in \
        generate_latest(master_registry).decode()
    assert 'geventsched_worker_jobs_finished_total{status="cancelled",task="hard.nap"} 1.0' in \
        generate_latest(registry).decode()


def test_a_task_in_the_thread_pool_is_recorded_cancelled_and_its_late_result_dropped(system):
    worker = system.worker(concurrency=2, threads=2)
    system.master()
    client = system.client()
    handle = client.submit("hard.block", "thread", 1.0)
    wait_until(lambda: did("start", "thread"), message="the thread running")
    assert handle.cancel() == "cancelled"
    assert handle.wait(1).status == "cancelled"
    wait_until(lambda: worker.runners.running == 0, timeout=1.0, message="the runner letting go")
    wait_until(lambda: did("end", "thread"), timeout=5, message="the thread ending on its own")
    gevent.sleep(0.3)  # a late result would be written by now
    assert stored_result(system, handle.id)["status"] == "cancelled"
    assert finished_counts(system) == {"cancelled": 1}
    assert client.submit("hard.nap", "next").result(5) == "next"


def test_a_worker_that_missed_the_cancel_stops_the_job_after_reconnecting(system, proxy, quick_health_checks,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="geventsched.worker")
    # The worker reaches Redis through a proxy that can go silent (its commands time out after 1 s).
    worker = Worker(WorkerConfig(channels=("1",), namespace=system.namespace, concurrency=2, heartbeat_ttl=10.0,
                                 grace=0.5),
                    transport.connect(proxy.url(query="socket_timeout=1")), _registry())
    system.workers.append(worker)
    assert worker.start()
    system.master()
    client = system.client()
    handle = client.submit("hard.nap", "missed", 60)
    wait_until(lambda: did("start", "missed"), message="the job running")
    assert proxy.silence() >= 2  # the cancel's notice goes down a dead path
    assert handle.cancel() == "cancelled"
    assert handle.wait(1).status == "cancelled"
    assert not did("interrupted", "missed")
    wait_until(lambda: did("interrupted", "missed"), timeout=20, message="the job stopped after the reconnect")
    wait_until(lambda: worker.runners.running == 0, timeout=2, message="the runner free")
    assert "1 jobs it held lost their dispatch while its connection was down" in caplog.text
    assert finished_counts(system) == {"cancelled": 1}


# -- too late, or nothing to cancel ------------------------------------------------------------------

def test_a_finished_or_dead_job_says_finished_and_nothing_changes(system):
    client = system.client()
    # A dead letter (claimed, then past its deadline with no attempt left) is "finished" ...
    dead = client.submit("hard.nap", "dead")
    store = Store.for_namespace(system.redis, system.namespace)
    assert [job_id for job_id, _, _ in store.claim(1)] == [dead.id]
    assert store.reap(1, now=time.time() + 3600) == ([], [dead.id])
    assert dead.cancel() == "finished"
    # ... also once its result has expired and no master has trimmed it yet.
    system.redis.delete(system.keys.result(dead.id))
    assert client.cancel([dead.id, "no-such-job"]) == {dead.id: "finished", "no-such-job": "unknown"}
    assert system.redis.lrange(system.keys.dead, 0, -1) == [dead.id.encode()]
    assert system.redis.hexists(system.keys.jobs, dead.id)

    system.worker()
    system.master()
    handle = client.submit("hard.nap", "done")
    assert handle.result(10) == "done"
    before = system.redis.get(system.keys.result(handle.id)), finished_counts(system)
    assert handle.cancel() == "finished"
    assert (system.redis.get(system.keys.result(handle.id)), finished_counts(system)) == before
    assert before[1] == {"dead": 1, "ok": 1}


def test_the_command_line_cancels_and_submit_wait_says_so(system, redis_url, namespace, capsys):
    client = system.client()
    queued = client.submit("hard.nap", "cli")
    out = run_cli("cancel", queued.id, "no-such-job", "--redis-url", redis_url, "--namespace", namespace)
    assert (out.returncode, out.stdout.splitlines(), out.stderr) == (
        1, [f"{queued.id} cancelled", "no-such-job unknown"], "")
    common = ["--redis-url", redis_url, "--namespace", namespace]
    assert cli.main(["cancel", queued.id, *common]) == 0
    assert capsys.readouterr().out == f"{queued.id} finished\n"

    # submit --wait on a job cancelled while it runs: exit 1, and one line saying so.
    system.worker()
    system.master()

    def cancel_it():
        wait_until(lambda: did("start", "waited"), message="the job running")
        job_id = next(i.decode() for i in system.redis.hkeys(system.keys.jobs))
        assert client.cancel([job_id]) == {job_id: "cancelled"}
        return job_id

    canceller = gevent.spawn(cancel_it)
    assert cli.main(["submit", "hard.nap", '"waited"', "60", "--wait", "--timeout", "10", *common]) == 1
    job_id = canceller.get(timeout=5)
    assert capsys.readouterr().err.splitlines() == [f"job {job_id} (hard.nap) cancelled while running"]
