"""Hardening: bad input, forged messages and ordinary operations (deploys, pauses, lost messages) must
cost no job, no slot and no worker. Master and workers run in this process, on a private Redis."""

import json
import logging
import os
import time

import gevent
import pytest

from conftest import wait_until
from geventsched import transport
from geventsched.builtin import default_registry
from geventsched.client import Client
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.hooks import MasterHooks, WorkerHooks
from geventsched.keys import Keys
from geventsched.master import Master
from geventsched.protocol import reply_mac, signed
from geventsched.registry import App
from geventsched.worker import Worker

app = App(prefix="hard")
runs = []  # (task, token) of every execution in this process


@app.task
def count(token, seconds=0.0):
    runs.append(("count", token))
    gevent.sleep(seconds)
    return token


@app.task(timeout=1)
def quick(token):
    runs.append(("quick", token))
    return token


@pytest.fixture
def system(redis_url, namespace):
    """``system.worker(...)``, ``system.master(...)``, ``system.client()``: started in this process and
    stopped at the end of the test."""
    runs.clear()
    made = _System(redis_url, namespace)
    yield made
    made.close()


class _System:
    def __init__(self, url, namespace):
        self.url, self.namespace = url, namespace
        self.redis = transport.connect(url)
        self.keys = Keys(namespace, cluster=transport.is_cluster(self.redis))
        self.workers, self.masters, self.clients = [], [], []

    def worker(self, channels=("1",), hooks=None, start=True, **options):
        options = {"concurrency": 20, "grace": 2.0, **options}
        worker = Worker(WorkerConfig(channels=tuple(channels), namespace=self.namespace, **options),
                        transport.connect(self.url), _registry(), hooks=hooks)
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def master(self, hooks=None, start=True, **options):
        options = {"discovery_interval": 0.1, "reap_interval": 0.1, **options}
        master = Master(MasterConfig(namespace=self.namespace, **options), transport.connect(self.url), hooks=hooks)
        self.masters.append(master)
        if start:
            assert master.start()
        return master

    def client(self, **options):
        client = Client(transport.connect(self.url), self.namespace, **options)
        self.clients.append(client)
        return client

    def close(self):
        for master in self.masters:
            master.stop()
        for worker in self.workers:
            if not worker.stopped:
                worker.stop(0.5)
        for client in self.clients:
            client.close()


def _registry():
    registry = default_registry()
    registry.add(app)
    return registry


def stored_result(system, job_id):
    data = system.redis.get(system.keys.result(job_id))
    return None if data is None else json.loads(data)


# -- 1. an unknown task with retries -----------------------------------------------------------------

def test_an_unknown_task_with_retries_is_answered_and_its_runner_lives_on(system, caplog):
    caplog.set_level(logging.INFO, logger="geventsched.worker")
    system.worker(concurrency=1)
    system.master()
    client = system.client()
    lost = client.submit_many([("no.such.task", [], {})], max_retries=2)[0]
    result = lost.wait(10)
    assert result is not None and result.status == "error" and result.error["type"] == "UnknownTask"
    assert client.submit("echo", 7).result(10) == 7
    assert system.redis.zcard(system.keys.inflight) == 0
    assert f"job {lost.id} (no.such.task) failed: UnknownTask" in caplog.text  # failures are logged


# -- 2. loops nobody watched -------------------------------------------------------------------------

class _BrokenWorkerHooks(WorkerHooks):
    safe = True  # used as it is, unguarded: a fault here reaches the reader loop

    def on_received(self, jobs):
        raise RuntimeError("a bug in a hook")


class _BrokenMasterHooks(MasterHooks):
    safe = True

    def on_dispatched(self, jobs, sent_at, duplicates=0):
        raise RuntimeError("a bug in a hook")


