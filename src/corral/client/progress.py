"""Progress bars (tqdm, an optional extra): ``ex.options(progress=True).map(...)`` and
``corral.progress(futures)``.

A ``Bar`` watches futures and draws one tqdm bar over them, from a thread of its
own, at most every ``BAR_INTERVAL`` seconds; nothing else touches the bar::

    I/O thread: a future ends -----> done callback: into ``ended`` (a deque)
                a task reports ----> ``_progress_watch``: into ``reporting`` (a set)
    bar thread, every 0.1 s: counts what ended (done, failed, retried), adds the
      fractions the running tasks reported, draws; draws once more and closes the bar
      when it is closed: the map's results all taken, an error, the consumer gone

The bar's ``n`` is the work finished: tasks done or failed, plus the fractions that
running tasks reported (``corral.report``), so it advances within long tasks.  A
chunked map counts elements: a chunk weighs its length.  The postfix counts failed
and retried tasks (retried: more than one attempt, ``future.info.attempts``), then
shows the latest message a task reported.  tqdm is imported only when a bar is made;
without it, ``progress=`` raises ModuleNotFoundError saying what to install.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import Any

from ..tuning import BAR_INTERVAL

INSTALL = "pip install 'corral[progress]'"


def tqdm_class() -> Any:
    """``tqdm.auto.tqdm`` (a widget in a notebook, text elsewhere); ModuleNotFoundError saying what to install."""
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ModuleNotFoundError(f"corral's progress bars need tqdm: {INSTALL} (or pip install tqdm)",
                                  name="tqdm") from exc
    return tqdm


def check_option(value: Any) -> dict | None:
    """The ``progress`` option: None (no bar), or the tqdm keyword arguments of the bar (True: none).

    A dict may name the bar's class as ``tqdm_class`` (as tqdm.contrib's functions take it);
    without one, tqdm must be importable now (ModuleNotFoundError otherwise)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"progress must be True, False or a dict of tqdm keyword arguments, not "
                        f"{type(value).__name__}")
    bad = [key for key in value if not isinstance(key, str)]
    if bad:
        raise TypeError(f"progress: tqdm keyword arguments are named by strings, not {bad[0]!r}")
    if value.get("tqdm_class") is None:
        tqdm_class()  # fail now, at options(), not at the first map
    return dict(value)


def take_option(options: dict, before: dict | None = None) -> tuple[dict, dict | None]:
    """``options(...)``'s keyword arguments without ``progress``, and the bar's tqdm keyword
    arguments: ``progress`` checked, or ``before`` where it is not given.

    ``progress`` is the client's: it never reaches the broker or the workers."""
    if "progress" not in options:
        return options, before
    rest = dict(options)
    return rest, check_option(rest.pop("progress"))


