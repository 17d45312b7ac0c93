"""Huey peer: one consumer with 100 greenlet workers (`huey_consumer -k greenlet -w 100`), Redis storage.

Namespacing: every Huey key is derived from the instance's ``name``, which is the
run's tag, so cleanup deletes exactly this run's keys.

Results: Huey does not store a None result unless ``store_none=True``, so it is set
here (the no-op returns None, as in every peer). ``Result.get(blocking=True)`` polls
for the result, sleeping 0.1 s at first and longer after; the producer caps the
sleep at RESULT_POLL (Huey's own ``max_delay`` argument) so that the polling does
not dominate the figures. The latency figures are therefore a best case for Huey.
"""

import sys

from common import Peer, main

RESULT_POLL = 0.002  # seconds between result polls at the producer


def build(args):
    """The Huey instance and its no-op task, the same on the producer and the consumer."""
    from huey import RedisHuey
    from redis import ConnectionPool

    # Every greenlet worker holds a connection in BRPOP. redis-py 8 caps a pool at 100
    # connections by default; past the cap Huey's dequeue fails at once without yielding,
    # and the consumer spins on one greenlet forever. So the pool is sized explicitly.
    pool = ConnectionPool.from_url(args.redis_url, max_connections=args.concurrency + 20)
    huey = RedisHuey(name=args.tag, connection_pool=pool, store_none=True)

    # An explicit task name, so that it does not depend on how this file was imported.
    @huey.task(name="noop")
    def noop():
        return None

    return huey, noop


def run_worker(args):
    # Huey expects the program to monkey-patch before it starts greenlet workers, as the
    # huey_consumer docs say; the consumer then checks that it was done.
    from gevent import monkey

    monkey.patch_all()
    import logging

    logging.basicConfig(level=logging.WARNING)
    huey, _ = build(args)
    # The same as `huey_consumer peer_huey.huey -k greenlet -w 100`; SIGTERM stops it.
    huey.create_consumer(workers=args.concurrency, worker_type="greenlet").run()


class HueyPeer(Peer):
    def __init__(self, args):
        super().__init__(args)
        self.huey, self.noop = build(args)

    def submit(self):
        return self.noop()

    def wait(self, handle, timeout):
        handle.get(blocking=True, timeout=timeout, max_delay=RESULT_POLL)


if __name__ == "__main__":
    sys.exit(main("huey", "huey", HueyPeer, run_worker, __file__))
