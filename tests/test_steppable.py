"""Master and worker driven step by step in the test's own greenlet (``open`` + ``run_once``): no loop
runs on its own, so each step's effect can be checked as it happens."""

import json

import pytest

from geventsched import transport
from geventsched.client import Client
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.errors import GeventschedError
from geventsched.keys import Keys
from geventsched.master import Master
from geventsched.builtin import default_registry
from geventsched.worker import Worker


@pytest.fixture
def stepped(redis_url, namespace):
    worker = Worker(WorkerConfig(channels=("1",), namespace=namespace), transport.connect(redis_url),
                    default_registry())
    master = Master(MasterConfig(namespace=namespace), transport.connect(redis_url))
    client = Client(transport.connect(redis_url), namespace)
    assert worker.open() and master.open()
    yield master, worker, client
    client.close()
    master.stop()
    worker.stop(0.5)


def test_a_job_goes_from_submit_to_result_one_step_at_a_time(stepped, r, namespace):
    master, worker, client = stepped
    keys = Keys(namespace)
    handle = client.submit("echo", {"step": 1})
    assert r.llen(keys.intake) == 1
    master.run_once()  # claims and dispatches: in flight, with its dispatch record
    assert len(master.ledger) == 1 and r.hexists(keys.dispatched, handle.id)
    assert worker.run_once(timeout=5) == 1  # receives, runs, records
    assert json.loads(r.get(keys.result(handle.id)))["value"] == {"step": 1}
    master.run_once(timeout=5)  # takes the announcement: the slot is free
    assert len(master.ledger) == 0
    assert handle.result(timeout=5) == {"step": 1}


def test_a_forged_result_read_by_a_stepped_master_frees_nothing(stepped, r, namespace):
    master, worker, client = stepped
    keys = Keys(namespace)
    handle = client.submit("echo", 2)
    master.run_once()
    forged = {"v": 1, "id": handle.id, "task": "echo", "status": "ok", "value": "forged", "tok": "guess"}
    r.publish(keys.result_channel, json.dumps(forged))
    master.run_once(timeout=5)
    assert len(master.ledger) == 1  # still waiting for the real one
    worker.run_once(timeout=5)
    master.run_once(timeout=5)
    assert len(master.ledger) == 0 and handle.result(timeout=5) == 2


def test_a_stepped_master_that_lost_its_lease_says_so(stepped, r, namespace):
    master, _, _ = stepped
    r.set(Keys(namespace).master, "another-master")
    with pytest.raises(GeventschedError, match="another master"):
        master.run_once()