def test_a_worker_loop_that_dies_stops_the_worker_with_exit_1_and_deregisters(system, caplog):
    worker = system.worker(hooks=_BrokenWorkerHooks(), start=False)
    system.master()
    runner = gevent.spawn(worker.run)
    wait_until(lambda: system.redis.exists(system.keys.worker(worker.id)), message="registration")
    system.client().submit_many([("echo", [1], {})], reply=False)
    assert runner.get(timeout=15) == 1
    assert not system.redis.exists(system.keys.worker(worker.id))
    assert system.redis.hlen(system.keys.channels) == 0
    tracebacks = [r for r in caplog.records if r.exc_info and "a bug in a hook" in str(r.exc_info[1])]
    assert len(tracebacks) == 1


def test_a_master_loop_that_dies_stops_the_master_with_exit_1_and_frees_the_lease(system):
    system.worker()
    master = system.master(hooks=_BrokenMasterHooks(), start=False)
    runner = gevent.spawn(master.run)
    wait_until(lambda: system.redis.exists(system.keys.master), message="the lease")
    system.client().submit_many([("echo", [1], {})], reply=False)
    assert runner.get(timeout=15) == 1
    assert not system.redis.exists(system.keys.master)


def test_a_malformed_heartbeat_does_not_stop_discovery(system):
    system.redis.sadd(system.keys.workers, "bogus")
    system.redis.set(system.keys.worker("bogus"), "[1, 2]")
    master = system.master()
    system.worker()
    assert system.client().submit("echo", 3).result(10) == 3
    assert all(not greenlet.dead for greenlet in master._loops.greenlets)


# -- 5. forged and stray messages ---------------------------------------------------------------------

def _publish_job(system, channel, **doc):
    body = json.dumps({"v": 1, "args": [], "kwargs": {}, **doc})
    return system.redis.publish(system.keys.dispatch_channel(channel), body)


def test_a_job_published_by_a_stranger_is_never_recorded(system):
    system.worker()
    system.master()
    assert _publish_job(system, "1", id="forged-1", task="hard.count", args=["forged"]) == 1
    wait_until(lambda: ("count", "forged") in runs, message="the forged job running")
    gevent.sleep(0.5)  # it ran (a worker cannot tell it from a real job): its result must not be recorded
    assert stored_result(system, "forged-1") is None
    assert system.redis.hgetall(system.keys.finished) == {}


def test_a_stranger_cannot_replace_the_result_of_a_job_in_flight(system):
    system.worker()
    system.master()
    client = system.client()
    handle = client.submit("hard.count", "real", 1.0)
    wait_until(lambda: ("count", "real") in runs, message="the real job running")
    _publish_job(system, "1", id=handle.id, task="hard.count", args=["forged"])
    assert handle.result(10) == "real"
    assert stored_result(system, handle.id)["value"] == "real"


def test_a_waiting_client_trusts_the_stored_result_not_its_reply_channel(system):
    system.worker()
    system.master()
    client = system.client()
    handle = client.submit("hard.count", "real", 0.5)
    forged = json.dumps({"v": 1, "id": handle.id, "task": "hard.count", "status": "ok", "value": "forged"})
    system.redis.publish(client.reply_channel, forged)
    assert handle.result(10) == "real"


def _reply_frame(*results, secret=None):
    body = ",".join(json.dumps(result, separators=(",", ":")) for result in results).encode()
    if secret is None:
        return b'{"v":2,"results":[' + body + b']}'
    return b'{"v":2,"results":[' + body + b'],"mac":"' + reply_mac(secret, body).encode() + b'"}'


def test_the_finish_script_signs_reply_frames_with_the_secret_the_client_keeps_in_redis(system):
    system.worker()
    system.master()
    client = system.client()
    client.submit("hard.count", "warm").result(10)  # the client has subscribed and written its secret
    spy = transport.subscribe(system.redis, [client.reply_channel])
    try:
        assert client.submit("hard.count", "real").result(10) == "real"
        frames = [data for _, data in spy.read(5)]
    finally:
        spy.close()
    assert frames and all(signed(data, client._secret) for data in frames)
    assert not signed(frames[0], b"0" * 32)  # another client's secret does not verify them
    secret_key = system.keys.reply_key_prefix + client.reply_channel
    assert system.redis.get(secret_key) == client._secret and system.redis.ttl(secret_key) > 3600
    # The secret never travels: not in a job record, so not in any dispatch message either.
    handle = client.submit("hard.count", "queued", 0.5)
    assert client._secret not in system.redis.hget(system.keys.jobs, handle.id)
    handle.result(10)


