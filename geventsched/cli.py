"""Command line: ``geventsched worker|master|submit|cancel|job|status|requeue-dead|schedule|dashboard|bench``.

Parses arguments, builds the config, wires the parts and maps failures to exit codes. No scheduling
logic lives here.
"""

from gevent import monkey

monkey.patch_all()  # before anything imports socket, ssl or threading

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from geventsched import __version__, transport  # noqa: E402
from geventsched.channels import parse_channels  # noqa: E402
from geventsched.config import DURABILITY, MasterConfig, WorkerConfig, redis_url_from_env, tune_gc  # noqa: E402
from geventsched.dispatch import STRATEGIES  # noqa: E402
from geventsched.errors import ConfigError, GeventschedError  # noqa: E402
from geventsched.keys import MAX_PRIORITY  # noqa: E402
from geventsched.protocol import CANCELLED, CODECS, Job, JsonCodec  # noqa: E402

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_WAIT = 60.0


class UsageError(Exception):
    """Bad input found after argparse: exit 2 with the subcommand's usage line."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the shape of every other usage error (``usage_error``) rather
    than its usage block of a dozen lines, in which the one line that matters gets lost. Subcommand
    parsers are made of the same class."""

    def error(self, message):
        print(usage_error(self.prog, message), file=sys.stderr)
        sys.exit(EXIT_USAGE)


def usage_error(prog, message):
    """The two lines of a usage error: a pointer to ``--help``, then what is wrong."""
    return f"usage: {prog} ... (see {prog} --help)\n{prog}: error: {message}"


def positive_int(text):
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def processes(text):
    """``--processes``: a whole number, or ``auto`` for one per CPU (as many as there are channels at most)."""
    return "auto" if text == "auto" else positive_int(text)


def non_negative_int(text):
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def port(text):
    """A TCP port to listen on, 0 for none: checked here, so that a bad one is a usage error rather
    than an exception from ``bind`` after the process has connected to Redis."""
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535)")
    return value


