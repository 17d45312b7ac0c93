"""The raw limit: a pub/sub echo through Redis with no job machinery at all.

Process A (this script, the "master" side) publishes N small messages on
CHANNEL_DISPATCH_1; process B (a subprocess of this script, the "worker" side)
reads them on its own subscriber socket and publishes each payload back on
CHANNEL_RESULT; A counts the echoes on its own subscriber socket. Both sides
pack PUBLISH commands with transport's packer and write a whole batch with one sendall, and
read through hiredis.Reader, draining every complete reply per recv. That is
the shape of geventsched's hot path minus job encoding, bookkeeping and Lua, so
the figure is a ceiling for what the scheduler can reach on the same machine.

Phase 1: throughput, with at most --window messages published but not yet echoed.
Phase 2: latency, --round-trips one-at-a-time round trips (publish, wait for the echo).

    python -m geventsched.rig.rawecho --redis-url redis://127.0.0.1:6379/0 --messages 200000 --json

``geventsched bench`` runs it after its own runs and prints how close it came (``measure``).
Like a benchmark's client should, it reads through hiredis itself: it is the one module besides
transport.py and sentinel.py that imports hiredis (and redis-py's URL parser).

Pub/sub channels are global to a Redis server (not per db), so by default the
channel names carry a per-run namespace ("rawecho-<pid>:CHANNEL_DISPATCH_1") to
keep a live geventsched on the same server from seeing the echo traffic;
--namespace "" gives the bare names.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

RECV_SIZE = 256 * 1024
STOP = b"__raw_echo_stop__"


# ---- RESP and sockets --------------------------------------------------------------------------


def connect(url):
    """A plain TCP socket to the server in ``url`` (AUTH'd if the URL has a password)."""
    import hiredis
    from redis.connection import parse_url

    from geventsched.transport import pack  # here, not above: main() patches before transport loads

    opts = parse_url(url)
    sock = socket.create_connection((opts.get("host", "127.0.0.1"), opts.get("port", 6379)))
    # Small writes must leave at once: the latency phase sends one message at a time.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if opts.get("password"):
        auth = [opts["username"], opts["password"]] if opts.get("username") else [opts["password"]]
        sock.sendall(pack("AUTH", *auth))
        reader = hiredis.Reader()
        reply = False
        while reply is False:
            reader.feed(sock.recv(4096))
            reply = reader.gets()
        if isinstance(reply, Exception):
            raise reply
    return sock


def subscribe(url, channel):
    """A socket subscribed to ``channel`` and its hiredis reader, the confirmation consumed."""
    import hiredis

    from geventsched.transport import pack

    sock = connect(url)
    sock.sendall(pack("SUBSCRIBE", channel))
    reader = hiredis.Reader()
    reply = False
    while reply is False:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("server closed the connection during SUBSCRIBE")
        reader.feed(data)
        reply = reader.gets()
    if isinstance(reply, Exception) or reply[0] != b"subscribe":
        raise RuntimeError(f"unexpected SUBSCRIBE reply: {reply!r}")
    return sock, reader


def discard_replies(sock):
    """Read and drop the integer replies to our PUBLISHes.

    Nobody needs the subscriber counts, but unread replies would fill the socket
    buffers until Redis stops reading our commands.
    """
    recv = sock.recv
    while recv(RECV_SIZE):
        pass


def read_messages(sock, reader):
    """Block for one recv; return the payloads of every complete message it finished."""
    data = sock.recv(RECV_SIZE)
    if not data:
        raise ConnectionError("server closed the subscriber connection")
    reader.feed(data)
    out = []
    gets = reader.gets
    reply = gets()
    while reply is not False:
        out.append(reply[2])  # [b"message", channel, payload]
        reply = gets()
    return out


def channel_names(namespace):
    prefix = f"{namespace}:" if namespace else ""
    return prefix + "CHANNEL_DISPATCH_1", prefix + "CHANNEL_RESULT"


# ---- process B: the worker side ----------------------------------------------------------------


def exit_with_parent():
    """End this process when A goes away: A holds our stdin open and never writes to it."""
    from gevent.socket import wait_read

    fd = sys.stdin.fileno()
    while True:
        wait_read(fd)
        if not os.read(fd, 4096):
            os._exit(0)


def run_worker(url, namespace):
    import gevent

    gevent.spawn(exit_with_parent)
    dispatch, result = channel_names(namespace)
    sub, reader = subscribe(url, dispatch)
    pub = connect(url)
    gevent.spawn(discard_replies, pub)
    # Subscribed: from here on no published message is lost, so A may start.
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    from geventsched.transport import pack_publishes

    channel = result.encode()
    while True:
        payloads = read_messages(sub, reader)
        stop = STOP in payloads
        if payloads:
            # One write for everything this recv delivered: this is where batching pays.
            pub.sendall(pack_publishes(channel, payloads))
        if stop:
            return


# ---- process A: the master side ----------------------------------------------------------------


def throughput(pub, sub, reader, channel, messages, window, batch):
    """Publish ``messages`` payloads on ``channel`` (bytes) keeping at most ``window`` un-echoed;
    return seconds taken."""
    from geventsched.transport import pack_publish

    payload = b"x" * 16
    one = pack_publish(channel, payload)
    sent = received = 0
    start = time.perf_counter()
    while received < messages:
        room = min(window - (sent - received), messages - sent, batch)
        if room > 0:
            pub.sendall(one * room)
            sent += room
        # A single loop is enough: the other direction (PUBLISH replies) is drained by its own
        # greenlet, and this recv yields to it while waiting.
        received += len(read_messages(sub, reader))
    if received != messages:  # more echoes than messages would mean someone else publishes here
        raise RuntimeError(f"got {received} echoes for {messages} messages")
    return time.perf_counter() - start


def latency(pub, sub, reader, channel, round_trips):
    """Milliseconds of ``round_trips`` sequential publish -> echo round trips on ``channel`` (bytes)."""
    from geventsched.transport import pack_publish

    samples = []
    for i in range(round_trips):
        payload = b"rt%d" % i
        t0 = time.perf_counter()
        pub.sendall(pack_publish(channel, payload))
        got = []
        while payload not in got:
            got = read_messages(sub, reader)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


def summarize(samples):
    s = sorted(samples)
    return {
        "p50": round(percentile(s, 50), 3),
        "p90": round(percentile(s, 90), 3),
        "p99": round(percentile(s, 99), 3),
        "max": round(s[-1], 3),
    }


def run_master(args):
    import gevent

    dispatch, result = channel_names(args.namespace)
    # Subscribe to the echoes before B exists, so not one echo can be missed.
    sub, reader = subscribe(args.redis_url, result)
    pub = connect(args.redis_url)
    drain = gevent.spawn(discard_replies, pub)

    worker = subprocess.Popen(
        [sys.executable, "-m", "geventsched.rig.rawecho", "--role", "worker",
         "--redis-url", args.redis_url, "--namespace", args.namespace],
        stdin=subprocess.PIPE,  # closed when we exit, however we exit: B then exits too
        stdout=subprocess.PIPE,
    )
    try:
        with gevent.Timeout(30, RuntimeError("the echo worker did not subscribe within 30 s")):
            if worker.stdout.readline().strip() != b"ready":
                raise RuntimeError("the echo worker failed to start")

        from geventsched.transport import pack_publish

        channel = dispatch.encode()
        # A short warm-up so connection setup and first-call costs stay out of the figures.
        throughput(pub, sub, reader, channel, min(1000, args.messages), args.window, args.batch)
        with gevent.Timeout(args.timeout, RuntimeError(f"throughput phase took over {args.timeout} s")):
            seconds = throughput(pub, sub, reader, channel, args.messages, args.window, args.batch)
        with gevent.Timeout(args.timeout, RuntimeError(f"latency phase took over {args.timeout} s")):
            samples = latency(pub, sub, reader, channel, args.round_trips)
        pub.sendall(pack_publish(channel, STOP))
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stdin.close()
        worker.stdout.close()
        drain.kill()  # before closing its socket, so it doesn't die on a closed fd
        pub.close()
        sub.close()

    return {
        "system": "raw-echo",
        "jobs": args.messages,
        "seconds": round(seconds, 4),
        "jobs_per_s": round(args.messages / seconds, 1),
        "window": args.window,
        "latency_ms": summarize(samples),
        "round_trips": args.round_trips,
    }


def measure(url, messages=200_000, round_trips=1000, timeout=120.0):
    """The raw limit at ``url``: ``{"jobs_per_s": ..., "latency_ms": {...}, ...}`` (gevent patched)."""
    return run_master(parse_args(["--redis-url", url, "--messages", str(messages),
                                  "--round-trips", str(round_trips), "--timeout", str(timeout)]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--messages", type=int, default=200_000, help="messages in the throughput phase")
    p.add_argument("--window", type=int, default=1000, help="most messages published but not yet echoed")
    p.add_argument("--batch", type=int, default=1000, help="most PUBLISHes packed into one write")
    p.add_argument("--round-trips", type=int, default=2000, help="sequential round trips in the latency phase")
    p.add_argument("--namespace", default=f"rawecho-{os.getpid()}",
                   help='prefix of the channel names ("NS:CHANNEL_DISPATCH_1"); "" for the bare names')
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for each phase")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--role", choices=["master", "worker"], default="master", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.messages < 1 or args.window < 1 or args.batch < 1 or args.round_trips < 1:
        p.error("--messages, --window, --batch and --round-trips must be at least 1")
    return args


def main(argv=None):
    # Patch before anything opens a socket or starts a subprocess, so that every blocking
    # call below yields to the other greenlets instead of stalling the process. (The code
    # above reaches socket and subprocess through their modules, e.g. socket.create_connection,
    # so it picks up the patched versions although the modules were imported earlier.)
    from gevent import monkey

    monkey.patch_all()
    args = parse_args(argv)
    if args.role == "worker":
        run_worker(args.redis_url, args.namespace)
        return 0
    out = run_master(args)
    if args.json:
        print(json.dumps(out))
    else:
        lat = out["latency_ms"]
        print(f"raw echo: {out['jobs']} messages in {out['seconds']:.3f} s = {out['jobs_per_s']:,.0f} msg/s "
              f"(window {out['window']})")
        print(f"round trips ({out['round_trips']}): p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
              f"p99 {lat['p99']} ms, max {lat['max']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
