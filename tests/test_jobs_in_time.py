"""Delayed jobs, priorities, unique keys and the job lookup, with master and workers in this process on a
private Redis (the ``system`` fixture of test_hardening)."""

import json
import time

import gevent
import pytest

from conftest import run_cli, wait_until
from geventsched.lookup import job_info, list_jobs
from geventsched.store import Store
from test_hardening import runs, system  # noqa: F401 (a fixture)


def store_of(system):  # noqa: F811
    return Store(system.redis, system.keys)


def cli(system, *args):  # noqa: F811
    return run_cli(*args, "--redis-url", system.url, "--namespace", system.namespace)


# -- delayed jobs --------------------------------------------------------------------------------------

def test_a_delayed_job_is_scheduled_until_its_time_and_never_starts_early(system):  # noqa: F811
    system.worker()
    system.master()
    client = system.client()
    before = time.time()
    handle = client.submit("echo", "later", _delay=1.0)
    info = job_info(store_of(system), handle.id)
    assert info["state"] == "scheduled" and info["due"] >= before + 1.0
    assert handle.result(10) == "later"
    info = job_info(store_of(system), handle.id)
    assert info["state"] == "finished" and info["status"] == "ok" and info["result"] == "later"
    assert info["started"] >= info["due"], "the job started before its time"
    assert info["args"] == ["later"] and info["submitted"] >= before


def test_a_job_at_a_time_runs_then_and_one_in_the_far_past_is_refused(system):  # noqa: F811
    system.worker()
    system.master()
    client = system.client()
    due = time.time() + 0.5
    assert client.submit("echo", 1, _at=due).result(10) == 1
    with pytest.raises(ValueError, match="in the past"):
        client.submit("echo", 1, _at=time.time() - 3600)
    with pytest.raises(ValueError, match="not both"):
        client.submit("echo", 1, _at=due, _delay=1)


def test_delayed_jobs_wait_in_redis_through_a_master_restart(system):  # noqa: F811
    system.worker()
    first = system.master()
    client = system.client()
    handles = client.submit_many([("echo", [i], {}) for i in range(50)], delay=0.5)
    first.stop()  # nothing of the schedule lived in its memory
    assert system.redis.zcard(system.keys.scheduled) == 50
    system.master()
    assert [h.result(10) for h in handles] == list(range(50))


