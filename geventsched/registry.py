"""Task registration. Only functions registered here can run on a worker.

    from geventsched.registry import App
    app = App()

    @app.task
    def add(a, b):              # registered as "mymodule.add"
        return a + b

    @app.task(name="resize", timeout=30)
    def resize(path): ...

    @app.task(blocking=True)    # CPU-bound, or a C library that does not yield: run in a thread
    def checksum(path): ...

    @app.task(max_retries=5, retry_backoff=2.0)   # on error or timeout: again after ~2, 4, 8... s
    def fetch(url): ...

    @app.task(rate_limit="20/s", max_running=5)   # fleet-wide: 20 starts per second, 5 at once
    def call_api(payload): ...

    @app.periodic(cron="0 3 * * *", tz="Europe/Berlin")   # a task that runs on a schedule
    def nightly_report(): ...

    @app.periodic(every=60, name="ping-db", args=["primary"])
    @app.task(timeout=5)
    def ping(db): ...

``geventsched worker --app mymodule`` imports the module and runs every ``App`` found in it; a worker or
master started with ``--app mymodule`` also adds the module's schedules to Redis (``schedules.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from geventsched.config import DEFAULT_TIMEOUT
from geventsched.errors import ConfigError
from geventsched.limits import check_max_running, parse_rate


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    fn: Callable
    timeout: float | None = DEFAULT_TIMEOUT
    #: Runs in the worker's thread pool instead of the hub, so it cannot stall the other jobs.
    blocking: bool = False
    #: Runs again after an error or timeout, up to this many times (a job may override it).
    max_retries: int = 0
    #: Seconds before the first retry; doubles with each one (with +-50% jitter), capped at an hour.
    retry_backoff: float = 1.0
    #: "N/s", "N/m" or "N/h": at most N starts in any window of a second, minute or hour, fleet-wide
    #: (the master applies it: ``limits.py``).
    rate_limit: str | None = None
    #: At most this many jobs of the task run at once, fleet-wide.
    max_running: int | None = None

    def options(self):
        """What a worker registers for the master (``Store.register_tasks``): the time limit, and the
        limits the master applies when it dispatches."""
        options = {"timeout": self.timeout}
        if self.rate_limit is not None:
            options["rate_limit"] = self.rate_limit
        if self.max_running is not None:
            options["max_running"] = self.max_running
        return options


class App:
    """A set of tasks. Decorating a function with ``@app.task`` registers it and returns it unchanged."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix
        self.tasks: dict[str, Task] = {}
        self.schedules: dict = {}  # name -> schedules.Schedule

    def task(self, fn: Callable | None = None, *, name: str | None = None, timeout: float | None = DEFAULT_TIMEOUT,
             blocking: bool = False, max_retries: int = 0, retry_backoff: float = 1.0,
             rate_limit: str | None = None, max_running: int | None = None) -> Callable:
        """Register ``fn`` (``@app.task``), or return a decorator that does (``@app.task(...)``).
        A malformed ``rate_limit`` or ``max_running`` raises ConfigError here, when the module that
        declares the task is imported, not later on the master."""
        def register(fn):
            task_name = name or self._default_name(fn)
            if task_name in self.tasks and self.tasks[task_name].fn is not fn:
                raise ConfigError(f"task {task_name!r} is registered twice")
            try:
                if rate_limit is not None:
                    parse_rate(rate_limit)
                if max_running is not None:
                    check_max_running(max_running)
            except ConfigError as exc:
                raise ConfigError(f"task {task_name!r}: {exc}") from None
            self.tasks[task_name] = Task(task_name, fn, timeout, blocking, max_retries, retry_backoff,
                                         rate_limit and rate_limit.strip(), max_running)
            return fn

        return register(fn) if fn is not None else register

    def periodic(self, *, every: int | None = None, cron: str | None = None, tz: str = "UTC",
                 name: str | None = None, args: Iterable = (), kwargs: dict | None = None) -> Callable:
        """Declare a schedule for the decorated task (registered with default options unless
        ``@app.task(...)`` below already did): ``every`` seconds or a 5-field ``cron`` expression in
        time zone ``tz``, named ``name`` (default: the task's name). Checked here: a bad rule fails
        the import of the module. Processes that load the app add its schedules to Redis as they start."""
        from geventsched.schedules import Schedule

        def declare(fn):
            registered = next((t.name for t in self.tasks.values() if t.fn is fn), None)
            task_name = registered or self._default_name(fn)
            schedule = Schedule(name or task_name, task_name, list(args), dict(kwargs or {}), every, cron, tz)
            if self.schedules.get(schedule.name, schedule) != schedule:
                raise ConfigError(f"schedule {schedule.name!r} is declared twice")
            if registered is None:
                self.task(fn)
            self.schedules[schedule.name] = schedule
            return fn

        return declare

    def _default_name(self, fn):
        if self.prefix is not None:
            return f"{self.prefix}.{fn.__name__}" if self.prefix else fn.__name__
        return f"{fn.__module__}.{fn.__qualname__}"


class Registry:
    """The tasks one worker can run, merged from several apps. Lookup is a plain dict access."""

    def __init__(self, apps: Iterable[App] = ()) -> None:
        self.tasks = {}
        self.schedules = {}  # name -> schedules.Schedule, declared with ``@app.periodic``
        for app in apps:
            self.add(app)

    def add(self, app: App) -> None:
        for name, task in app.tasks.items():
            if name in self.tasks and self.tasks[name].fn is not task.fn:
                raise ConfigError(f"task {name!r} is defined by two apps")
            self.tasks[name] = task
        for name, schedule in app.schedules.items():
            if self.schedules.get(name, schedule) != schedule:
                raise ConfigError(f"schedule {name!r} is declared by two apps")
            self.schedules[name] = schedule

    def get(self, name: str) -> Task | None:
        return self.tasks.get(name)

    def __contains__(self, name):
        return name in self.tasks

    def names(self) -> list[str]:
        return sorted(self.tasks)


def load_apps(module_names: Iterable[str]) -> list[App]:
    """Import each module and return the ``App`` objects it defines (at module level)."""
    apps = []
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from None
        except ConfigError as exc:  # a task declared with a bad option: say which module
            raise ConfigError(f"cannot load app module {module_name!r}: {exc}") from None
        found = [value for value in vars(module).values() if isinstance(value, App)]
        if not found:
            raise ConfigError(f"module {module_name!r} defines no geventsched App")
        apps.extend(found)
    return apps
