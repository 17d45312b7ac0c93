"""Results a client heard announced before anything waited for them, kept for their waits.

Both clients (``client.py``, ``aioreplies.py``) listen on a reply channel of their own, and hear
results as their jobs finish, ahead of the waits for them (a producer waits for its jobs in its own
order, or late). ``Heard`` keeps those announcements, at most ``HEARD_LIMIT``: the oldest go first
(their results stay in Redis until their TTL).

``epoch`` counts the times an announcement may have gone by unheard: each new subscription
(``listening``), and each announcement dropped past the limit. A job submitted to reply here in the
current epoch has its announcement on the channel or kept here, so its wait reads nothing from
Redis; any other job's wait first reads the stored result.
"""

from collections import OrderedDict

#: Announcements kept at most; the oldest go first.
HEARD_LIMIT = 100_000


class Heard:
    def __init__(self):
        self.epoch = 0
        self._kept = OrderedDict()  # job id -> (announced Result, of a signed frame?)

    def listening(self):
        """Subscribed (again): what was announced meanwhile went by unheard."""
        self.epoch += 1

    def keep(self, results, sure):
        """Keep announced ``results``; ``sure``: they came in a signed frame, and are never replaced
        by an unsigned announcement for the same job."""
        kept = self._kept
        for result in results:
            if sure or result.id not in kept:
                kept[result.id] = (result, sure)
        if len(kept) > HEARD_LIMIT:
            self.epoch += 1
            while len(kept) > HEARD_LIMIT:
                kept.popitem(last=False)

    def pop(self, job_id):
        """``(Result, sure)`` kept for ``job_id``, taken out; ``(None, False)`` if none is."""
        return self._kept.pop(job_id, (None, False))

    def take(self, ids):
        """``[(Result, sure), ...]`` kept for any of ``ids``, taken out."""
        kept = self._kept
        return [kept.pop(job_id) for job_id in sorted(ids) if job_id in kept]
