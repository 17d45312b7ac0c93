"""A TCP forwarder in front of a Redis server that can play a dead network path.

``silence()`` stops forwarding on every open connection, in both directions, without closing
anything: no FIN, no RST, the bytes just stop, as when a NAT or firewall entry is dropped or the
peer lost power. The proxy then stops reading the silenced sockets too, so a big write into one
fills the kernel buffers and blocks, as it would on a real dead path. Connections made after
``silence()`` are forwarded normally: a client that notices and reconnects gets through.

Written with plain sockets and threads, so it works in a test process patched by gevent (the
threads are greenlets then) and in one that is not.
"""

import socket
import threading

RECV_SIZE = 1 << 16


class _Link:
    """One client connection and the upstream connection it is forwarded to."""

    def __init__(self, downstream, upstream):
        self.sockets = (downstream, upstream)
        self.silenced = False
        self.closed = threading.Event()

    def pump(self, src, dst):
        try:
            while True:
                data = src.recv(RECV_SIZE)
                if not data or self.silenced:
                    break
                dst.sendall(data)
        except OSError:
            pass
        if self.silenced:  # a dead path: keep both sockets open and read nothing more
            self.closed.wait()
        self.close()

    def close(self):
        self.closed.set()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Proxy:
    """``Proxy(host, port).start()`` forwards ``127.0.0.1:proxy.port`` to ``host:port``."""

    def __init__(self, host, port):
        self.target = (host, port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._links = []
        self._lock = threading.Lock()
        self._closing = False

    def url(self, db=0, query=""):
        return f"redis://127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def start(self):
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()
        return self

    def _accept_loop(self):
        while not self._closing:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            link = _Link(downstream, upstream)
            with self._lock:
                self._links.append(link)
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=link.pump, args=(src, dst), name="proxy-pump", daemon=True).start()

    def silence(self):
        """Stop forwarding on every connection open now, for good. Returns how many there were."""
        with self._lock:
            live = [link for link in self._links if not link.closed.is_set()]
        for link in live:
            link.silenced = True
        return len(live)

    def close(self):
        self._closing = True
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
