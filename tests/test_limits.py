"""Rate limits and max_running (limits.py): the limiter's arithmetic on a fixed clock, bad options
refused when a task is declared, and on a real Redis, with master and workers in this process: a limit
holds across every worker and across a master failover, a limited backlog does not hold other tasks
back, and holding a job back costs it no attempt."""

import textwrap
import time
import uuid

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli, wait_until
from geventsched import metrics, transport
from geventsched.builtin import default_registry
from geventsched.config import WorkerConfig
from geventsched.errors import ConfigError
from geventsched.keys import Keys
from geventsched.limits import SLACK, Limit, Limiter, limit_of, limits_from, parse_rate
from geventsched.lookup import job_info
from geventsched.registry import App, load_apps
from geventsched.store import Store
from geventsched.worker import Worker
from test_hardening import _System, system  # noqa: F401  (the fixture)

app = App(prefix="lim")
started = []  # (task, time) of every run in this process
running = {"now": 0, "most": 0}


@app.task(rate_limit="20/s")
def twenty(n):
    started.append(("twenty", time.time()))
    return n


@app.task(rate_limit="10/s")
def ten(n):
    started.append(("ten", time.time()))
    return n


@app.task
def free(n):
    return n


@app.task(max_running=2)
def pair(seconds):
    running["now"] += 1
    running["most"] = max(running["most"], running["now"])
    try:
        gevent.sleep(seconds)
    finally:
        running["now"] -= 1
    return seconds


@pytest.fixture(autouse=True)
def _clean():
    started.clear()
    running.update(now=0, most=0)


def limited_worker(system, channels=("1",), concurrency=20, durability="redis"):
    registry = default_registry()
    registry.add(app)
    worker = Worker(WorkerConfig(channels=tuple(channels), namespace=system.namespace, concurrency=concurrency,
                                 grace=2.0, durability=durability), transport.connect(system.url), registry)
    system.workers.append(worker)
    worker.start()
    return worker


def starts_of(task):
    return sorted(t for name, t in started if name == task)


def most_in_a_window(times, width):
    """The most of ``times`` (sorted) inside any half-open window ``[a, a + width)``."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


# -- parsing and declaring ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("20/s", (20, 1.0)), ("5/m", (5, 60.0)), (" 1 / h ", (1, 3600.0)),
                                            ("100000/s", (100000, 1.0))])
def test_a_rate_is_n_per_second_minute_or_hour(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("bad", ["5/fortnight", "0/s", "x/s", "-1/s", "1.5/s", "5", "/s", "5/", "",
                                 "100001/s", "５/s", 5])
def test_a_malformed_rate_is_refused_when_the_task_is_declared(bad):
    local = App(prefix="bad")

    def f():
        pass

    with pytest.raises(ConfigError, match=r"task 'bad\.f': .*rate_limit"):
        local.task(rate_limit=bad)(f)
    assert not local.tasks


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, 10**7])
def test_a_bad_max_running_is_refused_when_the_task_is_declared(bad):
    local = App(prefix="bad")

    def f():
        pass

    with pytest.raises(ConfigError, match=r"task 'bad\.f': bad max_running"):
        local.task(max_running=bad)(f)
    assert not local.tasks


def test_the_limits_are_what_a_worker_registers():
    assert app.tasks["lim.twenty"].options() == {"timeout": 300.0, "rate_limit": "20/s"}
    assert app.tasks["lim.pair"].options() == {"timeout": 300.0, "max_running": 2}
    assert app.tasks["lim.free"].options() == {"timeout": 300.0}
    # What the master makes of registrations, including ones it cannot read (ignored, never raised).
    assert limits_from({"a": {"rate_limit": "3/m", "max_running": 4}, "b": {"timeout": 1},
                        "c": {"rate_limit": "5/fortnight"}, "d": {"max_running": 0}, "e": "junk"}) == {
        "a": Limit(3, 60.0, 4)}
    assert limit_of({"max_running": 2}) == Limit(None, 1.0, 2)


def test_an_app_module_with_a_bad_limit_fails_to_load_naming_module_and_task(tmp_path, monkeypatch):
    (tmp_path / "badlimits.py").write_text(textwrap.dedent("""
        from geventsched.registry import App
        app = App()

        @app.task(rate_limit="5/fortnight")
        def fetch(url):
            return url
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_apps(["badlimits"])
    message = str(caught.value)
    assert "'badlimits'" in message and "'badlimits.fetch'" in message and "5/fortnight" in message
    assert "\n" not in message


