"""Rate limits and concurrency limits of tasks, applied by the master where it dispatches.

    @app.task(rate_limit="20/s")       # at most 20 starts in any window of one second (also /m, /h)
    @app.task(max_running=2)           # at most 2 running at once
    @app.task(rate_limit="100/m", max_running=5)

A limit holds for every worker and node together, because one master dispatches every job: it starts
a job of a limited task only when the limit allows, and parks the others (below). Workers register
their tasks' limits with their time limits (``Store.register_tasks``); the master reads them from
there (``discovery.py``) and never imports user code.

**Rate** ``N/period``: at most N jobs of the task start (are dispatched) in any window of ``period``
seconds, with no burst beyond N: a sliding window, not a bucket refilled at fixed times. The master
keeps the start times of the task's last N dispatches; one more may start at ``t`` only when fewer
than N of them are later than ``t - period - SLACK``. The 20 ms to spare keep the delivery to the
workers (pub/sub, a millisecond or two, more under load) from squeezing N + 1 starts, as the workers
see them, into one period; 20/s then runs at 20 per 1.02 s. The times are also written to Redis, the
list ``rate:<task>`` (one entry "<time> <count>" per dispatched batch, newest first, trimmed to N
entries, expiring a period after the last start), in the same pipelined write as the dispatch
records, so a master that takes over loads them and goes on from the same window. They are the
masters' clocks: a failover between masters whose clocks disagree shifts the window by that much.

**Concurrency** ``max_running=N``: at most N jobs of the task are in flight (dispatched, no result
yet). A master counts its own from its in-flight ledger: the ids it started are kept per task, and
those the ledger no longer holds (a result came, a retry was scheduled, the job was re-queued) stop
counting; the ledger is looked at only when the count reaches N, so a result costs nothing here.
A master that takes over must also count what the one before left running. Reading the whole
``dispatched`` hash and every job record for their tasks would cost a take-over O(jobs in flight);
instead the ids are written to Redis as they go, the set ``running:<task>`` (SADD in the dispatch
write, SREM once a master saw them finish), and the new master reads that set (about N ids) and
keeps those ``dispatched`` still holds, with their tokens: each stops counting when its result
arrives with that token, or when the reaper's once-a-second look finds its dispatch gone. A job
counts until the master hears its result, so a slot frees slightly after the job really ends, never
before; but a job re-queued because its deadline passed or its worker was thought dead stops
counting at once, so a worker that was only slow may briefly run one more than N (at least once
delivery allows no better).

**Held jobs**: a claimed job that its limit holds back goes to its task's list ``held:<task>`` (one
script, ``hold.lua``: off the in-flight set, no attempt counted, no retry used), and the task's name
to the set ``held``. The master takes held jobs back from the head of that list (``claim.lua`` on it)
as soon as the limit allows: when the window opens (the dispatcher sleeps until the earliest
opening) or when a running job's result frees a slot. Meanwhile the claim goes on with the rest of
the intake, so a limited backlog never holds other tasks back. A task's held jobs keep their order;
while a task has held jobs, its newly claimed jobs queue behind them. A held job is ``queued`` for
``geventsched job`` (it has a record, no due time, no dispatch). ``geventsched_master_jobs_held``
counts them per task.

Jobs of unlimited tasks pay one dict lookup each in the dispatch loop, and only while some task has
a limit.

Everything below is pure (the time is an argument): ``tests/test_limits.py`` drives it with a fixed
clock.
"""

import logging
from collections import deque
from dataclasses import dataclass

from geventsched.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds per window of each unit of ``rate_limit``.
PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: The largest N of a rate limit: the master keeps the last N start times of the task.
MAX_RATE = 100_000
#: The largest ``max_running``.
MAX_RUNNING = 1_000_000
#: ``Limiter.allowance`` of a task without a limit.
UNLIMITED = 1 << 30
#: Seconds a rate limit's window is longer than its period: a margin for the delivery of the jobs.
SLACK = 0.02


@dataclass(frozen=True, slots=True)
class Limit:
    """A task's limits: at most ``rate`` starts in any ``period`` seconds, at most ``max_running`` at
    once; None = no such limit."""

    rate: int | None = None
    period: float = 1.0
    max_running: int | None = None


