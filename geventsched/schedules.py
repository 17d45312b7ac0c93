"""Periodic schedules: stored in Redis, fired by the active master, each fire time at most once.

A schedule names a task with its arguments and a rule: ``every`` S seconds (its fire times are the
multiples of S since the Unix epoch, so every master computes the same ones) or a 5-field ``cron``
expression, whose fire times are its matches in the schedule's IANA time zone (``tz``, default UTC).

Cron across daylight-saving changes follows Debian's cron (the ``cronsim`` library): a rule with a
fixed minute and hour (``30 2 * * *``) fires once at the next valid time when its local time is
skipped (spring forward: 02:30 becomes 03:00), and once, at the first occurrence, when its local time
repeats (fall back). A rule with a wildcard minute or hour (``*/15 * * * *``, ``0 * * * *``) follows
real time: it fires in both copies of a repeated hour, as an hourly job should.

Storage: the hash ``schedules``, name -> JSON record::

    {"task": "report", "args": [], "kwargs": {}, "cron": "0 3 * * *", "tz": "Europe/Berlin",
     "next": 1767236400, "last": 1767150000, "job": "42"}

(``every`` instead of ``cron`` for an interval; ``next``/``last`` fire times in Unix seconds,
``job`` the id of the last fired job). Fire times are whole seconds.

Firing (``Scheduler.fire_due``, the master's housekeeping): for each schedule whose ``next`` has come,
``lua/fire.lua`` enqueues one job, atomically with claiming its fire time and moving ``next`` on. Two
guards keep a fire time from producing two jobs when masters overlap (a paused master that lost its
lease, or a failover): the script only acts on the record exactly as the caller read it
(compare-and-set, so a second master that read the same record does nothing), and it claims the fire
time's deterministic id ``fire:<name>:<fire time>`` with SET NX. A master dying between the claim and
the enqueue cannot lose a fire: both are one script. After an outage a schedule fires once, for the
latest fire time it missed (the others count as missed), then follows its rule.
"""

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from geventsched import transport
from geventsched.errors import ConfigError
from geventsched.hooks import MasterHooks
from geventsched.protocol import Job, JsonCodec
from geventsched.store import lua_script

log = logging.getLogger(__name__)

#: Seconds a fire time's claim is kept. The record's compare-and-set is what keeps a master from
#: firing a time again once ``next`` moved past it; the claim guards the same thing against a record
#: written from a stale view (a clock far behind), and an hour covers that without keeping 86,400
#: keys alive for each schedule that fires every second.
CLAIM_TTL = 3600
#: Fire times counted one by one when a cron schedule catches up after an outage; past this many the
#: latest is found by iterating backwards from now and the missed count stops at this figure.
CATCH_UP_STEPS = 1000
MAX_NAME = 200
#: Parsed records a Scheduler keeps; past this many it starts over.
MAX_CACHED = 100_000
UTC = "UTC"


class ScheduleError(ConfigError, ValueError):
    """A schedule that cannot work: bad cron expression, unknown time zone, interval below 1 s."""


