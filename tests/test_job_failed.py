"""``JobFailed``, as the README promises it: the error's ``type``, ``message`` and ``traceback``, and
the job's ``result``, for a task that raised and for a job that was dead-lettered."""

import pytest

from helpers import client_for, start_system
from geventsched.errors import JobFailed
from geventsched.store import Store


def test_a_task_that_raised_gives_its_type_message_and_traceback(spawn, r, namespace, redis_url):
    start_system(spawn, r, namespace, worker_args=("--channels", "1"))
    client = client_for(redis_url, namespace)
    handle, = client.submit_many([("fail", ("out of paper",), {})], max_retries=0)
    with pytest.raises(JobFailed) as caught:
        handle.result(timeout=20)
    client.close()
    failed = caught.value
    assert failed.type == "TaskFailure"
    assert failed.message == "out of paper"
    assert "Traceback (most recent call last)" in failed.traceback and "raise TaskFailure" in failed.traceback
    assert failed.result.id == handle.id and failed.result.status == "error"
    assert str(failed) == "TaskFailure: out of paper"


def test_a_dead_letter_gives_its_reason_and_an_empty_traceback(r, redis_url, namespace):
    client = client_for(redis_url, namespace)
    handle = client.submit("noop")
    store = Store.for_namespace(r, namespace)
    assert [job[0] for job in store.claim(1, grace=-10)] == [handle.id]  # dispatched, already overdue
    assert store.reap(max_attempts=1)[1] == [handle.id]
    with pytest.raises(JobFailed) as caught:
        handle.result(timeout=10)
    client.close()
    failed = caught.value
    assert (failed.type, failed.message, failed.traceback) == ("DeadLetter", "no result after 1 attempts", "")
    assert failed.result.status == "dead"
