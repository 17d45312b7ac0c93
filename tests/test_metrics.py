"""metrics.py: the SPEC's metric names, types and labels; values that follow the hooks; bounded labels;
and the counts of a real master and worker run."""

import time
import urllib.request

import gevent
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from conftest import wait_until
from geventsched import metrics, transport
from geventsched.builtin import default_registry
from geventsched.client import Client
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.embedded import free_port
from geventsched.errors import ConfigError, DecodeError
from geventsched.master import Master
from geventsched.protocol import Job, JsonCodec, RawCodec
from geventsched.worker import Worker

#: The SPEC's table: name -> (type, labels).
WORKER_SPEC = {
    "geventsched_worker_jobs_received_total": ("counter", {"task"}),
    "geventsched_worker_jobs_finished_total": ("counter", {"task", "status"}),
    "geventsched_worker_job_duration_seconds": ("histogram", {"task"}),
    "geventsched_worker_jobs_running": ("gauge", set()),
    "geventsched_worker_channels_subscribed": ("gauge", set()),
    "geventsched_worker_messages_rejected_total": ("counter", {"reason"}),
    "geventsched_worker_loop_lag_seconds": ("histogram", set()),
}
MASTER_SPEC = {
    "geventsched_master_jobs_submitted_total": ("counter", {"task"}),
    "geventsched_master_jobs_dispatched_total": ("counter", {"task"}),
    "geventsched_master_dispatch_failures_total": ("counter", {"reason"}),
    "geventsched_master_jobs_finished_total": ("counter", {"task", "status"}),
    "geventsched_master_jobs_redispatched_total": ("counter", {"reason"}),
    "geventsched_master_job_latency_seconds": ("histogram", {"task"}),
    "geventsched_master_queue_wait_seconds": ("histogram", set()),
    "geventsched_master_jobs_queued": ("gauge", set()),
    "geventsched_master_jobs_in_flight": ("gauge", set()),
    "geventsched_master_workers": ("gauge", set()),
    "geventsched_master_channels": ("gauge", set()),
}
TASKS = ("echo", "fail", "sleep")


def job(task="echo", job_id="1", submitted_at=None):
    return Job(job_id, task, submitted_at=time.time() if submitted_at is None else submitted_at)


def families(registry):
    """{exposed name: family}; a counter family is named without ``_total`` by prometheus_client."""
    out = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family
    return out


def label_names(family):
    return {key for sample in family.samples for key in sample.labels if key != "le"}


def label_values(registry, sample_name, label):
    return {s.labels[label] for f in registry.collect() for s in f.samples
            if s.name == sample_name and label in s.labels}


def total(registry, sample_name, **match):
    """Sum of the samples named ``sample_name`` whose labels include ``match``."""
    return sum(s.value for f in registry.collect() for s in f.samples
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in match.items()))


def exercise_worker(hooks):
    hooks.on_received([job()])
    hooks.on_rejected("invalid_json")
    hooks.on_finished([(job(), "ok", 0.001)])


def exercise_master(hooks):
    hooks.on_submitted([job()])
    hooks.on_dispatched([job(submitted_at=100.0)], 100.001)
    hooks.on_dispatch_failed("no_subscriber")
    hooks.on_redispatched("deadline", 1)
    hooks.on_finished([(job(), "ok", 0.002)])


@pytest.mark.parametrize("role", ["worker", "master"])
def test_metrics_have_the_spec_names_types_and_labels(role):
    registry = CollectorRegistry()
    if role == "worker":
        hooks, spec, exercise = metrics.WorkerMetrics(registry, TASKS), WORKER_SPEC, exercise_worker
    else:
        hooks, spec, exercise = metrics.MasterMetrics(registry, TASKS), MASTER_SPEC, exercise_master
    exercise(hooks)

    found = families(registry)
    for name, (kind, labels) in spec.items():
        assert name in found, f"{name} is missing"
        assert found[name].type == kind, f"{name} is a {found[name].type}, SPEC says {kind}"
        if found[name].samples:  # scrape-time gauges have no sample until bound
            assert label_names(found[name]) == labels, name
    assert all(name.startswith(f"geventsched_{role}_") for name in found)


