"""Redis Cluster: a private 3-primary cluster; dispatch over sharded pub/sub, keys in one slot.

The tests point every process at one node (not the first) and let it find the cluster by itself.
"""

import os
import signal
import subprocess
import sys

import pytest
import redis
import redis.cluster

from conftest import ROOT, run_cli, wait_until
from geventsched import transport
from geventsched.rig.cluster import EmbeddedCluster
from geventsched.config import DEADLINE_SLACK
from helpers import client_for, setinfo_rule, status

CHANNELS = 30


@pytest.fixture(scope="module")
def cluster():
    with EmbeddedCluster(primaries=3) as running:
        yield running


@pytest.fixture
def redis_url(cluster):
    return cluster.servers[1].url


@pytest.fixture
def r(redis_url):
    client = redis.cluster.RedisCluster.from_url(redis_url, protocol=2)
    yield client
    client.close()


def node(server):
    return redis.Redis(port=server.port, protocol=2)


def start(spawn, r, namespace, *args):
    """A worker of CHANNELS channels and a master, both with ``args``."""
    worker = spawn("worker", "--channels", str(CHANNELS), "--metrics-port", "0", *args)
    wait_until(lambda: status(r, namespace)["channels"] == CHANNELS, timeout=20, message="the worker's channels")
    master = spawn("master", "--metrics-port", "0", *args)
    return worker, master


def shard_channels(server, namespace):
    with node(server) as client:
        return {c.decode() for c in client.execute_command("PUBSUB", "SHARDCHANNELS", f"{namespace}:*")}


def dispatch_names(namespace):
    return {f"{namespace}:CHANNEL_DISPATCH_{n}" for n in range(1, CHANNELS + 1)}


def assert_all_echoed(client, handles, timeout):
    results = client.wait(handles, timeout=timeout)
    missing = [h.id for h in handles if h.id not in results]
    assert not missing, f"{len(missing)} of {len(handles)} jobs have no result (first: {missing[:5]})"
    assert [results[h.id].value for h in handles] == list(range(len(handles)))


def test_2000_jobs_run_through_one_node_of_a_3_primary_cluster_over_sharded_pubsub(
        spawn, r, namespace, redis_url, cluster):
    start(spawn, r, namespace)
    client = client_for(redis_url, namespace)
    handles = client.submit_many([("echo", (i,), {}) for i in range(2000)])
    assert_all_echoed(client, handles, timeout=60)
    client.close()

    # Every primary carries some of the dispatch channels, all of them sharded, none classic.
    per_primary = [shard_channels(server, namespace) & dispatch_names(namespace) for server in cluster.primaries]
    assert all(per_primary), per_primary
    assert set().union(*per_primary) == dispatch_names(namespace)
    for server in cluster.primaries:
        with node(server) as client:
            assert client.execute_command("PUBSUB", "CHANNELS", f"{namespace}:*") == []

    # Our keys share one slot (one hash tag), so every Lua script stays on one shard.
    with node(cluster.servers[1]) as client:
        slots = {r.keyslot(key) for key in r.scan_iter(match=f"{{{namespace}:geventsched}}:*")}
    assert len(slots) == 1
    out = run_cli("status", "--json", "--redis-url", redis_url, "--namespace", namespace)
    assert out.returncode == 0, out.stderr
    assert '"ok": 2000' in out.stdout


def test_a_slot_that_moves_mid_run_takes_its_channels_along(spawn, r, namespace, redis_url, cluster):
    worker, _ = start(spawn, r, namespace)
    # The slot of one dispatch channel, moved to another primary while jobs run.
    channel = f"{namespace}:CHANNEL_DISPATCH_7"
    slot = r.keyslot(channel)
    source = next(s for s in cluster.primaries if channel in shard_channels(s, namespace))
    target = next(s for s in cluster.primaries if s is not source)
    with node(source) as src, node(target) as dst:
        source_id, target_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        client = client_for(redis_url, namespace)
        handles = client.submit_many([("echo", (i,), {}) for i in range(3000)])
        wait_until(lambda: status(r, namespace)["finished"]["ok"] >= 300, timeout=30, message="300 jobs done")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0  # channels are not keys
        dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    wait_until(lambda: channel in shard_channels(target, namespace), timeout=20,
               message="the channel subscribed on its new shard")
    assert channel not in shard_channels(source, namespace)
    # Nothing was lost on the way: no job waits for its deadline.
    assert_all_echoed(client, handles, timeout=60)
    client.close()
    assert "moved to another shard" in worker.output()
    assert status(r, namespace)["finished"]["ok"] == 3000


