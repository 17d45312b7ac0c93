"""One master dispatches per namespace; a second one stands by and takes over when the first dies."""

import signal

from conftest import wait_until
from helpers import Spy, client_for, dispatch_names, start_system
from geventsched.keys import Keys


def test_second_master_stands_by_and_takes_over_after_kill(spawn, r, namespace, redis_url):
    spy = Spy(redis_url, dispatch_names(namespace, [1, 2]))
    (worker,), first = start_system(spawn, r, namespace, worker_args=("--channels", "2"))
    lease = Keys(namespace).master
    wait_until(lambda: r.get(lease), message="the first master's lease")
    holder = r.get(lease)
    second = spawn("master", "--metrics-port", "0")
    wait_until(lambda: "standing by" in second.output(), message="the second master to stand by")
    client = client_for(redis_url, namespace)
    before = client.submit_many([("echo", (i,), {}) for i in range(200)])
    assert len(client.wait(before, timeout=30)) == 200
    assert r.get(lease) == holder

    first.signal(signal.SIGKILL)
    first.wait(10)
    after = client.submit_many([("echo", (i,), {}) for i in range(200)])
    results = client.wait(after, timeout=30)  # the lease runs out (5 s), then the standby dispatches
    client.close()
    spy.close()
    assert sorted(result.value for result in results.values()) == list(range(200))
    assert r.get(lease) not in (None, holder)
    assert sum(spy.counts.values()) == 400  # every job dispatched once: never by both masters


def test_stopped_master_hands_the_lease_over_at_once(spawn, r, namespace, redis_url):
    (worker,), first = start_system(spawn, r, namespace, worker_args=("--channels", "1"))
    holder = wait_until(lambda: r.get(Keys(namespace).master), message="the first master's lease")
    second = spawn("master", "--metrics-port", "0")
    wait_until(lambda: "standing by" in second.output(), message="the second master to stand by")
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert r.get(Keys(namespace).master) != holder  # released, not left to expire
    client = client_for(redis_url, namespace)
    assert client.submit("echo", "next").result(timeout=10) == "next"
    client.close()
    assert second.process.poll() is None
