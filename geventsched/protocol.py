"""Jobs and results, and the codecs that turn them into bytes and back. Pure: no Redis here.

The default codec ``json`` (version 1) is self-describing JSON with a ``"v"`` field::

    job:    {"v": 1, "id": "42", "task": "echo", "args": [1], "kwargs": {}, "timeout": 300.0,
             "reply": "geventsched:reply:ab12", "ts": 1767225600.123, "tok": "5f0c9a01e2b37"}
    result: {"v": 1, "id": "42", "task": "echo", "status": "ok", "value": 1, "tok": "5f0c9a01e2b37"}
            {"v": 1, "id": "42", "task": "fail", "status": "error",
             "error": {"type": "RuntimeError", "message": "boom", "traceback": "..."}}

``tok`` is the dispatch token: the master draws one per dispatch, keeps it with the job's in-flight
record, and the worker repeats it in the result. A result counts (it is recorded, and it frees the
master's slot) only with the token of the dispatch in flight, so a message published by a stranger,
or by a copy of the job that was dispatched again meanwhile, changes nothing. Jobs in Redis carry no
token; the master adds it to the stored record as it publishes it (``encode_dispatch``).

Batch frames (version 2) carry many jobs in one dispatch message, or many results in one result or
reply message, so the per-message costs of pub/sub (a PUBLISH, a message parsed, a wake-up) are paid
once per batch::

    dispatch: {"v": 2, "tok": "5f0c9a01e2b37", "jobs": [<job record>, {"ref": "43"}, ...]}
    results:  {"v": 2, "results": [<result>, ...]}

The records in a dispatch frame are the stored ones as they are; the frame's ``tok`` is each job's
dispatch token. A job larger than ``REF_THRESHOLD`` travels as ``{"ref": id}``: the worker reads its
record from Redis, where the durable path keeps it anyway, so no single message grows with a job.
Rolling upgrades: a worker lists the frame versions it reads in its heartbeat (``FRAMES``) and the
master sends frames only to workers that list 2; a worker answers in a result frame only the jobs
that came in one (their master reads frames), and a client that reads reply frames says so in its
jobs (``"rf": 2``). Version-1 messages are read by every side, always.

A reply frame for a client that keeps a secret in Redis (``replykey:<its reply channel>``) is
signed by the script that records its results::

    reply:    {"v": 2, "results": [<result>, ...], "mac": "<40 hex digits>"}

with ``mac = sha1(secret + results + secret)`` over the bytes between the brackets (``reply_mac``).
A result over 16 KiB is announced alone, to its client and to the master, as a cue without its value
(``{"v": 1, "id": "42", "status": "ok", "tok": "...", "cue": true}``): it is read from Redis.
The secret never travels in a message, so a stranger who can publish on the reply channel, or read
every dispatch, cannot sign: the client believes a signed frame as it is (``signed``) and reads the
stored result back only for what came unsigned.

The ``raw`` codec speaks the original design's protocol: a dispatch message is the bare job id, and
the worker publishes the same bytes back as the result.

Nothing here ever unpickles: decoding only builds plain JSON values.
"""

import hashlib
import hmac
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from geventsched.config import DEFAULT_MAX_PAYLOAD
from geventsched.errors import DecodeError

VERSION = 1
#: The batch frame's version, and the frame versions this code reads.
FRAME = 2
FRAMES = (1, 2)
#: A job whose stored record is larger than this is dispatched by reference (a frame's ``{"ref": id}``).
REF_THRESHOLD = 64 * 1024
#: A result frame goes out before it grows past this (a single larger result goes alone); the finish
#: script has the same figure.
FRAME_BYTES = 256 * 1024
_RESULTS_HEAD = b'{"v":2,"results":['
_MAC_HEAD = b'],"mac":"'  # then the MAC's 40 hex digits and '"}'
_MAC_TAIL = len(_MAC_HEAD) + 40 + 2  # the bytes of a signed frame after its results
#: A cancelled job's result: recorded by the cancel itself (``lua/cancel.lua``), never by a worker.
CANCELLED = "cancelled"
STATUSES = ("ok", "error", "timeout", CANCELLED, "dead")
#: Announced to the master when a failed job is scheduled to run again; never a job's result.
RETRY = "retry"
#: What a dispatch adds to a job's record (its token): a worker takes messages this much larger.
DISPATCH_ROOM = 64

