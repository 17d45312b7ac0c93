"""Batch frames on the wire (protocol.py): many jobs per dispatch message, many results per result and
reply message, and a fleet that mixes frame readers with older workers and clients that read one job
or result per message. Master and workers in this process, on a private Redis."""

import json

import pytest

from geventsched import transport
from geventsched.errors import DecodeError
from geventsched.hooks import WorkerHooks
from geventsched.protocol import FRAME, Job, JsonCodec, Result
from test_hardening import system  # noqa: F401 (a fixture)

codec = JsonCodec()


class Received(WorkerHooks):
    """Every job a worker took, with whether it came in a frame."""

    def __init__(self):
        self.jobs = []

    def on_received(self, jobs):
        self.jobs += jobs


class _OneJobCodec(JsonCodec):
    """What a worker from before batch frames reads: version-1 messages only."""

    def decode_dispatch(self, data):
        return [self.decode_job(data)], [], []


def older_worker(system, channels, hooks):  # noqa: F811
    """A worker as it was before frames: it lists no frame version and reads one job per message."""
    worker = system.worker(channels=channels, hooks=hooks, start=False)
    worker.codec = _OneJobCodec(worker.codec.max_payload)
    heartbeat = worker.registration._heartbeat

    def without_frames():
        beat = heartbeat()
        del beat["frames"]
        return beat

    worker.registration._heartbeat = without_frames
    worker.start()
    return worker


def test_a_frame_round_trips_and_old_messages_still_decode():
    records = [codec.encode_job(Job(str(i), "echo", [i], {}, None, None, 1.0)) for i in range(3)]
    frame = codec.encode_frame([*records, codec.ref("9")], "tok1")
    jobs, refs, errors = codec.decode_dispatch(frame)
    assert [(j.id, j.token, j.framed) for j in jobs] == [("0", "tok1", True), ("1", "tok1", True), ("2", "tok1", True)]
    assert refs == [("9", "tok1")] and errors == []
    single = codec.encode_dispatch(Job("5", "echo", [5]), codec.dispatch_tail("t5"))
    (job,), refs, errors = codec.decode_dispatch(single)
    assert (job.id, job.token, job.framed, refs, errors) == ("5", "t5", False, [], [])
    (results,) = codec.encode_results([codec.encode_result(Result(str(i), "ok", i)) for i in range(2)])
    assert [r.value for r in codec.decode_results(results)[0]] == [0, 1]
    big = [codec.encode_result(Result(str(i), "ok", "x" * 100_000)) for i in range(6)]
    assert [len(codec.decode_results(frame)[0]) for frame in codec.encode_results(big)] == [2, 2, 2]


def test_a_bad_entry_costs_only_itself():
    good = codec.encode_job(Job("1", "echo", [1]))
    jobs, refs, errors = codec.decode_dispatch(codec.encode_frame([good, b'{"id": 7}', b"[1]"], "t"))
    assert [j.id for j in jobs] == ["1"] and [e.reason for e in errors] == ["missing_field", "not_an_object"]
    with pytest.raises(DecodeError):
        codec.decode_dispatch(b'{"v": 2, "jobs": []}')  # no token


def test_a_mixed_fleet_gives_frames_only_to_workers_that_read_them(system):  # noqa: F811
    old_hooks, new_hooks = Received(), Received()
    older_worker(system, ("1", "2"), old_hooks)
    system.worker(channels=("3", "4"), hooks=new_hooks)
    system.master()
    client = system.client()
    handles = client.submit_many([("echo", [i], {}) for i in range(600)])
    assert [h.result(20) for h in handles] == list(range(600))
    assert old_hooks.jobs and new_hooks.jobs, "both workers should have served"
    assert not any(job.framed for job in old_hooks.jobs), "an older worker was sent a frame"
    assert all(job.framed for job in new_hooks.jobs)
    assert len(old_hooks.jobs) + len(new_hooks.jobs) == 600


