"""Fault injection: "no job is lost", with real processes and Redis servers these tests own.

Every test starts its own Redis (``private_redis``; ``spawn``, ``r`` and ``namespace`` follow it
through the ``redis_url`` override below), so a test can kill, pause or restart it. Faults are real:
``SIGKILL`` / ``SIGSTOP`` on worker and master processes, a Redis stopped and started again on the
same port (with ``--appendonly yes``, as a durable deployment runs it), Redis cutting off a slow
subscriber. Workers that need evidence of every execution import the task app in ``faults.py``.

Timeouts are hang guards, except ``RECOVERY_BOUND``: what a recovery driven by heartbeats (5 s TTL)
or reconnects may take, with room to spare. Each test prints ``FAULTS <name>: ...`` lines with what
it measured (``pytest -s`` shows them).

Jobs get short time limits (``timeout=2``) where a lost job can only come back through the master's
deadline (time limit + ``store.DEADLINE_SLACK`` = 30 s): that keeps those tests near 35 s. Their
sleeps stay short so that no runner adds up to 2 s of work: a worker's runner reuses one timer for
all its jobs, and that timer's budget is shared (see the last test of section 3).
"""

import signal
import time

import pytest

from conftest import run_cli, wait_until, workers_registered
from faults import (HERE, Stopwatch, count_lines, executions, free_port, master_view, metric,
                    report, status_json, subscribers_with)
from helpers import client_for, status
from geventsched.keys import Keys
from geventsched.lookup import job_info
from geventsched.store import Store
from geventsched.config import DEADLINE_SLACK

#: The workers' heartbeat TTL (WorkerConfig.heartbeat_ttl): a worker is thought dead this long after it
#: stopped beating, and the master looks once a second.
HEARTBEAT_TTL = 5.0
#: What a recovery that relies on heartbeats may take: TTL + discovery + re-dispatch, with room to spare.
RECOVERY_BOUND = 15.0
#: Time limit of the jobs of tests whose lost jobs only come back at their deadline.
SHORT = 2.0
DEADLINE_GUARD = SHORT + DEADLINE_SLACK + 20.0


@pytest.fixture
def redis_url(private_redis):
    return private_redis.url


AOF = pytest.mark.parametrize("private_redis", [("--appendonly", "yes")], indirect=True, ids=["aof"])


# -- shared steps ------------------------------------------------------------------------------------


def start_workers(spawn, r, namespace, *channel_specs, concurrency=1000, extra=(), app=False):
    """One worker per channel spec, all registered before this returns."""
    procs = [spawn("worker", "--metrics-port", "0", "--channels", spec, "--concurrency", str(concurrency),
                   *(("--app", "faults") if app else ()), *extra, cwd=HERE if app else None)
             for spec in channel_specs]
    wait_until(workers_registered(r, namespace, len(procs)), timeout=20, message="worker registration")
    return procs


def start_master(spawn, *extra):
    port = free_port()
    return spawn("master", "--metrics-port", str(port), *extra), port


def finished_ok(r, namespace):
    return int(r.hget(Keys(namespace).finished, "ok") or 0)


def mixed_jobs(n, seconds=0.05):
    """Mostly ``sleep seconds``, every fifth an ``echo``: (specs, expected values)."""
    specs = [("echo", (i,), {}) if i % 5 == 0 else ("sleep", (seconds,), {}) for i in range(n)]
    return specs, [i if i % 5 == 0 else seconds for i in range(n)]


def wait_stored(client, handles, timeout):
    """``client.wait`` for jobs whose results are not announced to this client (submitted with
    ``reply=False`` or by another client): it reads stored results each time it is called."""
    deadline = time.monotonic() + timeout
    results = {}
    while len(results) < len(handles) and time.monotonic() < deadline:
        results.update(client.wait([h for h in handles if h.id not in results], timeout=0.2))
    return results