def test_a_signed_reply_frame_is_believed_as_it_is_and_a_forged_one_is_not(system):
    client = system.client()  # no master: the jobs stay queued, recorded and without a result
    believed, forged = client.submit("hard.count", "a"), client.submit("hard.count", "b")

    def result_of(handle, value):
        return {"v": 1, "id": handle.id, "task": "hard.count", "status": "ok", "value": value}

    frames = [_reply_frame(result_of(believed, "signed"), secret=client._secret),
              _reply_frame(result_of(forged, "wrong key"), secret=b"f" * 32),
              _reply_frame(result_of(forged, "no mac"))]
    tampered = bytearray(_reply_frame(result_of(forged, "tampered"), secret=client._secret))
    tampered[tampered.index(b"tampered")] = ord("T")  # a genuine frame, changed on the way
    for frame in [*frames, bytes(tampered)]:
        system.redis.publish(client.reply_channel, frame)
    # Not read back from Redis (where the job has no result): believed because it is signed.
    assert believed.result(5) == "signed"
    assert forged.wait(1.0) is None


def _signed_results(client, handles, value="v"):
    return _reply_frame(*[{"v": 1, "id": h.id, "task": "hard.count", "status": "ok", "value": value}
                          for h in handles], secret=client._secret)


def _reads_of_results(system):
    """MGETs Redis has run: how a client reads stored results back."""
    return system.redis.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)


def test_results_heard_while_waiting_for_other_jobs_are_kept_for_their_own_wait(system):
    """A producer waits for its jobs a chunk at a time; the frame that answers one chunk carries
    results of the next. Those are kept, not dropped and read back from Redis later (which costs a
    round trip and a decode each, and finds nothing once their TTL has passed)."""
    client = system.client()  # no master: nothing is stored; the frame below is all there is
    first, second = client.submit_many([("hard.count", ["a"], {}), ("hard.count", ["b"], {})])
    system.redis.publish(client.reply_channel, _signed_results(client, [first, second]))
    assert first.result(5) == "v"
    assert second.wait(1.0) is not None


def test_a_wait_for_its_own_jobs_reads_nothing_back_from_redis(system):
    """Announcements of jobs submitted while the client listens cannot have been missed: a wait for
    them reads the reply channel only (one round trip less on every ``result()``)."""
    client = system.client()
    handles = client.submit_many([("hard.count", [str(i)], {}) for i in range(3)])
    system.redis.publish(client.reply_channel, _signed_results(client, handles))
    before = _reads_of_results(system)
    assert [h.result(5) for h in handles] == ["v"] * 3
    assert _reads_of_results(system) == before


def test_a_wait_reads_back_what_it_may_have_missed(system, monkeypatch):
    """Results the client cannot be sure to have heard are read from Redis: a job it did not submit
    (a handle made from an id), one heard while listening again, and one whose announcement was
    dropped because too many were kept unclaimed."""
    from geventsched import heard
    from geventsched.client import JobHandle

    client = system.client()
    started = time.monotonic()
    stored = client.submit_many([("hard.count", [str(i)], {}) for i in range(3)])
    for handle in stored:  # recorded as the finish script records them, never announced
        system.redis.set(system.keys.result(handle.id), json.dumps(
            {"v": 1, "id": handle.id, "task": "hard.count", "status": "ok", "value": "stored"}))
    assert JobHandle(client, stored[0].id, "hard.count").result(5) == "stored"
    client._subscriber.close()  # as a lost connection does: listening again, the client may have missed some
    client._subscriber = None
    client._listen()
    assert stored[1].result(5) == "stored"
    monkeypatch.setattr(heard, "HEARD_LIMIT", 1)
    late = client.submit_many([("hard.count", [str(i)], {}) for i in range(3)])
    system.redis.set(system.keys.result(late[1].id), json.dumps(
        {"v": 1, "id": late[1].id, "task": "hard.count", "status": "ok", "value": "stored"}))
    system.redis.publish(client.reply_channel, _signed_results(client, late, value="heard"))
    assert late[0].result(5) == "heard"  # late[1] and late[2] kept: one too many, late[1] is dropped
    assert late[1].result(5) == "stored"
    assert late[2].result(5) == "heard"
    assert time.monotonic() - started < 4, "each wait ends with its result read, not at its timeout"


