"""How long to wait before trying again something that keeps failing (Redis away, a connection lost).

Every retry loop of ours waits ``first`` seconds after the first failure, twice that after the next,
and so on up to ``cap``, and starts again from ``first`` once a try succeeds: short enough that a
blip costs a tenth of a second, long enough that an outage does not turn into a busy loop.
"""


class Backoff:
    """The delays of one retry loop. ``next()`` gives the wait before the coming try and doubles the
    one after it (up to ``cap``); ``reset()`` after a success; ``delay`` is the coming wait, unchanged."""

    def __init__(self, first=0.1, cap=5.0, factor=2.0):
        self.first, self.cap, self.factor = first, cap, factor
        self.delay = first

    def next(self):
        delay = self.delay
        self.delay = min(delay * self.factor, self.cap)
        return delay

    def reset(self):
        self.delay = self.first