def test_a_worker_whose_app_has_a_bad_limit_says_so_in_one_line_and_touches_nothing(tmp_path, redis_url, r,
                                                                                  namespace):
    (tmp_path / "badlimits.py").write_text("from geventsched.registry import App\napp = App()\n"
                                           "@app.task(max_running=0)\ndef f():\n    pass\n")
    done = run_cli("worker", "--app", "badlimits", "--channels", "1", "--redis-url", redis_url,
                   "--namespace", namespace, env={"PYTHONPATH": str(tmp_path)})
    lines = done.stderr.strip().splitlines()
    # The exit code an app that cannot be loaded has always had (a runtime error: see test_supervisor).
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("geventsched worker: error: cannot load app module 'badlimits': task 'badlimits.f'")
    assert "max_running" in lines[0]
    assert not r.keys(f"{namespace}:*")


# -- the limiter on a fixed clock ---------------------------------------------------------------------

def go(limiter, task, job_id, now):
    """Start the job if the limiter lets it; True if it did."""
    if limiter.may_start(task, job_id, now):
        limiter.start(task, job_id, now)
        return True
    return False


def test_a_rate_is_a_sliding_window_without_bursts():
    limiter = Limiter(lambda job_id: True)
    limiter.configure({"t": Limit(3, 1.0)})
    assert [go(limiter, "t", str(i), 10.0) for i in range(4)] == [True, True, True, False]
    assert SLACK == 0.02  # the spacing's margin for delivery jitter
    assert limiter.allowance("t", 11.0) == 0
    assert limiter.allowance("t", 11.02) == 3  # a second and the margin later
    assert go(limiter, "t", "a", 11.2) and go(limiter, "t", "b", 11.7)
    # Not a bucket refilled every second: at 12.1 the window (11.08, 12.1] holds 11.2 and 11.7.
    assert limiter.allowance("t", 12.1) == 1
    assert limiter.allowance("t", 12.22) == 2 and limiter.allowance("t", 12.72) == 3


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5), period=st.sampled_from([0.5, 1.0, 60.0]),
       gaps=st.lists(st.floats(0, 2.0, allow_nan=False), min_size=1, max_size=60))
def test_no_window_ever_holds_more_than_n_starts_and_no_start_is_refused_for_nothing(n, period, gaps):
    limiter = Limiter(lambda job_id: True)
    limiter.configure({"t": Limit(n, period)})
    now, starts = 1000.0, []
    for i, gap in enumerate(gaps):
        now += gap * period
        recent = sum(1 for s in starts if s > now - period - SLACK)
        assert go(limiter, "t", str(i), now) == (recent < n)
        if recent < n:
            starts.append(now)
    assert most_in_a_window(starts, period + SLACK) <= n


def test_max_running_counts_jobs_until_the_ledger_lets_them_go():
    in_flight = set()
    limiter = Limiter(in_flight.__contains__)
    limiter.configure({"t": Limit(max_running=2)})
    for job_id in ("1", "2"):
        assert go(limiter, "t", job_id, 0.0)
        in_flight.add(job_id)
    assert not limiter.may_start("t", "3", 0.0)
    in_flight.discard("1")  # its result came
    assert go(limiter, "t", "3", 0.0)
    in_flight.add("3")
    assert not limiter.may_start("t", "4", 0.0)
    assert limiter.take_gone() == {"t": ["1"]}  # to leave running:t in Redis


