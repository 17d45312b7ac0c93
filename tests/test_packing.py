"""transport.py is the only RESP packer: its fast packers write what the plain one writes."""

from geventsched import transport
from geventsched.dispatch import Channel
from geventsched.keys import Keys
from geventsched.store import Store


def test_pack_pairs_with_the_shared_side_first_matches_the_plain_packer():
    pairs = [(1700000031, "7"), (1700000031, "8"), (1700000091, "9"), (1700000031, "\u00e9t\u00e9")]
    got = transport.pack_pairs("ZADD", "ns:inflight", pairs, flags=("XX",), shared=0,
                               shared_value=lambda d: d + 1)
    assert got == transport.pack("ZADD", "ns:inflight", "XX", "1700000032", "7", "1700000032", "8",
                                 "1700000092", "9", "1700000032", "\u00e9t\u00e9")


def test_pack_pairs_with_the_shared_side_second_matches_the_plain_packer():
    pairs = [("1", "w-a"), ("2", "w-b"), ("3", "w-a"), ("4", "")]
    got = transport.pack_pairs("HSET", "k", pairs, shared=1, shared_value=lambda w: f"tok {w}")
    assert got == transport.pack("HSET", "k", "1", "tok w-a", "2", "tok w-b", "3", "tok w-a", "4", "tok ")


def test_pack_publishes_matches_one_publish_after_another():
    payloads = [b"", b"x" * 300, b"\r\n"]
    assert transport.pack_publishes(b"ch", payloads) == b"".join(
        transport.pack("PUBLISH", b"ch", p) for p in payloads)
    assert transport.pack_publishes(b"ch", [b"p"], head=transport.SPUBLISH) == transport.pack("SPUBLISH", "ch", "p")


def test_store_commands_run_on_redis(r, namespace):
    """The two commands a dispatched batch carries do what the store reads back."""
    store = Store(r, Keys(namespace))
    r.zadd(store.keys.inflight, {"1": 5, "2": 5})  # XX: only jobs already in flight get a deadline
    data = store.deadline_command([(100, "1"), (100, "2"), (100, "3")])
    data += store.dispatch_command([("1", Channel(b"CHANNEL_DISPATCH_1", "w1", 1)),
                                    ("2", Channel(b"CHANNEL_DISPATCH_2", None, 1))], "tok", 1767225600.25)
    pipe = transport.Pipe(r)
    try:
        assert pipe.call(data, 2) == [0, 2]
    finally:
        pipe.close()
    assert r.zrange(store.keys.inflight, 0, -1, withscores=True) == [(b"1", 101.0), (b"2", 101.0)]
    assert store.current([("1", "tok"), ("2", "tok"), ("1", "other")]) == [True, True, False]
    assert store.owned_by("w1") == {"1": "tok"}
    assert r.hget(store.keys.dispatched, "1") == b"tok 1767225600.250 CHANNEL_DISPATCH_1 w1"


def test_a_stored_result_names_its_worker_in_json_whatever_the_name(r, namespace):
    """The finish script writes the worker's name into the stored result itself: plain names as they
    are, names with quotes, backslashes or control characters escaped."""
    import json

    from geventsched.store import Outcome

    store = Store.for_namespace(r, namespace)
    names = {"1": "w-host-12", "2": 'we"ird\\name\tx', "3": "h\u00f4te-\u2603"}
    for job_id, worker in names.items():
        r.hset(store.keys.jobs, job_id, json.dumps({"v": 1, "id": job_id, "task": "t"}))
        r.hset(store.keys.dispatched, job_id, f"tok{job_id} 1700000000.5 CHANNEL_DISPATCH_1 {worker}")
    outcomes = [Outcome(job_id, "ok", json.dumps({"v": 1, "id": job_id, "status": "ok", "value": 1}).encode(),
                        None, f"tok{job_id}") for job_id in names]
    assert store.finish(outcomes) == 3
    for job_id, worker in names.items():
        stored = json.loads(r.get(store.keys.result(job_id)))
        assert stored["worker"] == worker and stored["job"]["id"] == job_id
