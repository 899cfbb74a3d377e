"""What the broker owes a peer that is not reading: sends that never block.

Why: a ROUTER with ``ROUTER_MANDATORY`` *blocks* a send to a peer whose pipe is
full, that is one that has not read its last thousand messages (ZeroMQ's
send high-water mark, plus what the kernel buffers).  One such peer, a client
stopped with Ctrl-Z or one that asks for status and never reads the answers,
would then stall the broker for everyone.  So the broker sends without
blocking; a message the pipe refuses waits here, behind any earlier one, and
is tried again each turn::

    Broker.send --> Backlogs.send --(pipe has room)--> ROUTER --> peer
                         |
                         +--(pipe full)--> queues[ident] --retry() each turn--+

A known peer whose queue makes no progress for a liveness period, or holds
more than ``MAX_BACKLOG`` messages, is dropped as a silent one is
(``Broker.housekeeping``).  A peer the broker does not know gets no queue: what
it is told (an ERROR) is dropped if it does not read.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import zmq

from ..wire import sockets

# Messages a peer may owe before it is dropped: far more than a peer that reads ever owes
# (a turn sends a client at most four), and a bound on what one that never reads can cost.
MAX_BACKLOG = 10_000


class Backlog:
    """The messages owed to one peer, oldest first, and when it last took one."""

    __slots__ = ("sock", "messages", "moved_at")

    def __init__(self, sock: zmq.Socket, now: float):
        self.sock = sock
        self.messages: deque[list] = deque()
        self.moved_at = now


class Backlogs:
    """Every peer's backlog, by identity; empty while every peer reads."""

    def __init__(self) -> None:
        self.queues: dict[bytes, Backlog] = {}

    def __bool__(self) -> bool:
        return bool(self.queues)

    def send(self, sock: zmq.Socket, msg: list, known: Callable[[bytes], bool]) -> None:
        """Send ``msg`` (the identity frame first) without blocking; if the peer's pipe is
        full, queue it when ``known(ident)``, else drop it (asked only then: not on the
        path of every send).  Raises ZMQError(EHOSTUNREACH) for a peer that has gone."""
        ident = msg[0]
        backlog = self.queues.get(ident)
        if backlog is None:
            try:
                sockets.send(sock, msg, sockets.NOBLOCK)
                return
            except zmq.Again:
                if not known(ident):
                    return
                backlog = self.queues[ident] = Backlog(sock, time.monotonic())
        if len(backlog.messages) >= MAX_BACKLOG:
            backlog.moved_at = float("-inf")  # overdue: the peer goes at the next heartbeat
            return
        backlog.messages.append(msg)

    def retry(self) -> None:
        """Send what each backlog's pipe takes now, oldest first."""
        now = time.monotonic()
        for ident, backlog in list(self.queues.items()):
            while backlog.messages:
                try:
                    sockets.send(backlog.sock, backlog.messages[0], sockets.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:  # the peer has gone: nothing more reaches it
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    backlog.messages.clear()
                    break
                backlog.messages.popleft()
                backlog.moved_at = now
            if not backlog.messages:
                del self.queues[ident]

    def overdue(self, now: float, patience: float) -> list[bytes]:
        """Peers whose backlog has not moved for ``patience`` seconds, or grew too long."""
        return [ident for ident, backlog in self.queues.items() if now - backlog.moved_at > patience]

    def drop(self, ident: bytes) -> int:
        """Forget what ``ident`` is owed; how many messages that was."""
        backlog = self.queues.pop(ident, None)
        return 0 if backlog is None else len(backlog.messages)
