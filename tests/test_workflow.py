"""Workflows (chain, group, chord): each shape and their nestings, failures, exactly-once release of
the next step and of a chord's callback (also when a step's result comes twice, a worker is killed
with -9, a master is killed with -9 and Redis restarts), cancel, lookup, metrics and bad input, and a
state machine (hypothesis) that checks every workflow against a model after each step. Real Redis;
master and workers in this process, but for the two tests that kill processes."""

import json
import os
import signal
import time

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from conftest import wait_until, workers_registered
from test_hardening import system  # noqa: F401  (a fixture)
from geventsched import cli, transport
from geventsched.builtin import default_registry
from geventsched.client import JobHandle
from geventsched.config import WorkerConfig
from geventsched.errors import JobFailed, JobTooLarge
from geventsched.keys import Keys
from geventsched.lookup import render_workflow, workflow_info
from geventsched.metrics import MasterMetrics, new_registry
from geventsched.protocol import JsonCodec, Result
from geventsched.store import Outcome, Store
from geventsched.worker import Worker
from geventsched.workflow import MAX_DEPTH, Plan, chain, chord, group, sig

#: The test tasks, also written to a file for worker processes (``--app wf_tasks``). Evidence of each
#: execution goes to a log file, one O_APPEND line each, from any process.
TASKS = '''
import os

import gevent

from geventsched.registry import App

app = App(prefix="")


def note(log, line):
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)


@app.task(name="wf.add")
def add(a, b):
    return a + b


@app.task(name="wf.total")
def total(values, log=None):
    note(log, "total")
    return sum(values)


@app.task(name="wf.step")
def step(x, seconds=0.0, log=None, name="step"):
    note(log, name)
    gevent.sleep(float(seconds))
    return x


@app.task(name="wf.boom")
def boom(x=None, log=None):
    note(log, "boom")
    raise ValueError(f"boom on {x!r}")
'''
_tasks = {}
exec(compile(TASKS, "wf_tasks", "exec"), _tasks)


def worker(system, channels=("1",), **options):  # noqa: F811
    """An in-process worker that runs the test tasks too."""
    options = {"concurrency": 50, "grace": 1.0, **options}
    registry = default_registry()
    registry.add(_tasks["app"])
    made = Worker(WorkerConfig(channels=tuple(channels), namespace=system.namespace, **options),
                  transport.connect(system.url), registry)
    system.workers.append(made)
    made.start()
    return made


def store_of(system):  # noqa: F811
    return Store.for_namespace(system.redis, system.namespace)


def lines(path, word=None):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.strip() for line in f if word is None or line.strip() == word]


def workflow_keys(system):  # noqa: F811
    return sorted(k.decode() for k in system.redis.scan_iter(match=system.keys.workflow_prefix + "*"))


def settled(system):  # noqa: F811
    """Nothing queued, in flight or scheduled."""
    store = store_of(system)
    counts = store.counts()
    return counts["queued"] == 0 and counts["in_flight"] == 0 and counts["scheduled"] == 0


@pytest.fixture
def running(system):  # noqa: F811
    """A worker and a master of this process, and a client."""
    worker(system)
    system.master()
    return system.client()


# -- the shapes ----------------------------------------------------------------------------------------------

def test_a_chain_passes_each_result_as_the_first_argument_of_the_next(running):
    assert running.run(chain(sig("echo", 1), sig("wf.add", 2))).result(10) == 3
    assert running.run(chain(sig("echo", 1), sig("wf.add", 2), sig("wf.add", 10))).result(10) == 13
    assert running.run(chain(sig("echo", "only"))).result(10) == "only"


def test_a_group_gives_the_list_of_its_results_in_order(running):
    assert running.run(group(sig("wf.step", i, 0.05 * (5 - i)) for i in range(5))).result(10) == [0, 1, 2, 3, 4]
    assert running.run(group(sig("echo", [1, 2]), sig("echo", {"a": None}))).result(10) == [[1, 2], {"a": None}]


def test_a_chord_calls_its_callback_once_with_the_list(running, tmp_path):
    log = str(tmp_path / "calls")
    handle = running.run(chord(group(sig("echo", i) for i in range(20)), sig("wf.total", log=log)))
    assert handle.result(10) == sum(range(20))
    assert lines(log) == ["total"]
    # A list of steps is a group too; the callback's own arguments come after the list.
    assert running.run(chord([sig("echo", 1), sig("echo", 2)], sig("wf.add", [3]))).result(10) == [1, 2, 3]