def test_a_tasks_held_jobs_go_first():
    limiter = Limiter(lambda job_id: True)
    limiter.configure({"t": Limit(10, 1.0)})
    limiter.held = {"t": 2}
    assert not limiter.may_start("t", "new", 0.0)  # behind the two held ones
    limiter.held = {"t": 1}
    limiter.released.add("old")  # taken back from the held list
    assert go(limiter, "t", "old", 0.0) and "old" not in limiter.released
    assert limiter.allowance("other", 0.0) > 10**6  # an unlimited task's held jobs all go


def test_the_next_opening_is_when_the_oldest_start_leaves_the_window():
    limiter = Limiter(lambda job_id: True)
    limiter.configure({"t": Limit(2, 1.0), "u": Limit(max_running=1)})
    go(limiter, "t", "1", 5.0)
    go(limiter, "t", "2", 5.4)
    assert limiter.next_opening(5.5) is None  # nothing held: nothing to wake for
    limiter.held = {"t": 3, "u": 1}
    assert limiter.next_opening(5.5) == 5.0 + 1.0 + SLACK  # u waits for a result, not for a time
    assert limiter.next_opening(6.0) == 5.0 + 1.0 + SLACK
    assert limiter.next_opening(6.1) is None  # t may start one now: only room on a channel will help


def test_a_task_at_its_max_running_is_not_waited_for_by_time():
    in_flight = set()
    limiter = Limiter(in_flight.__contains__)
    limiter.configure({"t": Limit(1, 1.0, max_running=1)})
    go(limiter, "t", "1", 5.0)
    in_flight.add("1")
    limiter.held = {"t": 1}
    assert limiter.next_opening(5.5) is None  # when its window opens it is still running: no busy wake-ups
    in_flight.clear()
    assert limiter.next_opening(5.5) == 5.0 + 1.0 + SLACK


def test_jobs_an_earlier_master_left_running_count_until_they_finish():
    limiter = Limiter(lambda job_id: False)
    limiter.configure({"t": Limit(max_running=2)}, inherited={"t": {"7": "tok7", "8": "tok8"}})
    assert not limiter.may_start("t", "9", 0.0)
    assert not limiter.finished("7", "forged")  # a result without the dispatch's token frees nothing
    assert limiter.finished("7", "tok7") and limiter.may_start("t", "9", 0.0)
    limiter.drop_inherited(["8"])  # its dispatch is gone from Redis
    assert limiter.inherited() == [] and sorted(limiter.take_gone()["t"]) == ["7", "8"]


def test_a_changed_limit_keeps_the_window_and_a_removed_one_forgets_it():
    limiter = Limiter(lambda job_id: True)
    limiter.configure({"t": Limit(5, 1.0)}, starts={"t": [0.1, 0.2, 0.3, 0.4]})
    assert limiter.allowance("t", 0.5) == 1  # loaded from Redis
    limiter.configure({"t": Limit(2, 1.0)})
    assert limiter.allowance("t", 0.5) == 0
    assert limiter.new_tasks({"t": Limit(2, 1.0)}) == []
    assert limiter.new_tasks({"t": Limit(2, 1.0, max_running=3), "u": Limit(1, 60.0)}) == ["t", "u"]
    limiter.configure({})
    assert limiter.limits == {} and limiter.allowance("t", 0.5) > 10**6


# -- the state in Redis -------------------------------------------------------------------------------