def test_a_forked_process_submits_through_a_connection_of_its_own(system):
    """The client's submits go through a plain connection of its own: a process forked from one that
    has submitted (a pre-forking server) must not write into the parent's socket."""
    client = system.client()
    client.submit_many([("hard.count", ["parent"], {})], reply=False)
    parents = client._writer
    pid = os.fork()
    if pid == 0:  # the child: submit, and say whether it used a connection of its own
        code = 2
        try:
            client.submit_many([("hard.count", ["child"], {})], reply=False)
            code = 0 if client._writer is not parents else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    client.submit_many([("hard.count", ["parent again"], {})], reply=False)
    assert system.redis.llen(system.keys.intake) == 3 and client._writer is parents


def test_forged_results_do_not_free_the_masters_flow_control_slots(system):
    worker = system.worker(concurrency=100)
    system.master(prefetch=2)
    client = system.client()
    handles = client.submit_many([("hard.count", [str(i), 0.4], {}) for i in range(12)])
    most = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for handle in handles:
            forged = json.dumps({"v": 1, "id": handle.id, "task": "hard.count", "status": "ok", "value": "x"})
            system.redis.publish(system.keys.result_channel, forged)
        most = max(most, worker.runners.running + worker.runners.queued)
        gevent.sleep(0.02)
    assert most <= 2
    assert [h.result(20) for h in handles] == [str(i) for i in range(12)]


# -- 8. a graceful stop --------------------------------------------------------------------------

def test_a_draining_worker_finishes_its_jobs_once_and_is_not_declared_lost(system):
    draining = system.worker(heartbeat_ttl=1.0, heartbeat_interval=0.2, grace=10.0)
    system.master()
    client = system.client()
    handles = client.submit_many([("hard.count", [f"long-{i}", 2.5], {}) for i in range(5)])
    wait_until(lambda: len(runs) == 5, message="the jobs running")
    system.worker(channels=("2",), heartbeat_ttl=1.0, heartbeat_interval=0.2)  # idle, ready to take them
    draining.stop(10.0)
    assert sorted(h.result(10) for h in handles) == [f"long-{i}" for i in range(5)]
    gevent.sleep(1.5)  # a worker declared lost would have had its jobs run again by now
    assert sorted(token for _, token in runs) == [f"long-{i}" for i in range(5)]


# -- 10. a worker declared dead -------------------------------------------------------------------

def test_a_worker_whose_registration_was_taken_stops_serving_those_channels(system):
    zombie = system.worker(heartbeat_ttl=1.0, heartbeat_interval=0.2)
    # What a long pause looks like from Redis: the heartbeat expired and another worker took the channel.
    system.redis.delete(system.keys.worker(zombie.id))
    system.redis.hdel(system.keys.channels, system.keys.dispatch_channel("1"))
    successor = system.worker(heartbeat_ttl=1.0, heartbeat_interval=0.2)
    channel = system.keys.dispatch_channel("1")
    wait_until(lambda: system.redis.pubsub_numsub(channel)[0][1] == 1, timeout=5,
               message="the zombie unsubscribing")
    system.master()
    client = system.client()
    handles = client.submit_many([("hard.count", [str(i)], {}) for i in range(20)])
    assert [h.result(10) for h in handles] == [str(i) for i in range(20)]
    assert len(runs) == 20
    assert successor.runners.size  # (the successor ran them)


