"""Exit codes and error lines: 2 for usage errors, 1 for runtime errors, never a traceback."""

import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from conftest import run_cli, wait_until, workers_registered
from faults import RestartableRedis
from geventsched import transport
from geventsched.client import Client
from geventsched.embedded import EmbeddedRedis, free_port
from geventsched.keys import Keys
from geventsched.store import Store

#: A 64-bit integer is the largest the job codec carries; this one is not.
HUGE = str(1 << 70)


def usage_error_line(done):
    """The error line of a command that must fail as a usage error: exit 2, no traceback, at most a
    one-line usage hint before the one error line."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) in (1, 2), done.stderr
    if len(lines) == 2:
        assert lines[0].startswith("usage: ") and "--help" in lines[0], done.stderr
    assert lines[-1].startswith("geventsched") and ": error: " in lines[-1], done.stderr
    return lines[-1]


def runtime_error_line(done):
    """The single stderr line of a command that must fail with exit 1 and no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["worker", "--concurrency", "0"],
    ["worker", "--channels", "5-2"],
    ["worker", "--codec", "pickle"],
    ["master", "--strategy", "fastest"],
    ["submit"],
    ["submit", "echo", "not-json"],
    ["submit", "echo", "--kwargs", "[1]"],
    ["submit", "echo", "--count", "-3"],
    ["submit", "echo", "--max-retries", "-1"],
    ["submit", "echo", HUGE],
    ["submit", "echo", "NaN"],
    ["submit", "echo", "1e400"],
    ["submit", "echo", "--kwargs", '{"x": [Infinity]}'],
    ["submit", "echo", "--kwargs", '{"x": -%s}' % HUGE],
    ["submit", "echo", "[" * 300 + "]" * 300],  # deeper than the job codec nests
    ["submit", "echo", "[" * 50_000 + "]" * 50_000],  # deeper than Python's json module reads
    ["submit", "echo", "--no-such-option"],
    ["worker", "--metrics-port", "99999"],
    ["master", "--metrics-port", "-1"],
    ["bench", "--jobs", "many"],
    ["nosuchcommand"],
    [],
])
def test_bad_arguments_exit_2_with_one_error_line(args):
    done = run_cli(*args, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    usage_error_line(done)


@pytest.mark.parametrize("args, says", [
    (["submit", "echo", "--max-retries", "-1"], "must be 0 or more"),
    (["worker", "--metrics-port", "99999"], "0..65535"),
    (["master", "--deadline-slack", "-1"], "must be a number >= 0"),
    (["submit", "echo", HUGE], "64"),
    (["submit", "echo", "NaN"], "NaN"),
    (["submit", "echo", "not-json"], """quote strings: '"not-json"'"""),
])
def test_usage_errors_say_what_is_wrong(args, says):
    line = usage_error_line(run_cli(*args, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"))
    assert says in line


@pytest.mark.parametrize("text", ['{"x": 1', "[1, 2", '"open', "12a"])
def test_broken_json_gets_no_quoting_hint(text):
    """Quoting text that was meant as JSON would not make it the JSON meant: say what is broken."""
    line = usage_error_line(run_cli("submit", "echo", text, "--redis-url", f"redis://127.0.0.1:{free_port()}/0"))
    assert "quote" not in line and "not a JSON value" in line, line


@pytest.mark.parametrize("line", [b'{"args": [1]}', b'{"task": "echo", "args": ["\xff"]}',
                                  b'{"task": "echo", "args": [%s]}' % HUGE.encode(),
                                  b'{"task": "echo", "kwargs": {"x": NaN}}', b'{"task": "echo"'])
def test_submit_file_with_a_bad_line_submits_nothing(tmp_path, r, redis_url, namespace, line):
    bad = tmp_path / "jobs.jsonl"
    bad.write_bytes(b'{"task": "echo"}\n' + line + b'\n{"task": "noop"}\n')
    done = run_cli("submit", "--file", str(bad), "--redis-url", redis_url, "--namespace", namespace)
    error = usage_error_line(done)
    assert f"{bad}:2:" in error and "nothing was submitted" in error
    assert r.llen(Keys(namespace, cluster=transport.is_cluster(r)).intake) == 0


@pytest.mark.parametrize("command", [["status"], ["submit", "noop"], ["requeue-dead"]])
def test_unreachable_redis_exits_1_with_one_line(command):
    done = run_cli(*command, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], done.stderr


@pytest.mark.parametrize("role", ["worker", "master"])
def test_a_role_started_before_redis_waits_for_it_saying_so_once(role, spawn, tmp_path):
    """Services ride out a Redis that is not up yet (a deploy, an outage): a supervisor or systemd that
    restarts them would otherwise count the exits and give up."""
    server = RestartableRedis(tmp_path / "redis")  # its port, not yet listening
    proc = spawn(role, "--redis-url", server.url, "--metrics-port", "0", namespaced=False)
    time.sleep(2)
    assert proc.process.poll() is None, proc.output()
    waiting = [line for line in proc.output().splitlines() if "waiting for Redis" in line]
    assert len(waiting) == 1 and "cannot reach Redis" in waiting[0], proc.output()
    server.start()
    try:
        wait_until(lambda: "registered" in proc.output() or "channels" in proc.output(), timeout=15,
                   message=f"the {role} to start once Redis answers")
        assert proc.process.poll() is None, proc.output()
    finally:
        server.stop()


def test_bad_url_exits_1_with_one_line():
    done = run_cli("status", "--redis-url", "http://example.invalid/0")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "bad Redis URL" in done.stderr


BENCH = ["bench", "--jobs", "10", "--channels", "1", "--durability", "none"]  # short, should it run


@pytest.mark.parametrize("command", [["status"], ["submit", "noop"], ["requeue-dead"], ["worker"], ["master"],
                                     BENCH])
@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/abc",
                                 "redis://127.0.0.1:{port}/1.5", "redis://127.0.0.1:{port}/-1",
                                 "redis://127.0.0.1:{port}/0?no_such_option=1"])
def test_a_bad_redis_url_is_refused_before_anything_runs(redis_url, command, url):
    """Also where something answers: neither the embedded server of ``bench`` nor database 0."""
    bad = url.format(port=urlsplit(redis_url).port)
    line = runtime_error_line(run_cli(*command, "--redis-url", bad, timeout=20))
    assert f"bad Redis URL {bad!r}" in line, line


def test_bench_runs_on_its_own_server_when_nothing_answers_at_a_valid_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(*BENCH, "--redis-url", url)
    assert done.returncode == 0, done.stderr
    assert f"no Redis answers at {url}; using an embedded server" in done.stderr


def test_the_database_of_a_url_may_be_given(redis_url):
    base = redis_url.rsplit("/", 1)[0]
    for url in (base, base + "/", base + "/3"):
        done = run_cli("status", "--json", "--redis-url", url)
        assert done.returncode == 0, (url, done.stderr)


def test_metrics_port_that_cannot_be_bound_exits_1_with_one_line(redis_url, namespace):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (["worker"], ["master"]):
            done = run_cli(*command, "--redis-url", redis_url, "--namespace", namespace,
                           "--metrics-addr", "127.0.0.1", "--metrics-port", str(port), timeout=30)
            assert f"cannot serve metrics on 127.0.0.1:{port}" in runtime_error_line(done)
    # An address that is not this machine's (TEST-NET-1) cannot be bound either.
    done = run_cli("worker", "--redis-url", redis_url, "--namespace", namespace,
                   "--metrics-addr", "192.0.2.1", "--metrics-port", str(free_port()), timeout=30)
    assert "cannot serve metrics on 192.0.2.1" in runtime_error_line(done)


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


def test_requeue_dead_says_how_many_it_requeued(r, redis_url, namespace):
    done = run_cli("requeue-dead", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0 and done.stdout.strip() == "0 dead jobs re-queued", done.stdout
    keys = Keys(namespace, cluster=transport.is_cluster(r))
    client = Client(r, namespace)
    client.submit_many([("noop", (), {})] * 3)
    store = Store(r, keys)
    assert len(store.claim(3, grace=-10)) == 3  # dispatched, and already past the deadline
    assert len(store.reap(max_attempts=1)[1]) == 3  # out of attempts: dead-lettered
    done = run_cli("requeue-dead", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0 and done.stdout.strip() == "3 dead jobs re-queued", done.stdout
    assert r.llen(keys.intake) == 3 and r.llen(keys.dead) == 0


def wait_without_result(redis_url, namespace, task="noop"):
    """``submit TASK --wait`` that gets no result: exit 1; returns its stderr lines after the one
    that says so."""
    done = run_cli("submit", task, "--wait", "--timeout", "1", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].endswith(f"({task}): no result within 1s"), done.stderr
    return lines[1:]


def test_no_result_with_nothing_running_says_so(redis_url, namespace):
    assert wait_without_result(redis_url, namespace) == ["hint: no worker is registered; no master is active"]


def test_no_result_without_a_master_says_so(spawn, r, redis_url, namespace):
    spawn("worker", "--channels", "1", "--metrics-port", "0")
    wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
    assert wait_without_result(redis_url, namespace) == ["hint: no master is active"]


def test_no_result_for_a_task_no_worker_lists_says_so(spawn, r, redis_url, namespace):
    """Workers that list their tasks in their heartbeat (``tasks``) tell which task none of them has."""
    keys = Keys(namespace, cluster=transport.is_cluster(r))
    beat = {"id": "w1", "host": "elsewhere", "pid": 1, "concurrency": 1, "running": 0, "queued": 0, "free": 1,
            "capacity": 1, "channels": 1, "codec": "json", "durability": "redis", "started": 0, "beat": 0,
            "tasks": ["echo", "noop"]}
    assert Store(r, keys).register_worker("w1", json.dumps(beat), 60, [keys.dispatch_channel(1)]) == {}
    spawn("master", "--metrics-port", "0")
    wait_until(lambda: r.exists(keys.master), timeout=20, message="an active master")
    assert wait_without_result(redis_url, namespace, "report") == ["hint: no live worker lists task report"]
