"""What the dashboard reads from Redis. It keeps nothing of its own: every figure, the charts'
history included, is read from the durable state each time, so a restarted dashboard shows what the
one before it showed (Flower, which keeps its history in memory, starts blank: flower#542).

Every read is bounded, whatever the size of the system: counts are LLEN/ZCARD/HLEN, the charts are
one ZCOUNT per bar on the ``done`` index plus a small sample of results for latency, and lists are
read a page at a time (``geventsched.lookup``).
"""

import json
import math
import time

from geventsched import status as status_module

#: The charts cover this many seconds, in bars of ``BUCKET`` seconds (aligned to the clock, so that a
#: bar does not shift as time goes by).
WINDOW = 600
BUCKET = 20
#: Latency: results read per bar at most (the latest of it), and only those under this many bytes
#: (a result carrying a large value is not read for its timestamps).
LATENCY_SAMPLE = 20
LATENCY_MAX_BYTES = 64 << 10
#: The result statuses of finished jobs (dead letters are counted apart).
FINISHED = ("ok", "error", "timeout", "cancelled")


def key(keys, name):
    """A key of the second round (``done``, ``schedules``, ...): from ``Keys`` once it names it, else
    built the way it does (``<own prefix><name>``)."""
    return getattr(keys, name, None) or keys.own + name


def intakes(keys):
    """The intake lists, highest priority first (one list before priorities existed)."""
    return getattr(keys, "intakes", None) or [keys.intake]


def counts(store):
    """Jobs by state, the master's id (or None), in one round trip: ``{scheduled, queued, running, dead,
    finished: {status: n}, finished_total, master}``. Queued includes jobs the master claimed and has
    not dispatched yet (in flight without a dispatch record)."""
    k = store.keys
    lists = intakes(k)
    pipe = store.client.pipeline(transaction=False)
    pipe.zcard(k.scheduled)
    pipe.zcard(k.inflight)
    pipe.hlen(k.dispatched)
    pipe.llen(k.dead)
    pipe.hgetall(k.finished)
    pipe.get(k.master)
    for name in lists:
        pipe.llen(name)
    scheduled, inflight, running, dead, finished, master, *queued = pipe.execute()
    by_status = dict.fromkeys(FINISHED, 0)
    for name, n in finished.items():
        name = name.decode(errors="replace")
        if name != "dead":
            by_status[name] = int(n)
    return {"scheduled": scheduled, "queued": sum(queued) + max(inflight - running, 0), "running": running,
            "dead": dead, "finished": by_status, "finished_total": sum(by_status.values()),
            "master": master.decode(errors="replace") if master else None}


def workers(store):
    """``{workers, nodes, channels, silent}`` from the heartbeats (``geventsched status``'s view), plus
    how many registered workers have stopped beating."""
    beats = store.workers()
    snap = status_module.assemble(beats, store.channel_owners(), {})
    for w in snap["workers"]:
        beat = beats[w["id"]]
        w.update(draining=bool(beat.get("draining")), started=beat.get("started"), beat=beat.get("beat"))
    snap["silent"] = sum(1 for beat in beats.values() if beat is None)
    return snap


def buckets(now):
    """The chart's bars: ``[(start, end), ...]``, oldest first; the last one ends at the next multiple of
    ``BUCKET`` and so is still filling."""
    end = math.ceil(now / BUCKET) * BUCKET
    n = WINDOW // BUCKET
    return [(end - (n - i) * BUCKET, end - (n - i - 1) * BUCKET) for i in range(n)]


def throughput(store, now):
    """Jobs finished per second in each bar (``ZCOUNT`` of the ``done`` index): ``[(start, rate), ...]``.
    The bar still filling is divided by the seconds it has had so far."""
    done = key(store.keys, "done")
    bars = buckets(now)
    pipe = store.client.pipeline(transaction=False)
    for start, end in bars:
        pipe.zcount(done, f"({start}", end)
    return [(start, n / max(min(end, now) - start, 1.0)) for (start, end), n in zip(bars, pipe.execute())]


def latency(store, now):
    """Submit-to-finish latency per bar, from a sample of the latest results finished in it: ``[(start,
    p50, p95, samples), ...]`` (p50 and p95 None where nothing was sampled). A result's finish time is
    its score in ``done``; its submit time is the ``ts`` of the job record the result carries."""
    done = key(store.keys, "done")
    bars = buckets(now)
    client = store.client
    pipe = client.pipeline(transaction=False)
    for start, end in bars:
        pipe.zrevrangebyscore(done, end, f"({start}", start=0, num=LATENCY_SAMPLE, withscores=True)
    sampled = [(i, member.decode(), score) for i, found in enumerate(pipe.execute()) for member, score in found]
    spans = [[] for _ in bars]
    if sampled:
        prefix = store.keys.result_prefix
        pipe = client.pipeline(transaction=False)
        for _, job_id, _ in sampled:
            pipe.strlen(prefix + job_id)
        small = [s for s, size in zip(sampled, pipe.execute()) if 0 < size <= LATENCY_MAX_BYTES]
        results = client.mget([prefix + job_id for _, job_id, _ in small]) if small else []
        for (i, _, finished), data in zip(small, results):
            submitted = _submitted(data)
            if submitted is not None:
                spans[i].append(max(finished - submitted, 0.0))
    return [(start, _percentile(s, 0.5), _percentile(s, 0.95), len(s)) for (start, _), s in zip(bars, spans)]


def _submitted(data):
    try:
        doc = json.loads(data) if data else None
    except ValueError:
        return None
    job = doc.get("job") if isinstance(doc, dict) else None
    ts = job.get("ts") if isinstance(job, dict) else None
    return ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None


def _percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


def overview(store, now=None):
    """Everything the overview shows, read afresh."""
    now = time.time() if now is None else now
    return {"counts": counts(store), **workers(store), "throughput": throughput(store, now),
            "latency": latency(store, now), "now": now}


def schedules(store):
    """The periodic schedules (the ``schedules`` hash, name -> JSON), sorted by name: ``[{name, task,
    rule, tz, next, last, last_id, raw}, ...]`` (``geventsched.schedules`` writes them; ``last_id`` is the
    last fired job's id, its ``job``); an empty list where there are none.
    Fields a record lacks are None; one that is not JSON shows as ``raw`` text."""
    found = store.client.hgetall(key(store.keys, "schedules"))
    out = []
    for name, data in sorted(found.items()):
        name = name.decode(errors="replace")
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            out.append({"name": name, "raw": data.decode(errors="replace")})
            continue
        out.append({"name": name, "task": doc.get("task"), "args": doc.get("args"), "rule": _rule(doc),
                    "tz": doc.get("tz"), "next": doc.get("next"), "last": doc.get("last"),
                    "last_id": doc.get("job"), "raw": None})
    return out


def _rule(doc):
    if doc.get("cron"):
        return f"cron {doc['cron']}"
    if doc.get("every"):
        return f"every {doc['every']} s"
    return doc.get("rule")
