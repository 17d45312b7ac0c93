"""What a submit checks and writes, shared by the gevent client and the asyncio one. Pure: no Redis,
no gevent, no asyncio (``aio.py`` imports it in programs that must never import gevent).

Options a job may carry besides its arguments:

* ``delay`` (seconds) or ``at`` (unix seconds, an aware ``datetime``, or ISO 8601 text with a UTC
  offset): the job is ``scheduled`` until then and never starts earlier;
* ``priority`` 0..9 (higher is dispatched first; default 0);
* ``unique_key``: while a job submitted with that key is scheduled, queued or running, a submit with
  the same key submits nothing and returns that job's id.

They are written into the job's stored record (``prio``, ``due``, ``uniq``), where lookups read them;
workers ignore them.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

from geventsched.errors import JobTooLarge
from geventsched.keys import MAX_PRIORITY
from geventsched.protocol import Job

#: ``at`` may lie this far in the past (clocks of different machines differ a little); further back
#: it is refused as a mistake.
PAST_TOLERANCE = 60.0


@dataclass(frozen=True, slots=True)
class Options:
    """A submit's options, checked: ``due`` is unix seconds or None (run now)."""

    due: float | None = None
    priority: int = 0
    unique_key: str | None = None

    @property
    def plain(self):
        """No option set: the job takes the plain path (a pipelined HSET + RPUSH, no script)."""
        return self.due is None and not self.priority and self.unique_key is None

    def extra(self):
        """The fields these options add to a job's stored record."""
        out = {}
        if self.priority:
            out["prio"] = self.priority
        if self.due is not None:
            out["due"] = self.due
        if self.unique_key is not None:
            out["uniq"] = self.unique_key
        return out


def options(now, delay=None, at=None, priority=0, unique_key=None):
    """Check a submit's options (``now``: unix seconds). Raises ValueError with what is wrong."""
    if delay is not None and at is not None:
        raise ValueError("give a delay or a time to run at, not both")
    due = None
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay must be a number of seconds >= 0, not {delay!r}")
        due = now + delay if delay > 0 else None
    elif at is not None:
        due = parse_time(at)
        if due < now - PAST_TOLERANCE:
            raise ValueError(f"the time to run at ({_iso(due)}) is more than {PAST_TOLERANCE:g}s in the past")
        if due <= now:
            due = None
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be a whole number from 0 to {MAX_PRIORITY}, not {priority!r}")
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
        raise ValueError("a unique key must be a non-empty string")
    return Options(due, priority, unique_key)


def parse_time(value):
    """Unix seconds from a number, an aware ``datetime``, or ISO 8601 text with a UTC offset (or
    digits: unix seconds). Raises ValueError otherwise."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError("a time to run at needs a time zone (an aware datetime)")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"not a time: {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a time: {value!r} (ISO 8601 with a UTC offset, or unix seconds)") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no UTC offset (write it like 2026-01-01T09:00:00+01:00)")
        return parsed.timestamp()
    raise ValueError(f"not a time: {value!r}")


def _iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def encode_jobs(codec, ids, specs, opts, timeout, key, max_retries, reply, now, max_payload):
    """``[(id, record), ...]``: the stored record of each job of ``specs`` (``[(task, args, kwargs),
    ...]``), with the fields of ``opts`` (an ``Options``). Raises TypeError for a task name that is not
    a string (ValueError: an empty one) or arguments that are not JSON values, and JobTooLarge for a
    record over ``max_payload`` bytes (which no worker takes), naming the task: then nothing of the
    submit may be sent. A ``timeout`` or ``max_retries`` that no worker would take is a ValueError."""
    _check_limits(timeout, max_retries)
    extra = opts.extra()
    encoded = []
    for job_id, (task, args, kwargs) in zip(ids, specs):
        if not isinstance(task, str):
            raise TypeError(f"a task is named by a string, not {type(task).__name__}")
        if not task:
            raise ValueError("a task name must not be empty")
        # Both clients read reply frames (``protocol``): a job that wants a reply says so.
        job = Job(job_id, task, list(args), dict(kwargs), timeout, reply, now, key, max_retries,
                  reply_frames=reply is not None)
        try:
            body = codec.encode_job(job, extra)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments of {task} are not JSON values: {exc}") from None
        if len(body) > max_payload:
            raise JobTooLarge(f"a job of {task} is {len(body)} bytes, over the max payload of {max_payload} "
                              f"(--max-payload): nothing was submitted; pass large data by reference (a key, "
                              f"a path, a URL)")
        encoded.append((job_id, body))
    return encoded


def _check_limits(timeout, max_retries):
    """The bounds a worker checks a job's ``timeout`` and ``max_retries`` against (``protocol``), checked
    before submitting: a job out of them would only fail once dispatched."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < 10**9):
        raise ValueError(f"a job's timeout must be a number of seconds above 0, not {timeout!r}")
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                    or not 0 <= max_retries <= 1000):
        raise ValueError(f"max_retries must be a whole number from 0 to 1000, not {max_retries!r}")
