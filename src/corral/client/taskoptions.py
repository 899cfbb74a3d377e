"""``Executor.options(...)``: a view of an executor whose ``submit`` and ``map`` carry per-task options.

The options are checked once, when the view is made (``config.check_task_options``); the
client's own option ``progress`` is taken out then (``progress.py``) and never reaches the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..config import check_task_options
from ..serialization import Call
from . import progress

if TYPE_CHECKING:
    from .executor import Executor


class TaskOptions:
    """``Executor.options(...)``: the executor's ``submit`` and ``map`` with per-task options."""

    def __init__(self, executor: Executor, options: dict, bar: dict | None = None):
        self._executor = executor
        self._options = options
        self._bar = bar  # progress=: tqdm's keyword arguments for map's bar (client/progress.py)

    def options(self, **more: Any) -> TaskOptions:
        more, bar = progress.take_option(more, self._bar)
        return TaskOptions(self._executor, {**self._options, **check_task_options(more)}, bar)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._bar is not None:
            raise TypeError("progress= draws a bar over a map's tasks; a submit makes one task: draw one over "
                            "the futures you submit with corral.progress(futures)")
        return self._executor._submit_call(Call(fn, args, kwargs or None), self._executor._seeds.submit(self._options))

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        return self._executor._map(fn, iterables, timeout, chunksize, buffersize, self._options, self._bar)