def assert_all_ok(client, handles, expected, timeout, what, mport=None, stored=False):
    results = wait_stored(client, handles, timeout) if stored else client.wait(handles, timeout=timeout)
    missing = [h.id for h in handles if h.id not in results]
    if missing:
        redis_side = {k: v for k, v in status(client.redis, client.keys.namespace).items() if k != "workers"}
        raise AssertionError(f"{what}: {len(missing)} of {len(handles)} jobs have no result after {timeout}s "
                             f"(first: {missing[:5]}); Redis: {redis_side}; master: {master_view(mport)}")
    bad = [(h.id, results[h.id].status, results[h.id].error) for h in handles if not results[h.id].ok]
    assert not bad, f"{what}: jobs failed: {bad[:5]}"
    assert [results[h.id].value for h in handles] == expected


def assert_settled(r, redis_url, namespace, ok, dead=0):
    """Redis's own record agrees: each job counted once, nothing left queued or in flight."""
    wait_until(lambda: (s := status(r, namespace))["in_flight"] == 0 and s["queued"] == 0, timeout=10,
               message="in_flight and queued to drain")
    snap = status_json(run_cli, redis_url, namespace)
    assert nonzero(snap["finished"]) == nonzero({"ok": ok, "dead": dead}), snap
    assert (snap["queued"], snap["in_flight"], snap["dead"]) == (0, 0, dead), snap
    return snap


def nonzero(counts):
    return {k: v for k, v in counts.items() if v}


# -- 1. a worker is killed ---------------------------------------------------------------------------


def test_worker_kill9_mid_run_loses_no_job(spawn, r, namespace, redis_url):
    # Small concurrency, so the 500 jobs take a few seconds and the victim always has jobs running,
    # queued in its process, and announced to its channels.
    victim, survivor = start_workers(spawn, r, namespace, "1-3", "4-6", concurrency=10)
    master, mport = start_master(spawn)
    client = client_for(redis_url, namespace)
    specs, expected = mixed_jobs(500)
    handles = client.submit_many(specs)
    wait_until(lambda: finished_ok(r, namespace) >= 100, timeout=30, message="100 jobs done")

    victim.signal(signal.SIGKILL)
    clock = Stopwatch()
    assert_all_ok(client, handles, expected, RECOVERY_BOUND, "after worker SIGKILL", mport)
    recovery = clock()
    client.close()

    assert victim.wait(5) == -signal.SIGKILL
    # The fault did strand jobs: the master took them back from the dead worker (any reason counts).
    lost = metric(mport, "geventsched_master_jobs_redispatched_total")
    assert lost > 0, master.output()
    assert_settled(r, redis_url, namespace, ok=500)
    report("worker_kill9", recovery_s=recovery, requeued_from_dead_worker=int(lost))
    assert recovery < RECOVERY_BOUND


# -- 2. the master is killed -------------------------------------------------------------------------


def test_master_kill9_then_new_master_finishes_every_job(spawn, r, namespace, redis_url):
    # --prefetch 3: the master trickles jobs out, so at the kill most jobs are still in the intake and
    # a few are claimed or in flight.
    start_workers(spawn, r, namespace, "1-3", concurrency=10)
    first, _ = start_master(spawn, "--prefetch", "3")
    client = client_for(redis_url, namespace)
    specs, expected = mixed_jobs(200, 0.02)
    handles = client.submit_many(specs, timeout=SHORT)
    wait_until(lambda: finished_ok(r, namespace) >= 40, timeout=30, message="40 jobs done")

    first.signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    clock = Stopwatch()
    in_flight_at_kill = status(r, namespace)["in_flight"]
    _, mport = start_master(spawn, "--prefetch", "3")
    assert_all_ok(client, handles, expected, DEADLINE_GUARD, "after master SIGKILL", mport)
    recovery = clock()
    client.close()
    assert_settled(r, redis_url, namespace, ok=200)
    report("master_kill9", recovery_s=recovery, in_flight_at_kill=in_flight_at_kill)


