"""A caller waiting for a result runs the executor's I/O loop itself meanwhile.

Why: a caller that waits in ``result()`` would otherwise sleep while the I/O thread
wakes to read its result and then wakes it in turn: two thread hand-offs, most of a
no-op round trip.  So a waiting caller takes the loop (``lead``), the I/O thread
stands aside while any caller leads and for ``LINGER`` after the last one left (the
next ``result()`` is usually that close behind), and takes the loop back for
done-callbacks, ``wait()``, ``as_completed()`` and idle time.  A link's ZeroMQ socket
(a broker elsewhere) moves between threads only under ``loop_lock``, whose release and
acquisition are the full memory barrier libzmq asks of a socket that changes threads;
an embedded broker that listens for launched workers keeps its sockets in the I/O
thread (their monitors and spill are its own).  In the main thread,
Ctrl-C is held back while messages are handled (``SigintDeferred``), and the loop is
left to the I/O thread while a Python handler of another signal is installed.
"""

from __future__ import annotations

import _signal
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

from ..tuning import LINGER
from ..wire.poller import Spin
from .future import DONE

# Signals whose Python handlers could raise while the main thread handles the executor's
# messages: with one installed, the main thread waits for results instead of leading.
_WATCHED_SIGNALS = tuple(int(getattr(signal, name)) for name in ("SIGTERM", "SIGALRM", "SIGHUP", "SIGUSR1",
                                                                 "SIGUSR2", "SIGQUIT") if hasattr(signal, name))
# _signal, signal's C half, is called directly: signal.signal() and signal.getsignal() convert
# their arguments and results to and from enums at every call, ~3 us each, and a result() made
# nine such calls.
_SIGINT = int(signal.SIGINT)


class Leading:
    """Who runs the I/O loop: the I/O thread, or callers waiting for a result (see above)."""

    def __init__(self, io: Any, spin: float):  # io: the IOLoop (ioloop.py) whose loop callers lead
        self.io = io
        # Whoever runs the loop holds loop_lock; a done-callback run by a leader may lead again.
        self.loop_lock = threading.RLock()
        self.waiting_room = threading.Condition(threading.Lock())  # where the I/O thread stands aside
        self.callers = 0  # callers leading, or waiting to (under waiting_room)
        self.last_left = 0.0  # when the last one stopped
        self.spin = Spin(spin)  # leaders poll for a while before they sleep

    def stand_aside(self) -> None:
        """The I/O thread waits while callers lead, and LINGER after the last one (the next
        result() is usually that close behind), unless the executor is closing."""
        with self.waiting_room:
            while not self.io.closing and (self.callers or time.monotonic() - self.last_left < LINGER):
                self.waiting_room.wait(LINGER)

    def lead(self, fut: Future, timeout: float | None) -> None:
        """Run the loop in this thread until ``fut`` is done or ``timeout`` passes.

        A caller that waits for its result would otherwise sleep while the I/O thread wakes
        to read that result and then wakes it: two thread hand-offs per round trip.  Not an
        embedded broker's loop that listens for launched workers (its sockets stay in the I/O thread).
        In the main thread, Ctrl-C is held back while messages are handled, so that none is
        half-handled, and the loop is left to the I/O thread while a Python handler of another
        signal is installed (it could raise anywhere).  Outcomes are set once the messages
        are handled, outside the part of the loop that must not be interrupted (unpickling
        and done-callbacks run user code).
        """
        io = self.io
        if io.link is None or io.closing or threading.current_thread() is io.thread:
            return
        if io.broker is not None and io.broker.routers:  # it listens for launched workers: its sockets stay
            return
        guard = None
        if threading.current_thread() is threading.main_thread():
            if not _main_thread_may_lead():
                return
            guard = SigintDeferred()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.waiting_room:
            self.callers += 1
        try:
            if guard is not None:
                guard.install()
            if not self.loop_lock.acquire(blocking=False):
                io.wake()  # the I/O thread is in the loop: it stands aside after this turn
                wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                if not self.loop_lock.acquire(timeout=wait):
                    return
            try:
                while fut._state not in DONE and not io.closing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    outer, io.holding_outcomes = io.holding_outcomes, True
                    try:
                        io.turn(left, guard, self.spin if io.broker is not None else None)  # (see Spin)
                    finally:
                        io.holding_outcomes = outer
                        io.settle_held_outcomes()
            finally:
                self.loop_lock.release()
        finally:
            if guard is not None:
                guard.uninstall()
            with self.waiting_room:
                self.callers -= 1
                self.last_left = time.monotonic()


def _main_thread_may_lead() -> bool:
    """May the main thread run the loop (no Python handler that could raise mid-message)?"""
    if _signal.getsignal(_SIGINT) not in (_signal.default_int_handler, 0, 1):  # or SIG_DFL, SIG_IGN
        return False
    return not any(map(callable, map(_signal.getsignal, _WATCHED_SIGNALS)))  # (no Python frame per signal)



class SigintDeferred:
    """Ctrl-C while the main thread leads the loop: raised at once while it waits, and once
    they are handled while it handles messages (inside ``with``)."""

    def install(self) -> None:
        """Hold Ctrl-C back (if the default handler is installed)."""
        self.held = self.noted = False
        self.installed = _signal.getsignal(_SIGINT) is _signal.default_int_handler
        if self.installed:
            _signal.signal(_SIGINT, self.handler)

    def uninstall(self) -> None:
        """Give Ctrl-C back."""
        if self.installed:
            _signal.signal(_SIGINT, _signal.default_int_handler)

    def handler(self, signum: int, frame: Any) -> None:
        """Ctrl-C: raise at once while waiting, note it while handling messages."""
        if not self.held:
            raise KeyboardInterrupt
        self.noted = True

    def __enter__(self) -> None:
        self.held = True

    def __exit__(self, *exc_info: Any) -> None:
        self.held = False
        if self.noted:
            self.noted = False
            raise KeyboardInterrupt
