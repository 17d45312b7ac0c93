"""Shared steps for the integration tests: start a worker and a master, spy on channels."""

import threading
from collections import Counter

import redis

from conftest import wait_until, workers_registered
from geventsched.client import Client
from geventsched.keys import Keys


def start_system(spawn, r, namespace, worker_args=("--channels", "3"), master_args=(), workers=1, cwd=None):
    """A worker (or several) and a master, registered and discovered. Returns (worker procs, master proc)."""
    procs = [spawn("worker", "--metrics-port", "0", *worker_args, cwd=cwd) for _ in range(workers)]
    wait_until(workers_registered(r, namespace, workers), timeout=20, message="worker registration")
    master = spawn("master", "--metrics-port", "0", *master_args)
    return procs, master


def client_for(redis_url, namespace):
    return Client.from_url(redis_url, namespace)


def status(r, namespace):
    from geventsched.status import snapshot

    return snapshot(r, namespace)


class Spy:
    """Subscribes to channels (a second subscriber: PUBLISH then returns 2, which still counts as
    delivered) and counts messages per channel, plus the most jobs ever outstanding on each."""

    def __init__(self, url, channels, result_channel=None):
        self.counts = Counter()
        self.outstanding = Counter()
        self.max_outstanding = Counter()
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(*channels, *([result_channel] if result_channel else []))
        self._result_channel = result_channel.encode() if result_channel else None
        self._where = {}
        self.channel_of = {}  # job id -> channel it was dispatched on
        self._stop = False
        for _ in range(len(channels) + bool(result_channel)):
            self._pubsub.get_message(timeout=5)  # subscribe confirmations
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import json

        while True:
            message = self._pubsub.get_message(timeout=0.2)
            if message is None and self._stop:
                return  # asked to stop, and nothing more in the socket: every message was counted
            if not message or message["type"] != "message":
                continue
            channel = message["channel"]
            if channel == self._result_channel:
                for job_id in ids_in(json.loads(message["data"])):
                    where = self._where.pop(job_id, None)
                    if where is not None:
                        self.outstanding[where] -= 1
                continue
            for job_id in ids_in(json.loads(message["data"])):
                self.counts[channel] += 1
                self._where[job_id] = channel
                self.channel_of[job_id] = channel
                self.outstanding[channel] += 1
            self.max_outstanding[channel] = max(self.max_outstanding[channel], self.outstanding[channel])

    def close(self):
        self._stop = True
        self._thread.join(10)
        self._pubsub.close()
        self._client.close()


def dispatch_names(namespace, numbers):
    keys = Keys(namespace)
    return [keys.dispatch_channel(n) for n in numbers]


def setinfo_rule(admin):
    """redis-py names itself on connect (CLIENT SETINFO, ignoring a refusal); a server that knows the
    command (Redis 7.2+, Valkey) logs the refusal unless the user may run it."""
    try:
        admin.execute_command("CLIENT", "SETINFO", "LIB-NAME", "redis-py")
    except redis.ResponseError:  # Redis 7.0: unknown subcommand
        return []
    return ["+client|setinfo"]


def ids_in(doc):
    """The job ids a message names: one job or result, or each of a batch frame's (``protocol.py``)."""
    if "jobs" in doc:
        return [entry.get("id", entry.get("ref")) for entry in doc["jobs"]]
    if "results" in doc:
        return [entry["id"] for entry in doc["results"]]
    return [doc["id"]]
