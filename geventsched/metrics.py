"""Prometheus metrics for the master and the worker, fed only through their hooks.

    registry = metrics.new_registry()                   # process_* metrics included
    hooks = metrics.WorkerMetrics(registry, task_registry.names())
    worker = Worker(config, client, task_registry, hooks=hooks)
    hooks.bind(worker)                                  # gauges read the worker at scrape time
    lag = metrics.loop_lag_monitor(hooks.loop_lag)      # a greenlet; kill it at shutdown
    server = metrics.serve(registry, 9109, "0.0.0.0")   # None when the port is 0

Everything takes an explicit ``CollectorRegistry``: two instances in one process (tests, ``bench``)
never collide, and nothing happens at import time.

Cardinality is bounded on purpose. ``task`` only takes the names given at construction (anything
else is counted as ``unknown``); ``status``, ``reason`` and ``what`` only take values from the fixed
sets below (anything else is ``other``). A job id is never a label.

The hook methods run on the hot path, once per batch of jobs: the batch is taken apart, counted and
bucketed in C (``operator``, ``Counter``, ``bisect``), then each distinct series is a dict lookup for
its cached child and an addition (see ``Family``). Gauges that describe state (running
jobs, queue depth, live workers) are not updated per job: a collector reads them from the bound
worker or master when Prometheus scrapes.
"""

import itertools
import logging
import math
import time
from bisect import bisect_left
from collections import Counter
from operator import attrgetter, itemgetter, sub

import gevent
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from geventsched.errors import ConfigError
from geventsched.hooks import MasterHooks, WorkerHooks
from geventsched.keys import MAX_PRIORITY

log = logging.getLogger(__name__)

#: Seconds; resolves the sub-millisecond round trips of short jobs as well as minute-long ones.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Results per write; the worker's writer caps a batch at ``worker.WRITE_BATCH`` (2000).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

UNKNOWN = "unknown"  # a task name that is not registered
OTHER = "other"  # a status or reason outside its fixed set

#: ``cancelled``: on a worker, a job interrupted by a cancel; on the master, a job it had claimed or
#: dispatched that was cancelled (cancels of jobs still queued or scheduled are counted in Redis only:
#: ``status --json``).
WORKER_STATUSES = ("ok", "error", "timeout", "cancelled")
MASTER_STATUSES = ("ok", "error", "timeout", "cancelled", "dead")
#: ``DecodeError.reason`` values of ``protocol.py``, plus the worker's own ``unknown_task``.
REJECT_REASONS = ("empty", "too_large", "not_utf8", "invalid_json", "not_an_object", "bad_version",
                  "missing_field", "bad_field", "unknown_task")
DISPATCH_FAILURE_REASONS = ("no_subscriber", "redis_error")
REDISPATCH_REASONS = ("deadline", "worker_lost", "handed_back", "retry")
#: Task names the master takes from the workers' registrations for its ``task`` label, at most: the
#: registrations are written by workers, and a bound keeps the series bounded whatever is written there.
MAX_LEARNT_TASKS = 1000
#: Schedule fires, by whether some worker registered the schedule's task (no schedule name: a label
#: per schedule would grow without bound).
TASK_REGISTERED = ("true", "false")
#: Seconds a schedule fires after its fire time: a pass of the master's housekeeping, up to an outage.
LATENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
WORKER_CONNECTIONS = ("subscriber",)
MASTER_CONNECTIONS = ("dispatch", "collector")
#: The hooks' batches are taken apart with these (in C, no Python call per job).
_task, _submitted_at = attrgetter("task"), attrgetter("submitted_at")
_job, _status, _seconds = itemgetter(0), itemgetter(1), itemgetter(2)