def parse_rate(text):
    """``"N/s"``, ``"N/m"`` or ``"N/h"`` -> ``(N, seconds per window)``. Raises ConfigError."""
    if not isinstance(text, str):
        raise ConfigError(f"rate_limit must be a string like '20/s', not {text!r}")
    count, sep, unit = text.strip().partition("/")
    count, unit = count.strip(), unit.strip()
    if not sep or unit not in PERIODS:
        raise ConfigError(f"bad rate_limit {text!r}: write N/s, N/m or N/h (N jobs per second, minute or hour)")
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= MAX_RATE:
        raise ConfigError(f"bad rate_limit {text!r}: N must be a whole number from 1 to {MAX_RATE:,}")
    return int(count), PERIODS[unit]


def check_max_running(value):
    """``max_running`` as given to ``@app.task``: a whole number >= 1. Raises ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNNING:
        raise ConfigError(f"bad max_running {value!r}: it must be a whole number from 1 to {MAX_RUNNING:,}")
    return value


def limit_of(options):
    """The Limit in a task's registered options (a dict a worker wrote), or None when it has none.
    Never raises: an entry that does not parse (someone else's, or a newer worker's) is no limit, and
    is logged."""
    rate, running = options.get("rate_limit"), options.get("max_running")
    if rate is None and running is None:
        return None
    try:
        count, period = parse_rate(rate) if rate is not None else (None, 1.0)
        running = check_max_running(running) if running is not None else None
    except ConfigError as exc:
        log.warning("master: ignoring a registered limit: %s", exc)
        return None
    return Limit(count, period, running)


def limits_from(task_options):
    """``{task: Limit}`` of the tasks in ``{task: registered options}`` that have a limit."""
    out = {}
    for name, options in task_options.items():
        limit = limit_of(options) if isinstance(options, dict) else None
        if limit is not None:
            out[name] = limit
    return out


class Limiter:
    """The limits the master applies, and the state they need (see the module docstring).

    ``running(job_id)`` tells whether a job this master dispatched is still in flight (its ledger).
    """

    def __init__(self, running):
        self._in_flight = running
        self.limits = {}  # task -> Limit: only tasks that have one (the dispatch loop's test)
        self.held = {}  # task -> jobs in its held list in Redis (also tasks no longer limited)
        self.released = set()  # ids taken back from a held list and not yet dispatched or held again
        self._starts = {}  # task -> deque of start times of its recent dispatches, oldest first
        self._mine = {}  # task -> ids this master dispatched (max_running), some maybe finished
        self._inherited = {}  # task -> {id: token} dispatched by an earlier master, still in flight
        self._gone = {}  # task -> ids that stopped counting, to drop from ``running:<task>`` in Redis

    # -- configuration -----------------------------------------------------------------------------

    def new_tasks(self, limits):
        """The tasks in ``limits`` whose state a master must load from Redis before applying them:
        those with a rate limit or a max_running that this limiter does not apply yet."""
        return [task for task, limit in limits.items()
                if (limit.rate is not None and task not in self._starts)
                or (limit.max_running is not None and task not in self._inherited)]

    def configure(self, limits, starts=None, inherited=None, running_now=None):
        """Apply ``{task: Limit}``. For tasks limited from now on: ``starts`` ``{task: [time, ...]}``
        and ``inherited`` ``{task: {id: token}}`` as read from Redis, ``running_now`` ``{task: [id,
        ...]}`` this master has in flight already."""
        starts, inherited, running_now = starts or {}, inherited or {}, running_now or {}
        for task in list(self.limits):
            if task not in limits:
                self._forget(task)
        for task, limit in limits.items():
            if limit.rate is None:
                self._starts.pop(task, None)
            else:
                window = self._starts.get(task)
                if window is None:
                    window = deque(sorted(starts.get(task, ())))
                while len(window) > limit.rate:  # a lower N: only the newest N matter
                    window.popleft()
                self._starts[task] = window
            if limit.max_running is None:
                self._mine.pop(task, None)
                self._inherited.pop(task, None)
            else:
                self._mine.setdefault(task, set()).update(running_now.get(task, ()))
                if task not in self._inherited:
                    self._inherited[task] = dict(inherited.get(task, {}))
        self.limits = dict(limits)

    def _forget(self, task):
        for state in (self._starts, self._mine, self._inherited):
            state.pop(task, None)

    def reset(self):
        """Forget everything (a master standing by again: the next term loads it all from Redis)."""
        self.__init__(self._in_flight)

    # -- dispatching -------------------------------------------------------------------------------

    def allowance(self, task, now):
        """How many jobs of ``task`` may start at ``now`` (a large number for an unlimited task)."""
        limit = self.limits.get(task)
        if limit is None:
            return UNLIMITED
        room = UNLIMITED
        if limit.rate is not None:
            room = limit.rate - len(self._window(task, limit, now))
        if limit.max_running is not None:
            room = min(room, limit.max_running - self._running(task, limit.max_running))
        return max(0, room)

    def may_start(self, task, job_id, now):
        """May this job of a limited ``task`` start at ``now``? A job that was not taken from the task's
        held list waits while that list has jobs (they came first). Changes nothing: ``start`` counts
        the job once it goes."""
        if job_id not in self.released and self.held.get(task):
            return False
        return self.allowance(task, now) > 0

    def start(self, task, job_id, now):
        """A job of a limited ``task`` that ``may_start`` let go is going now: count it."""
        self.released.discard(job_id)
        limit = self.limits[task]
        if limit.rate is not None:
            window = self._starts[task]
            window.append(max(now, window[-1]) if window else now)  # kept in order if the clock steps back
        if limit.max_running is not None:
            self._mine[task].add(job_id)

    def park(self, job_id):
        """A job ``may_start`` refused is going to its held list: True if it goes back to the head (it was
        taken from there), False for the tail."""
        if job_id in self.released:
            self.released.discard(job_id)
            return True
        return False

    def revoke(self, task, job_id):
        """Undo ``start`` for a job that did not go out after all (the write was lost)."""
        limit = self.limits.get(task)
        if limit is None:
            return
        if limit.rate is not None and self._starts[task]:
            self._starts[task].pop()
        if limit.max_running is not None:
            self._mine[task].discard(job_id)

    def next_opening(self, now):
        """The earliest time after ``now`` when a task with held jobs may start one again by its rate
        limit, or None: nothing held, or nothing that time alone will free (a task at its max_running
        waits for a result, one the rate lets go now for room on a channel: both wake the master)."""
        soonest = None
        for task, count in self.held.items():
            limit = self.limits.get(task)
            if not count or limit is None or limit.rate is None:
                continue
            if limit.max_running is not None and self._running(task, limit.max_running) >= limit.max_running:
                continue
            window = self._window(task, limit, now)
            if len(window) >= limit.rate:
                opening = window[len(window) - limit.rate] + limit.period + SLACK
                if opening > now and (soonest is None or opening < soonest):
                    soonest = opening
        return soonest

    def _window(self, task, limit, now):
        """The task's start times later than ``now - period - SLACK`` (older ones can never matter
        again)."""
        window = self._starts[task]
        edge = now - limit.period - SLACK
        while window and window[0] <= edge:
            window.popleft()
        return window

    def _running(self, task, most):
        """Jobs of ``task`` in flight: this master's still in its ledger, plus those inherited. Its own
        are checked against the ledger only when they reach ``most``."""
        mine, inherited = self._mine[task], self._inherited[task]
        if len(mine) + len(inherited) >= most:
            gone = [job_id for job_id in mine if not self._in_flight(job_id)]
            if gone:
                mine.difference_update(gone)
                self._gone.setdefault(task, []).extend(gone)
        return len(mine) + len(inherited)

    # -- what an earlier master left in flight --------------------------------------------------------

    def inherited(self):
        """``[(id, token), ...]`` of the jobs an earlier master dispatched that still count."""
        return [(job_id, token) for jobs in self._inherited.values() for job_id, token in jobs.items()]

    def finished(self, job_id, token):
        """A result the master did not dispatch itself: if it ends an inherited dispatch (same token),
        that job stops counting. Returns True if it did."""
        for task, jobs in self._inherited.items():
            if job_id in jobs and jobs[job_id] == token:
                del jobs[job_id]
                self._gone.setdefault(task, []).append(job_id)
                return True
        return False

    def drop_inherited(self, ids):
        """These inherited jobs are in flight no more (their dispatch is gone from Redis)."""
        ids = set(ids)
        for task, jobs in self._inherited.items():
            ended = [job_id for job_id in jobs if job_id in ids]
            for job_id in ended:
                del jobs[job_id]
            if ended:
                self._gone.setdefault(task, []).extend(ended)

    def take_gone(self):
        """``{task: [id, ...]}`` that stopped counting since the last call (to drop from Redis)."""
        gone, self._gone = self._gone, {}
        return gone
