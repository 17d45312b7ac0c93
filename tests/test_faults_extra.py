"""More fault injection with real processes: the worker's subscriber connection killed by Redis
(``CLIENT KILL``), two masters started at the same moment, and garbage of every kind on a dispatch
channel. Each test has a Redis of its own (``private_redis``; ``spawn``, ``r`` and ``namespace``
follow it through the ``redis_url`` override below), so ``CLIENT LIST`` shows only its processes.

Timeouts are hang guards. Jobs get short time limits (``timeout=2``) where a lost message can only
come back through the master's deadline (time limit + ``store.DEADLINE_SLACK``).
"""

import json
import time
from collections import Counter

import pytest

from conftest import wait_until, workers_registered
from faults import HERE, Stopwatch, executions, metric, metrics, report
from helpers import Spy, client_for, dispatch_names, status
from geventsched.embedded import EmbeddedRedis, free_port
from geventsched.keys import Keys
from geventsched.metrics import REJECT_REASONS
from geventsched.protocol import DISPATCH_ROOM
from geventsched.config import DEADLINE_SLACK

SHORT = 2.0
DEADLINE_GUARD = SHORT + DEADLINE_SLACK + 15.0


@pytest.fixture
def private_redis():
    with EmbeddedRedis(start_timeout=20) as server:
        yield server


@pytest.fixture
def redis_url(private_redis):
    return private_redis.url


def settled(r, namespace):
    snap = status(r, namespace)
    return snap if snap["in_flight"] == 0 and snap["queued"] == 0 else None


# -- the worker's subscriber is killed mid-run --------------------------------------------------------


def subscribers(r):
    """``{id: number of channels}`` of the connections subscribed to anything."""
    return {c["id"]: int(c["sub"]) for c in r.client_list() if int(c.get("sub", 0)) > 0}


def test_client_kill_of_the_workers_subscriber_mid_run_every_job_runs_and_finishes_once(
        spawn, r, namespace, redis_url, tmp_path):
    log = str(tmp_path / "runs.log")
    wport, mport = free_port(), free_port()
    # 3 channels: the worker's subscriber is the only connection with sub=4, its 3 and the cancel channel
    # (the master's has 2: its result and wake-up channels; a client's has 1, its reply channel).
    worker = spawn("worker", "--channels", "1-3", "--concurrency", "5", "--app", "faults",
                   "--metrics-port", str(wport), "--metrics-addr", "127.0.0.1", cwd=HERE)
    wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
    spawn("master", "--metrics-port", str(mport), "--metrics-addr", "127.0.0.1")
    (victim,) = wait_until(lambda: [i for i, n in subscribers(r).items() if n == 4], timeout=10,
                           message="the worker's subscriber")
    (collector,) = wait_until(lambda: [i for i, n in subscribers(r).items() if n == 2], timeout=20,
                              message="the master's result subscriber")

    n = 300
    client = client_for(redis_url, namespace)
    # ~3 s of work at concurrency 5: the kill comes with jobs running, queued in the worker, and on
    # their way to it.
    handles = client.submit_many([("faults.record", (log, f"t{i}", 0.05), {}) for i in range(n)], timeout=SHORT)
    wait_until(lambda: status(r, namespace)["finished"]["ok"] >= 60, timeout=30, message="60 jobs done")
    r.execute_command("CLIENT", "KILL", "ID", victim)
    clock = Stopwatch()
    done_at_kill = status(r, namespace)["finished"]["ok"]
    assert done_at_kill < n, "not a kill mid-run"

    wait_until(lambda: "resubscribed" in worker.output(), timeout=10, message="the worker to resubscribe")
    assert victim not in subscribers(r)
    results = client.wait(handles, timeout=DEADLINE_GUARD)
    recovery = clock()
    client.close()
    missing = [h.id for h in handles if h.id not in results]
    assert not missing, f"{len(missing)} jobs have no result; Redis: {status(r, namespace)}"
    assert all(res.ok for res in results.values()), [res for res in results.values() if not res.ok][:3]

    snap = wait_until(lambda: settled(r, namespace), timeout=10, message="nothing queued or in flight")
    assert {k: v for k, v in snap["finished"].items() if v} == {"ok": n}, snap
    runs = executions(log)
    assert sorted(runs) == sorted(f"t{i}" for i in range(n)), f"{n - len(runs)} jobs never ran"
    twice = {token: pids for token, pids in runs.items() if len(pids) != 1}
    assert not twice, f"jobs run more than once: {dict(list(twice.items())[:5])}"
    assert metric(wport, "geventsched_worker_reconnects_total", what="subscriber") == 1
    assert collector in subscribers(r), "the master's result subscriber was cut too: the test killed the wrong one"
    lost = metric(mport, "geventsched_master_jobs_redispatched_total", reason="deadline")
    report("client_kill_worker_subscriber", recovery_s=recovery, done_at_kill=done_at_kill,
           lost_and_reaped=int(lost))


# -- two masters at once ------------------------------------------------------------------------------