def new_registry():
    """A fresh registry with the process metrics (``process_cpu_seconds_total``,
    ``process_resident_memory_bytes``, …) and ``python_*`` info that the dashboard shows.

    Build one per process role: the master's and the worker's metrics each go in their own.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Family:
    """One metric, with a child per allowed combination of label values, kept in plain Python numbers
    and turned into Prometheus samples when the registry is collected.

    Why not prometheus_client's ``Counter``/``Histogram``: each ``inc``/``observe`` there takes a lock
    (a gevent lock once patched), about 3.5 µs per job for the worker's two hooks. Here a batch of jobs
    is counted (``count``, ``observe_by``) with no Python call per job and no lock: hooks and scrapes
    run as greenlets of one thread and never yield halfway through an update.

    ``allowed`` holds one collection of values per label and ``fallbacks`` the value used for anything
    outside it, so arbitrary input maps onto a bounded set of series. With ``eager`` every allowed
    combination exists (exported as 0) from the start: ``rate()`` then has a series before the first
    event, and dashboards show 0 rather than "no data". ``buckets`` makes it a histogram.
    """

    def __init__(self, registry, name, doc, labels=(), allowed=(), fallbacks=(), eager=False, buckets=None):
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self._allowed = [frozenset(values) for values in allowed]
        self._fallbacks = tuple(fallbacks)
        self._bounds = tuple(float(b) for b in buckets) if buckets is not None else None
        self._children = {}
        self._eager = eager
        if eager or not self.labels:
            for key in itertools.product(*allowed):
                self._children[key] = self._new_child()
        registry.register(self)

    def get(self, *values):
        """The child for these label values: a dict lookup, except the first time for a key."""
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def count(self, *columns):
        """A counter's: add 1 per job of a batch, given a list per label (``columns[l][i]``: job i's
        value of label l). A batch is mostly of one series (one task, all ok): then it is one
        addition; else the jobs are counted per series in C (``Counter``)."""
        if _uniform(columns):
            self.get(*[column[0] for column in columns]).value += len(columns[0])
        else:
            for key, n in Counter(zip(*columns)).items():
                self.get(*key).value += n

    def observe_by(self, column, amounts):
        """A histogram's with one label: observe ``amounts[i]`` in the child of ``column[i]``."""
        if _uniform((column,)):
            self.get(column[0]).observe_all(amounts)
            return
        groups = {}
        for value, amount in zip(column, amounts):
            groups.setdefault(value, []).append(amount)
        for value, group in groups.items():
            self.get(value).observe_all(group)

    def _add(self, values):
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {values!r}")
        key = tuple(v if v in allowed else fallback
                    for v, allowed, fallback in zip(values, self._allowed, self._fallbacks))
        child = self._children.get(key)
        if child is None:
            # Cached under the clamped key only: unknown input never grows this dict.
            child = self._children[key] = self._new_child()
        return child

    def allow(self, position, values):
        """Admit more values for the label at ``position`` (task names learnt at run time); with
        ``eager`` their series appear at once."""
        new = frozenset(values) - self._allowed[position]
        if not new:
            return
        self._allowed[position] |= new
        if self._eager:
            for key in itertools.product(*[new if i == position else allowed
                                           for i, allowed in enumerate(self._allowed)]):
                self._children.setdefault(key, self._new_child())

    def _new_child(self):
        return Count() if self._bounds is None else Distribution(self._bounds)

    # -- the prometheus_client Collector protocol -------------------------------------------------

    def describe(self):
        return [self._family()]

    def collect(self):
        family = self._family()
        for key, child in list(self._children.items()):
            if self._bounds is None:
                family.add_metric(key, child.value)
            else:
                family.add_metric(key, child.buckets(), child.sum)
        return [family]

    def _family(self):
        kind = CounterMetricFamily if self._bounds is None else HistogramMetricFamily
        return kind(self.name, self.doc, labels=self.labels)


def _uniform(columns):
    """Does every column hold one value only (and at least one)? ``list.count`` compares in C."""
    return all(column and column.count(column[0]) == len(column) for column in columns)


class Count:
    """A counter child. Only goes up."""

    __slots__ = ("value",)

    def __init__(self):
        self.value = 0.0

    def inc(self, amount=1):
        self.value += amount


