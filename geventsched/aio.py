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
a thousand) go to Redis as one transaction, result checks as one MGET, and one subscriber connection
per client, read by one background task, hands each result to the futures awaiting it. A client
belongs to the event loop that first uses it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc

from geventsched import submission
from geventsched.backoff import Backoff
from geventsched.client import HEARD_LIMIT, ID_BLOCK, Spec
from geventsched.config import DEFAULT_MAX_PAYLOAD
from geventsched.errors import ConfigError, DecodeError, JobFailed, RedisUnavailable
from geventsched.keys import Keys
from geventsched.protocol import RETRY, JsonCodec, Result
from geventsched.store import lua_script
from geventsched.transport import COMMAND_TIMEOUT, PING_IDLE, PONG_TIMEOUT, RedisError, describe, redact

log = logging.getLogger(__name__)

#: Connection options, as ``transport.connect`` sets them for the gevent side: RESP2 (pub/sub messages
#: are plain arrays), a reply timeout so a dead path is noticed (a URL's own ``socket_timeout`` wins).
_OPTIONS = dict(protocol=2, socket_connect_timeout=5, socket_timeout=COMMAND_TIMEOUT, socket_keepalive=True,
                health_check_interval=0)
_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
#: Jobs sent in one transaction at most; more waiting submits go in the next one.
FLUSH_LIMIT = 10_000
#: Seconds between reads of the stored result of a job submitted by another client (a unique key's
#: holder): its announcement goes to that client's reply channel, not ours.
POLL_INTERVAL = 0.5


