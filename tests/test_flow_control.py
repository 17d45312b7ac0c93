"""The master keeps a worker's bytes in flight under its budget, so Redis never cuts the worker off
for an overflowing pub/sub output buffer, however large the jobs and however slowly it reads."""

import signal
import time

import redis

from conftest import wait_until, workers_registered
from geventsched.client import Client
from geventsched.embedded import EmbeddedRedis

TASKS = '''
from geventsched.registry import App

app = App(prefix="")


@app.task
def size(data):
    return len(data)
'''
BIG = "x" * (64 * 1024)


def test_byte_window_keeps_a_stalled_worker_connected(spawn, namespace, tmp_path):
    (tmp_path / "big_tasks.py").write_text(TASKS)
    # A 1 MB output-buffer limit stands for any limit: the window must stay below it.
    with EmbeddedRedis(extra_args=["--client-output-buffer-limit", "pubsub 1mb 512kb 60"]) as server:
        r = redis.Redis.from_url(server.url)
        worker = spawn("worker", "--redis-url", server.url, "--channels", "4", "--app", "big_tasks",
                       "--metrics-port", "0", cwd=tmp_path)
        wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
        spawn("master", "--redis-url", server.url, "--metrics-port", "0", "--max-inflight-bytes", str(256 * 1024))
        worker.signal(signal.SIGSTOP)  # it reads nothing now: everything sent waits in its buffer
        client = Client.from_url(server.url, namespace)
        handles = client.submit_many([("size", (BIG,), {}) for _ in range(400)], timeout=5)
        # Time for the master to send all the window lets it. Without the window, 25 MB would go: more
        # than the kernel's socket buffers hold, so Redis's own buffer would pass its limit.
        time.sleep(1.5)
        worker.signal(signal.SIGCONT)
        results = client.wait(handles, timeout=30)  # well before the 35 s deadline that a loss would take
        client.close()
        assert len(results) == 400
        assert [results[h.id].value for h in handles] == [len(BIG)] * 400
        assert "lost the subscriber connection" not in worker.output()