def test_chains_groups_and_chords_nest(running):
    # A chain of groups: the first group's list goes to each member of the second.
    flow = chain(group(sig("echo", 1), sig("echo", 2)), group(sig("wf.add", [0]), sig("echo")))
    assert running.run(flow).result(10) == [[1, 2, 0], [1, 2]]
    # A group of chains.
    flow = group(chain(sig("echo", 1), sig("wf.add", 1)), chain(sig("echo", 10), sig("wf.add", 10), sig("wf.add", 1)))
    assert running.run(flow).result(10) == [2, 21]
    # A chord whose header holds chains, inside a chain that feeds the header.
    flow = chain(sig("echo", 5),
                 chord(group(chain(sig("wf.add", 1), sig("wf.add", 1)), sig("wf.add", 100)), sig("wf.total")),
                 sig("wf.add", 1000))
    assert running.run(flow).result(10) == (5 + 2) + (5 + 100) + 1000
    # Groups in groups, chains in chains.
    flow = group(group(sig("echo", 1), group(sig("echo", 2))), chain(chain(sig("echo", 3)), sig("echo")))
    assert running.run(flow).result(10) == [[1, [2]], 3]


def test_values_pass_through_exactly_as_the_tasks_returned_them(running):
    tricky = {"s": 'x"]}\\', "f": 0.1 + 0.2, "big": 2**62 + 1, "neg": -1.5e-300, "u": "é\u2028",
              "nested": [[], {}, [{"k": [None, True, False]}]], "tok": "not the token"}
    assert running.run(chain(sig("echo", tricky), sig("echo"), group(sig("echo"), sig("echo")))).result(10) == [
        tricky, tricky]
    assert running.run(chain(sig("echo", 0.1 + 0.2), sig("wf.add", 0.0))).result(10) == 0.30000000000000004


def test_a_value_larger_than_any_message_a_client_reads_still_reaches_it(running):
    """The client is told with a cue and reads the stored result: a group's list of 1.2 MB (over the
    1 MiB a client decodes from a message) comes back whole, the wait having begun first."""
    big = "x" * 400_000
    handle = running.run(chain(sig("wf.step", big, 0.3), group(sig("echo"), sig("echo"), sig("echo"))))
    assert handle.result(20) == [big] * 3


def test_step_options_and_a_run_priority_reach_the_jobs(system):  # noqa: F811
    client = system.client()
    handle = client.run(chain(sig("echo", 1, _priority=7, _timeout=5), sig("echo", _max_retries=3)), priority=2)
    store = store_of(system)
    first = workflow_info(store, handle.id)["nodes"][1]
    record = json.loads(system.redis.hget(system.keys.jobs, first["job"]))
    assert (record["prio"], record["timeout"], first["priority"]) == (7, 5, 7)
    assert system.redis.lrange(system.keys.intake_for(7), 0, -1) == [first["job"].encode()]
    worker(system)
    system.master()
    assert handle.result(10) == 1
    second = workflow_info(store, handle.id)["nodes"][2]
    assert second["priority"] == 2 and second["state"] == "finished"


# -- failures ------------------------------------------------------------------------------------------------

def test_a_failure_in_the_middle_of_a_chain_fails_it_and_nothing_after_runs(running, tmp_path):
    log = str(tmp_path / "calls")
    handle = running.run(chain(sig("wf.step", 1, log=log, name="first"), sig("wf.boom", log=log),
                               sig("wf.step", log=log, name="after")))
    with pytest.raises(JobFailed) as failed:
        handle.result(10)
    assert failed.value.type == "ValueError"
    assert "wf.boom" in str(failed.value) and "boom on 1" in str(failed.value)
    assert "Traceback" in failed.value.traceback
    time.sleep(0.3)
    assert lines(log) == ["first", "boom"]
    info = workflow_info(running.store, handle.id)
    assert info["state"] == "failed" and info["counts"] == {"finished": 2, "skipped": 1}


def test_a_failed_child_of_a_chord_fails_it_and_the_callback_never_runs(running, tmp_path):
    log = str(tmp_path / "calls")
    header = group([sig("wf.step", i, 0.2) for i in range(5)] + [sig("wf.boom", "child", log=log)])
    handle = running.run(chord(header, sig("wf.total", log=log)))
    with pytest.raises(JobFailed) as failed:
        handle.result(10)
    assert failed.value.type == "ValueError" and "step wf.boom" in str(failed.value)
    assert "boom on 'child'" in str(failed.value)
    wait_until(lambda: settled_client(running), message="the other children to finish")
    time.sleep(0.2)
    assert lines(log) == ["boom"]  # the callback never ran
    # The keys only a running workflow needs are gone (pending set, children's values); its tree and
    # the callback's record, never released, stay for lookups as long as results.
    keys = sorted(k.decode() for k in running.redis.scan_iter(match=running.keys.workflow(handle.id) + "*"))
    assert keys == [running.keys.workflow(handle.id), running.keys.workflow_templates(handle.id)]
    assert all(0 < running.redis.ttl(key) <= running.store.result_ttl for key in keys)


