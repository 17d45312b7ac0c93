"""``geventsched status``: what Redis knows about workers, nodes, channels and jobs."""

from geventsched.store import Store

#: Per-worker figures that add up to a node's (host's) figures.
SUMMED = ("channels", "running", "queued", "free")
#: Text columns after the name: (key, header, width).
COLUMNS = (("pid", "pid", 7), ("channels", "channels", 8), ("running", "running", 7), ("queued", "queued", 7),
           ("free", "free", 7))
NAME_WIDTH = 44


def snapshot(client, namespace=""):
    """A JSON-ready dict: ``workers``, ``nodes``, ``channels``, ``scheduled`` (delayed jobs and retries
    waiting for their backoff; also under its older name ``retrying``), ``queued``, ``in_flight``,
    ``dead``, ``finished``."""
    store = Store.for_namespace(client, namespace)
    return assemble(store.workers(), store.channel_owners(), store.counts())


def assemble(beats, owners, counts):
    """The snapshot from Redis's records: heartbeats ``{worker id: dict, or None once it stopped
    beating}``, channel owners ``{channel: worker id}`` and the job counts of ``Store.counts()``."""
    live = {w: beat for w, beat in beats.items() if beat is not None}
    per_worker = {}
    for worker_id in owners.values():
        per_worker[worker_id] = per_worker.get(worker_id, 0) + 1
    workers = [_worker(worker_id, beat, per_worker.get(worker_id, 0)) for worker_id, beat in sorted(live.items())]
    return {
        "workers": workers,
        "nodes": nodes(workers),
        "channels": sum(1 for w in owners.values() if w in live),
        **counts,
    }


def why_no_result(client, namespace, tasks):
    """What Redis shows that keeps jobs of ``tasks`` from getting a result, as short phrases (none
    when workers and a master are there: the jobs may simply still run): no live worker, no live
    worker that lists a task (workers that list theirs in their heartbeat's ``tasks``), or no master
    holding the lease."""
    store = Store.for_namespace(client, namespace)
    live = [beat for beat in store.workers().values() if beat is not None]
    reasons = []
    if not live:
        reasons.append("no worker is registered")
    listed = [{name for name in beat["tasks"] if isinstance(name, str)} for beat in live
              if isinstance(beat, dict) and isinstance(beat.get("tasks"), list)]
    if listed:
        unlisted = sorted({task for task in tasks if not any(task in names for names in listed)})
        if unlisted:
            reasons.append(f"no live worker lists task {', '.join(unlisted)}")
    if not client.exists(store.keys.master):
        reasons.append("no master is active")
    return reasons


def _worker(worker_id, beat, channels):
    return {"id": worker_id, "host": beat.get("host"), "pid": beat.get("pid"), "channels": channels,
            "concurrency": beat.get("concurrency"), "running": beat.get("running"), "queued": beat.get("queued"),
            "free": beat.get("free"), "codec": beat.get("codec")}


def nodes(workers):
    """One entry per host, sorted by name: ``{host, processes, channels, running, queued, free}``, the
    sums over that host's worker processes (a figure a heartbeat lacks counts as 0)."""
    by_host = {}
    for w in workers:
        node = by_host.setdefault(w["host"], {"host": w["host"], "processes": 0, **dict.fromkeys(SUMMED, 0)})
        node["processes"] += 1
        for key in SUMMED:
            node[key] += w.get(key) or 0
    return sorted(by_host.values(), key=lambda node: str(node["host"]))


def render(snap):
    """The text form: totals, then per node a total line followed by its worker processes."""
    lines = [f"workers: {len(snap['workers'])}   nodes: {len(snap['nodes'])}   channels: {snap['channels']}   "
             f"scheduled: {snap['scheduled']}   queued: {snap['queued']}   in flight: {snap['in_flight']}   "
             f"dead: {snap['dead']}",
             "finished: " + "  ".join(f"{k} {v}" for k, v in snap["finished"].items())]
    if snap["workers"]:
        lines += ["", _line("node / worker process", {key: header for key, header, _ in COLUMNS})]
        for node in snap["nodes"]:
            processes = f"{node['processes']} process{'es' if node['processes'] != 1 else ''}"
            lines.append(_line(f"{node['host'] or '?'} ({processes})", {**node, "pid": ""}))
            lines += [_line("  " + w["id"], w) for w in snap["workers"] if w["host"] == node["host"]]
    return "\n".join(lines)


def _line(name, row):
    cells = ("-" if row.get(key) is None else str(row[key]) for key, _, _ in COLUMNS)
    return f"{name:<{NAME_WIDTH}}" + "".join("  " + cell.rjust(width) for cell, (_, _, width) in zip(cells, COLUMNS))
