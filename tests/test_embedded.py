"""The embedded fallback works where no redis-server is installed."""

import os
import shutil
import sys

from conftest import run_cli
from geventsched.embedded import EmbeddedRedis, answers, free_port, server_binary


def test_without_redis_server_on_path_the_valkey_binary_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("redis-server") is None
    binary = server_binary()
    assert binary is not None and os.path.basename(binary) == "valkey-server"
    with EmbeddedRedis(binary) as server:
        assert answers("127.0.0.1", server.port)
    assert not answers("127.0.0.1", server.port)


def test_bench_starts_an_embedded_server_when_nothing_answers(tmp_path):
    only_python = os.path.dirname(sys.executable)
    assert shutil.which("redis-server", path=only_python) is None
    port = free_port()
    out = tmp_path / "bench.json"
    done = run_cli("bench", "--jobs", "300", "--channels", "3", "--json", str(out),
                   "--redis-url", f"redis://127.0.0.1:{port}/0", env={"PATH": only_python}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "using an embedded server (valkey-server)" in done.stderr
    import json

    figures = json.loads(out.read_text())
    assert figures["jobs"] == 300 and figures["failed"] == 0
    assert figures["jobs_per_s"] > 0 and figures["seconds"] > 0
    assert set(figures["latency_ms"]) == {"p50", "p90", "p99", "max"}
    # The raw limit ran in the same run, and the report says how close each mode came to it.
    assert figures["raw_limit"]["jobs_per_s"] > 0 and figures["raw_limit"]["jobs"] == 20_000
    assert 0 < figures["of_raw_limit"] and 0 < figures["fire_and_forget"]["of_raw_limit"]
    assert "geventsched reaches " in done.stdout and "(fire-and-forget)" in done.stdout
    assert not answers("127.0.0.1", port)  # stopped at the end
