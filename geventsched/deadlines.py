"""Time limits for many running greenlets, on one timer.

A ``gevent.Timeout`` per job costs a libev timer started and stopped per job: 15% of a busy worker's
CPU with no-op jobs (py-spy). Here a job's limit is an entry in a bucket of its deadline, rounded up to
``TICK``: arming and disarming are a dict insert and delete. One repeating timer, running only while
some limit is armed, wakes every ``TICK`` in the hub and throws ``DeadlineExceeded`` into each greenlet
whose deadline has passed, as gevent's own Timeout does (from the hub, so the greenlet is parked
inside its job when it gets it). A limit fires between its deadline and ``TICK`` seconds later.
"""

import math
import time

import gevent

TICK = 0.05


class DeadlineExceeded(BaseException):
    """Thrown into a greenlet that outlived its time limit. A BaseException, as gevent.Timeout is, so
    that a task's ``except Exception`` does not swallow it."""

    def __init__(self, seconds):
        super().__init__(f"exceeded its {seconds:g}s time limit")
        self.seconds = seconds


class Deadlines:
    def __init__(self, tick=TICK):
        self.tick = tick
        self._buckets = {}  # tick number -> {greenlet: seconds}
        self._timer = None

    def arm(self, greenlet, seconds):
        """Limit ``greenlet`` to ``seconds`` from now. Returns the handle for ``disarm``."""
        slot = math.ceil((time.monotonic() + seconds) / self.tick)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            if self._timer is None:
                self._timer = gevent.get_hub().loop.timer(self.tick, self.tick)
                self._timer.start(self._fire)
        bucket[greenlet] = seconds
        return slot

    def disarm(self, greenlet, slot):
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(greenlet, None)
            if not bucket:
                del self._buckets[slot]

    def _fire(self):
        # In the hub: no greenlet of ours is running, each is parked where it yielded.
        now = time.monotonic() / self.tick
        for slot in sorted(slot for slot in self._buckets if slot <= now):
            for greenlet, seconds in self._buckets.pop(slot).items():
                if not greenlet.dead:
                    greenlet.throw(DeadlineExceeded(seconds))
        if not self._buckets:
            self._timer.close()
            self._timer = None

    def close(self):
        self._buckets.clear()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
