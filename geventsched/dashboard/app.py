"""The dashboard's WSGI application: pages rendered on the server, each with one live region that a
server-sent event stream replaces when what it shows changes (checked once a second), and POST
actions that send the browser back to the page it came from.

Pages: ``/`` overview, ``/jobs?state=S`` lists (``q`` an id, ``task`` a task name, ``offset``),
``/job?id=ID``, ``/schedules``; ``/api/overview`` and ``/api/job?id=ID`` give the same as JSON.
Actions (POST, see ``security``): ``/requeue``, ``/delete``, ``/requeue-all``, ``/cancel``,
``/remove-schedule``. Templates escape every value (Jinja2 with autoescape on): a task called
``<script>`` is shown as text.
"""

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import gevent
import jinja2

from geventsched import __version__, lookup, transport
from geventsched.dashboard import charts, data, formats
from geventsched.dashboard.actions import Actions
from geventsched.dashboard.security import SECURITY_HEADERS, Denied, Guard, without_token

log = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Seconds between two looks at what a live region shows; a stream ends after ``STREAM_LIFETIME``
#: (the browser opens a new one at once) and sends a comment after ``KEEPALIVE`` quiet seconds, which
#: is also how a closed tab's stream finds out and ends.
LIVE_INTERVAL = 1.0
STREAM_LIFETIME = 600.0
KEEPALIVE = 5.0
MAX_FORM_BYTES = 64 << 10
STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
#: What a page says after a change, by the code the change sends it (a code, not text, travels in the
#: address: a link made elsewhere cannot make the page say something of its own).
MESSAGES = {
    "requeued": "{n} dead letter{s} requeued",
    "deleted": "{n} dead letter{s} deleted",
    "cancelled": "{n} job{s} cancelled",
    "too-late": "too late to cancel: the job had finished",
    "unknown": "no such job (its record has expired?)",
    "removed": "schedule removed",
    "not-removed": "no such schedule (removed already?)",
}


class NotFound(Exception):
    """Nothing at this address (an unknown job, state or page)."""


@dataclass
class View:
    """A page: its template, the template of its live region, and what both show."""
    template: str
    live: str
    context: dict


@dataclass
class Response:
    status: str
    headers: list
    body: object  # bytes, or an iterable of bytes (a stream)


class Request:
    def __init__(self, environ):
        self.environ = environ
        self.method = environ["REQUEST_METHOD"]
        self.path = environ.get("PATH_INFO") or "/"
        self.query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        self.here = without_token(environ)

    def arg(self, name, default=""):
        return self.query.get(name, default).strip()

    def number(self, name, default, low, high):
        try:
            return min(max(int(self.query.get(name, default)), low), high)
        except ValueError:
            return default


