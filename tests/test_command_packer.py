"""The command packer every client of ours uses (``transport.CommandPacker``): the bytes redis-py's
own packer would send, made without its per-argument Python steps."""

import hiredis
import pytest
import redis
from redis.connection import Encoder, HiredisRespSerializer, PythonRespSerializer

from geventsched import transport

_encode = Encoder("utf-8", "strict", False).encode
REDIS_PY = HiredisRespSerializer(PythonRespSerializer(6000, _encode).pack, _encode)


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "k1", "k2", "plain", b"bytes", 7, -3, 2 ** 70, 0.1, 1 / 3, 1e-07, 1e20),
    ("SET", "k", "één ☃ \U0001F600", "EX", 5),
    ("SCRIPT LOAD", "return 1"),
    ("CLIENT", "SETNAME", "x"),
    ("HSET", "h", "f", memoryview(b"view"), "g", bytearray(b"array")),
    ("PUBLISH", "c", b"x" * 100_000),
])
def test_it_packs_what_redis_py_packs(args):
    assert b"".join(transport.PACKER.pack(*args)) == b"".join(REDIS_PY.pack(*args))


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_a_value_redis_cannot_take_is_refused_as_redis_py_refuses_it(bad):
    with pytest.raises(redis.DataError):
        REDIS_PY.pack("SET", "k", bad)
    with pytest.raises(redis.DataError):
        transport.PACKER.pack("SET", "k", bad)


def test_clients_use_it_and_values_round_trip(redis_url, namespace):
    client = transport.connect(redis_url)
    connection = client.connection_pool.get_connection()
    try:
        assert connection._command_packer is transport.PACKER
    finally:
        client.connection_pool.release(connection)
    key = namespace + ":packer"
    values = ["één ☃", b"\x00\xff", 12, 2.5]
    client.rpush(key, *values)
    assert client.lrange(key, 0, -1) == ["één ☃".encode(), b"\x00\xff", b"12", b"2.5"]
    assert client.eval("return redis.call('LLEN', KEYS[1])", 1, key) == 4
    client.delete(key)


def test_hot_scripts_run_through_a_plain_connection_as_they_run_through_redis_py(private_redis):
    """``Store.run_script`` with ``via`` (the master's claim, the worker's finish): the same replies
    as redis-py's script call, the script loaded again after Redis forgot it, and error replies
    raised as the exceptions redis-py raises for them."""
    from geventsched.store import Store

    client = transport.connect(private_redis.url)
    store = Store.for_namespace(client, "hot")
    via = transport.Publisher(client, store.keys.inflight)
    try:
        store.submit([("1", b'{"v":1,"id":"1","task":"echo","args":[],"kwargs":{}}'),
                      ("2", b'{"v":1,"id":"2","task":"echo","args":[],"kwargs":{}}')])
        client.script_flush()  # as after a restart: the first call finds no script
        assert store.claim(1, via=via) == [("1", b'{"v":1,"id":"1","task":"echo","args":[],"kwargs":{}}', 1)]
        assert store.claim(5, via=via) == store.claim(5) + [("2", b'{"v":1,"id":"2","task":"echo","args":[],"kwargs":{}}', 1)]
        keys = [store.keys.jobs, store.keys.inflight, store.keys.attempts, *store.keys.intakes]
        for runner in (None, via):  # a script's own error, the same way both ways
            with pytest.raises(redis.ResponseError) as refused:
                store.run_script(store._claim, keys, ["not a count", 1], runner)
            assert "user_script" in str(refused.value) and transport.is_permanent(refused.value)
        with pytest.raises(redis.exceptions.BusyLoadingError):  # a restart: a lost connection, to the roles
            transport.raise_for(hiredis.ReplyError("LOADING Redis is loading the dataset in memory"))
        # A user who may not load scripts, after Redis forgot them: told that, not NOSCRIPT.
        client.acl_setuser("noload", enabled=True, passwords=["+pw"], keys=["~*"], channels=["&*"],
                           commands=["+@all", "-script|load"])
        client.script_flush()
        limited = transport.connect(private_redis.url.replace("redis://", "redis://noload:pw@"))
        limited_via = transport.Publisher(limited, store.keys.inflight)
        try:
            with pytest.raises(redis.exceptions.NoPermissionError):
                Store.for_namespace(limited, "hot").claim(1, via=limited_via)
        finally:
            limited_via.close()
            limited.close()
    finally:
        via.close()
        client.close()


def test_a_submit_through_a_plain_connection_writes_what_redis_py_writes(private_redis):
    """``Store.submit`` with ``via`` (the client's plain jobs): one MULTI ... EXEC, the same keys as
    through redis-py, errors raised as redis-py raises them."""
    from geventsched.store import Store

    client = transport.connect(private_redis.url)
    via = transport.Publisher(client, "x")
    try:
        for runner, ns in ((None, "py"), (via, "lean")):
            store = Store.for_namespace(client, ns)
            wakeups = transport.subscribe(client, [store.keys.wakeup_channel])
            store.submit([("1", b"one"), ("2", b"two")], via=runner)
            store.submit([("3", b"three")], front=True, via=runner)
            assert client.hgetall(store.keys.jobs) == {b"1": b"one", b"2": b"two", b"3": b"three"}
            assert client.lrange(store.keys.intake, 0, -1) == [b"3", b"1", b"2"]
            assert [data for _, data in wakeups.read(5) + wakeups.read(0.5)] == [b"1", b"1"]
            wakeups.close()
            client.delete(store.keys.jobs)
            client.set(store.keys.jobs, "not a hash")  # an error inside the transaction
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                store.submit([("4", b"four")], via=runner)
            assert client.llen(store.keys.intake) == 4  # Redis has no rollback: the rest ran, both ways
    finally:
        via.close()
        client.close()


def test_a_plain_connection_that_meets_a_replica_asks_for_a_new_one(private_redis):
    """READONLY (a failover made the server a replica): the connection is dropped, so the next call
    asks the pool again; with Sentinel that is the new primary, as redis-py's Sentinel connections do."""
    client = transport.connect(private_redis.url)
    via = transport.Publisher(client, "x")
    try:
        before = via.run([transport.pack("CLIENT", "ID")])[0]
        client.replicaof("127.0.0.1", 1)  # a replica of nothing: read-only
        with pytest.raises(redis.exceptions.ReadOnlyError):
            transport.raise_for(via.run([transport.pack("SET", "k", "v")])[0])
        client.replicaof("NO", "ONE")
        after = via.run([transport.pack("CLIENT", "ID"), transport.pack("SET", "k", "v")])
        assert after[0] != before and after[1] == b"OK"
    finally:
        via.close()
        client.close()