def _whole_number(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_float(text, zero=False):
    """A finite number of seconds above 0 (``zero``: or 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 <= value if zero else 0 < value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be {'a number >= 0' if zero else 'positive'}")
    return value


def non_negative_float(text):
    return positive_float(text, zero=True)


def priority(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"priority must be a whole number from 0 to {MAX_PRIORITY}, not {text!r}")
    return value


def unique_key(text):
    if not text:
        raise argparse.ArgumentTypeError("a unique key must not be empty")
    return text


def channel_spec(text):
    try:
        return tuple(parse_channels(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: How JSON text that was meant as JSON starts (an object, an array, a string, a number).
JSON_START = tuple('{["-0123456789')


def json_value(text):
    """An ARG or ``--kwargs``: a JSON value that a job can carry. Text that does not even start like
    JSON was probably meant as a string, and the error says how to pass one; for broken JSON it says
    what is broken instead (quoting it would not give the value meant)."""
    try:
        value = parse_json(text)
        check_carried([value])
    except ValueError as exc:
        if text.lstrip().startswith(JSON_START):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a JSON value: {exc}") from None
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a JSON value "
                                         f"(quote strings: '\"{_shown(text)[1:-1]}\"')") from None
    return value


def parse_json(text):
    """``json.loads``, with ValueError also for nesting too deep for Python's parser."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def check_carried(args=(), kwargs=None):
    """Refuse, with ValueError, arguments that parse as JSON but no job can carry: NaN, Infinity, an
    integer beyond 64 bits, nesting deeper than the codec goes. The job codec is the judge, as it
    would be at submit, where its refusal would be an exception rather than a usage error."""
    try:
        _CODEC.encode_job(Job("0", "check", list(args), dict(kwargs or {})))
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


_CODEC = JsonCodec()


def _shown(text, limit=60):
    """``text`` quoted for an error line, cut short: the line must stay one line a reader can take in."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def shared_default(setting):
    """The default of a setting the worker and the master share (``--codec``, ...). Defaults are
    stated once, in config.py; the command line takes every one of them from there."""
    value = getattr(WorkerConfig, setting)
    assert value == getattr(MasterConfig, setting), f"worker and master defaults of {setting} differ"
    return value


def mib(size):
    return f"{size / (1 << 20):g} MiB"


def build_parser():
    parser = Parser(prog="geventsched", description="Redis pub/sub job scheduler on gevent.")
    parser.add_argument("--version", action="version", version=f"geventsched {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=redis_url_from_env(),
                        help="Redis URL (env GEVENTSCHED_REDIS_URL; default %(default)s)")
    common.add_argument("--namespace", default="", help="prefix every channel and key with NS:")
    common.add_argument("--cluster", action="store_true",
                        help="treat the URL as a node of a Redis Cluster (found out by itself when the "
                             "server answers INFO)")
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    role = argparse.ArgumentParser(add_help=False)
    role.add_argument("--codec", default=shared_default("codec"), choices=list(CODECS),
                      help="json (versioned) or raw (the original design's bare job ids); default %(default)s")
    role.add_argument("--durability", default=shared_default("durability"), choices=list(DURABILITY),
                      help="redis: at least once, state and results in Redis; "
                           "none: fire-and-forget pub/sub, as in the original design; default %(default)s")
    role.add_argument("--metrics-addr", default="0.0.0.0", help="address of the metrics endpoint")
    max_payload = shared_default("max_payload")
    role.add_argument("--max-payload", type=positive_int, default=max_payload,
                      help=f"reject messages larger than this many bytes (default {mib(max_payload)})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", parents=[common, role], help="run a worker",
                       description="Subscribe to dispatch channels and run the jobs sent there.")
    w.add_argument("--app", action="append", default=[], metavar="MODULE",
                   help="import MODULE for its tasks (repeatable); built-in tasks are always there")
    w.add_argument("--channels", type=channel_spec, default=WorkerConfig.channels, metavar="SPEC",
                   help="N (1..N), A-B, or a comma list of numbers or names "
                        f"(default {','.join(WorkerConfig.channels)})")
    w.add_argument("--concurrency", type=positive_int, default=WorkerConfig.concurrency,
                   help="jobs run at once (default %(default)s)")
    w.add_argument("--threads", type=positive_int, default=WorkerConfig.threads,
                   help="threads for tasks declared blocking=True (default %(default)s)")
    w.add_argument("--processes", type=processes, default=1,
                   help="worker processes on this node (default 1; auto: one per CPU); above 1 a supervisor "
                        "splits the channels among them, restarts any that dies and serves one metrics "
                        "endpoint for all")
    w.add_argument("--grace", type=float, default=WorkerConfig.grace, help="seconds running jobs get at shutdown")
    w.add_argument("--raw-task", default=WorkerConfig.raw_task,
                   help="task run for each raw-codec message (default %(default)s)")
    w.add_argument("--metrics-port", type=port, default=9109, help="0 turns it off")

    m = sub.add_parser("master", parents=[common, role], help="run the master",
                       description="Dispatch queued jobs to the workers' channels and collect results.")
    m.add_argument("--app", action="append", default=[], metavar="MODULE",
                   help="import MODULE for its task names, used as metric labels (others count as 'unknown')")
    m.add_argument("--channels", type=channel_spec, default=MasterConfig.channels, metavar="SPEC",
                   help="static channels (for workers that never register, like the original slaves); "
                        "default: discover registered workers")
    m.add_argument("--strategy", default=MasterConfig.strategy, choices=list(STRATEGIES))
    m.add_argument("--prefetch", type=non_negative_int, default=MasterConfig.prefetch,
                   help="max jobs in flight per channel (default: the worker's capacity over its channels)")
    m.add_argument("--max-attempts", type=positive_int, default=MasterConfig.max_attempts,
                   help="dispatches per job before it is dead")
    m.add_argument("--deadline-slack", type=non_negative_float, default=MasterConfig.deadline_slack,
                   metavar="SECONDS", help="how long past a job's time limit the master waits for its result "
                                           f"before it runs the job again (default {MasterConfig.deadline_slack:g})")
    m.add_argument("--max-inflight-bytes", type=positive_int, default=MasterConfig.max_inflight_bytes,
                   help=f"bytes of jobs in flight per worker (default {mib(MasterConfig.max_inflight_bytes)}; "
                        "keep it under Redis's client-output-buffer-limit pubsub)")
    m.add_argument("--metrics-port", type=port, default=9108, help="0 turns it off")

    s = sub.add_parser("submit", parents=[common], help="submit jobs",
                       description="Submit jobs; print their ids, or with --wait their results.")
    s.add_argument("task", nargs="?", help="task name (or use --file)")
    s.add_argument("args", nargs="*", type=json_value, metavar="ARG", help="JSON values")
    s.add_argument("--kwargs", type=json_value, default={}, help="JSON object of keyword arguments")
    s.add_argument("--count", type=positive_int, default=1, help="submit N such jobs")
    s.add_argument("--file", help="one job per JSON line {task, args, kwargs}; - for stdin")
    s.add_argument("--wait", action="store_true", help="wait and print each result as a JSON line")
    s.add_argument("--timeout", type=positive_float, default=DEFAULT_WAIT,
                   help="seconds --wait waits (default %(default)s)")
    s.add_argument("--job-timeout", type=positive_float, help="time limit for each job (default: the task's)")
    s.add_argument("--max-retries", type=non_negative_int, help="retries after a failure (default: the task's)")
    when = s.add_mutually_exclusive_group()
    when.add_argument("--delay", type=non_negative_float, metavar="SECONDS",
                      help="keep the job scheduled this long before it may start")
    when.add_argument("--at", metavar="TIME", help="start no earlier than TIME: ISO 8601 with a UTC offset "
                      "(2026-01-01T09:00:00+01:00) or unix seconds")
    s.add_argument("--priority", type=priority, default=0, metavar="N",
                   help="0..9, higher is dispatched first (default 0)")
    s.add_argument("--unique-key", metavar="KEY", type=unique_key,
                   help="while a job submitted with KEY is scheduled, queued or running, submit nothing "
                        "and print that job's id")

    j = sub.add_parser("job", parents=[common], help="show one job",
                       description="Show one job: its state, task, arguments, attempts, timestamps, and its "
                                   "result or error. Exit 1 for an unknown id.")
    j.add_argument("id", help="job id")
    j.add_argument("--json", action="store_true", help="machine-readable output")

    c = sub.add_parser("cancel", parents=[common], help="cancel jobs",
                       description="Cancel jobs: a scheduled or queued job never runs, a running one is "
                                   "interrupted. Prints 'ID cancelled', 'ID finished' (too late: nothing "
                                   "changed) or 'ID unknown' per id; exit 1 if an id was unknown.")
    c.add_argument("ids", nargs="+", metavar="ID", help="job ids, as submit printed them")

    st = sub.add_parser("status", parents=[common], help="show workers, channels and job counts")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser("requeue-dead", parents=[common], help="move dead-lettered jobs back to the queue")
    r.add_argument("--task", help="only jobs of this task")

    d = sub.add_parser("dashboard", parents=[common], help="serve the live web dashboard",
                       description="A live web page on this Redis: workers, job counts, rates and latency, job "
                                   "lists and pages, dead letters, schedules; requeue, delete and cancel.")
    d.add_argument("--addr", default="127.0.0.1",
                   help="address to listen on (default %(default)s; any other than loopback needs --token)")
    d.add_argument("--port", type=port, default=9180, help="port to listen on (default %(default)s)")
    d.add_argument("--token", help="every request must carry it (Authorization: Bearer TOKEN, or ?token=TOKEN "
                                   "once in a browser)")

    sc = sub.add_parser("schedule", help="add, list or remove periodic schedules",
                        description="Periodic schedules, kept in Redis and fired by the active master.")
    actions = sc.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help="add or replace a schedule",
                             description="Add schedule NAME, or replace the one of that name.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("task", metavar="TASK", help="task name")
    add.add_argument("args", nargs="*", type=json_value, metavar="ARG", help="JSON values")
    rule = add.add_mutually_exclusive_group(required=True)
    rule.add_argument("--every", type=positive_int, metavar="SECONDS",
                      help="fire at every multiple of SECONDS since the Unix epoch")
    rule.add_argument("--cron", metavar="EXPR", help='5-field cron expression, e.g. "0 3 * * *"')
    add.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA time zone of --cron (default UTC)")
    add.add_argument("--kwargs", type=json_value, default={}, help="JSON object of keyword arguments")
    ls = actions.add_parser("list", parents=[common], help="list schedules with their next and last fire")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    rm = actions.add_parser("remove", parents=[common], help="remove a schedule")
    rm.add_argument("name", metavar="NAME")

    b = sub.add_parser("bench", parents=[common], help="benchmark master and worker on this machine",
                       description="Run N no-op jobs through a master and a worker process against the Redis "
                                   "at --redis-url, or an embedded server when nothing answers there.")
    b.add_argument("--jobs", type=positive_int, default=50_000)
    b.add_argument("--channels", type=positive_int, default=100)
    b.add_argument("--concurrency", type=positive_int, default=WorkerConfig.concurrency)
    b.add_argument("--durability", choices=list(DURABILITY),
                   help="run one mode only (default: durable, then fire-and-forget)")
    b.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    return parser


def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level command; the subcommand's help is the one to see
        print(usage_error(f"geventsched {args.command}", f"unrecognized arguments: {' '.join(unknown)}"),
              file=sys.stderr)
        return EXIT_USAGE
    if args.command in ("worker", "master", "bench"):
        tune_gc()  # the bench's master and producer run in this process
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = COMMANDS[args.command]
    try:
        check_redis_url(args.redis_url)
        return command(args)
    except UsageError as exc:
        print(usage_error(f"geventsched {args.command}", exc), file=sys.stderr)
        return EXIT_USAGE
    except GeventschedError as exc:
        print(f"geventsched {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except transport.RedisError as exc:  # Redis failed us after the first contact
        print(f"geventsched {args.command}: error: {transport.describe(exc, args.redis_url)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


#: URL schemes of a Redis (``transport.connect``).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


def check_redis_url(url):
    """Refuse, with ConfigError, a URL that cannot name a Redis before anything uses it. redis-py
    reads a database that is not a whole number (``redis://host/abc``) as database 0, and ``bench``
    would take a URL that is no Redis URL at all for one where nothing answers and run against a
    server of its own: either would run on without a word about the mistake."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise ConfigError(f"bad Redis URL {transport.redact(url)!r}: it must start with "
                          + ", ".join(f"{name}://" for name in REDIS_SCHEMES))
    if scheme.lower() in ("redis", "rediss"):
        database = urlsplit(url).path[1:]
        if database and not (database.isascii() and database.isdigit()):
            raise ConfigError(f"bad Redis URL {transport.redact(url)!r}: the database after the address must be "
                              f"a whole number (0, 1, ...), not {database!r}")
    if "+sentinel" in scheme:
        return  # the sentinel client checks its URLs as it connects
    client = transport.connect(url, check=False)  # what redis-py refuses as it reads the URL: a bad port, ...
    if urlsplit(url).query:
        try:  # ... and what it passes on for the connection to refuse: an unknown option
            client.connection_pool.make_connection()  # made, not connected
        except TypeError as exc:
            unknown = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
            reason = f"unknown option {unknown.group(1)!r}" if unknown else str(exc)
            raise ConfigError(f"bad Redis URL {transport.redact(url)!r}: {reason}") from None
    client.close()


def _connect(args, wait=None):
    """A client of ``--redis-url``; ``wait`` (an Event), see ``_connect_role``."""
    return transport.connect(args.redis_url, cluster=True if args.cluster else None, wait=wait)


def _connect_role(args):
    """For worker and master, which are services: a Redis that does not answer yet (down, restarting,
    not started) is waited for, said once and then once a minute, not a reason to exit (a supervisor
    or systemd would count the exits and give up). Credentials, permissions and TLS still fail at once."""
    from gevent.event import Event

    return _connect(args, wait=Event())


def cmd_worker(args):
    if args.processes == "auto":
        args.processes = max(1, min(os.cpu_count() or 1, len(args.channels)))
    if args.processes > 1:  # a supervisor: it runs no worker and imports no app itself
        from geventsched import nodemetrics, supervisor

        if args.processes > len(args.channels):
            raise UsageError(f"--processes {args.processes} needs at least {args.processes} channels "
                             f"(--channels gives {len(args.channels)})")
        node = supervisor.node_from_args(args)
        with _metrics_endpoint(nodemetrics.node_registry(node), args):
            return node.run()

    from geventsched import metrics
    from geventsched.builtin import default_registry
    from geventsched.worker import Worker

    registry = default_registry(_app_modules(args))
    config = WorkerConfig(channels=args.channels, namespace=args.namespace, concurrency=args.concurrency,
                          threads=args.threads,
                          codec=args.codec, raw_task=args.raw_task, grace=args.grace, durability=args.durability,
                          max_payload=args.max_payload)
    if args.codec == "raw" and args.raw_task not in registry:
        raise UsageError(f"--raw-task {args.raw_task!r} is not a registered task")
    client = _connect_role(args)
    _register_schedules(client, args, registry)
    if not args.metrics_port:  # metrics off: nothing could read them, so do not count them either
        return Worker(config, client, registry).run()
    metrics_registry = metrics.new_registry()
    hooks = metrics.WorkerMetrics(metrics_registry, registry.names())
    worker = Worker(config, client, registry, hooks=hooks)
    hooks.bind(worker)
    with _metrics_endpoint(metrics_registry, args):
        lag = metrics.loop_lag_monitor(hooks.loop_lag)
        try:
            return worker.run()
        finally:
            lag.kill()


def cmd_master(args):
    from geventsched import metrics
    from geventsched.master import Master
    from geventsched.builtin import default_registry

    config = MasterConfig(channels=args.channels, namespace=args.namespace, codec=args.codec,
                          strategy=args.strategy, prefetch=args.prefetch, max_attempts=args.max_attempts,
                          deadline_slack=args.deadline_slack, durability=args.durability, max_payload=args.max_payload,
                          max_inflight_bytes=args.max_inflight_bytes)
    registry = default_registry(_app_modules(args))
    client = _connect_role(args)
    _register_schedules(client, args, registry)
    if not args.metrics_port:
        return Master(config, client).run()
    metrics_registry = metrics.new_registry()
    hooks = metrics.MasterMetrics(metrics_registry, registry.names())
    master = Master(config, client, hooks=hooks)
    hooks.bind(master)
    with _metrics_endpoint(metrics_registry, args):
        return master.run()


def _app_modules(args):
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --app mymodule finds ./mymodule.py, as celery -A does
    return args.app


def _register_schedules(client, args, registry):
    """Add the schedules the loaded apps declare (``@app.periodic``) to Redis; unchanged ones keep
    their state."""
    if not registry.schedules:
        return
    from geventsched.schedules import Scheduler
    from geventsched.store import Store

    counts = Scheduler(Store.for_namespace(client, args.namespace)).register(registry.schedules.values())
    logging.getLogger("geventsched.schedules").info(
        "schedules of the apps: %s", ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))