def test_master_and_worker_lost_together_jobs_come_back_without_waiting_for_deadlines(
        spawn, r, namespace, redis_url):
    """A host running the master and a worker dies. The new master must re-dispatch what the dead
    worker held once its heartbeat is gone (as it does when only the worker dies: test 1), not only
    when each job's deadline passes (time limit + 30 s slack: 330 s with the default 300 s limit,
    which these jobs have)."""
    victim, _ = start_workers(spawn, r, namespace, "1-3", "4-6", concurrency=10)
    first, _ = start_master(spawn)
    client = client_for(redis_url, namespace)
    specs, expected = mixed_jobs(500)
    handles = client.submit_many(specs)
    wait_until(lambda: finished_ok(r, namespace) >= 100, timeout=30, message="100 jobs done")

    victim.signal(signal.SIGKILL)
    first.signal(signal.SIGKILL)
    clock = Stopwatch()
    assert first.wait(5) == -signal.SIGKILL and victim.wait(5) == -signal.SIGKILL
    _, mport = start_master(spawn)
    assert_all_ok(client, handles, expected, RECOVERY_BOUND, "after master+worker SIGKILL", mport)
    recovery = clock()
    client.close()
    assert_settled(r, redis_url, namespace, ok=500)
    report("master_and_worker_kill9", recovery_s=recovery)


# -- 3. Redis restarts -------------------------------------------------------------------------------


@AOF
def test_redis_restart_mid_run_everyone_reconnects_and_every_job_finishes(
        spawn, r, namespace, redis_url, private_redis):
    a, b = start_workers(spawn, r, namespace, "1-3", "4-6", concurrency=3)
    master, mport = start_master(spawn)
    submitter = client_for(redis_url, namespace)
    n = 300
    specs, expected = mixed_jobs(n)  # default time limit: this test waits for no deadline
    handles = submitter.submit_many(specs, reply=False)
    submitter.close()
    wait_until(lambda: finished_ok(r, namespace) >= 40, timeout=30, message="40 jobs done")

    # Down for a second: every connection breaks and every process goes through its retry loop.
    private_redis.restart(down_for=1.0)
    clock = Stopwatch()
    done_at_restart = finished_ok(r, namespace)
    assert 40 <= done_at_restart < n, f"not a restart mid-run ({done_at_restart} of {n} done)"
    # Nothing was lost with the append-only file: everything can finish about as fast as before.
    client = client_for(redis_url, namespace)
    assert_all_ok(client, handles, expected, RECOVERY_BOUND, "after Redis restart", mport, stored=True)
    recovery = clock()
    client.close()
    assert_settled(r, redis_url, namespace, ok=n)
    for worker in (a, b):
        assert "resubscribed" in worker.output(), worker.output()
    assert "lost the result connection" in master.output(), master.output()
    # Both workers serve again, with all their channels.
    wait_until(lambda: len(status(r, namespace)["workers"]) == 2 and status(r, namespace)["channels"] == 6,
               timeout=10, message="both workers registered with their 6 channels")
    client = client_for(redis_url, namespace)
    after = client.submit_many([("echo", (i,), {}) for i in range(60)])
    assert_all_ok(client, after, list(range(60)), RECOVERY_BOUND, "new jobs after the restart", mport)
    client.close()
    report("redis_restart", recovery_s=recovery, done_at_restart=done_at_restart)


