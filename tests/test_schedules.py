"""Periodic schedules (schedules.py, lua/fire.lua): fire times across DST changes with a fixed clock;
each fire time fires at most once, also with two masters' schedulers overlapping; after an outage a
schedule fires once, then follows its rule; in-process master and worker run fired jobs; the
``schedule`` command; ``@app.periodic``; and one real failover (kill -9 of the active master)."""

import json
import logging
import signal
import textwrap
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import gevent
import pytest
import redis

from conftest import wait_until, workers_registered
from geventsched import cli, metrics, transport
from geventsched.builtin import default_registry
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.errors import ConfigError
from geventsched.hooks import MasterHooks
from geventsched.keys import Keys
from geventsched.lookup import job_info
from geventsched.master import Master
from geventsched.registry import App, Registry
from geventsched.schedules import Schedule, ScheduleError, Scheduler, ScheduleState
from geventsched.store import Store
from geventsched.worker import Worker

NEW_YORK, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")


def local(zone, *fields, fold=0):
    """Unix seconds of a local wall-clock time (``fold=1``: the second of a repeated hour)."""
    return datetime(*fields, fold=fold, tzinfo=zone).timestamp()


def walls(times, zone):
    return [datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M %Z") for t in times]


def cron(expr, tz="UTC", name="c", task="echo"):
    return Schedule(name, task, [], {}, cron=expr, tz=tz)


def every(seconds, name="e", task="echo", args=()):
    return Schedule(name, task, list(args), {}, every=seconds)


class Heard(MasterHooks):
    def __init__(self):
        self.fired, self.missed = [], []

    def on_schedule_fired(self, name, registered, lateness):
        self.fired.append((name, registered, lateness))

    def on_schedule_missed(self, name, count):
        self.missed.append((name, count))


@pytest.fixture
def store(r, namespace):
    return Store.for_namespace(r, namespace)


def fired_jobs(store):
    """``[(fire time, schedule, job id)]`` of the jobs fired into the intake, in intake order."""
    ids = [i.decode() for i in store.client.lrange(store.keys.intake, 0, -1)]
    records = [json.loads(store.client.hget(store.keys.jobs, i)) for i in ids]
    return [(doc["fire"], doc["sched"], doc["id"]) for doc in records]


def run_clock(scheduler, start, stop, step):
    """Call ``fire_due`` at every ``step`` seconds of a fixed clock from ``start`` to ``stop``."""
    t = start
    while t <= stop:
        scheduler.fire_due(now=t)
        t += step


# -- fire times across DST, fixed clock ------------------------------------------------------------

@pytest.mark.parametrize("zone, expr, start, fired", [
    # America/New_York springs forward on 2026-03-08 at 02:00 (to 03:00): 02:30 does not exist that day.
    (NEW_YORK, "30 2 * * *", (2026, 3, 7), ["2026-03-07 02:30 EST", "2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"]),
    # Europe/Berlin springs forward on 2026-03-29 at 02:00 (to 03:00).
    (BERLIN, "15 2 * * *", (2026, 3, 28), ["2026-03-28 02:15 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:15 CEST"]),
])
def test_spring_forward_a_skipped_local_time_fires_once_at_the_next_valid_time(store, zone, expr, start, fired):
    scheduler = Scheduler(store)
    begin = local(zone, *start, 0, 0)
    scheduler.add(cron(expr, zone.key), now=begin)
    run_clock(scheduler, begin, begin + 2.5 * 86400, 120)
    assert walls([fire for fire, _, _ in fired_jobs(store)], zone) == fired


@pytest.mark.parametrize("zone, expr, day, fired, following", [
    # New York falls back on 2026-11-01 at 02:00 EDT (to 01:00 EST): 01:30 happens twice.
    (NEW_YORK, "30 1 * * *", (2026, 11, 1), "2026-11-01 01:30 EDT", "2026-11-02 01:30 EST"),
    # Berlin falls back on 2026-10-25 at 03:00 CEST (to 02:00 CET): 02:30 happens twice.
    (BERLIN, "30 2 * * *", (2026, 10, 25), "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"),
])
def test_fall_back_a_repeated_local_time_fires_once(store, zone, expr, day, fired, following):
    scheduler = Scheduler(store)
    scheduler.add(cron(expr, zone.key), now=local(zone, *day, 0, 0))
    run_clock(scheduler, local(zone, *day, 0, 0), local(zone, *day, 6, 0), 30)
    assert walls([fire for fire, _, _ in fired_jobs(store)], zone) == [fired]
    assert walls([scheduler.get("c").next], zone) == [following]


def test_the_fire_time_after_a_moment_in_the_repeated_hour_is_the_next_day():
    schedule = cron("30 1 * * *", "America/New_York")
    after = local(NEW_YORK, 2026, 11, 1, 1, 15, fold=1)  # 01:15 EST: 01:30 EDT has passed already
    assert walls([schedule.next_after(after)], NEW_YORK) == ["2026-11-02 01:30 EST"]


def test_a_rule_with_a_wildcard_hour_follows_real_time_through_the_repeated_hour():
    schedule = cron("0 * * * *", "America/New_York")
    start = local(NEW_YORK, 2026, 11, 1, 0, 30)
    times = [t for t, _ in zip(schedule.fire_times(start), range(4))]
    assert walls(times, NEW_YORK) == ["2026-11-01 01:00 EDT", "2026-11-01 01:00 EST", "2026-11-01 02:00 EST",
                                      "2026-11-01 03:00 EST"]
    assert [b - a for a, b in zip(times, times[1:])] == [3600] * 3


def test_every_fires_at_the_multiples_of_its_period_since_the_epoch():
    schedule = every(15)
    assert schedule.next_after(1000) == 1005 and schedule.next_after(1005) == 1020
    assert schedule.next_after(1004.9) == 1005
    assert schedule.catch_up(1005, 1061.5) == (1050, 3)


@pytest.mark.parametrize("rule, message", [
    (dict(cron="61 * * * *"), "bad cron expression"),
    (dict(cron="* * * *"), "5 fields"),
    (dict(cron="0 * * * * *"), "5 fields"),
    (dict(cron="0 0 31 2 *"), "bad cron expression"),
    (dict(cron="0 3 * * *", tz="Mars/Olympus_Mons"), "unknown time zone"),
    (dict(cron="0 3 * * *", tz="../../etc/passwd"), "unknown time zone"),
    (dict(every=0), "at least 1"),
    (dict(every=-5), "at least 1"),
    (dict(every=1.5), "whole number"),
    (dict(every=60, tz="Europe/Berlin"), "cron rules only"),
    (dict(), "exactly one rule"),
    (dict(every=5, cron="* * * * *"), "exactly one rule"),
])
def test_a_schedule_that_cannot_work_is_refused(rule, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule("s", "echo", [], {}, **rule)


# -- firing: at most once per fire time ---------------------------------------------------------------

def test_after_an_outage_a_schedule_fires_once_for_the_latest_missed_time_then_follows_its_rule(store):
    hooks = Heard()
    scheduler = Scheduler(store, hooks)
    store.register_tasks({"echo": {"timeout": 5}})  # as a worker does
    scheduler.add(every(10, args=["x"]), now=1000)
    assert scheduler.get("e").next == 1010
    assert scheduler.fire_due(now=1009.9) == 1010 and fired_jobs(store) == []
    assert scheduler.fire_due(now=1055.5) == 1060  # 1010 .. 1050 were due: one job, for 1050
    assert [(fire, name) for fire, name, _ in fired_jobs(store)] == [(1050, "e")]
    assert hooks.missed == [("e", 4)] and hooks.fired == [("e", True, 5.5)]
    assert scheduler.fire_due(now=1059) == 1060  # nothing more until the next fire time
    scheduler.fire_due(now=1060.25)
    scheduler.fire_due(now=1070.5)
    assert [fire for fire, _, _ in fired_jobs(store)] == [1050, 1060, 1070]
    state = scheduler.get("e")
    assert (state.last, state.next, state.job) == (1070, 1080, fired_jobs(store)[-1][2])
    job = json.loads(store.client.hget(store.keys.jobs, state.job))
    assert (job["task"], job["args"], job["sched"], job["fire"]) == ("echo", ["x"], "e", 1070)


def test_a_cron_schedule_catches_up_once_after_an_outage(store):
    hooks = Heard()
    scheduler = Scheduler(store, hooks)
    scheduler.add(cron("*/5 * * * *"), now=local(BERLIN, 2026, 1, 1, 12, 0))
    scheduler.fire_due(now=local(BERLIN, 2026, 1, 1, 13, 2))  # 11:05 .. 12:00 UTC due: 12
    assert walls([fire for fire, _, _ in fired_jobs(store)], BERLIN) == ["2026-01-01 13:00 CET"]
    assert hooks.missed == [("c", 11)]
    assert walls([scheduler.get("c").next], BERLIN) == ["2026-01-01 13:05 CET"]


def test_two_masters_schedulers_overlapping_never_fire_a_time_twice(redis_url, namespace, store):
    # Four schedulers on their own connections call fire_due at the same moments of a fixed clock,
    # concurrently: reads and scripts interleave at random.
    clients = [transport.connect(redis_url) for _ in range(4)]
    schedulers = [Scheduler(Store.for_namespace(c, namespace)) for c in clients]
    schedulers[0].add(every(1, name="a"), now=1000)
    schedulers[0].add(every(3, name="b"), now=1000)
    t = 1000.0
    while t < 1060:
        gevent.joinall([gevent.spawn(s.fire_due, t + i * 0.01) for i, s in enumerate(schedulers)], raise_error=True)
        t += 0.5
    fired = fired_jobs(store)
    for name, period in (("a", 1), ("b", 3)):
        times = [fire for fire, sched, _ in fired if sched == name]
        assert times == [t for t in range(1001, 1060) if t % period == 0]  # each once, none lost
    for c in clients:
        c.close()


def test_a_master_that_read_the_record_before_another_fired_fires_nothing(store):
    active, stale = Scheduler(store), Scheduler(store)
    active.add(every(5), now=1000)
    record = store.client.hget(store.keys.schedules, "e")
    active.fire_due(now=1005.1)
    # The stale master fires from the record it read before: the script refuses (it changed).
    assert stale._fire_one(ScheduleState.decode("e", record), record, "stale-1", 1005.2, True) is None
    assert [fire for fire, _, _ in fired_jobs(store)] == [1005]
    assert store.client.hget(store.keys.jobs, "stale-1") is None


def test_a_fire_time_claimed_already_fires_nothing_and_moves_on(store):
    scheduler = Scheduler(store)
    scheduler.add(every(5), now=1000)
    store.client.set(store.keys.fire_prefix + "e:1005", "other-job", ex=60)  # claimed by someone else
    assert scheduler.fire_due(now=1006) == 1010
    assert fired_jobs(store) == [] and scheduler.get("e").next == 1010
    scheduler.fire_due(now=1010)
    assert [fire for fire, _, _ in fired_jobs(store)] == [1010]
    assert store.client.get(store.keys.fire_prefix + "e:1010").decode() == scheduler.get("e").job


def test_adding_the_same_schedule_again_keeps_its_state_and_a_new_rule_starts_after_the_last_fire(store):
    scheduler = Scheduler(store)
    assert scheduler.add(every(10), now=1000) == "added"
    scheduler.fire_due(now=1010)
    # A process that loads the app again while the master was away: the due fire is not lost.
    assert scheduler.add(every(10), now=1100) == "unchanged"
    assert scheduler.get("e").next == 1020
    assert scheduler.add(every(7), now=1003) == "replaced"  # a clock behind: never before the last fire
    state = scheduler.get("e")
    assert (state.next, state.last) == (1015, 1010) and state.schedule.every == 7
    assert scheduler.remove("e") and not scheduler.remove("e") and scheduler.list() == []


def test_an_unreadable_record_is_skipped_and_said_once_and_others_still_fire(store, caplog):
    scheduler = Scheduler(store)
    scheduler.add(every(5), now=1000)
    store.client.hset(store.keys.schedules, "junk", b"{not json")
    bad_rule = {"task": "echo", "cron": "99 * * * *", "tz": "UTC", "next": 1}
    store.client.hset(store.keys.schedules, "bad-rule", json.dumps(bad_rule))
    with caplog.at_level(logging.WARNING, logger="geventsched.schedules"):
        scheduler.fire_due(now=1005)
        scheduler.fire_due(now=1010)
    assert [fire for fire, _, _ in fired_jobs(store)] == [1005, 1010]
    assert caplog.text.count("'junk' has an unreadable record") == 1
    assert caplog.text.count("'bad-rule' has an unreadable record") == 1
    assert [s.schedule.name for s in scheduler.list()] == ["e"]
    assert scheduler.next_due() == 1015


def test_a_schedule_of_an_unregistered_task_fires_and_says_so_once_in_log_and_metrics(store, caplog):
    registry = metrics.new_registry()
    hooks = metrics.MasterMetrics(registry, ["echo"])
    scheduler = Scheduler(store, hooks)
    store.register_tasks({"echo": {"timeout": 5}})
    scheduler.add(every(1, name="known", task="echo"), now=1000)
    scheduler.add(every(1, name="unknown", task="no.such.task"), now=1000)
    with caplog.at_level(logging.WARNING, logger="geventsched.schedules"):
        for t in (1001, 1002, 1003):
            scheduler.fire_due(now=t + 0.2)
    assert len(fired_jobs(store)) == 6  # fired all the same: a worker may register the task later
    assert caplog.text.count("no worker has registered task 'no.such.task'") == 1

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert value("geventsched_master_schedule_fires_total", task_registered="true") == 3
    assert value("geventsched_master_schedule_fires_total", task_registered="false") == 3
    assert value("geventsched_master_schedule_lateness_seconds_count") == 6
    assert value("geventsched_master_schedule_missed_total") == 0


# -- a master and a worker in this process ------------------------------------------------------------

@pytest.fixture
def stepped(redis_url, namespace):
    registry = metrics.new_registry()
    hooks = metrics.MasterMetrics(registry, ["echo"])
    worker = Worker(WorkerConfig(channels=("1",), namespace=namespace), transport.connect(redis_url),
                    default_registry())
    master = Master(MasterConfig(namespace=namespace), transport.connect(redis_url), hooks=hooks)
    hooks.bind(master)
    assert worker.open() and master.open()
    yield master, worker, registry
    master.stop()
    worker.stop(0.5)


def test_an_in_process_master_fires_a_schedule_and_the_worker_runs_its_jobs(stepped, r, namespace):
    master, worker, registry = stepped
    keys = Keys(namespace)
    scheduler = Scheduler(Store.for_namespace(r, namespace))
    scheduler.add(every(1, name="tick", args=["t"]), now=time.time() - 10)  # due now: a missed stretch
    results = []
    deadline = time.monotonic() + 10
    while len(results) < 2 and time.monotonic() < deadline:
        master.run_once(timeout=0.05)  # fires what is due (housekeeping), claims and dispatches
        worker.run_once(timeout=0.05)
        master.run_once(timeout=0.05)
        state = scheduler.get("tick")
        if state.job and state.job not in [job_id for job_id, _ in results]:
            stored = r.get(keys.result(state.job))
            if stored is not None:
                results.append((state.job, json.loads(stored)["value"]))
    assert [value for _, value in results] == ["t", "t"]
    info = job_info(Store.for_namespace(r, namespace), results[-1][0])  # what `geventsched job ID` shows
    assert (info["state"], info["schedule"], info["result"]) == ("finished", "tick", "t")
    assert info["fire_time"] == scheduler.get("tick").last
    assert registry.get_sample_value("geventsched_master_schedule_fires_total", {"task_registered": "true"}) >= 2
    assert registry.get_sample_value("geventsched_master_schedule_missed_total") >= 8
    assert registry.get_sample_value("geventsched_master_jobs_scheduled") == 0
    assert registry.get_sample_value("geventsched_master_schedule_overdue_seconds") < 5


# -- @app.periodic ----------------------------------------------------------------------------------

def test_app_periodic_declares_schedules_that_a_starting_process_registers(r, namespace):
    app = App(prefix="ops")

    @app.periodic(cron="0 3 * * *", tz="Europe/Berlin")
    def report():
        return "done"

    @app.periodic(every=60, name="ping-db", args=["primary"])
    @app.task(timeout=5)
    def ping(db):
        return db

    registry = Registry([app])
    assert set(registry.tasks) == {"ops.report", "ops.ping"} and registry.tasks["ops.ping"].timeout == 5
    assert registry.schedules["ops.report"] == cron("0 3 * * *", "Europe/Berlin", name="ops.report",
                                                    task="ops.report")
    assert registry.schedules["ping-db"] == Schedule("ping-db", "ops.ping", ["primary"], {}, every=60)

    args = cli.build_parser().parse_args(["worker", "--namespace", namespace])
    cli._register_schedules(r, args, registry)
    cli._register_schedules(r, args, registry)  # a second process: unchanged
    listed = {s.schedule.name: s for s in Scheduler(Store.for_namespace(r, namespace)).list()}
    assert set(listed) == {"ops.report", "ping-db"} and listed["ping-db"].schedule.args == ["primary"]


def test_app_periodic_refuses_a_bad_rule_at_import_and_a_name_declared_twice():
    app = App(prefix="x")
    with pytest.raises(ConfigError, match="5 fields"):
        app.periodic(cron="every day")(lambda: None)
    with pytest.raises(ConfigError, match="unknown time zone"):
        app.periodic(cron="0 3 * * *", tz="Berlin")(lambda: None)
    app.periodic(every=5, name="one")(lambda: None)
    with pytest.raises(ConfigError, match="declared twice"):
        app.periodic(every=6, name="one")(lambda: 1)


# -- the schedule command ---------------------------------------------------------------------------

def schedule_cli(capsys, redis_url, namespace, *args):
    try:
        code = cli.main(["schedule", args[0], "--redis-url", redis_url, "--namespace", namespace, *args[1:]])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_schedule_add_list_and_remove(capsys, redis_url, namespace):
    code, out, _ = schedule_cli(capsys, redis_url, namespace, "add", "tick", "echo", '"t"', "--every", "1")
    assert code == 0 and out.startswith("schedule tick added; next fire ")
    code, out, _ = schedule_cli(capsys, redis_url, namespace, "add", "nightly", "report", "--cron", "30 2 * * *",
                                "--tz", "America/New_York", "--kwargs", '{"full": true}')
    assert code == 0
    code, out, _ = schedule_cli(capsys, redis_url, namespace, "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "TASK", "RULE", "TZ", "NEXT", "FIRE", "LAST", "FIRE", "LAST",
                                              "JOB"]
    assert lines[1].split()[:6] == ["nightly", "report", "cron", "30", "2", "*"]
    assert "America/New_York" in lines[1] and lines[2].split()[:4] == ["tick", "echo", "every", "1s"]
    code, out, _ = schedule_cli(capsys, redis_url, namespace, "list", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert listed["tick"]["every"] == 1 and listed["tick"]["args"] == ["t"] and listed["tick"]["last_job"] is None
    assert listed["nightly"]["cron"] == "30 2 * * *" and listed["nightly"]["kwargs"] == {"full": True}
    assert listed["nightly"]["next"] > time.time() and listed["nightly"]["last"] is None
    code, out, _ = schedule_cli(capsys, redis_url, namespace, "remove", "tick")
    assert code == 0 and out == "schedule tick removed\n"
    code, out, err = schedule_cli(capsys, redis_url, namespace, "remove", "tick")
    assert code == 1 and out == "" and err == "geventsched schedule: error: no schedule named 'tick'\n"


@pytest.mark.parametrize("args, message", [
    (["--cron", "61 * * * *"], "bad cron expression '61 * * * *'"),
    (["--cron", "0 3 * *"], "5 fields"),
    (["--cron", "0 3 * * *", "--tz", "Nowhere/Land"], "unknown time zone 'Nowhere/Land'"),
    (["--every", "0"], "argument --every: '0' must be at least 1"),
    (["--every", "-1"], "argument --every: '-1' must be at least 1"),
    (["--every", "1.5"], "argument --every: '1.5' is not a whole number"),
    (["--every", "5", "--tz", "Europe/Berlin"], "cron rules only"),
    (["--every", "5", "--cron", "* * * * *"], "not allowed with argument --every"),
    ([], "one of the arguments --every --cron is required"),
    (["--every", "5", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
])
def test_schedule_add_with_bad_input_says_so_in_one_line_exits_2_and_stores_nothing(capsys, r, redis_url, namespace,
                                                                                    args, message):
    code, out, err = schedule_cli(capsys, redis_url, namespace, "add", "bad", "echo", *args)
    assert code == 2 and out == ""
    assert message in err and len([line for line in err.splitlines() if "error:" in line]) == 1
    assert r.hlen(Keys(namespace).schedules) == 0


# -- a real failover --------------------------------------------------------------------------------

TICKS = textwrap.dedent("""
    from geventsched.registry import App

    app = App(prefix="ticks")

    @app.periodic(every=1)
    def tick():
        return "tick"
""")
#: MasterConfig.lease_ttl: the active master's lease runs out this long after its last renewal; the
#: standby tries every lease_ttl / 5 and fires at its first housekeeping pass (reap_interval, 1 s).
LEASE_TTL = 5.0
RESUME_BOUND = LEASE_TTL + 3.0


def test_a_schedule_every_second_fires_each_time_at_most_once_across_a_kill9_of_the_active_master(
        spawn, r, namespace, redis_url, tmp_path):
    (tmp_path / "ticks.py").write_text(TICKS)
    keys = Keys(namespace)
    dispatched = DispatchLog(redis_url, keys.dispatch_channel("1"))
    try:
        spawn("worker", "--metrics-port", "0", "--channels", "1", "--app", "ticks", cwd=tmp_path)
        wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
        masters = [spawn("master", "--metrics-port", "0", "--app", "ticks", cwd=tmp_path) for _ in range(2)]
        wait_until(lambda: len(dispatched.fires()) >= 3, timeout=20, message="the first fires")
        holder = r.get(keys.master).decode()
        active, standby = sorted(masters, key=lambda m: f"-{m.process.pid}-" not in holder)
        assert f"-{active.process.pid}-" in holder
        wait_until(lambda: "standing by" in standby.output(), timeout=10, message="the other master to stand by")
        active.signal(signal.SIGKILL)
        killed_at, before = time.time(), len(dispatched.fires())
        active.wait(10)
        wait_until(lambda: len(dispatched.fires()) >= before + 3, timeout=RESUME_BOUND + 10,
                   message="the standby's fires")
        assert standby.process.poll() is None
    finally:
        dispatched.close()
    fires = dispatched.fires()
    times = [fire for fire, _ in fires]
    assert len(times) == len(set(times)), f"a fire time fired twice: {fires}"
    assert dispatched.sent_twice() == [], "a fired job was dispatched twice"
    resumed = min(arrived for _, arrived in dispatched.arrivals() if arrived > killed_at + 0.5)
    gaps = [b - a for a, b in zip(times, times[1:]) if b - a > 1]
    print(f"SCHED {len(times)} fires; the standby fired {resumed - killed_at:.2f}s after the kill; "
          f"gaps over 1 s between fire times: {gaps}")
    assert resumed - killed_at < RESUME_BOUND, "the standby did not resume firing within the lease timeout"
    assert sum(gap - 1 for gap in gaps) <= RESUME_BOUND, gaps  # the failover's missed seconds, not more
    wait_until(lambda: all(r.exists(keys.result(j)) for j in dispatched.job_ids()), timeout=10,
               message="every fired job's result")
    assert {json.loads(r.get(keys.result(j)))["value"] for j in dispatched.job_ids()} == {"tick"}


class DispatchLog:
    """Reads every job dispatched on one channel (the job's record, with its ``fire`` time)."""

    def __init__(self, url, channel):
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(channel)
        self._pubsub.get_message(timeout=5)
        self._seen = {}  # job id -> (fire time, arrival)
        self._sent = {}  # job id -> dispatches seen
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            message = self._pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                doc = json.loads(message["data"])
                for job in doc.get("jobs", [doc]):  # one job, or a batch frame's
                    self._seen.setdefault(job["id"], (job["fire"], time.time()))
                    self._sent[job["id"]] = self._sent.get(job["id"], 0) + 1

    def fires(self):
        """``[(fire time, job id)]`` by fire time: one entry per job (a job sent again counts once)."""
        return sorted((fire, job_id) for job_id, (fire, _) in self._seen.items())

    def arrivals(self):
        return sorted((fire, arrived) for fire, arrived in self._seen.values())

    def job_ids(self):
        return list(self._seen)

    def sent_twice(self):
        return [job_id for job_id, count in self._sent.items() if count > 1]

    def close(self):
        self._stop = True
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


def test_schedules_fire_on_a_redis_cluster(redis_cluster):
    client = transport.connect(redis_cluster)
    store = Store.for_namespace(client, "gs-sched-cluster")
    try:
        scheduler = Scheduler(store)
        assert scheduler.add(every(5), now=1000) == "added"
        scheduler.fire_due(now=1012)  # one script: the schedule, the claim, the job and the intake share a slot
        assert [(fire, name) for fire, name, _ in fired_jobs(store)] == [(1010, "e")]
        assert scheduler.overdue(now=1012) == 0.0 and scheduler.overdue(now=1017) == 2.0
    finally:
        store.delete_namespace()
        client.close()
