"""The client's half of task dependencies: what a dependent task's SUBMIT says, and its failures.

``prepare`` turns the futures met in a task's arguments (``dependencies.Collector``) and
those of ``options(after=...)`` into the SUBMIT options ``deps`` and ``after`` (their task
ids), and the ``Waits`` record kept on the dependent's future.  The broker answers
ERR_DEPENDENCY (a dependency failed: ``failure``) or ERR_DEPENDENCY_GONE (a dependency
finished before the task reached the broker: ``send_again``, with that result inline).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from .. import dependencies, serialization
from ..errors import DependencyError, SerializationError
from ..wire import protocol


class Waits:
    """A dependent task's record, on its future: the futures whose results it takes (in
    placeholder order), those it runs after, and its frames and options, to send again."""

    __slots__ = ("after", "data", "frames", "options")

    def __init__(self, data: list, after: list, frames: list, options: dict):
        self.data = data
        self.after = after
        self.frames = frames
        self.options = options

    def future(self, cid: Any) -> Future | None:
        """The dependency whose task id is ``cid``."""
        for fut in (*self.data, *self.after):
            if fut._cid == cid:
                return fut
        return None


def check_after(value: Any) -> list:
    """``options(after=...)``: an iterable of futures (checked again at submit: of this executor)."""
    if isinstance(value, Future):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"after must be a list of futures of this executor, not {type(value).__name__}")
    futures = list(value)
    for fut in futures:
        if not isinstance(fut, Future):
            raise TypeError(f"after must be a list of futures of this executor; it holds a {type(fut).__name__}")
    return futures


def prepare(collector: dependencies.Collector, after: list | None, loop: Any) -> tuple[dict | None, Any]:
    """(the SUBMIT options to add, or None; a DependencyError if a dependency failed already,
    else the futures it waits for) for a task whose arguments were pickled into ``collector``."""
    foreign = collector.foreign + [f for f in after or () if getattr(f, "_io", None) is not loop]
    if foreign:
        raise ValueError("a future of another executor was given as a dependency (an argument or in "
                         "after=): a task can wait only for tasks of its own executor; pass future.result()")
    for fut in collector.failed:
        return None, dependencies.dependency_failed(fut)
    waiting_after = []
    for fut in after or ():
        state = dependencies.outcome(fut)
        if state in ("failed", "cancelled"):
            return None, dependencies.dependency_failed(fut)
        if state is None:
            waiting_after.append(fut)
    if not collector.pending and not waiting_after:
        return None, None
    added = {"deps": [f._cid for f in collector.pending]} if collector.pending else {}
    if waiting_after:
        added["after"] = [f._cid for f in waiting_after]
    return added, (collector.pending, waiting_after)


def failure(waits: Waits | None, meta: dict) -> BaseException:
    """The DependencyError of a task whose dependency failed (a RESULT with ERR_DEPENDENCY)."""
    dep = waits.future(meta.get("dep")) if waits is not None else None
    how = meta.get("how")
    return dependencies.failure(dep, how if how in ("failed", "cancelled", "killed") else "failed")


def send_again(loop: Any, fut: Any, meta: dict) -> BaseException | None:
    """A dependency of ``fut``'s task had finished when the task reached the broker (its result
    is here now, as it came first): send the task again with the results of those that finished
    inline.  An exception to fail the future with instead, if one failed or cannot be sent."""
    waits: Waits = fut._waits
    deps, extra = [], []
    for i, dep in enumerate(waits.data):
        state = dependencies.outcome(dep)
        if state is None:
            deps.append(dep._cid)  # still waits at the broker
        elif state == "done":
            try:
                frames = serialization.dumps(dep._result, f"the result of dependency {i}")
            except SerializationError as exc:
                return exc
            deps.append([len(frames)])
            extra.extend(frames)
        else:
            return dependencies.dependency_failed(dep)
    after = []
    for dep in waits.after:
        state = dependencies.outcome(dep)
        if state in ("failed", "cancelled"):
            return dependencies.dependency_failed(dep)
        if state is None:
            after.append(dep._cid)
    # One that is still pending was itself sent again just now (its own dependency had finished):
    # it goes out first, so the broker knows it when this task arrives.  Any other is lost.
    gone = meta.get("deps") if isinstance(meta.get("deps"), list) else []
    if any(dependencies.outcome(d) is None and d._cid not in loop.futures
           for d in (*waits.data, *waits.after) if d._cid in gone):
        return DependencyError("the broker lost track of a task this one depends on; submit it again")
    options = {k: v for k, v in waits.options.items() if k not in ("deps", "after")}
    if waits.data:
        options["deps"] = deps
    if after:
        options["after"] = after
    frames = [*waits.frames, *extra]
    loop.futures[fut._cid] = fut
    loop.outq.append(protocol.task_entry(fut._cid, len(frames), options) + [frames])
    loop.wake()
    return None
