"""Bytes on names over Redis. The only module that imports ``redis`` and ``hiredis``.

Two kinds of connection:

* ``connect(url)`` gives a redis-py client for commands and Lua scripts (batched by the callers).
* ``Subscriber`` is the pub/sub hot path: one socket for any number of channels, written with our own
  RESP and read by feeding each ``recv`` to ``hiredis.Reader`` and draining every complete reply.
  redis-py still opens it (URL parsing, TLS, AUTH, SELECT), then we take its socket.

We speak RESP2 on purpose: pub/sub messages are then plain arrays, and a subscribed connection cannot
carry anything else, so nothing can interleave with them.
"""

import logging

import hiredis
import redis
from redis import exceptions as rexc

from geventsched.errors import ConfigError, RedisUnavailable

log = logging.getLogger(__name__)

#: Subscribe this many channels per SUBSCRIBE command: 10,000 channels are 10 writes.
SUBSCRIBE_BATCH = 1000
RECV_SIZE = 1 << 18

ConnectionLost = (rexc.ConnectionError, rexc.TimeoutError, OSError)
RedisError = rexc.RedisError
ResponseError = rexc.ResponseError
DataError = rexc.DataError


def connect(url, check=True):
    """A redis-py client for ``url`` (``redis://``, ``rediss://``, ``unix://``; user:password@ works).

    With ``check`` it PINGs once, so a wrong address or password fails here with RedisUnavailable
    carrying one clear line, rather than later inside a loop.
    """
    try:
        client = redis.Redis.from_url(url, protocol=2, socket_connect_timeout=5,
                                      socket_keepalive=True, health_check_interval=0,
                                      max_connections=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: {exc}") from None
    if check:
        try:
            client.ping()
        except RedisError as exc:
            raise RedisUnavailable(describe(exc, url)) from None
    return client


def describe(exc, url=""):
    """One line that tells a user what went wrong talking to Redis."""
    where = f" at {redact(url)}" if url else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, rexc.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"Redis{where} refused the credentials: {text}"
    if isinstance(exc, rexc.NoPermissionError) or text.startswith("NOPERM"):
        return f"Redis{where} denied a command to this user: {text}"
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
        return f"cannot reach Redis{where}: {text}"
    return f"Redis error{where}: {text}"


def keep_trying(attempt, stop, who, first=0.1, cap=5.0):
    """Call ``attempt()`` until it succeeds and return its value, or return None once ``stop`` (an
    Event) is set. Waits ``first``, twice that, ... up to ``cap`` seconds between tries, and logs each
    failure in one line."""
    delay = first
    while not stop.is_set():
        try:
            return attempt()
        except (RedisError, OSError) as exc:
            log.warning("%s: reconnect failed (%s), next try in %.1fs", who, describe(exc), delay)
            stop.wait(delay)
            delay = min(delay * 2, cap)
    return None


def redact(url):
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hostpart}"


def pack(*args):
    """RESP encoding of one command whose arguments are bytes or str."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class Subscriber:
    """A subscribed connection read through hiredis.

    ``read()`` blocks (yielding to the hub) until at least one reply arrives and returns every pub/sub
    message decoded from that read as ``(channel, data)`` pairs. Subscription confirmations are counted
    in ``subscribed``. Raises one of ``ConnectionLost`` when Redis goes away.
    """

    def __init__(self, client):
        self._conn = client.connection_pool.make_connection()
        self._conn.connect()
        self._sock = self._conn._sock
        self._reader = hiredis.Reader()
        self.channels = set()
        self.subscribed = 0
        self._early = []

    def subscribe(self, channels, batch=SUBSCRIBE_BATCH, timeout=30.0):
        """Subscribe ``channels`` in large batches, then wait until Redis confirmed every one.

        Messages that arrive meanwhile are kept for the next ``read()``.
        """
        channels = [c for c in channels if c not in self.channels]
        for i in range(0, len(channels), batch):
            self._sock.sendall(pack("SUBSCRIBE", *channels[i:i + batch]))
        self.channels.update(channels)
        want = len(self.channels)
        self._sock.settimeout(timeout)
        early, self._early = self._early, []
        try:
            while self.subscribed < want:
                early.extend(self.read())  # read() hands back (and empties) self._early first
        finally:
            self._early = early
            self._sock.settimeout(None)

    def unsubscribe_all(self):
        self._sock.sendall(pack("UNSUBSCRIBE"))
        self.channels.clear()

    def read(self, timeout=None):
        """Messages from the next read; with ``timeout``, an empty list when none came in time."""
        if self._early:
            early, self._early = self._early, []
            return early
        if timeout is None:
            data = self._sock.recv(RECV_SIZE)
        else:
            self._sock.settimeout(max(timeout, 0.001))
            try:
                data = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                return []
            finally:
                self._sock.settimeout(None)
        if not data:
            raise rexc.ConnectionError("Redis closed the connection")
        reader = self._reader
        reader.feed(data)
        messages = []
        reply = reader.gets()
        while reply is not False:
            if type(reply) is list and reply[0] == b"message":
                messages.append((reply[1], reply[2]))
            elif type(reply) is list and reply[0] == b"subscribe":
                self.subscribed = reply[2]
            elif type(reply) is list and reply[0] == b"unsubscribe":
                self.subscribed = reply[2]
            elif isinstance(reply, hiredis.ReplyError):
                raise rexc.ResponseError(str(reply))
            reply = reader.gets()
        return messages

    def close(self):
        try:
            self._conn.disconnect()
        except Exception:  # closing a broken socket must not hide the error that got us here
            pass


class Pipe:
    """A plain connection for pipelined commands, replies parsed by hiredis.

    ``call(data, count)`` writes ``data`` (``count`` packed commands) in one ``sendall`` and returns
    the ``count`` replies in order; error replies come back as ``hiredis.ReplyError`` values, not
    raised, so one failed command does not hide the others' replies. Raises ``ConnectionLost``.
    One greenlet at a time.
    """

    def __init__(self, client):
        self._conn = client.connection_pool.make_connection()
        self._conn.connect()
        self._sock = self._conn._sock
        self._reader = hiredis.Reader()

    def call(self, data, count):
        self._sock.sendall(data)
        replies = []
        reader = self._reader
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:
                chunk = self._sock.recv(RECV_SIZE)
                if not chunk:
                    raise rexc.ConnectionError("Redis closed the connection")
                reader.feed(chunk)
                continue
            replies.append(reply)
        return replies

    def close(self):
        try:
            self._conn.disconnect()
        except Exception:  # see Subscriber.close
            pass


def pack_publish(channel, payload):
    """``PUBLISH channel payload`` in RESP, for bytes arguments: the master's per-job command."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)


def is_error(reply):
    return isinstance(reply, hiredis.ReplyError)