def test_a_worker_drains_and_deregisters_on_sigterm(spawn, r, namespace):
    worker, _ = start(spawn, r, namespace)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()
    assert status(r, namespace)["workers"] == []


#: The narrowest ACL user on a cluster (set on every node: ACL rules are not shared). As on one server
#: (tests/test_security.py), with our keys and channels under the hash tag, the sharded pub/sub
#: commands, and what a cluster client needs to map the slots (CLUSTER SLOTS, COMMAND).
CLUSTER_ACL_SETUSER = (
    "ACL SETUSER geventsched reset on >PASSWORD "
    "~{NS:geventsched}:* "
    "&NS:CHANNEL_DISPATCH_* &{NS:geventsched}:* "
    "+ping +info +cluster|slots +command +evalsha +script|load +multi +exec +spublish +ssubscribe +time "
    "+get +set +del +exists +mget +incrby +pexpire "
    "+hset +hget +hmget +hgetall +hdel +hincrby +hscan "
    "+lpush +rpush +lpop +lrange +lrem +llen "
    "+sadd +srem +smembers "
    "+zadd +zrem +zrangebyscore +zcard +zrange +zscore +hexists"
)


def test_an_acl_user_with_the_documented_cluster_line_runs_everything(spawn, namespace, cluster):
    rules = CLUSTER_ACL_SETUSER.replace("NS:", f"{namespace}:").replace(">PASSWORD", ">pw").split()[3:]
    for server in cluster.servers:
        with node(server) as admin:
            admin.acl_log_reset()
            admin.execute_command("ACL", "SETUSER", namespace, *rules, *setinfo_rule(admin))
    url = f"redis://{namespace}:pw@127.0.0.1:{cluster.servers[1].port}/0"
    r = transport.connect(url)
    spawn("worker", "--redis-url", url, "--channels", "6", "--metrics-port", "0")
    wait_until(lambda: status(r, namespace)["channels"] == 6, timeout=20, message="the worker's channels")
    spawn("master", "--redis-url", url, "--metrics-port", "0")
    client = client_for(url, namespace)
    assert_all_echoed(client, client.submit_many([("echo", (i,), {}) for i in range(200)]), timeout=60)
    client.close()
    for command in (["status"], ["requeue-dead"]):
        done = run_cli(*command, "--redis-url", url, "--namespace", namespace)
        assert done.returncode == 0, done.stderr
    r.close()
    for server in cluster.servers:
        with node(server) as admin:
            assert [e for e in admin.acl_log() if e.get("username") == namespace] == []


@pytest.fixture(scope="module")
def cluster_with_replicas():
    with EmbeddedCluster(primaries=3, replicas=1) as running:
        yield running