class Dashboard:
    """The WSGI application on one store. ``redis_url`` is shown with its password masked."""

    def __init__(self, store, redis_url="", token=None, port=0):
        self.store = store
        self.guard = Guard(token, port)
        self.actions = Actions(store)
        self.history = data.History(store)
        self.redis_url = transport.redact(redis_url)
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("geventsched.dashboard", "templates"),
                                      autoescape=True, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(when=formats.when, span=formats.span, pretty=formats.pretty, brief=formats.brief)
        self.env.globals.update(url=formats.url, version=__version__)
        files = resources.files("geventsched.dashboard").joinpath("static")
        self.static = {name: files.joinpath(name).read_bytes() for name in STATIC}
        self.pages = {"/": self.overview, "/jobs": self.jobs, "/job": self.job, "/schedules": self.schedules}
        self.apis = {"/api/overview": self.api_overview, "/api/job": self.api_job}
        self.posts = {"/requeue": self.do_requeue, "/delete": self.do_delete, "/requeue-all": self.do_requeue_all,
                      "/cancel": self.do_cancel, "/remove-schedule": self.do_remove_schedule}

    def __call__(self, environ, start_response):
        request = Request(environ)
        extra = []
        try:
            extra, strip = self.guard.admit(environ)
            response = _redirect(request.here) if strip else self.route(request)
        except Denied as exc:
            response = self.error_page(exc.status, exc.reason, exc.headers)
        except NotFound as exc:
            response = self.error_page("404 Not Found", str(exc) or "nothing here")
        except transport.RedisError as exc:
            response = self.error_page("503 Service Unavailable", f"Redis: {transport.describe(exc)}")
        except Exception:  # a bug: said in the log, and a page that still carries the security headers
            log.exception("dashboard: %s %s failed", request.method, request.path)
            response = self.error_page("500 Internal Server Error", "the dashboard failed (its log says why)")
        start_response(response.status, response.headers + SECURITY_HEADERS + extra)
        body = response.body
        return [body] if isinstance(body, bytes) else body

    # -- routing -----------------------------------------------------------------------------------

    def route(self, request):
        path, method = request.path, request.method
        if method == "POST" and path in self.posts:
            return self.act(request, self.posts[path])
        if method not in ("GET", "HEAD"):
            return self.error_page("405 Method Not Allowed", f"{method} is not used here",
                                   [("Allow", "POST" if path in self.posts else "GET, HEAD")])
        if path in self.pages:
            view = self.pages[path](request)
            return view if isinstance(view, Response) else self.page(view, request)
        if path in self.apis:
            return _json(self.apis[path](request))
        if path == "/events":
            return self.events(request)
        if path.startswith("/static/") and path[8:] in self.static:
            name = path[8:]
            return Response("200 OK", [("Content-Type", STATIC[name]), ("Cache-Control", "no-cache")],
                            self.static[name])
        if path == "/favicon.ico":
            return Response("204 No Content", [], b"")
        if path in self.posts:
            return self.error_page("405 Method Not Allowed", "changes are POST requests", [("Allow", "POST")])
        raise NotFound(f"no page at {path}")

    def page(self, view, request):
        html = self.env.get_template(view.template).render(self.common(request, view), **view.context)
        return Response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
                        html.encode())

    def common(self, request, view=None):
        """What every template may use."""
        msg = MESSAGES.get(request.arg("msg"))
        n = request.number("n", 0, 0, 10**9)
        return {"csrf": self.guard.csrf_token, "redis_url": self.redis_url, "namespace": self.store.keys.namespace,
                "here": _drop(request.here, "msg", "n"), "path": request.path,
                "message": msg.format(n=n, s="" if n == 1 else "s") if msg else None,
                "live_template": view.live if view else None,
                "now": time.time()}

    def error_page(self, status, reason, headers=()):
        html = self.env.get_template("error.html").render(
            status=status, reason=reason, redis_url=self.redis_url, path="", namespace=self.store.keys.namespace)
        return Response(status, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                                 *headers], html.encode())

    # -- pages -------------------------------------------------------------------------------------

    def overview(self, request):
        view = data.overview(self.store, self.history)
        throughput = view["throughput"]
        latency = view["latency"]
        recent = [row for row in latency if row[1] is not None]
        view.update(rate_chart=charts.bars(throughput, "jobs/s"),
                    latency_chart=charts.lines(latency, ("p50", "p95"), "s"),
                    rate_now=throughput[-1][1] if throughput else 0.0,
                    latency_now=recent[-1] if recent else None)
        return View("overview.html", "overview_live.html", view)

    def jobs(self, request):
        state = request.arg("state", "queued")
        if state not in lookup.STATES:
            raise NotFound(f"no job state {state!r} (one of {', '.join(lookup.STATES)})")
        q, task = request.arg("q"), request.arg("task")
        if q and request.path == "/jobs" and lookup.job_info(self.store, q) is not None:
            return _redirect(formats.url("/job", id=q))  # an id: that job's page, whatever its state
        limit = request.number("limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
        offset = request.number("offset", 0, 0, 10**12)
        total, rows = lookup.list_jobs(self.store, state, offset, limit, task=task or None, search=q or None)
        if state in ("finished", "dead"):
            _fill_finish_times(self.store, rows)
        return View("jobs.html", "jobs_live.html", {
            "state": state, "rows": rows, "total": total, "offset": offset, "limit": limit, "q": q, "task": task,
            "counts": data.counts(self.store), "states": lookup.STATES,
            "pages": _pages(offset, limit, total)})

    def job(self, request):
        job_id = request.arg("id")
        info = lookup.job_info(self.store, job_id) if job_id else None
        if info is None:
            raise NotFound(f"no job {job_id!r} (unknown, or its result has expired)")
        _fill_finish_times(self.store, [info])
        return View("job.html", "job_live.html", {"job": info, "job_id": job_id})

    def schedules(self, request):
        return View("schedules.html", "schedules_live.html", {"schedules": data.schedules(self.store)})

    def api_overview(self, request):
        return data.overview(self.store, self.history)

    def api_job(self, request):
        info = lookup.job_info(self.store, request.arg("id"))
        if info is None:
            raise NotFound(f"no job {request.arg('id')!r}")
        return info

    # -- live updates ------------------------------------------------------------------------------

    def events(self, request):
        """A server-sent event stream of the live region of the page at ``?view=PATH?QUERY``: its HTML,
        sent whenever it changes."""
        parts = urlsplit(request.arg("view", "/"))
        render = self.pages.get(parts.path)
        if render is None:
            raise NotFound("no live page there")
        environ = {**request.environ, "PATH_INFO": parts.path, "QUERY_STRING": parts.query}
        sub = Request(environ)
        return Response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                                   ("X-Accel-Buffering", "no")], self._stream(render, sub))

    def _stream(self, render, request):
        yield b"retry: 2000\n\n"
        last, quiet = None, 0.0
        end = time.monotonic() + STREAM_LIFETIME
        while time.monotonic() < end:
            html = self._live_html(render, request)
            if html != last:
                last, quiet = html, 0.0
                yield b"data: " + json.dumps({"html": html}).encode() + b"\n\n"
            elif quiet >= KEEPALIVE:
                quiet = 0.0
                yield b": keep-alive\n\n"
            gevent.sleep(LIVE_INTERVAL)
            quiet += LIVE_INTERVAL

    def _live_html(self, render, request):
        try:
            view = render(request)
            if isinstance(view, Response):
                return ""
            return self.env.get_template(view.live).render(self.common(request, view), **view.context)
        except NotFound as exc:
            return self.env.get_template("gone.html").render(reason=str(exc))
        except transport.RedisError as exc:
            return self.env.get_template("gone.html").render(reason=f"Redis: {transport.describe(exc)}")

    # -- actions -----------------------------------------------------------------------------------

    def act(self, request, action):
        form = _read_form(request.environ)
        self.guard.check_post(request.environ, form)
        code, n = action(form)
        return _redirect(_with_message(_first(form, "next"), code, n))

    def do_requeue(self, form):
        return "requeued", self.actions.requeue(form.get("id", []))

    def do_delete(self, form):
        return "deleted", self.actions.delete(form.get("id", []))

    def do_requeue_all(self, form):
        return "requeued", self.actions.requeue_all(_first(form, "task") or None)

    def do_cancel(self, form):
        states = list(self.actions.cancel(form.get("id", [])).values())  # {id: cancelled|finished|unknown}
        cancelled = states.count("cancelled")
        if cancelled or not states:
            return "cancelled", cancelled
        return ("too-late" if "finished" in states else "unknown"), 0

    def do_remove_schedule(self, form):
        return ("removed" if self.actions.remove_schedule(_first(form, "name")) else "not-removed"), 1


