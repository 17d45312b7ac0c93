"""Redis Sentinel: ``redis+sentinel://`` URLs, and a scheduler that follows a failover.

Each test that needs servers gets its own deployment (``tests/sentinels.py``: a primary, a replica and
three sentinels on free ports); ``spawn``, ``r`` and ``namespace`` follow it through the ``redis_url``
and ``r`` overrides below, so worker and master run with the sentinel URL, as a user would run them.

What a failover does to the connections (see ``geventsched.sentinel``): Sentinel leaves the old
primary serving writes for ~10 s after it promoted the replica, so the client does not wait for the
demotion: it follows the sentinels' events and shuts its connections to the old primary when the
failover begins. ``test_connections_leave_a_primary_that_is_never_demoted`` pins that down with an
old primary that Sentinel cannot demote at all.

Timeouts are hang guards. Jobs get a short time limit (``SHORT``) so that a result lost with the old
primary (replication is asynchronous) comes back through the master's deadline (time limit +
``store.DEADLINE_SLACK``) well inside the guard; normally no result is lost and no job waits for it.
"""

import json
import signal
import time

import pytest
import redis

from conftest import run_cli, wait_until, workers_registered
from sentinels import SentinelSet
from geventsched import transport
from geventsched.client import Client
from geventsched.errors import ConfigError
from geventsched.keys import Keys
from geventsched.config import DEADLINE_SLACK
from geventsched.store import Store

SHORT = 2.0
#: Long enough for a job whose result was lost to come back at its deadline, and run.
DEADLINE_GUARD = SHORT + DEADLINE_SLACK + 30.0


@pytest.fixture
def deployment(tmp_path, request):
    kwargs = getattr(request, "param", {})
    with SentinelSet(tmp_path / "sentinel", **kwargs) as deployment:
        yield deployment


@pytest.fixture
def redis_url(deployment):
    return deployment.url


@pytest.fixture
def r(redis_url):
    """A client of whichever node is the primary (it follows a failover too)."""
    client = transport.connect(redis_url)
    yield client
    client.close()