@contextlib.contextmanager
def _metrics_endpoint(registry, args):
    from geventsched import metrics

    server = metrics.serve(registry, args.metrics_port, args.metrics_addr)
    try:
        yield server
    finally:
        if server is not None:
            server.stop()


def cmd_submit(args):
    from geventsched.client import Client

    from geventsched.errors import JobTooLarge

    specs = _job_specs(args)
    client = Client(_connect(args), args.namespace)
    try:
        handles = client.submit_many(specs, timeout=args.job_timeout, reply=args.wait, max_retries=args.max_retries,
                                     delay=args.delay, at=args.at, priority=args.priority,
                                     unique_key=args.unique_key)
    except (JobTooLarge, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not args.wait:
        for handle in handles:
            print(handle.id)
        return EXIT_OK
    results = client.wait(handles, args.timeout)
    failed, missing = False, set()
    for handle in handles:
        result = results.get(handle.id)
        if result is None:
            print(f"job {handle.id} ({handle.task}): no result within {args.timeout:g}s", file=sys.stderr)
            failed = True
            missing.add(handle.task)
        elif result.ok:
            print(result.value if result.raw else json.dumps(result.value))
        elif result.status == CANCELLED:
            how = (result.error or {}).get("message") or "cancelled"
            print(f"job {handle.id} ({handle.task}) {how}", file=sys.stderr)
            failed = True
        else:
            error = result.error or {}
            print(f"job {handle.id} ({handle.task}) {result.status}: {error.get('type')}: {error.get('message')}",
                  file=sys.stderr)
            failed = True
    sys.stdout.flush()
    if missing:
        _hint_why_no_result(client.redis, args.namespace, missing)
    return EXIT_FAILURE if failed else EXIT_OK


def _hint_why_no_result(redis_client, namespace, tasks):
    from geventsched.status import why_no_result

    reasons = why_no_result(redis_client, namespace, tasks)
    if reasons:
        print(f"hint: {'; '.join(reasons)}", file=sys.stderr)


def _job_specs(args):
    if args.file:
        if args.task or args.args:
            raise UsageError("give either TASK [ARG ...] or --file, not both")
        return _read_job_file(args.file) * args.count
    if not args.task:
        raise UsageError("missing TASK (or --file FILE)")
    if not isinstance(args.kwargs, dict):
        raise UsageError("--kwargs must be a JSON object")
    return [(args.task, args.args, args.kwargs)] * args.count


def _read_job_file(path):
    """The jobs of a ``--file``, all or none: a bad line is a usage error, said with its number,
    before anything is submitted (a half-submitted file could not simply be run again)."""
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    specs = []
    with stream:
        for number, line in enumerate(stream, 1):
            try:
                spec = _job_line(line)
            except ValueError as exc:
                raise UsageError(f"{path}:{number}: {exc}; nothing was submitted") from None
            if spec is not None:
                specs.append(spec)
    if not specs:
        raise UsageError(f"{path}: no jobs")
    return specs


def _job_line(line):
    """``(task, args, kwargs)`` of one ``--file`` line, None for a blank one. Raises ValueError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not text.strip():
        return None
    try:
        doc = parse_json(text)
    except ValueError as exc:
        raise ValueError(f"not a JSON line ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str) \
            or not isinstance(doc.get("args", []), list) or not isinstance(doc.get("kwargs", {}), dict):
        raise ValueError('expected {"task": str, "args": [...], "kwargs": {...}}')
    args, kwargs = doc.get("args", []), doc.get("kwargs", {})
    check_carried(args, kwargs)
    return doc["task"], args, kwargs


def cmd_job(args):
    from geventsched.lookup import job_info, render_job, render_workflow, workflow_info
    from geventsched.store import Store

    store = Store.for_namespace(_connect(args), args.namespace)
    if args.id.startswith("w"):  # a workflow's id (client.run): its steps and their states
        info = workflow_info(store, args.id)
        if info is not None:
            print(json.dumps(info, indent=2) if args.json else render_workflow(info))
            return EXIT_OK
    info = job_info(store, args.id)
    if info is None:
        print(f"error: no job {args.id!r} (unknown, or its result expired)", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(info, indent=2) if args.json else render_job(info))
    return EXIT_OK


def cmd_cancel(args):
    from geventsched.store import Store

    words = Store.for_namespace(_connect(args), args.namespace).cancel(args.ids)
    for job_id in args.ids:
        print(f"{job_id} {words[job_id]}")
    return EXIT_FAILURE if "unknown" in words.values() else EXIT_OK


def cmd_status(args):
    from geventsched.status import render, snapshot

    snap = snapshot(_connect(args), args.namespace)
    print(json.dumps(snap, indent=2) if args.json else render(snap))
    return EXIT_OK


def cmd_requeue_dead(args):
    from geventsched.store import Store

    count = Store.for_namespace(_connect(args), args.namespace).requeue_dead(args.task)
    print(f"{count} dead job{'' if count == 1 else 's'} re-queued")
    return EXIT_OK


def cmd_dashboard(args):
    from geventsched import dashboard
    from geventsched.store import Store

    refusal = dashboard.refusal(args.addr, args.token)
    if refusal:  # one line, before anything connects: serving every job's data to the network is no default
        print(f"geventsched dashboard: error: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    store = Store.for_namespace(_connect(args), args.namespace)
    return dashboard.serve(store, args.addr, args.port, args.token, args.redis_url)


def cmd_schedule(args):
    from geventsched.schedules import Schedule, ScheduleError, Scheduler, format_time
    from geventsched.store import Store

    if args.action == "add":  # checked in full before Redis is asked anything
        if not isinstance(args.kwargs, dict):
            raise UsageError("--kwargs must be a JSON object")
        try:
            schedule = Schedule(args.name, args.task, args.args, args.kwargs, args.every, args.cron, args.tz)
        except ScheduleError as exc:
            raise UsageError(str(exc)) from None
    scheduler = Scheduler(Store.for_namespace(_connect(args), args.namespace))
    if args.action == "add":
        outcome = scheduler.add(schedule)
        state = scheduler.get(schedule.name)
        print(f"schedule {schedule.name} {outcome}; next fire {format_time(state.next, schedule.tz)}")
    elif args.action == "remove":
        if not scheduler.remove(args.name):
            raise GeventschedError(f"no schedule named {args.name!r}")
        print(f"schedule {args.name} removed")
    elif args.json:
        print(json.dumps([state.to_dict() for state in scheduler.list()], indent=2))
    else:
        rows = [(s.schedule.name, s.schedule.task, s.schedule.rule, s.schedule.tz, format_time(s.next, s.schedule.tz),
                 format_time(s.last, s.schedule.tz), s.job or "-") for s in scheduler.list()]
        header = ("NAME", "TASK", "RULE", "TZ", "NEXT FIRE", "LAST FIRE", "LAST JOB")
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
    return EXIT_OK


def cmd_bench(args):
    from geventsched.rig import command

    return command.main(args)


COMMANDS = {
    "worker": cmd_worker,
    "master": cmd_master,
    "submit": cmd_submit,
    "cancel": cmd_cancel,
    "status": cmd_status,
    "job": cmd_job,
    "requeue-dead": cmd_requeue_dead,
    "schedule": cmd_schedule,
    "dashboard": cmd_dashboard,
    "bench": cmd_bench,
}
