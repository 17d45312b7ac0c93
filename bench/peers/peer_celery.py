"""Celery peer: one worker with the gevent pool (-P gevent -c 100), Redis broker and result backend.

Namespacing: every broker and result key carries the run's tag as a global key
prefix (Kombu's ``global_keyprefix``), and the queue is named after the tag, so a
run touches nothing it did not create; cleanup deletes the tagged keys.

The worker runs ``app.worker_main([...])``, which is the ``celery worker`` command
line in-process; it is started with --without-gossip/--without-mingle/--without-heartbeat
so it never talks to other Celery workers that may share the server.
"""

import sys

from common import Peer, main


def build(args):
    """The Celery app and its no-op task, the same on the producer and the worker."""
    from celery import Celery

    prefix = f"{args.tag}:"
    app = Celery("gsbench", broker=args.redis_url, backend=args.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=args.tag,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="gsbench.noop")
    def noop():
        return None

    return app, noop


def run_worker(args):
    # The gevent pool needs the process patched before Celery and Kombu import socket & co.;
    # the celery command does the same when it sees -P gevent.
    from gevent import monkey

    monkey.patch_all()
    app, _ = build(args)
    app.worker_main([
        "worker", "-P", "gevent", "-c", str(args.concurrency), "-Q", args.tag,
        "-n", f"{args.tag}@%h", "-l", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])


class CeleryPeer(Peer):
    def __init__(self, args):
        super().__init__(args)
        self.app, self.noop = build(args)

    def submit(self):
        return self.noop.delay()

    def wait(self, handle, timeout):
        # The Redis result backend delivers the result over pub/sub; no polling interval.
        handle.get(timeout=timeout)

    def close(self):
        self.app.close()


if __name__ == "__main__":
    sys.exit(main("celery", "celery", CeleryPeer, run_worker, __file__))
