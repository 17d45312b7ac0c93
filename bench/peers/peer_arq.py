"""arq peer: one asyncio worker running up to 100 jobs at once (max_jobs=100).

Namespacing: arq's keys start with "arq:" and cannot be prefixed, so arq gets a
db of its own (run_peers.py gives it 13). Within it the queue name and every job
id carry the run's tag, so cleanup deletes exactly this run's keys.

Polling: an arq worker looks for new jobs every ``poll_delay`` (default 0.5 s) and
``Job.result()`` looks for the result every ``poll_delay`` (default 0.5 s). With
the defaults a lone job takes 0.5-1 s and one worker tops out near
max_jobs / 0.5 s, so both are set to POLL_DELAY below; arq's own documentation
names poll_delay as the knob for this. The latency figures are therefore a best
case for arq, bounded below by the two polls.
"""

import asyncio
import itertools
import sys
import time

from common import Peer, main

POLL_DELAY = 0.002  # seconds, for the worker's queue polls and the producer's result polls


async def noop(ctx):
    return None


def redis_settings(url):
    from arq.connections import RedisSettings

    return RedisSettings.from_dsn(url)


def run_worker(args):
    from arq.worker import Worker

    # What `arq peer_arq.WorkerSettings` would build; SIGTERM is handled by the worker.
    worker = Worker(
        functions=[noop],
        redis_settings=redis_settings(args.redis_url),
        queue_name=args.tag,
        max_jobs=args.concurrency,
        poll_delay=POLL_DELAY,
        keep_result=600,
    )
    worker.run()


class ArqPeer(Peer):
    def __init__(self, args):
        super().__init__(args)
        from arq import create_pool

        # arq's client is asyncio only: keep one loop for the producer's whole run.
        self.loop = asyncio.new_event_loop()
        self.redis = self.loop.run_until_complete(
            create_pool(redis_settings(args.redis_url), default_queue_name=args.tag))
        self.ids = itertools.count()

    async def _submit(self):
        return await self.redis.enqueue_job("noop", _job_id=f"{self.args.tag}_{next(self.ids)}")

    async def _wait(self, job, timeout):
        await job.result(timeout=timeout, poll_delay=POLL_DELAY)

    async def _throughput(self, jobs):
        start = time.perf_counter()
        handles = [await self._submit() for _ in range(jobs)]
        for job in handles:
            await self._wait(job, self.args.result_timeout)
        return time.perf_counter() - start

    async def _round_trips(self, count, timeout):
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            await self._wait(await self._submit(), timeout)
            samples.append(time.perf_counter() - t0)
        return samples

    def throughput(self, jobs):
        return self.loop.run_until_complete(self._throughput(jobs))

    def round_trips(self, count, timeout):
        return self.loop.run_until_complete(self._round_trips(count, timeout))

    def close(self):
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()


if __name__ == "__main__":
    sys.exit(main("arq", "arq", ArqPeer, run_worker, __file__))
