"""Looking jobs up: one job's whole story (``geventsched job ID``, the dashboard's job page) and pages
of the jobs in one state (the dashboard's lists). Reads only; every call is a bounded number of round
trips, however many jobs there are.

Where a job is, by state (``keys.py``)::

    scheduled   in ``scheduled`` (a delayed job, or a retry waiting for its backoff)
    queued      in an intake list, or claimed by the master and not yet sent (``inflight`` without a
                ``dispatched`` entry)
    running     ``dispatched`` holds its dispatch: "<token> <time> <channel> <worker>"
    finished    ``result:<id>`` holds its result (ok, error, timeout, cancelled), with its record
    dead        in ``dead``; its result has status dead
"""

import datetime
import json

from geventsched.store import _load_json

STATES = ("scheduled", "queued", "running", "finished", "dead")
#: ``list_jobs`` with a task or id filter looks at most at this many entries per page it returns.
SCAN_WINDOW = 10_000


def job_info(store, job_id):
    """Everything known about one job, as a JSON-ready dict (see the module docstring), or None when
    Redis knows nothing of it (never submitted, or finished longer ago than the result TTL)."""
    return _infos(store, [job_id])[0]


def _infos(store, ids):
    """``job_info`` for many ids in one round trip."""
    k = store.keys
    pipe = store.client.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(k.result(job_id))
        pipe.hget(k.jobs, job_id)
        pipe.zscore(k.scheduled, job_id)
        pipe.hget(k.dispatched, job_id)
        pipe.hget(k.attempts, job_id)
        pipe.hget(k.retries, job_id)
    replies = pipe.execute()
    return [_info(job_id, *replies[i * 6:i * 6 + 6]) for i, job_id in enumerate(ids)]


def _info(job_id, result, body, due, dispatch, attempts, retries):
    result = _load_json(result)
    record = _load_json(body) or (result or {}).get("job") or {}
    if result is None and not record:
        return None
    if result is not None:
        state = "dead" if result.get("status") == "dead" else "finished"
    elif due is not None:
        state = "scheduled"
    elif dispatch is not None:
        state = "running"
    else:
        state = "queued"
    sent_at, channel, worker = _dispatch(dispatch)
    error = (result or {}).get("error")
    started = (result or {}).get("t0") or (sent_at if state == "running" else None)
    return {
        "id": job_id,
        "state": state,
        "status": (result or {}).get("status"),
        "task": record.get("task") or (result or {}).get("task"),
        "args": record.get("args"),
        "kwargs": record.get("kwargs"),
        "priority": record.get("prio", 0),
        # Dispatches that ended without a result, plus the one running or finished.
        "attempts": int(attempts or 0) + int(state in ("running", "finished")),
        "retries": int(retries or 0),
        "worker": worker if state == "running" else (result or {}).get("worker"),
        "channel": channel if state == "running" else None,
        "submitted": record.get("ts"),
        "due": due if due is not None else record.get("due"),
        "started": started,
        "finished": (result or {}).get("t1"),
        "result": (result or {}).get("value") if result is not None and error is None else None,
        "error": error,
        "schedule": record.get("sched"),
        "fire_time": record.get("fire"),
        "unique_key": record.get("uniq"),
        "timeout": record.get("timeout"),
        "record_omitted": record.get("omitted"),
    }


def _dispatch(value):
    """``(sent at, channel, worker)`` of a dispatch record "<token> <time> <channel> <worker>"."""
    if value is None:
        return None, None, None
    parts = value.decode(errors="replace").split(" ", 3)
    if len(parts) < 4:  # an older record: "<token> <worker>"
        return None, None, parts[-1] or None
    try:
        sent_at = float(parts[1])
    except ValueError:
        sent_at = None
    return sent_at, parts[2] or None, parts[3] or None


