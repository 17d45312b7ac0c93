"""The long-running greenlets of a role, watched.

A loop that dies on an exception nobody expected (a bug, a reply of a shape we never saw) must not
leave a process that looks alive while it no longer reads, writes or heartbeats. ``Loops`` runs
each loop under a name and, when one ends with an exception, logs it once with its traceback and calls
``on_death(name, exc)``: the role then stops and exits 1, releasing what it holds in Redis (its
registration or lease), and the service manager restarts it. A loop that returns, or is killed
by the role itself, is not a death.
"""

import logging

import gevent

log = logging.getLogger(__name__)


class Loops:
    def __init__(self, who, on_death):
        self.who = who
        self._on_death = on_death
        self._named = {}  # name -> greenlet
        self.failure = None  # "<loop> loop died: <exc>" of the first death

    def spawn(self, name, fn, *args):
        """Run ``fn(*args)`` in a greenlet named ``name``, watched."""
        greenlet = self._named[name] = gevent.spawn(self._watch, name, fn, args)
        greenlet.name = name
        return greenlet

    def _watch(self, name, fn, args):
        try:
            return fn(*args)
        except Exception as exc:  # GreenletExit (a kill) is a BaseException: it passes
            log.exception("%s: the %s loop died; stopping", self.who, name)
            if self.failure is None:
                self.failure = f"the {name} loop died: {type(exc).__name__}: {exc}"
            self._on_death(name, exc)
        return None

    def get(self, name):
        return self._named.get(name)

    @property
    def greenlets(self):
        return list(self._named.values())

    def kill(self, *names, block=True, timeout=5):
        """Kill the named loops (all when no name is given) without counting it as a death."""
        chosen = [self._named.pop(name) for name in (names or list(self._named)) if name in self._named]
        gevent.killall(chosen, block=block, timeout=timeout)
