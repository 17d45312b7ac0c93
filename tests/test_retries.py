"""Failed jobs run again with backoff, up to max_retries (per task, or per job); then the error stands."""

import json

import pytest

from conftest import on_one_server_and_a_cluster, run_cli
from helpers import client_for, start_system, status

TASKS = '''
import os
from geventsched.registry import App

app = App(prefix="")


def runs(name):
    """Count this run in a file named after the job's marker; return the count so far."""
    with open(name, "a") as f:
        f.write("x")
    return os.path.getsize(name)


@app.task(max_retries=3, retry_backoff=0.05)
def flaky(marker, failures):
    if runs(marker) <= failures:
        raise RuntimeError("not yet")
    return "done"


@app.task(retry_backoff=0.05)
def plain(marker):
    runs(marker)
    raise RuntimeError("always")
'''



@pytest.fixture(params=["server", "cluster"])
def redis_url(request):
    return on_one_server_and_a_cluster(request)


def system(spawn, r, namespace, tmp_path):
    (tmp_path / "retry_tasks.py").write_text(TASKS)
    start_system(spawn, r, namespace, worker_args=("--channels", "2", "--app", "retry_tasks"), cwd=tmp_path)


def test_job_that_fails_twice_succeeds_on_the_third_run(spawn, r, namespace, redis_url, tmp_path):
    system(spawn, r, namespace, tmp_path)
    client = client_for(redis_url, namespace)
    assert client.submit("flaky", "a", 2).result(timeout=30) == "done"
    client.close()
    assert (tmp_path / "a").read_text() == "xxx"
    snap = status(r, namespace)
    assert snap["finished"] == {"ok": 1, "error": 0, "timeout": 0, "cancelled": 0, "dead": 0}
    assert snap["retrying"] == 0 and snap["in_flight"] == 0


def test_out_of_retries_the_last_error_is_the_result(spawn, r, namespace, redis_url, tmp_path):
    system(spawn, r, namespace, tmp_path)
    client = client_for(redis_url, namespace)
    result = client.submit("flaky", "b", 10).wait(timeout=30)
    client.close()
    assert result.status == "error" and result.error["message"] == "not yet"
    assert (tmp_path / "b").read_text() == "xxxx"  # the first run and 3 retries
    assert status(r, namespace)["finished"]["error"] == 1


def test_a_job_can_ask_for_retries_its_task_does_not_have(spawn, r, namespace, redis_url, tmp_path):
    system(spawn, r, namespace, tmp_path)
    client = client_for(redis_url, namespace)
    once, twice = client.submit_many([("plain", ("c",), {})]), client.submit_many([("plain", ("d",), {})],
                                                                                   max_retries=1)
    results = client.wait(once + twice, timeout=30)
    client.close()
    assert {result.status for result in results.values()} == {"error"}
    assert (tmp_path / "c").read_text() == "x"
    assert (tmp_path / "d").read_text() == "xx"


def test_cli_max_retries(spawn, r, namespace, redis_url, tmp_path):
    system(spawn, r, namespace, tmp_path)
    done = run_cli("submit", "plain", json.dumps(str(tmp_path / "e")), "--max-retries", "2", "--wait",
                   "--timeout", "30", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 1 and "RuntimeError: always" in done.stderr
    assert (tmp_path / "e").read_text() == "xxx"
