"""A bounded set of runner greenlets fed from a local queue.

Spawning a greenlet per job costs more than the job itself when jobs are short. Here at most ``size``
runner greenlets exist; each takes jobs off the queue until it is empty, then parks. A job that blocks
(sleeps, waits on I/O) only holds its own runner: ``wake()`` hands the rest of the queue to idle
runners, or spawns new ones up to ``size``, so ``size`` blocking jobs run side by side.
"""

from collections import deque

import gevent
from gevent.event import Event


class Runners:
    def __init__(self, size, execute):
        if size < 1:
            raise ValueError("concurrency must be at least 1")
        self.size = size
        self._execute = execute
        self._queue = deque()
        self._idle = []  # Events of parked runners
        self._greenlets = set()
        self._current = {}  # runner greenlet -> job it is running
        self._closed = False

    @property
    def running(self):
        return len(self._current)

    @property
    def queued(self):
        return len(self._queue)

    @property
    def free(self):
        return max(0, self.size - len(self._current) - len(self._queue))

    def put(self, job):
        self._queue.append(job)

    def wake(self):
        """Make sure the queued jobs have runners. Call after a batch of ``put``."""
        need = len(self._queue)
        idle = self._idle
        while need and idle:
            idle.pop().set()
            need -= 1
        while need and len(self._greenlets) < self.size:
            self._greenlets.add(gevent.spawn(self._run))
            need -= 1

    def _run(self):
        me = gevent.getcurrent()
        parked = Event()
        queue, current = self._queue, self._current
        try:
            while not self._closed:
                while queue:
                    job = queue.popleft()
                    current[me] = job
                    try:
                        self._execute(job)
                    finally:
                        del current[me]
                    if self._closed:
                        return
                parked.clear()
                self._idle.append(parked)
                parked.wait()
        finally:
            self._greenlets.discard(me)

    def close(self):
        """Take no more jobs. Returns the queued jobs no runner has started."""
        self._closed = True
        pending = list(self._queue)
        self._queue.clear()
        for parked in self._idle:
            parked.set()
        self._idle.clear()
        return pending

    def kill(self):
        """Stop every runner at once. Returns the jobs that were interrupted."""
        interrupted = list(self._current.values())
        gevent.killall(list(self._greenlets), block=True, timeout=5)
        self._current.clear()
        return interrupted