def test_two_masters_started_at_once_dispatch_each_job_once(spawn, r, namespace, redis_url):
    spawn("worker", "--channels", "1-2", "--metrics-port", "0")
    wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
    keys = Keys(namespace)
    names = dispatch_names(namespace, [1, 2])
    # The worker subscribed before the spy does: a PUBLISH heard by the spy alone would count as delivered.
    wait_until(lambda: [n for _, n in r.pubsub_numsub(*names)] == [1, 1], timeout=20,
               message="the worker to subscribe")
    spy = Spy(redis_url, names, keys.result_channel)
    client = client_for(redis_url, namespace)
    n, cap = 300, 5
    # Queued before either master runs, and trickled out (--prefetch 5 per channel, jobs of 10 ms):
    # two active masters would both be dispatching for the whole run.
    handles = client.submit_many([("sleep", (0.01,), {})] * n)
    assert r.get(keys.master) is None
    ports = [free_port(), free_port()]
    masters = [spawn("master", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--prefetch", str(cap))
               for port in ports]
    try:
        results = client.wait(handles, timeout=30)
    finally:
        client.close()
        spy.close()
    assert len(results) == n and all(res.ok for res in results.values())
    assert sum(spy.counts.values()) == n and len(spy.channel_of) == n, \
        f"{sum(spy.counts.values())} dispatches of {len(spy.channel_of)} distinct jobs ({n} submitted)"
    assert settled(r, namespace)["finished"]["ok"] == n
    # One master did all of it: the other dispatched nothing, and no channel ever held more than one
    # master's cap (each master keeps its own table of free slots).
    dispatched = sorted(metric(port, "geventsched_master_jobs_dispatched_total") for port in ports)
    assert dispatched == [0, n], f"jobs dispatched by each master: {dispatched}"
    assert max(spy.max_outstanding.values()) <= cap, dict(spy.max_outstanding)
    # The one that lost the race says so at its first try; both keep running.
    clock = Stopwatch()
    while clock() < 10 and not any("standing by" in m.output() for m in masters):
        time.sleep(0.05)
    standing_by = [m for m in masters if "standing by" in m.output()]
    assert len(standing_by) == 1, [m.output()[-500:] for m in masters]
    assert all(m.process.poll() is None for m in masters), [m.output()[-500:] for m in masters]


# -- garbage on a dispatch channel ----------------------------------------------------------------------


def doc(**fields):
    return json.dumps({"v": 1, "id": "garbage", "task": "echo", **fields}).encode()


GARBAGE = [
    ("invalid_json", b"{not json"),
    ("invalid_json", b'{"v": 1, "id": "garbage", "task": "echo"'),
    ("invalid_json", b'{"v": 1, "id": "garbage", "task": "echo", "args": [NaN]}'),
    ("bad_version", doc(v=3)),
    ("bad_field", doc(v=2)),  # a version-2 message is a batch frame: this one has no jobs
    ("bad_version", doc(v="1")),
    ("bad_version", json.dumps({"id": "garbage", "task": "echo"}).encode()),
    ("not_utf8", b"\xff\xfe\xfa"),
    ("not_utf8", b'{"v": 1, "id": "garbage\xc3", "task": "echo"}'),
    ("empty", b""),
    ("too_large", b"x" * (5 << 20)),
    ("too_large", doc(args=["x" * ((1 << 20) + DISPATCH_ROOM)])),  # over what a dispatch of the largest job takes
    ("not_an_object", b"[1, 2, 3]"),
    ("not_an_object", json.dumps([{"v": 1, "id": "garbage", "task": "echo"}]).encode()),
    ("not_an_object", b'"text"'),
    ("not_an_object", b"null"),
    ("missing_field", json.dumps({"v": 1, "task": "echo"}).encode()),
    ("missing_field", json.dumps({"v": 1, "id": "garbage"}).encode()),
    ("bad_field", doc(id=7)),
    ("bad_field", doc(id="")),
    ("bad_field", doc(task=None)),
    ("bad_field", doc(args="x")),
    ("bad_field", doc(kwargs=[1])),
    ("bad_field", doc(timeout=-1)),
    ("bad_field", doc(timeout="5")),
    ("bad_field", doc(timeout=True)),
    ("bad_field", doc(ts="yesterday")),
    ("bad_field", doc(reply=3)),
    ("bad_field", doc(key=["k"])),
    ("bad_field", doc(max_retries=1001)),
    ("bad_field", doc(max_retries=1.5)),
]

REJECTED = "geventsched_worker_messages_rejected_total"


def rejected(port):
    """``{reason: count}`` of every reason the worker counts (its fixed set, plus ``other``)."""
    out = {}
    for key, value in metrics(port).items():
        base, _, labels = key.partition("{")
        if base == REJECTED:
            out[labels.split('reason="', 1)[1].split('"', 1)[0]] = int(value)
    return out


def counted(port, total):
    counts = rejected(port)
    return counts if sum(counts.values()) >= total else None


def test_garbage_of_every_kind_is_counted_by_reason_and_the_worker_serves_on(spawn, r, namespace, redis_url):
    port = free_port()
    worker = spawn("worker", "--channels", "1", "--metrics-port", str(port), "--metrics-addr", "127.0.0.1")
    channel = Keys(namespace).dispatch_channel(1)
    # Subscribed, not only registered: a worker registers first, then subscribes.
    wait_until(lambda: r.pubsub_numsub(channel) == [(channel.encode(), 1)], timeout=20,
               message="the worker to subscribe")
    before = rejected(port)
    assert set(before) >= set(REJECT_REASONS) and not any(before.values()), before

    expected = Counter()
    for reason, data in GARBAGE:
        assert r.publish(channel, data) == 1
        expected[reason] += 1
        counts = wait_until(lambda: counted(port, sum(expected.values())), timeout=10,
                            message=f"the worker to count a {reason} message ({data[:60]!r})")
        assert counts[reason] == expected[reason], \
            f"{data[:80]!r}: expected reason {reason}, counted {dict((k, v) for k, v in counts.items() if v)}"
    assert {k: v for k, v in rejected(port).items() if v} == dict(expected)
    assert metric(port, "geventsched_worker_jobs_received_total") == 0

    spawn("master", "--metrics-port", "0")
    client = client_for(redis_url, namespace)
    assert client.submit("echo", "still here").result(timeout=20) == "still here"
    client.close()
    assert worker.process.poll() is None
    assert metric(port, "geventsched_worker_jobs_received_total") == 1
    assert "Traceback" not in worker.output()
