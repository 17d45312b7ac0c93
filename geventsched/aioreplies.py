"""The reply channel of one asyncio client (``aio.AsyncClient``): the results it awaits, and how they
come. Imports no gevent.

One subscriber connection per client, read by one background task (the reader). A reply frame
signed with this client's secret (``protocol.signed``; the reader keeps the secret in Redis for the
script that records results) is believed as it is. Any other announcement on the channel is only a
cue: the checker then reads the stored results of every job announced or newly awaited meanwhile in
one MGET and believes those, and only a job that has no record at all in Redis (``--durability
none``) is answered by its announcement (see ``client.py``). A job whose announcement goes to
another client's channel (the holder of a unique key) has its stored result read now and then
instead. After the connection is lost, the reader subscribes again and reads the stored results of
every job awaited, since those that finished meanwhile were announced to nobody.
"""

from __future__ import annotations

import asyncio
import logging
import os

from redis import exceptions as rexc

from geventsched.backoff import Backoff
from geventsched.client import REPLY_KEY_TTL
from geventsched.errors import DecodeError, RedisUnavailable
from geventsched.heard import Heard
from geventsched.protocol import RETRY, signed
from geventsched.transport import COMMAND_TIMEOUT, PING_IDLE, PONG_TIMEOUT, RedisError

log = logging.getLogger(__name__)

#: Seconds between reads of the stored result of a job submitted by another client (a unique key's
#: holder): its announcement goes to that client's reply channel, not ours.
POLL_INTERVAL = 0.5


