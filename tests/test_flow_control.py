"""The master keeps a worker's bytes in flight under its budget, so Redis never cuts the worker off
for an overflowing pub/sub output buffer, however large the jobs and however slowly it reads."""

import signal
import time

import redis

from conftest import wait_until, workers_registered
from geventsched.client import Client
from geventsched.embedded import EmbeddedRedis
from geventsched.keys import Keys

TASKS = '''
from geventsched.registry import App

app = App(prefix="")


@app.task
def size(data):
    return len(data)
'''
#: Just under the size a job goes by reference from (protocol.REF_THRESHOLD): sent whole.
BIG = "x" * (60 * 1024)
#: Jobs of BIG that fit in the window of 256 KB: 4 (of about 61.5 KB each).
WINDOW_JOBS = 4
#: Over it: sent as a reference the worker reads from Redis.
HUGE = "x" * (100 * 1024)


def window_while_stalled(r, keys, seconds):
    """Watch Redis while the worker reads nothing: ``(most jobs sent to it at once, jobs not sent
    then)``. A job sent to a worker has a dispatch record (``HSET dispatched``, in the write that
    publishes it); a job not sent is in the intake, or claimed (in flight in Redis) but held by the
    master."""
    wait_until(lambda: r.hlen(keys.dispatched), timeout=20, message="the first dispatch")
    sent, held_back = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pipe = r.pipeline(transaction=True)
        pipe.hlen(keys.dispatched)
        pipe.zcard(keys.inflight)
        pipe.llen(keys.intake)
        owned, claimed, queued = pipe.execute()
        if owned >= sent:
            sent, held_back = owned, claimed + queued - owned
        time.sleep(0.05)
    return sent, held_back


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
        sent, held_back = window_while_stalled(r, Keys(namespace), seconds=1.5)
        worker.signal(signal.SIGCONT)
        # The window held jobs back: at most what fits in 256 KB went to the stalled worker, the rest
        # waited (claimed by the master or still in the intake) although its slots had room (4 x 1000).
        assert 1 <= sent <= WINDOW_JOBS, (sent, held_back)
        assert held_back >= 400 - WINDOW_JOBS, (sent, held_back)
        results = client.wait(handles, timeout=30)  # well before the 35 s deadline that a loss would take
        client.close()
        assert len(results) == 400
        assert [results[h.id].value for h in handles] == [len(BIG)] * 400
        assert "lost the subscriber connection" not in worker.output()


def test_large_jobs_go_by_reference_and_never_fill_a_stalled_workers_buffer(spawn, namespace, tmp_path):
    (tmp_path / "big_tasks.py").write_text(TASKS)
    with EmbeddedRedis(extra_args=["--client-output-buffer-limit", "pubsub 1mb 512kb 60"]) as server:
        r = redis.Redis.from_url(server.url)
        worker = spawn("worker", "--redis-url", server.url, "--channels", "4", "--app", "big_tasks",
                       "--metrics-port", "0", cwd=tmp_path)
        wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
        spawn("master", "--redis-url", server.url, "--metrics-port", "0", "--max-inflight-bytes", str(256 * 1024))
        worker.signal(signal.SIGSTOP)
        client = Client.from_url(server.url, namespace)
        handles = client.submit_many([("size", (HUGE,), {}) for _ in range(200)], timeout=5)
        # 200 jobs of 100 KB: 20 MB whole, a few KB as references, so the window lets them all go.
        sent, _ = window_while_stalled(r, Keys(namespace), seconds=1.5)
        worker.signal(signal.SIGCONT)
        assert sent == 200
        results = client.wait(handles, timeout=30)
        client.close()
        assert [results[h.id].value for h in handles] == [len(HUGE)] * 200
        assert "lost the subscriber connection" not in worker.output()
