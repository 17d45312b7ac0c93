"""A real Prometheus scrapes an in-process master and worker under a mixed load; every dashboard query and
every alert expression must return data through its HTTP API. promtool checks the example files.

Needs the ``prometheus`` and ``promtool`` binaries (Debian: ``apt-get install prometheus``). Without them
the tests skip, except under CI (env ``CI`` set), where they fail.
"""

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import gevent
import pytest
from gevent.event import Event

from conftest import wait_until
from geventsched import metrics, transport
from geventsched.builtin import default_registry
from geventsched.client import Client
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.embedded import free_port
from geventsched.keys import Keys
from geventsched.master import Master
from geventsched.schedules import Schedule, Scheduler
from geventsched.worker import Worker

GRAFANA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "grafana")
ALERTS = os.path.join(GRAFANA, "alerts.yml")
#: What Grafana substitutes with "All" selected (allValue) and a 1 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "15s", "$instance": ".*", "$job": ".*"}
DATA_TIMEOUT = 40.0

_TOP_LEVEL_OP = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?|\s+(and|or|unless)\s+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def tool(name):
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian/Ubuntu: apt-get install prometheus)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; CI must install it")
    pytest.skip(reason)


def operands(expr):
    """The parts of a PromQL expression between top-level comparisons and set operators, without the
    number literals: ``a > 0.1 and b > 5`` -> ``[a, b]``. Each must return data for the alert to work."""
    parts, depth, start, i, quote = [], 0, 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            match = _TOP_LEVEL_OP.match(expr, i)
            if match:
                parts.append(expr[start:i])
                i = start = match.end()
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if not _NUMBER.fullmatch(p.strip())]


def test_operands_split_comparisons_and_set_operators():
    assert operands('up{job="w"} == 0') == ['up{job="w"}']
    assert operands("sum by (job) (rate(a[5m])) / sum(b) > 0.05") == ["sum by (job) (rate(a[5m])) / sum(b)"]
    assert operands('a{x=~"1|2", y!="z"} > 0 and b > 1e3') == ['a{x=~"1|2", y!="z"}', "b"]
    assert operands("max(a) < max(max_over_time(a[15m]))") == ["max(a)", "max(max_over_time(a[15m]))"]


def grafana_expr(expr):
    for variable, value in GRAFANA_VARS.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard():
    with open(os.path.join(GRAFANA, "geventsched.json"), encoding="utf-8") as f:
        return json.load(f)


def dashboard_exprs():
    panels = [p for top in dashboard()["panels"] for p in [top, *top.get("panels", [])]]
    return [grafana_expr(t["expr"]) for p in panels for t in p.get("targets", [])]


def example_job_names():
    with open(os.path.join(GRAFANA, "prometheus.yml"), encoding="utf-8") as f:
        return re.findall(r"job_name:\s*(\S+)", f.read())


def run_promtool(*args):
    done = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_accepts_the_example_config_and_the_alert_rules():
    out = run_promtool("check", "config", os.path.join(GRAFANA, "prometheus.yml"))
    assert "1 rule files found" in out
    out = run_promtool("check", "rules", ALERTS)
    assert re.search(r"SUCCESS: \d+ rules found", out)


