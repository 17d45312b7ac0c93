"""How the templates write values: addresses, times, durations, JSON. Pure functions (their output
is escaped by the templates like any other value)."""

import datetime
import json
from urllib.parse import urlencode


def url(path, **params):
    """``path?query`` of the params that have a value."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + (f"?{urlencode(kept)}" if kept else "")


def when(ts):
    """A Unix time as ``geventsched job`` writes it: ISO 8601 in UTC, to the millisecond."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def span(seconds):
    """A duration as a person reads it: 350 ms, 12.5 s, 3.2 min, 5.0 h."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def pretty(value):
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def brief(value, limit=80):
    """Arguments in a list's cell: compact JSON, cut short (None: the record was not kept)."""
    if value is None:
        return "(not kept)"
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit - 1] + "…"