# orjson: ten times faster than the json module both ways on our messages (bench/README.md), strict
# JSON on input (no NaN/Infinity, UTF-8 only). On output it would write NaN and Infinity as null, so
# ``_dumps`` checks for them whenever "null" shows up in its output: a changed value must fail loudly.
_loads = orjson.loads
_INFINITIES = (float("inf"), float("-inf"))


def _dumps(doc, values):
    data = orjson.dumps(doc)
    if b"null" in data and not _finite(values):
        raise ValueError("NaN and Infinity are not JSON values")
    return data


def _finite(value):
    kind = type(value)
    if kind is float:
        return value == value and value not in _INFINITIES
    if kind is dict:
        return all(_finite(v) for v in value.values())
    if kind is list or kind is tuple:
        return all(_finite(v) for v in value)
    return True


class Job(NamedTuple):
    """A job, immutable: a changed job is a new one (``job._replace(...)``), so the record it was decoded
    from (``payload``, sent on as it is) can never go out stale. A tuple rather than a frozen dataclass:
    a worker builds one per job, and a frozen dataclass costs six times as much to build."""

    id: str
    task: str
    args: list = []  # never mutated: a job is immutable, and a task gets its own copies
    kwargs: dict = {}
    timeout: float | None = None
    reply: str | None = None
    submitted_at: float = 0.0
    #: Affinity key for ``--strategy hash`` (the job id when not set).
    key: str | None = None
    #: Retries after a failure (error or timeout); None = the task's own setting.
    max_retries: int | None = None
    #: It came in a batch frame: its result may go back in one.
    framed: bool = False
    #: Its client reads reply frames (its record says ``"rf": 2``).
    reply_frames: bool = False
    #: The dispatch token (see the module docstring); None in a job that was not dispatched.
    token: str | None = None
    #: The message this job was decoded from: the JSON codec sends it on unchanged (the master
    #: dispatches the stored record as it is), the raw codec echoes it back as the result. Not part
    #: of a job's equality.
    payload: bytes | None = None

    def __eq__(self, other):
        return isinstance(other, Job) and self[:-1] == other[:-1]

    def __ne__(self, other):
        return not self == other

    __hash__ = None  # args and kwargs are lists and dicts


@dataclass(slots=True)
class Result:
    id: str
    status: str
    value: object = None
    error: dict | None = None
    task: str = ""
    #: True for results of the raw codec: ``value`` is the payload text as it came back.
    raw: bool = False
    #: The token of the dispatch this result answers.
    token: str | None = None
    #: When the worker started and ended the run (unix seconds; 0 = not run by a worker).
    started: float = 0.0
    ended: float = 0.0
    #: An announcement that carries no value (``"cue": true``: a result over 16 KiB): read the stored one.
    cue: bool = False

    @property
    def ok(self):
        return self.status == "ok"


def error_result(job, status, exc_type, message, traceback=""):
    return Result(job.id, status, error={"type": exc_type, "message": message, "traceback": traceback},
                  task=job.task, token=job.token)