class PrometheusServer:
    """``prometheus`` on a free port with a temp config and storage, never as a daemon."""

    def __init__(self, tmp_path, targets):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "prometheus.json"  # JSON is YAML: no YAML library needed
        self.config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [ALERTS],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }))
        run_promtool("check", "config", str(self.config))
        self.log_path = tmp_path / "prometheus.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def wait_ready(self, timeout=30.0):
        def ready():
            assert self.process.poll() is None, f"prometheus exited:\n{self.output()}"
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=timeout, interval=0.2, message="prometheus to be ready")

    def api(self, path, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def has_data(self, expr):
        """True when ``expr`` returns at least one sample that is a number (not NaN) now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return not math.isnan(float(data["result"][1]))
        return any(not math.isnan(float(item["value"][1])) for item in data["result"])

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


class Node:
    """A master and a worker in this process, each with its metrics endpoint on a free port."""

    def __init__(self, redis_url, namespace):
        tasks = default_registry()
        self.clients = [transport.connect(redis_url) for _ in range(3)]
        self.worker_registry, self.master_registry = metrics.new_registry(), metrics.new_registry()
        worker_hooks = metrics.WorkerMetrics(self.worker_registry, tasks.names())
        master_hooks = metrics.MasterMetrics(self.master_registry, tasks.names())
        self.worker = Worker(WorkerConfig(channels=("1", "2", "3"), namespace=namespace, concurrency=50, grace=1.0),
                             self.clients[0], tasks, hooks=worker_hooks)
        self.master = Master(MasterConfig(namespace=namespace, discovery_interval=0.2, reap_interval=0.2),
                             self.clients[1], hooks=master_hooks)
        worker_hooks.bind(self.worker)
        master_hooks.bind(self.master)
        self.lag = metrics.loop_lag_monitor(worker_hooks.loop_lag)
        self.worker_port, self.master_port = free_port(), free_port()
        self.servers = [metrics.serve(self.worker_registry, self.worker_port, "127.0.0.1"),
                        metrics.serve(self.master_registry, self.master_port, "127.0.0.1")]
        self.submitter = Client(self.clients[2], namespace)
        # A periodic schedule, so the schedule panels have fires and lateness to show.
        Scheduler(self.master.store).add(Schedule("tick", "echo", ["tick"], {}, every=1))
        self.dispatch_channel = Keys(namespace).dispatch_channel("1")
        self.worker.start()
        self.master.start()
        self._stop = Event()
        self._load = None

    def start_load(self):
        self._load = gevent.spawn(self._run_load)

    def _run_load(self):
        """Successes, failures, sleeps, CPU spins, timeouts, unknown tasks and undecodable messages."""
        n = 0
        while not self._stop.is_set():
            self.submitter.submit_many([("echo", [n], {})] * 10 + [
                ("fail", ["on purpose"], {}), ("sleep", [0.05], {}), ("spin", [0.01], {}),
                ("no-such-task", [], {})], reply=False)
            self.submitter.submit_many([("sleep", [1.0], {})], timeout=0.1, reply=False)
            if n % 5 == 0:
                self.clients[2].publish(self.dispatch_channel, b"{not a job")
            n += 1
            self._stop.wait(0.1)

    def stop(self):
        self._stop.set()
        if self._load is not None:
            self._load.join(timeout=5)
        self.lag.kill()
        for server in self.servers:
            server.stop()
        self.master.stop()
        self.worker.stop(1.0)
        self.submitter.close()
        for client in self.clients:
            client.close()


def wait_for_data(prometheus, exprs, timeout=DATA_TIMEOUT):
    """Poll until every expression returns data; fail listing those that never did."""
    missing = list(dict.fromkeys(exprs))
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline:
        missing = [expr for expr in missing if not prometheus.has_data(expr)]
        if missing:
            time.sleep(1.0)
    assert not missing, "no data from Prometheus for:\n" + "\n".join(missing)


def test_every_dashboard_query_and_alert_expression_returns_data(redis_url, namespace, tmp_path):
    jobs = example_job_names()
    assert len(jobs) == 2 and "master" in jobs[0] and "worker" in jobs[1]
    node = Node(redis_url, namespace)
    prometheus = None
    try:
        node.start_load()
        prometheus = PrometheusServer(tmp_path, {jobs[0]: f"127.0.0.1:{node.master_port}",
                                                 jobs[1]: f"127.0.0.1:{node.worker_port}"})
        prometheus.wait_ready()

        # Every panel of the dashboard, with "All" selected for $job and $instance
        exprs = dashboard_exprs()
        assert len(exprs) > 20
        wait_for_data(prometheus, exprs)

        # Both targets are up and the template variables list them
        targets = prometheus.api("targets")["activeTargets"]
        assert {t["labels"]["job"]: t["health"] for t in targets} == {jobs[0]: "up", jobs[1]: "up"}
        variables = {v["name"]: v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"}
        for name in ("job", "instance"):
            selector = re.fullmatch(rf"label_values\((.+), {name}\)", variables[name]).group(1)
            values = prometheus.api(f"label/{name}/values", **{"match[]": grafana_expr(selector)})
            assert len(values) == 2, (name, values)

        # Every alert rule, as Prometheus parsed it, evaluates cleanly and its operands return data
        def rules():
            found = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            return found if found and all(r["health"] == "ok" for r in found) else None

        loaded = wait_until(rules, timeout=15, interval=0.5, message="the alert rules to evaluate")
        assert {r["name"] for r in loaded} >= {"GeventschedWorkerDown", "GeventschedHubBlocked",
                                               "GeventschedHighErrorRate", "GeventschedBacklogGrowing",
                                               "GeventschedDeadLettersGrowing"}
        wait_for_data(prometheus, [part for r in loaded for part in operands(r["query"])], timeout=15)

        # And the load really ran: the master's finished counters moved for each outcome
        for status in ("ok", "error", "timeout"):
            assert prometheus.has_data(f'sum(geventsched_master_jobs_finished_total{{status="{status}"}}) > 0'), status
    except AssertionError:
        if prometheus is not None:
            print("prometheus log:\n" + prometheus.output())
        raise
    finally:
        if prometheus is not None:
            prometheus.stop()
        node.stop()
