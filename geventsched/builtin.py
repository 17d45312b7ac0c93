"""Built-in tasks, loaded by every worker. Benchmarks and outside checks use them.

``default_registry`` lives here rather than in registry.py: the built-in app is made of the registry's
parts, so the registry must not import it back.
"""

import time

import gevent

from geventsched.registry import App, Registry, load_apps

app = App(prefix="")


@app.task
def noop():
    return None


@app.task
def echo(x=None):
    return x


@app.task
def sleep(seconds):
    """Sleep without blocking the hub: other jobs run meanwhile."""
    gevent.sleep(float(seconds))
    return seconds


@app.task
def spin(seconds):
    """Burn CPU in pure Python for ``seconds``: blocks the hub, like any CPU-bound task."""
    deadline = time.perf_counter() + float(seconds)
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


class TaskFailure(RuntimeError):
    """The error ``fail`` raises."""


@app.task
def fail(message="failed on purpose"):
    raise TaskFailure(str(message))


def default_registry(module_names=()):
    """The tasks a worker runs: the built-in ones plus those of the apps in ``module_names``."""
    return Registry([app, *load_apps(module_names)])