class Distribution:
    """A histogram child: a count per bucket (the last one is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount):
        # bisect_left: the first bound >= amount, i.e. the bucket ``le`` that holds it (as in
        # observe_all).
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def observe_all(self, amounts):
        """``observe`` each of ``amounts`` (a list): bucketed and counted in C, then added once per
        bucket hit."""
        counts = self.counts
        for index, n in Counter(map(bisect_left, itertools.repeat(self.bounds), amounts)).items():
            counts[index] += n
        self.sum += sum(amounts)

    def buckets(self):
        """``[(le, cumulative count), ...]`` ending with +Inf, as HistogramMetricFamily wants them."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class ScrapeGauges:
    """Gauges computed when Prometheus scrapes, by calling ``read()`` (see ``bind``).

    ``read`` returns ``{name: value}``; a name missing from it (not bound yet, or Redis did not
    answer) is exported without a sample for that scrape rather than as a stale or made-up number.
    An exception in ``read`` is logged and never fails the scrape.
    """

    def __init__(self, registry, docs):
        self._docs = docs
        self._read = None
        registry.register(self)

    def bind(self, read):
        self._read = read

    def describe(self):
        return [GaugeMetricFamily(name, doc) for name, doc in self._docs.items()]

    def collect(self):
        values = {}
        if self._read is not None:
            try:
                values = self._read()
            except Exception:  # a scrape must never fail because of the object it looks at
                log.exception("metrics: reading gauges failed")
        for name, doc in self._docs.items():
            family = GaugeMetricFamily(name, doc)
            if values.get(name) is not None:
                family.add_metric([], values[name])
            yield family


class TaskGauge:
    """A gauge with a ``task`` label, computed when Prometheus scrapes by calling ``read()`` ->
    ``{task: value}``. Its series are bounded like the per-task counters': one per known task name
    (0 when ``read`` has no value for it), anything else summed under ``unknown``. Nothing is
    exported while unbound, or when ``read`` fails (logged)."""

    def __init__(self, registry, name, doc, task_names):
        self.name, self.doc = name, doc
        self._known = set(task_names)
        self._read = None
        registry.register(self)

    def bind(self, read):
        self._read = read

    def allow(self, names):
        """Admit more task names (learnt at run time)."""
        self._known.update(names)

    def describe(self):
        return [GaugeMetricFamily(self.name, self.doc, labels=["task"])]

    def collect(self):
        family = GaugeMetricFamily(self.name, self.doc, labels=["task"])
        values = None
        if self._read is not None:
            try:
                values = self._read()
            except Exception:  # a scrape must never fail because of the object it looks at
                log.exception("metrics: reading %s failed", self.name)
        if values is not None:
            series = dict.fromkeys(self._known, 0)
            for task, value in values.items():
                key = task if task in series else UNKNOWN
                series[key] = series.get(key, 0) + value
            for task, value in sorted(series.items()):
                family.add_metric([task], value)
        yield family


class RedisCounters:
    """Counters kept in Redis (workflows: counted by the scripts that start and end them, exactly
    once whatever master runs), read when Prometheus scrapes by calling ``read()`` -> ``{value: n}``.
    Exported as one counter family with one label; a scrape where Redis does not answer has no sample.
    The counts are the namespace's: every master exports the same numbers (take max(), not sum())."""

    family = CounterMetricFamily

    def __init__(self, registry, name, doc, label, values):
        self._name, self._doc, self._label, self._values = name, doc, label, tuple(values)
        self._read = None
        registry.register(self)

    def bind(self, read):
        self._read = read

    def describe(self):
        return [self.family(self._name, self._doc, labels=[self._label])]

    def collect(self):
        family = self.family(self._name, self._doc, labels=[self._label])
        counts = None
        if self._read is not None:
            try:
                counts = self._read()
            except Exception:  # Redis away: no sample rather than a made-up one; never a failed scrape
                log.warning("metrics: reading %s from Redis failed", self._name, exc_info=True)
        if counts is not None:
            for value in self._values:
                family.add_metric([value], counts.get(value, 0))
        yield family


class RedisGauges(RedisCounters):
    """The same for gauges read from Redis at each scrape (the queue of each priority)."""

    family = GaugeMetricFamily


