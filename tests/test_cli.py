"""Exit codes and error lines: 2 for usage errors, 1 for runtime errors, never a traceback."""

import pytest

from conftest import run_cli, wait_until, workers_registered
from geventsched.embedded import EmbeddedRedis, free_port


@pytest.mark.parametrize("args", [
    ["worker", "--concurrency", "0"],
    ["worker", "--channels", "5-2"],
    ["worker", "--codec", "pickle"],
    ["master", "--strategy", "fastest"],
    ["submit"],
    ["submit", "echo", "not-json"],
    ["submit", "echo", "--kwargs", "[1]"],
    ["submit", "echo", "--count", "-3"],
    ["nosuchcommand"],
])
def test_bad_arguments_exit_2_with_a_usage_line(args):
    done = run_cli(*args, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2, done.stderr
    assert "usage:" in done.stderr
    assert "Traceback" not in done.stderr


def test_submit_file_with_a_bad_line_exits_2(tmp_path):
    bad = tmp_path / "jobs.jsonl"
    bad.write_text('{"task": "echo"}\n{"args": [1]}\n')
    done = run_cli("submit", "--file", str(bad), "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2
    assert f"{bad}:2:" in done.stderr


@pytest.mark.parametrize("command", [["status"], ["submit", "noop"], ["worker"], ["master"], ["requeue-dead"]])
def test_unreachable_redis_exits_1_with_one_line(command):
    done = run_cli(*command, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], done.stderr


def test_bad_url_exits_1_with_one_line():
    done = run_cli("status", "--redis-url", "http://example.invalid/0")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "bad Redis URL" in done.stderr


def test_wrong_password_exits_1_and_hides_the_password():
    with EmbeddedRedis(extra_args=["--requirepass", "s3cret"]) as server:
        url = f"redis://:wrong-pass@127.0.0.1:{server.port}/0"
        done = run_cli("status", "--redis-url", url)
        assert done.returncode == 1
        assert len(done.stderr.strip().splitlines()) == 1
        assert "refused the credentials" in done.stderr and "wrong-pass" not in done.stderr
        good = run_cli("status", "--json", "--redis-url", f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert good.returncode == 0, good.stderr


def test_channel_held_by_a_live_worker_is_refused(spawn, r, namespace, redis_url):
    spawn("worker", "--channels", "1-3", "--metrics-port", "0")
    wait_until(workers_registered(r, namespace), message="first worker")
    second = spawn("worker", "--channels", "3-4", "--metrics-port", "0")
    assert second.wait(30) == 1
    assert "channel " + namespace + ":CHANNEL_DISPATCH_3 is held by live worker" in second.output()


def test_more_processes_than_channels_is_a_usage_error(redis_url):
    done = run_cli("worker", "--processes", "2", "--redis-url", redis_url)
    assert done.returncode == 2 and "--processes" in done.stderr


def test_requeue_dead_prints_a_count(redis_url, namespace):
    done = run_cli("requeue-dead", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0 and done.stdout.strip() == "0"
