"""What tasks wrote and warned, in the client: forwarded output written out, captured output
kept on the future, warnings raised again.

Forwarded output (OUTPUT from a worker elsewhere, ``worker/output.py``) is written to
this process's ``sys.stdout`` or ``sys.stderr``, each line after a prefix that names
the worker and the task (``[host:1234 task 17] ``).  Not by the I/O loop itself:
a write to a terminal or a pipe nobody reads can block, and the loop must keep
answering heartbeats, so a writer thread (``Writer``, started at the first
OUTPUT) writes it; the loop waits for it (``written``, at most ``WRITE_PATIENCE``
seconds) only before it completes the future of a task that printed, so that a
task's output comes before ``result()`` returns.  ``sys.stdout`` is looked up at each write, so a redirection
the user made (``contextlib.redirect_stdout``, pytest's capture) sees it.

Captured output (``options(capture_output=True)``) arrives the same way, marked
``capture``, before the task's result; it is kept on the future (its tail, at
most ``CAPTURE_MAX`` characters a stream) for ``future.info.stdout``/``stderr``
and never written out.

Warnings come in a RESULT's meta (``worker/taskwarnings.py``) and are raised again
here with ``warnings.warn_explicit`` (category, message, the task's file and line)
before the future completes: once per task for each distinct warning.  A
category travels by module and name: it is looked up (its module imported, as
unpickling a result would) and must be a Warning subclass; otherwise the warning
is a UserWarning whose message starts with the category's name.  No class is
ever unpickled for it.
"""

from __future__ import annotations

import importlib
import queue
import sys
import threading
import warnings
from typing import Any

from ..logs import logger

WRITE_PATIENCE = 1.0  # seconds the I/O loop waits for a task's output to be written before its result
CAPTURE_MAX = 1 << 20  # characters kept of a task's captured stream (its tail); the worker sends no more
STREAMS = ("stdout", "stderr")
_log = logger("client")


class Writer:
    """A thread that writes forwarded output, so that the I/O loop never blocks on a slow stream."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.line_start: dict = {}  # (worker, task, stream) -> False: its last text ended mid-line
        self.printed: set = set()  # tasks whose output was queued, whose futures are not complete yet
        self.thread = threading.Thread(target=self.run, name="corral-output", daemon=True)
        self.thread.start()

    def put(self, worker: str, cid: int, stream: str, text: str) -> None:
        """Queue ``text`` of task ``cid`` (on ``worker``) for ``stream``."""
        self.printed.add(cid)
        self.queue.put((worker, cid, stream, text))

    def written(self, cid: int) -> None:
        """Before task ``cid``'s future completes: wait until what it printed is written (a while at most)."""
        self.printed.discard(cid)
        done = threading.Event()
        self.queue.put(done)
        done.wait(WRITE_PATIENCE)

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self.write(*item)
            except Exception as exc:  # noqa: BLE001 - a closed or broken stream: the output is lost, not the loop
                _log.debug(f"could not write a task's output: {exc}")

    def write(self, worker: str, cid: int, stream: str, text: str) -> None:
        """Write ``text`` with the prefix at the start of each line."""
        key = (worker, cid, stream)
        prefix = f"[{worker} task {cid}] "
        lines = text.splitlines(keepends=True)
        out = []
        at_start = self.line_start.pop(key, True)
        for line in lines:
            out.append(prefix + line if at_start else line)
            at_start = line.endswith(("\n", "\r"))
        if not at_start:
            self.line_start[key] = False
        target = sys.stdout if stream == "stdout" else sys.stderr
        if target is not None:
            target.write("".join(out))
            target.flush()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (within ``timeout`` seconds), then stop."""
        self.queue.put(None)
        self.thread.join(timeout)


def received(loop: Any, body: dict) -> None:
    """An OUTPUT from the broker: captured output kept on its future, forwarded output written out."""
    rows = body.get("output")
    if not isinstance(rows, list):
        raise ValueError("OUTPUT without entries")
    worker = body.get("worker")
    worker = worker[:200] if isinstance(worker, str) else "?"
    capture = body.get("capture")
    begun: set = set()
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and type(row[0]) is int and row[1] in STREAMS
                and isinstance(row[2], str)):
            raise ValueError(f"malformed OUTPUT entry {row!r:.80}")
        cid, stream, text = row
        if capture is not None:
            fut = loop.futures.get(cid)
            if fut is not None:
                if capture == "begin" and cid not in begun:  # an attempt's capture: an earlier one's goes
                    begun.add(cid)
                    fut._captured = None
                keep(fut, stream, text)
        else:
            if loop.output is None:
                loop.output = Writer()
            loop.output.put(worker, cid, stream, text)


def keep(fut: Any, stream: str, text: str) -> None:
    """Add ``text`` to what ``fut``'s task captured on ``stream`` (its tail only)."""
    captured = fut._captured
    if captured is None:
        captured = fut._captured = {}
    now = captured.get(stream, "") + text
    if len(now) > CAPTURE_MAX:
        now = f"[corral: {len(now) - CAPTURE_MAX} characters cut]\n" + now[-CAPTURE_MAX:]
    captured[stream] = now


def rewarn(entries: Any) -> None:
    """Raise again the warnings of a task's RESULT meta: [category, message, filename, lineno, count] each."""
    if not isinstance(entries, list):
        return
    for entry in entries[:100]:
        if not (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str)
                and isinstance(entry[1], str) and isinstance(entry[2], str) and type(entry[3]) is int):
            continue
        name, message, filename, lineno, _ = entry
        category = _category(name)
        if category is None:
            category, message = UserWarning, f"{name.replace(':', '.')}: {message}"
        module = filename[:-3].rpartition("/")[2] if filename.endswith(".py") else filename or "<unknown>"
        try:
            warnings.warn_explicit(message, category, filename, lineno, module=module)
        except Exception as exc:  # noqa: BLE001 - an "error" filter: the I/O loop must go on
            _log.warning(f"a task's warning, raised as an error by this process's filters: {exc!r}")


def _category(name: str) -> type[Warning] | None:
    """The Warning class named ``module:qualname``, if this process can import it."""
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - not importable here (or its import failed): a UserWarning says its name
        return None
    return obj if isinstance(obj, type) and issubclass(obj, Warning) else None