def test_histogram_buckets_resolve_50_microseconds_to_60_seconds():
    registry = CollectorRegistry()
    hooks = metrics.WorkerMetrics(registry, TASKS)
    hooks.on_finished([(job(), "ok", 0.00004), (job(), "ok", 0.00007)])  # a batch, and more batches
    for seconds in (0.001, 45.0, 100.0):
        hooks.on_finished([(job(), "ok", seconds)])

    bucket = "geventsched_worker_job_duration_seconds_bucket"
    value = registry.get_sample_value
    assert value(bucket, {"task": "echo", "le": "5e-05"}) == 1
    assert value(bucket, {"task": "echo", "le": "0.0001"}) == 2
    assert value(bucket, {"task": "echo", "le": "0.0005"}) == 2
    assert value(bucket, {"task": "echo", "le": "0.001"}) == 3  # a bound is inclusive (le)
    assert value(bucket, {"task": "echo", "le": "30.0"}) == 3
    assert value(bucket, {"task": "echo", "le": "60.0"}) == 4
    assert value(bucket, {"task": "echo", "le": "+Inf"}) == 5
    assert value("geventsched_worker_job_duration_seconds_count", {"task": "echo"}) == 5
    assert value("geventsched_worker_job_duration_seconds_sum", {"task": "echo"}) == pytest.approx(145.00111)
    for name in ("geventsched_master_job_latency_seconds", "geventsched_master_queue_wait_seconds"):
        bounds = {s.labels["le"] for f in _exercised_master().collect() for s in f.samples
                  if s.name == name + "_bucket"}
        assert {"5e-05", "0.00025", "0.001", "60.0"} <= bounds


def _exercised_master():
    registry = CollectorRegistry()
    exercise_master(metrics.MasterMetrics(registry, TASKS))
    return registry


def test_worker_hooks_move_the_counters_and_histograms():
    registry = CollectorRegistry()
    hooks = metrics.WorkerMetrics(registry, TASKS)
    value = registry.get_sample_value

    hooks.on_received([job("echo", str(i)) for i in range(2)])
    hooks.on_received([job("fail"), job("echo", "2")])  # a batch of two tasks
    hooks.on_finished([(job("echo"), "ok", 0.25), (job("fail"), "error", 0.001), (job("echo"), "ok", 0.5)])
    hooks.on_rejected("too_large")
    hooks.on_rejected("too_large")
    hooks.on_reconnect("subscriber")
    hooks.on_results_written(7)
    hooks.on_results_written(1)

    assert value("geventsched_worker_jobs_received_total", {"task": "echo"}) == 3
    assert value("geventsched_worker_jobs_received_total", {"task": "fail"}) == 1
    assert value("geventsched_worker_jobs_finished_total", {"task": "echo", "status": "ok"}) == 2
    assert value("geventsched_worker_jobs_finished_total", {"task": "fail", "status": "error"}) == 1
    assert value("geventsched_worker_jobs_finished_total", {"task": "fail", "status": "timeout"}) == 0
    assert value("geventsched_worker_job_duration_seconds_count", {"task": "echo"}) == 2
    assert value("geventsched_worker_job_duration_seconds_sum", {"task": "echo"}) == pytest.approx(0.75)
    assert value("geventsched_worker_job_duration_seconds_count", {"task": "fail"}) == 1
    assert value("geventsched_worker_messages_rejected_total", {"reason": "too_large"}) == 2
    assert value("geventsched_worker_messages_rejected_total", {"reason": "bad_field"}) == 0
    assert value("geventsched_worker_reconnects_total", {"what": "subscriber"}) == 1
    assert value("geventsched_worker_result_batches_total") == 2
    assert value("geventsched_worker_result_batch_size_sum") == 8
    assert value("geventsched_worker_result_batch_size_count") == 2


