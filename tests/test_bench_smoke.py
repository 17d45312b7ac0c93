"""bench/suite.py in its quick form, end to end against the private test Redis, and bench/plot.py on
its output. The figures themselves depend on the machine; these tests check that every scenario ran
to completion and wrote sane, complete numbers."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCENARIOS = "throughput,latency,fanout,payload"
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
                       "--redis-url", redis_server, "--json", str(path)], timeout=100)
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


@pytest.mark.timeout(150)
def test_quick_suite_writes_sane_figures(suite_json):
    doc = json.loads(suite_json.read_text())
    assert doc["quick"] is True and doc["timestamp"] and doc["command"][:2] == ["python", "bench/suite.py"]
    assert {"python", "redis", "cpus", "geventsched"} <= set(doc["environment"])
    scenarios = doc["scenarios"]
    assert set(scenarios) == set(SCENARIOS.split(",")), "peers must not run with --no-peers"

    throughput = scenarios["throughput"]
    assert set(throughput["configs"]) == {"none", "none+metrics", "redis", "redis+metrics", "none-intake"}
    for config in throughput["configs"].values():
        assert_runs(config["runs"], throughput["jobs"], throughput["repeats"])
        assert config["median"]["jobs_per_s"] > 0
        assert config["median"]["cpu_us_per_job"]["total"] > 0
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

    fanout = scenarios["fanout"]
    assert [row["channels"] for row in fanout["channels"]] == [1, 100, 1000, 10000]
    for row in fanout["channels"]:
        assert row["worker_ready_s"] > 0
        assert_runs(row["runs"], fanout["jobs"], fanout["repeats"])

    payload = scenarios["payload"]
    assert [row["bytes"] for row in payload["sizes"]] == [16, 1024, 65536]
    for row in payload["sizes"]:
        assert_runs(row["runs"], row["jobs"], payload["repeats"])
        assert row["mib_per_s"] > 0


@pytest.mark.timeout(150)
def test_plot_writes_png_files(suite_json, tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (it comes with the 'bench' extra, not with 'test')")
    out = tmp_path / "plots"
    done = run_script([os.path.join("bench", "plot.py"), str(suite_json), "--out", str(out)], timeout=120)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fanout.png", "latency.png", "latency_vs_load.png", "payload.png", "throughput.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
