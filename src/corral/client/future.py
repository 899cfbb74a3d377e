"""``CorralFuture``: a real ``concurrent.futures.Future`` whose ``cancel()`` reaches the broker,
plus ``kill()``; and the lean machinery that keeps 20,000 pending futures cheap.

A future asks its I/O loop (``ioloop.py``) to cancel or kill its task, and runs
the loop itself while its caller waits for it (``leading.py``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, Protocol

from .. import dependencies
from ..config import check_seconds
from .info import TaskInfo, task_info


class Loop(Protocol):
    """What a future needs of its executor's I/O loop (``ioloop.IOLoop``)."""

    kill_grace: float  # the executor's default grace for kill()
    leading: Any  # the loop's Leading (leading.py): a waiting caller runs the loop

    def cancel(self, futures: list) -> list[bool]:
        """Cancel the tasks of ``futures`` that have not started; a verdict for each."""

    def request_kill(self, cid: int, grace: float) -> None:
        """Stop task ``cid``, even running."""

DONE = (FINISHED, CANCELLED_AND_NOTIFIED)


# The objects each pending future keeps alive are scanned by every collection of the
# garbage collector; with 20,000 futures pending, collections took a third of a submit
# burst's time.  So a future holds as few as it can: _Condition and CorralFuture make
# their containers only when something is put in them.
_NO_WAITERS: tuple = ()


class _Condition(threading.Condition):
    """A ``threading.Condition`` over an RLock, for a future: two objects for the collector
    to scan instead of eight.

    ``Condition.__init__`` stores five bound methods of its lock on itself; these methods
    look them up when called instead.  Its deque of waiting threads is made by the first
    ``wait()``: until then ``notify()`` finds an empty tuple (most futures are done before
    anyone waits for them).
    """

    _waiters: deque | tuple = _NO_WAITERS

    def __init__(self) -> None:  # as Condition's, with an RLock
        self._lock = threading.RLock()

    def wait(self, timeout: float | None = None) -> bool:
        """As ``Condition.wait``, making the waiters' deque first."""
        if self._waiters is _NO_WAITERS:  # we hold the lock: no other thread is in here
            self._waiters = deque()
        return super().wait(timeout)

    def acquire(self, *args, **kwargs) -> bool:
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self):
        return self._lock._release_save()

    def _acquire_restore(self, state) -> None:
        self._lock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return self._lock._is_owned()


class _EmptyUntilAppend:
    """An empty list, as far as a ``Future`` and the ``concurrent.futures`` functions use its
    waiters and callbacks lists, that puts a real list in the future at the first append.

    Every append happens under the future's condition: ``add_done_callback()``, and
    ``wait()``/``as_completed()`` installing their waiter.
    """

    __slots__ = ("future", "name")

    def __init__(self, future: Future, name: str):
        self.future = future
        self.name = name

    def __iter__(self) -> Iterator:
        return iter(())

    def __len__(self) -> int:
        return 0

    def append(self, item: Any) -> None:
        """Put a real list in the future, holding ``item``."""
        self.future.__dict__[self.name] = [item]

    def remove(self, item: Any) -> None:
        raise ValueError(f"{item!r} is not in list")