def list_jobs(store, state, offset=0, limit=50, task=None, search=None):
    """One page of the jobs in ``state``: ``(total, [job_info dict, ...])``, newest first for finished
    and dead jobs, next due first for scheduled, oldest first for queued (highest priority first) and
    running (earliest deadline first). ``search`` is an id (the page is that job, if it is in
    ``state``); ``task`` keeps jobs of that task, looking at no more than ``SCAN_WINDOW`` entries, so
    its total counts what that window holds."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r} (one of {', '.join(STATES)})")
    if search:
        info = job_info(store, search)
        found = [info] if info is not None and info["state"] == state else []
        return len(found), found
    if task is None:
        total, ids = _page(store, state, offset, limit)
        return total, [info for info in _infos(store, ids) if info is not None]
    _, ids = _page(store, state, 0, SCAN_WINDOW)
    matching = [info for info in _infos(store, ids) if info is not None and info["task"] == task]
    return len(matching), matching[offset:offset + limit]


def _page(store, state, offset, limit):
    """``(total, ids)``: ``limit`` ids of jobs in ``state`` from ``offset``, and how many there are."""
    k, client = store.keys, store.client
    stop = offset + limit - 1
    if state == "scheduled":
        total, ids = client.zcard(k.scheduled), client.zrange(k.scheduled, offset, stop)
    elif state == "running":
        total, ids = client.zcard(k.inflight), client.zrange(k.inflight, offset, stop)
    elif state == "finished":
        total = client.llen(k.done)
        ids = list(reversed(client.lrange(k.done, -stop - 1, -offset - 1)))  # newest first: the tail
    elif state == "dead":
        total = client.llen(k.dead)
        # Newest first: the list's tail.
        start, end = max(total - 1 - stop, 0), total - 1 - offset
        ids = list(reversed(client.lrange(k.dead, start, end))) if end >= 0 else []
    else:
        return _queued_page(store, offset, limit)
    return total, [i.decode() for i in ids]


def _queued_page(store, offset, limit):
    """Queued jobs across the intake lists, highest priority first."""
    k, client = store.keys, store.client
    pipe = client.pipeline(transaction=False)
    for intake in k.intakes:
        pipe.llen(intake)
    lengths = pipe.execute()
    total, ids, skip = sum(lengths), [], offset
    for intake, length in zip(k.intakes, lengths):
        if len(ids) >= limit:
            break
        if skip >= length:
            skip -= length
            continue
        ids += client.lrange(intake, skip, skip + limit - len(ids) - 1)
        skip = 0
    return total, [i.decode() for i in ids]


def render_job(info):
    """The text form of ``job_info``."""
    lines = [f"job {info['id']}: {info['state']}" + (f" ({info['status']})" if info["status"] else ""),
             f"task:      {info['task']}",
             f"args:      {_json(info['args'])}",
             f"kwargs:    {_json(info['kwargs'])}",
             f"priority:  {info['priority']}",
             f"attempts:  {info['attempts']} (retries after failures: {info['retries']})"]
    if info["state"] == "running":
        lines.append(f"running:   on worker {info['worker'] or '?'}, channel {info['channel'] or '?'}")
    elif info["worker"]:
        lines.append(f"ran on:    worker {info['worker']}")
    if info["schedule"]:
        lines.append(f"schedule:  {info['schedule']} (fire time {_when(info['fire_time'])})")
    if info["unique_key"]:
        lines.append(f"unique:    {info['unique_key']}")
    for name in ("submitted", "due", "started", "finished"):
        if info[name]:
            lines.append(f"{name + ':':<10} {_when(info[name])}")
    if info["error"]:
        error = info["error"]
        lines.append(f"error:     {error.get('type')}: {error.get('message')}")
        if error.get("traceback"):
            lines += ["", error["traceback"].rstrip()]
    elif info["state"] == "finished":
        lines.append(f"result:    {_json(info['result'])}")
    return "\n".join(lines)


def _json(value):
    return "(not kept)" if value is None else json.dumps(value)


def _when(seconds):
    try:
        moment = datetime.datetime.fromtimestamp(float(seconds), datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return str(seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
