"""Bytes on names over Redis. With ``sentinel.py``, the only module that imports ``redis`` and ``hiredis``.

Two kinds of connection:

* ``connect(url)`` gives a redis-py client for commands and Lua scripts (batched by the callers).
* ``Subscriber`` is the pub/sub hot path: one socket for any number of channels, written with our own
  RESP and read by feeding each ``recv`` to ``hiredis.Reader`` and draining every complete reply.
  redis-py still opens it (URL parsing, TLS, AUTH, SELECT), then we take its socket.

We speak RESP2 on purpose: pub/sub messages are then plain arrays, and a subscribed connection cannot
carry anything else, so nothing can interleave with them.

Every connection notices a dead path within a bounded time, even one that dies without a FIN or an
RST (a dropped NAT or firewall entry, a peer that lost power): commands and pipelined writes time
out after ``COMMAND_TIMEOUT``, and an idle subscriber PINGs (see ``PING_IDLE``). The error is one of
``ConnectionLost``, and the owner reconnects as for any other lost connection.
"""

import logging
import os
import re
import select
import socket
import ssl
import time
from urllib.parse import parse_qs, urlsplit

import hiredis
import redis
import redis.cluster
from redis import exceptions as rexc
from redis._parsers import BaseParser  # its table of error replies to exception classes
from redis.crc import key_slot

from geventsched import sentinel
from geventsched.backoff import Backoff
from geventsched.errors import ConfigError, RedisUnavailable

log = logging.getLogger(__name__)

#: Subscribe this many channels per SUBSCRIBE command: 10,000 channels are 10 writes.
SUBSCRIBE_BATCH = 1000
RECV_SIZE = 1 << 18
#: Seconds a command (and a pipelined batch) may wait for its reply before its connection counts as
#: dead. Nothing we run legitimately takes that long: our Lua scripts over 10,000 channels take well
#: under a second. The URL option ``socket_timeout`` overrides it.
COMMAND_TIMEOUT = 10.0
#: A subscriber that received nothing for ``PING_IDLE`` seconds sends a PING; if then nothing at all
#: arrives for ``PONG_TIMEOUT`` seconds more, its connection is dead. Silence on a subscriber is thus
#: noticed within 10 s, at the cost of one PING per idle 5 s (none while messages flow).
PING_IDLE = 5.0
PONG_TIMEOUT = 5.0

ConnectionLost = (rexc.ConnectionError, rexc.TimeoutError, OSError)
#: Every way talking to Redis fails: redis-py's errors (a cluster client that cannot map the slots
#: raises the second kind) and a socket's own. A tuple: ``except RedisError`` catches them all.
RedisError = (rexc.RedisError, rexc.RedisClusterException, OSError)
ResponseError = rexc.ResponseError
DataError = rexc.DataError