@AOF
def test_redis_outage_longer_than_the_ttls_master_and_workers_carry_on(spawn, r, namespace, redis_url,
                                                                       private_redis):
    """Redis is away longer than the heartbeat and master-lease TTLs (5 s), so those keys expire
    meanwhile (the append-only file keeps absolute expiry times). Nobody else holds the lease: the
    master must carry on, the worker register again, and new jobs run."""
    (worker,) = start_workers(spawn, r, namespace, "1-3")
    master, mport = start_master(spawn)
    client = client_for(redis_url, namespace)
    assert client.submit("echo", "before").result(timeout=20) == "before"
    client.close()

    private_redis.restart(down_for=HEARTBEAT_TTL + 1.5)  # the fault needs the TTLs to run out
    clock = Stopwatch()
    wait_until(workers_registered(r, namespace, 1), timeout=RECOVERY_BOUND, message="the worker to register again")
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("echo", (i,), {}) for i in range(20)], timeout=SHORT)
    results = {}
    while len(results) < 20 and clock() < RECOVERY_BOUND and master.process.poll() is None:
        results.update(client.wait([h for h in handles if h.id not in results], timeout=0.5))
    client.close()
    report("redis_outage_past_ttls", seconds=clock(), results=len(results),
           master_exit=master.process.poll())
    assert master.process.poll() is None, \
        f"the master exited ({master.process.poll()}) after the outage:\n{master.output()[-800:]}"
    assert sorted(res.value for res in results.values()) == list(range(20)), \
        f"{20 - len(results)} of 20 new jobs have no result; master: {master_view(mport)}"
    assert worker.process.poll() is None


@AOF
def test_client_waiting_across_a_redis_restart_gets_its_results(spawn, r, namespace, redis_url, private_redis):
    start_workers(spawn, r, namespace, "1")
    start_master(spawn)
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("sleep", (1.0,), {})] * 5)  # subscribes its reply channel
    wait_until(lambda: status(r, namespace)["in_flight"] == 5, timeout=10, message="5 jobs in flight")
    private_redis.restart(down_for=0.5)
    try:
        results = client.wait(handles, timeout=30)
    finally:
        client.close()
    assert sorted(res.status for res in results.values()) == ["ok"] * 5


@AOF
def test_results_announced_while_the_master_is_away_do_not_leak_its_slots(
        spawn, r, namespace, redis_url, private_redis):
    """Redis restarts; the worker is back first and records its results, which it announces on
    CHANNEL_RESULT before the master has subscribed again. (Both retry on the same 0.1 s .. 5 s
    backoff, so after an outage of a few seconds either may win; pausing the master pins the
    order.) The master never hears of those jobs: with ``--prefetch`` their slots must not stay
    taken forever, or the channel stalls and every job behind them is stuck."""
    start_workers(spawn, r, namespace, "1")
    master, mport = start_master(spawn, "--prefetch", "2")
    client = client_for(redis_url, namespace)
    n = 12
    handles = client.submit_many([("sleep", (0.3,), {})] * n, reply=False)
    keys = Keys(namespace)
    wait_until(lambda: finished_ok(r, namespace) >= 2 and r.zcard(keys.inflight) == 2, timeout=20,
               message="2 jobs in flight after 2 done")

    master.signal(signal.SIGSTOP)
    try:
        held = r.zcard(keys.inflight)
        assert held > 0, "setup: the master was paused between two jobs"
        private_redis.restart(down_for=0.5)
        # The worker writes its results while the master is paused.
        wait_until(lambda: r.zcard(keys.inflight) == 0, timeout=15, message="the worker to record its jobs")
    finally:
        master.signal(signal.SIGCONT)
    clock = Stopwatch()
    client.close()
    client = client_for(redis_url, namespace)
    assert_all_ok(client, handles, [0.3] * n, RECOVERY_BOUND, f"{held} results missed by the master", mport,
                  stored=True)
    client.close()
    report("master_missed_results", recovery_s=clock(), missed=held)
    assert metric(mport, "geventsched_master_jobs_in_flight") == 0, master_view(mport)
    assert_settled(r, redis_url, namespace, ok=n)