def test_an_older_client_hears_one_result_per_message(system):  # noqa: F811
    system.worker()
    system.master()
    client = system.client()
    store = client.store
    reply = client.keys.reply_channel("older")
    listener = transport.subscribe(system.redis, [reply])
    old = [(job_id, codec.encode_job(Job(job_id, "echo", [job_id], {}, None, reply, 1.0)))
           for job_id in store.new_ids(20)]  # no "rf": it reads no reply frame
    store.submit(old)
    heard = []
    while len(heard) < 20:
        for _, data in listener.read(10):
            doc = json.loads(data)
            assert doc["v"] == 1, "an older client was sent a reply frame"
            heard.append(doc["id"])
    listener.close()
    assert sorted(heard) == sorted(job_id for job_id, _ in old)
    # A client of today gets its results in reply frames.
    assert all(h.result(10) == i for i, h in enumerate(client.submit_many([("echo", [i], {}) for i in range(50)])))
    assert json.loads(codec.encode_job(Job("1", "echo", reply="r", reply_frames=True)))["rf"] == FRAME


def test_a_large_result_is_announced_as_a_cue_and_read_whole_from_redis(r, namespace):
    """Of a result over 16 KiB, its client and the master hear only a cue (id, status, token: all the
    master reads of any result); the value is stored whole, for the client to read."""
    from geventsched.store import Outcome, Store

    store = Store.for_namespace(r, namespace)
    keys, value = store.keys, "x" * 20_000
    reply = keys.reply_channel("big")
    spy = transport.subscribe(r, [keys.result_channel, reply])
    try:
        for job_id, token in (("1", "t1"), ("2", "t2")):
            r.hset(keys.jobs, job_id, json.dumps({"v": 1, "id": job_id, "task": "echo"}))
            r.hset(keys.dispatched, job_id, f"{token} 1700000000.5 CHANNEL_DISPATCH_1 w-1")
        outcomes = [Outcome("1", "ok", codec.encode_result(Result("1", "ok", value, task="echo", token="t1")),
                            reply, "t1", framed=True, reply_frames=True),
                    Outcome("2", "ok", codec.encode_result(Result("2", "ok", "small", task="echo", token="t2")),
                            reply, "t2", framed=True, reply_frames=True)]
        assert store.finish(outcomes) == 2
        heard, sizes = {}, []
        while len(heard) < 4:
            for channel, data in spy.read(5):
                sizes.append(len(data))
                for result in codec.decode_results(data)[0]:
                    heard[(channel.decode().rsplit(":", 1)[-1], result.id)] = result
    finally:
        spy.close()
    for where in ("CHANNEL_RESULT", "big"):
        cue = heard[(where, "1")]
        assert (cue.cue, cue.value, cue.status, cue.token) == (True, None, "ok", "t1")
        assert (heard[(where, "2")].cue, heard[(where, "2")].value) == (False, "small")
    assert max(sizes) < 1000  # no message carried the large value
    assert json.loads(r.get(keys.result("1")))["value"] == value


def test_a_client_waits_for_a_large_result_through_its_cue(system):  # noqa: F811
    system.worker()
    system.master()
    client = system.client()
    value = "y" * 100_000
    assert client.submit("echo", value).result(10) == value


def test_a_cue_is_never_taken_for_the_result_itself(system):  # noqa: F811
    """A job with no record in Redis is answered by its announcement (fire-and-forget has nothing
    else), but never by a cue, which has no value."""
    client = system.client()
    client._listen()
    system.redis.publish(client.reply_channel, b'{"v":1,"id":"8000001","status":"ok","cue":true}')
    system.redis.publish(client.reply_channel, b'{"v":1,"id":"8000002","status":"ok","value":"told"}')
    from geventsched.client import JobHandle

    results = client.wait([JobHandle(client, "8000001", "echo"), JobHandle(client, "8000002", "echo")], 1.0)
    assert {job_id: result.value for job_id, result in results.items()} == {"8000002": "told"}