def settled_client(client):
    counts = client.store.counts()
    return counts["queued"] == 0 and counts["in_flight"] == 0


def test_a_step_fails_only_after_its_retries(running, tmp_path):
    log = str(tmp_path / "calls")
    handle = running.run(chain(sig("echo", 1), sig("wf.boom", log=log, _max_retries=2), sig("echo")))
    with pytest.raises(JobFailed):
        handle.result(30)
    assert lines(log) == ["boom"] * 3


def test_a_dead_step_fails_its_workflow(system):  # noqa: F811
    client = system.client()
    store = store_of(system)
    handle = client.run(chain(sig("echo", 1), sig("echo")))
    store.claim(10)  # the first step, claimed by a master that then died
    requeued, dead = store.reap(1, now=time.time() + 3600)
    assert requeued == [] and len(dead) == 1
    with pytest.raises(JobFailed) as failed:
        handle.result(5)
    assert failed.value.type == "DeadLetter" and failed.value.result.status == "dead"
    assert store.counts()["queued"] == 0  # the next step was never released


def test_a_too_large_released_step_fails_the_workflow(system):  # noqa: F811
    worker(system)
    system.master(max_payload=4096)
    client = system.client()
    handle = client.run(chain(sig("echo", "x" * 3000), group(sig("echo"), sig("echo"))))
    assert handle.result(10) == ["x" * 3000] * 2
    handle = client.run(chain(sig("echo", "x" * 3000), sig("wf.add", "y" * 2000)))
    with pytest.raises(JobFailed) as failed:
        handle.result(10)
    assert failed.value.type == "PayloadTooLarge"


def test_a_workflow_whose_keys_are_broken_fails_alone(system):  # noqa: F811
    """An error inside the engine (here a key of the wrong type) fails that workflow and nothing else:
    the other results of the same batch are recorded, and no step of it is queued."""
    client = system.client()
    store = store_of(system)
    broken = client.run(group(sig("echo", 1), sig("echo", 2)))
    healthy = client.run(chain(sig("echo", 3), sig("echo")))
    plain = client.submit("echo", 4)
    claimed = store.claim(10)
    assert len(claimed) == 4
    system.redis.delete(system.keys.workflow_pending(broken.id, 1))
    system.redis.set(system.keys.workflow_pending(broken.id, 1), "not a set")
    assert store.finish([_outcome(job_id, 0) for job_id, _, _ in claimed], trusted=True) == 4
    with pytest.raises(JobFailed) as failed:
        broken.result(5)
    assert failed.value.type == "WorkflowError" and "WRONGTYPE" in failed.value.message
    assert JobHandle(client, plain.id, "echo").result(5) == 0  # (recorded above with no reply channel)
    assert [job_id for job_id, _, _ in store.claim(10)] == [workflow_info(store, healthy.id)["nodes"][2]["job"]]


# -- exactly once --------------------------------------------------------------------------------------------

def _outcome(job_id, value, status="ok"):
    payload = json.dumps({"v": 1, "id": job_id, "task": "echo", "status": status, "value": value}).encode()
    return Outcome(job_id, status, payload, None, None)


def test_a_result_recorded_twice_releases_the_next_step_once(system):  # noqa: F811
    """Two copies of a step ran (its worker was thought dead): both report; the first result is the
    only one recorded, and the next step and the callback are queued once."""
    client = system.client()
    store = store_of(system)
    handle = client.run(chain(sig("echo", 1), chord(group(sig("echo"), sig("echo")), sig("wf.total"))))
    first = store.claim(10)
    assert len(first) == 1
    assert store.finish([_outcome(first[0][0], 1)], trusted=True) == 1
    assert store.finish([_outcome(first[0][0], 99)], trusted=True) == 0
    children = store.claim(10)
    assert len(children) == 2 and all(json.loads(body)["args"] == [1] for _, body, _ in children)
    # Both children report twice, in one batch and again in another.
    twice = [_outcome(job_id, 1) for job_id, _, _ in children]
    assert store.finish(twice + twice, trusted=True) == 2
    assert store.finish(twice, trusted=True) == 0
    callback = store.claim(10)
    assert len(callback) == 1 and json.loads(callback[0][1])["args"] == [[1, 1]]
    assert store.claim(10) == []
    store.finish([_outcome(callback[0][0], 2)], trusted=True)
    store.finish([_outcome(callback[0][0], 3)], trusted=True)
    assert handle.result(5) == 2
    assert store.workflow_counts() == {"started": 1, "ok": 1, "failed": 0, "cancelled": 0}


