"""Who may see the dashboard and change things through it.

- **Loopback by default.** Without a token the dashboard only listens on a loopback address, and
  only answers requests that name a loopback host: a web page elsewhere whose name an attacker
  points at 127.0.0.1 (DNS rebinding) gets a 403, not the job lists.
- **A token on any other address.** Every request then carries it: ``Authorization: Bearer TOKEN``,
  or ``?token=TOKEN`` once, after which it is kept in an HttpOnly, SameSite=Strict cookie and the
  browser is sent on to the same address without it (so it stays out of history and logs).
- **Changes are POST requests** with a CSRF token in a hidden field (an HMAC of this process's own
  random secret) and, when the browser says where the form came from (Origin, else Referer), that
  place must be this dashboard. GET never changes anything.
- **Headers** keep pages out of frames and inline scripts out of pages (Content-Security-Policy).
"""

import hashlib
import hmac
import ipaddress
import os
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

#: What every answer carries. The CSP allows only this dashboard's own script and style files: an
#: injected ``<script>`` or ``onerror=`` would not run even if something slipped past the escaping.
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]
LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host):
    """Is ``host`` (an address or a name, as given to ``--addr`` or in a Host header) this machine only?"""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header):
    """The host part of a Host header (``name:port``, ``[::1]:port``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class Denied(Exception):
    """A request that is refused: ``status`` line and a one-line reason shown to the user."""

    def __init__(self, status, reason, headers=()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)


class Guard:
    """The checks above for one dashboard process. ``token``: None on loopback without one."""

    def __init__(self, token=None, port=0, secret=None):
        self.token = token
        self._secret = secret or os.urandom(32)
        # One cookie per port: two dashboards on one host must not overwrite each other's token.
        self.cookie_name = f"geventsched_dashboard_{port}"
        self.csrf_token = hmac.new(self._secret, b"csrf " + (token or "").encode(), hashlib.sha256).hexdigest()
        # The cookie holds a digest of the token, not the token: always a valid cookie value, and a
        # token that a cookie store gives away is not the one to type elsewhere.
        self._cookie_value = hashlib.sha256(b"geventsched dashboard cookie\0" + (token or "").encode()).hexdigest()

    def admit(self, environ):
        """Check a request's credentials. Raises Denied, or returns headers to add (a Set-Cookie) and
        whether to send the browser on to the address without ``?token=``."""
        if self.token is None:
            if not is_loopback(host_of(environ.get("HTTP_HOST", ""))):
                raise Denied("403 Forbidden", "this dashboard answers only on a loopback host name "
                                              "(start it with --token to serve other names)")
            return [], False
        bearer, cookie = self._bearer(environ), self._cookie(environ)
        if (bearer is not None and self._matches(bearer)) or \
                (cookie is not None and hmac.compare_digest(cookie.encode(), self._cookie_value.encode())):
            return [], False
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        if "token" in query and self._matches(query["token"]):
            cookie = f"{self.cookie_name}={self._cookie_value}; Path=/; HttpOnly; SameSite=Strict"
            return [("Set-Cookie", cookie)], environ["REQUEST_METHOD"] in ("GET", "HEAD")
        raise Denied("401 Unauthorized", "a token is required: open the address with ?token=TOKEN, or send "
                                         "Authorization: Bearer TOKEN", [("WWW-Authenticate", "Bearer")])

    def check_post(self, environ, form):
        """A change must come from a page of this dashboard: the form's CSRF token (``form`` as
        ``parse_qs`` makes it), and Origin (else
        Referer, when the browser sends one) naming this host. Raises Denied."""
        host = environ.get("HTTP_HOST", "")
        origin = environ.get("HTTP_ORIGIN")
        source = origin if origin is not None else environ.get("HTTP_REFERER")
        if source is not None and (source == "null" or urlsplit(source).netloc != host):
            raise Denied("403 Forbidden", "refused a change sent from another site")
        given = (form.get("csrf") or [""])[0]
        if not hmac.compare_digest(given.encode(), self.csrf_token.encode()):
            raise Denied("403 Forbidden", "the form is stale (the dashboard restarted?): reload the page and "
                                          "try again")

    def _matches(self, given):
        return hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def _bearer(environ):
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def _cookie(self, environ):
        cookies = SimpleCookie()
        try:
            cookies.load(environ.get("HTTP_COOKIE", ""))
        except Exception:  # a malformed Cookie header is no credential, not a crash
            return None
        morsel = cookies.get(self.cookie_name)
        return morsel.value if morsel else None


def without_token(environ):
    """The request's path and query with ``token`` taken out (where ``?token=`` sends the browser on)."""
    query = [(k, v) for k, v in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True) if k != "token"]
    return environ.get("PATH_INFO", "/") + (f"?{urlencode(query)}" if query else "")
