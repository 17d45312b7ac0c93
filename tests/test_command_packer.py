"""The command packer every client of ours uses (``transport.CommandPacker``): the bytes redis-py's
own packer would send, made without its per-argument Python steps."""

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