# -- 11. deadlines follow the task's time limit --------------------------------------------------------

def test_the_masters_deadline_follows_the_tasks_own_time_limit(system):
    system.worker()
    system.master()
    handle = system.client().submit("hard.count", "t", 2.0)  # default time limit: 300 s
    quick = system.client().submit_many([("hard.quick", ["q"], {})], reply=False)[0]
    wait_until(lambda: system.redis.zscore(system.keys.inflight, handle.id), message="dispatch")
    deadline = system.redis.zscore(system.keys.inflight, handle.id)
    assert deadline > time.time() + 250
    quick.id  # finished at once; its deadline is checked through the registry the master learnt
    master = system.masters[0]
    assert master.deadline_for(_job("hard.quick")) < time.time() + 60


def _job(task):
    from geventsched.protocol import Job

    return Job("x", task)


# -- 13. a job over --max-payload ----------------------------------------------------------------------

def test_a_job_over_the_masters_max_payload_answers_its_waiter(system):
    system.worker()
    system.master(max_payload=1000)
    handle = system.client().submit("echo", "x" * 5000)
    result = handle.wait(10)
    assert result is not None and result.status == "error"
    assert result.error["type"] == "PayloadTooLarge"


# -- 14. fire-and-forget slots -----------------------------------------------------------------------

def test_fire_and_forget_dispatches_that_never_answer_expire_and_free_their_slot(system):
    system.worker(durability="none", max_payload=2000)  # rejects the big job: it never answers
    master = system.master(durability="none", prefetch=1, deadline_slack=0.5)
    client = system.client()
    client.submit_many([("echo", ["y" * 5000], {})], timeout=0.5, reply=False)
    small = client.submit_many([("echo", [i], {}) for i in range(3)], timeout=0.5)
    assert [h.result(10) for h in small] == [0, 1, 2]
    assert len(master.ledger) == 0


# -- 4. a worker restarted right after kill -9 --------------------------------------------------------

def test_a_worker_restarted_right_after_kill_9_takes_its_channels_back_and_serves(spawn, system):
    first = spawn("worker", "--channels", "1-3", "--metrics-port", "0")
    wait_until(lambda: system.redis.hlen(system.keys.channels) == 3, timeout=20, message="the first worker")
    first.process.kill()
    first.wait(10)
    again = spawn("worker", "--channels", "1-3", "--metrics-port", "0")  # at once: its lease still holds
    system.master()
    assert system.client().submit("echo", 4).result(15) == 4
    assert again.process.poll() is None, again.output()
    assert "taking its channels over" in again.output()


# -- 12. a master that lost its lease -------------------------------------------------------------------

def test_a_master_that_loses_its_lease_stands_by_and_takes_over_again(system, caplog):
    system.worker()
    master = system.master(start=False, lease_ttl=1.0)
    runner = gevent.spawn(master.run)
    wait_until(lambda: system.redis.get(system.keys.master) == master.lease.holder.encode(), message="the lease")
    system.redis.set(system.keys.master, "another-master", px=1500)  # another master took over, then died
    wait_until(lambda: "standing by again" in caplog.text, timeout=5, message="the master to stand by")
    assert system.client().submit("echo", 5).result(15) == 5  # served again, after the other lease ran out
    assert not runner.dead
    master._on_signal()
    assert runner.get(timeout=10) == 0


# -- 15. a producer that never reads its replies ------------------------------------------------------

@pytest.fixture
def small_buffers(tmp_path, namespace):
    """A private Redis that cuts a subscriber off once 256 kB wait for it (a client that does not
    read its replies hits that soon), with a system on it as ``system`` has."""
    from faults import RestartableRedis

    server = RestartableRedis(tmp_path / "redis", ("--client-output-buffer-limit", "pubsub 256kb 128kb 1"))
    server.start()
    runs.clear()
    made = _System(server.url, namespace)
    yield made, server
    made.close()
    server.stop()


