"""The master lease: at most one master dispatches in a namespace.

A second master (started by mistake, or as a hot standby) waits until the lease is free, so jobs are
never dispatched twice; when the active master dies, its lease expires after ``ttl`` seconds and a
standby takes over. The holder renews it every ``ttl / 5`` seconds; a holder that finds the lease in
someone else's hands (it was paused or cut off for longer than ``ttl``) must stop dispatching at once.
"""

import logging

from geventsched import transport
from geventsched.config import new_instance_id
from geventsched.store import lua_script

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, client, key, ttl=5.0, holder=None):
        self.client, self.key, self.ttl = client, key, ttl
        self.holder = holder or new_instance_id()
        self._renew = client.register_script(lua_script("lease_renew"))
        self._release = client.register_script(lua_script("lease_release"))

    @property
    def ttl_ms(self):
        return int(self.ttl * 1000)

    def try_acquire(self):
        return bool(self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    def current(self):
        holder = self.client.get(self.key)
        return holder.decode() if holder else None

    def acquire(self, stop):
        """Block (yielding) until the lease is ours or ``stop`` (an Event) is set. Returns True if ours."""
        announced = False
        while not stop.is_set():
            try:
                if self.try_acquire():
                    return True
                if not announced:
                    log.warning("master: standing by, master %s holds the lease", self.current())
                    announced = True
            except transport.RedisError as exc:
                log.warning("master: lease check failed: %s", transport.describe(exc))
            stop.wait(self.ttl / 5)
        return False

    def renew(self):
        """Renew the lease now. True while it is ours (renewed, or free again and taken back)."""
        return bool(self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]) or self.try_acquire())

    def keep(self, stop, lost):
        """Renew until ``stop`` is set; call ``lost()`` and return if the lease went to someone else."""
        while not stop.wait(self.ttl / 5):
            try:
                if self.renew():
                    continue  # renewed, or it had only run out (Redis was away) and is ours again
                log.error("master: lost the lease to %s; stopping dispatch", self.current())
                lost()
                return
            except transport.RedisError as exc:
                # Redis is away: the lease may run out meanwhile; the next renewal tells.
                log.warning("master: lease renewal failed: %s", transport.describe(exc))

    def release(self):
        try:
            self._release(keys=[self.key], args=[self.holder])
        except transport.RedisError:
            pass  # it expires on its own
