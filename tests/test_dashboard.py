"""The dashboard, server side: every page and action against a private Redis, with a real worker and
master running in this process; escaping, the token, cross-site changes refused, and lists of a
million finished jobs and 100,000 dead letters paged without loading them.

``Site`` and ``DashboardSystem`` serve the browser tests too (``test_browser.py``).
"""

import http.client
import json
import re
import signal
import statistics
import time
from urllib.parse import urlencode

import pytest

from conftest import run_cli, wait_until
from geventsched import lookup, transport
from geventsched.builtin import default_registry
from geventsched.client import Client
from geventsched.config import MasterConfig, WorkerConfig
from geventsched.dashboard import data, make_server, refusal
from geventsched.master import Master
from geventsched.store import Store
from geventsched.worker import Worker

XSS = "<script>alert(1)</script>"
XSS_ARG = '<img src=x onerror="alert(2)">'


class Site:
    """An HTTP client of one dashboard (this process's sockets are gevent's: the server runs meanwhile)."""

    def __init__(self, port, headers=None):
        self.port = port
        self.headers = dict(headers or {})

    def request(self, method, path, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body,
                               headers={"Host": f"127.0.0.1:{self.port}", **self.headers, **(headers or {})})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            connection.close()

    def get(self, path, **headers):
        return self.request("GET", path, headers=headers)

    def post(self, path, fields, origin="same", **headers):
        if origin == "same":
            headers.setdefault("Origin", f"http://127.0.0.1:{self.port}")
        elif origin is not None:
            headers["Origin"] = origin
        body = urlencode(fields, doseq=True)
        return self.request("POST", path, body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", **headers})


class DashboardSystem:
    """A worker, a master, a client and a dashboard on one namespace, all in this process; each part is
    started on demand and everything is stopped at the end of the test."""

    def __init__(self, url, namespace):
        self.url, self.namespace = url, namespace
        self.redis = transport.connect(url)
        self.store = Store.for_namespace(self.redis, namespace)
        self.keys = self.store.keys
        self.workers, self.masters, self.servers = [], [], []
        self.client = Client(transport.connect(url), namespace)

    def worker(self, channels=("1",), **options):
        options = {"concurrency": 20, "grace": 1.0, **options}
        worker = Worker(WorkerConfig(channels=tuple(channels), namespace=self.namespace, **options),
                        transport.connect(self.url), default_registry())
        self.workers.append(worker)
        worker.start()
        return worker

    def master(self):
        master = Master(MasterConfig(namespace=self.namespace, discovery_interval=0.1, reap_interval=0.1),
                        transport.connect(self.url))
        self.masters.append(master)
        assert master.start()
        return master

    def dashboard(self, token=None, redis_url=None):
        server = make_server(self.store, "127.0.0.1", 0, token, redis_url or self.url)
        server.start()
        self.servers.append(server)
        return Site(server.server_port)

    def dead_letters(self, specs):
        """Jobs that died (claimed as a master does, then out of attempts at their deadline): their ids.
        Call before a master runs, or it would claim them first."""
        handles = self.client.submit_many(specs)
        claimed = self.store.claim(len(handles))
        assert len(claimed) == len(handles)
        _, dead = self.store.reap(1, now=time.time() + 3600)
        assert sorted(dead) == sorted(h.id for h in handles)
        return [h.id for h in handles]

    def close(self):
        for server in self.servers:
            server.stop(timeout=1)
        for master in self.masters:
            master.stop()
        for worker in self.workers:
            if not worker.stopped:
                worker.stop(0.5)
        self.client.close()


@pytest.fixture
def system(redis_url, namespace):
    made = DashboardSystem(redis_url, namespace)
    yield made
    made.close()


def csrf_of(site):
    """The CSRF token every form of this dashboard carries (each page names it in a meta tag)."""
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', site.get("/")[2]).group(1)


# -- refusing to start --------------------------------------------------------------------------------

def test_only_loopback_addresses_start_without_a_token():
    assert refusal("127.0.0.1", None) is None and refusal("::1", None) is None
    assert refusal("localhost", None) is None and refusal("127.0.0.2", None) is None
    assert "--token" in refusal("0.0.0.0", None) and "--token" in refusal("192.0.2.7", None)
    assert refusal("0.0.0.0", "s3cret") is None
    assert refusal("127.0.0.1", "  ") == "--token must not be empty"


def test_the_cli_refuses_a_public_address_without_a_token_in_one_line(redis_url):
    done = run_cli("dashboard", "--redis-url", redis_url, "--addr", "0.0.0.0", timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not a loopback address" in done.stderr and "--token" in done.stderr


def test_the_cli_serves_the_overview_and_stops_on_sigterm(redis_url, namespace, spawn, tmp_path):
    from geventsched.embedded import free_port

    port = free_port()
    proc = spawn("dashboard", "--port", str(port))
    site = Site(port)

    def up():
        try:
            return site.get("/")[0] == 200
        except OSError:
            return False

    wait_until(up, timeout=20, message="the dashboard to answer")
    assert f"dashboard on http://127.0.0.1:{port}/" in proc.output()
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0


# -- pages ----------------------------------------------------------------------------------------------

def test_the_overview_shows_workers_nodes_and_counts(system):
    worker = system.worker(channels=("1", "2", "3"))
    system.master()
    assert system.client.submit("echo", 1).result(10) == 1
    system.client.submit_many([("echo", [i], {}) for i in range(3)], reply=False)  # no master claims... yet
    site = system.dashboard()
    status, headers, page = site.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert worker.id in page and 'id="nodes"' in page and "3 channels" in page
    assert 'id="count-finished"' in page and 'id="count-queued"' in page and 'id="count-dead"' in page
    assert "master: <code>" in page  # a master holds the lease
    wait_until(lambda: data.counts(system.store)["finished_total"] == 4, timeout=10, message="jobs to finish")
    doc = json.loads(site.get("/api/overview")[2])
    assert doc["counts"]["finished"]["ok"] == 4 and [w["id"] for w in doc["workers"]] == [worker.id]
    assert doc["nodes"][0]["processes"] == 1 and doc["nodes"][0]["channels"] == 3


def test_throughput_and_latency_come_from_redis_not_from_memory(system):
    """The charts read the index of finished jobs and their results (each result's time to live says
    when it was stored): a dashboard started now shows the last ten minutes."""
    now = time.time()
    ttl = system.store.result_ttl
    pipe = system.redis.pipeline()
    for i in range(300):  # 300 jobs over the last 5 minutes, each took 2 s from submit to finish
        finished = now - 300 + i
        pipe.set(system.keys.result(f"j{i}"), json.dumps({"v": 1, "id": f"j{i}", "task": "echo", "status": "ok",
                                                          "value": i, "job": {"task": "echo", "ts": finished - 2}}),
                 px=int((ttl - (now - finished)) * 1000))
        pipe.rpush(system.keys.done, f"j{i}")
    pipe.execute()
    history = data.History(system.store)
    rates, latency = history.read(now)
    assert len(rates) == data.WINDOW // data.BUCKET
    counted = sum(rate * (min(start + data.BUCKET, now) - start) for start, rate in rates)
    assert round(counted) == 300
    assert [round(rate * data.BUCKET) for _, rate in rates[-15:-1]] == [20] * 14  # one a second
    sampled = [row for row in latency if row[3]]
    assert len(sampled) >= 15 and all(abs(p50 - 2) < 0.5 and abs(p95 - 2) < 0.5 for _, p50, p95, _ in sampled)  # (the time the SETs took)
    assert history.newer_than([now - 100.5, now - 1000, now + 1], 300) == [100, 300, 0]
    page = system.dashboard().get("/")[2]
    assert "p50 2.0 s" in page and '<rect class="bar"' in page and '<polyline class="line s1"' in page


def test_job_lists_are_paged_and_searched_by_id_and_task(system):
    handles = system.client.submit_many([("echo", [i], {}) for i in range(120)] + [("noop", [], {})] * 5,
                                        reply=False)
    site = system.dashboard()
    status, _, page = site.get("/jobs?state=queued")
    assert status == 200 and "queued jobs 1–50 of 125" in page and page.count('class="job-link"') == 50
    assert 'rel="next" href="/jobs?state=queued&amp;offset=50"' in page
    page = site.get("/jobs?state=queued&offset=100")[2]
    assert "queued jobs 101–125 of 125" in page and page.count('class="job-link"') == 25
    page = site.get("/jobs?state=queued&task=noop")[2]
    assert page.count('class="job-link"') == 5 and "of task <code>noop</code>" in page
    status, headers, _ = site.get(f"/jobs?state=finished&q={handles[7].id}")
    assert status == 303 and headers["Location"] == f"/job?id={handles[7].id}"  # an id: its page
    page = site.get("/jobs?state=queued&q=no-such-id")[2]
    assert "No queued job matching <code>no-such-id</code>" in page
    assert site.get("/jobs?state=bogus")[0] == 404


def test_a_failed_job_page_shows_its_error_and_traceback(system):
    system.worker()
    system.master()
    handle = system.client.submit("fail", "the disk is full")
    assert handle.wait(10).status == "error"
    site = system.dashboard()
    status, _, page = site.get(f"/job?id={handle.id}")
    assert status == 200 and 'id="job-state" class="state finished"' in page
    assert "<strong>TaskFailure</strong>: the disk is full" in page
    assert 'id="traceback"' in page and "Traceback (most recent call last)" in page
    assert "&#34;the disk is full&#34;" in page  # its arguments, as JSON, from the record in its result
    ok = system.client.submit("echo", {"answer": 42})
    assert ok.result(10) == {"answer": 42}
    page = site.get(f"/job?id={ok.id}")[2]
    assert 'id="result"' in page and "&#34;answer&#34;: 42" in page
    assert site.get("/job?id=nope")[0] == 404


def test_every_value_from_redis_is_escaped(system):
    """A task name, an argument, an error message and a schedule name that are HTML show as text."""
    dead = system.dead_letters([(XSS, [XSS_ARG], {})])[0]
    queued = system.client.submit(XSS, XSS_ARG, note=XSS)
    system.redis.hset(system.keys.schedules, XSS, json.dumps({"task": XSS, "every": 60, "next": 1}))
    system.redis.set(system.keys.result("x1"), json.dumps({
        "v": 1, "id": "x1", "task": XSS, "status": "error",
        "error": {"type": XSS, "message": XSS_ARG, "traceback": XSS}}))
    site = system.dashboard()
    pages = [site.get(path)[2] for path in ("/", "/jobs?state=queued", "/jobs?state=dead", f"/job?id={queued.id}",
                                            f"/job?id={dead}", "/job?id=x1", "/schedules",
                                            "/job?id=" + XSS)]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1] and "&lt;script&gt;" in pages[6]
    assert "&lt;img src=x" in pages[3]
    # the live stream sends the same escaped HTML, JSON-encoded
    event = first_event(site, f"/job?id={queued.id}")
    assert "<script>alert" not in event["html"] and "&lt;script&gt;" in event["html"]


def test_the_schedules_page_lists_and_removes_schedules(system):
    site = system.dashboard()
    assert "No schedule." in site.get("/schedules")[2]
    schedules = system.keys.schedules
    system.redis.hset(schedules, "nightly", json.dumps({"task": "echo", "cron": "0 3 * * *", "tz": "Europe/Paris",
                                                        "next": 1767236400, "last": 1767150000, "job": "17"}))
    system.redis.hset(schedules, "often", json.dumps({"task": "noop", "every": 30}))
    page = site.get("/schedules")[2]
    assert "cron 0 3 * * *" in page and "Europe/Paris" in page and "every 30 s" in page
    assert "2026-01-01T03:00:00.000Z" in page and 'href="/job?id=17"' in page
    status, headers, _ = site.post("/remove-schedule", {"csrf": csrf_of(site), "name": "nightly",
                                                        "next": "/schedules"})
    assert status == 303 and headers["Location"] == "/schedules?msg=removed&n=1"
    assert system.redis.hkeys(schedules) == [b"often"]
    assert "schedule removed" in site.get(headers["Location"])[2]


# -- actions ------------------------------------------------------------------------------------------------

def test_dead_letters_are_requeued_one_by_one_or_all_and_deleted(system):
    first, second, third, fourth = system.dead_letters([("echo", [n], {}) for n in range(4)])
    site = system.dashboard()
    page = site.get("/jobs?state=dead")[2]
    assert "dead jobs 1–4 of 4" in page and page.count('action="/requeue"') == 4 and 'action="/requeue-all"' in page
    csrf = csrf_of(site)
    system.worker()
    system.master()

    status, headers, _ = site.post("/requeue", {"csrf": csrf, "id": first, "next": "/jobs?state=dead"})
    assert status == 303 and headers["Location"] == "/jobs?state=dead&msg=requeued&n=1"
    wait_until(lambda: (lookup.job_info(system.store, first) or {}).get("status") == "ok", timeout=10,
               message="the requeued job to finish")
    assert "1 dead letter requeued" in site.get(headers["Location"])[2]

    assert site.post("/delete", {"csrf": csrf, "id": second})[0] == 303
    assert lookup.job_info(system.store, second) is None and system.redis.llen(system.keys.dead) == 2
    assert site.post("/delete", {"csrf": csrf, "id": second})[1]["Location"] == "/?msg=deleted&n=0"  # once

    status, headers, _ = site.post("/requeue-all", {"csrf": csrf, "next": "/jobs?state=dead"})
    assert headers["Location"] == "/jobs?state=dead&msg=requeued&n=2"
    wait_until(lambda: all((lookup.job_info(system.store, i) or {}).get("status") == "ok" for i in (third, fourth)),
               timeout=10, message="every requeued job to finish")
    assert system.redis.llen(system.keys.dead) == 0 and data.counts(system.store)["dead"] == 0


def test_a_requeued_dead_letter_keeps_its_priority_and_a_deleted_one_frees_its_unique_key(system):
    handles = system.client.submit_many([("echo", [1], {})], priority=5) + \
        system.client.submit_many([("echo", [2], {})], unique_key="nightly-report")
    claimed = system.store.claim(2)
    assert len(claimed) == 2
    system.store.reap(1, now=time.time() + 3600)
    urgent, unique = (h.id for h in handles)
    site = system.dashboard()
    csrf = csrf_of(site)
    assert site.post("/requeue", {"csrf": csrf, "id": urgent})[0] == 303
    assert system.redis.lrange(system.keys.intake_for(5), 0, -1) == [urgent.encode()]
    assert site.post("/delete", {"csrf": csrf, "id": unique})[0] == 303
    again = system.client.submit_many([("echo", [3], {})], unique_key="nightly-report")[0]
    assert again.id != unique and lookup.job_info(system.store, again.id)["state"] == "queued"


def test_cancel_is_offered_only_where_the_store_can_cancel(system):
    site = system.dashboard()
    handle = system.client.submit("sleep", 60)
    page = site.get(f"/job?id={handle.id}")[2]
    if not callable(getattr(system.store, "cancel", None)):
        assert 'action="/cancel"' not in page
        assert site.post("/cancel", {"csrf": csrf_of(site), "id": handle.id})[0] == 404
        return
    system.worker()
    system.master()
    wait_until(lambda: lookup.job_info(system.store, handle.id)["state"] == "running", timeout=10,
               message="the job to run")
    page = site.get(f"/job?id={handle.id}")[2]
    assert 'action="/cancel"' in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    status, headers, _ = site.post("/cancel", {"csrf": csrf, "id": handle.id, "next": f"/job?id={handle.id}"})
    assert status == 303 and "msg=cancelled&n=1" in headers["Location"]
    assert handle.wait(10).status == "cancelled"


# -- security -----------------------------------------------------------------------------------------------

def test_with_a_token_every_request_needs_it(system):
    site = system.dashboard(token="s3cret-token")
    for path in ("/", "/jobs?state=queued", "/job?id=1", "/schedules", "/api/overview", "/events?view=/",
                 "/static/dashboard.js"):
        status, headers, _ = site.get(path)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer", path
    assert site.get("/", Authorization="Bearer wrong")[0] == 401
    assert site.get("/?token=wrong")[0] == 401
    assert site.get("/", Authorization="Bearer s3cret-token")[0] == 200
    status, headers, _ = site.get("/jobs?state=dead&token=s3cret-token")
    assert status == 303 and headers["Location"] == "/jobs?state=dead"  # the token leaves the address
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret-token" not in cookie
    status, _, page = site.get("/jobs?state=dead", Cookie=cookie.split(";")[0])
    assert status == 200 and "s3cret-token" not in page
    assert site.post("/requeue-all", {"csrf": "x"}, Cookie="geventsched_dashboard_0=forged")[0] == 401


def test_changes_from_another_site_or_without_the_form_token_are_refused(system):
    dead = system.dead_letters([("echo", [1], {})])[0]
    site = system.dashboard()
    csrf = csrf_of(site)
    refused = [
        site.post("/requeue", {"csrf": csrf, "id": dead}, origin="http://evil.example"),
        site.post("/requeue", {"csrf": csrf, "id": dead}, origin="null"),
        site.post("/requeue", {"csrf": csrf, "id": dead}, origin=None, Referer="http://evil.example/x"),
        site.post("/requeue", {"id": dead}),
        site.post("/requeue", {"csrf": "0" * 64, "id": dead}),
        site.post("/requeue-all", {"csrf": csrf}, origin=f"http://127.0.0.1:{site.port}.evil.example"),
    ]
    assert [status for status, _, _ in refused] == [403] * len(refused)
    assert "another site" in refused[0][2] and "stale" in refused[3][2]
    assert system.redis.lrange(system.keys.dead, 0, -1) == [dead.encode()]  # nothing changed
    status, _, _ = site.get(f"/requeue?csrf={csrf}&id={dead}")  # GET never changes state
    assert status == 405 and system.redis.llen(system.keys.dead) == 1
    assert site.post("/requeue", {"csrf": csrf, "id": dead}, origin=None)[0] == 303  # curl: no Origin, token ok
    assert system.redis.llen(system.keys.dead) == 0


def test_without_a_token_only_loopback_host_names_are_answered(system):
    """A site whose name an attacker points at 127.0.0.1 (DNS rebinding) is not this dashboard."""
    site = system.dashboard()
    assert site.get("/", Host=f"localhost:{site.port}")[0] == 200
    assert site.get("/", Host=f"[::1]:{site.port}")[0] == 200
    status, _, page = site.get("/", Host=f"attacker.example:{site.port}")
    assert status == 403 and "loopback" in page


def test_security_headers_and_no_redis_password_on_any_page(system):
    site = system.dashboard(redis_url=system.url.replace("redis://", "redis://admin:hunter2@"))
    for path in ("/", "/jobs?state=queued", "/schedules", "/job?id=missing", "/nowhere", "/static/dashboard.css"):
        status, headers, page = site.get(path)
        assert "hunter2" not in page, path
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    page = site.get("/")[2]
    assert "redis://admin:***@" in page
    assert "<script>" not in page and re.search(r"<script src=\"/static/dashboard.js", page)
    assert " on" + "click=" not in page and "style=" not in page  # nothing inline for the CSP to block


@pytest.mark.parametrize("private_redis", [("--requirepass", "hunter2")], indirect=True)
def test_a_redis_that_goes_away_is_said_on_the_page_and_its_password_never(private_redis):
    url = private_redis.url.replace("redis://", "redis://:hunter2@")
    client = transport.connect(url)
    server = make_server(Store.for_namespace(client, "gone"), "127.0.0.1", 0, None, url)
    server.start()
    site = Site(server.server_port)
    try:
        status, _, page = site.get("/")
        assert status == 200 and "redis://:***@127.0.0.1" in page
        private_redis.stop()
        status, _, page = site.get("/")
        assert status == 503 and "Redis: " in page and "hunter2" not in page
        private_redis.start()
        wait_until(lambda: site.get("/")[0] == 200, timeout=10, message="the dashboard to see Redis again")
    finally:
        server.stop(timeout=1)
        client.close()


# -- live updates -------------------------------------------------------------------------------------------

def first_event(site, view, skip=0):
    """The first (after ``skip``) data event of the live stream of page ``view``."""
    connection = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
    try:
        connection.request("GET", "/events?" + urlencode({"view": view}),
                           headers={"Host": f"127.0.0.1:{site.port}", **site.headers})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        seen = 0
        while True:
            line = response.fp.readline().decode()
            if line.startswith("data: "):
                if seen == skip:
                    return json.loads(line[6:])
                seen += 1
    finally:
        connection.close()


def test_the_live_stream_sends_the_page_region_again_when_it_changes(system):
    site = system.dashboard()
    connection = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
    connection.request("GET", "/events?view=%2F", headers={"Host": f"127.0.0.1:{site.port}"})
    response = connection.getresponse()

    def next_event():
        while True:
            line = response.fp.readline().decode()
            if line.startswith("data: "):
                return json.loads(line[6:])["html"]

    try:
        first = next_event()
        assert re.search(r'id="count-queued"[^>]*>\s*<span class="n">0<', first)
        system.client.submit_many([("echo", [1], {})] * 3, reply=False)
        started = time.monotonic()
        changed = next_event()
        assert time.monotonic() - started < 2.5  # within the 2 s the page promises (plus slack)
        assert re.search(r'id="count-queued"[^>]*>\s*<span class="n">3<', changed)
    finally:
        connection.close()


# -- large systems ---------------------------------------------------------------------------------------

def test_a_million_finished_jobs_and_100k_dead_letters_page_quickly(system):
    pipe = system.redis.pipeline(transaction=False)
    for start in range(0, 1_000_000, 10_000):
        pipe.rpush(system.keys.done, *(f"f{i}" for i in range(start, start + 10_000)))
    for start in range(0, 100_000, 10_000):
        pipe.rpush(system.keys.dead, *(f"d{i}" for i in range(start, start + 10_000)))
    # Results for the jobs on the pages looked at (the rest of the index is ids alone: lists skip an id
    # whose result has gone, and reading a page must not depend on how many there are).
    for prefix, status, ids in (("f", "ok", range(100)), ("d", "dead", range(49_900, 50_100))):
        pipe.mset({system.keys.result(f"{prefix}{i}"): json.dumps({
            "v": 1, "id": f"{prefix}{i}", "task": "echo", "status": status, "value": i,
            "job": {"v": 1, "id": f"{prefix}{i}", "task": "echo", "args": [i], "kwargs": {}, "ts": time.time()}})
            for i in ids})
    pipe.execute()
    site = system.dashboard()

    def timed(path):
        """The median time of three requests (the first also compiles the page's templates), and the page."""
        times = []
        for _ in range(3):
            started = time.perf_counter()
            status, _, page = site.get(path)
            times.append(time.perf_counter() - started)
            assert status == 200, path
        return statistics.median(times), page

    finished, page = timed("/jobs?state=finished&offset=999950")
    assert "finished jobs 999951–1000000 of 1000000" in page and 'href="/job?id=f0"' in page
    dead, page = timed("/jobs?state=dead&offset=50000")
    assert "dead jobs 50001–50050 of 100000" in page and 'href="/job?id=d49999"' in page
    overview, _ = timed("/")
    started = time.perf_counter()
    data.History(system.store).read(time.time())  # the charts' search, uncached, over a million
    charts = time.perf_counter() - started
    print(f"\nlast page of 1M finished: {finished * 1000:.1f} ms, a page of 100k dead: {dead * 1000:.1f} ms, "
          f"overview: {overview * 1000:.1f} ms, its charts uncached: {charts * 1000:.1f} ms")
    # Bounds against a regression to loading whole lists (seconds), with room for a busy machine.
    assert finished < 0.5 and dead < 0.5 and overview < 0.25 and charts < 0.25