def status_json(redis_url, namespace):
    done = run_cli("status", "--json", "--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start(spawn, r, namespace, concurrency=1000):
    worker = spawn("worker", "--channels", "4", "--metrics-port", "0", "--concurrency", str(concurrency))
    wait_until(workers_registered(r, namespace), timeout=20, message="worker registration")
    master = spawn("master", "--metrics-port", "0")
    return worker, master


def all_results(client, handles, timeout):
    results = client.wait(handles, timeout=timeout)
    missing = [h.id for h in handles if h.id not in results]
    assert not missing, f"{len(missing)} of {len(handles)} jobs have no result after {timeout}s: {missing[:5]}"
    bad = [(h.id, results[h.id].status, results[h.id].error) for h in handles if not results[h.id].ok]
    assert not bad, f"jobs failed: {bad[:5]}"
    return results


def assert_settled(r, redis_url, namespace, ok):
    """Redis's record agrees, read with the CLI through the sentinel URL: each job counted once as
    finished, one stored result each, nothing queued or in flight."""
    snap = wait_until(lambda: (s := status_json(redis_url, namespace))["in_flight"] == 0 and s["queued"] == 0
                      and s, timeout=20, interval=0.5, message="nothing queued or in flight")
    assert {k: v for k, v in snap["finished"].items() if v} == {"ok": ok}, snap
    assert snap["dead"] == 0, snap
    return snap


def subscribers(node, channels):
    """Connections to ``node`` subscribed to exactly ``channels`` channels."""
    return [c for c in node.client().client_list() if int(c.get("sub", 0)) == channels]


# -- the URL -----------------------------------------------------------------------------------------


def test_sentinel_url_options():
    client = transport.connect("redis+sentinel://u%40x:p%3Aw@10.0.0.1:5000,[::1],h3:5002/my%20svc/3"
                               "?sentinel_password=sp&sentinel_username=su&socket_timeout=7.5", check=False)
    pool = client.connection_pool
    assert type(pool).__name__ == "SentinelConnectionPool" and pool.is_master
    assert pool.service_name == "my svc"
    manager = pool.sentinel_manager
    assert manager.addresses == [("10.0.0.1", 5000), ("::1", 26379), ("h3", 5002)]
    assert manager.sentinel_kwargs["password"] == "sp" and manager.sentinel_kwargs["username"] == "su"
    assert manager.sentinel_kwargs["protocol"] == 2
    options = pool.connection_kwargs
    assert (options["username"], options["password"], options["db"]) == ("u@x", "p:w", 3)
    assert options["protocol"] == 2 and options["socket_timeout"] == 7.5
    assert "sentinel_password" not in options

    tls = transport.connect("rediss+sentinel://s1:26379/mymaster?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none",
                            check=False).connection_pool
    assert issubclass(tls.connection_class, redis.sentinel.SentinelManagedConnection)
    assert issubclass(tls.connection_class, redis.connection.SSLConnection)
    assert tls.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert "ssl" not in tls.sentinel_manager.sentinel_kwargs  # the sentinels: plain TCP unless sentinel_ssl


@pytest.mark.parametrize("url, words", [
    ("redis+sentinel:///mymaster", "no sentinel address"),
    ("redis+sentinel://127.0.0.1:26379", "no service name"),
    ("redis+sentinel://127.0.0.1:26379/", "no service name"),
    ("redis+sentinel://127.0.0.1:99999/mymaster", "bad port"),
    ("redis+sentinel://127.0.0.1:x/mymaster", "bad port"),
    ("redis+sentinel://:26379/mymaster", "no host"),
    ("redis+sentinel://127.0.0.1/mymaster/zero", "/SERVICE/DB"),
    ("redis+sentinel://127.0.0.1/mymaster?socket_timeout=soon", "bad value for socket_timeout"),
    ("redis+sentinel://127.0.0.1/mymaster?ssl_ca_certs=/ca.pem", "TLS options need rediss+sentinel://"),
    ("redis+sentinel://127.0.0.1/mymaster?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
])
def test_bad_sentinel_url_is_a_config_error(url, words):
    with pytest.raises(ConfigError) as info:
        transport.connect(url, check=False)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("deployment", [{"password": "data-pw", "sentinel_password": "sentinel-pw"}], indirect=True,
                         ids=["passwords"])
def test_sentinel_urls_on_the_command_line(deployment):
    """Passwords for the data nodes (user:password@) and for the sentinels (sentinel_password) go where
    they belong; every bad URL fails with exit 1 and one line that says what is wrong."""
    url = deployment.url  # redis+sentinel://:data-pw@S1,S2,S3/mymaster?sentinel_password=sentinel-pw
    done = run_cli("status", "--json", "--redis-url", url)
    assert done.returncode == 0 and json.loads(done.stdout)["queued"] == 0, done.stderr
    # A user that may not run ROLE: the client then trusts the sentinels' word (ACLs are per node).
    for node in deployment.nodes:
        node.client().acl_setuser("norole", enabled=True, passwords=["+norole-pw"], keys=["*"], channels=["*"],
                                  commands=["+@all", "-role"])
        with redis.Redis(*node.address, username="norole", password="norole-pw", protocol=2) as limited:
            with pytest.raises(redis.exceptions.NoPermissionError):
                limited.execute_command("ROLE")
    done = run_cli("status", "--redis-url", url.replace("://:data-pw@", "://norole:norole-pw@"))
    assert done.returncode == 0, done.stderr
    sentinel, data = deployment.sentinels[0].port, deployment.nodes[0].port
    cases = [
        (url.replace("/mymaster", "/nosuchmaster"), "no primary for 'nosuchmaster': unknown to 127.0.0.1:"),
        (url.replace("data-pw", "wrong"), "refused the credentials"),
        (url.replace("sentinel-pw", "wrong"), "no primary for 'mymaster': cannot ask 127.0.0.1:"),
        (url.partition("?")[0], "no primary for 'mymaster': cannot ask 127.0.0.1:"),  # no sentinel password
        # A data node is not a sentinel:
        (f"redis+sentinel://127.0.0.1:{data}/mymaster", f"cannot ask 127.0.0.1:{data} (unknown command"),
        (f"redis+sentinel://127.0.0.1:{sentinel},127.0.0.1:{sentinel}0000/mymaster", "bad port"),
        (f"redis+sentinel://127.0.0.1:{sentinel}", "no service name"),
    ]
    for bad, words in cases:
        done = run_cli("status", "--redis-url", bad)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, (bad, done.returncode, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("geventsched status: error: ") and words in lines[0], \
            (bad, done.stderr)
        assert "-pw" not in done.stderr, done.stderr  # no password shown, the sentinels' included


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tlscerts import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_to_the_data_nodes(tmp_path, pki):
    """``rediss+sentinel://``: the sentinels are asked in plain TCP, the data nodes spoken to in TLS, by
    redis-py's commands and by the raw connections alike, before and after a failover."""
    with SentinelSet(tmp_path / "tls", tls=pki) as deployment:
        url = deployment.url  # rediss+sentinel://S1,S2,S3/mymaster?ssl_ca_certs=CA
        client = transport.connect(url)
        for turn in range(2):
            subscriber, pipe = transport.Subscriber(client), transport.Pipe(client)
            assert pipe._conn._sock.cipher() and subscriber._sock.cipher()
            assert (pipe._conn.host, pipe._conn.port) == deployment.primary()
            subscriber.subscribe(["c"])
            assert pipe.call(transport.pack("PUBLISH", "c", "hello"), 1) == [1]
            assert subscriber.read(timeout=10) == [(b"c", b"hello")]
            assert client.incr("n")
            pipe.close()
            subscriber.close()
            if turn == 0:
                deployment.failover()
        assert client.get("n") == b"2"
        client.close()
        for good in (url, deployment.make_url(sentinel_tls=True)):  # the sentinels in TLS too
            done = run_cli("status", "--redis-url", good)
            assert done.returncode == 0, (good, done.stderr)
        done = run_cli("status", "--redis-url", url.replace(str(pki.ca), str(pki.other_ca)))
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "TLS handshake with Redis at rediss+sentinel://" in done.stderr and "certificate verify failed" \
            in done.stderr, done.stderr


# -- through a real deployment ---------------------------------------------------------------------


def test_jobs_run_through_a_sentinel_url(spawn, r, namespace, redis_url, deployment):
    start(spawn, r, namespace)
    client = Client.from_url(redis_url, namespace)
    handles = client.submit_many([("echo", (i,), {}) for i in range(300)])
    results = all_results(client, handles, timeout=60)
    client.close()
    assert [results[h.id].value for h in handles] == list(range(300))
    assert_settled(r, redis_url, namespace, ok=300)
    primary = deployment.node_at(deployment.primary())
    assert len(subscribers(primary, 5)) == 1  # the worker's subscriber (4 channels and cancels), on the primary


def test_a_node_of_two_processes_runs_through_a_sentinel_url(spawn, r, namespace, redis_url):
    spawn("worker", "--processes", "2", "--channels", "4", "--metrics-port", "0")
    wait_until(workers_registered(r, namespace, 2), timeout=30, message="both processes registered")
    spawn("master", "--metrics-port", "0")
    client = Client.from_url(redis_url, namespace)
    handles = client.submit_many([("echo", (i,), {}) for i in range(200)])
    results = all_results(client, handles, timeout=60)
    client.close()
    assert [results[h.id].value for h in handles] == list(range(200))


def test_connections_follow_the_primary(deployment):
    client = transport.connect(deployment.url)
    old_address = deployment.primary()
    # A sentinel that lags behind a failover names a node that is a replica now: the connection checks.
    manager = client.connection_pool.sentinel_manager
    manager.discover_master = lambda name: deployment.nodes[1].address
    with pytest.raises(transport.ConnectionLost) as info:
        transport.Pipe(client)
    assert f"{deployment.nodes[1].port} is not the primary of 'mymaster' (ROLE says slave)" in \
        transport.describe(info.value)
    del manager.discover_master

    pipe, subscriber = transport.Pipe(client), transport.Subscriber(client)
    subscriber.subscribe(["x"])
    assert (pipe._conn.host, pipe._conn.port) == old_address
    assert pipe.call(transport.pack("SET", "k", "before"), 1) == [b"OK"]

    old, new = deployment.failover()
    wait_until(lambda: _broken(pipe), timeout=20, message="the pipe to the old primary to break")
    with pytest.raises(transport.ConnectionLost):
        subscriber.read(timeout=20)
    pipe, subscriber = transport.Pipe(client), transport.Subscriber(client)  # what the loops do
    subscriber.subscribe(["x"])
    assert (pipe._conn.host, pipe._conn.port) == new.address
    assert pipe.call(transport.pack("GET", "k"), 1) == [b"before"]  # replicated before the switch
    assert client.set("k", "after") and new.client().get("k") == b"after"
    pipe.close()
    subscriber.close()
    client.close()


@pytest.mark.parametrize("deployment", [{"primary_args": ["--rename-command", "SLAVEOF", "",
                                                          "--rename-command", "REPLICAOF", ""]}],
                         indirect=True, ids=["undemotable"])
def test_connections_leave_a_primary_that_is_never_demoted(deployment):
    """A split brain that lasts: the old primary keeps taking writes after the failover (here Sentinel
    cannot send it REPLICAOF; normally it waits ~10 s before it does). The client must not: it left
    the old primary when the failover began, and a new connection never goes back there."""
    client = transport.connect(deployment.url)
    pipe = transport.Pipe(client)
    old, new = deployment.failover()
    wait_until(lambda: _broken(pipe), timeout=20, message="the pipe to the old primary to break")
    assert deployment.role(old) == b"master"  # still a primary: only the client's own watch moved it
    for _ in range(5):
        pipe = transport.Pipe(client)
        assert (pipe._conn.host, pipe._conn.port) == new.address
        pipe.close()
    assert client.set("k", "v") and new.client().get("k") == b"v" and old.client().get("k") is None


def _broken(pipe):
    try:
        pipe.call(transport.pack("PING"), 1)
    except transport.ConnectionLost:
        return True
    time.sleep(0.05)
    return False


def test_failover_mid_run_loses_no_job(spawn, r, namespace, redis_url, deployment):
    """SENTINEL FAILOVER while 2,000 jobs run: the worker, the master and the waiting client all
    follow the new primary, and every job ends with exactly one recorded result."""
    worker, master = start(spawn, r, namespace, concurrency=10)
    client = Client.from_url(redis_url, namespace)
    handles = client.submit_many([("sleep", (0.02,), {})] * 2000, timeout=SHORT)
    keys = Keys(namespace)
    wait_until(lambda: int(r.hget(keys.finished, "ok") or 0) >= 200, timeout=30, message="200 jobs done")

    old, new = deployment.failover()
    done_at_switch = int(new.client().hget(keys.finished, "ok") or 0)
    all_results(client, handles, timeout=DEADLINE_GUARD)
    client.close()
    assert done_at_switch < 2000, "the run ended before the failover: nothing was tested"

    assert_settled(r, redis_url, namespace, ok=2000)
    stored = Store(r, keys).get_results([h.id for h in handles])
    assert all(data is not None for data in stored)
    # Both processes went on with the new primary (the master dispatched the rest of the jobs there),
    # and neither restarted: the worker's subscriber moved over.
    wait_until(lambda: len(subscribers(new, 5)) == 1, timeout=20, message="the worker's subscriber on the new primary")
    assert worker.process.poll() is None and master.process.poll() is None, worker.output() + master.output()
    assert "resubscribed 4 channels" in worker.output()


def test_primary_kill9_mid_run(spawn, r, namespace, redis_url, deployment):
    """The primary dies (SIGKILL): the sentinels agree it is down and promote the replica.

    Replication is asynchronous, so what the primary acknowledged in its last moments may be gone:
    a submission, a result. Only what reached the replica is guaranteed, so the jobs are submitted,
    and WAITed for, before the kill; each of those ends with a result (a lost result is found at the
    job's deadline, and the job runs again). Jobs submitted after the failover run as usual."""
    worker, master = start(spawn, r, namespace, concurrency=10)
    client = Client.from_url(redis_url, namespace)
    handles = client.submit_many([("sleep", (0.02,), {})] * 1000, timeout=SHORT)
    # The submissions reached the replica: WAIT covers the writes of its own connection, and the
    # replication stream is ordered, so one more write on that connection, then WAIT.
    marker = r.pipeline(transaction=False).set(f"{namespace}:marker", 1).execute_command("WAIT", 1, 10_000)
    assert marker.execute() == [True, 1]
    keys = Keys(namespace)
    wait_until(lambda: int(r.hget(keys.finished, "ok") or 0) >= 100, timeout=30, message="100 jobs done")

    old, new = deployment.kill_primary()
    assert old.process.returncode == -signal.SIGKILL
    more = client.submit_many([("echo", (i,), {}) for i in range(100)], timeout=SHORT)
    all_results(client, handles + more, timeout=DEADLINE_GUARD)
    client.close()
    assert_settled(r, redis_url, namespace, ok=1100)
    wait_until(lambda: len(subscribers(new, 5)) == 1, timeout=20, message="the worker's subscriber on the new primary")
    assert worker.process.poll() is None and master.process.poll() is None, worker.output() + master.output()