@AOF
def test_delayed_jobs_survive_a_master_kill9_and_a_redis_restart_and_never_start_early(
        spawn, r, namespace, redis_url, private_redis):
    start_workers(spawn, r, namespace, "1-3")
    first, _ = start_master(spawn)
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("echo", (i,), {}) for i in range(100)], delay=2.0)
    first.signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    private_redis.restart(down_for=0.5)  # AOF: the schedule is back with the server
    _, mport = start_master(spawn)
    assert_all_ok(client, handles, list(range(100)), DEADLINE_GUARD, "delayed jobs after the faults", mport)
    client.close()
    store = Store.for_namespace(r, namespace)
    early = [info["id"] for info in map(lambda h: job_info(store, h.id), handles) if info["started"] < info["due"]]
    assert early == [], "jobs started before their due time"
    assert_settled(r, redis_url, namespace, ok=100)


def test_time_limit_applies_to_each_job_not_to_the_runners_total(spawn, r, namespace, redis_url):
    """Not a fault, but it made the fault tests report false timeouts: one runner (--concurrency 1)
    runs 40 jobs of 0.05 s, each with a 1 s limit. Every one is well within its own limit."""
    start_workers(spawn, r, namespace, "1", concurrency=1)
    start_master(spawn)
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("sleep", (0.05,), {})] * 40, timeout=1.0)
    results = client.wait(handles, timeout=30)
    client.close()
    statuses = [results[h.id].status if h.id in results else None for h in handles]
    first_bad = next((i for i, s in enumerate(statuses) if s != "ok"), None)
    assert first_bad is None, (f"job {first_bad + 1} of 40 ended {statuses[first_bad]!r} after "
                               f"{first_bad * 0.05:.2f}s of earlier jobs on the same runner: {statuses}")


# -- 4. a job runs twice -----------------------------------------------------------------------------


def test_job_run_twice_is_recorded_and_counted_once(spawn, r, namespace, redis_url, tmp_path):
    log = str(tmp_path / "runs.log")
    paused, other = start_workers(spawn, r, namespace, "1-1", "2-2", app=True)
    start_master(spawn)
    client = client_for(redis_url, namespace)
    n = 10
    handles = client.submit_many([("faults.record", (log, f"t{i}", 3.0), {}) for i in range(n)])
    wait_until(lambda: count_lines(log) == n, timeout=20, message=f"{n} jobs started")
    on_paused = [t for t, pids in executions(log).items() if pids == [paused.process.pid]]
    assert on_paused, "the least-loaded master gave worker 1 nothing"

    # Paused past its heartbeat TTL: the master must think it dead and hand its jobs to the other one.
    paused.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: count_lines(log) == n + len(on_paused), timeout=RECOVERY_BOUND,
                   message="the paused worker's jobs to start again on the other worker")
    finally:
        paused.signal(signal.SIGCONT)
    # Now both copies finish: the resumed worker's right away (its sleeps are over), then the other's.
    assert_all_ok(client, handles, [f"t{i}" for i in range(n)], 20, "jobs run twice")
    wait_until(lambda: count_lines(log, "end") == n + len(on_paused), timeout=20,
               message="every copy of every job to end")
    client.close()
    runs = executions(log, "end")
    assert sorted(t for t, pids in runs.items() if len(pids) == 2) == sorted(on_paused)
    assert all(set(runs[t]) == {paused.process.pid, other.process.pid} for t in on_paused)
    assert_settled(r, redis_url, namespace, ok=n)
    report("duplicate_execution", jobs=n, ran_twice=len(on_paused))


# -- 5. a slow subscriber is cut off -----------------------------------------------------------------


@pytest.mark.parametrize("private_redis", [("--client-output-buffer-limit", "pubsub 64kb 32kb 1")],
                         indirect=True, ids=["pubsub-64kb"])