# -- helpers -----------------------------------------------------------------------------------------

def _fill_finish_times(store, jobs):
    """A finished or dead job's finish time where its result does not say it (``data.finish_times``)."""
    missing = [job["id"] for job in jobs if job.get("finished") is None and job.get("state") in ("finished", "dead")]
    found = data.finish_times(store, missing)
    for job in jobs:
        if job["id"] in found:
            job["finished"] = found[job["id"]]


def _read_form(environ):
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0
    if size > MAX_FORM_BYTES:
        raise Denied("413 Content Too Large", "the form is too large")
    body = environ["wsgi.input"].read(size) if size > 0 else b""
    return parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def _first(form, name):
    values = form.get(name)
    return values[0] if values else ""


def _with_message(target, code, n):
    """Where a change sends the browser: back to ``target`` (a path of this site only), saying ``code``."""
    if not target.startswith("/") or target.startswith("//") or target.startswith("/\\"):
        target = "/"
    target = _drop(target, "msg", "n")
    return target + ("&" if "?" in target else "?") + urlencode({"msg": code, "n": n})


def _drop(target, *names):
    path, _, query = target.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in names]
    return path + (f"?{urlencode(kept)}" if kept else "")


def _redirect(location):
    return Response("303 See Other", [("Location", location), ("Cache-Control", "no-store")], b"")


def _json(doc):
    return Response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
                    json.dumps(doc, default=str).encode())


def _pages(offset, limit, total):
    last = max(((total - 1) // limit) * limit, 0) if total else 0
    return {"first": 0 if offset > 0 else None, "prev": max(offset - limit, 0) if offset > 0 else None,
            "next": offset + limit if offset + limit < total else None,
            "last": last if offset < last else None,
            "from": offset + 1 if total else 0, "to": min(offset + limit, total)}
