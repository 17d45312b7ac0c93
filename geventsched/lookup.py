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

A workflow (``workflow.py``; its id is ``w`` and digits) has its own lookup, ``workflow_info``: its
state, its result or the error that failed it, and its tree of steps with the state of each.
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


# -- workflows --------------------------------------------------------------------------------------------

#: ``workflow_info`` looks every step of a workflow up in detail (status, result, error) up to this many;
#: past it, the failed step and the last one (a chord's callback). Every step has its state.
STEP_DETAIL = 50
_KINDS = {"s": "step", "c": "chain", "g": "group", "d": "chord"}
_WORKFLOW_STATES = {"running": "running", "ok": "finished", "failed": "failed", "cancelled": "cancelled"}


def workflow_info(store, workflow_id, detail=STEP_DETAIL):
    """One workflow (``geventsched job wID``), as a JSON-ready dict, or None when Redis has no such
    workflow (never started, or ended longer ago than the result TTL): ``id``, ``kind`` ("workflow"),
    ``state`` (running, finished, failed, cancelled), ``status``, ``result``, ``error``, ``created``,
    ``ended``, ``failed_step`` (its job id), ``steps`` (how many), ``counts`` (steps by state) and
    ``nodes``: the tree in preorder, each ``{node, kind, parent, depth}`` and for a step ``job``,
    ``task``, ``priority``, ``state`` (waiting: not released yet; skipped: never released, the
    workflow having ended; else the job's state) and, for the steps looked up in detail, ``status``,
    ``result`` and ``error``. A bounded number of round trips: two, plus one per thousand nodes."""
    k, client = store.keys, store.client
    key = k.workflow(workflow_id)
    state, nodes, created, ended, failed = client.hmget(key, ["state", "nodes", "created", "ended", "failed"])
    if state is None:
        return None
    state, failed = state.decode(), failed.decode() if failed else None
    count = int(nodes or 0)
    lines = []
    for first in range(1, count + 1, 1000):
        lines += client.hmget(key, [f"n{i}" for i in range(first, min(count, first + 999) + 1)])
    tree = _tree(lines)
    steps = [node for node in tree if node["kind"] == "step"]
    pipe = client.pipeline(transaction=False)
    pipe.get(k.result(workflow_id))
    for step in steps:
        pipe.exists(k.result(step["job"]))
        pipe.hexists(k.dispatched, step["job"])
        pipe.zscore(k.scheduled, step["job"])
        pipe.hexists(k.jobs, step["job"])
    result, *replies = pipe.execute()
    for i, step in enumerate(steps):
        has_result, running, due, recorded = replies[i * 4:i * 4 + 4]
        step["state"] = ("finished" if has_result else "running" if running else "scheduled" if due is not None
                         else "queued" if recorded else "waiting" if state == "running" else "skipped")
    chosen = steps[:detail] + [s for s in steps[detail:] if s["job"] == failed or s is steps[-1]]
    for step, info in zip(chosen, _infos(store, [s["job"] for s in chosen])):
        if info is not None:
            step.update(state=info["state"], status=info["status"], result=info["result"], error=info["error"])
    counts = {}
    for step in steps:
        counts[step["state"]] = counts.get(step["state"], 0) + 1
    result = _load_json(result) or {}
    return {
        "id": workflow_id,
        "kind": "workflow",
        "state": _WORKFLOW_STATES.get(state, state),
        "status": result.get("status"),
        "result": result.get("value") if result and result.get("error") is None else None,
        "error": result.get("error"),
        "created": float(created) if created else None,
        "ended": float(ended) if ended else None,
        "failed_step": failed,
        "steps": len(steps),
        "counts": counts,
        "nodes": tree,
    }


def _tree(lines):
    """The nodes of a workflow from their lines (``lua/workflow.lua``), each with its depth."""
    tree = []
    for number, line in enumerate(lines, 1):
        text = line.decode(errors="replace") if line else "? 0 0 0"
        kind, parent, _, _, *rest = text.split(" ", 6 if text.startswith("s ") else 4)
        parent = int(parent) if parent.isdigit() else 0
        node = {"node": number, "kind": _KINDS.get(kind, kind), "parent": parent,
                "depth": tree[parent - 1]["depth"] + 1 if 0 < parent <= len(tree) else 0}
        if kind == "s" and len(rest) == 3:
            node.update(job=rest[0], priority=int(rest[1]) if rest[1].isdigit() else 0, task=rest[2])
        tree.append(node)
    return tree


def render_workflow(info, limit=STEP_DETAIL):
    """The text form of ``workflow_info``: a header, then the tree, one line per node (past ``limit``
    steps, only the failed one and the last are shown, the others counted)."""
    status = f" ({info['status']})" if info["status"] else ""
    counts = ", ".join(f"{state} {n}" for state, n in sorted(info["counts"].items()))
    lines = [f"workflow {info['id']}: {info['state']}{status}",
             f"steps:     {info['steps']} ({counts})"]
    for name in ("created", "ended"):
        if info[name]:
            lines.append(f"{name + ':':<10} {_when(info[name])}")
    if info["error"]:
        lines.append(f"error:     {info['error'].get('type')}: {info['error'].get('message')}")
    elif info["state"] == "finished":
        lines.append(f"result:    {_json(info['result'])}")
    lines.append("")
    shown, hidden, hidden_at = 0, 0, ""
    last = max((n["node"] for n in info["nodes"] if n["kind"] == "step"), default=0)
    for node in info["nodes"]:
        indent = "  " * node["depth"]
        if node["kind"] == "step" and shown >= limit and node["job"] != info["failed_step"] and node["node"] != last:
            hidden, hidden_at = hidden + 1, indent
            continue
        if hidden:
            lines.append(f"{hidden_at}... {hidden} more steps")
            hidden = 0
        if node["kind"] != "step":
            lines.append(f"{indent}{node['kind']}")
            continue
        shown += 1
        outcome = node["state"] + (f" ({node['status']})" if node.get("status") else "")
        if node.get("error"):
            outcome += f": {node['error'].get('type')}: {node['error'].get('message')}"
        lines.append(f"{indent}{node['task']}  job {node['job']}  {outcome}")
    if hidden:
        lines.append(f"{hidden_at}... {hidden} more steps")
    return "\n".join(lines)