class AsyncJobHandle:
    """A submitted job: its id and task, and the way to its result (each method is a coroutine)."""

    __slots__ = ("id", "task", "_client", "_result", "_foreign")

    def __init__(self, client: AsyncClient, job_id: str, task: str, foreign: bool = False) -> None:
        self._client = client
        self.id = job_id
        self.task = task
        self._result = None
        #: Submitted by another client (this submit's unique key was taken): its result is announced
        #: elsewhere, so waiting for it reads the stored result now and then.
        self._foreign = foreign

    async def wait(self, timeout: float | None = None) -> Result | None:
        """The job's ``Result``, or None if none came within ``timeout`` seconds."""
        return (await self._client.wait([self], timeout)).get(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """The job's return value. Raises JobFailed (error, timeout, cancelled, dead), TimeoutError,
        or RedisUnavailable when Redis was away as the time ran out."""
        result = await self.wait(timeout)
        if result is None:
            trouble = self._client._trouble
            if trouble is not None:
                raise RedisUnavailable(self._client._describe(trouble)) from None
            raise TimeoutError(f"job {self.id}: no result within {timeout}s")
        if not result.ok:
            raise JobFailed(result)
        return result.value

    async def cancel(self) -> str:
        """Cancel the job: ``"cancelled"``, ``"finished"`` (too late: it has its result) or ``"unknown"``."""
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
        self._submit_script = redis_client.register_script(lua_script("submit"))
        self._owns_redis = False
        self._url = ""  # for messages (passwords taken out by describe)
        self._closed = False
        self._spare_ids = deque()
        self._outbox = deque()  # _Submit requests for the next transaction
        self._flusher = None
        # Waiting: job id -> [future, how many wait() calls await it]; results to read (id -> the
        # announcement heard, or None); announcements of jobs nobody waits for yet (bounded).
        self._waiting = {}
        self._to_check = {}
        self._checker = None
        self._heard = OrderedDict()
        self._polled = set()
        self._poller = None
        self._pubsub = None
        self._reader = None
        self._listen_lock = asyncio.Lock()
        #: The error that keeps us from Redis while the reader reconnects (None while all is well).
        self._trouble = None

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
            if any(request.reply for request in batch):
                # Listen before the jobs exist: without durability a result is only announced, never stored.
                await self._listen()
            ready = self._encode(batch, await self._new_ids(size))
            plain = [request for request in ready if request.options.plain]
            if plain:
                await self._enqueue_plain([pair for request in plain for pair in request.encoded])
                for request in plain:
                    self._answer(request, [job_id for job_id, _ in request.encoded])
            for request in ready:
                if not request.options.plain:
                    self._answer(request, await self._enqueue_scripted(request.encoded, request.options))
        except Exception as exc:  # Redis away (also from _listen), a cluster refused: each caller hears it
            failure = RedisUnavailable(self._describe(exc)) if isinstance(exc, RedisError) else exc
            for request in batch:
                _settle(request.future, exception=failure)
        except BaseException:  # cancelled (the loop is going away): whether the jobs went is unknown
            for request in batch:
                _settle(request.future, exception=RuntimeError("the AsyncClient stopped while submitting"))
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
                _settle(request.future, exception=exc)
                continue
            ready.append(request)
        return ready

    def _answer(self, request, ids):
        """Hand a request its handles: ``ids`` are its jobs' own, or the job holding a unique key."""
        _settle(request.future, [AsyncJobHandle(self, job_id, task, foreign=job_id != own_id)
                                 for (own_id, _), job_id, (task, _, _) in zip(request.encoded, ids, request.specs)])

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
            await self._listen()
            futures = {job_id: self._await(job_id, any(h._foreign for h in group))
                       for job_id, group in pending.items()}
            try:
                await asyncio.wait(futures.values(), timeout=timeout)
                await self._last_look([job_id for job_id, future in futures.items() if not future.done()])
            finally:
                self._leave(futures)
            for job_id, future in futures.items():
                if future.done():
                    result = future.result()  # raises what close() set
                    for handle in pending[job_id]:
                        handle._result = result
        return {h.id: h._result for h in handles if h._result is not None}

    async def _last_look(self, ids):
        """The time is up for ``ids``: read their stored results once more, so that a short wait (0 s,
        to see whether a job is done) still sees a result stored before it began."""
        if not ids:
            return
        try:
            found = await self._stored(dict.fromkeys(ids))
        except RedisError:
            return
        for job_id, result in found:
            self._resolve(job_id, result)

    def _await(self, job_id, foreign):
        """The future of ``job_id``'s result, checked against Redis once it is new."""
        entry = self._waiting.get(job_id)
        if entry is None:
            entry = self._waiting[job_id] = [asyncio.get_running_loop().create_future(), 0]
            # Subscribed first (wait() listens), then read what is stored: a result can't slip between.
            self._check_later(job_id, self._heard.pop(job_id, None))
        if foreign:
            self._polled.add(job_id)
            if self._poller is None:
                self._poller = asyncio.create_task(self._poll())
        entry[1] += 1
        return entry[0]

    def _leave(self, futures):
        for job_id, future in futures.items():
            entry = self._waiting.get(job_id)
            if entry is not None and entry[0] is future:
                entry[1] -= 1
                if entry[1] <= 0:  # nobody waits any more: forget it (its result stays in Redis)
                    del self._waiting[job_id]
                    self._polled.discard(job_id)

    def _resolve(self, job_id, result):
        entry = self._waiting.pop(job_id, None)
        self._polled.discard(job_id)
        if entry is not None:
            _settle(entry[0], result)

    def _check_later(self, job_id, heard=None):
        """Have the checker read ``job_id``'s stored result soon (with its announcement, if one came)."""
        if heard is not None or job_id not in self._to_check:
            self._to_check[job_id] = heard
        if self._checker is None:
            self._checker = asyncio.create_task(self._check())

    async def _check(self):
        """Read the stored results of the jobs in ``_to_check``, all that gathered meanwhile at once."""
        backoff = Backoff(first=0.1, cap=2.0)
        try:
            while self._to_check:
                batch, self._to_check = self._to_check, {}
                batch = {job_id: heard for job_id, heard in batch.items() if job_id in self._waiting}
                if not batch:
                    continue
                try:
                    found = await self._stored(batch)
                except RedisError as exc:
                    log.debug("reading results failed (%s); trying again", self._describe(exc))
                    for job_id, heard in batch.items():
                        if self._to_check.get(job_id) is None:
                            self._to_check[job_id] = heard
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                for job_id, result in found:
                    self._resolve(job_id, result)
        finally:
            self._checker = None

    async def _stored(self, batch):
        """``[(id, Result)]`` for the jobs of ``batch`` (id -> announcement or None) that have an answer:
        their stored result, or for a job with no record at all, its announcement (see the module
        docstring). One round trip, two when announced jobs have no stored result."""
        ids = list(batch)
        prefix = self.keys.result_prefix
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(ids), 1000):
            pipe.mget([prefix + job_id for job_id in ids[i:i + 1000]])
        stored = [data for chunk in await pipe.execute() for data in chunk]
        found, unstored = [], []
        for job_id, data in zip(ids, stored):
            if data is None:
                if batch[job_id] is not None:
                    unstored.append(job_id)
                continue
            try:
                result = self.codec.decode_result(data, max_payload=None)  # ours, with its job's record
            except DecodeError:
                continue
            if result.id == job_id:
                found.append((job_id, result))
        if unstored:
            records = await self.redis.hmget(self.keys.jobs, unstored)
            found += [(job_id, batch[job_id]) for job_id, record in zip(unstored, records) if record is None]
        return found

    async def _poll(self):
        """Now and then, read the stored results of the jobs whose announcements go elsewhere."""
        try:
            while self._polled:
                await asyncio.sleep(POLL_INTERVAL)
                for job_id in list(self._polled):
                    if job_id in self._waiting:
                        self._check_later(job_id)
        finally:
            self._poller = None

    # -- the reply channel -------------------------------------------------------------------------

    async def _listen(self):
        """Subscribed to the reply channel (confirmed by Redis) with the reader running. Raises
        RedisUnavailable when Redis cannot be reached the first time; later losses are the reader's."""
        if self._reader is not None:
            return
        async with self._listen_lock:
            if self._reader is not None:
                return
            try:
                await self._refuse_cluster()
                pubsub = await self._subscribe()
            except RedisError as exc:
                raise RedisUnavailable(self._describe(exc)) from None
            self._reader = asyncio.create_task(self._read(pubsub))
            self._reader.add_done_callback(self._reader_ended)

    async def _refuse_cluster(self):
        try:
            info = await self.redis.info("cluster")
        except rexc.ResponseError:  # a user not allowed INFO: taken for a plain server, as transport does
            return
        if info.get("cluster_enabled") == 1:
            raise ConfigError("the asyncio client does not speak Redis Cluster yet: use geventsched.client.Client")

    async def _subscribe(self):
        """A PubSub subscribed to our reply channel, the subscription confirmed."""
        pubsub = self.redis.pubsub()
        self._pubsub = pubsub
        try:
            await pubsub.subscribe(self.reply_channel)
            deadline = asyncio.get_running_loop().time() + COMMAND_TIMEOUT
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise rexc.TimeoutError("Redis did not confirm the subscription to the reply channel")
                message = await pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        except BaseException:
            self._pubsub = None
            await _close_quietly(pubsub)
            raise

    async def _read(self, pubsub):
        """The reader: hands each announcement to the checker; when the connection is lost, subscribes
        again (with a growing pause while Redis stays away) and reads what was stored meanwhile."""
        backoff = Backoff(first=0.1, cap=2.0)
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                    log.info("reply channel subscribed again")
                    self._trouble = None
                    backoff.reset()
                    self._check_all()
                await self._read_messages(pubsub)
            except RedisError as exc:
                if self._trouble is None:
                    log.warning("reply channel lost (%s); subscribing again", self._describe(exc))
                self._trouble = exc
                if pubsub is not None:
                    self._pubsub = None
                    await _close_quietly(pubsub)
                    pubsub = None
                await asyncio.sleep(backoff.next())

    async def _read_messages(self, pubsub):
        """Read until the connection fails (raises). An idle connection is PINGed after ``PING_IDLE``
        seconds and counts as dead when nothing comes back within ``PONG_TIMEOUT`` more."""
        loop = asyncio.get_running_loop()
        heard_at, pinged = loop.time(), False
        while True:
            message = await pubsub.get_message(timeout=PING_IDLE)
            if message is None:
                if pinged and loop.time() - heard_at >= PING_IDLE + PONG_TIMEOUT:
                    raise rexc.ConnectionError("no reply to a PING on the reply channel's connection")
                if not pinged:
                    await pubsub.ping()
                    pinged = True
                continue
            heard_at, pinged = loop.time(), False
            kind = message["type"]
            if kind == "message":
                self._announced(message["data"])
            elif kind == "subscribe":  # redis-py subscribed again after a reconnect of its own
                self._check_all()

    def _announced(self, data):
        """An announcement (one result, or a reply frame of many) is a cue to read the stored results
        (see the module docstring)."""
        try:
            results = self.codec.decode_results(data)[0]
        except DecodeError:
            return
        heard = self._heard
        for result in results:
            if result.status == RETRY:
                continue
            if result.id in self._waiting:
                self._check_later(result.id, result)
            else:  # nobody waits for it yet: kept (bounded) for a wait to come, which checks it as any other
                heard[result.id] = result
        while len(heard) > HEARD_LIMIT:
            heard.popitem(last=False)

    def _check_all(self):
        """After a (re)subscription: read the stored results of everything waited for (those that
        finished while we were away were announced to nobody)."""
        for job_id in self._waiting:
            self._check_later(job_id)

    def _reader_ended(self, task):
        """The reader only ends on close() (cancelled) or by a bug: then fail the waits rather than
        let them hang."""
        if task.cancelled() or self._closed:
            return
        failure = task.exception() or RuntimeError("the reply channel's reader stopped")
        log.error("reply channel reader stopped: %r", failure)
        self._fail_waiting(failure)
        self._reader = None

    def _fail_waiting(self, failure):
        waiting, self._waiting = self._waiting, {}
        self._polled.clear()
        for future, _ in waiting.values():
            _settle(future, exception=failure)

    def _describe(self, exc):
        return describe(exc, self._url)

    # -- cancel and close --------------------------------------------------------------------------

    async def cancel(self, ids: Iterable[str]) -> dict[str, str]:
        """Cancel jobs by id: ``{id: "cancelled" | "finished" | "unknown"}``."""
        raise NotImplementedError("cancelling from the asyncio client needs lua/cancel.lua (not on main yet)")

    async def close(self) -> None:
        """Send the submits already made, stop reading, fail the waits still open (RuntimeError) and
        close the connections (those of a Redis client passed in stay open: its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        for task in (self._reader, self._checker, self._poller):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._reader = self._checker = self._poller = None
        self._fail_waiting(RuntimeError("the AsyncClient was closed while waiting"))
        if self._pubsub is not None:
            await _close_quietly(self._pubsub)
            self._pubsub = None
        if self._owns_redis:
            await self.redis.aclose()

    aclose = close


def _settle(future, result=None, exception=None):
    """Give ``future`` its result or exception, unless it already has one (or was cancelled)."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


async def _close_quietly(pubsub):
    try:
        await pubsub.aclose()
    except RedisError:
        pass
