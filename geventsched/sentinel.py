"""Redis Sentinel: ``redis+sentinel://`` URLs, and a client that follows a failover promptly.

``transport.connect`` hands such URLs here; the rest of the code sees a plain redis-py client whose
connections always reach the current primary.
"""

import logging
import os
import socket
import threading
import time
import weakref
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.backoff
import redis.connection
import redis.retry
import redis.sentinel
from redis import exceptions as rexc

from geventsched.backoff import Backoff

log = logging.getLogger(__name__)

SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def client(url, base_options):
    """A client of the primary that Redis Sentinel names, which follows its failovers.

    ``redis+sentinel://[user:password@]host1:port1[,host2:port2,...]/SERVICE[/DB][?option=value&...]``

    * ``host:port`` are sentinels (port 26379 if left out; ``[::1]:26379`` for IPv6); SERVICE is the
      name they monitor (``sentinel monitor SERVICE ...``); DB the database number (default 0).
    * ``user:password@`` authenticates to the data nodes (primary and replicas), never to the
      sentinels: those take ``sentinel_username`` / ``sentinel_password`` in the query.
    * ``rediss+sentinel://``: TLS to the data nodes, with redis-py's ``ssl_*`` options in the query
      (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ...). The sentinels are
      spoken to in plain TCP, unless ``sentinel_ssl=yes``: TLS to them too, with the same options.
    * Other options: ``socket_timeout``, ``socket_connect_timeout`` (data nodes, seconds),
      ``sentinel_socket_timeout`` (default 2), ``client_name``, ``db``. Anything else is an error.

    Every new connection asks the sentinels for the primary (each one, taking the answer with the
    newest configuration epoch, so a sentinel that has not heard of a failover yet cannot send us
    back), then checks with ``ROLE`` that the node it reached is a primary. Raw connections opened
    with ``connection_pool.make_connection()`` (``Subscriber``, ``Pipe``) get all of that too.

    Sentinel leaves a former primary serving writes for ~10 s after a failover before it demotes it,
    and whatever is written there meanwhile is lost. So, once connected, the client also subscribes
    to the sentinels' events: when a failover of SERVICE begins it shuts every connection to the
    old primary (their owners see a lost connection and reconnect), new connections wait until the
    sentinels name the new primary (at most ``_FAILOVER_HOLD`` seconds), and ``+switch-master``
    shuts whatever still points elsewhere.

    Raises ValueError for a URL that cannot work (no sentinel, no service name, a bad port or
    option); a service that no sentinel knows fails at the first command with MasterNotFoundError.
    """
    sentinels, service, options, sentinel_options = _parse_url(url, base_options)
    ssl = options.pop("ssl", False)
    manager = _SentinelManager(sentinels, sentinel_kwargs=sentinel_options, **options)
    return manager.master_for(service, connection_class=_PrimarySSLConnection if ssl else _PrimaryConnection)


#: How long new connections wait for the sentinels to name a new primary once a failover began; after
#: that they go wherever the sentinels point (the failover is slow or failed).
_FAILOVER_HOLD = 5.0
#: Sentinel events the client follows (https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/).
_FAILOVER_BEGINS = "+failover-state-send-slaveof-noone"  # the leader is about to promote a replica
_FAILOVER_ABORTS = ("-failover-abort-not-elected", "-failover-abort-no-good-slave", "-failover-abort-slave-timeout")
_SWITCH_MASTER = "+switch-master"  # "SERVICE OLD-IP OLD-PORT NEW-IP NEW-PORT"
#: Query options of a sentinel URL: name -> parser. ``ssl_*`` options only with ``rediss+sentinel://``.
_SENTINEL_URL_OPTIONS = {
    "db": int, "socket_timeout": float, "socket_connect_timeout": float, "client_name": str,
    "sentinel_username": str, "sentinel_password": str, "sentinel_socket_timeout": float, "sentinel_ssl": "bool",
}
_SSL_URL_OPTIONS = {
    "ssl_ca_certs": str, "ssl_ca_path": str, "ssl_certfile": str, "ssl_keyfile": str, "ssl_password": str,
    "ssl_cert_reqs": str, "ssl_check_hostname": "bool", "ssl_ciphers": str,
}


