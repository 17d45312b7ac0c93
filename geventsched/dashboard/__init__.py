"""``geventsched dashboard``: a live web page on the same Redis as the workers and the master.

Served by gevent's own WSGI server (no web framework: routing is a dict of six pages), rendered on
the server from Jinja2 templates with autoescape, kept live by server-sent events, with one small
script and one style sheet shipped in the package (nothing from a CDN, no build step). It keeps no
state of its own (``data``); ``security`` says who may see and change what; ``actions`` makes the
changes.
"""

import logging
import signal

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from geventsched.dashboard.security import is_loopback
from geventsched.errors import GeventschedError

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9180
#: Connections served at once (each open page holds one for its live stream); more wait their turn.
MAX_CONNECTIONS = 1000


def refusal(addr, token):
    """Why the dashboard must not start on ``addr`` with ``token``, as one line; None when it may."""
    if token is not None and not token.strip():
        return "--token must not be empty"
    if token is None and not is_loopback(addr):
        return (f"--addr {addr} is not a loopback address: give --token TOKEN too (every request must then "
                "carry it)")
    return None


def make_server(store, addr=DEFAULT_ADDR, port=DEFAULT_PORT, token=None, redis_url=""):
    """A WSGIServer for the dashboard of ``store``, not started yet (``port`` 0: a free one)."""
    from geventsched.dashboard.app import Dashboard

    application = Dashboard(store, redis_url, token, port)
    return WSGIServer((addr, port), application, log=None, error_log=_ErrorLog(), spawn=MAX_CONNECTIONS)


def serve(store, addr=DEFAULT_ADDR, port=DEFAULT_PORT, token=None, redis_url=""):
    """Serve until SIGTERM or SIGINT. Raises GeventschedError when it cannot listen."""
    server = make_server(store, addr, port, token, redis_url)
    try:
        server.start()
    except OSError as exc:
        raise GeventschedError(f"cannot listen on {addr}:{port}: {exc.strerror or exc}") from None
    host = f"[{addr}]" if ":" in addr else addr
    log.info("dashboard on http://%s:%d/%s", host, server.server_port,
             " (every request needs the token)" if token else "")
    stop = Event()
    handlers = [gevent.signal_handler(signal.SIGTERM, stop.set)]
    try:
        stop.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        server.stop(timeout=1)
    return 0


class _ErrorLog:
    """pywsgi's error log (a file-like object) into ours, so a failed request is one log line."""

    def write(self, text):
        text = text.strip()
        if text:
            log.warning("%s", text)

    def flush(self):
        pass
