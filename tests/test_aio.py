"""The asyncio client (``geventsched.aio``) against a real worker and master.

The test process runs under gevent (conftest patches it), so every asyncio program here runs in a
subprocess of its own, as a user's would: one that never imports gevent. One worker and one master,
also subprocesses, serve the whole module.
"""

import json
import os
import subprocess
import sys
import uuid

import pytest

from conftest import ROOT, Proc, wait_until, workers_registered
from geventsched import transport
from geventsched.keys import Keys
from geventsched.store import Store, lua_script

ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

# A test's asyncio program: its ``main(client)`` prints JSON lines (``out(...)``); the harness then
# says whether gevent was ever imported.
HARNESS = """
import asyncio, json, sys, time
from geventsched.aio import AsyncClient
from geventsched.errors import JobFailed

def out(**fields):
    print(json.dumps(fields), flush=True)

{body}

async def _run():
    async with AsyncClient.from_url(sys.argv[1], sys.argv[2]) as client:
        await main(client)

asyncio.run(_run())
out(gevent="gevent" in sys.modules)
"""


def run_async(body, url, namespace, timeout=60):
    """Run ``body`` (defining ``async def main(client)``) in a fresh interpreter; its JSON lines."""
    done = subprocess.run([sys.executable, "-c", HARNESS.format(body=body), url, namespace], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[-1] == {"gevent": False}, "the asyncio program imported gevent"
    return lines[:-1]


@pytest.fixture(scope="module")
def fleet(redis_server, tmp_path_factory):
    """A worker and a master for the module, in a namespace of their own: ``(url, namespace)``."""
    namespace = f"gs-test-{uuid.uuid4().hex[:12]}"
    logs = tmp_path_factory.mktemp("aio")
    common = ["--redis-url", redis_server, "--namespace", namespace, "--metrics-port", "0"]
    procs = [Proc(["worker", *common, "--channels", "2", "--concurrency", "200"], env=ENV,
                  log_path=logs / "worker.log"),
             Proc(["master", *common], env=ENV, log_path=logs / "master.log")]
    r = transport.connect(redis_server)
    try:
        ready = workers_registered(r, namespace)
        master = Keys(namespace).master
        try:
            wait_until(lambda: ready() and r.exists(master), timeout=30, message="the worker and the master")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(proc.output()[-2000:] for proc in procs)) from None
        yield redis_server, namespace
    finally:
        for proc in procs:
            proc.stop()
        Store.for_namespace(r, namespace).delete_namespace()
        r.close()