def test_the_window_and_the_running_jobs_a_master_writes_are_what_the_next_one_reads(r, namespace):
    store = Store(r, Keys(namespace))
    k = store.keys
    publisher = transport.Publisher(r, k.inflight)
    try:
        publisher.send([], store.limit_commands(100.0, [("t", 3, 5, 1.0)], [("u", ["1", "2"])]))
        publisher.send([], store.limit_commands(101.5, [("t", 4, 5, 1.0)], [("u", ["3"])], [("u", ["2"])]))
    finally:
        publisher.close()
    r.lpush(k.rate_for("t"), b"junk")
    assert 0 < r.pttl(k.rate_for("t")) <= 2000  # gone a period after the last start
    r.hset(k.dispatched, mapping={"1": "tok1 100.0 CHANNEL_DISPATCH_1 w", "3": "tok3 101.5 CHANNEL_DISPATCH_2 w"})
    r.sadd(k.running_for("u"), "9")  # finished while no master was there to see it
    starts, inherited = store.limit_state({"t": 5}, ["u"])
    assert starts == {"t": [100.0, 101.5, 101.5, 101.5, 101.5]}  # the newest 5 of 7 starts
    assert inherited == {"u": {"1": "tok1", "3": "tok3"}}
    assert r.smembers(k.running_for("u")) == {b"1", b"3"}


def test_held_jobs_keep_their_order_and_cost_no_attempt(r, namespace):
    store = Store(r, Keys(namespace))
    k = store.keys
    r.hset(k.jobs, mapping={str(i): f'{{"id": "{i}"}}' for i in range(5)})
    r.zadd(k.inflight, {str(i): 10**10 for i in range(4)})  # claimed; job 4 was taken back by the reaper
    back, front = [("2", None), ("3", None), ("4", None)], [("0", None), ("1", None)]
    assert store.hold([("t", False, back), ("t", True, front)]) == [2, 4]
    assert r.lrange(k.held_for("t"), 0, -1) == [b"0", b"1", b"2", b"3"] and r.zcard(k.inflight) == 0
    assert store.held_counts() == {"t": 4}
    assert [(job_id, attempt) for job_id, _, attempt in store.claim_held("t", 3)] == [("0", 1), ("1", 1), ("2", 1)]
    assert r.zcard(k.inflight) == 3 and not r.hlen(k.attempts)
    store.claim_held("t", 5)
    assert store.held_counts() == {} and not r.sismember(k.held, "t")


# -- on Redis, master and workers in this process -------------------------------------------------------

def test_a_rate_of_20_per_second_holds_over_two_workers_and_lets_other_tasks_through(system):
    limited_worker(system, ("1",))
    limited_worker(system, ("2",))
    registry = metrics.new_registry()
    hooks = metrics.MasterMetrics(registry, [])
    master = system.master(hooks=hooks, max_attempts=1)  # a job held back must cost no attempt
    hooks.bind(master)
    client = system.client()
    begin = time.time()
    handles = client.submit_many([("lim.twenty", [i], {}) for i in range(200)])
    others = client.submit_many([("lim.free", [i], {}) for i in range(100)])
    assert [h.result(10) for h in others] == list(range(100))
    assert len(starts_of("twenty")) < 100  # the unlimited ones went while the backlog waited

    def held():
        return sum(s.value for f in registry.collect() for s in f.samples
                   if s.name == "geventsched_master_jobs_held" and s.labels["task"] == "lim.twenty")

    assert held() > 0
    assert [h.result(40) for h in handles] == list(range(200))
    elapsed = time.time() - begin
    assert 9.0 <= elapsed <= 30.0, elapsed  # 200 at 20/s: the last 20 start 9 s after the first
    times = starts_of("twenty")
    # Starts as the workers saw them: 20 per second, allowing a few ms of delivery jitter.
    assert most_in_a_window(times, 0.95) <= 20
    assert held() == 0
    store = Store(system.redis, system.keys)
    info = job_info(store, handles[-1].id)
    assert info["attempts"] == 1 and info["retries"] == 0
    assert system.redis.hlen(system.keys.attempts) == 0 and not system.redis.exists(system.keys.held_for("lim.twenty"))


