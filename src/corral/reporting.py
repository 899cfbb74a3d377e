"""In-task progress: ``corral.report(fraction, message)``, and how a task process sends it.

A task calls ``report()`` as often as it likes; its task process sends the
latest report to its supervisor (or, on a lane, to the broker) at most once
per ``REPORT_INTERVAL`` seconds, and the broker passes it on to the task's
client (PROGRESS, docs/protocol.md), where it lands in ``future.info`` and in
progress bars::

    task: report(0.1) report(0.2) ... report(0.9)       (a tight loop)
      |  the first goes at once; later ones wait in ``pending``, each replacing the last
      v
    task process --PROGRESS [gid, fraction, message]--> supervisor or lane --> broker --> client

A report that must wait is sent by a thread of this module (started on first
need), so the latest report is out within the interval even if the task
reports nothing more.

What an ordinary task pays is two stores and a test: the task process notes
the running task in ``current`` before it runs it and clears it after, and
only if ``used`` (this process has called ``report()``) calls ``finish()``,
which puts the report still waiting, if any, in the task's RESULT meta
(``progress``: the last word reaches the client with the result) and waits
for a send in flight: the task process's link to its supervisor
or its lane is written by one thread at a time, and the task's outcome must
not be written while a report is.  The order matters (``finish`` and
``report`` both say why).  Outside a task process ``report()`` checks its
arguments and returns.  A process the task forks (``os.fork``, a fork-context
multiprocessing pool) reports nothing: it does not own the link.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from .tuning import REPORT_INTERVAL

MAX_MESSAGE = 256  # characters of a report's message kept (the rest is cut): protocol.MAX_PROGRESS_TEXT

# Set by the task process (worker/task_process.py): the task it runs (its broker's id; 0: none).
current = 0
used = False  # report() was called in this process: a task's end calls finish()

Send = Callable[[int, "float | None", "str | None"], None]


def check(fraction: float | None, message: str | None) -> tuple[float | None, str | None]:
    """A report's arguments as sent: ``fraction`` a float from 0 to 1, ``message`` a str cut to MAX_MESSAGE."""
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"corral.report(): fraction must be a number from 0 to 1 or None, not "
                            f"{type(fraction).__name__}")
        fraction = float(fraction)
        if not 0.0 <= fraction <= 1.0:  # (NaN too)
            raise ValueError(f"corral.report(): fraction must be from 0 to 1, not {fraction!r}")
    if message is not None:
        if not isinstance(message, str):
            raise TypeError(f"corral.report(): message must be a str or None, not {type(message).__name__}")
        message = message[:MAX_MESSAGE]
    return fraction, message


def report(fraction: float | None = None, message: str | None = None) -> None:
    """Report the running task's progress: ``fraction`` done (0 to 1) and/or a short ``message``.

    Called inside a corral task, it reaches the task's ``future.info``
    (``progress``, ``progress_message``) and progress bars within a second;
    None leaves that part as last reported.  Cheap enough to call in a tight
    loop: at most about four reports a second leave the task process, the
    latest one.  Outside a corral task it does nothing (after checking its
    arguments).  Raises TypeError or ValueError for a fraction that is not a
    number from 0 to 1, or a message that is not a str; a message is cut to
    256 characters.
    """
    fraction, message = check(fraction, message)
    if _link is None or (fraction is None and message is None):
        return
    send, pid = _link
    if pid != os.getpid():
        return  # a process the task forked: the link is its parent's
    global used, _reporter
    used = True  # before ``current`` is read: a task's end that misses this finds current cleared
    if _reporter is None:
        with _making:
            if _reporter is None:
                _reporter = Reporter(send)
    _reporter.report(fraction, message)


class Reporter:
    """Sends a task process's progress reports, coalesced (see the module docstring)."""

    def __init__(self, send: Send):
        self.send = send
        self.lock = threading.Condition(threading.Lock())
        self.sent_at = -REPORT_INTERVAL  # (time.monotonic) when the last report left
        self.pending: list | None = None  # [gid, fraction, message] waiting for the interval to pass
        self.thread: threading.Thread | None = None

    def report(self, fraction: float | None, message: str | None) -> None:
        """The running task's report: sent now, or kept to send when the interval has passed."""
        with self.lock:
            gid = current
            if not gid:
                return  # no task runs (a thread of a task that has ended)
            pending = self.pending
            if pending is not None and pending[0] == gid:  # what this one leaves out, the waiting one says
                fraction = pending[1] if fraction is None else fraction
                message = pending[2] if message is None else message
            now = time.monotonic()
            if now - self.sent_at >= REPORT_INTERVAL:
                self.pending = None
                self._send(gid, fraction, message, now)
                return
            self.pending = [gid, fraction, message]
            if self.thread is None:
                self.thread = threading.Thread(target=self._later, name="corral-report", daemon=True)
                self.thread.start()
            self.lock.notify()

    def finish(self, meta: dict) -> None:
        """The task has ended (``current`` is cleared): its waiting report goes in its outcome's
        ``meta`` instead; returns only once no report is being sent (what the task process
        writes next is the task's outcome)."""
        with self.lock:
            pending, self.pending = self.pending, None
        if pending is not None:
            meta["progress"] = pending[1:]

    def _send(self, gid: int, fraction: float | None, message: str | None, now: float) -> None:
        """Send one report (the lock held); a link that has gone is not the task's problem."""
        self.sent_at = now
        try:
            self.send(gid, fraction, message)
        except Exception:  # noqa: BLE001 - the supervisor or broker is gone: the task goes on, unreported
            pass

    def _later(self) -> None:
        """The thread that sends a waiting report once the interval has passed."""
        with self.lock:
            while True:
                if self.pending is None:
                    self.lock.wait()
                    continue
                wait = self.sent_at + REPORT_INTERVAL - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                (gid, fraction, message), self.pending = self.pending, None
                if gid == current:
                    self._send(gid, fraction, message, time.monotonic())


_link: tuple[Send, int] | None = None  # how this task process sends a report, and its pid
_reporter: Reporter | None = None  # made by the first report
_making = threading.Lock()


def attach(send: Send) -> None:
    """Make this process a task process whose reports go to ``send(gid, fraction, message)``.

    Only this is done per task process (a fresh one's every write is a page copied): its
    ``Reporter`` is made by its first report."""
    global _link
    _link = (send, os.getpid())


def finish(meta: dict) -> None:
    """The running task has ended: called by the task process after it cleared ``current``, if
    ``used``, with the meta of the task's outcome, which takes the report still waiting, if any."""
    if _reporter is not None:
        _reporter.finish(meta)
