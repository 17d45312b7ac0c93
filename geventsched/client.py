"""Submitting jobs and waiting for their results, from any process.

    from geventsched.client import Client
    client = Client.from_url("redis://127.0.0.1:6379/0")
    handle = client.submit("echo", 42)
    handle.result(timeout=10)        # -> 42, or raises JobFailed / TimeoutError
    handle.cancel()                  # -> "cancelled", "finished" (too late) or "unknown"

    from geventsched.workflow import chain, sig
    client.run(chain(sig("echo", 1), sig("myapp.add", 2))).result(10)     # -> 3 (see workflow.py)

A job is in Redis (hash + intake list) before ``submit`` returns; the master need not run in this
process, or at all yet. Results are stored with a TTL and also announced on this client's reply
channel, so waiting works whether the result came before or after the wait began.

A reply frame signed with this client's secret (``protocol.signed``; the secret waits in Redis for
the script that records results, and never travels in a message) is believed as it is. Any other
announcement is only a cue: the client reads the stored result and believes that, so a message
someone else publishes on the reply channel (its name travels in every job) cannot pass for a
result. Only a job with no record at all in Redis (``--durability none``, fire-and-forget) is
answered by an unsigned announcement, which is then all there is.

What a wait reads from Redis: nothing for the jobs this client submitted while it listened, as it
has listened since (the epoch of its ``heard.Heard``, stamped on their handles): their
announcements are on the reply channel or kept from it. For any other job (a handle made from an
id, one submitted before the client last subscribed, or after it dropped announcements kept past
``heard.HEARD_LIMIT``), the wait first reads the stored result, as the announcement may have gone
by unheard.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from geventsched import submission, transport, workflow
from geventsched.backoff import Backoff
from geventsched.config import DEFAULT_MAX_PAYLOAD
from geventsched.errors import DecodeError, JobFailed, RedisUnavailable
from geventsched.heard import Heard
from geventsched.protocol import CANCELLED, JsonCodec, Result, signed
from geventsched.store import Store

#: Job ids are reserved from Redis's counter this many at a time (see ``Client._new_ids``).
ID_BLOCK = 100
#: Seconds the secret that signs this client's reply frames is kept in Redis; written again after
#: half of that, and after every new subscription (Redis may have restarted without it meanwhile).
REPLY_KEY_TTL = 24 * 3600
#: One job to submit: ``(task name, positional arguments, keyword arguments)``, all JSON values.
Spec = tuple[str, Sequence[Any], dict[str, Any]]


class JobHandle:
    """A submitted job: its id and task, and the way to its result."""

    __slots__ = ("id", "task", "_client", "_epoch")

    def __init__(self, client: Client, job_id: str, task: str, epoch: int | None = None) -> None:
        self._client = client
        self.id = job_id
        self.task = task
        #: The client's listening epoch when the job was submitted with replies to it (else None):
        #: while it is the same, the job's announcement cannot have gone by unheard.
        self._epoch = epoch

    def wait(self, timeout: float | None = None) -> Result | None:
        """The job's ``Result``, or None if none came within ``timeout`` seconds."""
        return self._client.wait([self], timeout).get(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """The job's return value. Raises JobFailed (error, timeout, cancelled, dead) or TimeoutError."""
        result = self.wait(timeout)
        if result is None:
            raise TimeoutError(f"job {self.id}: no result within {timeout}s")
        if not result.ok:
            raise JobFailed(result)
        return result.value

    def cancel(self) -> str:
        """Cancel the job (see ``Client.cancel``): "cancelled", "finished" (it has its result already:
        nothing changed) or "unknown"."""
        return self._client.cancel([self.id])[self.id]

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, {self.task!r})"


class WorkflowHandle(JobHandle):
    """A started workflow: its id (``w`` and digits) and the way to its result. ``result()`` is the
    chain's last value, the group's list or the chord callback's value; JobFailed names the step that
    failed it."""

    __slots__ = ("shape",)

    def __init__(self, client: Client, workflow_id: str, shape: str = "") -> None:
        super().__init__(client, workflow_id, workflow.WORKFLOW_TASK)
        self.shape = shape

    def result(self, timeout: float | None = None) -> Any:
        """The workflow's value. Raises JobFailed (a step failed, or it was cancelled) or TimeoutError."""
        result = self.wait(timeout)
        if result is None:
            raise TimeoutError(f"workflow {self.id}: no result within {timeout}s")
        if not result.ok:
            raise JobFailed(result)
        return result.value

    def cancel(self) -> str:
        """Stop the workflow: nothing more of it starts, and its result says it was cancelled.
        Returns "cancelled", "finished" (it had ended: nothing changed) or "unknown"."""
        return self._client.cancel_workflow(self.id)

    def info(self) -> dict | None:
        """Its steps and their states (``lookup.workflow_info``)."""
        from geventsched.lookup import workflow_info

        return workflow_info(self._client.store, self.id)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r}, {self.shape!r})"


