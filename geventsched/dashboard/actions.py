"""The changes the dashboard makes: requeue and delete dead letters, cancel jobs, remove schedules.

Each is one atomic step in Redis (a Lua script, or the store's own operation), so a click that
races the master or a second click changes nothing twice.
"""

from importlib import resources

from geventsched.keys import MAX_PRIORITY


def _script(name):
    return resources.files("geventsched.dashboard").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Actions:
    """The dashboard's changes on one store."""

    def __init__(self, store):
        self.store = store
        self._dead_letter = store.client.register_script(_script("dead_letter"))

    @property
    def can_cancel(self):
        """Cancelling needs ``Store.cancel`` (job control); without it the page offers no button."""
        return callable(getattr(self.store, "cancel", None))

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
        """``Store.cancel(ids)``, returned as it answers (see ``can_cancel``)."""
        return self.store.cancel(list(ids))

    def remove_schedule(self, name):
        """Remove schedule ``name``: by the schedule module's own function once there is one, else by
        deleting its entry in the ``schedules`` hash. Returns whether it was there."""
        remove = getattr(self.store, "remove_schedule", None)
        if callable(remove):
            return bool(remove(name))
        return bool(self.store.client.hdel(self.store.keys.schedules, name))

    def _dead_letters(self, action, ids):
        if not ids:
            return 0
        k = self.store.keys
        lists = [k.intake_for(p) for p in range(MAX_PRIORITY + 1)]
        return self._dead_letter(keys=[k.dead, k.jobs, k.attempts, k.retries, k.finished, k.priority, k.unique,
                                       *lists],
                                 args=[action, k.result_prefix, *ids])