def test_a_producer_that_submits_with_replies_and_never_waits_is_not_cut_off(small_buffers):
    system, server = small_buffers
    system.worker(concurrency=100)
    system.master(max_inflight_bytes=64 << 10)  # the worker's buffer stays small too
    producer = system.client()
    payload = "p" * 10_000
    for i in range(400):  # 8 MB of results announced to the producer: more than the kernel buffers
        producer.submit_many([("echo", [payload], {}), ("echo", [payload], {})])
        gevent.sleep(0.005)
    wait_until(lambda: system.redis.hget(system.keys.finished, "ok") == b"800", timeout=30, message="every job")
    assert "overcoming of output buffer limits" not in server.log()


# -- 7. a big job ------------------------------------------------------------------------------------

def test_a_job_too_big_for_any_worker_is_refused_at_submit_with_one_clear_line(system, redis_url, namespace):
    from conftest import run_cli
    from geventsched.errors import JobTooLarge

    with pytest.raises(JobTooLarge, match="over the max payload"):
        system.client().submit("echo", "x" * (2 << 20))
    assert system.redis.llen(system.keys.intake) == 0
    line = json.dumps({"task": "echo", "args": ["x" * (2 << 20)]}) + "\n"
    done = run_cli("submit", "--file", "-", "--redis-url", redis_url, "--namespace", namespace, input=line)
    assert done.returncode == 2 and "over the max payload" in done.stderr.strip().splitlines()[-1]


def test_a_big_job_among_small_ones_fails_alone_and_never_cuts_the_worker_off(system):
    worker = system.worker(concurrency=50)
    system.master()
    generous = system.client(max_payload=64 << 20)  # a client that does not know the workers' limit
    big = generous.submit_many([("echo", ["b" * (40 << 20)], {})])[0]
    small = generous.submit_many([("echo", [i], {}) for i in range(1000)])
    assert [h.result(20) for h in small] == list(range(1000))
    result = big.wait(10)
    assert result.status == "error" and result.error["type"] == "PayloadTooLarge"
    assert not [c for c in system.redis.client_list() if c.get("flags") == "P" and int(c.get("omem", 0)) > 8 << 20]
    assert worker._subscriber is not None and len(runs) == 0  # (no hard.* task ran)


# -- the master's task labels ----------------------------------------------------------------------

def test_the_master_labels_tasks_it_learnt_from_the_workers_registrations(system):
    from prometheus_client import generate_latest

    from geventsched import metrics

    registry = metrics.new_registry()
    hooks = metrics.MasterMetrics(registry, [])  # started without --app: it knows no task name
    system.worker()
    master = system.master(hooks=hooks)
    hooks.bind(master)
    assert system.client().submit("hard.count", "labelled").result(10) == "labelled"
    # The client's reply and the master's result frame go out together: either may be read first.
    counted = 'geventsched_master_jobs_finished_total{status="ok",task="hard.count"} 1.0'
    wait_until(lambda: counted in generate_latest(registry).decode(), timeout=10, message="the master's count")


# -- 15. one full worker does not stall the others ------------------------------------------------------

class _FirstJob(WorkerHooks):
    """Notes how many jobs had finished when this worker received its first one."""

    def __init__(self, system):
        self.system = system
        self.finished_before = None

    def on_received(self, jobs):
        if self.finished_before is None:
            self.finished_before = int(self.system.redis.hget(self.system.keys.finished, "ok") or 0)


def test_a_worker_whose_window_is_full_does_not_hold_back_the_others(system):
    first, second = _FirstJob(system), _FirstJob(system)
    system.worker(channels=("1",), hooks=first)
    system.worker(channels=("2",), hooks=second)
    # Every job has the same affinity key: all hash to one channel, whose worker's byte window (room
    # for a few jobs) fills at once. The jobs behind must go to the other channel meanwhile.
    system.master(strategy="hash", max_inflight_bytes=1000)
    system.client().submit_many([("hard.count", [str(i), 2.0], {}) for i in range(30)], key="same", reply=False)
    wait_until(lambda: first.finished_before is not None and second.finished_before is not None, timeout=20,
               message="both workers to get jobs")
    assert (first.finished_before, second.finished_before) == (0, 0), "one worker waited for the other's results"