def connect(url, check=True, cluster=None, wait=None):
    """A redis-py client for ``url``: ``redis://``, ``rediss://`` (TLS options as query parameters:
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ...), ``unix://``, ``redis+sentinel://``;
    ``user:password@`` works on each.

    With ``check`` it PINGs once, so a wrong address or password fails here with RedisUnavailable
    carrying one clear line, rather than later inside a loop. ``cluster``: True or False forces the
    mode; None asks the server (``cluster_enabled:1`` gives a cluster client, see ``is_cluster``).

    ``wait``: an Event, for the long-running roles. While nothing answers at the address (Redis is
    down, restarting, not up yet) keep trying until it does, saying so once and then once a minute,
    and return None if ``wait`` is set first. Refused credentials or permissions and TLS failures
    still raise at once: trying again cannot cure them.
    """
    if wait is not None:
        def attempt():
            try:
                return connect(url, check, cluster)
            except RedisUnavailable as exc:
                if str(exc).startswith("cannot reach Redis"):
                    raise _NotYet(str(exc)) from None
                raise

        return keep_trying(attempt, wait, f"waiting for Redis at {redact(url)}", first=0.5, retry_on=_NotYet,
                           what="connecting")
    try:
        if url.startswith(sentinel.SCHEMES):
            client = sentinel.client(url, dict(_OPTIONS, command_packer=PACKER))
        else:
            client = redis.Redis.from_url(url, command_packer=PACKER, **_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad Redis URL {redact(url)!r}: {exc}") from None
    if not check and not cluster:
        return client
    try:
        client.ping()
        if cluster is None:
            cluster = _cluster_enabled(client)
        if cluster:
            client = _cluster_client(url)
            client.ping()
    except RedisError as exc:
        raise RedisUnavailable(describe(exc, url)) from None
    return client


class _NotYet(rexc.ConnectionError):
    """Nothing answers at the address yet (``connect(wait=...)``)."""


#: Connection options for every client: RESP2 (see the module docstring), no pool limit, a reply
#: timeout (a URL's own ``socket_timeout`` wins: redis-py lets URL options override these).
_OPTIONS = dict(protocol=2, socket_connect_timeout=5, socket_timeout=COMMAND_TIMEOUT, socket_keepalive=True,
                health_check_interval=0, max_connections=None)


def describe(exc, url=""):
    """One line that tells a user what went wrong talking to Redis."""
    if isinstance(exc, _NotYet):
        return str(exc)
    where = f" at {redact(url)}" if url else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # redis-py strips the server's error code (NOPERM, WRONGPASS, ...) off the messages it maps to
    # exception classes; put it back, it is what users search for.
    code = getattr(exc, "status_code", None) or (isinstance(exc, rexc.NoPermissionError) and "NOPERM")
    if isinstance(code, str) and code and not text.startswith(code):
        text = f"{code} {text}"
    if isinstance(exc, rexc.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"Redis{where} refused the credentials: {text}"
    if isinstance(exc, rexc.NoPermissionError) or text.startswith("NOPERM"):
        return f"Redis{where} denied a command to this user: {text}"
    if "user executing the script can't" in text or "ACL failure in script" in text:  # Redis 7.0, Valkey: ERR
        return f"Redis{where} denied a command to this user (NOPERM inside a Lua script; ACL LOG names it): {text}"
    if isinstance(exc, ConnectionLost):
        return _describe_connection(exc, text, url, where)
    return f"Redis error{where}: {text}"


def is_permanent(exc):
    """An error that trying the same command again cannot cure: a command or script this user may not
    run, credentials refused, a script that fails on its arguments, a value Redis cannot take. Anything
    else (a lost connection, LOADING, READONLY during a failover, OOM) may pass."""
    if isinstance(exc, (TypeError, ValueError, rexc.DataError)):
        return True
    if isinstance(exc, ConnectionLost):  # redis-py counts a refusal met while reconnecting among these
        return False
    text = describe(exc)  # NOPERM, WRONGPASS, and a refusal inside Lua, which Redis 7.0 reports as ERR
    return any(sign in text for sign in ("denied a command", "refused the credentials", "Error running script",
                                         "user_script"))


def _describe_connection(exc, text, url, where):
    # TLS failures come wrapped: redis-py raises ConnectionError with the ssl.SSLError (or the OSError
    # of a certificate file it could not read) as its __cause__ or __context__.
    chain, link = [], exc
    while link is not None and len(chain) < 8 and all(link is not seen for seen in chain):
        chain.append(link)
        link = link.__cause__ or link.__context__
    scheme = url.partition("://")[0].lower()
    query = parse_qs(urlsplit(url).query) if scheme.startswith("rediss") else None
    # A server that rejects the client (no certificate, or one it does not trust) may just close the
    # connection; when that shows depends on timing, so the hint depends on what the URL asked for.
    closed = ("the server closed the connection: does it trust the CA that signed ssl_certfile?"
              if query and "ssl_certfile" in query else
              "the server closed the connection: if it requires a client certificate, set ssl_certfile "
              "and ssl_keyfile")
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        detail, hint = _tls_failure(tls, closed)
        return f"TLS handshake with Redis{where} failed: {detail}" + (f" ({hint})" if hint else "")
    unreadable = next((e for e in chain if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError))),
                      None)
    if unreadable is not None and query is not None:
        files = [f"{name}={path}" for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")
                 for path in query.get(name, ())[:1] if not os.access(path, os.R_OK)]
        what = " or ".join(files) or "a certificate or key file"
        return f"TLS setup for Redis{where} failed: cannot read {what}: {unreadable.strerror or unreadable}"
    hint = ""
    if any(isinstance(e, (ConnectionResetError, BrokenPipeError)) for e in chain) or "closed by server" in text:
        if query is not None:
            hint = f" ({closed})"
        elif scheme == "redis":
            hint = " (if that port expects TLS, use rediss://)"
    return f"cannot reach Redis{where}: {text}{hint}"