class WorkerMetrics(WorkerHooks):
    """The worker's metrics (SPEC: ``geventsched_worker_*``), fed by ``WorkerHooks`` calls.

    ``task_names`` are the tasks this worker has registered; ``bind(worker)`` makes the state
    gauges (running jobs, subscribed channels) read that worker at scrape time.
    """

    #: Its hooks cannot raise on any input (labels clamp to fixed sets): no guard needed.
    safe = True

    def __init__(self, registry, task_names):
        tasks, statuses = [sorted(set(task_names))], [WORKER_STATUSES]
        self._received = Family(registry, "geventsched_worker_jobs_received_total",
                                "Jobs received and queued for a runner.", ["task"], tasks, [UNKNOWN], eager=True)
        self._finished = Family(registry, "geventsched_worker_jobs_finished_total",
                                "Jobs run to the end, by outcome (cancelled: interrupted by a cancel).",
                                ["task", "status"], tasks + statuses, [UNKNOWN, OTHER], eager=True)
        self._duration = Family(registry, "geventsched_worker_job_duration_seconds", "Time a job's function ran.",
                                ["task"], tasks, [UNKNOWN], buckets=LATENCY_BUCKETS)
        self._rejected = Family(registry, "geventsched_worker_messages_rejected_total",
                                "Dispatch messages refused (undecodable, too large, unknown task).",
                                ["reason"], [REJECT_REASONS], [OTHER], eager=True)
        self._reconnects = Family(registry, "geventsched_worker_reconnects_total",
                                  "Redis connections lost and made again.", ["what"], [WORKER_CONNECTIONS], [OTHER],
                                  eager=True)
        self._batches = Family(registry, "geventsched_worker_result_batches_total",
                               "Writes of results to Redis (one script call or pipeline each).").get()
        self._batch_size = Family(registry, "geventsched_worker_result_batch_size", "Results per write to Redis.",
                                  buckets=BATCH_BUCKETS).get()
        #: Fed by ``loop_lag_monitor``, not by a hook.
        self.loop_lag = Family(registry, "geventsched_worker_loop_lag_seconds",
                               "How late a timer fires on the gevent hub (the hub was blocked).",
                               buckets=LATENCY_BUCKETS).get()
        self._gauges = ScrapeGauges(registry, {
            "geventsched_worker_jobs_running": "Jobs running now.",
            "geventsched_worker_channels_subscribed": "Dispatch channels this worker serves.",
            "geventsched_worker_jobs_waiting": "Jobs received that wait for a free runner.",
            "geventsched_worker_concurrency": "Jobs this worker runs at most at once.",
        })

    def bind(self, worker):
        """Read ``worker``'s state at each scrape. Returns self."""
        runners = worker.runners

        def read():
            return {"geventsched_worker_jobs_running": runners.running,
                    "geventsched_worker_channels_subscribed": len(worker.channels),
                    "geventsched_worker_jobs_waiting": runners.queued,
                    "geventsched_worker_concurrency": runners.size}

        self._gauges.bind(read)
        return self

    # -- hooks (hot path) ------------------------------------------------------------------------

    def on_received(self, jobs):
        self._received.count(list(map(_task, jobs)))

    def on_rejected(self, reason):
        self._rejected.get(reason).inc()

    def on_finished(self, finished):
        _count_finished(finished, self._finished, self._duration)

    def on_reconnect(self, what):
        self._reconnects.get(what).inc()

    def on_results_written(self, count):
        self._batches.inc()
        self._batch_size.observe(count)