def test_submit_delay_on_the_command_line_and_bad_times_exit_2(system):  # noqa: F811
    system.worker()
    system.master()
    done = cli(system, "submit", "echo", '"x"', "--delay", "0.5", "--wait", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '"x"'
    for bad in (["--delay", "-1"], ["--at", "2001-01-01T00:00:00+00:00"], ["--at", "tomorrow"],
                ["--at", "2030-01-01T00:00:00"], ["--priority", "10"], ["--unique-key", ""]):
        done = cli(system, "submit", "echo", "1", *bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert [line for line in done.stderr.splitlines() if "error:" in line] == [done.stderr.splitlines()[-1]]
    assert system.redis.hlen(system.keys.jobs) == 0, "a refused submit stored something"


# -- priorities ------------------------------------------------------------------------------------------

def test_higher_priorities_are_dispatched_first(system):  # noqa: F811
    client = system.client()
    low = client.submit_many([("hard.count", [f"low{i}"], {}) for i in range(20)])
    high = client.submit_many([("hard.count", [f"high{i}"], {}) for i in range(5)], priority=9)
    middle = client.submit("hard.count", "middle", _priority=4)
    assert store_of(system).queued_by_priority()[9] == 5
    system.worker(concurrency=1)
    system.master()
    for handle in [*low, *high, middle]:
        handle.result(20)
    order = [token for _, token in runs]
    assert order[:6] == [f"high{i}" for i in range(5)] + ["middle"]
    assert order[6:] == [f"low{i}" for i in range(20)]


def test_a_requeued_job_goes_back_to_its_own_priority(system):  # noqa: F811
    client = system.client()
    store = store_of(system)
    handle = client.submit("echo", 1, _priority=7)
    (claimed,) = store.claim(10)
    assert claimed[0] == handle.id
    assert store.requeue([(handle.id, None)], trusted=True) == 1
    assert system.redis.lrange(system.keys.intake_for(7), 0, -1) == [handle.id.encode()]


# -- unique keys -------------------------------------------------------------------------------------------

def test_one_unique_key_under_50_concurrent_submitters_gives_one_job(system):  # noqa: F811
    client = system.client()
    ids = set()

    def submit():
        ids.add(system.client().submit("hard.count", "u", 0.2, _unique_key="report:42").id)

    gevent.joinall([gevent.spawn(submit) for _ in range(50)], raise_error=True)
    assert len(ids) == 1
    assert system.redis.hlen(system.keys.jobs) == 1
    system.worker()
    system.master()
    (job_id,) = ids
    wait_until(lambda: job_info(store_of(system), job_id)["state"] == "finished")
    again = client.submit("hard.count", "u", _unique_key="report:42")  # finished: the key is free
    assert again.id != job_id and again.result(10) == "u"
    assert system.redis.hlen(system.keys.unique) == 0


def test_the_command_line_prints_the_holder_of_a_unique_key(system):  # noqa: F811
    first = cli(system, "submit", "echo", "1", "--unique-key", "k")
    second = cli(system, "submit", "echo", "2", "--unique-key", "k", "--delay", "5")
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stdout.strip()


# -- the job lookup -----------------------------------------------------------------------------------------

def test_job_shows_every_state(system):  # noqa: F811
    client = system.client()
    store = store_of(system)
    scheduled = client.submit("echo", 1, _delay=60)
    queued = client.submit("echo", 2, _priority=3)
    assert job_info(store, scheduled.id)["state"] == "scheduled"
    info = job_info(store, queued.id)
    assert (info["state"], info["priority"], info["task"], info["args"]) == ("queued", 3, "echo", [2])
    assert job_info(store, "no-such-job") is None

    system.worker(channels=("7",))
    system.master()
    running = client.submit("hard.count", "r", 30)
    wait_until(lambda: job_info(store, running.id)["state"] == "running")
    info = job_info(store, running.id)
    assert info["worker"] == system.workers[0].id and info["channel"].endswith("CHANNEL_DISPATCH_7")
    assert info["started"] is not None and info["finished"] is None

    failed = client.submit("fail", "on purpose")
    failed.wait(10)
    info = job_info(store, failed.id)
    assert (info["state"], info["status"], info["error"]["type"]) == ("finished", "error", "TaskFailure")
    assert "on purpose" in info["error"]["traceback"]
    assert info["worker"] == system.workers[0].id and info["finished"] >= info["started"]

    done = cli(system, "job", failed.id)
    assert done.returncode == 0 and "TaskFailure: on purpose" in done.stdout and "Traceback" in done.stdout
    done = cli(system, "job", queued.id, "--json")
    assert json.loads(done.stdout)["state"] in ("queued", "running", "finished")
    done = cli(system, "job", "nope")
    assert done.returncode == 1 and done.stderr.count("\n") == 1


def test_a_dead_job_is_shown_dead_and_listed(system):  # noqa: F811
    client = system.client()
    store = store_of(system)
    handle = client.submit("echo", 1)
    store.claim(1)
    assert store.reap(1, now=time.time() + 3600) == ([], [handle.id])
    info = job_info(store, handle.id)
    assert (info["state"], info["error"]["type"], info["args"]) == ("dead", "DeadLetter", [1])
    assert list_jobs(store, "dead") == (1, [info])


def test_lists_page_through_each_state(system):  # noqa: F811
    client = system.client()
    store = store_of(system)
    client.submit_many([("echo", [i], {}) for i in range(30)])
    client.submit_many([("noop", [], {}) for _ in range(5)], priority=2)
    total, page = list_jobs(store, "queued", offset=0, limit=10)
    assert total == 35 and [i["task"] for i in page] == ["noop"] * 5 + ["echo"] * 5
    total, page = list_jobs(store, "queued", offset=30, limit=10)
    assert total == 35 and [i["args"] for i in page] == [[i] for i in range(25, 30)]
    assert list_jobs(store, "queued", task="noop")[0] == 5
    with pytest.raises(ValueError):
        list_jobs(store, "lost")


def test_finished_jobs_are_listed_newest_first_and_forgotten_with_their_results(system):  # noqa: F811
    system.worker()
    system.master()
    client = system.client()
    for i in range(3):
        client.submit("echo", i).result(10)
    store = store_of(system)
    total, page = list_jobs(store, "finished", offset=0, limit=2)
    assert total == 3 and [info["args"] for info in page] == [[2], [1]]
    assert [info["args"] for info in list_jobs(store, "finished", offset=2, limit=2)[1]] == [[0]]
    assert list_jobs(store, "finished", offset=5, limit=2) == (3, [])
    oldest = list_jobs(store, "finished", offset=2, limit=1)[1][0]["id"]
    system.redis.delete(system.keys.result(oldest))  # its TTL ran out
    assert store.trim_done() == 1 and store.trim_done() == 0
    assert list_jobs(store, "finished")[0] == 2