def test_slow_subscriber_disconnected_by_redis_reconnects_and_lost_jobs_come_back(
        spawn, r, namespace, redis_url, private_redis):
    (worker,) = start_workers(spawn, r, namespace, "1-3")
    # A flow-control window (4 MiB by default) larger than the kernel's socket buffers can absorb
    # (about as much on loopback), so Redis's own output buffer must grow.
    master, mport = start_master(spawn, "--max-inflight-bytes", str(16 << 20))
    # The worker's subscriber: the only connection with 4 channels, its 3 and the cancel channel (it
    # subscribes after registering).
    (sub_id,) = wait_until(lambda: subscribers_with(r, 4), timeout=10, message="the worker to subscribe")
    client = client_for(redis_url, namespace)
    big = "x" * 32_000
    n = 300  # ~10 MB: more than the kernel's socket buffers hold, so Redis's output buffer grows

    worker.signal(signal.SIGSTOP)
    try:
        # reply=False: results this big would make the waiting client a slow subscriber too. The
        # jobs keep the default time limit (300 s): those lost with the connection must come back
        # because the worker knows it missed them, not at their deadline.
        handles = client.submit_many([("echo", (f"{i}:{big}",), {}) for i in range(n)], reply=False)
        # Redis closes the connection as soon as the output buffer passes the hard limit. The worker
        # must be back before its heartbeat TTL, or this becomes a worker-loss test.
        wait_until(lambda: sub_id not in [c["id"] for c in r.client_list()], timeout=HEARTBEAT_TTL - 2,
                   message="Redis to disconnect the paused worker's subscriber")
        # The episode is over: back to Redis's default limit. Left at 64 kB, the master's re-dispatch
        # bursts (every pending job at once) cut the worker off again and again, and jobs lost in
        # each burst wait for their deadline once more (reported as a finding of its own).
        r.config_set("client-output-buffer-limit", "pubsub 33554432 8388608 60")
    finally:
        worker.signal(signal.SIGCONT)
    clock = Stopwatch()
    assert "overcoming of output buffer limits" in private_redis.log()
    wait_until(lambda: "resubscribed" in worker.output(), timeout=10, message="the worker to resubscribe")
    assert_all_ok(client, handles, [f"{i}:{big}" for i in range(n)], RECOVERY_BOUND, "after the disconnect",
                  mport, stored=True)
    recovery = clock()
    client.close()
    handed_back = metric(mport, "geventsched_master_jobs_redispatched_total", reason="handed_back")
    assert "never arrived" in worker.output() and handed_back > 0, "no job was lost: the fault did not happen"
    assert_settled(r, redis_url, namespace, ok=n)
    report("slow_subscriber", recovery_s=recovery, lost_and_handed_back=int(handed_back))


def test_worker_with_thousands_of_channels_resubscribes_under_load_without_dropping_jobs(
        spawn, r, namespace, redis_url):
    """A worker holding 10,000 channels (ten SUBSCRIBE batches) loses its subscriber connection, three
    times, while the master keeps dispatching. Messages for channels of the first batches can arrive
    before the last confirmations; none may be dropped (a dropped job waits for its deadline: 330 s by
    default). Whether a message lands in that window is a race: the next test provokes it for sure."""
    channels = 10_000
    wport = free_port()
    (worker,) = start_workers(spawn, r, namespace, f"1-{channels}", extra=("--metrics-port", str(wport)))
    master, mport = start_master(spawn)
    wait_until(lambda: subscribers_with(r, channels + 1), timeout=10, message="the worker to subscribe")  # + cancels
    client = client_for(redis_url, namespace)
    n = 30_000
    handles = client.submit_many([("sleep", (0.1,), {})] * n, reply=False)

    def idle_subscriber():
        """The worker's subscriber id once Redis holds nothing for it: cut then, what sits in the kernel
        still arrives, so the kill itself loses no message."""
        mine = [c for c in r.client_list() if int(c.get("sub", 0)) == channels + 1]
        return mine and int(mine[0]["omem"]) == 0 and mine[0]["id"]

    for done in (3000, 9000, 15000):
        wait_until(lambda: finished_ok(r, namespace) >= done, timeout=30, message=f"{done} jobs done")
        # Writes (PUBLISH included) wait while paused, so nothing new can reach the subscriber
        # between seeing it idle and cutting it: a message Redis held at the kill would be lost by
        # design (pub/sub), which is not what this test is about.
        r.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        try:
            subscriber = wait_until(idle_subscriber, timeout=4, interval=0.001, message="the subscriber, idle")
            r.execute_command("CLIENT", "KILL", "ID", subscriber)
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
    clock = Stopwatch()
    client = client_for(redis_url, namespace)
    results = wait_stored(client, handles, RECOVERY_BOUND)
    client.close()
    sent = metric(mport, "geventsched_master_jobs_dispatched_total")
    received = metric(wport, "geventsched_worker_jobs_received_total")
    report("resubscribe_10000_channels", seconds=clock(), jobs_without_result=n - len(results),
           dispatched=int(sent), received=int(received), reconnects=worker.output().count("resubscribed"))
    assert worker.output().count("resubscribed") == 3
    assert received == sent, f"the worker received {int(received)} of the {int(sent)} jobs the master " \
                             f"dispatched (PUBLISH answered 1): {int(sent - received)} dropped"
    assert len(results) == n, f"{n - len(results)} jobs have no result; master: {master_view(mport)}"


