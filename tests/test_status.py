"""``geventsched status``: per-node aggregation and the text rendering from hand-made snapshots, then
one run against real workers."""

import json

from conftest import run_cli, wait_until, workers_registered
from geventsched.status import assemble, nodes, render

COUNTS = {"queued": 4, "in_flight": 2, "scheduled": 1, "retrying": 1, "dead": 0,
          "finished": {"ok": 7, "error": 1, "timeout": 0, "cancelled": 0, "dead": 0}}


def beat(host, pid, running=0, queued=0, free=1000):
    return {"host": host, "pid": pid, "concurrency": running + free, "running": running, "queued": queued,
            "free": free, "codec": "json", "channels": 99}  # the beat's own channel count is not used


def example():
    """Three live workers on two hosts and one that stopped beating, with the channels they own."""
    beats = {"a-1": beat("alpha", 1, running=3, free=997), "a-2": beat("alpha", 2, running=5, queued=2, free=995),
             "b-1": beat("beta", 10, free=50), "gone": None}
    owners = {"1": "a-1", "2": "a-1", "3": "a-2", "4": "b-1", "5": "b-1", "6": "b-1", "7": "gone"}
    return assemble(beats, owners, COUNTS)


def test_nodes_sum_each_hosts_processes():
    assert example()["nodes"] == [
        {"host": "alpha", "processes": 2, "channels": 3, "running": 8, "queued": 2, "free": 1992},
        {"host": "beta", "processes": 1, "channels": 3, "running": 0, "queued": 0, "free": 50},
    ]


def test_snapshot_keeps_its_keys_and_drops_silent_workers():
    snap = example()
    assert {"workers", "nodes", "channels", "queued", "in_flight", "dead", "finished"} <= set(snap)
    assert [w["id"] for w in snap["workers"]] == ["a-1", "a-2", "b-1"]
    assert [w["channels"] for w in snap["workers"]] == [2, 1, 3]  # counted from the owners, not the beat
    assert snap["channels"] == 6  # channel 7 belongs to a worker that stopped beating
    assert (snap["queued"], snap["in_flight"], snap["finished"]["ok"]) == (4, 2, 7)
    json.dumps(snap)  # what --json prints


def test_nodes_count_missing_figures_as_zero_and_sort_by_host():
    workers = [{"host": "zeta", "channels": 1, "running": None, "queued": None, "free": None},
               {"host": None, "channels": 2, "running": 1, "queued": 0, "free": 3}]
    assert nodes(workers) == [
        {"host": None, "processes": 1, "channels": 2, "running": 1, "queued": 0, "free": 3},
        {"host": "zeta", "processes": 1, "channels": 1, "running": 0, "queued": 0, "free": 0},
    ]
    assert nodes([]) == []


def cells(line):
    return line.split()


def test_render_groups_workers_under_a_node_total_line():
    lines = render(example()).splitlines()
    assert lines[0].split() == ["workers:", "3", "nodes:", "2", "channels:", "6", "scheduled:", "1", "queued:",
                                "4", "in", "flight:", "2", "dead:", "0"]
    assert lines[1] == "finished: ok 7  error 1  timeout 0  cancelled 0  dead 0"
    table = lines[3:]
    assert cells(table[0])[-5:] == ["pid", "channels", "running", "queued", "free"]
    assert [cells(line) for line in table[1:]] == [
        ["alpha", "(2", "processes)", "3", "8", "2", "1992"],
        ["a-1", "1", "2", "3", "0", "997"],
        ["a-2", "2", "1", "5", "2", "995"],
        ["beta", "(1", "process)", "3", "0", "0", "50"],
        ["b-1", "10", "3", "0", "0", "50"],
    ]
    assert all(line.startswith("  ") for line in (table[2], table[3], table[5]))
    assert len({len(line) for line in table}) == 1, "columns line up"


def test_render_shows_unknown_figures_as_dashes_and_no_table_without_workers():
    snap = assemble({"w": {"host": "h", "pid": 5}}, {"1": "w"}, COUNTS)
    assert cells(render(snap).splitlines()[-1]) == ["w", "5", "1", "-", "-", "-"]
    empty = render(assemble({}, {}, COUNTS))
    assert empty.splitlines()[0].startswith("workers: 0   nodes: 0   channels: 0")
    assert len(empty.splitlines()) == 2


def test_status_nodes_sum_two_real_workers(spawn, r, redis_url, namespace):
    spawn("worker", "--channels", "1-3", "--concurrency", "40", "--metrics-port", "0")
    spawn("worker", "--channels", "4-5", "--concurrency", "20", "--metrics-port", "0")
    wait_until(workers_registered(r, namespace, 2), timeout=20, message="two workers registered")
    done = run_cli("status", "--json", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert sorted(w["channels"] for w in snap["workers"]) == [2, 3]
    assert len({w["pid"] for w in snap["workers"]}) == 2
    [node] = snap["nodes"]  # both run here
    assert node["processes"] == 2 and node["channels"] == 5 == snap["channels"]
    assert node["running"] == 0 and node["free"] == 60
    text = run_cli("status", "--redis-url", redis_url, "--namespace", namespace).stdout
    assert f"{node['host']} (2 processes)" in text