class JsonCodec:
    """Versioned JSON, JSON-compatible values only."""

    name = "json"

    def __init__(self, max_payload=DEFAULT_MAX_PAYLOAD):
        self.max_payload = max_payload

    def encode_job(self, job, extra=None):
        """``extra``: more fields for the stored record (priority, due time, unique key, schedule), read
        by lookups and scripts, ignored by workers."""
        if job.payload is not None:
            return job.payload
        doc = {"v": VERSION, "id": job.id, "task": job.task, "args": job.args, "kwargs": job.kwargs}
        if job.timeout is not None:
            doc["timeout"] = job.timeout
        if job.reply:
            doc["reply"] = job.reply
        if job.submitted_at:
            doc["ts"] = job.submitted_at
        if job.key:
            doc["key"] = job.key
        if job.max_retries is not None:
            doc["max_retries"] = job.max_retries
        if job.reply_frames:
            doc["rf"] = FRAME
        if extra:
            doc.update(extra)
        return _dumps(doc, (job.args, job.kwargs, job.timeout, job.submitted_at))

    def encode_dispatch(self, job, tail):
        """The message that dispatches ``job``: its record with the dispatch token added. The record
        as stored is reused, not encoded again: ``tail`` (``dispatch_tail(token)``) replaces its
        closing brace."""
        body = self.encode_job(job)
        if body[-1] != 125:  # "}": a record written by another client, with trailing space
            body = body.rstrip()
        return body[:-1] + tail

    @staticmethod
    def dispatch_tail(token):
        return b',"tok":"%s"}' % token.encode()

    def decode_job(self, data, max_payload=-1):
        """``max_payload``: None = no size limit (a record of our own), -1 = the codec's."""
        doc = self._load(data, self.max_payload if max_payload == -1 else max_payload)
        return _job(doc, doc.get("tok"), data)

    def encode_frame(self, records, token):
        """A dispatch frame of ``records`` (stored job records, or ``ref(id)``) under ``token``."""
        return b'{"v":2,"tok":"%s","jobs":[%s]}' % (token.encode(), b",".join(records))

    @staticmethod
    def frame_room(token):
        """Bytes a dispatch frame adds to its records, besides one comma between two."""
        return len(b'{"v":2,"tok":"","jobs":[]}') + len(token)

    @staticmethod
    def ref(job_id):
        """What a dispatch frame carries for a job sent by reference."""
        return b'{"ref":"%s"}' % job_id.encode()

    def decode_dispatch(self, data):
        """The jobs of a dispatch message of either version: ``(jobs, refs, errors)``: ``refs`` are
        ``(id, token)`` of jobs sent by reference, to read from Redis (``job_of_record`` then), and a DecodeError for each entry of
        a frame that was refused (the others are kept). Raises DecodeError for a message refused whole."""
        doc = self._load(data, versions=FRAMES)
        if doc["v"] == VERSION:
            return [_job(doc, doc.get("tok"), data)], [], []
        token, entries = doc.get("tok"), doc.get("jobs")
        if type(token) is not str or not 0 < len(token) <= 64 or type(entries) is not list:
            raise DecodeError("bad_field", "a frame needs a short string tok and a list of jobs")
        jobs, refs, errors = [], [], []
        for entry in entries:
            try:
                if type(entry) is not dict:
                    raise DecodeError("not_an_object", "a frame's job is not a JSON object")
                if "ref" in entry:
                    if type(entry["ref"]) is not str or not entry["ref"]:
                        raise DecodeError("bad_field", "ref must be a job id")
                    refs.append((entry["ref"], token))
                else:
                    jobs.append(_job(entry, token, None, framed=True))
            except DecodeError as exc:
                errors.append(exc)
        return jobs, refs, errors

    def job_of_record(self, data, token):
        """A job sent by reference, from its stored record: it came in a frame under ``token``."""
        doc = self._load(data, None)
        return _job(doc, token, None, framed=True)

    def encode_result(self, result, job=None):
        value = result.value
        if result.error is None and result.token and result.started and not result.raw:
            # A worker's answer to a dispatch, the shape of nearly every result: one dict made at once
            # (a worker encodes one a job), and no NaN to look for in a value of None.
            doc = {"v": VERSION, "id": result.id, "task": result.task, "status": result.status, "value": value,
                   "tok": result.token, "t0": result.started, "t1": result.ended}
            return orjson.dumps(doc) if value is None else _dumps(doc, value)
        doc = {"v": VERSION, "id": result.id, "task": result.task, "status": result.status}
        if result.error is not None:
            doc["error"] = result.error
        else:
            doc["value"] = value
        if result.raw:
            doc["raw"] = True
        if result.token:
            doc["tok"] = result.token
        if result.started:
            doc["t0"] = result.started
            doc["t1"] = result.ended
        return _dumps(doc, value)

    def encode_results(self, payloads):
        """Result frames of encoded results: as few as hold them, each under ``FRAME_BYTES`` unless
        one result alone is larger."""
        frames, chunk, size = [], [], 0
        for payload in payloads:
            if chunk and size + len(payload) > FRAME_BYTES:
                frames.append(b'{"v":2,"results":[%s]}' % b",".join(chunk))
                chunk, size = [], 0
            chunk.append(payload)
            size += len(payload) + 1
        if chunk:
            frames.append(b'{"v":2,"results":[%s]}' % b",".join(chunk))
        return frames

    def decode_results(self, data, max_payload=-1):
        """The results of a result message of either version: ``(results, errors)``, with a
        DecodeError for each entry of a frame that was refused. Raises DecodeError for a message
        refused whole."""
        doc = self._load(data, max_payload, versions=FRAMES)
        if doc["v"] == VERSION:
            return [_result(doc)], []
        entries = doc.get("results")
        if type(entries) is not list:
            raise DecodeError("bad_field", "a result frame needs a list of results")
        results, errors = [], []
        for entry in entries:
            try:
                if type(entry) is not dict:
                    raise DecodeError("not_an_object", "a frame's result is not a JSON object")
                results.append(_result(entry))
            except DecodeError as exc:
                errors.append(exc)
        return results, errors

    def decode_result(self, data, max_payload=-1):
        """One result (version 1). ``max_payload``: None = no size limit (a result read back from
        Redis), -1 = the codec's."""
        return _result(self._load(data, max_payload))

    def _load(self, data, max_payload=-1, versions=(VERSION,)):
        _check_size(data, self.max_payload if max_payload == -1 else max_payload)
        try:
            doc = _loads(data)
        except ValueError as exc:
            _text(data)  # bytes that are not UTF-8 are said as such, not as the parser's complaint
            raise DecodeError("invalid_json", str(exc).splitlines()[0][:120]) from None
        if not isinstance(doc, dict):
            raise DecodeError("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
        version = doc.get("v")
        if type(version) is not int or version not in versions:  # true and 1.0 are not 1
            raise DecodeError("bad_version", f"version {version!r}, this side reads "
                                             f"{'/'.join(map(str, versions))}")
        return doc


def reply_mac(secret, results):
    """The MAC of a reply frame's ``results`` (the bytes between its brackets) under ``secret``
    (bytes): what ``lua/finish.lua`` computes with ``redis.sha1hex``. The secret on both sides
    keeps a length extension from forging one."""
    return hashlib.sha1(secret + results + secret).hexdigest()


def signed(data, secret):
    """True when ``data`` is a reply frame signed with ``secret`` (bytes): its results are then the
    recorded ones, exactly as the script that recorded them announced them."""
    if len(data) < len(_RESULTS_HEAD) + _MAC_TAIL or not data.startswith(_RESULTS_HEAD) \
            or not data.startswith(_MAC_HEAD, len(data) - _MAC_TAIL) or not data.endswith(b'"}'):
        return False
    mac = reply_mac(secret, data[len(_RESULTS_HEAD):-_MAC_TAIL]).encode()
    return hmac.compare_digest(mac, data[-_MAC_TAIL + len(_MAC_HEAD):-2])


def _job(doc, token, payload, framed=False):
    """A checked Job from a decoded record."""
    try:
        job = Job(doc["id"], doc["task"], doc.get("args", []), doc.get("kwargs", {}), doc.get("timeout"),
                  doc.get("reply"), doc.get("ts", 0.0), doc.get("key"), doc.get("max_retries"), framed,
                  doc.get("rf") == FRAME, token, payload)
    except KeyError as exc:
        raise DecodeError("missing_field", f"job has no {exc.args[0]!r}") from None
    _check_job(job)
    return job


def _result(doc):
    """A checked Result from a decoded result."""
    try:
        result = Result(doc["id"], doc["status"], doc.get("value"), doc.get("error"),
                        doc.get("task", ""), bool(doc.get("raw", False)), doc.get("tok"),
                        _seconds(doc.get("t0")), _seconds(doc.get("t1")), doc.get("cue") is True)
    except KeyError as exc:
        raise DecodeError("missing_field", f"result has no {exc.args[0]!r}") from None
    if not isinstance(result.id, str) or (result.status not in STATUSES and result.status != RETRY):
        raise DecodeError("bad_field", "result id must be a string and status one of " + "/".join(STATUSES))
    if result.token is not None and type(result.token) is not str:
        raise DecodeError("bad_field", "tok must be a string")
    return result


def _seconds(value):
    """A timestamp read from a result: a number, else 0."""
    return value if type(value) is float or type(value) is int else 0.0


def _check_size(data, max_payload):
    """Refuse, with DecodeError, an empty message or one over ``max_payload`` bytes (None: no limit)."""
    if not data:
        raise DecodeError("empty", "empty message")
    if max_payload is not None and len(data) > max_payload:
        raise DecodeError("too_large", f"{len(data)} bytes > max payload {max_payload}")


def _text(data):
    """``data`` decoded as UTF-8; DecodeError when it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("not_utf8", "message is not UTF-8") from None


def _check_job(job):
    # type() is, not isinstance: a decoded JSON value is exactly one of these, and this runs per job.
    if type(job.id) is not str or not job.id:
        raise DecodeError("bad_field", "job id must be a non-empty string")
    if type(job.task) is not str or not job.task:
        raise DecodeError("bad_field", "task must be a non-empty string")
    if type(job.args) is not list or type(job.kwargs) is not dict:
        raise DecodeError("bad_field", "args must be a list and kwargs an object")
    timeout = job.timeout
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < 10**9):
        raise DecodeError("bad_field", "timeout must be a positive number of seconds")
    if job.reply is not None and type(job.reply) is not str:
        raise DecodeError("bad_field", "reply must be a channel name")
    if job.key is not None and type(job.key) is not str:
        raise DecodeError("bad_field", "key must be a string")
    if type(job.submitted_at) is not float and type(job.submitted_at) is not int:
        raise DecodeError("bad_field", "ts must be a number")
    if job.max_retries is not None and (type(job.max_retries) is not int or not 0 <= job.max_retries <= 1000):
        raise DecodeError("bad_field", "max_retries must be a whole number from 0 to 1000")
    if job.token is not None and (type(job.token) is not str or len(job.token) > 64):
        raise DecodeError("bad_field", "tok must be a short string")


class RawCodec:
    """The original design's protocol: the message is the job id; the result repeats it."""

    name = "raw"

    def __init__(self, task="echo", max_payload=DEFAULT_MAX_PAYLOAD):
        self.task = task
        self.max_payload = max_payload

    def encode_job(self, job):
        return job.id.encode()

    def encode_dispatch(self, job, tail):
        return job.id.encode()  # the original protocol has no room for a token

    @staticmethod
    def dispatch_tail(token):
        return b""

    def decode_job(self, data):
        _check_size(data, self.max_payload)
        text = _text(data)
        return Job(text, self.task, [text], payload=data)

    def decode_dispatch(self, data):
        return [self.decode_job(data)], [], []

    def encode_result(self, result, job=None):
        # The original master only knows the id it sent: echo the message whatever the task returned.
        return job.payload if job is not None and job.payload is not None else result.id.encode()

    def decode_result(self, data):
        _check_size(data, None)  # a result of ours: no size limit
        text = _text(data)
        return Result(text, "ok", text, raw=True)

    def decode_results(self, data):
        return [self.decode_result(data)], []


#: Codec name -> ``factory(raw_task, max_payload)``; ``--codec`` chooses among these names.
CODECS = {
    "json": lambda raw_task, max_payload: JsonCodec(max_payload),
    "raw": RawCodec,
}


def make_codec(name, raw_task="echo", max_payload=DEFAULT_MAX_PAYLOAD):
    try:
        factory = CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r} (choose from {', '.join(CODECS)})") from None
    return factory(raw_task, max_payload)