def test_a_chord_of_a_thousand_children_calls_back_once_with_the_sum(running, tmp_path):
    log = str(tmp_path / "calls")
    handle = running.run(chord(group(sig("echo", i) for i in range(1000)), sig("wf.total", log=log)))
    assert handle.result(30) == sum(range(1000))
    assert lines(log) == ["total"]
    # The children's values went into the callback's record once; nothing of them is left behind.
    assert not running.redis.exists(running.keys.workflow_results(handle.id))


def test_a_chord_of_a_thousand_survives_a_worker_kill9_halfway_and_calls_back_once(
        system, spawn, tmp_path):  # noqa: F811
    """Subprocess worker, killed with -9 while the children run, then started again: every child ends
    with one recorded result, and the callback runs once with the right sum."""
    (tmp_path / "wf_tasks.py").write_text(TASKS)
    log = str(tmp_path / "calls")
    args = ("worker", "--channels", "1", "--concurrency", "50", "--app", "wf_tasks", "--metrics-port", "0")
    first = spawn(*args, cwd=tmp_path)
    wait_until(workers_registered(system.redis, system.namespace), timeout=20, message="the worker")
    system.master()
    client = system.client()
    handle = client.run(chord(group(sig("wf.step", i, 0.05, log=log, name="child") for i in range(1000)),
                              sig("wf.total", log=log)))
    wait_until(lambda: system.redis.llen(system.keys.done) >= 400, timeout=30, message="400 children done")
    first.signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    assert system.redis.llen(system.keys.done) < 1000
    spawn(*args, cwd=tmp_path)
    assert handle.result(60) == sum(range(1000))
    wait_until(lambda: settled(system), message="nothing left in flight")
    time.sleep(0.5)
    assert lines(log, "total") == ["total"]
    # Children that were running on the killed worker ran again: each is recorded once all the same.
    print(f"children run {len(lines(log, 'child'))} times")
    assert len(lines(log, "child")) >= 1000
    assert store_of(system).counts()["finished"]["ok"] == 1001


def test_a_master_kill9_between_two_steps_loses_nothing(system, spawn, tmp_path):  # noqa: F811
    """Subprocess master, killed with -9 while the first step runs: the step's result releases the next
    one into Redis with no master there, and the next master dispatches it."""
    log = str(tmp_path / "calls")
    worker(system)
    args = ("master", "--metrics-port", "0")
    first = spawn(*args)
    client = system.client()
    handle = client.run(chain(sig("wf.step", "a", 1.0, log=log, name="one"), sig("wf.step", log=log, name="two"),
                              sig("wf.add", "!")))
    wait_until(lambda: lines(log) == ["one"], message="the first step running")
    first.signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    wait_until(lambda: system.redis.llen(system.keys.intake) == 1, message="the next step queued by the result")
    spawn(*args)
    assert handle.result(30) == "a!"
    assert lines(log) == ["one", "two"]


@pytest.mark.parametrize("private_redis", [("--appendonly", "yes")], indirect=True, ids=["aof"])
def test_a_workflow_survives_a_redis_restart_with_aof(private_redis, tmp_path):
    """Redis restarts (append-only file) while a step runs: the workflow's state comes back with the
    server, the step's result (written once Redis is back) releases the chord, and its callback runs once."""
    from test_hardening import _System

    made = _System(private_redis.url, "gs-test-wf-aof")
    try:
        log = str(tmp_path / "calls")
        worker(made)
        made.master()
        client = made.client()
        flow = chain(sig("wf.step", 1, 1.0, log=log, name="one"),
                     chord(group(sig("wf.add", i) for i in range(3)), sig("wf.total", log=log)))
        handle = client.run(flow)
        wait_until(lambda: lines(log) == ["one"], message="the first step running")
        private_redis.restart(down_for=0.5)
        assert handle.result(30) == 3 + 3
        assert lines(log) == ["one", "total"]
    finally:
        made.close()


# -- cancel --------------------------------------------------------------------------------------------------