def _tls_failure(tls, closed):
    """``(detail, hint)`` for an ``ssl.SSLError``."""
    reason = getattr(tls, "reason", None) or ""
    if isinstance(tls, ssl.SSLCertVerificationError):
        return (f"certificate verify failed: {tls.verify_message or reason}",
                "ssl_ca_certs must be the CA that signed the server's certificate, and it must name the URL's host")
    detail = tls.args[1] if len(tls.args) > 1 and isinstance(tls.args[1], str) else str(tls)
    detail = re.sub(r"^\[\w+: \w+\] |\s*\(_ssl\.c:\d+\)$", "", detail) or type(tls).__name__
    if "CERTIFICATE_REQUIRED" in reason:
        return detail, "the server requires a client certificate: set ssl_certfile and ssl_keyfile"
    if any(code in reason for code in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
        return detail, "the server does not trust the client certificate (ssl_certfile)"
    return detail, closed if isinstance(tls, ssl.SSLEOFError) else ""


def keep_trying(attempt, stop, who, first=0.1, cap=5.0, retry_on=None, what="reconnect"):
    """Call ``attempt()`` until it succeeds and return its value, or return None once ``stop`` (an
    Event) is set. Waits ``first``, twice that, ... up to ``cap`` seconds between tries. ``retry_on``:
    the errors worth another try (default: any of ``RedisError``; others propagate). The first
    failure is logged, then one line a minute while they go on (each with how many tries failed)."""
    retry_on = RedisError if retry_on is None else retry_on
    backoff, failures, said = Backoff(first, cap), 0, None
    while not stop.is_set():
        try:
            value = attempt()
        except retry_on as exc:
            failures += 1
            now = time.monotonic()
            if said is None or now - said >= QUIET_RETRY_LOG:
                log.warning("%s: %s failed (%s)%s; trying again every %.1fs at most", who, what, describe(exc),
                            f", {failures} tries so far" if failures > 1 else "", cap)
                said = now
            stop.wait(backoff.next())
            continue
        if failures > 1:
            log.info("%s: %s succeeded after %d failed tries", who, what, failures)
        return value
    return None


#: While a retry keeps failing (Redis away), ``keep_trying`` says so once a minute.
QUIET_RETRY_LOG = 60.0


def redact(url):
    """``url`` without its passwords (the user's, a sentinel's, a TLS key's)."""
    url = re.sub(r"((?:^|[?&])(?:ssl_password|sentinel_password|password)=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hostpart}"


# -- RESP: every command we write ourselves is packed here -----------------------------------------

class CommandPacker:
    """redis-py's command packer, made lean: the arguments go to hiredis's C packer as they are.

    redis-py's own packer first runs every argument through its ``Encoder`` in Python, a generator
    step and three type checks each; for a script call that carries a batch of results that cost
    9x hiredis's packing itself, and 20 % of a busy worker's CPU (measured with py-spy). hiredis
    takes str (UTF-8), bytes, memoryview, int and float (as ``repr``), exactly what the Encoder
    makes of them. Anything else (bool, None, bytearray) and a command name of two words (``SCRIPT
    LOAD``) go the usual way, which also raises redis-py's DataError for a value Redis cannot take.
    """

    def __init__(self):
        self._fallback = redis.connection.PythonRespSerializer(
            6000, redis.connection.Encoder("utf-8", "strict", False).encode).pack

    def pack(self, *args):
        command = args[0]
        if type(command) is str and " " not in command:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:  # bool, None, bytearray...: the fallback packs or refuses them
                pass
        return self._fallback(*args)


#: One for every connection of every client: it keeps no state.
PACKER = CommandPacker()


def pack(*args):
    """RESP encoding of one command, packed by ``PACKER``: arguments as redis-py takes them."""
    return b"".join(PACKER.pack(*args))


def pack_pairs(command, key, pairs, flags=(), shared=0, shared_value=None):
    """``command key *flags a1 b1 a2 b2 ...`` in RESP for ``pairs = [(a, b), ...]``: a command that
    carries one pair per job of a dispatched batch (``ZADD key XX score id ...``, ``HSET key id
    record ...``), so it is on the hot path.

    One side of each pair takes few distinct values in a batch (a deadline, a dispatch record):
    ``shared`` (0 or 1) names that side, and each of its distinct values is packed once per call, as
    ``shared_value(value)`` when given (a formatting step that then also runs once per value). Shared
    values are str, bytes or int; the other side is str (a job id), packed every time.
    """
    packed = {}
    parts = []
    if shared == 0:
        for value, other in pairs:
            head = packed.get(value)
            if head is None:
                head = packed[value] = _bulk(value if shared_value is None else shared_value(value))
            other = other.encode()
            parts.append(b"%s$%d\r\n%s\r\n" % (head, len(other), other))
    else:
        for other, value in pairs:
            tail = packed.get(value)
            if tail is None:
                tail = packed[value] = _bulk(value if shared_value is None else shared_value(value))
            other = other.encode()
            parts.append(b"$%d\r\n%s\r\n%s" % (len(other), other, tail))
    head = [b"*%d\r\n" % (2 + len(flags) + 2 * len(parts)), _bulk(command), _bulk(key), *map(_bulk, flags)]
    return b"".join(head + parts)


def _bulk(arg):
    """One RESP bulk string for a str, bytes or int argument."""
    if isinstance(arg, str):
        arg = arg.encode()
    elif isinstance(arg, int):
        arg = b"%d" % arg
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


PUBLISH = b"*3\r\n$7\r\nPUBLISH\r\n"
SPUBLISH = b"*3\r\n$8\r\nSPUBLISH\r\n"


def pack_publish(channel, payload, head=PUBLISH):
    """``PUBLISH channel payload`` (``head=SPUBLISH``: its sharded twin) in RESP, for bytes arguments."""
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n" % (head, len(channel), channel, len(payload), payload)


def pack_publishes(channel, payloads, head=PUBLISH):
    """``PUBLISH channel payload`` for each of ``payloads`` (bytes), one after the other: the part that
    does not change is packed once."""
    prefix = b"%s$%d\r\n%s\r\n" % (head, len(channel), channel)
    return b"".join([b"%s$%d\r\n%s\r\n" % (prefix, len(payload), payload) for payload in payloads])


class Subscriber:
    """A subscribed connection read through hiredis.

    ``read()`` blocks (yielding to the hub) until at least one reply arrives and returns every pub/sub
    message decoded from that read as ``(channel, data)`` pairs. Subscription confirmations are counted
    in ``subscribed``. Raises one of ``ConnectionLost`` when Redis goes away.

    A connection that carries nothing for ``ping_idle`` seconds (default ``PING_IDLE``) is sent a PING;
    if no byte at all arrives within ``pong_timeout`` seconds after it, ``read`` raises redis's
    TimeoutError (one of ``ConnectionLost``). The clock runs across calls: many short ``read(timeout)``
    calls that each return [] still end in that error on a dead connection.

    ``sharded``: SSUBSCRIBE (Redis Cluster's sharded pub/sub) instead of SUBSCRIBE. The server then
    drops a channel by itself when its slot moves to another shard: such channels collect in ``moved``.
    """

    def __init__(self, client, sharded=False, ping_idle=None, pong_timeout=None):
        self._conn = client.connection_pool.make_connection()
        self._conn.connect()
        self._sock = self._conn._sock
        self._send_timeout = self._sock.gettimeout()  # the command timeout; reads set their own
        self._ping_idle = PING_IDLE if ping_idle is None else ping_idle
        self._pong_timeout = PONG_TIMEOUT if pong_timeout is None else pong_timeout
        self._heard = time.monotonic()  # when the last bytes came
        self._pinged = None  # when the unanswered PING went out
        self._reader = hiredis.Reader()
        self.channels = set()
        self.subscribed = 0
        self._early = []
        self.moved = []
        self.sharded = sharded
        if sharded:
            self._command, self._message, self._confirm, self._drop = (
                "SSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")
        else:
            self._command, self._message, self._confirm, self._drop = (
                "SUBSCRIBE", b"message", b"subscribe", b"unsubscribe")

    def subscribe(self, channels, batch=SUBSCRIBE_BATCH, timeout=30.0):
        """Subscribe ``channels`` in large batches, then wait until Redis confirmed every one.
        Raises redis's TimeoutError when ``timeout`` seconds pass without a confirmation.

        Messages that arrive meanwhile are kept for the next ``read()``.
        """
        self.send_subscribe(channels, batch)
        want = len(self.channels)
        early, self._early = self._early, []
        progress, since = self.subscribed, time.monotonic()
        try:
            while self.subscribed < want:
                early.extend(self.read(timeout))  # read() hands back (and empties) self._early first
                if self.subscribed != progress:
                    progress, since = self.subscribed, time.monotonic()
                elif time.monotonic() - since >= timeout:
                    raise rexc.TimeoutError(f"Redis confirmed {self.subscribed} of {want} subscriptions, "
                                            f"then nothing for {timeout:g}s")
        finally:
            self._early = early

    def send_subscribe(self, channels, batch=SUBSCRIBE_BATCH):
        """Ask for ``channels`` without waiting for the confirmations: ``read()`` counts them."""
        channels = [c for c in channels if c not in self.channels]
        if self.sharded:  # one SSUBSCRIBE names channels of one slot only: one command per slot
            by_slot = {}
            for channel in channels:
                by_slot.setdefault(key_slot(channel.encode()), []).append(channel)
            groups = list(by_slot.values())
        else:
            groups = [channels[i:i + batch] for i in range(0, len(channels), batch)]
        commands = [pack(self._command, *group) for group in groups]
        for i in range(0, len(commands), batch):  # each write at most a few hundred KiB
            self._send(b"".join(commands[i:i + batch]))
        self.channels.update(channels)

    def unsubscribe_all(self):
        self._send(pack("SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE"))
        self.channels.clear()

    def _send(self, data):
        # A read may have left a short timeout on the socket: a write gets the command timeout.
        self._sock.settimeout(self._send_timeout)
        self._sock.sendall(data)

    def read(self, timeout=None):
        """Messages from the next read; with ``timeout``, an empty list when none came in time."""
        if self._early:
            early, self._early = self._early, []
            return early
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            wait = self.check_health(now) - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            messages = self.receive(wait)
            if messages is not None:
                return messages
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def check_health(self, now):
        """PING a connection silent for ``ping_idle`` seconds; raise redis's TimeoutError once that
        PING has gone unanswered (no byte at all) for ``pong_timeout``. Returns when to look again.

        In subscribed mode (RESP2) Redis answers ``["pong", ""]``, which ``receive`` passes over."""
        if self._pinged is None:
            due = self._heard + self._ping_idle
            if now < due:
                return due
            self._send(PING)
            self._pinged = now
        due = self._pinged + self._pong_timeout
        if now >= due:
            raise rexc.TimeoutError(f"nothing from Redis for {now - self._heard:.1f}s, not even an answer to "
                                    f"a PING: the connection is dead")
        return due

    def receive(self, wait):
        """The messages of one ``recv`` that waits at most ``wait`` seconds (0: not at all); None if
        nothing came."""
        self._sock.settimeout(max(wait, 0.0))
        try:
            data = self._sock.recv(RECV_SIZE)
        except (socket.timeout, BlockingIOError, ssl.SSLWantReadError):
            return None
        if not data:
            raise rexc.ConnectionError("Redis closed the connection")
        self._heard = time.monotonic()
        self._pinged = None
        reader = self._reader
        reader.feed(data)
        messages = []
        kind = self._message
        reply = reader.gets()
        while reply is not False:
            if type(reply) is list and reply[0] == kind:
                messages.append((reply[1], reply[2]))
            elif type(reply) is list and reply[0] == self._confirm:
                self.subscribed = reply[2]
            elif type(reply) is list and reply[0] == self._drop:
                self.subscribed = reply[2]
                if self.sharded and self.channels:  # not asked for: the channel's slot moved
                    channel = reply[1].decode()
                    self.channels.discard(channel)
                    self.moved.append(channel)
            elif isinstance(reply, hiredis.ReplyError):
                if self.sharded and str(reply).startswith(SLOT_ERRORS):
                    raise SlotMoved(f"a slot moved while subscribing its channels ({reply})")
                raise rexc.ResponseError(str(reply))
            reply = reader.gets()
        return messages

    def close(self):
        try:
            self._conn.disconnect()
        except Exception:  # closing a broken socket must not hide the error that got us here
            pass


PING = b"*1\r\n$4\r\nPING\r\n"
#: Replies of a cluster node asked for a slot it does not serve (now).
SLOT_ERRORS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class SlotMoved(rexc.ConnectionError):
    """A shard answered a sharded subscribe for a slot it does not serve: the slot map we hold is
    behind. A lost connection to its callers (they subscribe again from scratch); the sharded
    subscriber reads the map again first."""


class ShardedSubscriber:
    """``Subscriber``'s interface over a Redis Cluster: SSUBSCRIBE on every primary that owns some of
    the channels, one connection per such shard, read through ``select`` (cooperative under gevent,
    and still correct in a program that does not patch: a client waiting for its results).

    A slot that moves (the server drops its channels) is followed here: the slot map is read again
    and the channels subscribed on their new owner, while the other shards' connections carry on.
    A lost connection (a primary died, a failover, a shard silent past its health check) raises
    ``ConnectionLost``; the caller then subscribes again from scratch.
    """

    def __init__(self, cluster):
        self._cluster = cluster
        self._shards = {}  # node name -> Subscriber
        self.channels = set()

    @property
    def subscribed(self):
        return sum(shard.subscribed for shard in self._shards.values())

    def subscribe(self, channels, batch=SUBSCRIBE_BATCH, timeout=30.0):
        by_node = {}
        for channel in channels:
            node = self._cluster.get_node_from_key(channel)
            by_node.setdefault(node.name, (node, []))[1].append(channel)
        for name, (node, names) in by_node.items():
            shard = self._shards.get(name)
            if shard is None:
                try:
                    shard = Subscriber(self._cluster.get_redis_connection(node), sharded=True)
                except ConnectionLost:
                    self._cluster.nodes_manager.initialize()  # the next try finds the new primaries
                    raise
                self._shards[name] = shard
            try:
                shard.subscribe(names, batch, timeout)
            except SlotMoved:
                self._cluster.nodes_manager.initialize()
                raise
            self.channels.update(names)

    def read(self, timeout=None):
        shards = list(self._shards.values())
        early = [message for shard in shards if shard._early for message in shard.read()]
        if early:
            return early
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            due = min((shard.check_health(now) for shard in shards), default=None)  # each shard PINGs
            wait = None if due is None else due - now
            if deadline is not None:
                wait = deadline - now if wait is None else min(wait, deadline - now)
            # TLS keeps decrypted bytes of its own that select does not see.
            ready = [shard for shard in shards if getattr(shard._sock, "pending", None) and shard._sock.pending()]
            if not ready:
                readable, _, _ = select.select([shard._sock for shard in shards], [], [],
                                               None if wait is None else max(wait, 0))
                ready = [shard for shard in shards if shard._sock in readable]
            if ready:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return []
        messages = []
        try:
            for shard in ready:
                messages += shard.receive(shard._pong_timeout) or []  # readable: returns at once
                if shard.moved:
                    self._follow(shard)
        except SlotMoved:
            self._cluster.nodes_manager.initialize()
            raise
        return messages

    def _follow(self, shard):
        moved, shard.moved = shard.moved, []
        self.channels.difference_update(moved)
        log.info("%d channels moved to another shard; subscribing them there", len(moved))
        self._cluster.nodes_manager.initialize()
        self.subscribe(moved)

    def unsubscribe_all(self):
        for shard in self._shards.values():
            shard.unsubscribe_all()
        self.channels.clear()

    def close(self):
        for shard in self._shards.values():
            shard.close()


def subscribe(client, channels):
    """A ``Subscriber`` (or, on a cluster, a ``ShardedSubscriber``) subscribed to ``channels``."""
    subscriber = ShardedSubscriber(client) if is_cluster(client) else Subscriber(client)
    try:
        subscriber.subscribe(channels)
    except BaseException:
        subscriber.close()
        raise
    return subscriber


class Pipe:
    """A plain connection for pipelined commands, replies parsed by hiredis.

    ``call(data, count)`` writes ``data`` (``count`` packed commands) in one ``sendall`` and returns
    the ``count`` replies in order; error replies come back as ``hiredis.ReplyError`` values, not
    raised, so one failed command does not hide the others' replies. Raises ``ConnectionLost``, also
    when a write or a reply takes longer than the client's ``socket_timeout`` (``COMMAND_TIMEOUT``).
    One greenlet at a time.
    """

    def __init__(self, client):
        self._conn = client.connection_pool.make_connection()
        self._conn.connect()  # leaves the client's socket_timeout on the socket: sends and recvs time out
        self._sock = self._conn._sock
        self._reader = hiredis.Reader()

    def closed(self):
        """True when Redis closed this connection since its last reply (a restart, a CLIENT KILL).
        With no request outstanding there is nothing to read, so a readable socket means an EOF, a
        reset, or an error Redis sent before closing. One ``select`` of no wait: a few microseconds."""
        if getattr(self._sock, "pending", None) and self._sock.pending():  # TLS bytes select cannot see
            return True
        readable, _, _ = select.select([self._sock], [], [], 0)
        return bool(readable)

    def call(self, data, count):
        self.send(data)
        return self.receive(count)

    def send(self, data):
        self._sock.sendall(data)

    def receive(self, count):
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


class Publisher:
    """Publishes batches of messages: one write per Redis node, replies read through hiredis.

    ``send(messages, commands)`` runs the packed ``commands`` (state changes that belong with the
    batch) on the node that holds ``home``, a key of ours, then PUBLISHes each ``(channel, payload)``.
    The commands take effect before any message can be read: a worker's answer to a message finds
    the state the message was sent with (its dispatch record). On one server that is one write, in
    that order. On a cluster the commands are one round trip to ``home`` first; then each message
    goes out with SPUBLISH to the primary that owns its channel's slot, every node's write before any
    reply is read.

    Connections are opened on first use and again after a failure, so a caller only retries.
    One greenlet at a time.
    """

    def __init__(self, client, home):
        self._client = client
        self._cluster = is_cluster(client)
        self._home = home
        self._pipes = {}  # node name (None on one server) -> Pipe
        self._nodes = {}  # cluster: channel -> node name
        self._stale = False  # cluster: a MOVED reply or a lost node; read the slot map again

    def send(self, messages, commands=(), after=()):
        """Returns one reply per message, in order: the number of subscribers that got it, or a
        ``hiredis.ReplyError`` value; then one per command of ``after``, packed commands run once the
        messages are out (one server only: the master claims its next jobs in the write that sends
        these). Raises ``ConnectionLost`` (nothing is known about the batch)."""
        try:
            if not self._cluster:
                chunks = [*commands, *[pack_publish(channel, payload) for channel, payload in messages], *after]
                replies = self._pipe(None).call(b"".join(chunks), len(chunks))
                _check_commands(replies[:len(commands)])
                return replies[len(commands):]
            if after:
                raise TypeError("send(after=...) is for one server")
            return self._send_sharded(messages, commands)
        except ConnectionLost:
            self.close()
            self._stale = True
            raise

    def run(self, commands):
        """Run packed ``commands`` in one write on one server (not a cluster: there, redis-py follows
        the slot map) and return their replies in order, an error reply as a ``hiredis.ReplyError``
        value. The hot scripts go this way (``Store.run_script``): one round trip through hiredis, no
        connection pool, retry or event machinery on the way. Raises ``ConnectionLost``."""
        if self._cluster:
            raise TypeError("Publisher.run is for one server; on a cluster run commands through redis-py")
        try:
            replies = self._pipe(None).call(b"".join(commands), len(commands))
        except ConnectionLost as exc:
            self.close()
            if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)):
                raise
            # A socket's own error, said as redis-py says it (a caller may be a user's submit).
            raise (rexc.TimeoutError if isinstance(exc, socket.timeout) else rexc.ConnectionError)(
                f"{type(exc).__name__}: {exc}") from exc
        if any(is_error(reply) and str(reply).startswith("READONLY") for reply in replies):
            # A replica now (a failover): the next call asks the pool again, which with Sentinel finds
            # the new primary, as redis-py's own Sentinel connections do.
            self.close()
        return replies

    def _send_sharded(self, messages, commands):
        if self._stale:
            self._client.nodes_manager.initialize()
            self._nodes.clear()
            self._stale = False
        node_of, locate = self._nodes, self._locate
        if commands:  # before any message goes out, on any shard
            home = node_of.get(self._home) or locate(self._home)
            try:
                _check_commands(self._pipe(home).call(b"".join(commands), len(commands)))
            except ConnectionLost:
                self._lose(home, [], [], None)
                raise
        batches = {}  # node name -> (indexes of its messages, packed commands)
        for i, (channel, payload) in enumerate(messages):
            name = node_of.get(channel) or locate(channel)
            batch = batches.get(name)
            if batch is None:
                batch = batches[name] = ([], [])
            batch[0].append(i)
            batch[1].append(pack_publish(channel, payload, SPUBLISH))
        replies = [None] * len(messages)
        written, failures = [], []
        for name, (indexes, chunks) in batches.items():
            try:
                pipe = self._pipe(name)
                pipe.send(b"".join(chunks))
                written.append((name, pipe, indexes, len(chunks)))
            except ConnectionLost as exc:
                failures.append(self._lose(name, indexes, replies, exc))
        for name, pipe, indexes, count in written:
            try:
                got = pipe.receive(count)
            except ConnectionLost as exc:
                failures.append(self._lose(name, indexes, replies, exc))
                continue
            for i, reply in zip(indexes, got):
                replies[i] = reply
                if is_error(reply) and str(reply).startswith(("MOVED", "ASK")):
                    self._stale = True
        if failures and len(failures) == len(batches):
            raise failures[0]  # no node answered: the caller backs off
        return replies

    def _lose(self, name, indexes, replies, exc):
        """One node failed (a primary died; its replica takes over): its messages fail, the others
        stand, and the slot map is read again before the next batch."""
        self._stale = True
        pipe = self._pipes.pop(name, None)
        if pipe is not None:
            pipe.close()
        failed = hiredis.ReplyError(f"connection to {name} lost: {exc}")
        for i in indexes:
            replies[i] = failed
        return exc

    def _locate(self, name):
        node = self._nodes[name] = self._client.get_node_from_key(name).name
        return node

    def _pipe(self, name):
        pipe = self._pipes.get(name)
        # Written into a socket Redis closed (it restarted), a batch would fail only at its reply,
        # and its sender would then back off: look first, open a new connection at once.
        if pipe is not None and pipe.closed():
            log.debug("publisher: Redis closed the connection since the last batch; opening a new one")
            pipe.close()
            pipe = None
        if pipe is None:
            if name is None:
                pipe = Pipe(self._client)
            else:
                pipe = Pipe(self._client.get_redis_connection(self._client.get_node(node_name=name)))
            self._pipes[name] = pipe
        return pipe

    def close(self):
        pipes, self._pipes = self._pipes, {}
        for pipe in pipes.values():
            pipe.close()


def _check_commands(replies):
    failed = [reply for reply in replies if is_error(reply)]
    if failed:  # READONLY, OOM, ...: the messages went out without what belonged with them
        log.warning("%d commands sent with a batch of messages failed: %s", len(failed), failed[0])


def is_error(reply):
    return isinstance(reply, hiredis.ReplyError)


def raise_for(reply):
    """``reply`` itself, or the exception redis-py raises for it when it is an error reply (LOADING
    as a lost connection, NOPERM, NOSCRIPT, a script's error, ...)."""
    if isinstance(reply, hiredis.ReplyError):
        raise BaseParser.parse_error(str(reply))
    return reply


# -- Redis Cluster ---------------------------------------------------------------------------------

def is_cluster(client):
    """True for a Redis Cluster client: keys then carry a hash tag, pub/sub is sharded."""
    return isinstance(client, redis.cluster.RedisCluster)


def _cluster_enabled(client):
    try:
        return client.info("cluster").get("cluster_enabled") == 1
    except ResponseError:  # a user not allowed INFO, or a server without it: --cluster says so
        return False


def _cluster_client(url):
    options = {k: v for k, v in _OPTIONS.items() if k != "max_connections"}
    return redis.cluster.RedisCluster.from_url(url, **options)