class Bar:
    """One tqdm bar over futures, drawn by its own thread (see the module docstring)."""

    def __init__(self, total: float | None, options: dict):
        options = dict(options)
        make = options.pop("tqdm_class", None) or tqdm_class()
        self.bar = make(total=total, **options)
        self.live: set = set()  # the futures tracked and not counted yet
        self.ended: deque = deque()  # futures that have ended, not counted yet
        self.reporting: set = set()  # running futures that have reported progress
        self.weights: dict = {}  # future -> elements it stands for, where not 1 (a chunk)
        self.finished = 0.0  # weight of the futures done or failed
        self.failed = 0
        self.retried = 0
        self.message: str | None = None  # the latest message a task reported
        self.postfix = ""
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="corral-progress", daemon=True)
        self.thread.start()

    # -- what the futures tell it (any thread) ---------------------------------------------

    def track(self, fut: Future, weight: int = 1) -> Future:
        """Count ``fut`` in this bar (``weight``: elements it stands for); returns it."""
        if weight != 1:
            self.weights[fut] = weight
        self.live.add(fut)
        if hasattr(fut, "_progress_watch"):  # a corral future: its task's reports (reports.py)
            fut._progress_watch = self._reported
            if fut._progress is not None:
                self._reported(fut)
        fut.add_done_callback(self.ended.append)
        return fut

    def _reported(self, fut: Future) -> None:
        """A task reported progress (in the I/O thread: keep it short)."""
        self.reporting.add(fut)
        text = fut._progress[1]
        if text is not None:
            self.message = text

    # -- drawing (the bar's thread) --------------------------------------------------------

    def _run(self) -> None:
        """Draw until closed, then once more, and close the tqdm bar."""
        try:
            while not self.closed.wait(BAR_INTERVAL):
                self._draw()
        finally:
            try:
                # A future's waiter may wake before its done callbacks ran: the last ones, by their state.
                self.ended.extend(fut for fut in list(self.live) if fut.done())
                self._draw()
            finally:
                self.bar.close()

    def _draw(self) -> None:
        """Count what ended, add what runs, and show it."""
        while self.ended:
            fut = self.ended.popleft()
            if fut not in self.live:
                continue  # counted already
            self.live.remove(fut)
            self.reporting.discard(fut)
            weight = self.weights.pop(fut, 1)
            if fut.cancelled():
                continue
            self.finished += weight
            if fut.exception() is not None:
                self.failed += 1
            meta = getattr(fut, "_meta", None)  # a corral future's record (info.py), read without building it
            attempts = meta.get("attempts") if isinstance(meta, dict) else None
            if type(attempts) is int and attempts > 1:
                self.retried += 1
        running = 0.0
        for fut in list(self.reporting):
            progress = fut._progress
            if progress is not None and progress[0] is not None and not fut.done():
                running += progress[0] * self.weights.get(fut, 1)
        n = self.finished + running
        n = int(n) if n == int(n) else round(n, 2)
        postfix = " ".join(part for part in (f"failed={self.failed}" if self.failed else "",
                                             f"retried={self.retried}" if self.retried else "",
                                             self.message or "") if part)
        if n == self.bar.n and postfix == self.postfix:
            return
        if postfix != self.postfix:
            self.postfix = postfix
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.n = n
        self.bar.refresh()

    def close(self) -> None:
        """Draw the last count and close the bar (again: nothing); waits a little for the bar's thread."""
        self.closed.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(5.0)


def map_total(iterables: Iterable) -> int | None:
    """The number of elements a map over ``iterables`` has (its shortest), if they all have a len."""
    try:
        return min(len(it) for it in iterables)
    except (TypeError, ValueError):  # no len (a generator), or no iterables at all
        return None


def bar_map(options: dict, iterables: tuple, submit: Callable, run: Callable[[Callable], Iterator]) -> Iterator:
    """A map's results (``run(submit)``: ``mapping.run``), with a bar over its elements (``progress=``)."""
    bar = Bar(map_total(iterables), options)
    try:
        results = run(lambda call: bar.track(submit(call), 1 if call.chunk is None else len(call.chunk)))
    except BaseException:
        bar.close()
        raise
    barred = _closing(results, bar)
    weakref.finalize(barred, bar.close)  # a map never iterated, or dropped half-way: closed when it goes
    return barred


def _closing(results: Iterator, bar: Bar) -> Iterator:
    """``results``, closing ``bar`` when they end, raise, or the consumer stops."""
    try:
        yield from results
    finally:
        bar.close()


def progress(futures: Iterable[Future], desc: str | None = None, *, timeout: float | None = None,
             **tqdm_kwargs: Any) -> Iterator[Future]:
    """Yield ``futures`` as they complete (as ``concurrent.futures.as_completed``), drawing a
    progress bar over them meanwhile.

    ``for fut in corral.progress(futures): ...`` shows the futures done out of
    all of them, the failed and retried ones, and the progress that running tasks report
    (``corral.report``); ``list(corral.progress(futures))`` just waits with a bar.  The bar
    closes when every future is done, when ``timeout`` (seconds, as in
    ``as_completed``) raises TimeoutError, or when the loop stops early.  ``desc`` and
    ``tqdm_kwargs`` go to tqdm (``tqdm.auto.tqdm``, or ``tqdm_class=``); tqdm is an
    optional extra: without it this raises ModuleNotFoundError (``pip install
    'corral[progress]'``).  Futures of other executors are counted too.
    """
    options = check_option({**tqdm_kwargs, **({"desc": desc} if desc is not None else {})})
    futures = list(dict.fromkeys(futures))  # as as_completed: each once
    return _progress(futures, options, timeout)


def _progress(futures: list, options: dict, timeout: float | None) -> Iterator[Future]:
    """``progress``'s generator (its checks and tqdm's import happen at the call, not the first next())."""
    bar = Bar(len(futures), options)
    try:
        for fut in futures:
            bar.track(fut)
        yield from as_completed(futures, timeout)
    finally:
        bar.close()