def _parse_url(url, base_options):
    """``(sentinel addresses, service, data node options, sentinel options)`` of a sentinel URL."""
    tls = url.startswith("rediss+")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_parse_address(item) for item in hosts.split(",") if item.strip()]
    if not sentinels:
        raise ValueError("no sentinel address (redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE)")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError("no service name: put the name the sentinels monitor after the addresses, "
                         "e.g. redis+sentinel://127.0.0.1:26379/mymaster")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"expected /SERVICE or /SERVICE/DB after the addresses, not {parts.path!r}")
    options = dict(base_options)
    query = {}
    known = {**_SENTINEL_URL_OPTIONS, **_SSL_URL_OPTIONS}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        parse = known.get(name)
        if parse is None:
            raise ValueError(f"unknown option {name!r} (known: {', '.join(sorted(known))})")
        try:
            query[name] = _truth(value) if parse == "bool" else parse(value)
        except ValueError:
            raise ValueError(f"bad value for {name}: {value!r}") from None
    ssl_options = {k: v for k, v in query.items() if k.startswith("ssl_")}
    sentinel_ssl = query.pop("sentinel_ssl", False)
    if ssl_options and not (tls or sentinel_ssl):
        raise ValueError(f"{', '.join(ssl_options)}: TLS options need rediss+sentinel:// (TLS to the data nodes) "
                         f"or sentinel_ssl=yes (TLS to the sentinels)")
    if len(path) == 2:
        query["db"] = int(path[1])
    user, colon, password = userinfo.partition(":")
    if user:
        options["username"] = unquote(user)
    if colon and password:
        options["password"] = unquote(password)
    # No retries: a sentinel that does not answer is skipped for the next one (redis-py's default for
    # a client made with redis.Redis() is ten tries with backoff, seconds per dead sentinel).
    sentinel_options = {"protocol": 2, "socket_connect_timeout": query.get("socket_connect_timeout", 5.0),
                        "socket_timeout": query.pop("sentinel_socket_timeout", 2.0), "socket_keepalive": True,
                        "health_check_interval": 0, "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0)}
    for name in ("username", "password"):
        value = query.pop(f"sentinel_{name}", None)
        if value:
            sentinel_options[name] = value
    if sentinel_ssl:
        sentinel_options.update(ssl_options, ssl=True)
    if tls:
        options.update(query, ssl=True)
    else:
        options.update({k: v for k, v in query.items() if k not in ssl_options})
    return sentinels, path[0], options, sentinel_options


def _parse_address(item):
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"no host in sentinel address {item!r}")
    if not port:
        return host, 26379
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in sentinel address {item!r}")
    return host, int(port)


def _truth(value):
    if value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("", "0", "no", "false", "off"):
        return False
    raise ValueError(value)


