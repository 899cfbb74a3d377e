"""``Executor.map``: a lazy window over the input, results in order.

At most ``window`` tasks (chunks) are in flight; once half of them have been
consumed, the next half are submitted together (one batch, one wake-up of the
I/O thread), so an endless generator works and memory stays bounded.  Work
still queued is cancelled, with one round trip, when the consumer stops early.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from ..serialization import Call
from ..tuning import MAP_CHUNK_WINDOW, MAP_WINDOW
from .future import CorralFuture


def run(fn: Callable, iterables: Iterable, timeout: float | None, chunksize: int, buffersize: int | None,
        workers: int, submit: Callable[[Call], Future]) -> Iterator[Any]:
    """The results of ``fn`` over ``zip(*iterables)``, in order; ``submit``: one task (a call or a chunk)."""
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
        raise ValueError("buffersize must be None or > 0")
    if buffersize is None:  # chunks are larger units: fewer keep the workers busy
        if chunksize == 1:
            buffersize = min(MAP_WINDOW, max(256, 32 * workers))
        else:
            buffersize = min(MAP_CHUNK_WINDOW, max(64, 16 * workers))
    window = buffersize
    deadline = None if timeout is None else time.monotonic() + timeout
    argtuples = zip(*iterables)
    if chunksize == 1:
        calls = (Call(fn, args) for args in argtuples)
    else:
        calls = (Call(fn, chunk=chunk) for chunk in _chunks(argtuples, chunksize))
    inflight: deque[Future] = deque()
    for call in itertools.islice(calls, window):
        inflight.append(submit(call))
    return _results(inflight, calls, deadline, chunksize > 1, submit, window)


def _results(inflight: deque, calls: Iterator[Call], deadline, chunked: bool, submit, window: int):
    """Yield a map's results in order, submitting more as the window empties; cancel the rest at the end."""
    try:
        while inflight:
            # Yield straight from the call: no local keeps a yielded result alive (bpo-14406).
            if chunked:
                yield from _next_result(inflight, calls, deadline, submit, window)
            else:
                yield _next_result(inflight, calls, deadline, submit, window)
    finally:
        cancel_all(inflight)


def _next_result(inflight: deque, calls: Iterator[Call], deadline, submit, window: int) -> Any:
    """Wait for the oldest task of a map; top the window up once half of it is consumed.

    Refilling by halves sends the next tasks as one batch, instead of one
    task, and one wake-up of the I/O thread, per result.
    """
    remaining = None if deadline is None else deadline - time.monotonic()
    try:
        value = inflight[0].result(remaining)
    except FuturesTimeout:
        raise FuturesTimeout() from None  # the builtin TimeoutError from Python 3.11; not before
    inflight.popleft()
    if len(inflight) <= window // 2:
        for call in itertools.islice(calls, window - len(inflight)):
            inflight.append(submit(call))
    return value


def cancel_all(futures) -> None:
    """Cancel many futures with one round trip to the broker."""
    ours = [f for f in futures if isinstance(f, CorralFuture)]
    if ours:
        ours[0]._io.cancel(ours)
    for fut in futures:
        if not isinstance(fut, CorralFuture):
            fut.cancel()


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    """``iterator`` in lists of ``size`` (the last one shorter)."""
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk
