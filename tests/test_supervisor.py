"""``geventsched worker --processes N``: the node supervisor, with real processes against the test Redis."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import gevent
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli, wait_until
from geventsched import nodemetrics, supervisor
from geventsched.channels import parse_channels
from geventsched.cli import build_parser
from geventsched.client import Client
from geventsched.embedded import free_port
from geventsched.errors import ConfigError, GeventschedError
from geventsched.keys import Keys
from geventsched.store import Store

# -- pure parts ------------------------------------------------------------------------------------


def test_channels_are_split_into_contiguous_disjoint_parts():
    channels = [str(n) for n in range(1, 11)]
    assert supervisor.split_channels(channels, 2) == [("1", "2", "3", "4", "5"), ("6", "7", "8", "9", "10")]
    parts = supervisor.split_channels(channels, 3)
    assert [len(p) for p in parts] == [3, 3, 4]
    assert [c for part in parts for c in part] == channels
    with pytest.raises(ValueError):
        supervisor.split_channels(["1"], 2)


def test_a_part_goes_to_the_child_as_a_compact_spec_that_parses_back():
    part = ("1", "2", "3", "5", "jobs-x", "7", "8", "CHANNEL_DISPATCH_9")
    spec = supervisor.format_channels(part)
    assert spec == "1-3,5,jobs-x,7-8,CHANNEL_DISPATCH_9"
    assert tuple(parse_channels(spec)) == part
    many = tuple(str(n) for n in range(1, 200_001))
    assert supervisor.format_channels(many) == "1-200000"


def test_a_child_gets_every_worker_option_but_its_own_channels_processes_and_metrics():
    given = build_parser().parse_args([
        "worker", "--processes", "3", "--channels", "1-6,x", "--app", "one", "--app", "two",
        "--namespace=-ns", "--concurrency", "7", "--grace", "2.5", "--codec", "raw", "--raw-task", "noop",
        "--durability", "none", "--max-payload", "4096", "--log-level", "DEBUG", "--metrics-port", "9999"])
    argv = supervisor.child_argv(given, ("4", "5", "6"), 12345)
    assert argv[:4] == [sys.executable, "-m", "geventsched", "worker"]
    child = build_parser().parse_args(argv[3:])
    assert child.channels == ("4", "5", "6") and child.processes == 1
    assert (child.metrics_port, child.metrics_addr) == (12345, "127.0.0.1")
    for dest, value in vars(given).items():
        if dest not in supervisor.PER_CHILD:
            assert getattr(child, dest) == value, dest
    assert not any("redis" in arg for arg in argv)  # the URL (maybe with a password) goes in the environment


def test_restarts_back_off_and_give_up_after_young_exits_in_a_row():
    policy = supervisor.RestartPolicy()
    assert [policy.delay(n) for n in range(6)] == [0.0, 0.0, 0.5, 1.0, 2.0, None]


def test_weather_restarts_back_off_to_5s_at_most_and_never_give_up():
    policy = supervisor.RestartPolicy()
    assert [policy.weather_delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


#: A child that notes its start in the file argv[1], then exits with status argv[3] if it is one of the
#: first argv[2] starts, else serves (sleeps) until stopped.
FLAKY_CHILD = """
import sys, time
with open(sys.argv[1], "a+") as f:
    f.write("start\\n")
    f.seek(0)
    starts = len(f.readlines())
if starts <= int(sys.argv[2]):
    sys.exit(int(sys.argv[3]))
