"""Worker + master + client, each in its own process, over a private Redis."""

import pytest

from conftest import on_one_server_and_a_cluster, run_cli, wait_until
from geventsched.errors import JobFailed
from helpers import client_for, start_system, status



@pytest.fixture(params=["server", "cluster"])
def redis_url(request):
    return on_one_server_and_a_cluster(request)


@pytest.fixture
def system(spawn, r, namespace, redis_url):
    workers, master = start_system(spawn, r, namespace)
    client = client_for(redis_url, namespace)
    yield client
    client.close()


def test_each_builtin_task_round_trips(system):
    assert system.submit("noop").result(timeout=20) is None
    assert system.submit("echo", {"nested": [1, 2.5, None, "é"], "ok": True}).result(timeout=20) == \
        {"nested": [1, 2.5, None, "é"], "ok": True}
    assert system.submit("sleep", 0.05).result(timeout=20) == 0.05
    assert system.submit("spin", 0.01).result(timeout=20) > 0


def test_failing_task_returns_type_message_and_traceback(system):
    with pytest.raises(JobFailed) as info:
        system.submit("fail", "boom").result(timeout=20)
    result = info.value.result
    assert result.status == "error"
    assert result.error["type"] == "TaskFailure"
    assert result.error["message"] == "boom"
    assert "raise TaskFailure" in result.error["traceback"]


def test_unknown_task_becomes_an_error_result(system):
    with pytest.raises(JobFailed) as info:
        system.submit("no.such.task", 1).result(timeout=20)
    assert info.value.result.error["type"] == "UnknownTask"


def test_job_over_its_time_limit_times_out(system):
    handle = system.submit_many([("sleep", (5,), {})], timeout=0.2)[0]
    result = handle.wait(timeout=20)
    assert result.status == "timeout"
    assert result.error["type"] == "JobTimeout"


def test_many_jobs_all_finish_and_are_counted_once(system, r, namespace):
    handles = system.submit_many([("echo", (i,), {}) for i in range(2000)])
    results = system.wait(handles, timeout=60)
    assert [results[h.id].value for h in handles] == list(range(2000))
    snap = wait_until(lambda: (s := status(r, namespace))["finished"]["ok"] == 2000 and s, timeout=10,
                      message="finished counts")
    assert snap["queued"] == 0 and snap["in_flight"] == 0


def test_result_that_arrived_before_waiting_is_still_returned(system):
    handle = system.submit("echo", "early")
    wait_until(lambda: system.store.get_results([handle.id])[0] is not None, message="stored result")
    assert handle.result(timeout=5) == "early"


def test_cli_submit_wait_prints_json_values_in_order(system, redis_url, namespace):
    done = run_cli("submit", "echo", '{"x": [1, "two"]}', "--count", "3", "--wait", "--timeout", "30",
                   "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['{"x": [1, "two"]}'] * 3


def test_cli_submit_wait_reports_failure_on_stderr_and_exits_1(system, redis_url, namespace):
    done = run_cli("submit", "fail", '"bad thing"', "--wait", "--timeout", "30",
                   "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 1
    assert "TaskFailure: bad thing" in done.stderr
    assert done.stdout == ""


def test_cli_submit_file_reads_json_lines(system, redis_url, namespace, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"task": "echo", "args": [1]}\n\n{"task": "echo", "kwargs": {"x": "k"}}\n')
    done = run_cli("submit", "--file", str(jobs), "--wait", "--timeout", "30",
                   "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1", '"k"']
    piped = run_cli("submit", "--file", "-", "--redis-url", redis_url, "--namespace", namespace,
                    input='{"task": "noop"}\n')
    assert piped.returncode == 0 and piped.stdout.strip().isdigit()


def test_status_json_shows_workers_channels_and_totals(system, redis_url, namespace):
    system.submit("noop").result(timeout=20)
    done = run_cli("status", "--json", "--redis-url", redis_url, "--namespace", namespace)
    import json

    snap = json.loads(done.stdout)
    assert len(snap["workers"]) == 1 and snap["workers"][0]["channels"] == 3
    assert snap["channels"] == 3
    assert snap["finished"]["ok"] == 1
    assert {"queued", "in_flight", "dead", "finished"} <= snap.keys()


def test_job_ids_are_unique_decimal_numbers_across_clients(system, redis_url, namespace):
    # Each client reserves ids from the counter in blocks: a submit is one round trip.
    other = client_for(redis_url, namespace)
    handles = [h for _ in range(3) for h in system.submit_many([("noop", (), {})] * 70) +
               other.submit_many([("noop", (), {})] * 70)]
    ids = [h.id for h in handles]
    assert all(i.isdecimal() for i in ids) and len(set(ids)) == len(ids) == 420
    results = system.wait([h for h in handles if h._client is system], timeout=30)
    results.update(other.wait([h for h in handles if h._client is other], timeout=30))
    other.close()
    assert len(results) == 420 and {r.status for r in results.values()} == {"ok"}
