"""Futures as arguments: what a ``CorralFuture`` becomes in a task's pickle, and back.

In the caller's thread, while a task's arguments are pickled (``client/gathering.py``), each
future of this executor found in them (at any depth: in lists, dicts, sets, objects)
becomes a placeholder::

    done with a value       -> the value itself, pickled in place
    failed or cancelled     -> the task is not sent: it fails with DependencyError
    pending                 -> argument(i): the i-th result the broker sends with the task

The broker holds the task until its dependencies have succeeded and sends their result
frames along with it (``broker/dependencies.py``); in the task process ``resolving``
unpickles them, and the unpickling of the arguments calls ``argument(i)`` for each
placeholder.  A future elsewhere in a pickle (a function's globals, another executor's
task) cannot be pickled: it would mean nothing there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from . import serialization
from .errors import DependencyError

_local = threading.local()


class Collector:
    """The futures met while one task's arguments are pickled, in placeholder order."""

    def __init__(self, loop: Any):
        self.loop = loop  # the executor's I/O loop: its futures, and only they, may be arguments
        self.pending: list = []  # the futures whose results the broker sends with the task
        self.index: dict[int, int] = {}  # id(future) -> its place in ``pending``
        self.failed: list = []  # dependencies that failed or were cancelled already
        self.foreign: list = []  # futures of another executor

    def reduce(self, fut: Any) -> tuple:
        """What ``fut`` pickles as (``CorralFuture.__reduce_ex__``)."""
        if fut._io is not self.loop:
            self.foreign.append(fut)
            return _value, (None,)
        with fut._condition:
            state = outcome(fut)
        if state == "done":
            return _value, (fut._result,)
        if state is not None:
            self.failed.append(fut)
            return _value, (None,)
        i = self.index.get(id(fut))
        if i is None:
            i = self.index[id(fut)] = len(self.pending)
            self.pending.append(fut)
        return argument, (i,)


def reduce_future(fut: Any) -> tuple:
    """``CorralFuture.__reduce_ex__``: a placeholder while a task's arguments are pickled."""
    gathering = serialization.gathering()
    if gathering is None or not gathering.arguments:
        raise (serialization.GatheringNeeded if gathering is None else TypeError)(
            "a corral future can be pickled only as an argument of a task submitted to its own executor (its "
            "result is passed to the task): pass future.result() instead")
    return gathering.reduce_future(fut)


def outcome(fut: Any) -> str | None:
    """None while ``fut`` is pending or running; else "done", "failed" or "cancelled"."""
    if fut.cancelled():
        return "cancelled"
    if not fut.done():
        return None
    return "failed" if fut._exception is not None else "done"


def failure(dependent_cause: Any, how: str) -> DependencyError:
    """The DependencyError of a task whose dependency ``dependent_cause`` (a future) failed,
    or was cancelled or killed (``how``); its ``__cause__`` is that task's exception."""
    from concurrent.futures import CancelledError  # the client's: a task process need not import it

    if how == "failed" and dependent_cause is not None and dependent_cause.done() and not dependent_cause.cancelled():
        cause: BaseException | None = dependent_cause._exception
        root, links = cause, 0
        while isinstance(root, DependencyError) and isinstance(root.__cause__, BaseException):
            root, links = root.__cause__, links + 1  # it did not run either: name the task that failed
        words = f"raised {type(root).__name__}: {root}" if root is not None else "failed"
        if links:
            words = f"did not run: a task {links} step{'s' if links > 1 else ''} before it {words.split(';')[0]}"
    else:
        cause = CancelledError(f"the task it depends on was {how}")
        words = f"was {how}" if how in ("cancelled", "killed") else "failed"
    exc = DependencyError(f"a task this one depends on {words}; this task did not run")
    exc.__cause__ = cause
    return exc


def dependency_failed(fut: Any) -> DependencyError:
    """The DependencyError for a dependency already failed or cancelled at submit."""
    return failure(fut, "cancelled" if fut.cancelled() else "failed")


# -- in the task process ---------------------------------------------------------------


def _value(value: Any) -> Any:
    """A dependency that was done when its dependent was submitted: its value, pickled in place."""
    return value


def argument(i: int) -> Any:
    """The i-th dependency's result, sent by the broker with the task (``resolving``)."""
    values = getattr(_local, "values", None)
    if values is None or not 0 <= i < len(values):
        raise RuntimeError(f"this task's argument refers to dependency {i}, which did not come with it")
    return values[i]


@contextlib.contextmanager
def resolving(values: list) -> Iterator[None]:
    """Unpickle a task's arguments within this block: their placeholders become ``values``."""
    _local.values = values
    try:
        yield
    finally:
        _local.values = None
