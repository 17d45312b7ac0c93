"""``geventsched worker --processes N``: one supervisor process over N worker processes.

The supervisor runs no worker and imports no app. It

* splits the channels into N contiguous, disjoint parts and keeps one ``geventsched worker
  --processes 1`` child running per part (a *slot*), with the supervisor's other worker options, its
  own worker id, and its metrics on 127.0.0.1 at a free port;
* restarts a child that exits: at once, then after 0.5, 1, 2 s while it keeps dying young; after
  ``RestartPolicy.max_young_exits`` young deaths in a row the node gives up (stops the other children,
  then ``run`` raises GeventschedError: one line, exit 1);
* restarts a child that exits with EXIT_TEMPFAIL (Redis unreachable, its channels held by another
  worker: weather, not a bug) after a back-off of up to 5 s, for as long as that lasts, without
  counting it as a young death;
* frees the leases of a child that died without deregistering (``LeaseReaper``), so its successor
  claims the same channels at once rather than after the heartbeat TTL; at start-up it does the same
  for workers of this host that held the node's channels and are gone (a node killed with ``kill -9``
  and started again);
* forwards SIGTERM/SIGINT to every child, which then drains (a second signal, forwarded too, is the
  children's hard stop); ``run`` returns 0 once all have exited;
* tells ``nodemetrics.NodeCollector``, which serves one metrics endpoint for the node, which
  children run and where their metrics are (``children()``, ``restarts()``).

Children run in a session of their own, so a Ctrl-C in a terminal reaches only the supervisor, which
forwards it once. For the same reason, under systemd use ``KillMode=mixed``: with the default
``control-group`` each child would get systemd's SIGTERM and the forwarded one, which is a hard stop.
On Linux a child gets SIGKILL when the supervisor dies (``PR_SET_PDEATHSIG``): a node killed hard dies
hard, all of it. A child that drained instead would keep its channels, and run its jobs, while the
node's successor is refused those channels and the master runs the same jobs again; killed, its jobs
come back through the master (at least once) and its leases are freed by the successor.

The supervisor needs Redis only to free leases, and does without it: it starts, and keeps its children
restarting, while Redis is away.
"""

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import gevent
from gevent.event import Event

from geventsched import transport
from geventsched.embedded import free_port
from geventsched.errors import GeventschedError
from geventsched.registration import pid_alive
from geventsched.store import Store

log = logging.getLogger(__name__)

#: Parsed options (argparse ``dest``) set per child; every other worker option is passed on as given.
#: ``channels`` is the child's part, ``processes`` 1, metrics go to a private port, and ``redis_url``
#: goes in the environment (GEVENTSCHED_REDIS_URL), where ``ps`` does not show a password.
PER_CHILD = frozenset({"command", "channels", "processes", "metrics_port", "metrics_addr", "redis_url"})
#: Seconds the node gives Redis to free the leases of dead workers (they expire with their TTL anyway).
REAP_TIMEOUT = 5.0
#: A child's exit status for "cannot serve now, try again later" (EX_TEMPFAIL in sysexits.h): Redis is
#: unreachable, or a live worker holds its channels. The node restarts it, with a back-off, for as long
#: as that lasts: weather is not a crash.
EXIT_TEMPFAIL = 75
_PR_SET_PDEATHSIG = 1