class Client:
    def __init__(self, redis_client: Any, namespace: str = "", timeout: float | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        """``max_payload``: the largest job record (bytes of JSON) ``submit`` accepts; keep it at the
        workers' and master's ``--max-payload``, which refuse anything larger."""
        self.redis = redis_client
        self.store = Store.for_namespace(redis_client, namespace)
        self.keys = self.store.keys
        self.codec = JsonCodec()
        self.max_payload = max_payload
        self.timeout = timeout
        self.reply_channel = self.keys.reply_channel(os.urandom(8).hex())
        self._secret = os.urandom(16).hex().encode()
        self._secret_due = 0.0  # monotonic time to write the secret (again)
        self._subscriber = None
        self._results = {}  # results that came in for jobs nobody has waited for yet
        self._heard = Heard()  # announcements read ahead of any wait for them, and the listening epoch
        self._spare_ids = deque()
        # Plain jobs go in through a connection of their own, read by hiredis (``Store.submit``'s
        # ``via``): a submit is then one round trip with none of redis-py's per-call work (on one
        # server; on a cluster through redis-py). Opened on first use; one submit at a time.
        self._writer = None
        self._writer_pid = os.getpid()
        self._writer_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, namespace: str = "", **kwargs: Any) -> Client:
        """A client of the Redis at ``url`` (see ``transport.connect`` for the URL forms)."""
        return cls(transport.connect(url), namespace, **kwargs)

    def submit(self, task: str, *args: Any, _delay: float | None = None, _at: Any = None, _priority: int = 0,
               _unique_key: str | None = None, _timeout: float | None = None, _max_retries: int | None = None,
               **kwargs: Any) -> JobHandle:
        """Submit one job for ``task``; returns its JobHandle. Every other keyword goes to the task.

        Options (underscored, so they never clash with a task's own keywords; see ``submission.py``):
        ``_delay`` seconds or ``_at`` a time (unix seconds, aware datetime, ISO 8601 with an offset):
        the job waits in Redis until then; ``_priority`` 0..9, higher first; ``_unique_key``: while a
        job with that key is scheduled, queued or running, nothing is submitted and the handle is that
        job's; ``_timeout`` and ``_max_retries`` override the task's.
        """
        return self.submit_many([(task, args, kwargs)], timeout=_timeout, max_retries=_max_retries, delay=_delay,
                                at=_at, priority=_priority, unique_key=_unique_key)[0]

    def submit_many(self, specs: Iterable[Spec], timeout: float | None = None, key: str | None = None,
                    reply: bool = True, max_retries: int | None = None, *, delay: float | None = None,
                    at: Any = None, priority: int = 0, unique_key: str | None = None) -> list[JobHandle]:
        """Submit ``[(task, args, kwargs), ...]`` in one transaction; returns their handles in order.

        Arguments must be JSON values (a TypeError says which is not). ``timeout`` overrides the
        task's time limit; ``key`` is the affinity key for ``--strategy hash``; ``max_retries``
        overrides the task's retries after a failure. ``delay``/``at``, ``priority`` and
        ``unique_key`` apply to every job (see ``submit``); with a unique key, the jobs after the
        first get the first one's handle. A bad option raises ValueError before anything is sent.
        """
        specs = list(specs)
        if not specs:
            return []
        now = time.time()
        opts = submission.options(now, delay, at, priority, unique_key)
        epoch = None
        if reply:
            # Listen before the jobs exist: without durability a result is only announced, never stored.
            self._listen()
            self._drain()
            epoch = self._heard.epoch
        ids = self._new_ids(len(specs))
        timeout = timeout if timeout is not None else self.timeout
        reply_to = self.reply_channel if reply else None
        encoded = submission.encode_jobs(self.codec, ids, specs, opts, timeout, key, max_retries, reply_to, now,
                                         self.max_payload)
        handles = [JobHandle(self, job_id, task, epoch) for (job_id, _), (task, _, _) in zip(encoded, specs)]
        if opts.plain:
            with self._writer_lock:
                if self._writer_pid != os.getpid():  # forked since: the parent's socket is not ours
                    self._writer, self._writer_pid = None, os.getpid()
                if self._writer is None and not self.keys.cluster:
                    self._writer = transport.Publisher(self.redis, self.keys.intake)
                self.store.submit(encoded, via=self._writer)
            return handles
        given = self.store.submit_with_options(
            [(job_id, body, opts.priority, opts.due, opts.unique_key) for job_id, body in encoded])
        return [h if h.id == job_id else JobHandle(self, job_id, h.task) for h, job_id in zip(handles, given)]

    def cancel(self, jobs: Iterable[str | JobHandle]) -> dict[str, str]:
        """Cancel jobs, given by id or handle: ``{id: "cancelled" | "finished" | "unknown"}``.

        A scheduled or queued job never runs. A running one is interrupted (``errors.Cancelled`` at its
        next yield; a task in the thread pool runs on, and its result is dropped). Either way its result
        is status ``cancelled``, which a waiting ``result()`` raises as JobFailed. A job that has its
        result already, or is dead, is "finished" and stays as it was; a job Redis has no record of
        (never submitted, or its result expired; without durability, once the master took it) is "unknown".
        """
        return self.store.cancel([getattr(job, "id", job) for job in jobs])

    def run(self, flow: Any, *, timeout: float | None = None, max_retries: int | None = None,
            priority: int = 0) -> WorkflowHandle:
        """Start a workflow (``geventsched.workflow``: ``sig``, ``chain``, ``group``, ``chord``); returns
        its WorkflowHandle. ``timeout``, ``max_retries`` and ``priority`` apply to every step that does
        not set its own. Bad input (see ``workflow.py``) raises TypeError or ValueError, and nothing is
        submitted. The steps that can start are queued at once; the others wait in Redis for the
        results they need."""
        plan = workflow.Plan(flow, priority)
        self._listen()  # before the workflow exists, as for submit
        self._drain()
        ids = self._new_ids(plan.steps + 1)
        workflow_id = "w" + ids[0]
        nodes = plan.encode(workflow_id, ids[1:], self.codec, time.time(),
                            timeout if timeout is not None else self.timeout, max_retries, self.max_payload)
        self.store.run_workflow(workflow_id, self.reply_channel, nodes)
        return WorkflowHandle(self, workflow_id, workflow.shape(flow))

    def cancel_workflow(self, workflow_id: str) -> str:
        """End a running workflow as cancelled: "cancelled", "finished" (it had ended) or "unknown".
        Its steps already queued or running are cancelled too (``cancel``)."""
        word, running = self.store.cancel_workflow(workflow_id, CANCELLED)
        if running:
            self.store.cancel(running)
        return word

    def _new_ids(self, count):
        """``count`` job ids, from ids this client reserved earlier where it has enough: a submit is
        then one round trip, not two. Ids a client never uses are skipped, like any gap in a counter."""
        spare = self._spare_ids
        if len(spare) < count:
            spare.extend(self.store.new_ids(max(count - len(spare), ID_BLOCK)))
        return [spare.popleft() for _ in range(count)]

    def wait(self, handles: Iterable[JobHandle], timeout: float | None = None) -> dict[str, Result]:
        """Wait for the results of ``handles``. Returns ``{id: Result}`` for those that finished
        within ``timeout`` seconds (None = wait forever). Blocks the calling greenlet or thread."""
        handles = list(handles)
        want = {h.id for h in handles if h.id not in self._results}
        if want:
            epoch = self._heard.epoch
            unsure = {h.id for h in handles if h.id in want and h._epoch != epoch}
            self._collect(want, unsure, timeout)
        results, found = self._results, {}
        for h in handles:
            result = results.pop(h.id, None)
            if result is not None:
                found[h.id] = result
            if h.id in found:
                h._epoch = None  # its announcement is spent: a wait for it again reads the stored result
        return found

    def _drain(self):
        """Read what the reply channel holds now, without waiting: a producer that submits with
        replies and waits late, or never, must not let Redis's buffer for it grow until Redis cuts it
        off. What is read is kept (bounded) for a later wait, which checks it as any announcement."""
        try:
            while True:
                messages = self._subscriber.read(0)
                if not messages:
                    return
                for _, data in messages:
                    self._heard.keep(*self._decode(data))
        except transport.ConnectionLost:
            self._subscriber.close()
            self._subscriber = None
            self._listen()  # a wait reads the stored results of anything announced meanwhile

    def _collect(self, want, unsure, timeout):
        """Take the results of ``want``; ``unsure``: those whose announcements may have gone by unheard."""
        deadline = None if timeout is None else time.monotonic() + timeout
        early = self._heard.take(want)
        if early:
            self._heard_of([result for result, sure in early if sure], True, want)
            self._heard_of([result for result, sure in early if not sure], False, want)
            if not want:
                return
        try:
            epoch = self._heard.epoch
            self._listen()
            if self._heard.epoch != epoch:  # listening again: anything may have gone by meanwhile
                unsure = want
            # Subscribed first, then read what is stored: a result can't slip between the two.
            unsure &= want
            if unsure:
                self._read_stored(unsure, want)
        except transport.ConnectionLost:  # (Redis restarting: LOADING is one) as later in the wait
            self._relisten(want, deadline)
        while want:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                messages = self._subscriber.read(remaining)
            except transport.ConnectionLost:
                self._relisten(want, deadline)
                continue
            if messages:
                unsigned = []
                for _, data in messages:
                    results, sure = self._decode(data)
                    if sure:
                        self._heard_of(results, True, want)
                    else:
                        unsigned += results
                self._heard_of(unsigned, False, want)  # one read of what is stored, for all of them

    def _relisten(self, want, deadline):
        """Redis went away while we waited: listen again, then read what was stored meanwhile.
        Raises RedisUnavailable once the wait's deadline passes with Redis still away."""
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        backoff = Backoff(first=0.1, cap=2.0)
        while True:
            try:
                self._listen()
                self._read_stored(want, want)
                return
            except transport.RedisError as exc:
                self._subscriber = None
                delay = backoff.next()
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise RedisUnavailable(transport.describe(exc)) from None
                time.sleep(delay)

    def _listen(self):
        if self._subscriber is None:
            self._subscriber = transport.subscribe(self.redis, [self.reply_channel])
            self._heard.listening()
            self._secret_due = 0.0
        if time.monotonic() >= self._secret_due:
            self._keep_secret()

    def _keep_secret(self):
        """Put the secret our reply frames are signed with where the finish script finds it. A user
        not allowed to write it gets unsigned frames, and reads every result back as before."""
        try:
            self.redis.set(self.keys.reply_key_prefix + self.reply_channel, self._secret, ex=REPLY_KEY_TTL)
        except transport.ResponseError:
            self._secret_due = float("inf")
            return
        self._secret_due = time.monotonic() + REPLY_KEY_TTL / 2

    def _read_stored(self, ids, want):
        """Take the stored results of ``ids`` (of ``want``) there are."""
        for data in self.store.get_results(sorted(ids)):
            if data is not None:
                self._keep(data, want)

    def _decode(self, data):
        """``(results, signed)``: the results an announcement (one result, or a reply frame) carries,
        none if it is unreadable, and whether it is a frame signed with our secret."""
        try:
            return self.codec.decode_results(data)[0], signed(data, self._secret)
        except DecodeError:
            return (), False

    def _heard_of(self, announced, sure, want):
        """Announced results: those of a signed frame (``sure``) as they are; else the stored result
        of each job we wait for (see the module docstring), or the announcement itself for a job
        that has no record in Redis."""
        # Results of jobs not waited for yet are kept for their waits.
        if sure:
            later = [result for result in announced if not self._take(result, want)]
            if later:
                self._heard.keep(later, True)
            return
        heard = {result.id: result for result in announced if result.id in want}
        if len(heard) < len(announced):
            self._heard.keep([result for result in announced if result.id not in heard], False)
        if not heard:
            return
        ids = sorted(heard)
        for job_id, (data, recorded) in zip(ids, self.store.results_and_records(ids)):
            if data is not None:
                self._keep(data, want)
            elif not recorded and not heard[job_id].cue:  # a cue is never the result itself
                self._take(heard[job_id], want)

    def _keep(self, data, want):
        """A stored result (with its job's record: no size limit applies, it is ours)."""
        try:
            result = self.codec.decode_result(data, max_payload=None)
        except DecodeError:
            return
        self._take(result, want)

    def _take(self, result, want):
        """``result`` answers the wait, if its job is one of those wanted (returns whether it does)."""
        if result.id in want:
            self._results[result.id] = result
            want.discard(result.id)
            return True
        return False

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