def test_cancel_stops_a_workflow_and_nothing_after_starts(running, tmp_path):
    log = str(tmp_path / "calls")
    handle = running.run(chain(sig("wf.step", 1, 0.5, log=log, name="one"), sig("wf.step", log=log, name="two")))
    wait_until(lambda: lines(log) == ["one"], message="the first step running")
    assert handle.cancel() == "cancelled"
    with pytest.raises(JobFailed) as failed:
        handle.result(5)
    assert failed.value.type == "Cancelled"
    wait_until(lambda: settled_client(running), message="the first step to end")
    time.sleep(0.2)
    assert lines(log) == ["one"]
    assert handle.cancel() == "finished"
    assert running.cancel_workflow("w0") == "unknown"
    assert running.store.workflow_counts()["cancelled"] == 1


def test_cancelling_one_step_fails_its_workflow(running, tmp_path):
    log = str(tmp_path / "calls")
    handle = running.run(chain(sig("wf.step", 1, 5.0, log=log, name="one"), sig("wf.step", log=log, name="two")))
    wait_until(lambda: lines(log) == ["one"], message="the first step running")
    (step,) = [n for n in handle.info()["nodes"] if n.get("state") == "running"]
    assert running.cancel([step["job"]]) == {step["job"]: "cancelled"}
    with pytest.raises(JobFailed) as failed:
        handle.result(5)
    assert failed.value.type == "Cancelled" and "wf.step" in str(failed.value)
    time.sleep(0.2)
    assert lines(log) == ["one"], "a step after the cancelled one ran"


# -- lookup and metrics --------------------------------------------------------------------------------------