# -- 15. dead letters: in slices, and not for ever ---------------------------------------------------

def _dead_letters(system, tasks, result_ttl):
    from geventsched.protocol import Job, JsonCodec
    from geventsched.store import Store

    store = Store(system.redis, system.keys, result_ttl=result_ttl)
    ids = store.new_ids(len(tasks))
    store.submit([(i, JsonCodec().encode_job(Job(i, task))) for i, task in zip(ids, tasks)])
    store.claim(len(ids))
    requeued, dead = store.reap(1, now=time.time() + 10**6)
    assert (requeued, sorted(dead)) == ([], sorted(ids))
    return store, [i.decode() for i in system.redis.lrange(system.keys.dead, 0, -1)]


def test_requeue_dead_moves_a_long_list_in_slices(system):
    store, ids = _dead_letters(system, ["a", "b"] * 5, result_ttl=60)
    tasks = {i: json.loads(system.redis.hget(system.keys.jobs, i))["task"] for i in ids}
    assert store.requeue_dead(task="b", batch=2) == 5
    assert [i.decode() for i in system.redis.lrange(system.keys.intake, 0, -1)] == [i for i in ids if tasks[i] == "b"]
    assert [i.decode() for i in system.redis.lrange(system.keys.dead, 0, -1)] == [i for i in ids if tasks[i] == "a"]


def test_dead_letters_are_forgotten_with_their_result(system):
    store, ids = _dead_letters(system, ["a", "b"], result_ttl=1)
    assert store.trim_dead() == 0  # their results are still there
    wait_until(lambda: not system.redis.exists(system.keys.result(ids[-1])), timeout=5, message="results to expire")
    assert store.trim_dead() == 2
    assert system.redis.llen(system.keys.dead) == 0 and system.redis.hlen(system.keys.jobs) == 0


# -- a busy master claims its next jobs in the write that sends these -------------------------------------

def test_the_write_that_dispatches_a_batch_claims_the_next_one(system):
    system.worker()
    master = system.master(start=False, claim_batch=2)
    assert master.open()
    client = system.client()
    handles = client.submit_many([("hard.count", [str(i)], {}) for i in range(3)])
    master._claim()
    assert [job.id for job in master.pending] == [h.id for h in handles[:2]]
    # Two sent; the room left is claimed in the same write: the third, in flight in Redis.
    assert master._dispatch(claim_ahead=True) is True
    assert [job.id for job in master.pending] == [handles[2].id]
    assert system.redis.llen(system.keys.intake) == 0 and system.redis.zcard(system.keys.inflight) == 3
    # The last one sent; the claim with it finds the intake empty: wait for a wake-up, not round again.
    assert master._dispatch(claim_ahead=True) is False
    assert not master.pending and len(master.ledger) == 3
    wait_until(lambda: master.run_once(timeout=0.1) is not None and not len(master.ledger),
               message="the results of all three")
    assert [h.result(5) for h in handles] == ["0", "1", "2"]


def test_a_claim_sent_with_a_batch_that_redis_has_forgotten_is_made_again(system):
    system.worker()
    master = system.master(start=False)
    assert master.open()
    client = system.client()
    first = client.submit("hard.count", "first")
    master._claim()
    second = client.submit("hard.count", "second")
    system.redis.script_flush()  # as a restarted Redis has: the claim in the write meets NOSCRIPT
    assert master._dispatch(claim_ahead=True) is True  # round again at once, to claim on its own
    assert not master.pending and system.redis.llen(system.keys.intake) == 1
    master._claim()  # loads the script, as every script call does after NOSCRIPT
    assert [job.id for job in master.pending] == [second.id]
    master._dispatch()
    wait_until(lambda: master.run_once(timeout=0.1) is not None and not len(master.ledger),
               message="both results")
    assert (first.result(5), second.result(5)) == ("first", "second")
