"""Submitting jobs and awaiting their results from asyncio code (FastAPI, aiohttp, a plain script).

    from geventsched.aio import AsyncClient

    async with AsyncClient.from_url("redis://127.0.0.1:6379/0") as client:
        handle = await client.submit("echo", 42)
        await handle.result(timeout=10)        # -> 42, or raises JobFailed / TimeoutError

The jobs, the keys and the replies are those of ``client.Client`` (read its docstring): a job is in
Redis before ``submit`` returns, its result is stored with a TTL and announced on this client's reply
channel, and the client believes the stored result, not the announcement, except for a job that has
no record at all (``--durability none``), which its announcement answers. The options and the checks
of bad input are shared with the gevent client (``submission.py``).

Built on redis-py's asyncio client. Importing this module imports no gevent and patches nothing, so
it runs in any event loop; the workers and the master are separate processes.

Many coroutines may use one client at once: submits made in the same moment (``asyncio.gather`` of
a thousand) go to Redis as one transaction, and result checks as one MGET; one subscriber connection
per client, read by one background task, hands each result to the futures awaiting it
(``aioreplies.py``). A client belongs to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from geventsched import submission
from geventsched.aioreplies import Replies, settle
from geventsched.client import ID_BLOCK, Spec
from geventsched.config import DEFAULT_MAX_PAYLOAD, DEFAULT_RESULT_TTL
from geventsched.errors import ConfigError, JobFailed, RedisUnavailable
from geventsched.keys import Keys
from geventsched.protocol import JsonCodec, Result
from geventsched.store import WORKFLOW_SCRIPTS, lua_script
from geventsched.transport import COMMAND_TIMEOUT, RedisError, describe, redact

log = logging.getLogger(__name__)

#: Connection options, as ``transport.connect`` sets them for the gevent side: RESP2 (pub/sub messages
#: are plain arrays), a reply timeout so a dead path is noticed (a URL's own ``socket_timeout`` wins).
_OPTIONS = dict(protocol=2, socket_connect_timeout=5, socket_timeout=COMMAND_TIMEOUT, socket_keepalive=True,
                health_check_interval=0)
_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
#: Jobs sent in one transaction at most; more waiting submits go in the next one.
FLUSH_LIMIT = 10_000
#: Ids per call of the cancel script, as ``Store.cancel`` (a call that looks far down a long intake
#: holds Redis for a while).
CANCEL_BATCH = 200


class AsyncJobHandle:
    """A submitted job: its id and task, and the way to its result (each method is a coroutine)."""

    __slots__ = ("id", "task", "_client", "_result", "_polled", "_epoch")

    def __init__(self, client: AsyncClient, job_id: str, task: str = "", polled: bool = True) -> None:
        """A handle of any job, by id (``polled``, the default: waiting reads its stored result now and
        then, as its result may be announced to another client, or to none). ``submit`` makes handles
        of its own jobs, whose results this client hears announced, with ``polled=False``."""
        self._client = client
        self.id = job_id
        self.task = task
        self._result = None
        self._polled = polled
        #: The reply channel's epoch (``Replies.epoch``) this job was submitted in, for its own jobs.
        self._epoch = None

    async def wait(self, timeout: float | None = None) -> Result | None:
        """The job's ``Result``, or None if none came within ``timeout`` seconds."""
        return (await self._client.wait([self], timeout)).get(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """The job's return value. Raises JobFailed (error, timeout, cancelled, dead), TimeoutError,
        or RedisUnavailable when Redis was away as the time ran out."""
        result = await self.wait(timeout)
        if result is None:
            trouble = self._client._replies.trouble
            if trouble is not None:
                raise RedisUnavailable(self._client._describe(trouble)) from None
            raise TimeoutError(f"job {self.id}: no result within {timeout}s")
        if not result.ok:
            raise JobFailed(result)
        return result.value

    async def cancel(self) -> str:
        """Cancel the job (see ``AsyncClient.cancel``): ``"cancelled"``, ``"finished"`` (it has its result
        already: nothing changed) or ``"unknown"``."""
        return (await self._client.cancel([self.id]))[self.id]

    def __repr__(self) -> str:
        return f"AsyncJobHandle({self.id!r}, {self.task!r})"


@dataclass(eq=False)
class _Submit:
    """One ``submit_many`` waiting for the next transaction: its jobs and options, encoded once the
    ids are known."""

    specs: list
    options: submission.Options
    timeout: float | None
    key: str | None
    max_retries: int | None
    reply: str | None
    now: float
    future: asyncio.Future
    encoded: list = field(default_factory=list)


class AsyncClient:
    def __init__(self, redis_client: aioredis.Redis, namespace: str = "", timeout: float | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        """``redis_client``: a ``redis.asyncio.Redis`` (not a cluster client). ``timeout``: the default
        time limit of the jobs submitted; ``max_payload``: the largest job record accepted, as for
        ``client.Client``."""
        self.redis = redis_client
        self.keys = Keys(namespace)
        self.codec = JsonCodec()
        self.timeout = timeout
        self.max_payload = max_payload
        self.reply_channel = self.keys.reply_channel(os.urandom(8).hex())
        self._submit_script = _register(redis_client, "submit")
        self._cancel_script = _register(redis_client, "cancel")
        #: Seconds a cancelled job's result is kept (the workers' and the master's default).
        self.result_ttl = DEFAULT_RESULT_TTL
        self._owns_redis = False
        self._url = ""  # for messages (passwords taken out by describe)
        self._closed = False
        self._spare_ids = deque()
        self._outbox = deque()  # _Submit requests for the next transaction
        self._flusher = None
        self._checked = False  # not a cluster (see _ready)
        self._replies = Replies(redis_client, self.keys, self.codec, self.reply_channel, self._describe)

    @classmethod
    def from_url(cls, url: str, namespace: str = "", **kwargs: Any) -> AsyncClient:
        """A client of the Redis at ``url`` (``redis://``, ``rediss://`` with the ``ssl_*`` options as
        query parameters, ``unix://``; ``user:password@`` works). Connects on first use."""
        if url.startswith(_SENTINEL_SCHEMES):
            raise ConfigError(f"the asyncio client takes redis://, rediss:// or unix:// URLs, not "
                              f"{redact(url)!r}: point it at the primary, or use geventsched.client.Client")
        try:
            redis_client = aioredis.Redis.from_url(url, **_OPTIONS)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad Redis URL {redact(url)!r}: {exc}") from None
        client = cls(redis_client, namespace, **kwargs)
        client._owns_redis = True
        client._url = url
        return client

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- submitting ------------------------------------------------------------------------------

    async def submit(self, task: str, /, *args: Any, _delay: float | None = None, _at: Any = None,
                     _priority: int = 0, _unique_key: str | None = None, _timeout: float | None = None,
                     _max_retries: int | None = None, **kwargs: Any) -> AsyncJobHandle:
        """Submit one job for ``task``; returns its handle. Every other keyword goes to the task.

        Options, as ``Client.submit``'s (underscored, so they never clash with a task's own keywords; see
        ``submission.py``): ``_delay`` seconds or ``_at`` a time (unix seconds, aware datetime, ISO 8601
        with an offset): the job waits in Redis until then; ``_priority`` 0..9, higher first;
        ``_unique_key``: while a job with that key is scheduled, queued or running, nothing is submitted
        and the handle is that job's; ``_timeout`` and ``_max_retries`` override the task's.
        """
        handles = await self.submit_many([(task, args, kwargs)], timeout=_timeout, max_retries=_max_retries,
                                         delay=_delay, at=_at, priority=_priority, unique_key=_unique_key)
        return handles[0]

    async def submit_many(self, specs: Iterable[Spec], timeout: float | None = None, key: str | None = None,
                          reply: bool = True, max_retries: int | None = None, *, delay: float | None = None,
                          at: Any = None, priority: int = 0, unique_key: str | None = None) -> list[AsyncJobHandle]:
        """Submit ``[(task, args, kwargs), ...]`` in one transaction; returns their handles in order.

        The options are ``Client.submit_many``'s and apply to every job; with a unique key, the jobs
        after the first get the first one's handle. Arguments must be JSON values (TypeError says which
        are not) and options valid (ValueError): else nothing of this submit is sent.
        """
        if self._closed:
            raise RuntimeError("this AsyncClient is closed")
        specs = list(specs)
        if not specs:
            return []
        now = time.time()
        options = submission.options(now, delay, at, priority, unique_key)
        request = _Submit(specs, options, self.timeout if timeout is None else timeout, key, max_retries,
                          self.reply_channel if reply else None, now, asyncio.get_running_loop().create_future())
        self._outbox.append(request)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await request.future

    async def _flush(self):
        """Send what waits in the outbox, one transaction at a time, until it is empty: submits that
        come while one is on its way go together in the next."""
        try:
            while self._outbox:
                batch, size = [], 0
                while self._outbox and size < FLUSH_LIMIT:
                    request = self._outbox.popleft()
                    if not request.future.done():  # a caller cancelled before anything was sent
                        batch.append(request)
                        size += len(request.specs)
                if batch:
                    await self._send(batch, size)
        finally:
            self._flusher = None

    async def _send(self, batch, size):
        """Encode and enqueue the requests of ``batch``; each caller hears its own outcome (its handles,
        its bad input, or Redis's failure). A request answered has its jobs in Redis."""
        try:
            # Listen before the jobs exist: without durability a result is only announced, never stored.
            await self._ready(listen=any(request.reply for request in batch))
            epoch = self._replies.epoch
            ready = self._encode(batch, await self._new_ids(size))
            plain = [request for request in ready if request.options.plain]
            if plain:
                await self._enqueue_plain([pair for request in plain for pair in request.encoded])
                for request in plain:
                    self._answer(request, [job_id for job_id, _ in request.encoded], epoch)
            for request in ready:
                if not request.options.plain:
                    self._answer(request, await self._enqueue_scripted(request.encoded, request.options), epoch)
        except Exception as exc:  # Redis away, a cluster refused: each caller hears it
            failure = RedisUnavailable(self._describe(exc)) if isinstance(exc, RedisError) else exc
            for request in batch:
                settle(request.future, exception=failure)
        except BaseException:  # cancelled (the loop is going away): whether the jobs went is unknown
            for request in batch:
                settle(request.future, exception=RuntimeError("the AsyncClient stopped while submitting"))
            raise

    def _encode(self, batch, ids):
        """Encode each request's jobs with its share of ``ids``; a request whose input is bad hears
        why (TypeError, ValueError, JobTooLarge) and is left out. Returns the others."""
        ready = []
        for request in batch:
            own, ids = ids[:len(request.specs)], ids[len(request.specs):]
            try:
                request.encoded = submission.encode_jobs(
                    self.codec, own, request.specs, request.options, request.timeout, request.key,
                    request.max_retries, request.reply, request.now, self.max_payload)
            except (TypeError, ValueError) as exc:
                settle(request.future, exception=exc)
                continue
            ready.append(request)
        return ready

    def _answer(self, request, ids, epoch):
        """Hand a request its handles: ``ids`` are its jobs' own, or the job holding a unique key;
        ``epoch``: the reply channel's when the jobs were submitted."""
        # A job of another submit (the holder of a unique key), or one submitted with no reply, is
        # announced to some other client or to none: its handle reads the stored result now and then.
        handles = []
        for (own_id, _), job_id, (task, _, _) in zip(request.encoded, ids, request.specs):
            handle = AsyncJobHandle(self, job_id, task, polled=job_id != own_id or not request.reply)
            if not handle._polled:
                handle._epoch = epoch
            handles.append(handle)
        settle(request.future, handles)

    async def _enqueue_plain(self, encoded):
        """``[(id, record), ...]`` into Redis in one MULTI, as ``Store.submit``: HSET jobs, RPUSH
        intake, PUBLISH wakeup."""
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        for i in range(0, len(encoded), 1000):
            chunk = encoded[i:i + 1000]
            pipe.hset(k.jobs, mapping=dict(chunk))
            pipe.rpush(k.intake, *(job_id for job_id, _ in chunk))
        pipe.publish(k.wakeup_channel, b"1")
        await pipe.execute()

    async def _enqueue_scripted(self, encoded, opts):
        """``[(id, record), ...]`` with options into Redis through ``submit.lua``. Returns each job's
        id, or that of the job holding its unique key (then it was not submitted)."""
        ids = []
        for keys, args in self._submit_calls(encoded, opts):
            ids += (job_id.decode() for job_id in await self._submit_script(keys=keys, args=args))
        return ids

    def _submit_calls(self, encoded, opts):
        """``[(KEYS, ARGV), ...]`` of ``submit.lua`` for ``[(id, record), ...]`` with ``opts``, a thousand
        jobs a call, laid out as ``Store.submit_with_options`` lays them out (a test holds the two
        together)."""
        k = self.keys
        due = "" if opts.due is None else repr(float(opts.due))
        calls = []
        for i in range(0, len(encoded), 1000):
            args = [k.result_prefix, k.wakeup_channel, "PUBLISH"]
            for job_id, body in encoded[i:i + 1000]:
                args += (job_id, body, int(opts.priority), due, opts.unique_key or "")
            calls.append(([k.jobs, k.scheduled, k.priority, k.unique, k.intake], args))
        return calls

    async def _new_ids(self, count):
        """``count`` job ids, from ids reserved earlier where there are enough (see ``Client._new_ids``).
        Only the flusher calls this, one call at a time."""
        spare = self._spare_ids
        if len(spare) < count:
            need = max(count - len(spare), ID_BLOCK)
            last = await self.redis.incrby(self.keys.seq, need)
            spare.extend(str(n) for n in range(last - need + 1, last + 1))
        return [spare.popleft() for _ in range(count)]

    # -- waiting -----------------------------------------------------------------------------------

    async def wait(self, handles: Iterable[AsyncJobHandle], timeout: float | None = None) -> dict[str, Result]:
        """Await the results of ``handles``. Returns ``{id: Result}`` for those that finished within
        ``timeout`` seconds (None = wait as long as it takes)."""
        handles = list(handles)
        pending = {}
        for handle in handles:
            if handle._result is None:
                pending.setdefault(handle.id, []).append(handle)
        if pending:
            if self._closed:
                raise RuntimeError("this AsyncClient is closed")
            await self._ready()
            ids = {job_id: (any(h._polled for h in group), next((h._epoch for h in group if h._epoch), None))
                   for job_id, group in pending.items()}
            for job_id, result in (await self._replies.wait(ids, timeout)).items():
                for handle in pending[job_id]:
                    handle._result = result
        return {h.id: h._result for h in handles if h._result is not None}

    async def _ready(self, listen=True):
        """Once per client: refuse a Redis Cluster (this client speaks to one server). Then listen on
        the reply channel (``Replies.listen``)."""
        if not self._checked:
            try:
                info = await self.redis.info("cluster")
            except rexc.ResponseError:  # a user not allowed INFO: taken for a plain server, as transport does
                info = {}
            except RedisError as exc:
                raise RedisUnavailable(self._describe(exc)) from None
            if info.get("cluster_enabled") == 1:
                raise ConfigError("the asyncio client does not speak Redis Cluster: use geventsched.client.Client")
            self._checked = True
        if listen:
            await self._replies.listen()

    def _describe(self, exc):
        return describe(exc, self._url)

    # -- cancel and close --------------------------------------------------------------------------

    async def cancel(self, jobs: Iterable[str | AsyncJobHandle]) -> dict[str, str]:
        """Cancel jobs, given by id or handle: ``{id: "cancelled" | "finished" | "unknown"}``, as
        ``Client.cancel`` does, with the same script (``lua/cancel.lua``).

        A scheduled or queued job never runs; a running one is interrupted (a task in the thread pool
        runs on, and its result is dropped). Either way its result is status ``cancelled``, which an
        awaited ``result()`` raises as JobFailed. A job that has its result already, or is dead, is
        "finished" and stays as it was; one Redis has no record of is "unknown".
        """
        ids = list(dict.fromkeys(getattr(job, "id", job) for job in jobs))
        await self._ready(listen=False)
        words = {}
        try:
            for i in range(0, len(ids), CANCEL_BATCH):
                chunk = ids[i:i + CANCEL_BATCH]
                keys, args = self._cancel_call(chunk)
                replies = await self._cancel_script(keys=keys, args=args)
                words.update(zip(chunk, (word.decode() for word in replies)))
        except RedisError as exc:
            raise RedisUnavailable(self._describe(exc)) from None
        return words

    def _cancel_call(self, ids):
        """``(KEYS, ARGV)`` of ``cancel.lua`` for ``ids``, laid out as ``Store.cancel`` lays them out (a
        test holds the two together)."""
        k = self.keys
        return ([k.jobs, k.scheduled, k.inflight, k.dispatched, k.attempts, k.retries, k.finished, k.intake,
                 k.priority, k.unique, k.done, k.workflow_counts],
                [k.result_prefix, self.result_ttl, k.result_channel, k.cancel_channel, "PUBLISH", k.workflow_prefix,
                 k.wakeup_channel, *ids])

    async def close(self) -> None:
        """Send the submits already made, stop reading, fail the waits still open (RuntimeError) and
        close the connections (those of a Redis client passed in stay open: its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._replies.close(RuntimeError("the AsyncClient was closed while waiting"))
        if self._owns_redis:
            await self.redis.aclose()

    aclose = close


def _register(redis_client, name):
    """Script ``name`` on ``redis_client``, its source as ``Store`` registers it: the workflow engine in
    front of the scripts that move workflows on (a Redis script cannot call another)."""
    source = lua_script(name)
    if name in WORKFLOW_SCRIPTS:
        source = lua_script("workflow") + "\n" + source
    return redis_client.register_script(source)
