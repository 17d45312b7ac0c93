"""Extension points. Master and worker call these at each step of a job; metrics subscribe here and
never appear inline in the loops. Every method is a no-op; override the ones you need.

The calls sit on the hot path: keep them cheap, and do not block in them. The steps every job takes
(received, submitted, dispatched, finished) are told once per batch, with a list: a call per job
cost the master and the worker more than the metrics they fed (bench/README.md, fifth round).
"""

import logging

log = logging.getLogger(__name__)


class WorkerHooks:
    def on_subscribed(self, channels):
        """``channels`` are now subscribed (after start or a reconnect)."""

    def on_received(self, jobs):
        """``jobs`` arrived (one message: a job, or a batch frame) and were queued for runners."""

    def on_rejected(self, reason):
        """A message was refused; ``reason`` comes from a fixed set (see ``protocol.DecodeError``)."""

    def on_finished(self, finished):
        """Jobs ran to the end: ``[(job, status, duration), ...]``, ``status`` 'ok', 'error', 'timeout'
        or 'cancelled', ``duration`` in seconds; told as their results are written (one call a write)."""

    def on_reconnect(self, what):
        """A connection to Redis was lost and made again."""

    def on_results_written(self, count):
        """One batch of ``count`` results went to Redis in one write."""


class MasterHooks:
    def on_submitted(self, jobs):
        """The master took new ``jobs`` from the intake (first attempts; one call a claim)."""

    def on_dispatched(self, jobs, sent_at, duplicates=0):
        """``jobs`` were published at ``sent_at`` (``time.time()``; a job's queue wait is ``sent_at -
        job.submitted_at``) and a worker got each (one call a batch). ``duplicates`` of them were
        heard by more than one subscriber: a second subscriber listens on a dispatch channel."""

    def on_dispatch_failed(self, reason):
        """A publish did not reach a worker (``reason``: 'no_subscriber', 'redis_error')."""

    def on_redispatched(self, reason, count):
        """``count`` jobs went back to the queue (``reason``: 'deadline', 'worker_lost', 'handed_back')."""

    def on_finished(self, finished):
        """Results came back: ``[(job, status, latency), ...]``, ``latency`` from submission to result
        in seconds (one call per read of results)."""

    def on_unknown_result(self):
        """A result for a job this master is not waiting for (unknown, already finished, or without
        the token of the job's dispatch in flight)."""

    def on_lost(self, count):
        """``count`` dispatches were given up without a result (``--durability none``: a lost message,
        a refused one, or a worker gone)."""

    def on_tasks(self, names):
        """The task names the workers registered (read again when the set of workers changes)."""

    def on_reconnect(self, what):
        """A connection to Redis was lost and made again."""

    def on_schedule_fired(self, name, registered, lateness):
        """Schedule ``name`` enqueued a job ``lateness`` seconds after its fire time; ``registered``:
        some worker has registered its task."""

    def on_schedule_missed(self, name, count):
        """``count`` fire times of schedule ``name`` passed unfired (the master was away): it fired
        once, for the latest."""


def guarded(hooks, base):
    """Wrap ``hooks`` (one object, or a list called in order) so an exception in a hook is logged and
    swallowed, never reaching the loop. ``None`` gives the no-op ``base()``. A hooks object that sets
    ``safe = True`` (it cannot raise, whatever its input: our metrics) is used as it is, because the
    wrapper costs as much as the metrics themselves on the hot path."""
    if hooks is None:
        return base()
    if getattr(hooks, "safe", False):
        return hooks
    return _Guard(hooks if isinstance(hooks, (list, tuple)) else [hooks], base)


class _Guard:
    def __init__(self, hooks, base):
        for name in vars(base):
            if name.startswith("on_"):
                setattr(self, name, _guard([getattr(h, name) for h in hooks], name))


def _guard(fns, name):
    if len(fns) == 1:
        fn = fns[0]

        def call(*args):
            try:
                fn(*args)
            except Exception:
                log.exception("hook %s failed", name)
    else:
        def call(*args):
            for fn in fns:
                try:
                    fn(*args)
                except Exception:
                    log.exception("hook %s failed", name)

    call.__name__ = name
    return call
