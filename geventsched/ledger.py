"""The master's in-flight ledger: which dispatch holds which job, where, with what token, until when.

One entry per job published and not yet answered, for both durability modes. Redis keeps the durable
truth (``store.py``: the in-flight set and the dispatch records); this is the master's working copy,
which it needs per result at memory speed:

* flow control: each entry holds one slot of its channel (``ChannelTable``) and its message's bytes in
  its subscriber's window, so a worker's pub/sub output buffer cannot overflow;
* authenticity: a result frees its slot only when it carries the entry's dispatch ``token``, so a
  stranger's publish on CHANNEL_RESULT cannot make the master overrun a worker;
* expiry: without durability nothing in Redis reaps a dispatch that never answers, so entries expire
  here at their deadline (``expired``, a scan the reaper runs once a second) and their slots come
  back.

The subscriber of an entry is fixed when it is made (the worker id, or the channel name for workers
that never register): a channel that changes owner later does not move bytes between windows.
"""

import os
from collections import defaultdict
from dataclasses import dataclass

from geventsched.dispatch import Channel
from geventsched.protocol import Job


@dataclass(slots=True)
class Dispatch:
    job: Job
    channel: Channel
    subscriber: str
    size: int
    token: str
    deadline: float


class Ledger:
    def __init__(self, table):
        self.table = table
        self._entries = {}  # job id -> Dispatch
        self._bytes = defaultdict(int)  # subscriber -> bytes in flight

    def __len__(self):
        return len(self._entries)

    def ids(self):
        return list(self._entries)

    def get(self, job_id):
        return self._entries.get(job_id)

    def bytes(self, subscriber):
        return self._bytes.get(subscriber, 0)

    def add(self, job, channel, size, token, deadline):
        subscriber = channel.worker or channel.name
        self._entries[job.id] = entry = Dispatch(job, channel, subscriber, size, token, deadline)
        self.table.acquire(channel)
        self._bytes[subscriber] += size
        return entry

    def pop(self, job_id):
        """Forget a dispatch: its slot and its bytes are free again. Returns it, or None."""
        entry = self._entries.pop(job_id, None)
        if entry is not None:
            self.table.release(entry.channel)
            left = self._bytes[entry.subscriber] - entry.size
            if left > 0:
                self._bytes[entry.subscriber] = left
            else:
                del self._bytes[entry.subscriber]
        return entry

    def held_by(self, worker_id):
        return [job_id for job_id, entry in self._entries.items() if entry.subscriber == worker_id]

    def expired(self, now):
        """Pop and return the entries whose deadline has passed."""
        return [self.pop(job_id) for job_id in [job_id for job_id, entry in self._entries.items()
                                                if entry.deadline <= now]]

    def clear(self):
        """Forget everything (a master that lost its lease: the next one owns these jobs now)."""
        for job_id in list(self._entries):
            self.pop(job_id)


def new_token():
    """A dispatch token: 64 random bits, drawn once per dispatched batch (a job's dispatch record
    binds it to the job), so it cannot be guessed by someone who did not see the dispatch."""
    return os.urandom(8).hex()
