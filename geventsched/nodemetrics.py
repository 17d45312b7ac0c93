"""The metrics endpoint of a node (``geventsched worker --processes N``): its children's, merged.

    node = supervisor.node_from_args(args)
    server = metrics.serve(nodemetrics.node_registry(node), 9109, "0.0.0.0")
    node.run()

Each child serves its own metrics on 127.0.0.1 at a private port. A scrape of the node scrapes them
all at once and answers with every child's samples labelled ``process="<slot>"``, plus the node's own
``geventsched_node_*``. The node is read through three things only: ``running`` (children alive now),
``children()`` (``[(process label, metrics port)]``) and ``restarts()`` (``[(process label, count)]``),
so this module knows nothing of slots, processes or back-offs.

This is not ``metrics.py``: that module defines the master's and the worker's own metrics, fed by
their hooks; this one defines none but the node's two, and speaks HTTP to other processes.
"""

import http.client
import logging

import gevent
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

#: Seconds a scrape of the node waits for the children's answers.
SCRAPE_TIMEOUT = 3.0


def node_registry(node, timeout=SCRAPE_TIMEOUT):
    """A registry that serves the node: pass it to ``metrics.serve``."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(node, timeout))
    return registry


class NodeCollector:
    """Every child's samples with a ``process="<slot>"`` label, plus ``geventsched_node_*``.

    The children are scraped when the node is, all at once; one that does not answer within
    ``timeout`` s (starting, restarting, stuck) is left out of that scrape.
    """

    def __init__(self, node, timeout=SCRAPE_TIMEOUT):
        self.node = node
        self.timeout = timeout

    def collect(self):
        yield GaugeMetricFamily("geventsched_node_processes", "Worker processes running on this node.",
                                value=self.node.running)
        restarts = CounterMetricFamily("geventsched_node_restarts", "Worker processes restarted after they exited.",
                                       labels=["process"])
        for process, count in self.node.restarts():
            restarts.add_metric([process], count)
        yield restarts
        yield from merge_families(self._scrape())

    def _scrape(self):
        targets = self.node.children()
        fetches = [gevent.spawn(fetch_metrics, port, self.timeout) for _, port in targets]
        gevent.joinall(fetches, timeout=self.timeout)
        texts = []
        for (process, port), fetch in zip(targets, fetches):
            if fetch.successful():
                texts.append((process, fetch.value))
            else:
                fetch.kill(block=False)
                log.debug("node: process %s (port %d) did not answer the scrape: %s", process, port,
                          fetch.exception or "timed out")
        return texts


def fetch_metrics(port, timeout):
    """GET http://127.0.0.1:PORT/metrics (text format, no proxy). Raises OSError or HTTPException."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"HTTP {response.status}")
        return body.decode("utf-8")
    finally:
        conn.close()


def merge_families(texts):
    """The families of ``[(process, exposition text), ...]``, each once (so HELP and TYPE come once),
    with every sample labelled ``process``. A text that does not parse is left out."""
    merged = {}
    for process, text in texts:
        try:
            families = list(text_string_to_metric_families(text))
        except Exception as exc:  # a scrape of the node must never fail because of one child
            log.debug("node: metrics of process %s do not parse: %s", process, exc)
            continue
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif into.type != family.type:
                continue
            into.samples.extend(sample._replace(labels={**sample.labels, "process": process})
                                for sample in family.samples)
    return list(merged.values())
