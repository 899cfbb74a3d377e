"""Waiting for descriptors: poll, then sleep.

``FdPoller`` is ``zmq.Poller``'s interface over ``select.poll`` for plain
descriptors (one system call instead of two); ``Spin`` decides how long a
waiter polls without sleeping first, and why that pays.
"""

from __future__ import annotations

import os
import select
import time

from ..timing import smooth
from ..tuning import SPIN

# ZeroMQ's poll flags as plain ints: pyzmq's are enum flags, and each operation on
# one costs microseconds in a loop that runs for every message.
POLLIN, POLLOUT = 1, 2




class Spin:
    """How long a waiter polls before it sleeps: its limit (SPIN) while its waits are short.

    A process that sleeps in poll(2) or recv(2) lets its CPU go idle, and an idle CPU
    sleeps too: waking the process then costs the waker an interrupt to that CPU and
    the sleeper the time for it to come back, tens of microseconds on a virtual
    machine, most of a no-op round trip.  A waiter whose recent waits (a moving
    average) were shorter than its limit polls without sleeping for up to that long,
    yielding its CPU to any other runnable process at each poll; one whose waits are
    longer (long tasks, an idle pool) sleeps at once.
    """

    def __init__(self, limit: float | None = None):
        self.limit = SPIN if limit is None else limit
        self.typical = self.limit  # nothing is spent on spinning until waits prove short

    def budget(self) -> float:
        """Seconds to poll before sleeping, for the next wait."""
        return self.limit if self.typical < self.limit else 0.0

    def waited(self, seconds: float) -> None:
        """Note how long a wait took."""
        self.typical = smooth(self.typical, seconds)


class FdPoller:
    """``zmq.Poller``'s interface over ``select.poll``, for plain file descriptors.

    Where no ZeroMQ socket is involved (an embedded broker, a worker on a socket
    pair) this is one poll(2) per call; ``zmq_poll`` makes two.  Flags are
    ZeroMQ's (POLLIN 1, POLLOUT 2); a hang-up or an error reads as POLLIN, so
    that the reader finds out.
    """

    def __init__(self) -> None:
        self.poll_object = select.poll()

    def register(self, obj, flags: int) -> None:
        """Watch ``obj`` (a descriptor or an object with one) for ``flags``."""
        fd = obj if isinstance(obj, int) else obj.fileno()
        wanted = (select.POLLIN if flags & POLLIN else 0) | (select.POLLOUT if flags & POLLOUT else 0)
        self.poll_object.register(fd, wanted)

    def unregister(self, obj) -> None:
        """Stop watching ``obj``."""
        self.poll_object.unregister(obj if isinstance(obj, int) else obj.fileno())

    def poll(self, timeout: float | None = None, spin: float = 0.0) -> list[tuple[int, int]]:
        """Ready descriptors as (fd, flags); ``timeout`` in milliseconds, None: forever;
        polling without sleeping for the first ``spin`` seconds of it (see Spin)."""
        readable = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL
        happened = []
        if spin and timeout != 0:
            deadline = time.perf_counter() + (spin if timeout is None else min(spin, timeout / 1000))
            while not (happened := self.poll_object.poll(0)) and time.perf_counter() < deadline:
                os.sched_yield()
        if not happened:
            happened = self.poll_object.poll(timeout)
        return [
            (fd, (POLLIN if flags & readable else 0) | (POLLOUT if flags & select.POLLOUT else 0))
            for fd, flags in happened
        ]


class Watched:
    """What a loop polls, kept registered from one turn to the next: each turn says what it wants
    watched (``watch``), and only what changed is registered or dropped.  Why: ``zmq.Poller``'s
    register and unregister are Python calls, and a worker's loop that registered its every
    descriptor anew each turn made some twenty of them per task.  Plain descriptors are given as
    numbers (an object's ``fileno()`` may change when it closes, and it must still be dropped):
    ZeroMQ sockets as themselves."""

    def __init__(self, poller) -> None:
        self.poller = poller  # a zmq.Poller or an FdPoller
        self.watched: dict = {}

    def watch(self, wanted: dict) -> None:
        """Watch exactly ``wanted`` (what to watch -> its flags) from now on."""
        if wanted == self.watched:
            return
        for each in self.watched.keys() - wanted.keys():
            self.poller.unregister(each)
        for each, flags in wanted.items():
            if self.watched.get(each) != flags:
                self.poller.register(each, flags)
        self.watched = wanted

    def poll(self, timeout: float | None = None) -> list:
        """The poller's events (``timeout`` in milliseconds)."""
        return self.poller.poll(timeout)
