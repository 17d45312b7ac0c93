"""Which channel gets the next job. Pure: no Redis, no gevent.

``ChannelTable`` holds the live dispatch channels with their in-flight count (``load``) and cap. Each
strategy is a function ``choose(table, job) -> Channel | None``; ``None`` means every channel is at its
cap and the job has to wait. They are picked by name from ``STRATEGIES`` when arguments are parsed.

Least-loaded is O(1) per job: channels sit in buckets by load, and the lowest non-empty bucket is
tracked, so 10,000 channels cost the same per job as 3.
"""

import random
import zlib

from geventsched.errors import ConfigError


class Channel:
    __slots__ = ("name", "worker", "load", "cap", "frames")

    def __init__(self, name, worker, cap, frames=False):
        self.name = name
        self.worker = worker
        self.load = 0
        self.cap = cap
        #: Its worker reads batch frames (``protocol.FRAME``).
        self.frames = frames

    def __repr__(self):
        return f"Channel({self.name!r}, worker={self.worker!r}, load={self.load}, cap={self.cap})"


class ChannelTable:
    def __init__(self):
        self.by_name = {}
        self.order = []  # insertion order, for round-robin, random and hash
        self._buckets = [{}]  # load -> {name: Channel}
        self._min = 0  # no channel has a load below this
        self.rr_cursor = 0
        self.total_cap = 0
        self.total_load = 0

    def __len__(self):
        return len(self.by_name)

    def __contains__(self, name):
        return name in self.by_name

    def get(self, name):
        return self.by_name.get(name)

    def add(self, name, worker, cap, frames=False):
        """Add a channel, or update its worker, cap and frame support if it is already here."""
        channel = self.by_name.get(name)
        if channel is not None:
            self.total_cap += cap - channel.cap
            channel.worker, channel.cap, channel.frames = worker, cap, frames
            return channel
        channel = self.by_name[name] = Channel(name, worker, cap, frames)
        self.total_cap += cap
        self.order.append(channel)
        self._buckets[0][name] = channel
        self._min = 0
        return channel

    def remove(self, name):
        channel = self.by_name.pop(name, None)
        if channel is not None:
            self.order.remove(channel)
            del self._buckets[channel.load][name]
            self.total_cap -= channel.cap
            self.total_load -= channel.load
        return channel

    def acquire(self, channel):
        """Count one more job in flight on ``channel``."""
        buckets = self._buckets
        load = channel.load
        del buckets[load][channel.name]
        load += 1
        if load == len(buckets):
            buckets.append({})
        buckets[load][channel.name] = channel
        channel.load = load
        self.total_load += 1

    def release(self, channel):
        """Count one job less in flight on ``channel`` (no-op at zero, or once the channel is gone)."""
        load = channel.load
        if load == 0 or self.by_name.get(channel.name) is not channel:
            channel.load = max(0, load - 1)
            return
        buckets = self._buckets
        del buckets[load][channel.name]
        load -= 1
        buckets[load][channel.name] = channel
        channel.load = load
        self.total_load -= 1
        if load < self._min:
            self._min = load

    def least_loaded(self):
        buckets = self._buckets
        level = self._min
        while level < len(buckets):
            bucket = buckets[level]
            if not bucket:
                if level == self._min:
                    self._min += 1
                level += 1
                continue
            for channel in bucket.values():
                if level < channel.cap:
                    return channel
            level += 1
        return None

    def free_slots(self):
        """Room for more jobs, summed over channels (O(1); a channel over its cap counts as zero room
        only approximately, which is enough to decide how many jobs to claim)."""
        return max(0, self.total_cap - self.total_load)


def least_loaded(table, job):
    return table.least_loaded()


def round_robin(table, job):
    order = table.order
    n = len(order)
    for _ in range(n):
        channel = order[table.rr_cursor % n]
        table.rr_cursor += 1
        if channel.load < channel.cap:
            return channel
    return None


def random_choice(table, job):
    """As in the original design: any channel at random (skipping full ones)."""
    order = table.order
    if not order:
        return None
    for _ in range(4):
        channel = random.choice(order)
        if channel.load < channel.cap:
            return channel
    return table.least_loaded()


def hashed(table, job):
    """Affinity: the same key (``job.key``, else the job id) goes to the same channel while the
    channel set stays the same; a full channel passes the job to the next one in order."""
    order = table.order
    n = len(order)
    if not n:
        return None
    key = job.key or job.id
    start = zlib.crc32(key.encode()) % n
    for i in range(n):
        channel = order[(start + i) % n]
        if channel.load < channel.cap:
            return channel
    return None


STRATEGIES = {
    "least-loaded": least_loaded,
    "round-robin": round_robin,
    "random": random_choice,
    "hash": hashed,
}


def get_strategy(name):
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})") from None