class MasterMetrics(MasterHooks):
    """The master's metrics (SPEC: ``geventsched_master_*``), fed by ``MasterHooks`` calls.

    ``task_names`` are the tasks the workers run (the master has no registry of its own: pass the
    same apps' names). ``bind(master)`` makes queue depth, in-flight jobs, workers and channels
    read that master at scrape time; queue depth and dead letters cost one Redis round trip.
    """

    safe = True  # see WorkerMetrics.safe

    def __init__(self, registry, task_names):
        tasks, statuses = [sorted(set(task_names))], [MASTER_STATUSES]
        self._submitted = Family(registry, "geventsched_master_jobs_submitted_total", "New jobs taken from the intake.",
                                 ["task"], tasks, [UNKNOWN], eager=True)
        self._dispatched = Family(registry, "geventsched_master_jobs_dispatched_total",
                                  "Jobs published and heard by a worker.", ["task"], tasks, [UNKNOWN], eager=True)
        self._dispatch_failures = Family(registry, "geventsched_master_dispatch_failures_total",
                                         "Publishes that reached no worker.", ["reason"], [DISPATCH_FAILURE_REASONS],
                                         [OTHER], eager=True)
        self._duplicates = Family(registry, "geventsched_master_dispatch_duplicates_total",
                                  "Publishes heard by more than one subscriber (PUBLISH > 1).").get()
        self._finished = Family(registry, "geventsched_master_jobs_finished_total", "Jobs finished, by outcome.",
                                ["task", "status"], tasks + statuses, [UNKNOWN, OTHER], eager=True)
        self._redispatched = Family(registry, "geventsched_master_jobs_redispatched_total",
                                    "Jobs sent back to the queue.", ["reason"], [REDISPATCH_REASONS], [OTHER],
                                    eager=True)
        self._latency = Family(registry, "geventsched_master_job_latency_seconds", "Time from submission to result.",
                               ["task"], tasks, [UNKNOWN], buckets=LATENCY_BUCKETS)
        self._queue_wait = Family(registry, "geventsched_master_queue_wait_seconds",
                                  "Time from submission to dispatch.", buckets=LATENCY_BUCKETS).get()
        self._unknown_results = Family(registry, "geventsched_master_results_unknown_total",
                                       "Results for jobs this master was not waiting for.").get()
        self._lost = Family(registry, "geventsched_master_jobs_lost_total",
                            "Dispatches given up without a result (durability none).").get()
        self._by_task = [self._submitted, self._dispatched, self._finished, self._latency]
        self._reconnects = Family(registry, "geventsched_master_reconnects_total",
                                  "Redis connections lost and made again.", ["what"], [MASTER_CONNECTIONS], [OTHER],
                                  eager=True)
        self._schedule_fires = Family(registry, "geventsched_master_schedule_fires_total",
                                      "Jobs enqueued by periodic schedules, by whether a worker registered "
                                      "the task.", ["task_registered"], [TASK_REGISTERED], [OTHER], eager=True)
        self._schedule_lateness = Family(registry, "geventsched_master_schedule_lateness_seconds",
                                         "Time from a schedule's fire time to its job's enqueueing.",
                                         buckets=LATENESS_BUCKETS).get()
        self._schedule_missed = Family(registry, "geventsched_master_schedule_missed_total",
                                       "Fire times that passed unfired (master away): each schedule fires "
                                       "once for its latest.").get()
        self._held = TaskGauge(registry, "geventsched_master_jobs_held",
                               "Jobs held back by their task's rate limit or max_running (part of the queued jobs).",
                               tasks[0])
        self._gauges = ScrapeGauges(registry, {
            "geventsched_master_jobs_queued": "Jobs waiting for dispatch (intake, held back by a limit, claimed "
                                              "and unsent).",
            "geventsched_master_jobs_in_flight": "Jobs dispatched and not finished.",
            "geventsched_master_workers": "Live registered workers.",
            "geventsched_master_channels": "Dispatch channels the master can send to.",
            "geventsched_master_dead_letters": "Jobs in the dead-letter list.",
            "geventsched_master_jobs_scheduled": "Jobs waiting for their time (delayed, or a retry's backoff).",
            "geventsched_master_schedule_overdue_seconds": "How far the most overdue periodic schedule is past "
                                                           "its next fire time (0: none is).",
        })
        self._workflows = RedisCounters(registry, "geventsched_master_workflows",
                                        "Workflows started, and ended by outcome (ok, failed, cancelled), "
                                        "counted in Redis.", "event", ("started", "ok", "failed", "cancelled"))
        self._by_priority = RedisGauges(registry, "geventsched_master_jobs_queued_by_priority",
                                        "Jobs in the intake list of each priority (0..9; higher goes first).",
                                        "priority", [str(p) for p in range(MAX_PRIORITY + 1)])

    def bind(self, master):
        """Read ``master``'s state at each scrape. Returns self."""
        self._gauges.bind(lambda: _read_master(master))
        self._held.bind(lambda: dict(master.limits.held))
        self._workflows.bind(master.store.workflow_counts)
        self._by_priority.bind(lambda: {str(p): n for p, n in master.store.queued_by_priority().items()})
        return self

    # -- hooks (hot path) ------------------------------------------------------------------------

    def on_submitted(self, jobs):
        self._submitted.count(list(map(_task, jobs)))

    def on_dispatched(self, jobs, sent_at, duplicates=0):
        self._dispatched.count(list(map(_task, jobs)))
        self._queue_wait.observe_all(list(map(sub, itertools.repeat(sent_at), map(_submitted_at, jobs))))
        if duplicates:
            self._duplicates.inc(duplicates)

    def on_dispatch_failed(self, reason):
        self._dispatch_failures.get(reason).inc()

    def on_redispatched(self, reason, count):
        self._redispatched.get(reason).inc(count)

    def on_finished(self, finished):
        _count_finished(finished, self._finished, self._latency)

    def on_unknown_result(self):
        self._unknown_results.inc()

    def on_lost(self, count):
        self._lost.inc(count)

    def on_tasks(self, names):
        names = [name for name in names if isinstance(name, str)][:MAX_LEARNT_TASKS]
        for family in self._by_task:
            family.allow(0, names)
        self._held.allow(names)

    def on_reconnect(self, what):
        self._reconnects.get(what).inc()

    def on_schedule_fired(self, name, registered, lateness):
        self._schedule_fires.get("true" if registered else "false").inc()
        self._schedule_lateness.observe(lateness)

    def on_schedule_missed(self, name, count):
        self._schedule_missed.inc(count)


