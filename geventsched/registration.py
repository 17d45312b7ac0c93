"""A worker's registration: its claim on its dispatch channels and its heartbeat in Redis.

A channel is held by at most one live worker (the channel lease lasts as long as the holder's
heartbeat key, ``heartbeat_ttl``). At start (``claim``) a worker takes its channels over at once from
a holder that ran on this host and whose process is gone (a restart after ``kill -9``), and waits for
a holder that looks alive elsewhere until its lease runs out, saying so once; one that keeps renewing
it is alive, and the channel is refused (``ChannelConflict``).

While serving (``refresh``, once a heartbeat) the registration may turn out to be gone: Redis
restarted, or the worker was away (paused, cut off) past its TTL and thought dead. ``reclaim`` then
registers again with the channels that are free; those another worker took meanwhile are
``missing``, and ``refresh`` takes them back once that worker lets them go.
"""

import json
import logging
import os
import socket
import time

from geventsched import transport
from geventsched.errors import ChannelConflict

log = logging.getLogger(__name__)

OK, LOST, MOVED = "ok", "lost", "moved"


class Registration:
    def __init__(self, store, worker_id, channels, ttl, heartbeat):
        """``heartbeat()`` gives the worker's current heartbeat (a dict)."""
        self.store, self.id, self.channels, self.ttl = store, worker_id, channels, ttl
        self._heartbeat = heartbeat
        self.missing = {}  # channel -> the live worker that took it while we were away
        self.confirmed = time.monotonic()  # the last time Redis confirmed the registration

    def beat(self):
        return json.dumps(self._heartbeat())

    def owned(self):
        """The channels this worker serves: all of them, but those others took while it was away."""
        return [channel for channel in self.channels if channel not in self.missing]

    def claim(self, stop):
        """Claim every channel and register (see the module docstring). Returns True, or None if
        ``stop`` (an Event) came while waiting for a channel."""
        give_up = time.monotonic() + self.ttl + 1.0  # a dead holder's lease runs out within its TTL
        waiting_for = None
        while True:
            held = self.store.register_worker(self.id, self.beat(), self.ttl, self.channels)
            if not held:
                self.confirmed = time.monotonic()
                return True
            channel, holder = next(iter(held.items()))
            beat = self.store.heartbeat_of(holder)
            left = _lease_left(beat, self.ttl)
            if beat is not None and _gone(beat):
                log.warning("worker %s: channel %s is held by worker %s, whose process (pid %s) on this host "
                            "is gone; taking its channels over", self.id, channel, holder, beat.get("pid"))
                self.store.end_lease(holder)
                continue
            if time.monotonic() > give_up:
                raise ChannelConflict(f"channel {channel} is held by live worker {holder}{_where(beat)}")
            if waiting_for != holder:
                waiting_for = holder
                log.warning("worker %s: channel %s is held by worker %s%s, whose lease runs out in %.1fs "
                            "unless it renews it; waiting", self.id, channel, holder, _where(beat), left)
            if stop.wait(min(0.25, max(left, 0.05))):
                return None

    def register_tasks(self, registry):
        """The tasks' names, time limits and limits (``Task.options``), for the master's deadlines,
        dispatch limits and metric labels."""
        try:
            self.store.register_tasks({name: task.options() for name, task in registry.tasks.items()})
        except transport.RedisError as exc:  # the master falls back to its default time limit
            log.warning("worker %s: could not register its tasks: %s", self.id, transport.describe(exc))

    def refresh(self, draining=False):
        """One heartbeat. Returns OK; MOVED when channels that were missing came back (serve
        ``owned()`` again); LOST when the registration is gone (call ``reclaim``). A draining worker,
        which has given its channels up, only says it is still there."""
        if self.store.heartbeat(self.id, self.beat(), self.ttl):
            self.confirmed = time.monotonic()
            if self.missing and not draining:
                held = self.store.register_worker(self.id, self.beat(), self.ttl, self.channels, partial=True)
                if len(held) < len(self.missing):
                    self.missing = held
                    log.info("worker %s: serving %d channels again", self.id, len(self.owned()))
                    return MOVED
            return OK
        if draining:
            self.store.heartbeat(self.id, self.beat(), self.ttl, create=True)
            return OK
        return LOST

    def reclaim(self):
        """Register again after the registration was lost, with the channels that are free. Returns
        True when some are missing (held by others now): the worker must stop serving them."""
        held = self.store.register_worker(self.id, self.beat(), self.ttl, self.channels, partial=True)
        self.confirmed = time.monotonic()
        if not held:
            log.warning("worker %s: its registration was gone (Redis restarted, or it was away); registered "
                        "again", self.id)
            return False
        log.error("worker %s: was thought dead while away; %d of its channels are held by other workers now "
                  "(%s held by %s): it stops serving them", self.id, len(held), *next(iter(held.items())))
        self.missing.update(held)
        return True

    def release(self, channels_only=False):
        """Give the channels up (``channels_only``: a draining worker keeps its heartbeat), or deregister."""
        self.store.release_worker(self.id, channels_only=channels_only)


def describe_host():
    """Where a heartbeat comes from: this host and process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _gone(beat):
    """True when a heartbeat's worker ran on this host and its process no longer exists."""
    pid = beat.get("pid")
    return beat.get("host") == socket.gethostname() and pid != os.getpid() and pid_alive(pid) is False


def pid_alive(pid):
    """Whether ``pid`` runs on this machine: True, False (no such process, or a zombie: dead, not reaped
    yet), or None when ``pid`` is no pid at all."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):  # no /proc here, or it just exited
        return True


def _lease_left(beat, ttl):
    """Seconds until a holder's lease runs out if it does not renew it (from its last beat's time)."""
    last = beat.get("beat") if beat else None
    if not isinstance(last, (int, float)):
        return ttl
    return min(ttl, max(0.0, last + ttl - time.time()))


def _where(beat):
    if not beat:
        return ""
    return f" (host {beat.get('host')}, pid {beat.get('pid')})"