time.sleep(60)
"""


def flaky_node(tmp_path, failures, code, **policy):
    starts = tmp_path / "starts"
    starts.touch()
    node = supervisor.Supervisor(
        [("1",)], lambda channels, port: [sys.executable, "-c", FLAKY_CHILD, str(starts), str(failures), str(code)],
        policy=supervisor.RestartPolicy(**{"backoff": (0.0,), "max_young_exits": 3, **policy}), metrics=False)
    return node, lambda: len(starts.read_text().splitlines())


def test_a_child_that_exits_tempfail_is_restarted_until_it_serves_and_said_so_once(tmp_path, caplog):
    node, starts = flaky_node(tmp_path, 8, supervisor.EXIT_TEMPFAIL, weather_backoff=(0.01, 0.05))
    run = gevent.spawn(node.run)

    def serving():  # the 9th child: 8 "try again later" in a row are more than max_young_exits
        if run.dead:
            run.get()  # the node gave up: its error fails the test
        return starts() == 9 and node.running == 1

    wait_until(serving, timeout=30, message="the 9th child serving")
    node.request_stop()
    assert run.get(timeout=10) == 0
    lines = [record.getMessage() for record in caplog.records if record.name == "geventsched.supervisor"]
    assert not any("giving up" in line for line in lines), lines
    assert sum("trying again, every 0.05s at most" in line for line in lines) == 1, lines
    assert node.slots[0].young_exits == 0


def test_a_child_that_keeps_crashing_young_still_makes_the_node_give_up(tmp_path):
    node, starts = flaky_node(tmp_path, 8, 1)
    run = gevent.spawn(node.run)
    with pytest.raises(GeventschedError, match="died 3 times in a row"):
        run.get(timeout=30)
    assert starts() == 3


def test_node_metrics_name_each_family_once_and_label_every_sample_with_its_process():
    text = ('# HELP geventsched_worker_jobs_finished_total Jobs run.\n'
            '# TYPE geventsched_worker_jobs_finished_total counter\n'
            'geventsched_worker_jobs_finished_total{task="echo",status="ok"} %d\n'
            '# HELP geventsched_worker_loop_lag_seconds Lag.\n'
            '# TYPE geventsched_worker_loop_lag_seconds histogram\n'
            'geventsched_worker_loop_lag_seconds_bucket{le="+Inf"} 1.0\n'
            'geventsched_worker_loop_lag_seconds_sum 0.5\n'
            'geventsched_worker_loop_lag_seconds_count 1.0\n')
    registry = CollectorRegistry()
    families = nodemetrics.merge_families([("0", text % 3), ("1", text % 4), ("2", "not { metrics")])

    class Fixed:
        def collect(self):
            return families

    registry.register(Fixed())
    out = generate_latest(registry).decode()
    assert out.count("# HELP geventsched_worker_jobs_finished_total ") == 1
    assert out.count("# TYPE geventsched_worker_loop_lag_seconds histogram") == 1
    assert 'geventsched_worker_jobs_finished_total{process="1",status="ok",task="echo"} 4.0' in out
    assert 'geventsched_worker_loop_lag_seconds_count{process="0"} 1.0' in out
    assert 'process="2"' not in out


def test_a_node_starts_without_redis_and_frees_leases_once_redis_answers(redis_url, r, namespace, caplog):
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    args = build_parser().parse_args(["worker", "--processes", "2", "--channels", "1-4", "--redis-url", nobody,
                                      "--namespace", namespace])
    node = supervisor.node_from_args(args)  # no Redis there: still a node
    assert node.reaper(os.getpid()) == [] and node.reaper.orphans(["1"]) == []
    assert "cannot free the channels of pid" in caplog.text and f"127.0.0.1:{nobody.split(':')[2]}" in caplog.text
    with pytest.raises(ConfigError):  # a URL that can never work is still one clear error at once
        supervisor.node_from_args(build_parser().parse_args(["worker", "--processes", "2", "--channels", "1-4",
                                                             "--redis-url", "http://localhost/"]))

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    store, keys = Store(r, Keys(namespace)), Keys(namespace)

    def register(worker_id, pid, channels, host=socket.gethostname()):
        beat = json.dumps({"id": worker_id, "host": host, "pid": pid})
        assert store.register_worker(worker_id, beat, 60, [keys.dispatch_channel(c) for c in channels]) == {}

    register("dead-here", gone.pid, ["1", "2"])
    register("dead-elsewhere", gone.pid, ["3"], host="another-host")
    register("alive-here", os.getpid(), ["4"])
    register("dead-here-other-channels", gone.pid, ["9"])
    reaper = supervisor.LeaseReaper.from_url(redis_url, namespace)  # connects when it first needs Redis
    assert reaper.orphans(["1", "2", "3", "4"]) == ["dead-here"]
    assert set(live_workers(r, namespace)) == {"dead-elsewhere", "alive-here", "dead-here-other-channels"}
    assert "dead-here" in store.workers()  # still listed: the master's cue to re-queue its jobs


def test_a_silent_redis_does_not_hold_up_the_reaper(namespace, caplog, monkeypatch):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    try:
        monkeypatch.setattr(supervisor, "REAP_TIMEOUT", 0.5)
        reaper = supervisor.LeaseReaper.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", namespace)
        began = time.monotonic()
        assert reaper(12345) == []
        assert time.monotonic() - began < 3  # a hang guard: else 5 s to connect, forever on a silent connection
        assert "no answer within 0.5s" in caplog.text
    finally:
        silent.close()


# -- a node of real processes ----------------------------------------------------------------------


def start_node(spawn, *args, processes=2, channels="10"):
    return spawn("worker", "--processes", str(processes), "--channels", channels, *args)


def live_workers(r, namespace):
    return {w: beat for w, beat in Store(r, Keys(namespace)).workers().items() if beat is not None}


def channels_by_worker(r, namespace):
    live = live_workers(r, namespace)
    out = defaultdict(set)
    for channel, worker_id in Store(r, Keys(namespace)).channel_owners().items():
        if worker_id in live:
            out[worker_id].add(channel)
    return dict(out)


def dispatch(namespace, numbers):
    keys = Keys(namespace)
    return {keys.dispatch_channel(n) for n in numbers}


def scrape(port):
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text, name):
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


@pytest.fixture
def client(redis_url, namespace):
    client = Client.from_url(redis_url, namespace)
    yield client
    client.close()


def test_two_processes_split_the_channels_run_jobs_and_share_one_metrics_endpoint(spawn, r, namespace, client):
    port = free_port()
    start_node(spawn, "--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
    wait_until(lambda: len(channels_by_worker(r, namespace)) == 2, timeout=20, message="two workers")
    parts = list(channels_by_worker(r, namespace).values())
    assert [len(part) for part in parts] == [5, 5]
    assert parts[0] | parts[1] == dispatch(namespace, range(1, 11)) and not parts[0] & parts[1]
    assert dispatch(namespace, range(1, 6)) in parts and dispatch(namespace, range(6, 11)) in parts

    spawn("master", "--metrics-port", "0")
    handles = client.submit_many([("echo", [i], {}) for i in range(200)], timeout=5)
    results = client.wait(handles, timeout=60)
    assert len(results) == 200 and all(result.ok for result in results.values())

    text = scrape(port)
    finished = samples(text, "geventsched_worker_jobs_finished_total")
    assert {s.labels["process"] for s in finished} == {"0", "1"}
    assert sum(s.value for s in finished) == 200
    assert samples(text, "geventsched_node_processes")[0].value == 2
    helps = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))


def test_a_killed_process_is_restarted_on_its_channels_and_every_job_completes(spawn, r, namespace, client):
    start_node(spawn, "--metrics-port", "0")
    wait_until(lambda: len(live_workers(r, namespace)) == 2, timeout=20, message="two workers")
    spawn("master", "--metrics-port", "0")
    before = client.submit_many([("sleep", [0.2], {}) for _ in range(60)], timeout=2)
    wait_until(lambda: Store(r, Keys(namespace)).counts()["in_flight"] >= 20, message="jobs in flight")
    victim_id, victim = sorted(live_workers(r, namespace).items())[0]
    victim_channels = channels_by_worker(r, namespace)[victim_id]

    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    after = client.submit_many([("sleep", [0.2], {}) for _ in range(60)], timeout=2)

    def successor():
        return [w for w, chans in channels_by_worker(r, namespace).items()
                if w != victim_id and chans == victim_channels]

    wait_until(successor, timeout=10, interval=0.01, message="the successor's registration")
    back_after = time.monotonic() - killed
    results = client.wait(before + after, timeout=60)
    assert len(results) == 120 and all(result.ok for result in results.values())
    assert back_after < 10, back_after  # a hang guard; typically well under a second


def node_running_jobs(spawn, r, namespace, client, seconds, count=20):
    """A two-process node and a master, with ``count`` sleep jobs of ``seconds`` running on it."""
    node = start_node(spawn, "--metrics-port", "0")
    wait_until(lambda: len(live_workers(r, namespace)) == 2, timeout=20, message="two workers")
    spawn("master", "--metrics-port", "0")
    handles = client.submit_many([("sleep", [seconds], {}) for _ in range(count)], timeout=10)
    wait_until(lambda: sum(b.get("running", 0) for b in live_workers(r, namespace).values()) == count,
               message="all jobs running")
    return node, handles


def test_sigterm_drains_every_process_and_the_node_exits_0(spawn, r, namespace, client):
    node, handles = node_running_jobs(spawn, r, namespace, client, seconds=1.5)
    pids = [beat["pid"] for beat in live_workers(r, namespace).values()]

    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0, node.output()
    results = client.wait(handles, timeout=5)
    assert len(results) == 20 and all(result.ok for result in results.values())  # finished, not handed back
    assert not Store(r, Keys(namespace)).workers()  # every child deregistered
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "all worker processes exited" in node.output()


def test_a_process_that_cannot_start_makes_the_node_give_up_with_one_line(spawn):
    node = start_node(spawn, "--app", "no_such_module", "--metrics-port", "0", channels="4")
    assert node.wait(60) == 1
    output = node.output()
    last = output.strip().splitlines()[-1]
    assert last.startswith("geventsched worker: error: worker process ") and "giving up" in last, output
    assert "Traceback" not in output


def test_more_processes_than_channels_is_a_usage_error(redis_url):
    done = run_cli("worker", "--processes", "3", "--channels", "2", "--redis-url", redis_url)
    assert done.returncode == 2 and "--processes 3 needs at least 3 channels" in done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_processes_auto_runs_one_per_cpu_but_no_more_than_the_channels(spawn, r, namespace):
    cpus = os.cpu_count() or 1
    spawn("worker", "--processes", "auto", "--channels", str(cpus + 1), "--metrics-port", "0")
    wait_until(lambda: len(channels_by_worker(r, namespace)) == cpus, timeout=20, message="one worker per CPU")
    node = spawn("worker", "--processes", "auto", "--channels", "900-900", "--metrics-port", "0")
    wait_until(lambda: dispatch(namespace, [900]) <= set().union(*channels_by_worker(r, namespace).values()),
               timeout=20, message="the one-channel worker")
    assert "node:" not in node.output()  # one channel: one process, no supervisor


def running(pid):
    """True while ``pid`` runs here; a zombie (dead, not reaped yet) does not count."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def subscribers(r, channels):
    return sum(count for _, count in r.pubsub_numsub(*channels))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux only")
