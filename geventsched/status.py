"""``geventsched status``: what Redis knows about workers, channels and jobs."""

from geventsched.keys import Keys
from geventsched.store import Store


def snapshot(client, namespace=""):
    """A JSON-ready dict: ``workers``, ``channels``, ``queued``, ``in_flight``, ``dead``, ``finished``."""
    store = Store(client, Keys(namespace))
    live = {w: beat for w, beat in store.workers().items() if beat is not None}
    owners = store.channel_owners()
    per_worker = {}
    for channel, worker_id in owners.items():
        per_worker[worker_id] = per_worker.get(worker_id, 0) + 1
    workers = []
    for worker_id, beat in sorted(live.items()):
        workers.append({
            "id": worker_id, "host": beat.get("host"), "pid": beat.get("pid"),
            "channels": per_worker.get(worker_id, 0), "concurrency": beat.get("concurrency"),
            "running": beat.get("running"), "queued": beat.get("queued"), "free": beat.get("free"),
            "codec": beat.get("codec"),
        })
    return {
        "workers": workers,
        "channels": sum(1 for w in owners.values() if w in live),
        **store.counts(),
    }


def render(snap):
    lines = [f"workers: {len(snap['workers'])}   channels: {snap['channels']}   queued: {snap['queued']}   "
             f"in flight: {snap['in_flight']}   retrying: {snap['retrying']}   dead: {snap['dead']}",
             "finished: " + "  ".join(f"{k} {v}" for k, v in snap["finished"].items())]
    if snap["workers"]:
        lines.append("")
        lines.append(f"{'worker':<40} {'channels':>8} {'running':>8} {'queued':>7} {'free':>6}")
        for w in snap["workers"]:
            lines.append(f"{w['id']:<40} {w['channels']:>8} {w['running']:>8} {w['queued']:>7} {w['free']:>6}")
    return "\n".join(lines)