def _count_finished(finished, counts, seconds):
    """Both roles' ``on_finished``: ``[(job, status, seconds), ...]`` counted in ``counts`` by task and
    status, and their seconds observed in the histogram ``seconds`` by task."""
    tasks = list(map(_task, map(_job, finished)))
    counts.count(tasks, list(map(_status, finished)))
    seconds.observe_by(tasks, list(map(_seconds, finished)))


def _read_master(master):
    state = master.state()
    values = {"geventsched_master_jobs_in_flight": state["in_flight"], "geventsched_master_workers": state["workers"],
              "geventsched_master_channels": state["channels"]}
    if "queued" in state:  # absent when Redis did not answer: no sample rather than a made-up one
        values["geventsched_master_jobs_queued"] = state["queued"]
        values["geventsched_master_dead_letters"] = state["dead"]
        values["geventsched_master_jobs_scheduled"] = state["scheduled"]
    values["geventsched_master_schedule_overdue_seconds"] = master.scheduler.overdue()  # None: no sample
    return values


def loop_lag_monitor(histogram, interval=0.05):
    """Spawn a greenlet that sleeps ``interval`` s again and again and observes into ``histogram``
    how much later than asked it woke up: the time the hub was kept from running timers, by
    CPU-bound jobs or blocking calls. Returns the greenlet; kill it to stop.
    """
    def watch():
        clock, observe = time.perf_counter, histogram.observe
        while True:
            start = clock()
            gevent.sleep(interval)
            observe(max(0.0, clock() - start - interval))

    return gevent.spawn(watch)


def serve(registry, port, addr="0.0.0.0"):
    """Serve ``registry`` on ``http://addr:port/metrics`` from a greenlet (no OS thread, so it works
    with a monkey-patched process). Returns the started ``WSGIServer`` (call ``stop()`` at the end),
    or None when ``port`` is 0. Raises ConfigError when the address cannot be bound.
    """
    if not port:
        return None
    server = WSGIServer((addr, port), make_wsgi_app(registry), log=None, error_log=log)
    try:
        server.start()
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
    return server
