"""The exceptions geventsched raises on purpose.

Each carries a message fit for one line on stderr; the CLI prints ``str(exc)`` and exits 1.
"""


class GeventschedError(Exception):
    """Base class: a runtime failure with a one-line explanation."""


class ConfigError(GeventschedError):
    """A setting that cannot work (bad channel spec, bad URL, unknown strategy)."""


class RedisUnavailable(GeventschedError):
    """Redis could not be reached, refused our credentials, or went away."""


class ChannelConflict(GeventschedError):
    """A dispatch channel is already held by another live worker."""


class JobTooLarge(GeventschedError, ValueError):
    """A job whose record is larger than any worker takes (``--max-payload``): refused at submit."""


class DecodeError(GeventschedError):
    """A message could not be decoded. ``reason`` is a short label from a fixed set."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class JobTimeout(GeventschedError):
    """Raised inside a job's greenlet when its time limit is reached."""


class Cancelled(BaseException):
    """Thrown into a running job's greenlet when the job is cancelled (``geventsched cancel``); the task
    sees it at its next yield. A BaseException, as ``gevent.Timeout`` and a time limit's exception are,
    so that a task's ``except Exception`` does not swallow it; ``finally`` blocks run as usual. The
    cancel is already recorded as the job's result: nothing the task does after this is."""

    def __init__(self, job_id=""):
        super().__init__(f"job {job_id} was cancelled" if job_id else "the job was cancelled")
        self.job_id = job_id


class JobFailed(GeventschedError):
    """Raised by ``JobHandle.result()`` for a job that ended in error, timeout, cancel or dead letter.

    ``type`` is the error's type name (the exception class a task raised, ``JobTimeout``,
    ``Cancelled``, ``DeadLetter``, ...; the result's status when it carries no error), ``message`` its text and
    ``traceback`` the task's traceback as the worker formatted it ("" where nothing raised). The
    whole ``Result`` is ``result``.
    """

    type: str
    message: str
    traceback: str

    def __init__(self, result) -> None:
        error = result.error or {}
        self.type = error.get("type") or result.status
        self.message = error.get("message") or ""
        self.traceback = error.get("traceback") or ""
        self.result = result
        super().__init__(f"{self.type}: {self.message}")
