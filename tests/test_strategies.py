"""Each dispatch strategy spreads jobs the way it claims, and the per-channel cap holds."""

from conftest import wait_until
from helpers import Spy, client_for, dispatch_names, start_system, status
from geventsched.keys import Keys


def run_jobs(spawn, r, namespace, redis_url, strategy, specs, channels=4, extra=(), key=None):
    names = dispatch_names(namespace, range(1, channels + 1))
    spy = Spy(redis_url, names, Keys(namespace).result_channel)
    start_system(spawn, r, namespace, worker_args=("--channels", str(channels)),
                 master_args=("--strategy", strategy, *extra))
    wait_until(lambda: status(r, namespace)["channels"] == channels, message="channels")
    client = client_for(redis_url, namespace)
    handles = client.submit_many(specs, key=key)
    results = client.wait(handles, timeout=60)
    client.close()
    spy.close()
    assert len(results) == len(handles)
    return spy, [spy.counts[n.encode()] for n in names]


def test_round_robin_sends_each_channel_the_same_number(spawn, r, namespace, redis_url):
    _, counts = run_jobs(spawn, r, namespace, redis_url, "round-robin", [("noop", (), {})] * 400)
    assert counts == [100, 100, 100, 100]


def test_least_loaded_fills_the_emptiest_channel(spawn, r, namespace, redis_url):
    # One long job holds a channel; later jobs go to the three idle channels, not back to it
    # (round-robin would send the next one there).
    names = dispatch_names(namespace, range(1, 5))
    spy = Spy(redis_url, names, Keys(namespace).result_channel)
    start_system(spawn, r, namespace, worker_args=("--channels", "4"), master_args=("--strategy", "least-loaded"))
    wait_until(lambda: status(r, namespace)["channels"] == 4, message="channels")
    client = client_for(redis_url, namespace)
    long_job, *short = client.submit_many([("sleep", (3,), {})] + [("sleep", (0.05,), {})] * 3)
    client.wait(short, timeout=20)
    later = client.submit_many([("sleep", (0.05,), {})] * 3)
    client.wait(later, timeout=20)
    spy.close()
    busy = spy.channel_of[long_job.id]
    assert spy.counts[busy] == 1
    assert sorted(spy.counts[n.encode()] for n in names) == [1, 2, 2, 2]


def test_random_reaches_every_channel(spawn, r, namespace, redis_url):
    _, counts = run_jobs(spawn, r, namespace, redis_url, "random", [("noop", (), {})] * 400)
    assert sum(counts) == 400
    assert min(counts) > 40  # expectation 100 each; below 40 has probability < 1e-20


def test_hash_keeps_one_key_on_one_channel(spawn, r, namespace, redis_url):
    _, counts = run_jobs(spawn, r, namespace, redis_url, "hash", [("noop", (), {})] * 60, key="customer-7")
    assert sorted(counts) == [0, 0, 0, 60]


def test_prefetch_caps_jobs_in_flight_per_channel(spawn, r, namespace, redis_url):
    spy, counts = run_jobs(spawn, r, namespace, redis_url, "least-loaded", [("sleep", (0.2,), {})] * 12,
                           channels=1, extra=("--prefetch", "3"))
    assert counts == [12]
    assert spy.max_outstanding[dispatch_names(namespace, [1])[0].encode()] == 3


def test_one_worker_serves_500_channels(spawn, r, namespace, redis_url):
    start_system(spawn, r, namespace, worker_args=("--channels", "500"))
    wait_until(lambda: status(r, namespace)["channels"] == 500, message="500 channels")
    numsub = dict(r.pubsub_numsub(*dispatch_names(namespace, [1, 250, 500])))
    assert set(numsub.values()) == {1}
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("echo", (i,), {}) for i in range(3000)])
    results = client.wait(handles, timeout=60)
    client.close()
    assert sorted(result.value for result in results.values()) == list(range(3000))
