"""bench/suite.py in its quick form, end to end against the private test Redis, bench/plot.py on its
output, `geventsched bench --json` on a tiny run, and the BullMQ peer's wrapper where Node.js is
missing. The figures themselves depend on the machine; these tests check that every scenario ran to
completion and wrote sane, complete numbers."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SCENARIOS = "throughput,latency,density,concurrency,payload,large,cluster"
PERCENTILE_KEYS = {"p50", "p90", "p99", "max"}


def run_script(args, timeout):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def suite_json(redis_server, tmp_path_factory):
    """Runs the quick suite once for this module; the path of the JSON it wrote."""
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    done = run_script([os.path.join("bench", "suite.py"), "--quick", "--no-peers", "--only", SCENARIOS,
                       "--redis-url", redis_server, "--json", str(path)], timeout=160)
    assert done.returncode == 0, f"suite failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    return path


def assert_latency(lat):
    assert set(lat) == PERCENTILE_KEYS
    assert all(lat[k] is not None and lat[k] > 0 for k in PERCENTILE_KEYS), lat
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], lat


def assert_runs(runs, jobs, repeats):
    assert len(runs) >= repeats >= 3
    for run in runs:
        assert run["jobs"] == jobs and run["failed"] == 0, run
        assert run["jobs_per_s"] > 0 and run["seconds"] > 0
        assert_latency(run["latency_ms"])
        assert_per_job(run)


def assert_per_job(run):
    """CPU and Redis commands per job, and what went astray (a count per kind, zero or more)."""
    assert set(run["cpu_us_per_job"]) == {"master", "worker", "redis"}
    # (The worker's is read in clock ticks of 10 ms: a short run of sleeps may show none.)
    assert all(v is not None and v >= 0 for v in run["cpu_us_per_job"].values()), run["cpu_us_per_job"]
    assert run["cpu_us_per_job"]["master"] > 0
    assert run["redis_ops_per_job"] > 0
    commands = run["redis_commands_per_job"]
    assert commands and all(set(c) == {"calls", "usec"} and c["calls"] > 0 for c in commands.values()), commands
    assert "info" not in commands, "the meters' own calls are left out"
    assert sum(c["calls"] for c in commands.values()) == pytest.approx(run["redis_ops_per_job"], rel=0.01)
    assert "publish" in commands or "spublish" in commands, "every job is published to its worker"
    assert all(isinstance(n, int) and n >= 0 for n in run["drops"].values()), run["drops"]
    if run["collect"] == "client":  # end to end; the master's count of the same run rides along
        tally = run["master_tally"]
        assert tally["jobs_per_s"] > 0 and tally["failed"] == 0
        assert_latency(tally["latency_ms"])


@pytest.mark.timeout(200)
def test_quick_suite_writes_sane_figures(suite_json):
    doc = json.loads(suite_json.read_text())
    assert doc["quick"] is True and doc["timestamp"] and doc["command"][:2] == ["python", "bench/suite.py"]
    assert {"python", "redis", "cpus", "geventsched"} <= set(doc["environment"])
    scenarios = doc["scenarios"]
    assert set(scenarios) == set(SCENARIOS.split(",")), "peers must not run with --no-peers"

    throughput = scenarios["throughput"]
    assert set(throughput["configs"]) == {"none", "none+metrics", "redis", "redis+metrics", "none-intake"}
    for name, config in throughput["configs"].items():
        assert_runs(config["runs"], throughput["jobs"], throughput["repeats"])
        assert config["median"]["jobs_per_s"] > 0
        assert config["median"]["cpu_us_per_job"]["total"] > 0
        assert config["median"]["redis_ops_per_job"] > 0
        # Durable runs count what a producer receives; the rest, the master's tally.
        assert {run["collect"] for run in config["runs"]} == {"client" if name.startswith("redis") else "master"}
    assert all(v["jobs_per_s"] > 0 for v in throughput["metrics_ratio"].values())
    assert set(throughput["metrics_ratio"]) == {"none", "redis"}

    latency = scenarios["latency"]
    for mode in ("redis", "none"):
        assert_latency(latency["sequential_ms"][mode])
        loads = latency["open_loop"][mode]
        assert [loop["load"] for loop in loads] == [0.1, 0.5, 0.9]
        for loop in loads:
            assert loop["jobs"] > 0 and loop["achieved_per_s"] > 0
            assert_latency(loop["latency_ms"])

    density = scenarios["density"]
    assert [row["channels"] for row in density["channels"]] == [1, 100, 1000, 10000]
    for row in density["channels"]:
        # Subscribing comes after registering; the two clocks poll at 10 and 5 ms.
        assert 0 < row["registered_s"] < row["subscribed_s"] + 0.05 < 30, row
        assert 5 < row["idle_rss_mib"] < 2000, row
        assert_runs(row["runs"], density["jobs"], density["repeats"])

    concurrency = scenarios["concurrency"]
    assert [row["jobs"] for row in concurrency["sizes"]] == [100, 500]
    for row in concurrency["sizes"]:
        assert_runs(row["runs"], row["jobs"], concurrency["repeats"])
        assert 1.0 <= row["drain_s"] < 30, "every job sleeps 1 s"
        assert all(run["latency_ms"]["p50"] >= 1000 for run in row["runs"])
        assert 5 < row["idle_rss_mib"] <= row["peak_rss_mib"] < 2000, row
        assert row["kib_per_job"] >= 0
        lag = row["loop_lag"]
        assert lag["samples"] >= 3 * 15, "the monitor samples every 50 ms through runs of 1 s or more"
        assert 0 <= lag["mean_ms"] and 0 < lag["p99_ms"] <= lag["max_ms"], lag

    payload = scenarios["payload"]
    assert [row["bytes"] for row in payload["sizes"]] == [16, 1024, 65536]
    for row in payload["sizes"]:
        assert_runs(row["runs"], row["jobs"], payload["repeats"])
        assert row["mib_per_s"] > 0
        assert isinstance(row["dropped"], bool) and row["dropped"] == bool(row["drops"])

    large = scenarios["large"]
    assert large["bytes"] == 65536 and [row["concurrency"] for row in large["configs"]] == [1000, 128]
    for row in large["configs"]:
        assert_runs(row["runs"], large["jobs"], large["repeats"])
        assert row["mib_per_s"] > 0 and isinstance(row["dropped"], bool)

    cluster = scenarios["cluster"]
    assert set(cluster["configs"]) == {"1 node, redis", "1 node, none", "3 shards, redis", "3 shards, none"}
    for config in cluster["configs"].values():
        assert_runs(config["runs"], cluster["jobs"], cluster["repeats"])
        assert config["median"]["cpu_us_per_job"]["redis"] > 0
        assert_latency(config["sequential_ms"])


@pytest.mark.timeout(200)
def test_plot_writes_png_files(suite_json, tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (it comes with the 'bench' extra, not with 'test')")
    out = tmp_path / "plots"
    done = run_script([os.path.join("bench", "plot.py"), str(suite_json), "--out", str(out)], timeout=120)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["concurrency.png", "density.png", "latency.png", "latency_vs_load.png", "payload.png",
                     "throughput.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_bench_command_writes_end_to_end_figures_with_cpu_and_commands_per_job(redis_server, tmp_path):
    out = tmp_path / "bench.json"
    done = run_script(["-m", "geventsched", "bench", "--jobs", "300", "--channels", "3", "--redis-url", redis_server,
                       "--json", str(out)], timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    # The keys SPEC asks for, at the top level: the durable run, end to end.
    assert figures["jobs"] == 300 and figures["seconds"] > 0 and figures["jobs_per_s"] > 0
    assert_latency(figures["latency_ms"])
    assert figures["collect"] == "client" and figures["failed"] == 0
    assert_per_job(figures)
    assert figures["jobs_per_s"] <= figures["master_tally"]["jobs_per_s"] * 1.5, "the producer counts no faster"
    fire = figures["fire_and_forget"]
    assert fire["collect"] == "master" and "master_tally" not in fire
    assert_per_job(fire)
    assert "end to end: a Client submits every job and receives every result" in done.stdout
    assert "master tally" in done.stdout and done.stdout.count("redis ops") == 2


def test_bullmq_peer_says_in_one_line_why_it_is_skipped_without_node(tmp_path):
    only_python = os.path.dirname(sys.executable)
    assert shutil.which("node", path=only_python) is None
    env = {**os.environ, "PATH": only_python}
    peers = os.path.join(ROOT, "bench", "peers")
    done = subprocess.run([sys.executable, os.path.join(peers, "peer_bullmq.py"), "--redis-url",
                           "redis://127.0.0.1:1/15", "--node-dir", str(tmp_path / "node")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "bullmq: skipped: node and npm not found on PATH (BullMQ runs on Node.js)"
    record = json.loads(done.stdout)
    assert record == {"system": "bullmq", "skipped": True, "error": done.stderr.strip()[len("bullmq: "):]}
    assert not (tmp_path / "node").exists(), "nothing installed"
    # run_peers.py passes the record on, and the suite's table lists it under "not measured".
    done = subprocess.run([sys.executable, os.path.join(peers, "run_peers.py"), "--peers", "bullmq", "--json",
                           "--redis-url", "redis://127.0.0.1:1/0", "--venv-dir", str(tmp_path / "venvs")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [record]
    suite = load_suite()
    table = suite.report_peers({"geventsched_jobs_per_s": {"redis": 1000.0, "none": 2000.0},
                                "geventsched_source": "test", "peer_jobs": 10, "systems": [record]}, {})
    assert f"bullmq: {record['error']}" in table


def load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", os.path.join(ROOT, "bench", "suite.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def histogram(counts, sum_s):
    """A cumulative lag histogram in the suite's form from per-bucket counts {bound: count}."""
    buckets, total = {}, 0
    for le, count in counts.items():
        total += count
        buckets[le] = float(total)
    return {"buckets": buckets, "sum_s": sum_s}