class _MadeOnAppend:
    """A future's list attribute that does not exist until something is appended to it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, future: Future | None, owner: type | None = None) -> Any:
        return self if future is None else _EmptyUntilAppend(future, self.name)


class CorralFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also reaches the broker, plus ``kill()``."""

    # Slots, not the instance dict, for what every future holds: a client holds many futures, and
    # setting an attribute that __init__ did not set (a result's record, ``_meta``: unset until
    # then) would make each one's dict anew.  The dict stays for what few futures get: the two
    # lists, made on first append, and the attributes below, which read as their class's default
    # until set.
    __slots__ = ("_condition", "_state", "_result", "_exception", "_io", "_cid", "_kill_requested", "_submitted",
                 "_meta")

    _waiters = _MadeOnAppend()
    _done_callbacks = _MadeOnAppend()
    _waits: Any = None  # a task that waits for others: what it waits for (client/dependents.py)
    _unplaced: str | None = None  # why no connected worker could ever run its queued task (UNPLACED)
    _heard_started: float | None = None  # when the client heard that it began (STARTED; its record)
    _objects: list | None = None  # the handles of the large objects its task uses (objects.py)
    _progress: tuple | None = None  # (fraction, message) its task last reported (reports.py), parts None
    _progress_watch: Any = None  # a progress bar's callback, called with the future on each report
    _captured: dict | None = None  # what its task wrote, where it asked capture_output (output.py)

    def __init__(self, io: Loop, cid: int):
        # Future.__init__'s fields (a test checks that none is missing), with a leaner condition;
        # its two lists are made when something is first put in them (_MadeOnAppend).
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._io = io
        self._cid = cid
        self._kill_requested = False
        self._submitted = time.time()  # (its RESULT's meta, ``_meta``, is set with its outcome: info.py)

    @property
    def info(self) -> TaskInfo:
        """A snapshot of the task's record: its state, times, where it ran, its attempts and
        peak memory (``corral.TaskInfo``; docs/tasks.md)."""
        return task_info(self)

    def result(self, timeout: float | None = None) -> Any:
        """As ``Future.result``, running the executor's loop while waiting (``leading.py``)."""
        return Future.result(self, self._wait(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``, running the executor's loop while waiting (``leading.py``)."""
        return Future.exception(self, self._wait(timeout))

    def _wait(self, timeout: float | None) -> float | None:
        """Run the executor's loop while waiting for this future (``leading.py``); the timeout left."""
        if self._state in DONE:
            return timeout
        started = time.monotonic()
        self._io.leading.lead(self, timeout)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

    def cancel(self) -> bool:
        """Cancel the task if it has not started; False once it runs (as in the stdlib).

        The broker, or the worker holding the task, has the final word, so a
        task that a worker has begun is never reported cancelled.
        """
        return self._io.cancel([self])[0]

    def kill(self, grace: float | None = None) -> bool:
        """Stop the task even if it is running.

        A queued task is cancelled at once.  A running task's process gets
        SIGTERM, then SIGKILL if it is still alive ``grace`` seconds later
        (default: the executor's ``kill_grace``); the future then ends
        cancelled (``result()`` raises ``CancelledError``).  A persistent
        worker replaces the killed process.  Returns False if the future is
        already done.  ``grace`` must be a finite number of seconds >= 0:
        anything else raises ValueError, and nothing is sent.
        """
        if grace is not None:
            grace = check_seconds("grace", grace, zero=True)  # the broker would drop the KILL
        with self._condition:
            if self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
                return False
            if self._kill_requested:
                return True
            self._kill_requested = True
        self._io.request_kill(self._cid, self._io.kill_grace if grace is None else grace)
        cancel_now(self)  # a task still pending here ends now; a running one when its process is gone
        return True

    @property
    def _waiting(self) -> bool:
        """Is its task held back until the tasks it depends on have succeeded (``dependents.py``)?"""
        waits = self._waits
        return waits is not None and any(not dep.done() for dep in (*waits.data, *waits.after))

    def __reduce_ex__(self, protocol: int) -> tuple:
        """As a task's argument, a placeholder for its result (``dependencies.py``); else an error."""
        return dependencies.reduce_future(self)

    def _set_killed(self) -> None:
        """End the future as cancelled even though it was running: its process was killed."""
        _end_cancelled(self, (PENDING, RUNNING))


def _end_cancelled(fut: Future, states: tuple) -> bool:
    """Move a future in one of ``states`` straight to cancelled, waking its waiters and callbacks.

    One step under the future's lock: the I/O thread's ``mark_started`` must never see the
    half-way CANCELLED state that ``Future.cancel()`` leaves until ``set_running_or_notify_cancel``.
    """
    with fut._condition:
        if fut._state not in states:
            return fut._state in (CANCELLED, CANCELLED_AND_NOTIFIED)
        fut._state = CANCELLED_AND_NOTIFIED
        for waiter in fut._waiters:
            waiter.add_cancelled(fut)
        fut._condition.notify_all()
    fut._invoke_callbacks()
    return True


def cancel_now(fut: Future) -> bool:
    """Cancel a pending future and wake its waiters at once (the broker dropped its task).

    ``Future.cancel()`` alone leaves the future CANCELLED until its executor
    calls ``set_running_or_notify_cancel()``, which ``wait()`` and
    ``as_completed()`` wait for; no worker will ever take this task, so do it now.
    False if the future runs or is finished.
    """
    return _end_cancelled(fut, (PENDING,))


def mark_started(fut: Future) -> None:
    """A worker began the task: a pending future runs now.

    Anything else is left as it is: a retried task starts again (only the first start
    counts), and a future cancelled or killed here before the start was heard stays
    cancelled; its task's RESULT, which still comes, is dropped.
    """
    with fut._condition:
        if fut._state == PENDING:
            fut.set_running_or_notify_cancel()


def settle(fut: Future, value: Any, exc: BaseException | None) -> None:
    """Complete a future; a done-callback that raises must not stop the I/O thread."""
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except BaseException:  # noqa: BLE001 - e.g. sys.exit() in a done-callback
        import traceback

        traceback.print_exc()