#: Publishes 1, 2, 3, ... to one channel, pipelined, and logs each number PUBLISH delivered (answered >= 1).
PUBLISHER = """
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
out = open(sys.argv[3], "w", buffering=1)
out.write("ready\\n")
n = 0
while True:
    pipe = r.pipeline(transaction=False)
    for _ in range(200):
        n += 1
        pipe.publish(sys.argv[2], str(n))
    for seq, receivers in zip(range(n - 199, n + 1), pipe.execute()):
        if receivers:
            out.write(f"{seq}\\n")
"""


def test_subscriber_keeps_messages_that_arrive_while_it_subscribes(redis_url, tmp_path):
    """The worker's reconnect path at the level of its subscriber (``transport.Subscriber``): with 3000
    channels it sends three SUBSCRIBE batches, so a message for a channel of the first batch can
    arrive before the last confirmation (the master publishes all the while). Every message Redis
    delivered to the connection must reach the caller. A real publisher process, five subscribes."""
    import subprocess
    import sys

    from geventsched import transport

    log = tmp_path / "published.log"
    names = [f"CHANNEL_DISPATCH_{i}" for i in range(1, 3001)]
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, redis_url, names[0], str(log)])
    client = transport.connect(redis_url)
    received = set()
    try:
        wait_until(lambda: log.exists() and log.read_text().startswith("ready"), timeout=20,
                   message="the publisher to start")
        for _ in range(5):
            subscriber = transport.Subscriber(client)
            subscriber.subscribe(names)
            # Unsubscribe and read up to the last confirmation: every message sent before it is read.
            subscriber.unsubscribe_all()
            while subscriber.subscribed:
                received.update(int(data) for _, data in subscriber.read())
            subscriber.close()
    finally:
        publisher.kill()
        publisher.wait(10)
        client.close()
    delivered = {int(line) for line in log.read_text().split() if line.isdigit()}
    lost = sorted(delivered - received)
    report("subscribe_race", delivered=len(delivered), lost=len(lost))
    assert delivered, "the publisher reached no subscriber: the test proved nothing"
    assert not lost, f"{len(lost)} of {len(delivered)} messages that Redis delivered never reached the " \
                     f"caller (first: {lost[:5]})"


# -- 6. dead letters ---------------------------------------------------------------------------------