class Replies:
    """The results awaited on ``channel``: ``await listen()`` before jobs that reply to it exist, then
    ``await wait(...)``. ``redis`` is a ``redis.asyncio.Redis``; ``describe(exc)`` words a Redis error
    in one line."""

    def __init__(self, redis, keys, codec, channel, describe):
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.channel = channel
        self._describe = describe
        # job id -> [future of its Result, how many wait() calls await it]
        self._waiting = {}
        # Results to read: id -> the announcement heard, or None; announcements of jobs nobody waits
        # for yet (bounded); jobs whose stored results are read now and then.
        self._to_check = {}
        self._heard = Heard()
        self._polled = set()
        self._checker = self._poller = self._reader = None
        self._pubsub = None
        self._secret = os.urandom(16).hex().encode()
        self._secret_due = 0.0  # loop time to write the secret (again)
        self._listen_lock = asyncio.Lock()
        self._closed = False
        #: The error that keeps us from Redis while the reader reconnects (None while all is well).
        self.trouble = None

    @property
    def epoch(self):
        """The listening epoch (``heard.Heard``): a job submitted to reply here in the current one is
        not read from Redis when a wait for it begins."""
        return self._heard.epoch

    async def listen(self):
        """Subscribed to the reply channel (confirmed by Redis) with the reader running. Raises
        RedisUnavailable when Redis cannot be reached the first time; later losses are the reader's."""
        if self._reader is not None:
            return
        async with self._listen_lock:
            if self._reader is not None:
                return
            try:
                pubsub = await self._subscribe()
            except RedisError as exc:
                raise RedisUnavailable(self._describe(exc)) from None
            self._reader = asyncio.create_task(self._read(pubsub))
            self._reader.add_done_callback(self._reader_ended)

    async def wait(self, ids, timeout):
        """Await the results of ``ids`` (``{id: (read its stored result now and then?, the epoch it
        was submitted in to reply here, or None)}``). Returns ``{id: Result}`` of those that came
        within ``timeout`` seconds (None: as long as it takes). Raises what ``close()`` or a failed
        reader set."""
        await self.listen()
        epoch = self._heard.epoch
        futures = {job_id: self._await(job_id, poll, heard_here == epoch)
                   for job_id, (poll, heard_here) in ids.items()}
        try:
            await asyncio.wait(futures.values(), timeout=timeout)
            await self._last_look([job_id for job_id, future in futures.items() if not future.done()])
        finally:
            self._leave(futures)
        return {job_id: future.result() for job_id, future in futures.items() if future.done()}

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

    def _await(self, job_id, poll, will_hear=False):
        """The future of ``job_id``'s result, checked against Redis once it is new, unless its
        announcement cannot have gone by unheard (``will_hear``) and none came yet."""
        entry = self._waiting.get(job_id)
        if entry is None:
            entry = self._waiting[job_id] = [asyncio.get_running_loop().create_future(), 0]
            heard, sure = self._heard.pop(job_id)
            if sure:
                settle(entry[0], heard)
            elif heard is not None or not will_hear:
                # Subscribed first (wait() listens first), then read what is stored: a result can't slip between.
                self._check_later(job_id, heard)
        if poll:
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
            settle(entry[0], result)

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
            found += [(job_id, batch[job_id]) for job_id, record in zip(unstored, records)
                      if record is None and not batch[job_id].cue]  # a cue is never the result itself
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

    async def _subscribe(self):
        """A PubSub subscribed to our reply channel, the subscription confirmed."""
        pubsub = self.redis.pubsub()
        self._pubsub = pubsub
        try:
            await pubsub.subscribe(self.channel)
            deadline = asyncio.get_running_loop().time() + COMMAND_TIMEOUT
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise rexc.TimeoutError("Redis did not confirm the subscription to the reply channel")
                message = await pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    self._heard.listening()
                    await self._keep_secret()
                    return pubsub
        except BaseException:
            self._pubsub = None
            await _close_quietly(pubsub)
            raise

    async def _keep_secret(self):
        """Put the secret our reply frames are signed with where the finish script finds it, as the
        gevent client does (``Client._keep_secret``)."""
        try:
            await self.redis.set(self.keys.reply_key_prefix + self.channel, self._secret, ex=REPLY_KEY_TTL)
        except rexc.ResponseError:  # not allowed: unsigned frames, every result read back
            self._secret_due = float("inf")
            return
        self._secret_due = asyncio.get_running_loop().time() + REPLY_KEY_TTL / 2

    async def _read(self, pubsub):
        """The reader: hands each announcement to the checker; when the connection is lost, subscribes
        again (with a growing pause while Redis stays away) and reads what was stored meanwhile."""
        backoff = Backoff(first=0.1, cap=2.0)
        while True:
            try:
                if pubsub is None:
                    pubsub = await self._subscribe()
                    log.info("reply channel subscribed again")
                    self.trouble = None
                    backoff.reset()
                    self._check_all()
                await self._read_messages(pubsub)
            except RedisError as exc:
                if self.trouble is None:
                    log.warning("reply channel lost (%s); subscribing again", self._describe(exc))
                self.trouble = exc
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
            if loop.time() >= self._secret_due:  # (idle, this loop still turns every PING_IDLE)
                await self._keep_secret()
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
        """A signed reply frame is believed; any other announcement (one result, or a frame of many)
        is a cue to read the stored results (see the module docstring)."""
        try:
            results = self.codec.decode_results(data)[0]
        except DecodeError:
            return
        sure = signed(data, self._secret)
        later = []  # kept for a wait to come
        for result in results:
            if result.status == RETRY:
                continue
            if result.id not in self._waiting:
                later.append(result)
            elif sure:
                self._resolve(result.id, result)
            else:
                self._check_later(result.id, result)
        if later:
            self._heard.keep(later, sure)

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
            settle(future, exception=failure)

    async def close(self, failure):
        """Stop reading and checking, fail the waits still open with ``failure``, close the connection."""
        self._closed = True
        for task in (self._reader, self._checker, self._poller):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._reader = self._checker = self._poller = None
        self._fail_waiting(failure)
        if self._pubsub is not None:
            await _close_quietly(self._pubsub)
            self._pubsub = None


def settle(future, result=None, exception=None):
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