def test_master_hooks_move_the_counters_and_histograms():
    registry = CollectorRegistry()
    hooks = metrics.MasterMetrics(registry, TASKS)
    value = registry.get_sample_value

    hooks.on_submitted([job("echo", str(i)) for i in range(4)])
    hooks.on_dispatched([job("echo", str(i), submitted_at=100.0) for i in range(4)], 100.0002)
    hooks.on_dispatched([job("echo", submitted_at=100.0)], 100.003, 1)  # heard by two subscribers
    hooks.on_dispatch_failed("no_subscriber")
    hooks.on_dispatch_failed("redis_error")
    hooks.on_redispatched("worker_lost", 3)
    hooks.on_redispatched("deadline", 1)
    hooks.on_finished([(job("echo"), "ok", 0.01), (job("sleep"), "dead", 20.0)])
    hooks.on_unknown_result()
    hooks.on_reconnect("collector")

    assert value("geventsched_master_jobs_submitted_total", {"task": "echo"}) == 4
    assert value("geventsched_master_jobs_dispatched_total", {"task": "echo"}) == 5
    assert value("geventsched_master_dispatch_duplicates_total") == 1
    assert value("geventsched_master_queue_wait_seconds_count") == 5
    assert value("geventsched_master_queue_wait_seconds_bucket", {"le": "0.00025"}) == 4
    assert value("geventsched_master_dispatch_failures_total", {"reason": "no_subscriber"}) == 1
    assert value("geventsched_master_dispatch_failures_total", {"reason": "redis_error"}) == 1
    assert value("geventsched_master_jobs_redispatched_total", {"reason": "worker_lost"}) == 3
    assert value("geventsched_master_jobs_redispatched_total", {"reason": "deadline"}) == 1
    assert value("geventsched_master_jobs_redispatched_total", {"reason": "handed_back"}) == 0
    assert value("geventsched_master_jobs_finished_total", {"task": "echo", "status": "ok"}) == 1
    assert value("geventsched_master_jobs_finished_total", {"task": "sleep", "status": "dead"}) == 1
    assert value("geventsched_master_job_latency_seconds_count", {"task": "sleep"}) == 1
    assert value("geventsched_master_job_latency_seconds_sum", {"task": "sleep"}) == 20.0
    assert value("geventsched_master_results_unknown_total") == 1
    assert value("geventsched_master_reconnects_total", {"what": "collector"}) == 1


def test_unknown_tasks_and_bogus_reasons_do_not_grow_the_label_sets():
    registry = CollectorRegistry()
    worker, master = metrics.WorkerMetrics(registry, TASKS), metrics.MasterMetrics(registry, TASKS)

    for i in range(50):
        bogus = job(f"attacker-{i}")
        worker.on_received([bogus])
        worker.on_finished([(bogus, f"status-{i}", 0.1)])
        worker.on_rejected(f"reason-{i}")
        worker.on_reconnect(f"what-{i}")
        master.on_submitted([bogus])
        master.on_dispatched([bogus], bogus.submitted_at + 0.1)
        master.on_finished([(bogus, f"status-{i}", 0.1)])
        master.on_dispatch_failed(f"reason-{i}")
        master.on_redispatched(f"reason-{i}", 1)

    def values(name, label):
        return label_values(registry, name, label)

    assert values("geventsched_worker_jobs_received_total", "task") == {*TASKS, "unknown"}
    assert values("geventsched_worker_jobs_finished_total", "task") == {*TASKS, "unknown"}
    assert values("geventsched_worker_jobs_finished_total", "status") == {"ok", "error", "timeout", "cancelled", "other"}
    assert values("geventsched_worker_job_duration_seconds_count", "task") == {"unknown"}
    assert values("geventsched_worker_messages_rejected_total", "reason") == {*metrics.REJECT_REASONS, "other"}
    assert values("geventsched_worker_reconnects_total", "what") == {"subscriber", "other"}
    assert values("geventsched_master_jobs_submitted_total", "task") == {*TASKS, "unknown"}
    assert values("geventsched_master_jobs_finished_total", "status") == {"ok", "error", "timeout", "cancelled", "dead", "other"}
    assert values("geventsched_master_job_latency_seconds_count", "task") == {"unknown"}
    assert values("geventsched_master_dispatch_failures_total", "reason") == {"no_subscriber", "redis_error", "other"}
    assert values("geventsched_master_jobs_redispatched_total", "reason") == {*metrics.REDISPATCH_REASONS, "other"}
    value = registry.get_sample_value
    assert value("geventsched_worker_jobs_received_total", {"task": "unknown"}) == 50
    assert value("geventsched_worker_jobs_finished_total", {"task": "unknown", "status": "other"}) == 50
    assert value("geventsched_worker_messages_rejected_total", {"reason": "other"}) == 50
    assert value("geventsched_master_jobs_finished_total", {"task": "unknown", "status": "other"}) == 50
    assert value("geventsched_master_jobs_redispatched_total", {"reason": "other"}) == 50


