"""What the dashboard reads from Redis. It keeps nothing of its own: every figure, the charts'
history included, is read from the durable state each time, so a restarted dashboard shows what the
one before it showed (Flower, which keeps its history in memory, starts blank: flower#542).

Every read is bounded, whatever the size of the system: counts are LLEN/ZCARD/HLEN, the charts a
binary search of the ``done`` index (``History``) plus a small sample of results for latency, and
lists are read a page at a time (``geventsched.lookup``).
"""

import json
import math
import time
from importlib import resources

from geventsched import status as status_module

#: The charts cover this many seconds, in bars of ``BUCKET`` seconds (aligned to the clock, so that a
#: bar does not shift as time goes by).
WINDOW = 600
BUCKET = 20
#: Latency: results read per bar at most (spread over it), and only those under this many bytes
#: (a result carrying a large value is not read for its timestamps).
LATENCY_SAMPLE = 20
LATENCY_MAX_BYTES = 64 << 10
#: The result statuses of finished jobs (dead letters are counted apart).
FINISHED = ("ok", "error", "timeout", "cancelled")


def counts(store):
    """Jobs by state, the master's id (or None), in one round trip: ``{scheduled, queued, running, dead,
    finished: {status: n}, finished_total, master}``. Queued includes jobs the master claimed and has
    not dispatched yet (in flight without a dispatch record)."""
    k = store.keys
    pipe = store.client.pipeline(transaction=False)
    pipe.zcard(k.scheduled)
    pipe.zcard(k.inflight)
    pipe.hlen(k.dispatched)
    pipe.llen(k.dead)
    pipe.hgetall(k.finished)
    pipe.get(k.master)
    for name in k.intakes:
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


class History:
    """Throughput and latency over the last ``WINDOW`` seconds, read from the index of finished jobs
    (``done``, a list of ids, oldest first) and their results, never from memory.

    A finished job's finish time is where its result's time to live stands (``lua/finish_times.lua``:
    results are stored with the store's result TTL by the script that appends to the index), so the
    times along the list never decrease, and how many jobs finished after a moment is found by a
    binary search from the list's tail: about log2(finished jobs) round trips, the bars' searches in
    step, one script call per step. Read at most once per ``REFRESH`` seconds (every open page asks
    once a second)."""

    REFRESH = 2.0

    def __init__(self, store):
        self.store = store
        self._finish_times = store.client.register_script(_lua("finish_times"))
        self._cached = (None, None)

    def read(self, now):
        """``(throughput, latency)``: ``[(start, jobs per second), ...]`` and ``[(start, p50, p95,
        samples), ...]`` for each bar (p50 and p95 None where nothing was sampled)."""
        at, value = self._cached
        if at is None or not 0 <= now - at < self.REFRESH:
            value = self._read(now)
            self._cached = (now, value)
        return value

    def _read(self, now):
        bars = buckets(now)
        total = self.store.client.llen(self.store.keys.done)
        newer = self.newer_than([start for start, _ in bars] + [bars[-1][1]], total)
        counts = [newer[i] - newer[i + 1] for i in range(len(bars))]
        throughput = [(start, n / max(min(end, now) - start, 1.0)) for (start, end), n in zip(bars, counts)]
        # Latency: LATENCY_SAMPLE jobs spread evenly over each bar (its places, newer[i + 1] on from the tail).
        places = []
        for i in range(len(bars)):
            n = newer[i] - newer[i + 1]
            count = min(LATENCY_SAMPLE, n)
            places += [(i, newer[i + 1] + j * n // count) for j in range(count)]
        samples = [[] for _ in bars]
        for (i, _), (job_id, at) in zip(places, self.places([place for _, place in places])):
            if job_id and at > 0:
                samples[i].append((job_id, at))
        latency = [(start, *self._latency(sample)) for (start, _), sample in zip(bars, samples)]
        return throughput, latency

    def newer_than(self, moments, total):
        """For each of ``moments`` (Unix seconds): how many of the ``total`` ids in the index finished
        after it. The searches go in step: each step is one script call for every moment's middle place."""
        lo, hi = [0] * len(moments), [total] * len(moments)
        while True:
            active = [i for i in range(len(moments)) if lo[i] < hi[i]]
            if not active:
                return lo
            middles = sorted({(lo[i] + hi[i]) // 2 for i in active})
            times = {place: at for place, (_, at) in zip(middles, self.places(middles))}
            for i in active:
                middle = (lo[i] + hi[i]) // 2
                if times[middle] <= moments[i]:
                    hi[i] = middle  # that one is old enough: fewer are newer
                else:
                    lo[i] = middle + 1

    def places(self, places):
        """``[(id or None, finish time), ...]`` of the ids at ``places`` from the index's tail (0 = newest);
        time 0 past its head or where the result is gone."""
        if not places:
            return []
        k = self.store.keys
        flat = self._finish_times(keys=[k.done], args=[k.result_prefix, self.store.result_ttl, *places])
        return [(flat[i].decode() or None, float(flat[i + 1])) for i in range(0, len(flat), 2)]

    def _latency(self, sample):
        """``(p50, p95, samples)`` of submit-to-finish over ``[(id, finish time), ...]``: the submit time is
        the ``ts`` of the job record its result carries; results over ``LATENCY_MAX_BYTES`` are not read."""
        if not sample:
            return None, None, 0
        prefix = self.store.keys.result_prefix
        pipe = self.store.client.pipeline(transaction=False)
        for job_id, _ in sample:
            pipe.strlen(prefix + job_id)
        small = [s for s, size in zip(sample, pipe.execute()) if 0 < size <= LATENCY_MAX_BYTES]
        results = self.store.client.mget([prefix + job_id for job_id, _ in small]) if small else []
        spans = sorted(max(at - submitted, 0.0) for (_, at), submitted in zip(small, map(_submitted, results))
                       if submitted is not None)
        return _percentile(spans, 0.5), _percentile(spans, 0.95), len(spans)


def finish_times(store, ids):
    """When the jobs ``ids`` finished (or died), from their results' time to live (see ``History``):
    ``{id: Unix seconds}`` for those whose result is still there."""
    if not ids:
        return {}
    pipe = store.client.pipeline(transaction=False)
    pipe.time()
    for job_id in ids:
        pipe.pttl(store.keys.result(job_id))
    (seconds, micros), *left = pipe.execute()
    now = seconds + micros / 1e6
    return {job_id: now - store.result_ttl + ms / 1000 for job_id, ms in zip(ids, left) if ms > 0}


def _lua(name):
    return resources.files("geventsched.dashboard").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


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


def overview(store, history, now=None):
    """Everything the overview shows (``history``: the store's ``History``)."""
    now = time.time() if now is None else now
    throughput, latency = history.read(now)
    return {"counts": counts(store), **workers(store), "throughput": throughput, "latency": latency, "now": now}


def schedules(store):
    """The periodic schedules (the ``schedules`` hash, name -> JSON), sorted by name: ``[{name, task,
    rule, tz, next, last, last_id, raw}, ...]`` (``geventsched.schedules`` writes them; ``last_id`` is the
    last fired job's id, its ``job``); an empty list where there are none.
    Fields a record lacks are None; one that is not JSON shows as ``raw`` text."""
    found = store.client.hgetall(store.keys.schedules)
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
