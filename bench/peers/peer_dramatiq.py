"""Dramatiq peer: one worker process on gevent with 100 greenlets, Redis broker, Results middleware.

Namespacing: the broker's ``namespace`` and the queue name are the run's tag, so
every broker key carries it; cleanup deletes them. Result keys are hashes of the
message key (no readable prefix), so the producer deletes the ones it made itself
once the measurements are done (they would expire after 10 minutes anyway).

The worker is what one process of ``dramatiq-gevent --processes 1 --threads 100``
runs: gevent's monkey patching, then ``dramatiq.Worker(broker, worker_threads=100)``.
Done in-process here so the broker can be built from this run's settings rather
than at the import of a module.
"""

import sys
import time

from common import Peer, main


def build(args):
    """Broker, result backend and the no-op actor, the same on the producer and the worker."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    backend = RedisBackend(url=args.redis_url, namespace=f"{args.tag}_results")
    broker = RedisBroker(url=args.redis_url, namespace=args.tag)
    broker.add_middleware(Results(backend=backend))

    def noop():
        return None

    # The broker is passed explicitly instead of through dramatiq.set_broker's global.
    actor = dramatiq.actor(noop, broker=broker, actor_name="noop", queue_name=args.tag, store_results=True)
    return broker, backend, actor


def run_worker(args):
    from gevent import monkey

    monkey.patch_all()
    import dramatiq

    broker, _, _ = build(args)
    worker = dramatiq.Worker(broker, queues={args.tag}, worker_threads=args.concurrency)
    worker.start()
    # Work happens in the worker's greenlets; SIGTERM from the producer ends the process.
    while True:
        time.sleep(3600)


class DramatiqPeer(Peer):
    def __init__(self, args):
        super().__init__(args)
        self.broker, self.backend, self.actor = build(args)
        self.sent = []

    def submit(self):
        message = self.actor.send()
        self.sent.append(message)
        return message

    def wait(self, handle, timeout):
        # A blocking wait on the result key (BLPOP-style); no polling interval.
        handle.get_result(backend=self.backend, block=True, timeout=int(timeout * 1000))

    def close(self):
        keys = [self.backend.build_message_key(m) for m in self.sent]
        for i in range(0, len(keys), 500):
            self.backend.client.delete(*keys[i:i + 500])
        self.broker.close()


if __name__ == "__main__":
    sys.exit(main("dramatiq", "dramatiq", DramatiqPeer, run_worker, __file__))
