"""Finding jobs: one job by id, and lists of jobs by state, read from Redis without loading a list.

A small stand-in with the interface of the shared design (``job_info``, ``list_jobs``), for the
dashboard to be written against until the full module lands; it reads the keys main has now and
the second-round ones (``done``, the priority intakes) where they exist.
"""

import json

STATES = ("scheduled", "queued", "running", "finished", "dead")
#: How many ids a filtered list looks through at most (filtering must not walk a million).
SCAN_WINDOW = 10_000


def job_info(store, job_id):
    """Everything Redis knows about ``job_id`` as a dict (see the design's field list), or None."""
    k = store.keys
    pipe = store.client.pipeline(transaction=False)
    pipe.get(k.result(job_id))
    pipe.hget(k.jobs, job_id)
    pipe.zscore(k.scheduled, job_id)
    pipe.hget(k.dispatched, job_id)
    pipe.hget(k.attempts, job_id)
    pipe.hget(k.retries, job_id)
    result, body, due, dispatch, attempts, retries = pipe.execute()
    result, record = _load(result), _load(body)
    if result is None and record is None:
        return None
    record = record or (result or {}).get("job") or {}
    if result is not None:
        state = "dead" if result.get("status") == "dead" else "finished"
    elif due is not None:
        state = "scheduled"
    elif dispatch is not None:
        state = "running"
    else:
        state = "queued"
    worker = dispatch.decode().partition(" ")[2] or None if dispatch and state == "running" else None
    finished = store.client.zscore(_key(k, "done"), job_id) if result else None
    return {
        "id": job_id, "state": state, "task": record.get("task") or (result or {}).get("task"),
        "args": record.get("args", []), "kwargs": record.get("kwargs", {}),
        "priority": record.get("prio", 0), "attempts": int(attempts or 0) + (state == "running"),
        "retries": int(retries or 0), "worker": worker, "channel": None,
        "submitted": record.get("ts"), "due": record.get("due") or due,
        "started": (result or {}).get("t0"), "finished": finished or (result or {}).get("t1"),
        "status": (result or {}).get("status"), "result": (result or {}).get("value"),
        "error": (result or {}).get("error"), "schedule": record.get("sched"),
        "fire_time": record.get("fire"), "unique_key": record.get("uniq"),
    }


def list_jobs(store, state, offset=0, limit=50, task=None, search=None):
    """``(total, [summary, ...])`` of the jobs in ``state``, ``offset`` into its list. ``search``: an
    id (that job alone, if in this state); ``task``: only that task's jobs, within ``SCAN_WINDOW``."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    if search:
        info = job_info(store, search)
        found = [_summary(info)] if info and info["state"] == state and task in (None, info["task"]) else []
        return len(found), found
    if task:
        total, ids = _ids(store, state, offset, SCAN_WINDOW)
        jobs = [j for j in _summaries(store, ids, state) if j["task"] == task]
        return len(jobs), jobs[:limit]
    total, ids = _ids(store, state, offset, limit)
    return total, _summaries(store, ids, state)


def _ids(store, state, offset, limit):
    k, r = store.keys, store.client
    stop = offset + limit - 1
    if state == "scheduled":
        return r.zcard(k.scheduled), [i.decode() for i in r.zrange(k.scheduled, offset, stop)]
    if state == "finished":
        done = _key(k, "done")
        return r.zcard(done), [i.decode() for i in r.zrevrange(done, offset, stop)]
    if state == "dead":
        total = r.llen(k.dead)  # newest first: LRANGE from the end
        start, end = max(total - 1 - stop, 0), total - 1 - offset
        return total, [i.decode() for i in reversed(r.lrange(k.dead, start, end))] if end >= 0 else []
    if state == "running":
        ids = sorted(r.hkeys(k.dispatched), key=lambda i: (len(i), i))
        return len(ids), [i.decode() for i in ids[offset:offset + limit]]
    intakes = getattr(k, "intakes", [k.intake])
    lengths = [r.llen(key) for key in intakes]
    ids, skip = [], offset
    for key, length in zip(intakes, lengths):
        if skip >= length:
            skip -= length
            continue
        ids += [i.decode() for i in r.lrange(key, skip, skip + limit - len(ids) - 1)]
        skip = 0
        if len(ids) >= limit:
            break
    return sum(lengths), ids


def _summaries(store, ids, state):
    if not ids:
        return []
    k = store.keys
    bodies = store.client.hmget(k.jobs, ids)
    results = store.get_results(ids) if state in ("finished", "dead") else [None] * len(ids)
    out = []
    for job_id, body, result in zip(ids, bodies, results):
        result = _load(result) or {}
        record = _load(body) or result.get("job") or {}
        out.append(_summary({"id": job_id, "state": state, "task": record.get("task") or result.get("task"),
                             "args": record.get("args", []), "priority": record.get("prio", 0),
                             "submitted": record.get("ts"), "due": record.get("due"),
                             "finished": result.get("t1"), "status": result.get("status")}))
    return out


def _summary(info):
    return {key: info.get(key) for key in ("id", "state", "task", "args", "priority", "submitted", "due",
                                           "finished", "status")}


def _key(keys, name):
    """A second-round key: from ``Keys`` once it names it, else as it will."""
    return getattr(keys, name, None) or keys.own + name


def _load(data):
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