def test_job_that_always_loses_its_worker_is_dead_lettered_then_requeued(spawn, r, namespace, redis_url,
                                                                         tmp_path):
    log, antidote = str(tmp_path / "runs.log"), str(tmp_path / "antidote")
    max_attempts = 2
    workers = start_workers(spawn, r, namespace, "1", app=True)
    start_master(spawn, "--max-attempts", str(max_attempts))
    client = client_for(redis_url, namespace)
    (handle,) = client.submit_many([("faults.poison", (log, "p", antidote), {})])

    def keep_a_worker():
        """Restart the worker when the job killed it, each time on a fresh channel (a dead worker's
        lease lasts until its heartbeat expires)."""
        if workers[-1].process.poll() is not None:
            k = len(workers) + 1
            workers.append(spawn("worker", "--metrics-port", "0", "--channels", f"{k}-{k}",
                                 "--app", "faults", cwd=HERE))

    def dead_lettered():
        runs = len(executions(log).get("p", []))
        assert runs <= max_attempts, f"the job ran {runs} times with --max-attempts {max_attempts}"
        keep_a_worker()
        return r.llen(Keys(namespace).dead) == 1

    clock = Stopwatch()
    wait_until(dead_lettered, timeout=max_attempts * (HEARTBEAT_TTL + 3) + 15, interval=0.1,
               message="the poison job to be dead-lettered")
    report("worker_loss_dead_letter", dead_after_s=clock())
    snap = status_json(run_cli, redis_url, namespace)
    assert snap["dead"] == 1 and snap["finished"]["dead"] == 1 and snap["queued"] == 0, snap
    assert snap["in_flight"] == 0, snap
    result = handle.wait(timeout=5)
    assert result is not None and result.status == "dead"

    open(antidote, "w").close()
    keep_a_worker()
    done = run_cli("requeue-dead", "--redis-url", redis_url, "--namespace", namespace)
    assert (done.returncode, done.stdout.strip()) == (0, "1 dead job re-queued"), done.stderr
    assert handle.result(timeout=20) == "survived"
    client.close()
    assert_settled(r, redis_url, namespace, ok=1)


def test_job_past_its_deadline_on_every_attempt_is_dead_lettered_then_requeued(spawn, r, namespace, redis_url):
    """A hung worker: subscribed, so PUBLISH says delivered, but it never answers. Static channels (the
    original design's mode, ``master --channels``) have no heartbeat watch: only the deadline helps."""
    wport = free_port()
    (worker,) = start_workers(spawn, r, namespace, "7-7", extra=("--metrics-port", str(wport)))
    slack = 2.0  # --deadline-slack: the point is what happens at the deadline, not waiting 30 s for it
    start_master(spawn, "--channels", "7-7", "--max-attempts", "1", "--deadline-slack", str(slack))
    client = client_for(redis_url, namespace)
    worker.signal(signal.SIGSTOP)
    try:
        clock = Stopwatch()
        (handle,) = client.submit_many([("echo", ("late",), {})], timeout=0.1)
        result = handle.wait(timeout=0.1 + slack + 15)
        took = clock()
        time.sleep(max(0.0, HEARTBEAT_TTL + 1 - clock()))  # away past its heartbeat, as a hung worker is
    finally:
        worker.signal(signal.SIGCONT)
    assert result is not None and result.status == "dead", result
    assert result.error["type"] == "DeadLetter"
    snap = status_json(run_cli, redis_url, namespace)
    assert snap["dead"] == 1 and snap["finished"]["dead"] == 1 and snap["in_flight"] == 0, snap
    # The resumed worker finds it was away past its heartbeat and drops the stale copy unrun (its
    # dispatch is over); nothing late may be recorded over the dead letter.
    wait_until(lambda: "dropped 1 queued jobs" in worker.output(), timeout=10,
               message="the resumed worker to drop the stale copy")
    assert metric(wport, "geventsched_worker_jobs_finished_total") == 0
    snap = status_json(run_cli, redis_url, namespace)
    assert nonzero(snap["finished"]) == {"dead": 1}, snap
    assert snap["dead"] == 1, snap

    done = run_cli("requeue-dead", "--redis-url", redis_url, "--namespace", namespace)
    assert (done.returncode, done.stdout.strip()) == (0, "1 dead job re-queued"), done.stderr
    assert handle.result(timeout=20) == "late"
    client.close()
    assert_settled(r, redis_url, namespace, ok=1)
    report("deadline_dead_letter", dead_after_s=took)
