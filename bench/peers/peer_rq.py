"""RQ peer: one SimpleWorker (jobs run in the worker process, one at a time, no fork per job).

Namespacing: RQ's keys all start with "rq:" and cannot be prefixed, so RQ gets a
db of its own (run_peers.py gives it 12). Within it the queue name, the worker
name and every job id carry the run's tag, so cleanup deletes exactly those keys;
only RQ's shared index sets (rq:queues, rq:workers) are touched, and RQ removes
our entries itself when the queue is deleted and the worker stops.

RQ has no concurrency setting for one worker: --concurrency is ignored.
"""

import itertools
import sys

from common import Peer, main


def noop():
    """The job. The worker imports it as peer_rq.noop (common.start_worker puts this folder on its path)."""
    return None


def run_worker(args):
    import redis
    from rq import Queue, SimpleWorker

    conn = redis.Redis.from_url(args.redis_url)
    queue = Queue(args.tag, connection=conn)
    worker = SimpleWorker([queue], connection=conn, name=f"{args.tag}_worker")
    # The same loop as `rq worker -w rq.worker.SimpleWorker <queue>`; SIGTERM is its warm shutdown.
    worker.work(logging_level="WARNING", with_scheduler=False)


class RQPeer(Peer):
    concurrency = 1  # a SimpleWorker runs one job at a time

    def __init__(self, args):
        super().__init__(args)
        import redis
        from rq import Queue

        self.conn = redis.Redis.from_url(args.redis_url)
        self.queue = Queue(args.tag, connection=self.conn)
        self.ids = itertools.count()

    def submit(self):
        # By name, because this script runs as __main__ here but is peer_rq in the worker.
        return self.queue.enqueue("peer_rq.noop", job_id=f"{self.args.tag}_{next(self.ids)}", result_ttl=600)

    def wait(self, handle, timeout):
        # Blocks on the job's results stream (XREAD BLOCK); no polling interval.
        result = handle.latest_result(timeout=max(1, int(timeout)))
        if result is None:
            raise TimeoutError(f"no result for job {handle.id} within {timeout} s")
        if result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"job {handle.id} failed: {result.exc_string}")

    def close(self):
        self.queue.delete(delete_jobs=True)
        self.conn.close()


if __name__ == "__main__":
    sys.exit(main("rq", "rq", RQPeer, run_worker, __file__))