@pytest.mark.parametrize("codec, message", [
    (JsonCodec(max_payload=64), b""),
    (JsonCodec(max_payload=64), b"x" * 65),
    (JsonCodec(), b"\xff\xfe"),
    (JsonCodec(), b"{not json"),
    (JsonCodec(), b"[1, 2]"),
    (JsonCodec(), b'{"v": 99}'),
    (JsonCodec(), b'{"v": 1}'),
    (JsonCodec(), b'{"v": 1, "id": "", "task": "echo", "args": [], "kwargs": {}}'),
    (RawCodec(), b""),
    (RawCodec(), b"\xff\xfe"),
])
def test_every_reason_the_codecs_give_is_a_known_rejection_reason(codec, message):
    with pytest.raises(DecodeError) as caught:
        codec.decode_job(message)
    assert caught.value.reason in metrics.REJECT_REASONS


def test_loop_lag_monitor_sees_a_blocked_hub():
    lag = Histogram("lag_seconds", "test", registry=CollectorRegistry(), buckets=metrics.LATENCY_BUCKETS)
    monitor = metrics.loop_lag_monitor(lag, interval=0.01)
    try:
        gevent.sleep(0.05)
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:  # CPU-bound: the hub cannot run timers meanwhile
            pass
        gevent.sleep(0.05)
    finally:
        monitor.kill()
    samples = {s.name: s.value for s in lag.collect()[0].samples if s.name != "lag_seconds_bucket"}
    assert samples["lag_seconds_count"] >= 3
    assert samples["lag_seconds_sum"] >= 0.15


