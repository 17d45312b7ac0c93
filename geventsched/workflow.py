"""Workflows: jobs composed into chains, groups and chords, started by ``Client.run``.

    from geventsched.workflow import sig, chain, group, chord

    client.run(chain(sig("resize", path), sig("upload"), sig("notify", user))).result(60)
    client.run(chord(group(sig("fetch", url) for url in urls), sig("merge"))).result(60)

* ``sig(task, *args, **kwargs)`` is one step: a job of ``task``. ``_timeout``, ``_max_retries`` and
  ``_priority`` are its options, as for ``Client.submit``; every other keyword goes to the task.
* ``chain(a, b, c)`` runs its steps one after the other; each result becomes the FIRST positional
  argument of the next step (before that step's own). The chain's value is its last step's.
* ``group(a, b, ...)`` runs its steps at once; its value is the list of their values, in order.
* ``chord(group(...), callback)`` calls ``callback`` once with the group's list as its first argument.
* They nest: a chain of groups, a group of chains, a chord whose header holds chains. A value passed
  to a group goes to each of its members; one passed to a chain, to its first step.

``Client.run(workflow)`` returns a ``WorkflowHandle``: ``.result(timeout)`` is the chain's last value,
the group's list, or the chord callback's value. A step that fails after its retries (error, timeout,
dead letter) fails the workflow: nothing after it starts, and ``.result()`` raises ``JobFailed``
naming the step's task and error.

How it runs (``lua/workflow.lua``): the whole tree, and the job record of every step, is written to
Redis in one script call that also queues the steps able to start. The script that records a step's
result (``finish.lua``; ``reap.lua`` for a dead one) moves the workflow on in the same atomic call:
it queues the next step, or records the value of a group's child and, when it is the last one the
group waited for, builds the list and queues the callback. A result is recorded once per job, and a
group's pending children are a set each child leaves once, so a step that ran twice (its worker died)
releases nothing twice. Workflows need ``--durability redis`` (the default).

Everything is checked before anything is sent: bad input (a step that is not a ``sig``, an empty
chain or group, a chord without a callback, nesting deeper than ``MAX_DEPTH``, a value that is not
JSON) raises TypeError or ValueError from ``Client.run``, and nothing is submitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from geventsched.keys import MAX_PRIORITY
from geventsched.protocol import Job

#: Chains, groups and chords nest at most this deep.
MAX_DEPTH = 32
#: Steps in one workflow at most (all of them go to Redis in one script call).
MAX_STEPS = 100_000
#: The task name of a workflow's own result.
WORKFLOW_TASK = "workflow"


class Sig:
    """One step: a job of ``task`` with its arguments and options."""

    __slots__ = ("task", "args", "kwargs", "timeout", "max_retries", "priority")

    def __init__(self, task, args, kwargs, timeout=None, max_retries=None, priority=0):
        self.task, self.args, self.kwargs = task, args, kwargs
        self.timeout, self.max_retries, self.priority = timeout, max_retries, priority

    def __repr__(self):
        return f"sig({self.task!r}{''.join(', ' + repr(a) for a in self.args)})"


class Chain:
    """Steps one after the other, each result passed to the next."""

    __slots__ = ("steps",)
    kind = "chain"

    def __init__(self, steps):
        self.steps = steps

    def __repr__(self):
        return f"{self.kind}({', '.join(map(repr, self.steps))})"


class Group(Chain):
    """Steps at once; the value is the list of their values."""

    __slots__ = ()
    kind = "group"


class Chord:
    """A group, then its callback with the group's list."""

    __slots__ = ("header", "callback")

    def __init__(self, header, callback):
        self.header, self.callback = header, callback

    def __repr__(self):
        return f"chord({self.header!r}, {self.callback!r})"


def sig(task: str, *args: Any, _timeout: float | None = None, _max_retries: int | None = None,
        _priority: int = 0, **kwargs: Any) -> Sig:
    """A step: ``task`` with ``args`` and ``kwargs``. A value passed from an earlier step comes first,
    before ``args``. ``_timeout``, ``_max_retries`` and ``_priority`` are the step's options (see
    ``Client.submit``); ``_delay``, ``_at`` and ``_unique_key`` have no meaning inside a workflow."""
    for option in ("_delay", "_at", "_unique_key"):
        if option in kwargs:
            raise ValueError(f"{option} is not an option of a workflow step (give it to no step, or submit alone)")
    return Sig(task, args, kwargs, _timeout, _max_retries, _priority)


def chain(*steps: Any) -> Chain:
    """Steps in order; each result is the first argument of the next. ``chain(iterable)`` works too."""
    return Chain(_members(steps))


def group(*steps: Any) -> Group:
    """Steps in parallel; the value is the list of their values in order. ``group(iterable)`` too."""
    return Group(_members(steps))


def chord(header: Any, callback: Any = None) -> Chord:
    """``callback`` called once with the list of ``header``'s values (a group, or an iterable of steps)
    as its first argument."""
    return Chord(header, callback)


def _members(steps):
    """``steps`` as given, or the members of the one iterable given (a list, a generator)."""
    if len(steps) == 1 and not isinstance(steps[0], (Sig, Chain, Chord, str, bytes, dict)) \
            and isinstance(steps[0], Iterable):
        return tuple(steps[0])
    return tuple(steps)


