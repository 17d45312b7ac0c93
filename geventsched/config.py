"""Settings for each role, as frozen dataclasses. The only place defaults and environment are read."""

import gc
import os
import socket
from dataclasses import dataclass, field

#: Seconds a result (and a dead letter) is kept.
DEFAULT_RESULT_TTL = 24 * 3600
#: Extra time past a job's own timeout before the master thinks it lost: covers time queued on the worker.
DEADLINE_SLACK = 30.0
#: Deadline of a claimed job not yet published: a master that dies holding it loses it for this long.
CLAIM_GRACE = 10.0

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: ``--max-payload``: the largest job record in bytes (the codecs refuse anything larger).
DEFAULT_MAX_PAYLOAD = 1 << 20
#: Time limit in seconds of a task registered without one, and of a job whose task no worker registered.
DEFAULT_TIMEOUT = 300.0
#: ``redis``: at least once, job state and results recorded in Redis. ``none``: the original
#: fire-and-forget behaviour, pub/sub only; a job whose message is lost is gone.
DURABILITY = ("redis", "none")


#: The cyclic collector's thresholds for a master or a worker (``tune_gc``); Python's default is (700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc():
    """For a master or a worker process, once it has started: collect young objects less often (every
    job allocates a few short-lived ones; with the default threshold the collector runs every few
    dozen jobs and walks every young object a busy role holds in flight), and freeze what exists now
    out of every collection, so that a full one walks only what was made since: 1-2 ms instead of
    about 20 for a master's process (bench/README.md, open loop)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def redis_url_from_env():
    return os.environ.get("GEVENTSCHED_REDIS_URL") or DEFAULT_REDIS_URL


def new_instance_id():
    """``host-pid-random``: names this process in Redis (a worker's id, a master's lease). The host and
    pid tell an operator where it runs; the random part keeps a restarted process with a reused pid apart."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass(frozen=True)
class WorkerConfig:
    channels: tuple = ("1",)
    namespace: str = ""
    concurrency: int = 1000
    #: Threads for tasks declared ``blocking=True``.
    threads: int = 8
    codec: str = "json"
    raw_task: str = "echo"
    durability: str = "redis"
    grace: float = 30.0
    heartbeat_interval: float = 1.0
    #: A worker is dead this long after its last heartbeat.
    heartbeat_ttl: float = 5.0
    result_ttl: int = DEFAULT_RESULT_TTL
    max_payload: int = DEFAULT_MAX_PAYLOAD
    worker_id: str = field(default_factory=new_instance_id)


@dataclass(frozen=True)
class MasterConfig:
    #: Static channels (raw mode, where workers never register); empty = discover registered workers.
    channels: tuple = ()
    namespace: str = ""
    codec: str = "json"
    strategy: str = "least-loaded"
    durability: str = "redis"
    #: Cap on jobs in flight per channel; 0 = derive it from the worker's advertised capacity.
    prefetch: int = 0
    #: Per-channel cap for static channels, whose worker never told us its capacity.
    static_prefetch: int = 100
    #: Time limit of a job whose task no worker registered (the deadline is the limit plus the slack).
    default_timeout: float = DEFAULT_TIMEOUT
    #: Seconds past a job's time limit before its dispatch counts as lost: time queued on the worker.
    deadline_slack: float = DEADLINE_SLACK
    max_attempts: int = 3
    #: The master lease: a standby master takes over this long after the active one stopped renewing.
    lease_ttl: float = 5.0
    #: Bytes of job messages in flight per worker, below Redis's default pub/sub output-buffer limit
    #: (32 MB hard, 8 MB for 60 s): a worker is never sent more than that at once.
    max_inflight_bytes: int = 4 << 20
    claim_batch: int = 1000
    discovery_interval: float = 1.0
    reap_interval: float = 1.0
    result_ttl: int = DEFAULT_RESULT_TTL
    max_payload: int = DEFAULT_MAX_PAYLOAD