def test_serve_exposes_the_registry_and_port_0_turns_it_off():
    registry = metrics.new_registry()
    metrics.WorkerMetrics(registry, TASKS).on_received([job()])
    assert metrics.serve(registry, 0, "127.0.0.1") is None

    port = free_port()
    server = metrics.serve(registry, port, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'geventsched_worker_jobs_received_total{task="echo"} 1.0' in text
        assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            metrics.serve(registry, port, "127.0.0.1")
    finally:
        server.stop()


def test_a_scrape_survives_redis_being_down():
    # Given a master whose Redis does not answer
    registry = CollectorRegistry()
    client = transport.connect(f"redis://127.0.0.1:{free_port()}/0", check=False)
    master = Master(MasterConfig(), client)
    metrics.MasterMetrics(registry, TASKS).bind(master)

    # When Prometheus scrapes, then the scrape works and only the Redis-backed gauges lack a value
    text = generate_latest(registry).decode()
    assert "geventsched_master_jobs_in_flight 0.0" in text
    assert "geventsched_master_workers 0.0" in text
    assert "# TYPE geventsched_master_jobs_queued gauge" in text
    assert registry.get_sample_value("geventsched_master_jobs_queued") is None
    client.close()


# -- a real run ------------------------------------------------------------------------------------


def test_counts_of_a_real_master_and_worker_run_match(redis_url, namespace):
    tasks = default_registry()
    clients = [transport.connect(redis_url) for _ in range(3)]
    wreg, mreg = CollectorRegistry(), CollectorRegistry()
    whooks = metrics.WorkerMetrics(wreg, tasks.names())
    mhooks = metrics.MasterMetrics(mreg, tasks.names())
    worker = Worker(WorkerConfig(channels=("1", "2"), namespace=namespace, concurrency=20, grace=1.0),
                    clients[0], tasks, hooks=whooks)
    master = Master(MasterConfig(namespace=namespace, discovery_interval=0.1, reap_interval=0.2),
                    clients[1], hooks=mhooks)
    whooks.bind(worker)
    mhooks.bind(master)
    submitter = Client(clients[2], namespace)
    w, m = wreg.get_sample_value, mreg.get_sample_value
    try:
        # Given 50 echo and 5 fail jobs submitted before the master runs: they are queued
        handles = submitter.submit_many([("echo", [i], {}) for i in range(50)] + [("fail", ["boom"], {})] * 5)
        assert m("geventsched_master_jobs_queued") == 55

        # When worker and master run them
        worker.start()
        master.start()
        results = submitter.wait(handles, timeout=20)
        assert len(results) == 55
        wait_until(lambda: total(mreg, "geventsched_master_job_latency_seconds_count") == 55,
                   message="the master to count 55 results")

        # Then worker and master counted each job once, with the right outcome
        assert w("geventsched_worker_jobs_received_total", {"task": "echo"}) == 50
        assert w("geventsched_worker_jobs_received_total", {"task": "fail"}) == 5
        assert w("geventsched_worker_jobs_finished_total", {"task": "echo", "status": "ok"}) == 50
        assert w("geventsched_worker_jobs_finished_total", {"task": "fail", "status": "error"}) == 5
        assert total(wreg, "geventsched_worker_jobs_finished_total") == 55
        assert w("geventsched_worker_job_duration_seconds_count", {"task": "echo"}) == 50
        assert w("geventsched_worker_job_duration_seconds_count", {"task": "fail"}) == 5
        assert total(wreg, "geventsched_worker_messages_rejected_total") == 0
        assert w("geventsched_worker_result_batch_size_sum") == 55
        assert w("geventsched_worker_result_batches_total") == w("geventsched_worker_result_batch_size_count") >= 1

        assert m("geventsched_master_jobs_submitted_total", {"task": "echo"}) == 50
        assert m("geventsched_master_jobs_submitted_total", {"task": "fail"}) == 5
        assert m("geventsched_master_jobs_dispatched_total", {"task": "echo"}) == 50
        assert m("geventsched_master_jobs_dispatched_total", {"task": "fail"}) == 5
        assert m("geventsched_master_queue_wait_seconds_count") == 55
        assert m("geventsched_master_jobs_finished_total", {"task": "echo", "status": "ok"}) == 50
        assert m("geventsched_master_jobs_finished_total", {"task": "fail", "status": "error"}) == 5
        assert total(mreg, "geventsched_master_jobs_finished_total") == 55
        assert m("geventsched_master_job_latency_seconds_count", {"task": "fail"}) == 5
        assert total(mreg, "geventsched_master_dispatch_failures_total") == 0
        assert total(mreg, "geventsched_master_jobs_redispatched_total") == 0
        assert m("geventsched_master_results_unknown_total") == 0
        assert m("geventsched_master_dispatch_duplicates_total") == 0

        # And the state gauges, read at scrape time, show an idle system with one worker
        assert w("geventsched_worker_jobs_running") == 0
        assert w("geventsched_worker_channels_subscribed") == 2
        assert w("geventsched_worker_concurrency") == 20
        assert m("geventsched_master_jobs_queued") == 0
        assert m("geventsched_master_jobs_in_flight") == 0
        assert m("geventsched_master_workers") == 1
        assert m("geventsched_master_channels") == 2
        assert m("geventsched_master_dead_letters") == 0

        # When three jobs sleep, then the gauges see them running and in flight
        sleepers = submitter.submit_many([("sleep", [0.5], {})] * 3)
        wait_until(lambda: w("geventsched_worker_jobs_running") == 3 and m("geventsched_master_jobs_in_flight") == 3,
                   message="3 jobs running and in flight")
        assert len(submitter.wait(sleepers, timeout=10)) == 3
        wait_until(lambda: m("geventsched_master_jobs_finished_total", {"task": "sleep", "status": "ok"}) == 3,
                   message="the master to count the sleepers")
        assert w("geventsched_worker_jobs_finished_total", {"task": "sleep", "status": "ok"}) == 3
        assert w("geventsched_worker_job_duration_seconds_sum", {"task": "sleep"}) >= 1.5
    finally:
        master.stop()
        worker.stop(1.0)
        submitter.close()
        for client in clients:
            client.close()
