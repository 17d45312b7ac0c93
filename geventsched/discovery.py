"""Discovery: the live workers and the channels they hold, as the master sees them.

Once a second (``refresh``) the registrations in Redis are read: a worker whose heartbeat expired is
lost (its channels go, its leases are freed, and ``on_lost(worker_id)`` lets the master send its
jobs back); a worker of the other durability mode is left out (said once); the channels of live,
non-draining workers fill the master's ``ChannelTable``, each capped at its worker's advertised
capacity over its channels (or ``--prefetch``). The tasks the workers registered give their time
limits (for deadlines), their rate limits and max_running (``limits.py``: handed to ``on_limits``)
and their names (for metric labels). They are read when the set of workers changes: a worker
registers its tasks before its channels, so the master knows a task's limits before it can send it a
job of that task.

Reading a heartbeat never trusts it: a value someone else wrote counts as no heartbeat, and a field of
the wrong type as a cap of 1.
"""

import logging

from geventsched.limits import limits_from
from geventsched.protocol import FRAME

log = logging.getLogger(__name__)


class Discovery:
    def __init__(self, store, table, config, hooks, on_lost, on_change, on_limits=None):
        self.store, self.table, self.config, self.hooks = store, table, config, hooks
        self._on_lost = on_lost  # (worker id): its channels are gone; its jobs are the master's to send back
        self._on_change = on_change  # the channel set changed: dispatch may go on
        self._on_limits = on_limits  # ({task: limits.Limit}) of the tasks registered with a limit
        self.workers = {}  # worker id -> last heartbeat, of live compatible workers
        self.task_timeouts = {}  # task name -> time limit, as the workers registered them
        self.stale = False  # a channel answered PUBLISH = 0: read the channel owners again
        self._mismatched = set()  # workers whose durability differs from ours (said once)

    def refresh(self):
        workers = self.store.workers()
        gone = [w for w, beat in workers.items() if beat is None]
        for worker_id in gone:
            self._lose(worker_id)
        live = {w: beat for w, beat in workers.items() if beat is not None and self._compatible(w, beat)}
        if live.keys() != self.workers.keys() or gone or self.stale:
            self.stale = False
            self.learn_tasks()
            self._refresh_channels(live)
        self._mismatched.intersection_update(workers)
        self.workers = live

    def forget(self):
        """Start over (a master that stands by again)."""
        self.workers = {}
        for name in list(self.table.by_name):
            self.table.remove(name)

    def _lose(self, worker_id):
        log.warning("master: worker %s stopped heartbeating; taking its channels away", worker_id)
        self.store.release_worker(worker_id)
        for channel in [c for c in self.table.order if c.worker == worker_id]:
            self.table.remove(channel.name)  # before its jobs go back: none may be sent to it again
        self._on_lost(worker_id)

    def learn_tasks(self):
        """Read the tasks the workers registered (also once a second with static channels, where the
        set of workers is not watched)."""
        options = self.store.task_options()
        self.task_timeouts = {name: float(o["timeout"]) for name, o in options.items()
                              if isinstance(o.get("timeout"), (int, float)) and 0 < o["timeout"] < 10**9}
        if self._on_limits is not None:
            self._on_limits(limits_from(options))
        self.hooks.on_tasks(sorted(options))

    def _compatible(self, worker_id, beat):
        mode = beat.get("durability", "redis")
        if mode == self.config.durability:
            return True
        if worker_id not in self._mismatched:
            self._mismatched.add(worker_id)
            log.error("master: worker %s runs with --durability %s, this master with %s: not using it",
                      worker_id, mode, self.config.durability)
        return False

    def _refresh_channels(self, live):
        owners = self.store.channel_owners()
        held = {}
        for channel, worker_id in owners.items():
            beat = live.get(worker_id)
            if beat is not None and not beat.get("draining"):
                held[channel.encode()] = (worker_id, self._cap(beat), _reads_frames(beat))
        for name in [c.name for c in self.table.order if c.name not in held]:
            self.table.remove(name)
        for name, (worker_id, cap, frames) in held.items():
            self.table.add(name, worker_id, cap, frames)
        log.info("master: %d workers, %d channels", len(live), len(self.table))
        self._on_change()

    def _cap(self, beat):
        if self.config.prefetch:
            return self.config.prefetch
        try:
            return max(1, int(beat.get("capacity", 100)) // max(1, int(beat.get("channels", 1))))
        except (TypeError, ValueError):  # a heartbeat someone else wrote
            return 1


def _reads_frames(beat):
    """The worker lists the batch frame among the frame versions it reads (an older one lists none)."""
    versions = beat.get("frames")
    return isinstance(versions, list) and FRAME in versions