@dataclass(frozen=True)
class Schedule:
    """What to run and when. Built only valid: the constructor raises ScheduleError otherwise."""

    name: str
    task: str
    args: list
    kwargs: dict
    every: int | None = None
    cron: str | None = None
    tz: str = UTC

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME \
                or not self.name.isprintable():
            raise ScheduleError(f"a schedule name is 1 to {MAX_NAME} printable characters, not {self.name!r}")
        if not isinstance(self.task, str) or not self.task:
            raise ScheduleError("a schedule needs a task name")
        if not isinstance(self.args, list) or not isinstance(self.kwargs, dict):
            raise ScheduleError("a schedule's args must be a list and its kwargs an object")
        if (self.every is None) == (self.cron is None):
            raise ScheduleError("a schedule needs exactly one rule: every SECONDS or a cron expression")
        zone = _zone(self.tz)
        if self.every is not None:
            if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
                raise ScheduleError(f"every must be a whole number of seconds, at least 1, not {self.every!r}")
            if self.tz != UTC:
                raise ScheduleError("a time zone applies to cron rules only (every S fires at the multiples "
                                    "of S seconds since the Unix epoch)")
        else:
            _check_cron(self.cron, zone)
        try:
            JsonCodec().encode_job(Job("0", self.task, self.args, self.kwargs))
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"the schedule's arguments cannot go in a job: {exc}") from None

    @property
    def rule(self):
        """The rule as one short text: ``every 60s`` or ``cron 0 3 * * *``."""
        return f"every {self.every}s" if self.every is not None else f"cron {self.cron}"

    def definition(self):
        """The record's fields that say what and when (not the firing state)."""
        doc = {"task": self.task, "args": self.args, "kwargs": self.kwargs, "tz": self.tz}
        doc.update({"every": self.every} if self.every is not None else {"cron": self.cron})
        return doc

    def fire_times(self, after):
        """Fire times (whole Unix seconds) strictly after ``after``, ascending, without end."""
        if self.every is not None:
            t = (math.floor(after) // self.every + 1) * self.every
            while True:
                yield t
                t += self.every
        previous = math.floor(after)
        # cronsim starts after the second it is given; the DST fix-ups can hand back a time at or
        # before where it started (an ambiguous local time resolves to its first occurrence), which
        # is a time that already passed: skipped, so fire times only move forward.
        for moment in CronSim(self.cron, datetime.fromtimestamp(previous, _zone(self.tz))):
            t = int(moment.timestamp())
            if t > previous:
                previous = t
                yield t

    def next_after(self, after):
        """The first fire time strictly after ``after``; ScheduleError when there is none (a cron
        rule that matches no day in the next 50 years)."""
        for t in self.fire_times(after):
            return t
        raise ScheduleError(f"schedule {self.name!r} ({self.rule}) never fires again")

    def catch_up(self, due, now):
        """``(latest fire time <= now, how many earlier ones it stands for)``, given ``due`` <= now,
        the schedule's first fire time not fired yet."""
        if self.every is not None:
            latest = max(due, math.floor(now) // self.every * self.every)
            return latest, (latest - due) // self.every
        latest, missed = due, 0
        for t in self.fire_times(due):
            if t > now:
                return latest, missed
            latest, missed = t, missed + 1
            if missed >= CATCH_UP_STEPS:
                break
        return self._latest_before(now, due), missed

    def _latest_before(self, now, floor_):
        """The latest fire time <= ``now`` (a long outage: iterate backwards from now)."""
        start = datetime.fromtimestamp(math.floor(now) + 1, _zone(self.tz))
        for moment in CronSim(self.cron, start, reverse=True):
            t = int(moment.timestamp())
            if t <= now:
                return max(t, floor_)
        return floor_


@dataclass(frozen=True)
class ScheduleState:
    """A stored schedule: its definition and where its firing stands."""

    schedule: Schedule
    next: int
    last: int | None = None
    job: str | None = None

    def encode(self):
        return json.dumps({**self.schedule.definition(), "next": self.next, "last": self.last,
                           "job": self.job}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, name, data):
        """The state in a stored record; ScheduleError if it does not describe a valid schedule."""
        try:
            doc = json.loads(data)
            schedule = Schedule(name, doc["task"], doc.get("args", []), doc.get("kwargs", {}),
                                doc.get("every"), doc.get("cron"), doc.get("tz", UTC))
            state = cls(schedule, doc["next"], doc.get("last"), doc.get("job"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ScheduleError(f"schedule {name!r} has an unreadable record: {exc}") from None
        if not _is_time(state.next) or (state.last is not None and not _is_time(state.last)):
            raise ScheduleError(f"schedule {name!r} has an unreadable record: bad next or last fire time")
        return state

    def to_dict(self):
        """JSON-ready, as ``schedule list --json`` prints it."""
        s = self.schedule
        return {"name": s.name, "task": s.task, "args": s.args, "kwargs": s.kwargs, "every": s.every,
                "cron": s.cron, "tz": s.tz, "next": self.next, "last": self.last, "last_job": self.job}


class Scheduler:
    """The schedules of one namespace (``store``): add, list, remove, and fire those that are due.

    ``hooks`` (MasterHooks) hear of every fire and every missed fire time. A master fires with
    ``fire_due`` from its housekeeping while it holds the lease; ``next_due`` tells a loop when to wake.
    """

    def __init__(self, store, hooks=None):
        self.store = store
        self.keys = store.keys
        self.client = store.client
        self.hooks = hooks if hooks is not None else MasterHooks()
        self.codec = JsonCodec()
        self._fire = self.client.register_script(lua_script("fire"))
        self._publish = "SPUBLISH" if self.keys.cluster else "PUBLISH"
        self._warned = set()  # (schedule, reason) already said in the log
        self._parsed = {}  # name -> (record, state): a record is parsed (and checked) once

    # -- managing ----------------------------------------------------------------------------------

    def add(self, schedule, now=None):
        """Add ``schedule`` or replace the one of that name. Returns ``"added"``, ``"replaced"``, or
        ``"unchanged"`` when the stored one is the same (its fire times and history are kept: every
        process that loads an app module adds its schedules again at start). A replaced schedule keeps
        its last fire and starts at its first fire time after now and after that last fire."""
        now = time.time() if now is None else now
        key, name = self.keys.schedules, schedule.name

        def change(pipe):
            data = pipe.hget(key, name)
            old = self._readable(name, data) if data is not None else None
            if old is not None and old.schedule == schedule:
                return "unchanged"
            last, job = (old.last, old.job) if old is not None else (None, None)
            state = ScheduleState(schedule, schedule.next_after(max(now, last or 0)), last, job)
            pipe.multi()
            pipe.hset(key, name, state.encode())
            return "added" if data is None else "replaced"

        outcome = self.client.transaction(change, key, value_from_callable=True)
        if outcome != "unchanged":
            # The master's timer, asleep until the earliest due time it knew, looks again.
            self.store.announce(self.keys.wakeup_channel, b"scheduled")
        return outcome

    def register(self, schedules):
        """Add each of ``schedules`` (those an app module declares). Returns ``{outcome: count}``."""
        counts = {}
        for schedule in schedules:
            outcome = self.add(schedule)
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def remove(self, name):
        """Remove schedule ``name``; False when there is none."""
        return bool(self.client.hdel(self.keys.schedules, name))

    def get(self, name):
        data = self.client.hget(self.keys.schedules, name)
        return None if data is None else self._readable(name, data)

    def list(self):
        """Every readable schedule, by name."""
        states = [self._readable(name.decode(errors="replace"), data)
                  for name, data in self.client.hgetall(self.keys.schedules).items()]
        return sorted((s for s in states if s is not None), key=lambda s: s.schedule.name)

    # -- firing ------------------------------------------------------------------------------------

    def next_due(self):
        """The earliest fire time of any schedule (Unix seconds), None without schedules."""
        times = [s.next for s in self.list()]
        return min(times) if times else None

    def fire_due(self, now=None):
        """Fire every schedule whose next fire time has come by ``now``: one job each, for its latest
        due fire time. Returns the earliest next fire time afterwards (None without schedules)."""
        now = time.time() if now is None else now
        earliest, due = None, []
        for name, data in self.client.hgetall(self.keys.schedules).items():
            name = name.decode(errors="replace")
            state = self._readable(name, data)
            if state is None:
                continue
            if state.next <= now:
                due.append((state, data))
            elif earliest is None or state.next < earliest:
                earliest = state.next
        if due:
            registered = self.store.task_options()
            for (state, data), job_id in zip(due, self.store.new_ids(len(due))):
                try:
                    upcoming = self._fire_one(state, data, job_id, now, state.schedule.task in registered)
                except ScheduleError as exc:
                    self._warn_once(state.schedule.name, "stopped", "%s; it is left alone", exc)
                    continue
                if upcoming is not None and (earliest is None or upcoming < earliest):
                    earliest = upcoming
        return earliest

    def _fire_one(self, state, data, job_id, now, registered):
        """Fire ``state``'s latest due time as job ``job_id``. Returns its next fire time after this, or
        None when its record changed since it was read (a newer one is read on the next pass)."""
        schedule = state.schedule
        fire, missed = schedule.catch_up(state.next, now)
        upcoming = schedule.next_after(now)
        job = Job(job_id, schedule.task, list(schedule.args), dict(schedule.kwargs), submitted_at=now)
        body = self.codec.encode_job(job, extra={"sched": schedule.name, "fire": fire})
        fired = replace(state, next=upcoming, last=fire, job=job_id)
        claim = f"{self.keys.fire_prefix}{schedule.name}:{fire}"
        outcome = self._fire(
            keys=[self.keys.schedules, self.keys.jobs, self.keys.intake, claim],
            args=[schedule.name, data, fired.encode(), replace(state, next=upcoming).encode(), job_id, body,
                  CLAIM_TTL, self._publish, self.keys.wakeup_channel])
        if outcome < 0:
            return None
        if outcome == 0:
            log.info("schedule %s: fire time %d was fired already (another master)", schedule.name, fire)
            return upcoming
        if missed:
            log.warning("schedule %s: %d fire times passed unfired (the master was away); fired once for %s",
                        schedule.name, missed, format_time(fire, schedule.tz))
            self.hooks.on_schedule_missed(schedule.name, missed)
        if not registered:
            self._warn_once(schedule.name, f"task:{schedule.task}",
                            "schedule %s: no worker has registered task %r; its jobs fail unless one does",
                            schedule.name, schedule.task)
        self.hooks.on_schedule_fired(schedule.name, registered, max(0.0, now - fire))
        return upcoming

    # -- state for metrics -------------------------------------------------------------------------

    def overdue(self, now=None):
        """Seconds the most overdue schedule is past its next fire time (0 when none is), or None when
        Redis does not answer. Any master, active or standing by, reads the same: the schedules'
        state is in Redis, so a standby shows schedules that stopped firing as well."""
        now = time.time() if now is None else now
        try:
            records = self.client.hgetall(self.keys.schedules)
        except transport.RedisError as exc:
            log.warning("scheduler: cannot read the schedules from Redis: %s", transport.describe(exc))
            return None
        states = [self._readable(name.decode(errors="replace"), data) for name, data in records.items()]
        nexts = [s.next for s in states if s is not None]
        return max(0.0, now - min(nexts)) if nexts else 0.0

    # -- helpers -----------------------------------------------------------------------------------

    def _readable(self, name, data):
        """The state in ``data``, or None (said once in the log) when someone wrote a record that is
        not a schedule: one bad record must not stop the others from firing."""
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == data:
            return cached[1]
        try:
            state = ScheduleState.decode(name, data)
        except ScheduleError as exc:
            self._warn_once(name, "unreadable", "%s; it is left alone", exc)
            state = None
        if len(self._parsed) >= MAX_CACHED:
            self._parsed.clear()
        self._parsed[name] = (data, state)
        return state

    def _warn_once(self, name, reason, message, *args):
        if (name, reason) not in self._warned:
            self._warned.add((name, reason))
            log.warning(message, *args)


def format_time(t, tz=UTC):
    """Unix seconds as ISO 8601 in the time zone ``tz`` (with its offset); ``-`` for None."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, _zone(tz)).isoformat()


def _zone(name):
    if name == UTC:
        return timezone.utc  # cronsim skips its DST handling for this one
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name, like Europe/Berlin)") from None


def _check_cron(expr, zone):
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise ScheduleError(f"a cron expression has 5 fields (minute hour day month weekday), not {expr!r}")
    try:
        next(CronSim(expr, datetime.now(zone)))
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {expr!r}: {exc}") from None
    except StopIteration:
        raise ScheduleError(f"cron expression {expr!r} never matches") from None


def _is_time(value):
    return type(value) is int and 0 <= value < 2**40