def test_importing_it_imports_no_gevent_and_patches_nothing():
    check = ("import socket, sys, threading, time\n"
             "import geventsched.aio\n"
             "assert 'gevent' not in sys.modules, sorted(m for m in sys.modules if 'gevent.' in m or m == 'gevent')\n"
             "assert socket.socket.__module__ == 'socket' and time.sleep.__module__ == 'time'\n"
             "assert threading.Thread.__module__ == 'threading'\n")
    done = subprocess.run([sys.executable, "-c", check], env=ENV, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_a_gather_of_1000_submits_gets_every_result(fleet):
    body = """
async def main(client):
    handles = await asyncio.gather(*(client.submit("echo", i) for i in range(1000)))
    values = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    out(ids=len({h.id for h in handles}), right=values == list(range(1000)))
    many = await client.submit_many([("echo", [i], {}) for i in range(100)])
    results = await client.wait(many, timeout=60)
    out(waited=sorted(r.value for r in results.values()) == list(range(100)))
    # A job that replies to nobody, and a handle made from an id: their stored results are read.
    quiet, = await client.submit_many([("echo", ["quiet"], {})], reply=False)
    from geventsched.aio import AsyncJobHandle
    out(quiet=await quiet.result(timeout=30), by_id=await AsyncJobHandle(client, handles[7].id).result(timeout=5))
"""
    assert run_async(body, *fleet) == [{"ids": 1000, "right": True}, {"waited": True}, {"quiet": "quiet", "by_id": 7}]


def test_a_failed_job_raises_job_failed_and_a_slow_one_timeout_error(fleet):
    body = """
async def main(client):
    failing = await client.submit("fail", "out of paper", _max_retries=0)
    try:
        await failing.result(timeout=30)
    except JobFailed as exc:
        out(type=exc.type, message=exc.message, status=exc.result.status)
    slow = await client.submit("sleep", 30)
    started = time.monotonic()
    try:
        await slow.result(timeout=0.3)
    except TimeoutError as exc:
        out(timeout=str(exc), waited=round(time.monotonic() - started, 1))
    out(nothing=await client.wait([slow], timeout=0.1))
"""
    failed, timed_out, nothing = run_async(body, *fleet)
    assert failed == {"type": "TaskFailure", "message": "out of paper", "status": "error"}
    assert "no result within 0.3s" in timed_out["timeout"] and timed_out["waited"] < 5
    assert nothing == {"nothing": {}}


def test_bad_input_raises_before_anything_is_sent(redis_server, r, namespace):
    body = """
async def main(client):
    for args, options in [((object(),), {}), ((float("nan"),), {}), ((1,), {"_priority": 10}),
                          ((1,), {"_priority": -1}), ((1,), {"_delay": -1}), ((1,), {"_unique_key": ""}),
                          ((1,), {"_delay": 1, "_at": time.time() + 5}), ((1,), {"_timeout": 0}),
                          ((1,), {"_max_retries": -1})]:
        try:
            await client.submit("echo", *args, **options)
            out(raised=None)
        except (TypeError, ValueError) as exc:
            out(raised=type(exc).__name__, message=str(exc))
"""
    raised = [line["raised"] for line in run_async(body, redis_server, namespace)]
    assert raised == ["TypeError"] * 2 + ["ValueError"] * 7
    keys = Keys(namespace)
    assert not r.exists(keys.jobs, keys.unique, keys.scheduled, keys.priority, *keys.intakes)


def test_delay_priority_and_unique_key_take_the_scripted_path(fleet, r):
    body = """
async def main(client):
    submitted = time.time()
    late = await client.submit("echo", "late", _delay=1.0)
    first = await client.submit("sleep", 0.5, _unique_key="nightly-report")
    again = await asyncio.gather(*(client.submit("sleep", 0.5, _unique_key="nightly-report") for _ in range(50)))
    urgent = await client.submit("echo", "urgent", _priority=9)
    out(urgent=await urgent.result(timeout=30), same={h.id for h in again} == {first.id},
        again=await again[-1].result(timeout=30))
    result = await late.wait(timeout=30)
    out(late=result.value, after=result.started - submitted)
"""
    keys = Keys(fleet[1])
    before = r.hlen(keys.jobs)
    urgent, late = run_async(body, *fleet)
    assert urgent == {"urgent": "urgent", "same": True, "again": 0.5}
    assert late["late"] == "late" and late["after"] >= 1.0
    assert r.hlen(keys.jobs) == before  # one job for the unique key, and every job finished


def test_results_still_come_after_the_subscriber_connection_is_cut(fleet):
    body = """
async def main(client):
    slow = await client.submit("sleep", 1.0)
    await asyncio.sleep(0.2)
    host, port = client._replies._pubsub.connection._writer.get_extra_info("sockname")[:2]
    out(killed=await client.redis.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}"))
    out(slow=await slow.result(timeout=30))
    out(after=await (await client.submit("echo", "after")).result(timeout=30))
"""
    assert run_async(body, *fleet) == [{"killed": True}, {"slow": 1.0}, {"after": "after"}]


def test_cancel_from_asyncio_in_every_state(fleet):
    body = """
async def main(client):
    later = await client.submit("echo", "never", _delay=60)
    running = await client.submit("sleep", 60)
    done = await client.submit("echo", "done")
    await done.result(timeout=30)
    waiting = asyncio.ensure_future(running.result(timeout=30))
    await asyncio.sleep(0.5)  # the sleep runs by now (were it still queued, it would be cancelled all the same)
    started = time.monotonic()
    out(words=list((await client.cancel([later, running.id, done, "999999999"])).values()))
    try:
        await waiting
    except JobFailed as exc:
        out(type=exc.type, status=exc.result.status, told=time.monotonic() - started < 5)
    try:
        await later.result(timeout=5)
    except JobFailed as exc:
        out(later=exc.result.status)
    out(again=await running.cancel())
"""
    assert run_async(body, *fleet) == [{"words": ["cancelled", "cancelled", "finished", "unknown"]},
                                       {"type": "Cancelled", "status": "cancelled", "told": True},
                                       {"later": "cancelled"}, {"again": "finished"}]


def test_an_announcement_is_only_believed_for_a_job_redis_has_no_record_of(redis_server, namespace):
    # No master in this namespace: the job stays queued, with its record, and no result.
    body = """
async def main(client):
    def forged(job_id):
        return json.dumps({"v": 1, "id": job_id, "task": "echo", "status": "ok", "value": "forged"})
    queued = await client.submit("echo", "real")
    await client.redis.publish(client.reply_channel, forged(queued.id))
    out(queued=(await client.wait([queued], timeout=1.0)).get(queued.id) is None)
    from geventsched.aio import AsyncJobHandle
    unrecorded = AsyncJobHandle(client, "999999999", "echo")  # as --durability none leaves a job
    waiting = asyncio.ensure_future(unrecorded.result(timeout=10))
    await asyncio.sleep(0.2)
    await client.redis.publish(client.reply_channel, forged("999999999"))
    out(unrecorded=await waiting)
    # A cue (what a result over 16 KiB is announced as) has no value: never taken for the result.
    cued = AsyncJobHandle(client, "999999998", "echo")
    waiting = asyncio.ensure_future(client.wait([cued], timeout=1.0))
    await asyncio.sleep(0.2)
    await client.redis.publish(client.reply_channel, '{"v":1,"id":"999999998","status":"ok","cue":true}')
    out(cued=(await waiting).get("999999998") is None)
"""
    assert run_async(body, redis_server, namespace) == [{"queued": True}, {"unrecorded": "forged"}, {"cued": True}]


def test_a_signed_reply_frame_is_believed_as_it_is_and_a_forged_one_is_not(redis_server, namespace):
    # No master: the jobs stay queued, recorded and without a result, so only a signed frame answers.
    body = """
from geventsched.protocol import reply_mac

async def main(client):
    def frame(job_id, value, secret=None):
        results = json.dumps({"v": 1, "id": job_id, "task": "echo", "status": "ok", "value": value}).encode()
        mac = b',"mac":"' + reply_mac(secret, results).encode() + b'"' if secret else b""
        return b'{"v":2,"results":[' + results + b']' + mac + b'}'
    believed, forged = await client.submit("echo", "a"), await client.submit("echo", "b")
    secret = await client.redis.get(client.keys.reply_key_prefix + client.reply_channel)
    out(kept=secret is not None and await client.redis.ttl(client.keys.reply_key_prefix + client.reply_channel) > 3600)
    for data in (frame(forged.id, "wrong key", b"f" * 32), frame(forged.id, "no mac"),
                 frame(believed.id, "signed", secret)):
        await client.redis.publish(client.reply_channel, data)
    out(believed=await believed.result(timeout=5))
    out(forged=(await client.wait([forged], timeout=1.0)).get(forged.id) is None)
"""
    assert run_async(body, redis_server, namespace) == [{"kept": True}, {"believed": "signed"}, {"forged": True}]


def test_a_wait_for_its_own_jobs_reads_nothing_back_from_redis(private_redis):
    """As the gevent client: jobs submitted while the client listens are announced to it; a wait for
    them reads no stored result (a handle made from an id still does). A server of its own: the
    count of reads is the server's."""
    body = """
from geventsched.aio import AsyncJobHandle
from geventsched.protocol import reply_mac

async def main(client):
    async def reads():
        return (await client.redis.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0)
    handles = await client.submit_many([("echo", [i], {}) for i in range(3)])
    secret = await client.redis.get(client.keys.reply_key_prefix + client.reply_channel)
    results = ",".join(json.dumps({"v": 1, "id": h.id, "task": "echo", "status": "ok", "value": "v"}) for h in handles)
    frame = '{"v":2,"results":[' + results + '],"mac":"' + reply_mac(secret, results.encode()) + '"}'
    before = await reads()
    waiting = asyncio.ensure_future(client.wait(handles, timeout=5))
    await asyncio.sleep(0.2)
    await client.redis.publish(client.reply_channel, frame)
    got = await waiting
    out(values=[got[h.id].value for h in handles], reads=await reads() - before)
    await client.wait([AsyncJobHandle(client, handles[0].id, "echo")], timeout=0.5)
    out(by_id=await reads() - before >= 1)
"""
    assert run_async(body, private_redis.url, "") == [{"values": ["v"] * 3, "reads": 0}, {"by_id": True}]


class ScriptRecorder:
    """Stands in for redis-py's client only to see what ``Store`` registers and passes to its scripts:
    the asyncio client must run the same scripts with the same KEYS and ARGV."""

    publish = spublish = None

    def register_script(self, text):
        return RecordedScript(text)


class RecordedScript:
    def __init__(self, text):
        self.text = text
        self.calls = []

    def __call__(self, keys, args):
        self.calls.append((list(keys), list(args)))
        if self.text.endswith(lua_script("cancel")):
            return [b"unknown"] * (len(args) - 7)
        return [str(job_id).encode() for job_id in args[3::5]]  # submit.lua: each job's own id


def test_the_scripts_get_the_arguments_store_gives_them():
    import redis.asyncio

    from geventsched import submission
    from geventsched.aio import CANCEL_BATCH, AsyncClient

    store = Store(ScriptRecorder(), Keys("ns"))
    client = AsyncClient(redis.asyncio.Redis(protocol=2), "ns")
    assert client._submit_script.script == store._submit.text and client._cancel_script.script == store._cancel.text
    encoded = [(str(n), b'{"v":1,"id":"%d"}' % n) for n in range(1, 1502)]
    for opts in [submission.options(1000.0, delay=5, priority=3, unique_key="k"),
                 submission.options(1000.0, priority=9)]:
        store._submit.calls.clear()
        store.submit_with_options([(job_id, body, opts.priority, opts.due, opts.unique_key)
                                   for job_id, body in encoded])
        assert client._submit_calls(encoded, opts) == store._submit.calls
    ids = [job_id for job_id, _ in encoded]
    store.cancel(ids)
    assert [client._cancel_call(ids[i:i + CANCEL_BATCH]) for i in range(0, len(ids), CANCEL_BATCH)] == \
        store._cancel.calls