def test_loop_lag_figures_come_from_bucket_bounds():
    suite = load_suite()
    before = histogram({"0.001": 5, "0.01": 0, "0.1": 0, "+Inf": 0}, 0.002)
    after = histogram({"0.001": 105, "0.01": 98, "0.1": 2, "+Inf": 0}, 0.402)
    run = suite.lag_since(before, after)
    assert run == histogram({"0.001": 100, "0.01": 98, "0.1": 2, "+Inf": 0}, 0.4)
    assert suite.lag_summary(run) == {"samples": 200, "mean_ms": 2.0, "p99_ms": 10.0, "max_ms": 100.0}
    both = suite.lag_total([run, histogram({"0.001": 0, "0.01": 0, "0.1": 0, "+Inf": 1}, 90.0)])
    assert suite.lag_summary(both)["max_ms"] is None, "beyond the largest bound"
    assert suite.lag_summary(both)["samples"] == 201
    assert suite.lag_summary(histogram({"0.001": 0, "+Inf": 0}, 0.0))["p99_ms"] is None


def test_fanout_is_an_alias_of_density():
    suite = load_suite()
    assert suite.parse_args(["--only", "fanout,concurrency"]).scenarios == ["density", "concurrency"]
    with pytest.raises(SystemExit):
        suite.parse_args(["--only", "fan-out"])
