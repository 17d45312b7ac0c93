"""A private Redis Cluster for the cluster tests and the suite's cluster scenario: benchmark and test
tooling, built from ``embedded.EmbeddedRedis`` servers.

Like ``embedded``, it uses no redis-py: the cluster is formed with plain commands sent over a socket
(``command``), so it needs no redis-cli either.
"""

import random
import socket
import time

from geventsched.embedded import EmbeddedRedis


def cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = random.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue



class EmbeddedCluster:
    """``with EmbeddedCluster(primaries=3) as cluster: cluster.url``: a private Redis Cluster of
    ``primaries`` servers (each with ``replicas`` replicas), slots split evenly, on free ports.

    Built with plain commands (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE), so it needs no redis-cli.
    """

    def __init__(self, primaries=3, replicas=0, binary=None, extra_args=(), start_timeout=30.0):
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.start_timeout = start_timeout
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000", *extra_args]
        self.servers = [EmbeddedRedis(binary, port=cluster_port(), extra_args=args)
                        for _ in range(primaries * (1 + replicas))]
        for server in self.servers:  # each its own nodes.conf: the servers share no directory
            server.extra_args += ["--cluster-config-file", f"nodes-{server.port}.conf"]

    @property
    def primaries(self):
        return self.servers[:self.primaries_count]

    @property
    def url(self):
        return self.servers[0].url

    def start(self):
        try:
            for server in self.servers:
                server.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self):
        per = 16384 // self.primaries_count
        for i, server in enumerate(self.primaries):
            last = 16383 if i == self.primaries_count - 1 else (i + 1) * per - 1
            command(server.port, "CLUSTER", "ADDSLOTSRANGE", str(i * per), str(last))
        first = self.servers[0]
        for server in self.servers[1:]:
            command(server.port, "CLUSTER", "MEET", "127.0.0.1", str(first.port))
        self._wait(lambda: all(_field(command(s.port, "CLUSTER", "INFO"), "cluster_known_nodes")
                               == str(len(self.servers)) for s in self.servers), "every node to know the others")
        for i, primary in enumerate(self.primaries):
            node_id = command(primary.port, "CLUSTER", "MYID")
            for replica in self.servers[self.primaries_count + i * self.replicas_count:][:self.replicas_count]:
                command(replica.port, "CLUSTER", "REPLICATE", node_id)
        self._wait(lambda: all(_field(command(s.port, "CLUSTER", "INFO"), "cluster_state") == "ok"
                               for s in self.servers), "the cluster to be ok")
        replicas = self.servers[self.primaries_count:]
        self._wait(lambda: all(_field(command(s.port, "INFO", "replication"), "master_link_status") == "up"
                               for s in replicas), "every replica to be in sync")

    def _wait(self, ready, what):
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {self.start_timeout}s waiting for {what}")
            time.sleep(0.05)

    def stop(self):
        for server in self.servers:
            server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def command(port, *args, host="127.0.0.1", timeout=5.0):
    """Send one command, return its reply as text (simple, bulk and integer replies; an error reply
    raises RuntimeError). Enough to set up a cluster without any client library."""
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"{host}:{port} closed the connection")
            data += chunk
            kind, rest = data[:1], data[1:]
            if kind in (b"+", b":", b"-") and rest.endswith(b"\r\n"):
                if kind == b"-":
                    raise RuntimeError(rest.decode().strip())
                return rest[:-2].decode()
            if kind == b"$":
                size, _, body = rest.partition(b"\r\n")
                if int(size) < 0:
                    return None
                if len(body) >= int(size) + 2:
                    return body[:int(size)].decode()


def _field(info, name):
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None
