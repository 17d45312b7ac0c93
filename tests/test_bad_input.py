"""Malformed messages are rejected with a log line; the worker goes on serving."""

import json

import pytest

from helpers import client_for, start_system
from geventsched.keys import Keys

MALFORMED = {
    "invalid_json": b"{not json",
    "bad_version": json.dumps({"v": 99, "id": "1", "task": "noop"}).encode(),
    "not_utf8": b"\xff\xfe\xfa",
    "empty": b"",
    "too_large": b"x" * (5 * 1024 * 1024),
    "missing_field": json.dumps({"v": 1, "task": "noop"}).encode(),
    "not_an_object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_message_is_rejected_and_worker_goes_on(spawn, r, namespace, redis_url, reason):
    (worker,), master = start_system(spawn, r, namespace, worker_args=("--channels", "1"))
    receivers = r.publish(Keys(namespace).dispatch_channel(1), MALFORMED[reason])
    assert receivers == 1
    client = client_for(redis_url, namespace)
    assert client.submit("echo", "still here").result(timeout=20) == "still here"
    client.close()
    assert worker.process.poll() is None
    log = worker.output()
    assert f"rejected a message on {namespace}:CHANNEL_DISPATCH_1: {reason}" in log
    assert "Traceback" not in log


def test_unserialisable_return_value_becomes_an_error(spawn, r, namespace, redis_url, tmp_path):
    (tmp_path / "weird_tasks.py").write_text(
        "from geventsched.registry import App\napp = App()\n\n"
        "@app.task(name='weird')\ndef weird():\n    return object()\n")
    start_system(spawn, r, namespace, worker_args=("--channels", "1", "--app", "weird_tasks"), cwd=tmp_path)
    client = client_for(redis_url, namespace)
    result = client.submit("weird").wait(timeout=20)
    client.close()
    assert result.status == "error" and result.error["type"] == "EncodeError"