def test_job_shows_a_workflow_with_its_steps_and_their_states(system, capsys):  # noqa: F811
    client = system.client()
    store = store_of(system)
    handle = client.run(chain(sig("echo", 1), chord(group(sig("echo") for _ in range(60)), sig("wf.total"))))
    info = workflow_info(store, handle.id)
    assert (info["state"], info["steps"], info["counts"]) == ("running", 62, {"queued": 1, "waiting": 61})
    assert [n["kind"] for n in info["nodes"][:4]] == ["chain", "step", "chord", "group"]
    worker(system)
    system.master()
    assert handle.result(10) == 60
    info = workflow_info(store, handle.id)
    assert (info["state"], info["status"], info["result"]) == ("finished", "ok", 60)
    assert info["counts"] == {"finished": 62}
    assert info["nodes"][-1]["task"] == "wf.total" and info["nodes"][-1]["result"] == 60
    text = render_workflow(info)
    assert text.startswith(f"workflow {handle.id}: finished (ok)") and "... 11 more steps" in text
    assert "wf.total  job" in text

    failed = client.run(chain(sig("wf.boom", 1), sig("echo")))
    with pytest.raises(JobFailed):
        failed.result(10)
    where = ("--redis-url", system.url, "--namespace", system.namespace)
    assert cli.main(["job", failed.id, *where]) == 0
    out = capsys.readouterr().out
    assert f"workflow {failed.id}: failed (error)" in out and "boom on 1" in out and "skipped" in out
    assert cli.main(["job", failed.id, "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["failed_step"] == info_failed_step(store, failed.id)
    assert cli.main(["job", "w999999", *where]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def info_failed_step(store, workflow_id):
    return next(n["job"] for n in workflow_info(store, workflow_id)["nodes"] if n.get("task") == "wf.boom")


def test_the_master_exports_workflows_started_and_ended(system, running):  # noqa: F811
    registry = new_registry()
    MasterMetrics(registry, ["echo"]).bind(system.masters[0])
    running.run(chain(sig("echo", 1), sig("echo"))).result(10)
    with pytest.raises(JobFailed):
        running.run(chain(sig("wf.boom"), sig("echo"))).result(10)
    value = registry.get_sample_value
    assert value("geventsched_master_workflows_total", {"event": "started"}) == 2
    assert value("geventsched_master_workflows_total", {"event": "ok"}) == 1
    assert value("geventsched_master_workflows_total", {"event": "failed"}) == 1
    assert value("geventsched_master_workflows_total", {"event": "cancelled"}) == 0


# -- bad input -----------------------------------------------------------------------------------------------

def _deep(depth):
    flow = sig("echo", 1)
    for _ in range(depth - 1):
        flow = chain(flow)
    return flow


@pytest.mark.parametrize("flow, error, words", [
    (chain(sig("echo", object())), TypeError, "not JSON"),
    (group(sig("echo", 1), sig("echo", float("nan"))), TypeError, "not JSON"),
    (chain(), ValueError, "empty chain"),
    (chain(sig("echo", 1), group()), ValueError, "empty group"),
    (chord(group(sig("echo", 1))), ValueError, "needs a callback"),
    (chord(sig("echo", 1), sig("echo")), TypeError, "header"),
    (chain(sig("echo", 1), "echo"), TypeError, "not a workflow step"),
    (sig("", 1), TypeError, "task"),
    (_deep(MAX_DEPTH + 1), ValueError, f"at most {MAX_DEPTH}"),
    (chain(sig("echo", 1, _priority=12)), ValueError, "priority"),
    (chain(sig("echo", 1, _timeout=-1)), ValueError, "_timeout"),
], ids=["object", "nan", "empty-chain", "empty-group", "no-callback", "header", "not-a-step", "no-task", "deep",
        "priority", "timeout"])
def test_bad_input_is_refused_at_run_and_nothing_is_submitted(system, flow, error, words):  # noqa: F811
    client = system.client()
    with pytest.raises(error, match=words):
        client.run(flow)
    assert workflow_keys(system) == []
    assert system.redis.hlen(system.keys.jobs) == 0 and store_of(system).counts()["queued"] == 0


def test_nesting_up_to_the_limit_runs(running):
    assert running.run(_deep(MAX_DEPTH)).result(10) == 1


def test_a_step_over_the_max_payload_and_options_of_no_meaning_are_refused(system):  # noqa: F811
    client = system.client(max_payload=1000)
    with pytest.raises(JobTooLarge):
        client.run(chain(sig("echo", "x" * 2000)))
    with pytest.raises(ValueError, match="_delay"):
        sig("echo", 1, _delay=5)
    assert workflow_keys(system) == []


# -- on a cluster --------------------------------------------------------------------------------------------

def test_workflows_run_on_a_redis_cluster(redis_cluster, tmp_path):
    from test_hardening import _System

    namespace = f"gs-test-wf-{os.urandom(4).hex()}"
    made = _System(redis_cluster, namespace)
    try:
        assert made.keys.cluster and Keys(namespace, cluster=True).workflow("w1").startswith("{")
        worker(made)
        made.master()
        client = made.client()
        flow = chain(sig("echo", 2), chord(group(sig("wf.add", i) for i in range(10)), sig("wf.total")))
        assert client.run(flow).result(20) == sum(range(10)) + 20
        with pytest.raises(JobFailed):
            client.run(chain(sig("wf.boom", 1), sig("echo"))).result(20)
    finally:
        made.close()
        Store.for_namespace(made.redis, namespace).delete_namespace()


def test_workflows_need_no_command_beyond_the_readme_acl_line(tmp_path):
    """The README's narrowest user runs workflows end to end: run, release, fail, dead letter, cancel,
    lookup, counts; ACL LOG stays empty."""
    from test_hardening import _System
    from test_security import acl_denials, make_user
    from geventsched.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        admin = redis.Redis(port=server.port, protocol=2)
        namespace = "gs-test-wf-acl"
        url, user = make_user(admin, server, namespace)
        made = _System(url, namespace)
        try:
            client = made.client()
            dead = client.run(chain(sig("echo", 1), sig("echo")))
            store_of(made).claim(10)
            assert len(store_of(made).reap(1, now=time.time() + 3600)[1]) == 1
            worker(made)
            made.master()
            flow = chain(sig("echo", 1), chord(group(sig("wf.add", i) for i in range(3)), sig("wf.total")))
            assert client.run(flow).result(20) == 1 * 3 + 3
            with pytest.raises(JobFailed):
                client.run(chain(sig("wf.boom", 1), sig("echo"))).result(20)
            with pytest.raises(JobFailed):
                dead.result(20)
            slow = client.run(chain(sig("wf.step", 1, 0.5), sig("echo")))
            assert slow.cancel() == "cancelled"
            assert workflow_info(store_of(made), slow.id)["state"] == "cancelled"
            assert store_of(made).workflow_counts() == {"started": 4, "ok": 1, "failed": 2, "cancelled": 1}
        finally:
            made.close()
            denied = acl_denials(admin, user)
            admin.close()
        assert denied == []


# -- the workflow state machine (hypothesis), against Redis -----------------------------------------------

LEAVES = st.builds(lambda n: sig("t", n), st.integers(0, 9))
VALUES = (st.integers(-2 ** 63, 2 ** 63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4)
          | st.none() | st.lists(st.integers(0, 9) | st.text(max_size=2), max_size=3)
          | st.dictionaries(st.text(max_size=3), st.booleans(), max_size=2))


def _flows(children):
    members = st.lists(children, min_size=1, max_size=3)
    return (members.map(lambda xs: chain(*xs)) | members.map(lambda xs: group(*xs))
            | st.tuples(members, children).map(lambda t: chord(group(*t[0]), t[1])))


FLOWS = st.recursive(LEAVES, _flows, max_leaves=8)
NOTHING = object()


class Model:
    """What a workflow should have done, from the results recorded so far, in the order they were
    recorded: written from the contract (workflow.py), apart from the scripts."""

    def __init__(self, plan, job_ids):
        self.nodes = plan.nodes
        self.job_of = {}
        ids = iter(job_ids)
        for number, node in enumerate(self.nodes, 1):
            if node[0] == "s":
                self.job_of[number] = next(ids)
        self.node_of = {job: number for number, job in self.job_of.items()}
        self.state, self.value, self.failed = "running", None, None
        self.released = {}  # job id -> the arguments it must be released with
        self.pending, self.values = {}, {}
        self._start(1, NOTHING)

    def _start(self, number, value):
        kind, _, _, _, step, children = self.nodes[number - 1]
        if kind == "s":
            self.released[self.job_of[number]] = list(step.args) if value is NOTHING else [value, *step.args]
        elif kind == "g":
            self.pending[number], self.values[number] = set(range(1, len(children) + 1)), {}
            for child in children:
                self._start(child, value)
        else:
            self._start(children[0], value)

    def _complete(self, number, value):
        _, parent, position, following, _, _ = self.nodes[number - 1]
        if parent == 0:
            self.state, self.value = "ok", value
        elif following > 0:
            self._start(following, value)
        elif following == 0:
            self._complete(parent, value)
        elif position in self.pending[parent]:
            self.pending[parent].discard(position)
            self.values[parent][position] = value
            if not self.pending[parent]:
                group_values = self.values[parent]
                self._complete(parent, [group_values[p] for p in sorted(group_values)])

    def recorded(self, job_id, status, value=None):
        if self.state != "running":
            return
        if status == "ok":
            self._complete(self.node_of[job_id], value)
        else:
            self.state, self.failed = "failed", job_id

    def cancel(self):
        if self.state == "running":
            self.state = "cancelled"


class WorkflowMachine(RuleBasedStateMachine):
    """Workflows started, their steps claimed, run (ok or failing, some reported by copies whose
    dispatch is over, some recorded twice), reaped to the dead letters, cancelled; after every step
    each workflow has released exactly the steps the model says, with the arguments it says, none of
    them twice, and ended as the model did."""

    def __init__(self, client):
        super().__init__()
        self.r = client
        self.keys = Keys(f"gs-wfprop-{os.urandom(6).hex()}")
        self.store = Store(client, self.keys)
        self.models = {}  # workflow id -> Model
        self.copies = []  # (job id, serial) dispatched and not reported
        self.latest = {}  # job id -> serial of its latest dispatch
        self.serial = 0

    def teardown(self):
        keys = list(self.r.scan_iter(match=f"{self.keys.namespace}:*", count=1000))
        if keys:
            self.r.delete(*keys)

    def _model_of(self, job_id):
        return next(m for m in self.models.values() if job_id in m.node_of)

    @initialize(flow=FLOWS)
    def first(self, flow):
        self.run(flow)

    @rule(flow=FLOWS)
    def run(self, flow):
        plan = Plan(flow)
        ids = self.store.new_ids(plan.steps + 1)
        workflow_id = "w" + ids[0]
        self.store.run_workflow(workflow_id, "", plan.encode(workflow_id, ids[1:], JsonCodec(), time.time()))
        self.models[workflow_id] = Model(plan, ids[1:])

    @rule(count=st.integers(1, 6))
    def claim(self, count):
        for job_id, body, _ in self.store.claim(count):
            assert json.loads(body)["args"] == self._model_of(job_id).released[job_id]
            self.serial += 1
            self.copies.append((job_id, self.serial))
            self.latest[job_id] = self.serial
            self.r.hset(self.keys.dispatched, job_id, f"t{self.serial} w1")

    def _current(self):
        in_flight = {i.decode() for i in self.r.zrange(self.keys.inflight, 0, -1)}
        return [c for c in self.copies if c[0] in in_flight and self.latest[c[0]] == c[1]]

    @rule(data=st.data(), stale=st.booleans())
    def report(self, data, stale):
        """Workers report a batch: ok with a value, or failed (error, timeout); ``stale``: copies whose
        dispatch is over report too (their reports must change nothing)."""
        current = self._current()
        pool = [c for c in self.copies if c not in current] + current if stale else current
        if not pool:
            return
        picked = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
        outcomes = []
        for job_id, serial in picked:
            status = data.draw(st.sampled_from(["ok", "ok", "ok", "error", "timeout"]))
            value = data.draw(VALUES) if status == "ok" else None
            error = None if status == "ok" else {"type": "Boom", "message": "m", "traceback": ""}
            payload = JsonCodec().encode_result(Result(job_id, status, value, error, task="t", token=f"t{serial}"))
            outcomes.append((Outcome(job_id, status, payload, "", f"t{serial}"), value))
            self.copies.remove((job_id, serial))
        before = {o.id: self.r.exists(self.keys.result(o.id)) for o, _ in outcomes}
        self.store.finish([o for o, _ in outcomes])
        for outcome, value in outcomes:  # in the order the script recorded them
            if not before[outcome.id] and self.r.get(self.keys.result(outcome.id)) is not None:
                stored = json.loads(self.r.get(self.keys.result(outcome.id)))
                if stored.get("tok") == outcome.token:
                    before[outcome.id] = 1
                    self._model_of(outcome.id).recorded(outcome.id, outcome.status, value)

    @rule(data=st.data())
    def report_twice(self, data):
        """A job that has its result reports again (it ran twice): nothing changes."""
        done = [job for m in self.models.values() for job in m.released if self.r.exists(self.keys.result(job))]
        if done:
            job_id = data.draw(st.sampled_from(done))
            payload = JsonCodec().encode_result(Result(job_id, "ok", "again", task="t"))
            assert self.store.finish([Outcome(job_id, "ok", payload, "", None)], trusted=True) == 0

    @rule(max_attempts=st.integers(1, 2))
    def reap(self, max_attempts):
        _, dead = self.store.reap(max_attempts, now=time.time() + 10 ** 6)
        for job_id in dead:
            self._model_of(job_id).recorded(job_id, "dead")

    @rule(data=st.data())
    def cancel(self, data):
        workflow_id = data.draw(st.sampled_from(sorted(self.models)))
        word, _ = self.store.cancel_workflow(workflow_id, "error")
        model = self.models[workflow_id]
        assert word == ("cancelled" if model.state == "running" else "finished")
        model.cancel()

    @invariant()
    def every_workflow_did_what_its_results_say(self):
        k, r = self.keys, self.r
        queued = [i.decode() for intake in k.intakes for i in r.lrange(intake, 0, -1)]
        in_flight = {i.decode() for i in r.zrange(k.inflight, 0, -1)}
        outcomes = {"started": len(self.models), "ok": 0, "failed": 0, "cancelled": 0}
        for workflow_id, model in self.models.items():
            state = r.hget(k.workflow(workflow_id), "state").decode()
            assert state == model.state, f"{workflow_id}: {state} in Redis, {model.state} expected"
            for job_id in model.node_of:
                body, stored = r.hget(k.jobs, job_id), r.get(k.result(job_id))
                present = body is not None or stored is not None
                assert present == (job_id in model.released), \
                    f"{workflow_id}: step {job_id} {'released' if present else 'not released'}, model: {model.released}"
                if present:
                    record = json.loads(body) if body is not None else json.loads(stored)["job"]
                    assert record["args"] == model.released[job_id], f"step {job_id}'s arguments"
                if stored is None:
                    assert queued.count(job_id) + (job_id in in_flight) <= 1, f"step {job_id} queued twice"
            if model.state != "running":
                outcomes[model.state] += 1
                result = json.loads(r.get(k.result(workflow_id)))
                if model.state == "ok":
                    assert (result["status"], result["value"]) == ("ok", model.value)
                else:
                    assert result["status"] != "ok" and result["error"]["type"] in ("Boom", "DeadLetter", "Cancelled")
                    if model.state == "failed":
                        assert result["step"] == model.failed
                assert not any(r.exists(k.workflow_pending(workflow_id, g)) for g in model.pending)
                assert not r.exists(k.workflow_results(workflow_id))
        assert self.store.workflow_counts() == outcomes


WORKFLOW_MACHINE = settings(max_examples=40, stateful_step_count=25, deadline=None, database=None,
                            report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])


def test_workflow_state_machine(redis_server):
    client = redis.Redis.from_url(redis_server, protocol=2)
    try:
        run_state_machine_as_test(lambda: WorkflowMachine(client), settings=WORKFLOW_MACHINE)
    finally:
        client.close()
