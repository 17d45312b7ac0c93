"""A private Sentinel deployment for tests: a primary, a replica and three sentinels, each a real
``redis-server`` on a free port with its files in a directory of the test's own.

    with SentinelSet(tmp_path) as deployment:
        deployment.url                  # redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster
        deployment.failover()           # SENTINEL FAILOVER; returns (old, new) once the replica is primary
        deployment.primary()            # (host, port) the sentinels agree on

Options: passwords for the data nodes and for the sentinels, TLS for the data nodes (``tls=`` a
``tlscerts.Pki``), extra server arguments. Standard library, redis-py and ``geventsched.embedded``
only. Every wait is a hang guard: nothing here measures time.
"""

import os
import subprocess
import time

import redis

from conftest import wait_until
from geventsched.embedded import free_port, server_binary, stop_process

NAME = "mymaster"


def _wait(predicate, timeout, what, interval=0.05):
    """``wait_until`` for a predicate that may fail while servers start or fail over: an error counts
    as not yet."""
    def quiet():
        try:
            return predicate()
        except (redis.RedisError, OSError):
            return None

    return wait_until(quiet, timeout, interval, what)


class Node:
    """One ``redis-server`` process: a data node, or a sentinel when given ``sentinel_conf`` (the text
    of its configuration file, which Sentinel rewrites as it goes)."""

    def __init__(self, base_dir, label, args=(), sentinel_conf=None, password=None, tls=None):
        self.dir = os.path.join(base_dir, label)
        os.makedirs(self.dir, exist_ok=True)
        self.label = label
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "redis.log")
        self.args = list(args)
        self.sentinel_conf = sentinel_conf
        self.password = password
        self.tls = tls  # a data node that speaks only TLS on ``port``
        self.process = None
        self._client = None

    def start(self, timeout=20.0):
        head = [server_binary()]
        if self.sentinel_conf is not None:
            conf = os.path.join(self.dir, "sentinel.conf")
            with open(conf, "w") as f:
                f.write(self.sentinel_conf)
            head += [conf, "--sentinel", "--port", str(self.port)]
        else:
            # No RDB files, and a full sync starts at once rather than after 5 s of waiting for more replicas.
            head += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
            if self.tls:
                head += ["--port", "0", "--tls-port", str(self.port), *_tls_args(self.tls)]
            else:
                head += ["--port", str(self.port)]
        args = [*head, "--bind", "127.0.0.1", "--dir", self.dir, "--logfile", self.log_path, "--daemonize", "no",
                *self.args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return self
            except (redis.RedisError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not start on port {self.port}: {self.log()[-2000:]}")
            time.sleep(0.02)

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def client(self):
        """A client of this node (one, kept: redis-py reconnects it when needed)."""
        if self._client is None:
            tls = dict(ssl=True, ssl_ca_certs=str(self.tls.ca)) if self.tls else {}
            self._client = redis.Redis("127.0.0.1", self.port, password=self.password, protocol=2, socket_timeout=5,
                                       socket_connect_timeout=2, **tls)
        return self._client

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL: no shutdown, no last words to the replicas."""
        if self.alive():
            self.process.kill()
            self.process.wait(10)

    def stop(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            stop_process(self.process, 5)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def _tls_args(pki):
    return ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no", "--tls-replication", "yes"]


class SentinelSet:
    """A primary, one replica and three sentinels (quorum 2) watching them as ``name``.

    ``down_after_ms``, ``failover_timeout_ms``: the sentinels' settings. ``data_args``: extra
    ``redis-server`` arguments for both data nodes, ``primary_args`` for the first primary only.
    ``password``: the data nodes require it (and the sentinels use it); ``sentinel_password``: the
    sentinels require it, of clients and of each other. ``tls``: a ``tlscerts.Pki``; the data nodes
    then speak only TLS, and so do the sentinels among themselves and to the data nodes, while clients
    ask the sentinels in plain TCP (``rediss+sentinel://``).
    """

    def __init__(self, base_dir, name=NAME, down_after_ms=1000, failover_timeout_ms=5000, data_args=(),
                 primary_args=(), password=None, sentinel_password=None, tls=None):
        self.base_dir = str(base_dir)
        self.name = name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_args = list(data_args)
        self.primary_args = list(primary_args)
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls = tls
        if password:
            self.data_args += ["--requirepass", password, "--masterauth", password]
        self.nodes = []  # data nodes, the first one primary at start
        self.sentinels = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        options = dict(password=self.password, tls=self.tls)
        primary = Node(self.base_dir, "data-a", [*self.data_args, *self.primary_args], **options).start()
        replica = Node(self.base_dir, "data-b", [*self.data_args, "--replicaof", "127.0.0.1", str(primary.port)],
                       **options).start()
        self.nodes = [primary, replica]
        # The replica is attached before the sentinels start: their first INFO of the primary lists it.
        _wait(lambda: replica.client().info("replication").get("master_link_status") == "up", 30,
              "the replica to sync")
        self.sentinels = []
        for i in range(3):
            tls_port = free_port() if self.tls else None
            sentinel = Node(self.base_dir, f"sentinel-{i}", sentinel_conf=self._sentinel_conf(primary, tls_port),
                            password=self.sentinel_password)
            sentinel.tls_port = tls_port
            self.sentinels.append(sentinel.start())
        self.wait_ready(primary.address, replica.address)

    def _sentinel_conf(self, primary, tls_port):
        name = self.name
        lines = ["sentinel resolve-hostnames no", f"sentinel monitor {name} 127.0.0.1 {primary.port} 2",
                 f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                 f"sentinel failover-timeout {name} {self.failover_timeout_ms}", f"sentinel parallel-syncs {name} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
        if self.tls:
            # TLS to the data nodes and to the other sentinels (which they find on their tls-port).
            pki = self.tls
            lines += [f"tls-port {tls_port}", f"tls-cert-file {pki.server_cert}", f"tls-key-file {pki.server_key}",
                      f"tls-ca-cert-file {pki.ca}", "tls-auth-clients no", "tls-replication yes"]
        return "\n".join(lines) + "\n"

    def wait_ready(self, primary, replica, timeout=40):
        """Until every sentinel names ``primary``, knows the other two sentinels and sees ``replica``
        as a healthy replica: only then can a failover be asked for."""

        def ready(sentinel):
            client = sentinel.client()
            if self._addr(client) != primary:
                return False
            if len(client.sentinel_sentinels(self.name)) < len(self.sentinels) - 1:
                return False
            replicas = client.sentinel_slaves(self.name)
            return any((r["ip"], r["port"]) == replica and not r["is_sdown"] and not r["is_odown"]
                       and r.get("master-link-status") == "ok" for r in replicas)

        for sentinel in self.sentinels:
            _wait(lambda: ready(sentinel), timeout, f"{sentinel.label} to see {primary} and {replica}")

    def stop(self):
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- views ---------------------------------------------------------------------------------------

    @property
    def url(self):
        return self.make_url()

    def make_url(self, sentinel_tls=False):
        """The deployment's URL; ``sentinel_tls``: ask the sentinels on their TLS ports."""
        hosts = ",".join(f"127.0.0.1:{s.tls_port if sentinel_tls else s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        query = [f"sentinel_password={self.sentinel_password}"] if self.sentinel_password else []
        query += [f"ssl_ca_certs={self.tls.ca}"] if self.tls else []
        query += ["sentinel_ssl=yes"] if sentinel_tls else []
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{auth}{hosts}/{self.name}" + ("?" + "&".join(query) if query else "")

    def _addr(self, client):
        host, port = client.sentinel_get_master_addr_by_name(self.name)
        return (host.decode() if isinstance(host, bytes) else host, int(port))

    def primary(self):
        """The address the live sentinels agree on, or None (they may differ for a moment after a
        failover)."""
        views = set()
        for sentinel in self.sentinels:
            if sentinel.alive():
                try:
                    views.add(self._addr(sentinel.client()))
                except (redis.RedisError, OSError, TypeError):
                    views.add(None)
        return views.pop() if len(views) == 1 else None

    def node_at(self, address):
        return next(n for n in self.nodes if n.address == tuple(address))

    def role(self, node):
        return node.client().execute_command("ROLE")[0]

    # -- faults --------------------------------------------------------------------------------------

    def failover(self, timeout=40):
        """``SENTINEL FAILOVER`` (graceful: the primary is alive and its replica in sync). Returns
        ``(old, new)`` primary nodes once all three sentinels name the new one and it is a primary.
        The old primary stays a primary a while longer, until a sentinel converts it (~10 s)."""
        old = self.node_at(_wait(self.primary, timeout, "the sentinels to agree on a primary"))
        self.sentinels[0].client().sentinel_failover(self.name)
        return old, self._wait_new_primary(old, timeout)

    def kill_primary(self, timeout=40):
        """SIGKILL the primary; returns ``(old, new)`` once the sentinels elected and named a new one."""
        old = self.node_at(_wait(self.primary, timeout, "the sentinels to agree on a primary"))
        old.kill()
        return old, self._wait_new_primary(old, timeout)

    def _wait_new_primary(self, old, timeout):
        address = _wait(lambda: (a := self.primary()) and a != old.address and a, timeout,
                        "every sentinel to name a new primary")
        new = self.node_at(address)
        _wait(lambda: self.role(new) == b"master", timeout, "the new primary to take the role")
        return new