def test_the_processes_die_with_a_killed_supervisor_and_leave_no_subscriber(spawn, r, namespace, client):
    node = start_node(spawn, "--metrics-port", "0", "--grace", "60")
    wait_until(lambda: len(live_workers(r, namespace)) == 2, timeout=20, message="two workers")
    spawn("master", "--metrics-port", "0")
    client.submit_many([("sleep", [60], {}) for _ in range(4)], timeout=90)
    wait_until(lambda: sum(b.get("running", 0) for b in live_workers(r, namespace).values()) == 4,
               message="all jobs running")  # a child that drained would run on for a minute
    children = [beat["pid"] for beat in live_workers(r, namespace).values()]
    assert all(running(pid) for pid in children) and len(set(children)) == 2

    node.process.kill()
    node.wait(10)
    wait_until(lambda: not any(running(pid) for pid in children), timeout=3, message="no child left running")
    wait_until(lambda: subscribers(r, dispatch(namespace, range(1, 11))) == 0, timeout=3,
               message="no subscriber left on the node's channels")


def test_a_node_restarted_after_kill_9_takes_its_channels_at_once_and_the_jobs_come_back(spawn, r, namespace,
                                                                                          client):
    first, handles = node_running_jobs(spawn, r, namespace, client, seconds=3)
    dead = set(live_workers(r, namespace))

    first.process.kill()
    first.wait(10)
    second = start_node(spawn, "--metrics-port", "0")
    wait_until(lambda: len(set(live_workers(r, namespace)) - dead) == 2, timeout=20, message="the new node")
    owners = channels_by_worker(r, namespace)
    assert set(owners) - dead == set(owners) and set().union(*owners.values()) == dispatch(namespace, range(1, 11))
    results = client.wait(handles, timeout=30)
    assert len(results) == 20 and all(result.ok for result in results.values())
    output = second.output()
    assert "held by live worker" not in output and "restarting it" not in output, output  # no child refused


def test_a_second_sigterm_hard_stops_every_process_and_the_node_still_exits_0(spawn, r, namespace, client):
    node = start_node(spawn, "--metrics-port", "0")
    wait_until(lambda: len(live_workers(r, namespace)) == 2, timeout=20, message="two workers")
    spawn("master", "--metrics-port", "0")
    client.submit_many([("sleep", [60], {}) for _ in range(10)], timeout=90)
    wait_until(lambda: sum(b.get("running", 0) for b in live_workers(r, namespace).values()) == 10,
               message="all jobs running")

    node.signal(signal.SIGTERM)
    wait_until(lambda: node.output().count(": stopping, ") == 2, message="both processes draining")
    node.signal(signal.SIGTERM)
    assert node.wait(15) == 0, node.output()
    counts = Store(r, Keys(namespace)).counts()
    assert counts["finished"]["ok"] == 0 and counts["in_flight"] + counts["queued"] == 10  # handed back
