"""The changes the dashboard makes: requeue and delete dead letters, cancel jobs, remove schedules.

Each is one atomic step in Redis (a Lua script, or the store's own operation), so a click that
races the master or a second click changes nothing twice.
"""

from importlib import resources

from geventsched.keys import MAX_PRIORITY
from geventsched.schedules import Scheduler


def _script(name):
    return resources.files("geventsched.dashboard").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Actions:
    """The dashboard's changes on one store."""

    def __init__(self, store):
        self.store = store
        self._dead_letter = store.client.register_script(_script("dead_letter"))

    def requeue(self, ids):
        """Dead letters back to the queue (on their priority's list). Returns how many went."""
        n = self._dead_letters("requeue", ids)
        if n:
            self.store.announce(self.store.keys.wakeup_channel, b"1")
        return n

    def delete(self, ids):
        """Forget dead letters: their place in the list, their record and their result."""
        return self._dead_letters("delete", ids)

    def requeue_all(self, task=None):
        """Every dead letter (of ``task``) back to the queue, a slice per script call."""
        return self.store.requeue_dead(task or None)

    def cancel(self, ids):
        """``Store.cancel(ids)``, returned as it answers."""
        return self.store.cancel(list(ids))

    def remove_schedule(self, name):
        """Remove schedule ``name`` (``schedules.Scheduler.remove``). Returns whether it was there."""
        return bool(Scheduler(self.store).remove(name))

    def _dead_letters(self, action, ids):
        if not ids:
            return 0
        k = self.store.keys
        lists = [k.intake_for(p) for p in range(MAX_PRIORITY + 1)]
        return self._dead_letter(keys=[k.dead, k.jobs, k.attempts, k.retries, k.finished, k.priority, k.unique,
                                       *lists],
                                 args=[action, k.result_prefix, *ids])
