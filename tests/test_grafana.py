"""grafana/: the dashboard only uses metrics that metrics.py defines, with the required uid, data source
variable and $job/$instance filters; alerts.yml and the provisioning files hang together."""

import json
import os
import re

import pytest
from prometheus_client import CollectorRegistry

from geventsched import metrics

GRAFANA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "grafana")
DASHBOARD = os.path.join(GRAFANA, "geventsched.json")
ALERTS = os.path.join(GRAFANA, "alerts.yml")
DS = "${DS_PROMETHEUS}"
ROWS = ("Throughput", "Latency", "Backlog", "Fleet", "Errors", "Worker health", "Control and workflows")
SPEC_METRICS = (
    "geventsched_master_jobs_submitted_total", "geventsched_master_jobs_dispatched_total",
    "geventsched_master_dispatch_failures_total", "geventsched_master_jobs_finished_total",
    "geventsched_master_jobs_redispatched_total", "geventsched_master_job_latency_seconds",
    "geventsched_master_queue_wait_seconds", "geventsched_master_jobs_queued", "geventsched_master_jobs_in_flight",
    "geventsched_master_workers", "geventsched_master_channels", "geventsched_worker_jobs_received_total",
    "geventsched_worker_jobs_finished_total", "geventsched_worker_job_duration_seconds",
    "geventsched_worker_jobs_running", "geventsched_worker_channels_subscribed",
    "geventsched_worker_messages_rejected_total", "geventsched_worker_loop_lag_seconds",
)
#: Series names each metric type exposes, from its family name.
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
METRIC_NAME = re.compile(r"\b((?:geventsched|process)_[a-z0-9_]+)")


def defined_series():
    """Every series name the metrics module can expose: both roles plus the process metrics."""
    registry = metrics.new_registry()
    metrics.WorkerMetrics(registry, ["echo"])
    metrics.MasterMetrics(registry, ["echo"])
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES.get(family.type, ("",))}


def load_dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard):
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_every_metric_in_the_dashboard_and_alerts_is_defined_by_metrics_py():
    defined = defined_series()
    used = {}
    for path in [os.path.join(GRAFANA, name) for name in os.listdir(GRAFANA) if name.endswith(".json")] + [ALERTS]:
        for name in METRIC_NAME.findall(read(path)):
            used.setdefault(name, os.path.basename(path))
    assert used, "no metric names found"
    unknown = {name: where for name, where in used.items() if name not in defined}
    assert not unknown, f"used but not defined by metrics.py: {unknown}"


def test_the_dashboard_shows_every_metric_of_the_spec():
    text = " ".join(dashboard_exprs(load_dashboard()))
    missing = [name for name in SPEC_METRICS if name not in text]
    assert not missing


def test_the_dashboard_has_a_fixed_uid_and_the_template_variables():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "geventsched"
    assert dashboard["schemaVersion"] >= 36  # Grafana 10 writes 38+; 36 is the oldest it takes as-is
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["uid"] == DS
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
        assert var["definition"].startswith("label_values(") and var["definition"].endswith(f", {name})")
    assert 'job=~"$job"' in variables["instance"]["definition"]


def test_the_dashboard_has_the_rows_and_every_panel_uses_the_variables():
    dashboard = load_dashboard()
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == list(ROWS)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DS
            # Every selector of every metric filters on both variables, with a regex match (All = .*).
            for name, selector in re.findall(r"\b((?:geventsched|process)_[a-z0-9_]+)(\{[^}]*\})?", target["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (panel["title"], name)
            if "rate(" in target["expr"]:
                assert "[$__rate_interval]" in target["expr"], panel["title"]


def test_the_dashboard_panels_do_not_overlap():
    cells = set()
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_the_alert_rules_cover_the_failure_modes():
    text = read(ALERTS)
    alerts = re.findall(r"^\s*- alert: (\w+)$", text, re.M)
    assert len(alerts) == len(set(alerts)) == text.count("expr:") == text.count("severity:")
    for wanted in ("WorkerDown", "HubBlocked", "HighErrorRate", "BacklogGrowing", "DeadLettersGrowing"):
        assert f"Geventsched{wanted}" in alerts
    # The `up` rules match the job names of the example Prometheus config.
    jobs = set(re.findall(r"job_name:\s*(\S+)", read(os.path.join(GRAFANA, "prometheus.yml"))))
    assert jobs == {"geventsched-master", "geventsched-worker"}
    assert set(re.findall(r'up\{job="([^"]+)"\}', text)) == jobs


@pytest.mark.parametrize("path, needles", [
    ("prometheus.yml", ["rule_files:", "- alerts.yml", ":9108", ":9109"]),
    ("provisioning/datasources/geventsched-prometheus.yml", ["apiVersion: 1", "type: prometheus", "url:"]),
    ("provisioning/dashboards/geventsched.yml", ["apiVersion: 1", "type: file", "path:"]),
    ("README.md", ["three steps", "geventsched.json", "provisioning/datasources", "provisioning/dashboards"]),
])
def test_the_support_files_are_there(path, needles):
    text = read(os.path.join(GRAFANA, path))
    for needle in needles:
        assert needle in text, f"{path} lacks {needle!r}"


def test_defined_series_come_from_an_explicit_registry():
    # The metrics module never touches prometheus_client's global REGISTRY, so two roles (or two
    # tests) in one process cannot collide.
    from prometheus_client import REGISTRY

    def global_names():
        return {family.name for family in REGISTRY.collect()}

    before = global_names()
    defined_series()
    metrics.WorkerMetrics(CollectorRegistry(), ["echo"])
    assert not any(name.startswith("geventsched_") for name in global_names() | before)
    assert global_names() == before
