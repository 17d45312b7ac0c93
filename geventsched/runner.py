"""A bounded set of runner greenlets fed from a local queue.

Spawning a greenlet per job costs more than the job itself when jobs are short. Here at most ``size``
runner greenlets exist; each takes jobs off the queue until it is empty, then parks.

Runners are woken one at a time, as a chain: a runner that takes a job while more are queued wakes
one other runner first. If the job finishes without yielding, the same runner goes on with the next
job and the woken one finds the queue empty (one wasted wake per batch, not one per job); if the job
blocks, the woken runner takes the next job and wakes another. So ``size`` blocking jobs still run side
by side, and a burst of short jobs does not stampede every idle runner.

A runner that has held the hub for ``HOLD`` seconds of jobs that never yield (CPU-bound ones) yields
once before the next job, so the reader, the writer and the heartbeat still get their turn: without it
a backlog of such jobs starves the heartbeat until the master declares the worker dead.

``stop(select)`` takes the jobs a cancel names off the queue unrun and interrupts the running ones:
``errors.Cancelled`` is thrown into their runner from the hub, as a time limit's exception is
(``deadlines.py``), only if that runner is still on the same job by then.
"""

HOLD = 0.005

import logging
import time
from collections import deque

import gevent
from gevent.event import Event

from geventsched.errors import Cancelled

log = logging.getLogger(__name__)


class Runners:
    """``execute(job)`` runs a job; if it raises, ``crashed(job, exc)`` is told (by default it is
    logged) and the runner goes on with the next job."""

    def __init__(self, size, execute, crashed=None):
        if size < 1:
            raise ValueError("concurrency must be at least 1")
        self.size = size
        self._execute = execute
        self._crashed = crashed or _log_crash
        self._queue = deque()
        self._idle = []  # Events of parked runners
        self._greenlets = set()
        self._current = {}  # runner greenlet -> job it is running
        self._waking = False  # a runner was woken (or spawned) and has not started yet
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
        """Make sure the queued jobs have a runner. Call after a batch of ``put``."""
        if self._queue and not self._waking:
            self._wake_one()

    def _wake_one(self):
        if self._idle:
            self._idle.pop().set()
        elif len(self._greenlets) < self.size:
            self._greenlets.add(gevent.spawn(self._run))
        else:
            return  # every runner is busy: one of them takes the next job when it is done
        self._waking = True

    def _run(self):
        me = gevent.getcurrent()
        parked = Event()
        queue, current = self._queue, self._current
        clock = time.perf_counter
        try:
            while not self._closed:
                self._waking = False
                since = clock()
                while queue:
                    job = queue.popleft()
                    if queue and not self._waking:
                        self._wake_one()  # someone for the next job, in case this one blocks
                    current[me] = job
                    try:
                        self._execute(job)
                    except Cancelled:  # thrown after ``execute`` let go of the job: nothing to undo
                        pass
                    except Exception as exc:  # this runner lives on
                        self._crashed(job, exc)
                    finally:
                        del current[me]
                    if self._closed:
                        return
                    if clock() - since > HOLD:
                        gevent.sleep(0)
                        since = clock()
                parked.clear()
                self._idle.append(parked)
                parked.wait()
        finally:
            self._greenlets.discard(me)

    def join(self, poll=0.001):
        """Wait (yielding) until every queued job has run."""
        while self._queue or self._current:
            gevent.sleep(poll)

    def jobs(self):
        """The jobs queued and running now."""
        return [*self._queue, *self._current.values()]

    def take_queued(self):
        """Remove and return the jobs no runner has started (they are handed back elsewhere)."""
        pending = list(self._queue)
        self._queue.clear()
        return pending

    def stop(self, select):
        """Stop the jobs ``select(job)`` is true of: queued ones leave the queue unrun, running ones get
        ``Cancelled`` at their next yield (a job in the thread pool: its wait for the thread ends, the
        thread runs on). Returns ``(dropped, interrupted)``, lists of jobs."""
        dropped, kept = [], []
        for job in self._queue:
            (dropped if select(job) else kept).append(job)
        if dropped:
            self._queue.clear()
            self._queue.extend(kept)
        interrupted = [(runner, job) for runner, job in self._current.items() if select(job)]
        hub = gevent.get_hub()
        for runner, job in interrupted:
            hub.loop.run_callback(self._interrupt, runner, job)
        return dropped, [job for _, job in interrupted]

    def _interrupt(self, runner, job):
        # In the hub, so the runner is parked where it yielded: inside ``job``, if it still runs it.
        if self._current.get(runner) is job and not runner.dead:
            runner.throw(Cancelled(job.id))

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


def _log_crash(job, exc):
    log.error("a runner could not run job %s", getattr(job, "id", job), exc_info=(type(exc), exc, exc.__traceback__))
