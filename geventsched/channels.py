"""Parsing ``--channels SPEC``: ``N`` (1..N), ``A-B``, or a comma list of numbers, ranges or names."""

from geventsched.errors import ConfigError

MAX_CHANNELS = 1_000_000


def parse_channels(spec):
    """Return the channel names (numbers as strings, or names) in ``spec``, in order, without repeats.

    Raises ConfigError with a one-line reason for anything else.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("empty channel spec (expected N, A-B or a comma list)")
    if spec.isdecimal() and spec.isascii() and "," not in spec:
        count = int(spec)
        _check_count(count, spec)
        return [str(n) for n in range(1, count + 1)]
    names = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"bad channel spec {spec!r}: empty item")
        for name in _expand(part, spec):
            names[name] = None
    _check_count(len(names), spec)
    return list(names)


def _expand(part, spec):
    lo, sep, hi = part.partition("-")
    if sep and _number(lo) and _number(hi):
        lo, hi = int(lo), int(hi)
        if lo < 1 or hi < lo:
            raise ConfigError(f"bad channel range {part!r} in {spec!r}: need 1 <= A <= B")
        _check_count(hi - lo + 1, spec)
        return [str(n) for n in range(lo, hi + 1)]
    if _number(part):
        if int(part) < 1:
            raise ConfigError(f"bad channel number {part!r} in {spec!r}: channels start at 1")
        return [str(int(part))]
    if any(c.isspace() for c in part) or len(part) > 200:
        raise ConfigError(f"bad channel name {part!r} in {spec!r}")
    return [part]


def _check_count(count, spec):
    if count < 1:
        raise ConfigError(f"bad channel spec {spec!r}: no channels")
    if count > MAX_CHANNELS:
        raise ConfigError(f"bad channel spec {spec!r}: more than {MAX_CHANNELS} channels")


def _number(text):
    return text.isascii() and text.isdecimal()