def test_a_primary_killed_mid_run_fails_over_and_no_job_is_lost(spawn, namespace, cluster_with_replicas):
    cluster = cluster_with_replicas
    url = cluster.servers[1].url
    r = redis.cluster.RedisCluster.from_url(url, protocol=2)
    worker = spawn("worker", "--redis-url", url, "--channels", str(CHANNELS), "--concurrency", "30",
                   "--metrics-port", "0")
    wait_until(lambda: status(r, namespace)["channels"] == CHANNELS, timeout=20, message="the worker's channels")
    spawn("master", "--redis-url", url, "--metrics-port", "0")
    # The victim carries dispatch channels but not our keys. Replication is asynchronous: a primary
    # that dies takes the writes its replica had not seen yet, and Redis acknowledged them (WAIT or
    # min-replicas-to-write narrow that window; no job system on Redis can close it).
    home = r.get_node_from_key(f"{{{namespace}:geventsched}}:jobs").port
    victim = next(s for s in cluster.primaries if s.port != home)
    client = client_for(url, namespace)
    # 2,000 jobs of 30 ms at concurrency 30: about 2 s of work, and the kill comes early in it.
    handles = client.submit_many([("sleep", (0.03,), {}) for _ in range(2000)], timeout=1)
    wait_until(lambda: status(r, namespace)["finished"]["ok"] >= 100, timeout=30, message="100 jobs done")
    victim.process.kill()
    wait_until(lambda: "resubscribed" in worker.output(), timeout=30, message="the worker to resubscribe")
    # Jobs whose messages died with the primary come back at their deadline (1 s + the slack).
    results = client.wait(handles, timeout=DEADLINE_SLACK + 30)
    client.close()
    assert sorted({results[h.id].status for h in handles if h.id in results}) == ["ok"]
    assert len(results) == len(handles)
    assert status(r, namespace)["finished"]["ok"] == 2000
    r.close()



def test_a_client_in_a_program_without_gevent_gets_its_results(spawn, r, namespace, redis_url):
    start(spawn, r, namespace)
    script = ("import sys; from geventsched.client import Client; "
              "c = Client.from_url(sys.argv[1], sys.argv[2]); "
              "print([c.submit('echo', i).result(timeout=20) for i in range(5)])")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script, redis_url, namespace], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2, 3, 4]"


def test_fire_and_forget_runs_over_sharded_pubsub_too(spawn, r, namespace, redis_url):
    start(spawn, r, namespace, "--durability", "none")
    client = client_for(redis_url, namespace)
    assert_all_echoed(client, client.submit_many([("echo", (i,), {}) for i in range(500)]), timeout=60)
    client.close()


def test_a_dead_primary_fails_only_its_own_messages():
    with EmbeddedCluster(primaries=3) as fresh:
        client = transport.connect(fresh.url)
        names = [f"p{i}" for i in range(60)]
        owner = {name: client.get_node_from_key(name).port for name in names}
        victim = next(s for s in fresh.primaries if s.port != fresh.servers[0].port and s.port in owner.values())
        listener = transport.subscribe(client, names)  # a subscriber on every shard
        publisher = transport.Publisher(client, "{home}")
        assert publisher.send([(n.encode(), b"x") for n in names]) == [1] * len(names)
        listener.close()
        victim.process.kill()
        victim.process.wait()
        replies = publisher.send([(n.encode(), b"x") for n in names])
        for name, reply in zip(names, replies):
            if owner[name] == victim.port:
                assert transport.is_error(reply) and "lost" in str(reply), (name, reply)
            else:
                assert reply == 0, (name, reply)  # delivered to its shard, where nobody listens now
        publisher.close()
        client.close()


def test_a_moved_reply_to_a_sharded_subscribe_is_a_lost_connection_not_a_crash(r):
    """While a slot moves, the node a channel is subscribed on again may answer MOVED (its view, or
    ours, of the slot map is behind). The subscriber then reads the map again and says the connection
    is lost, so the worker subscribes again from scratch, rather than its reader dying of an error."""
    subscriber = transport.ShardedSubscriber(r)
    try:
        subscriber.subscribe(["mine-1"])
        (shard,) = subscriber._shards.values()
        elsewhere = next(f"elsewhere-{i}" for i in range(1000)
                         if r.get_node_from_key(f"elsewhere-{i}").name != r.get_node_from_key("mine-1").name)
        shard.send_subscribe([elsewhere])  # as a subscribe on a node that no longer owns the slot
        with pytest.raises(transport.ConnectionLost):
            for _ in range(50):
                subscriber.read(0.1)
    finally:
        subscriber.close()
