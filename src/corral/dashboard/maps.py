"""Each ``map``'s progress and its tasks' outcomes, as an executor that serves the dashboard sees them.

Only an executor with ``dashboard=`` wraps its maps' submit in ``Maps.track``: a map's
futures then note, when they end, that they did (a counter and a bounded list, under a
lock), and the sampler turns the ended futures into the status schema's ``events`` once a
second.  Nothing here runs for an executor without a dashboard.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from ..errors import TaskTimeoutError

MAX_MAPS = 20  # the most recent maps shown
MAX_EVENTS = 500  # ended tasks kept for the task stream
ERROR_CHARS = 4000  # a failure's text is cut to its last this many characters


class MapProgress:
    """One ``map``: how many tasks it has (when its input has a length), submitted, done, failed and
    cancelled (a map whose consumer stopped, or raised, cancels what had not run)."""

    __slots__ = ("id", "name", "total", "submitted", "done", "failed", "cancelled", "started", "finished")

    def __init__(self, number: int, name: str, total: int | None):
        self.id, self.name, self.total = number, name, total
        self.submitted = self.done = self.failed = self.cancelled = 0
        self.started = time.time()
        self.finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__}


class Maps:
    """The maps of one executor, and the futures of theirs that have ended since the last ``take``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: deque[MapProgress] = deque(maxlen=MAX_MAPS)
        self._ended: deque[tuple[Future, float, str | None]] = deque(maxlen=MAX_EVENTS)
        self._events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self._numbers = itertools.count(1)

    def track(self, fn: Callable, iterables: Iterable, chunksize: int, submit: Callable) -> Callable:
        """``submit`` for one map of ``fn`` over ``iterables``, counting its tasks and their outcomes."""
        progress = MapProgress(next(self._numbers), _name(fn), _total(iterables, chunksize))
        with self._lock:
            self._maps.append(progress)

        def ended(fut: Future) -> None:
            cancelled = fut.cancelled()
            exc = None if cancelled else fut.exception()
            # The text now, before result() raises it again in the caller and adds the caller's frames.
            error = None if exc is None else "".join(traceback.format_exception(exc))[-ERROR_CHARS:]
            with self._lock:
                if cancelled:
                    progress.cancelled += 1
                elif exc is not None:
                    progress.failed += 1
                else:
                    progress.done += 1
                ended_now = progress.done + progress.failed + progress.cancelled
                if progress.total is not None and ended_now >= progress.total:
                    progress.finished = time.time()
                if not cancelled:  # a cancelled task never ran: nothing for the task stream
                    self._ended.append((fut, time.time(), error))

        def tracked(call):
            fut = submit(call)
            with self._lock:
                progress.submitted += 1
            fut.add_done_callback(ended)
            return fut

        return tracked

    def maps(self) -> list[dict[str, Any]]:
        """The recent maps' progress, oldest first."""
        with self._lock:
            return [m.as_dict() for m in self._maps]

    def events(self) -> list[dict[str, Any]]:
        """The schema's ``events`` for the maps' ended tasks, oldest first (the recent ``MAX_EVENTS``)."""
        with self._lock:
            ended, self._ended = list(self._ended), deque(maxlen=MAX_EVENTS)
        for fut, when, error in ended:
            self._events.append(_event(fut, when, error))
        return list(self._events)


def _event(fut: Future, when: float, error: str | None) -> dict[str, Any]:
    """One ended task as the schema's event: who ran it, when, how it ended, and why it failed."""
    info = getattr(fut, "info", None)
    state = getattr(info, "state", None) or ("failed" if error else "done")
    if error is not None:
        state = "timeout" if isinstance(fut.exception(), TaskTimeoutError) else "lost" if state == "lost" else "failed"
    return {"task": getattr(fut, "_cid", None), "worker": getattr(info, "worker", None),
            "started": getattr(info, "started", None), "finished": getattr(info, "finished", None) or when,
            "state": state, "error": error}


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _total(iterables: Iterable, chunksize: int) -> int | None:
    """How many tasks a map over ``iterables`` makes, if every one has a length (zip stops at the shortest)."""
    try:
        items = min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return math.ceil(items / chunksize)