def test_max_running_never_lets_more_than_n_run_at_once(system):
    limited_worker(system, ("1",))
    limited_worker(system, ("2",))
    system.master()
    client = system.client()
    begin = time.time()
    handles = client.submit_many([("lim.pair", [0.1], {}) for _ in range(12)])
    assert client.submit("echo", "meanwhile").result(5) == "meanwhile"
    assert [h.result(20) for h in handles] == [0.1] * 12
    assert running["most"] == 2
    assert time.time() - begin >= 0.6  # 12 jobs of 0.1 s, two at a time


def test_the_limits_hold_across_a_master_stop_and_a_new_master(system):
    limited_worker(system, ("1",))
    limited_worker(system, ("2",))
    first = system.master()
    client = system.client()
    long_ones = client.submit_many([("lim.pair", [1.5], {}) for _ in range(4)])
    handles = client.submit_many([("lim.ten", [i], {}) for i in range(25)])
    wait_until(lambda: len(starts_of("ten")) == 10 and running["now"] == 2, message="a full window, two running")
    assert len(starts_of("ten")) == 10  # the rest are held back, in Redis
    first.stop()
    taken_over = time.time()
    system.master()
    assert [h.result(20) for h in handles] == list(range(25))
    times = starts_of("ten")
    # The new master went on from the window the first one left: no burst at the take-over.
    assert most_in_a_window(times, 0.95) <= 10
    assert times[10] >= times[0] + 0.95
    assert [h.result(20) for h in long_ones] == [1.5] * 4
    assert running["most"] == 2  # the two the first master left running counted for the second
    assert time.time() - taken_over >= 1.0


def test_jobs_held_for_a_limit_that_is_gone_are_all_sent_by_the_next_master(system):
    client = system.client()
    handles = client.submit_many([("echo", [i], {}) for i in range(30)])
    keys = system.keys
    while system.redis.lmove(keys.intake, keys.held_for("echo"), "LEFT", "RIGHT"):  # as a master left them
        pass
    system.redis.sadd(keys.held, "echo")
    limited_worker(system, ("1",))
    system.master()
    assert [h.result(10) for h in handles] == list(range(30))
    assert not system.redis.exists(keys.held_for("echo"))


def test_without_durability_the_limits_hold_for_one_master(system):
    limited_worker(system, ("1",), durability="none")
    limited_worker(system, ("2",), durability="none")
    system.master(durability="none")
    client = system.client()
    begin = time.time()
    handles = client.submit_many([("lim.ten", [i], {}) for i in range(25)])
    results = client.wait(handles, 20)  # all at once: without durability a result is only announced
    assert sorted(r.value for r in results.values()) == list(range(25))
    assert time.time() - begin >= 2.0
    assert most_in_a_window(starts_of("ten"), 0.95) <= 10


@pytest.fixture
def cluster_system(redis_cluster):
    """The ``system`` fixture on a 3-primary Redis Cluster (scripts, held lists and the limits' state
    must stay on our keys' one slot)."""
    made = _System(redis_cluster, f"gs-test-{uuid.uuid4().hex[:12]}")
    yield made
    made.close()
    Store.for_namespace(made.redis, made.namespace).delete_namespace()
    made.redis.close()


def test_limits_hold_on_a_redis_cluster(cluster_system):
    system = cluster_system
    limited_worker(system, ("1",))
    limited_worker(system, ("2",))
    system.master()
    client = system.client()
    begin = time.time()
    handles = client.submit_many([("lim.ten", [i], {}) for i in range(25)])
    pairs = client.submit_many([("lim.pair", [0.1], {}) for _ in range(6)])
    assert [h.result(20) for h in handles] == list(range(25)) and [h.result(20) for h in pairs] == [0.1] * 6
    assert time.time() - begin >= 2.0
    assert most_in_a_window(starts_of("ten"), 0.95) <= 10 and running["most"] == 2
    assert system.redis.exists(system.keys.rate_for("lim.ten"))