class Plan:
    """A workflow checked and numbered: its nodes in preorder (the root is node 1) and its steps."""

    def __init__(self, workflow, priority=0):
        self.nodes = []  # [kind, parent, position, next, Sig or None, children]
        self.steps = 0
        self._default_priority = _priority(priority)
        self._walk(workflow, 0, 0, 1)
        if self.steps > MAX_STEPS:
            raise ValueError(f"a workflow has at most {MAX_STEPS} steps, this one has {self.steps}")

    def _walk(self, item, parent, position, depth):
        if depth > MAX_DEPTH:
            raise ValueError(f"workflows nest at most {MAX_DEPTH} deep")
        number = len(self.nodes) + 1
        node = [None, parent, position, 0, None, []]
        self.nodes.append(node)
        if isinstance(item, Sig):
            node[0], node[4] = "s", self._checked(item)
            self.steps += 1
            return number
        if isinstance(item, Chain):  # a chain or a group
            if not item.steps:
                raise ValueError(f"an empty {item.kind}: give it at least one step")
            node[0] = "g" if isinstance(item, Group) else "c"
            members = item.steps
        elif isinstance(item, Chord):
            header = item.header if isinstance(item.header, Group) else _as_group(item.header)
            if item.callback is None:
                raise ValueError("a chord needs a callback: chord(group(...), sig(task, ...))")
            node[0], members = "d", (header, item.callback)
        else:
            raise TypeError(f"not a workflow step: {item!r} (build steps with sig(task, *args))")
        children = [self._walk(member, number, i, depth + 1) for i, member in enumerate(members, 1)]
        node[5] = children
        for i, child in enumerate(children):
            # In a chain the next node follows; in a group there is none (-1).
            self.nodes[child - 1][3] = -1 if node[0] == "g" else (children[i + 1] if i + 1 < len(children) else 0)
        return number

    def _checked(self, step):
        if not isinstance(step.task, str) or not step.task:
            raise TypeError(f"a step's task must be a non-empty string, not {step.task!r}")
        if step.priority == 0 and self._default_priority:
            step = Sig(step.task, step.args, step.kwargs, step.timeout, step.max_retries, self._default_priority)
        else:
            _priority(step.priority)
        if step.timeout is not None and (isinstance(step.timeout, bool) or not isinstance(step.timeout, (int, float))
                                         or not 0 < step.timeout < 10**9):
            raise ValueError(f"a step's _timeout must be a positive number of seconds, not {step.timeout!r}")
        if step.max_retries is not None and (type(step.max_retries) is not int or not 0 <= step.max_retries <= 1000):
            raise ValueError(f"a step's _max_retries must be a whole number from 0 to 1000, not {step.max_retries!r}")
        return step

    def encode(self, workflow_id, job_ids, codec, now, timeout=None, max_retries=None, max_payload=None):
        """The entries of ``Store.run_workflow``: ``(line, job record or "", children or "")`` per node,
        the steps getting ``job_ids`` in order. Raises TypeError for an argument that is not a JSON
        value, JobTooLarge for a step over ``max_payload``."""
        from geventsched.errors import JobTooLarge

        ids = iter(job_ids)
        out = []
        for number, (kind, parent, position, following, step, children) in enumerate(self.nodes, 1):
            line = f"{kind} {parent} {position} {following}"
            record = b""
            if kind == "s":
                job_id = next(ids)
                line += f" {job_id} {step.priority} {step.task}"
                extra = {"prio": step.priority} if step.priority else {}
                # Last, where the scripts look for them (workflow.lua: wf_of).
                extra["wf"], extra["ws"] = workflow_id, number
                job = Job(job_id, step.task, list(step.args), dict(step.kwargs),
                          step.timeout if step.timeout is not None else timeout, None, now, None,
                          step.max_retries if step.max_retries is not None else max_retries)
                try:
                    record = codec.encode_job(job, extra)
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"arguments of {step.task} are not JSON values: {exc}") from None
                if max_payload is not None and len(record) > max_payload:
                    raise JobTooLarge(f"a step of {step.task} is {len(record)} bytes, over the max payload of "
                                      f"{max_payload} (--max-payload): nothing was submitted")
            elif kind == "g":
                line += f" {len(children)}"
            out.append((line, record, ",".join(map(str, children)) if kind == "g" else ""))
        return out


def _as_group(header):
    if isinstance(header, (Sig, Chain, Chord)) or not isinstance(header, Iterable) or isinstance(header, (str, bytes)):
        raise TypeError(f"a chord's header is a group (or a list of steps), not {header!r}")
    return Group(tuple(header))


def _priority(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
        raise ValueError(f"priority must be a whole number from 0 to {MAX_PRIORITY}, not {value!r}")
    return value


def shape(workflow, limit=200):
    """A short text of a workflow's form, e.g. ``chord(group(1000 × echo), sum)``."""
    text = _shape(workflow)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _shape(item):
    if isinstance(item, Sig):
        return item.task
    if isinstance(item, Chord):
        header = item.header if isinstance(item.header, Group) else Group(tuple(item.header))
        return f"chord({_shape(header)}, {_shape(item.callback)})"
    parts = [_shape(step) for step in item.steps]
    if len(parts) > 1 and len(set(parts)) == 1:
        return f"{item.kind}({len(parts)} × {parts[0]})"
    return f"{item.kind}({', '.join(parts)})"
