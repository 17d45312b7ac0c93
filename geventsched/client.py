"""Submitting jobs and waiting for their results, from any process.

    from geventsched.client import Client
    client = Client.from_url("redis://127.0.0.1:6379/0")
    handle = client.submit("echo", 42)
    handle.result(timeout=10)        # -> 42, or raises JobFailed / TimeoutError

A job is in Redis (hash + intake list) before ``submit`` returns; the master need not run in this
process, or at all yet. Results are stored with a TTL and also announced on this client's reply
channel, so waiting works whether the result came before or after the wait began.
"""

import os
import time
from collections import deque

from geventsched import transport
from geventsched.errors import DecodeError, JobFailed, RedisUnavailable
from geventsched.keys import Keys
from geventsched.protocol import Job, JsonCodec
from geventsched.store import Store

#: Job ids are reserved from Redis's counter this many at a time (see ``Client._new_ids``).
ID_BLOCK = 100

class JobHandle:
    __slots__ = ("id", "task", "_client")

    def __init__(self, client, job_id, task):
        self._client = client
        self.id = job_id
        self.task = task

    def wait(self, timeout=None):
        """The job's ``Result``, or None if none came within ``timeout`` seconds."""
        return self._client.wait([self], timeout).get(self.id)

    def result(self, timeout=None):
        """The job's return value. Raises JobFailed (error, timeout, dead) or TimeoutError."""
        result = self.wait(timeout)
        if result is None:
            raise TimeoutError(f"job {self.id}: no result within {timeout}s")
        if not result.ok:
            raise JobFailed(result)
        return result.value

    def __repr__(self):
        return f"JobHandle({self.id!r}, {self.task!r})"


class Client:
    def __init__(self, redis_client, namespace="", timeout=None):
        self.redis = redis_client
        self.keys = Keys(namespace, cluster=transport.is_cluster(redis_client))
        self.store = Store(redis_client, self.keys)
        self.codec = JsonCodec()
        self.timeout = timeout
        self.reply_channel = self.keys.reply_channel(os.urandom(8).hex())
        self._subscriber = None
        self._results = {}  # results that came in for jobs nobody has waited for yet
        self._spare_ids = deque()

    @classmethod
    def from_url(cls, url, namespace="", **kwargs):
        return cls(transport.connect(url), namespace, **kwargs)

    def submit(self, task, *args, **kwargs):
        """Submit one job for ``task``; returns its JobHandle."""
        return self.submit_many([(task, args, kwargs)])[0]

    def submit_many(self, specs, timeout=None, key=None, reply=True, max_retries=None):
        """Submit ``[(task, args, kwargs), ...]`` in one transaction; returns their handles in order.

        Arguments must be JSON values (a TypeError says which is not). ``timeout`` overrides the
        task's time limit; ``key`` is the affinity key for ``--strategy hash``; ``max_retries``
        overrides the task's retries after a failure.
        """
        specs = list(specs)
        if not specs:
            return []
        if reply:
            # Listen before the jobs exist: without durability a result is only announced, never stored.
            self._listen()
        ids = self._new_ids(len(specs))
        now = time.time()
        timeout = timeout if timeout is not None else self.timeout
        reply_to = self.reply_channel if reply else None
        encoded, handles = [], []
        for job_id, (task, args, kwargs) in zip(ids, specs):
            job = Job(job_id, task, list(args), dict(kwargs), timeout, reply_to, now, key, max_retries)
            try:
                encoded.append((job_id, self.codec.encode_job(job)))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"arguments of {task} are not JSON values: {exc}") from None
            handles.append(JobHandle(self, job_id, task))
        self.store.submit(encoded)
        return handles

    def _new_ids(self, count):
        """``count`` job ids, from ids this client reserved earlier where it has enough: a submit is
        then one round trip, not two. Ids a client never uses are skipped, like any gap in a counter."""
        spare = self._spare_ids
        if len(spare) < count:
            spare.extend(self.store.new_ids(max(count - len(spare), ID_BLOCK)))
        return [spare.popleft() for _ in range(count)]

    def wait(self, handles, timeout=None):
        """Wait for the results of ``handles``. Returns ``{id: Result}`` for those that finished
        within ``timeout`` seconds (None = wait forever). Blocks the calling greenlet or thread."""
        want = {h.id for h in handles if h.id not in self._results}
        if want:
            self._collect(want, timeout)
        results = self._results
        return {h.id: results.pop(h.id) for h in handles if h.id in results}

    def _collect(self, want, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        self._listen()
        # Subscribed first, then read what is stored: a result can't slip between the two.
        ids = sorted(want)
        for job_id, data in zip(ids, self.store.get_results(ids)):
            if data is not None:
                self._keep(data, want)
        while want:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                messages = self._subscriber.read(remaining)
            except transport.ConnectionLost:
                self._relisten(want, deadline)
                continue
            for _, data in messages:
                self._keep(data, want)

    def _relisten(self, want, deadline):
        """Redis went away while we waited: listen again, then read what was stored meanwhile.
        Raises RedisUnavailable once the wait's deadline passes with Redis still away."""
        self._subscriber.close()
        self._subscriber = None
        delay = 0.1
        while True:
            try:
                self._listen()
                ids = sorted(want)
                for data in self.store.get_results(ids):
                    if data is not None:
                        self._keep(data, want)
                return
            except transport.RedisError as exc:
                self._subscriber = None
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise RedisUnavailable(transport.describe(exc)) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _listen(self):
        if self._subscriber is None:
            self._subscriber = transport.subscribe(self.redis, [self.reply_channel])

    def _keep(self, data, want):
        try:
            result = self.codec.decode_result(data)
        except DecodeError:
            return
        # Results of jobs nobody waits for are not kept: they stay in Redis until their TTL.
        if result.id in want:
            self._results[result.id] = result
            want.discard(result.id)

    def close(self):
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