class _SentinelManager(redis.sentinel.Sentinel):
    """redis-py's Sentinel, made to follow failovers promptly (see ``client``).

    Keeps a weak set of its connections, and once one connects, a watcher thread per sentinel (a
    greenlet under gevent's monkey patching) that reads the sentinel's failover events. The watchers
    end a second after the client is garbage.
    """

    def __init__(self, sentinels, **kwargs):

        super().__init__(sentinels, **kwargs)
        self.addresses = list(sentinels)
        self._lock = threading.Lock()
        self._connections = weakref.WeakSet()
        self._holds = {}  # service -> monotonic time until which new connections wait for a failover
        self._watched = set()  # (pid, service) pairs with watchers running

    def discover_master(self, service_name):
        """The primary's address by the sentinel with the newest configuration epoch."""
        self._await_failover(service_name)
        best, unknown, down, failed = None, [], [], {}  # failed: reason -> sentinels that gave it
        for sentinel, (host, port) in zip(self.sentinels, self.addresses):
            try:
                state = sentinel.sentinel_master(service_name)
            except rexc.AuthenticationError as exc:
                need = "refused" if self.sentinel_kwargs.get("password") else "need"
                failed.setdefault(f"{need} sentinel_password: {str(exc).strip()}", []).append(f"{host}:{port}")
                continue
            except (rexc.ConnectionError, rexc.TimeoutError, rexc.ResponseError) as exc:
                if isinstance(exc, rexc.ResponseError) and "no such master" in str(exc).lower():
                    unknown.append(f"{host}:{port}")
                else:
                    failed.setdefault(str(exc).strip() or type(exc).__name__, []).append(f"{host}:{port}")
                continue
            if not self.check_master_state(state, service_name):
                down.append(f"{host}:{port}")
            elif best is None or state.get("config-epoch", 0) > best.get("config-epoch", 0):
                best = state
        if best is None:
            why = [f"unknown to {', '.join(unknown)}"] if unknown else []
            why += [f"down or failing over according to {', '.join(down)}"] if down else []
            why += [f"cannot ask {', '.join(where)} ({reason})" for reason, where in failed.items()]
            raise redis.sentinel.MasterNotFoundError(f"no primary for {service_name!r}: {'; '.join(why)}")
        return best["ip"], best["port"]

    def connected(self, connection, service_name):
        """Called by each connection of ours once connected: track it, start watching (again in a
        forked child: threads do not survive a fork)."""

        key = (os.getpid(), service_name)
        with self._lock:
            self._connections.add(connection)
            start = key not in self._watched
            self._watched.add(key)
        if start:
            _start_watchers(self, service_name)

    def _await_failover(self, service_name):

        while time.monotonic() < self._holds.get(service_name, 0):
            time.sleep(0.02)

    def on_event(self, service_name, channel, data):
        """A sentinel event: ``channel`` and ``data`` as the sentinel published them (str)."""

        words = data.split()
        if channel == _SWITCH_MASTER:
            if len(words) < 5 or words[0] != service_name or not words[4].isdigit():
                return
            address = (words[3], int(words[4]))
            self._holds.pop(service_name, None)
            self._cut(lambda c: (c.host, c.port) != address, f"the sentinels switched to {address[0]}:{address[1]}")
            return
        name = words[words.index("@") + 1] if "@" in words[:-1] else words[1] if len(words) > 1 else None
        if name != service_name:
            return
        if channel == _FAILOVER_BEGINS:
            old = (words[-2], int(words[-1])) if words[-1].isdigit() else None
            self._holds[service_name] = time.monotonic() + _FAILOVER_HOLD
            self._cut(lambda c: (c.host, c.port) == old, "a failover began")
        elif channel in _FAILOVER_ABORTS:
            self._holds.pop(service_name, None)

    def _cut(self, which, why):
        """Shut (not close: another greenlet or thread may be inside a recv) the sockets of our
        connections for which ``which(connection)`` is true; their owners see a lost connection."""

        with self._lock:
            victims = [(c, c._sock) for c in self._connections
                       if c._sock is not None and getattr(c, "_shut", None) is not c._sock and which(c)]
        for connection, sock in victims:
            connection._shut = sock  # its owner has yet to notice: do not count it twice
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if victims:
            log.info("sentinel: %s; shut %d connections to the former primary", why, len(victims))


class _PrimaryConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the primary the sentinels name that makes sure, with ``ROLE``, that the node
    it reached is a primary (a former one may still be listed by a sentinel that lags behind)."""

    def connect_to(self, address):
        super().connect_to(address)
        proxy = self.connection_pool
        try:
            self.send_command("ROLE")
            role = self.read_response()
        except rexc.ResponseError:  # a user not allowed ROLE: trust the sentinels
            role = None
        kind = role[0].decode() if role and isinstance(role[0], bytes) else role[0] if role else "master"
        if kind != "master":
            self.disconnect()
            raise rexc.ConnectionError(f"{address[0]}:{address[1]} is not the primary of {proxy.service_name!r} "
                                       f"(ROLE says {kind}): the sentinels have not all caught up with a failover")
        proxy.sentinel_manager.connected(self, proxy.service_name)


class _PrimarySSLConnection(_PrimaryConnection, redis.connection.SSLConnection):
    pass


def _start_watchers(manager, service_name):

    ref = weakref.ref(manager)
    for host, port in manager.addresses:
        thread = threading.Thread(target=_watch, args=(ref, service_name, host, port, manager.sentinel_kwargs),
                                  name=f"sentinel-watch-{host}:{port}", daemon=True)
        thread.start()


def _watch(manager_ref, service_name, host, port, options):
    """Follow one sentinel's failover events for as long as the manager lives; reconnect quietly."""

    channels = [_FAILOVER_BEGINS, *_FAILOVER_ABORTS, _SWITCH_MASTER]
    backoff = Backoff(first=0.1, cap=2.0)
    while manager_ref() is not None:
        sentinel = redis.Redis(host, port, **options)
        pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(*channels)
            backoff.reset()
            while manager_ref() is not None:
                message = pubsub.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    _deliver(manager_ref, service_name, message)
        except (rexc.RedisError, OSError):
            time.sleep(backoff.next())
        finally:
            pubsub.close()
            sentinel.close()


def _deliver(manager_ref, service_name, message):
    # Apart from _watch's loop, so that no strong reference to the manager outlives the call.
    manager = manager_ref()
    if manager is not None:
        try:
            manager.on_event(service_name, message["channel"].decode(), message["data"].decode(errors="replace"))
        except Exception:  # an event we misread must not end the watch
            log.exception("sentinel: could not follow the event %r", message)