def split_channels(channels, parts):
    """``channels`` cut into ``parts`` contiguous, disjoint, non-empty runs, in order, whose sizes differ
    by one at most (10 in 3: 3, 3, 4). Raises ValueError when there are fewer channels than parts."""
    channels, count = list(channels), len(channels)
    if not 1 <= parts <= count:
        raise ValueError(f"cannot split {count} channels among {parts} processes")
    return [tuple(channels[count * i // parts:count * (i + 1) // parts]) for i in range(parts)]


def format_channels(channels):
    """A ``--channels`` SPEC for exactly ``channels`` (as ``parse_channels`` returns them): runs of
    consecutive numbers become ``A-B``, so a child's share fits in one argument (Linux caps one at 128 KiB)."""
    items = []  # channel names, and [first, last] for runs of numbers
    for name in channels:
        number = int(name) if name.isascii() and name.isdecimal() else None
        if number is not None and items and isinstance(items[-1], list) and number == items[-1][1] + 1:
            items[-1][1] = number
        else:
            items.append(name if number is None else [number, number])
    return ",".join(item if isinstance(item, str) else "-".join(map(str, sorted(set(item)))) for item in items)


def child_argv(args, channels, metrics_port):
    """The command line of a child serving ``channels``, from the supervisor's parsed ``args``: each
    option ``dest`` outside PER_CHILD goes back as ``--dest=value`` (so that a value starting with "-"
    is not taken for an option), a list as one ``--dest=item`` per item, a true flag as ``--dest``."""
    argv = [sys.executable, "-m", "geventsched", "worker", "--processes=1",
            f"--channels={format_channels(channels)}", f"--metrics-port={metrics_port}",
            "--metrics-addr=127.0.0.1"]
    for dest, value in sorted(vars(args).items()):
        if dest in PER_CHILD or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [f"{flag}={item}" for item in value]
        else:
            argv.append(f"{flag}={value}")
    return argv


def node_from_args(args, client=None):
    """A Supervisor for ``geventsched worker --processes N`` (N > 1) with these parsed ``args``.

    ``client``: a Redis client for the namespace's registrations; without one the node connects to
    ``args.redis_url`` when it first needs Redis, so it starts (and restarts its children) while Redis
    is away. A URL that cannot work raises ConfigError here.
    """
    if client is None:
        transport.connect(args.redis_url, check=False).close()  # parses the URL; no connection yet
        reaper = LeaseReaper.from_url(args.redis_url, args.namespace, cluster=True if args.cluster else None)
    else:
        reaper = LeaseReaper(client, args.namespace)
    return Supervisor(split_channels(args.channels, args.processes),
                      lambda channels, port: child_argv(args, channels, port),
                      env={**os.environ, "GEVENTSCHED_REDIS_URL": args.redis_url},
                      reaper=reaper, metrics=bool(args.metrics_port))


def describe_exit(code):
    if code == EXIT_TEMPFAIL:
        return f"exited with status {code} (try again later)"
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name if -code in signal.valid_signals() else -code}"
    return f"exited with status {code}"


@dataclass(frozen=True)
class RestartPolicy:
    #: Seconds before restarting after the 1st, 2nd, ... young exit in a row (the last one repeats).
    backoff: tuple = (0.0, 0.5, 1.0, 2.0, 4.0)
    #: A child that exits sooner than this after its start died young.
    min_uptime: float = 10.0
    #: This many young exits in a row and the node gives up.
    max_young_exits: int = 5
    #: Seconds before restarting after the 1st, 2nd, ... EXIT_TEMPFAIL in a row (the last one repeats:
    #: a child that comes back within seconds of the weather clearing, with a line a few seconds apart).
    weather_backoff: tuple = (0.5, 1.0, 2.0, 4.0, 5.0)
    #: While the weather lasts, the node says so again this often (seconds).
    weather_log_interval: float = 60.0

    def delay(self, young_exits):
        """Seconds to wait before the next start; None means give up."""
        if young_exits >= self.max_young_exits:
            return None
        return self.backoff[max(0, min(young_exits - 1, len(self.backoff) - 1))]

    def weather_delay(self, tries):
        """Seconds to wait before the next start after ``tries`` EXIT_TEMPFAIL in a row; never gives up."""
        return self.weather_backoff[max(0, min(tries - 1, len(self.weather_backoff) - 1))]


class Slot:
    """One share of the channels and the child process serving it (``proc`` is None between children)."""

    def __init__(self, index, channels):
        self.index = index
        self.channels = channels
        self.proc = None
        self.port = 0
        self.started = None  # time.monotonic() of the current child's start
        self.young_exits = 0
        self.restarts = 0
        self.weather_tries = 0  # EXIT_TEMPFAIL in a row
        self.weather_since = self.weather_logged = 0.0


class Supervisor:
    """Keeps one child per slot running until a signal, or until a slot's child keeps dying young.

    ``command(channels, metrics_port)`` gives a child's argv, ``env`` its environment, and ``reaper``
    (a LeaseReaper) frees the registrations that dead workers left behind: ``reaper(pid)`` that of a
    child that died with its leases still held, ``reaper.orphans(channels)`` at start-up those of a
    previous node.
    """

    def __init__(self, parts, command, env=None, reaper=None, policy=RestartPolicy(), metrics=True):
        self.slots = [Slot(index, tuple(part)) for index, part in enumerate(parts)]
        self.command = command
        self.env = env
        self.reaper = reaper
        self.policy = policy
        self.metrics = metrics
        self._stopping = False
        self._stop = Event()  # wakes the slots that wait out a backoff
        self._wake = Event()  # wakes run(): a signal came, a slot gave up, or a slot's greenlet ended
        self._signals = []
        self._failure = None
        self._libc = _load_libc()

    @property
    def running(self):
        """Children alive now."""
        return sum(1 for slot in self.slots if slot.proc is not None)

    def children(self):
        """``[(process label, metrics port), ...]`` of the children alive now that serve metrics."""
        return [(str(slot.index), slot.port) for slot in self.slots if slot.proc is not None and slot.port]

    def restarts(self):
        """``[(process label, restarts), ...]`` for every slot, alive or not."""
        return [(str(slot.index), slot.restarts) for slot in self.slots]

    def run(self):
        """Start the children and supervise them until all have exited. Blocks.

        Returns 0 after a SIGTERM/SIGINT; raises GeventschedError (one line) when a slot gave up.
        """
        handlers = [gevent.signal_handler(sig, self._on_signal, sig) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            if self.reaper is not None:
                self.reaper.orphans([channel for slot in self.slots for channel in slot.channels])
            greenlets = [gevent.spawn(self._keep, slot) for slot in self.slots]
            for greenlet in greenlets:
                greenlet.link(lambda _: self._wake.set())
            log.info("node: %d worker processes, %d channels", len(self.slots),
                     sum(len(slot.channels) for slot in self.slots))
            while not all(greenlet.dead for greenlet in greenlets):
                self._wake.wait()
                self._wake.clear()
                self._act()
        finally:
            for handler in handlers:
                handler.cancel()
        if self._failure:
            raise GeventschedError(self._failure)
        log.info("node: all worker processes exited")
        return 0

    def _on_signal(self, signum):
        # Runs in the hub: only note it, run() does the work.
        self._signals.append(signum)
        self._wake.set()

    def request_stop(self, signum=signal.SIGTERM):
        """What a signal does (SIGTERM: drain the children; a second one: hard stop), for an embedding program."""
        self._on_signal(signum)

    def _act(self):
        signals, self._signals = self._signals, []
        for signum in signals:
            log.info("node: %s, %s", signal.Signals(signum).name,
                     "hard stop" if self._stopping else "stopping the worker processes")
            self._stopping = True
            self._stop.set()
            self._forward(signum)
        if self._failure and not self._stopping:
            self._stopping = True
            self._stop.set()
            self._forward(signal.SIGTERM)

    def _forward(self, signum):
        for slot in self.slots:
            if slot.proc is not None:
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:  # exited, not reaped yet: its slot hears of it next
                    pass

    # -- one slot --------------------------------------------------------------------------------

    def _keep(self, slot):
        """Run children for ``slot``, one after the other, until the node stops or gives up."""
        delay = 0.0
        while not self._stopping:
            if delay and self._stop.wait(delay):
                return
            try:
                proc = self._start(slot)
            except OSError as exc:
                self._give_up(f"cannot start worker process {slot.index}: {exc}")
                return
            code = proc.wait()
            uptime = time.monotonic() - slot.started
            slot.proc = None
            if code not in (0, EXIT_TEMPFAIL) and self.reaper is not None:  # EXIT_TEMPFAIL: it holds no lease
                self.reaper(proc.pid)
            if self._stopping:
                (log.info if code == 0 else log.warning)("node: process %d (pid %d) %s", slot.index, proc.pid,
                                                         describe_exit(code))
                return
            delay = self._next_delay(slot, proc.pid, code, uptime)
            if delay is None:
                return

    def _start(self, slot):
        # Another process may take the port first: the child then fails to bind, exits, and its
        # successor gets another port.
        slot.port = free_port() if self.metrics else 0
        argv = self.command(slot.channels, slot.port)
        if slot.started is not None:
            slot.restarts += 1
        slot.started = time.monotonic()
        proc = slot.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
                                            preexec_fn=self._child_setup())
        (log.debug if slot.weather_tries else log.info)(  # weather: said once in _weather_delay
            "node: process %d (pid %d) serves %d channels", slot.index, proc.pid, len(slot.channels))
        if self._stopping:  # the stop came while it was being started: run() did not see it
            proc.send_signal(signal.SIGTERM)
        return proc

    def _next_delay(self, slot, pid, code, uptime):
        """Seconds before ``slot`` gets its next child, or None when the node gives up."""
        if uptime >= self.policy.min_uptime:
            slot.young_exits = slot.weather_tries = 0
        if code == EXIT_TEMPFAIL:  # weather: neither a young death nor the end of a crash loop
            return self._weather_delay(slot, pid, uptime)
        slot.weather_tries = 0
        slot.young_exits = slot.young_exits + 1 if uptime < self.policy.min_uptime else 0
        delay = self.policy.delay(slot.young_exits)
        if delay is None:
            self._give_up(f"worker process {slot.index} died {slot.young_exits} times in a row, each within "
                          f"{self.policy.min_uptime:g}s of its start (last: {describe_exit(code)}); giving up, "
                          f"see its error above")
            return None
        log.warning("node: process %d (pid %d) %s after %.1fs; restarting it%s", slot.index, pid,
                    describe_exit(code), uptime, f" in {delay:g}s" if delay else "")
        return delay

    def _weather_delay(self, slot, pid, uptime):
        """Seconds before the next try of a child that could not serve for now; says so once, then at
        ``policy.weather_log_interval`` (the children print their reason each time)."""
        now = time.monotonic()
        if not slot.weather_tries:
            slot.weather_since = slot.weather_logged = now
        slot.weather_tries += 1
        delay = self.policy.weather_delay(slot.weather_tries)
        if slot.weather_tries == 1:
            log.warning("node: process %d (pid %d) %s after %.1fs: Redis unreachable or its channels held "
                        "elsewhere (see its error above); trying again, every %gs at most, until it serves",
                        slot.index, pid, describe_exit(EXIT_TEMPFAIL), uptime, self.policy.weather_backoff[-1])
        elif now - slot.weather_logged >= self.policy.weather_log_interval:
            slot.weather_logged = now
            log.warning("node: process %d still cannot serve: %d tries in %.0fs; trying again", slot.index,
                        slot.weather_tries, now - slot.weather_since)
        return delay

    def _give_up(self, message):
        if self._failure is None:
            self._failure = message
        self._wake.set()

    def _child_setup(self):
        """Runs in the child between fork and exec: ask for SIGKILL when the supervisor dies (see the
        module's docstring for why not a drain)."""
        libc, parent = self._libc, os.getpid()
        if libc is None:
            return None

        def setup():
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != parent:  # the supervisor died before prctl: no signal would come
                os._exit(1)

        return setup


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "prctl") else None
    except OSError:
        return None


class LeaseReaper:
    """Frees the channels of workers of this host that died without deregistering (SIGKILL, crash).

    A worker's channel lease lasts as long as its heartbeat key (a 5 s TTL), and until then its successor
    would be refused the same channels. Deleting that key ends the lease at once. The worker's id stays
    in the set of workers: the master's discovery then sees a worker that stopped beating and sends its
    in-flight jobs back to the queue at once (``Store.release_worker`` would drop the id from that set,
    and with it the master's cue: those jobs would wait for their deadline). The id of a child is
    random; it is found by the pid and host in the heartbeat.

    Redis may be away: every call logs the error and returns [] (the leases then run out with their
    TTL). Made ``from_url``, the reaper connects at its first call (and tries again at the next one
    until that works).
    """

    def __init__(self, client, namespace, host=None):
        self.namespace = namespace
        self.host = host or socket.gethostname()
        self._connect = None
        self._use(client)

    @classmethod
    def from_url(cls, url, namespace, cluster=None, host=None):
        """A reaper that connects to ``url`` when it needs Redis (``cluster`` as ``transport.connect``)."""
        reaper = cls(None, namespace, host)
        reaper._connect = lambda: transport.connect(url, cluster=cluster)
        return reaper

    def _use(self, client):
        self.client = client
        self.store = Store.for_namespace(client, self.namespace) if client is not None else None
        self.keys = self.store.keys if client is not None else None

    def __call__(self, pid):
        """Free the registration of the worker that ran as ``pid`` here. Returns the ids freed."""
        return self._free(f"pid {pid}", lambda beats: [w for w, beat in beats.items() if beat.get("pid") == pid])

    def orphans(self, channels):
        """Free the registrations of this host's workers that are gone (their pid runs no more) and held
        one of ``channels`` (as ``--channels`` names them): the children of a node killed hard, whose
        successor, starting now, would be refused those channels until their heartbeats expire.
        Returns the ids freed."""
        def gone_holders(beats):
            names = {self.keys.dispatch_channel(channel) for channel in channels}
            holders = {w for channel, w in self.store.channel_owners().items() if channel in names}
            return [w for w, beat in beats.items() if w in holders and pid_alive(beat.get("pid")) is False]

        return self._free("gone workers of this host", gone_holders)

    def _free(self, what, select):
        """Delete the heartbeat keys of the workers ``select(beats)`` picks among this host's live ones.

        Within ``REAP_TIMEOUT``: a Redis that went silent must not keep a slot from restarting its child."""
        timer = gevent.Timeout(REAP_TIMEOUT)
        timer.start()
        try:
            if self.store is None:
                self._use(self._connect())
            beats = {w: beat for w, beat in self.store.workers().items() if beat and beat.get("host") == self.host}
            dead = select(beats)
            if dead:
                self.client.delete(*[self.keys.worker(w) for w in dead])
        except (*transport.RedisError, GeventschedError, gevent.Timeout) as exc:  # GeventschedError: from connect
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            reason = (f"no answer within {REAP_TIMEOUT:g}s" if exc is timer else
                      transport.describe(exc) if isinstance(exc, transport.RedisError) else exc)
            log.warning("node: cannot free the channels of %s: %s", what, reason)
            return []
        finally:
            timer.close()
        for worker_id in dead:
            log.info("node: freed the channels of worker %s (pid %s)", worker_id, beats[worker_id].get("pid"))
        return dead
