"""A task process's lane: tasks and results straight between an embedded broker and the task process.

Records of a SOCK_SEQPACKET socket pair, each whole or not at all, so a
reader finds its place again after a writer died half-way (docs/protocol.md,
section 2).
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque

from ..errors import ProtocolError
from .stream import Endpoint, framed, unframed

LANE_RECORD = 64 << 10  # message bytes per record: far below any system's socket send buffer
_START, _END = 1, 2


class Lane(Endpoint):
    """Tasks and results between an embedded broker and a worker's task process, directly.

    A worker started by an embedded broker's pool gets a second socket pair, a
    SOCK_SEQPACKET one: its task processes read their tasks from it and write
    their results to it, so that neither waits for the supervisor (a process
    that must wake up in the middle of every round trip).  Each message is
    framed as on a ``Stream`` and cut into records of at most LANE_RECORD
    bytes, each behind a flags byte: START on a message's first record, END on
    its last.  The kernel hands over each record whole or not at all, so a task
    process that dies half-way through reading or writing a message leaves
    whole records behind it, and the next reader finds its place again: it
    drops records until a START, and a message whose END never came.

    Non-blocking (the broker's end: what the socket does not take waits in
    ``outq``, written by ``flush()`` when it is writable) or blocking (a task
    process's end: ``recv_message()``).
    """

    def __init__(self, sock: socket.socket, blocking: bool = False):
        self.sock = sock
        sock.setblocking(blocking)
        self.outq: deque[tuple[bytes, memoryview]] = deque()  # records not written yet
        self.parts: list | None = None  # the records of the message being received
        self.dropped = 0  # malformed messages received and dropped
        self.eof = False

    def send(self, frames: list) -> None:
        """Queue one message's records and write what the socket takes now."""
        body = memoryview(b"".join(framed(frames)))
        for pos in range(0, len(body), LANE_RECORD):
            flags = (_START if pos == 0 else 0) | (_END if pos + LANE_RECORD >= len(body) else 0)
            self.outq.append((bytes((flags,)), body[pos : pos + LANE_RECORD]))
        self.flush()

    def flush(self) -> None:
        """Write queued records until the socket would block."""
        while self.outq and not self.eof:
            try:
                self.sock.sendmsg(self.outq[0])
            except BlockingIOError:
                return
            except OSError:  # the other end is closed: what we had for it is moot
                self.eof = True
                break
            self.outq.popleft()
        if self.eof:
            self.outq.clear()

    def receive(self) -> list[list]:
        """Every whole message that has arrived, without blocking; sets ``eof`` at end of file."""
        messages: list[list] = []
        while not self.eof:
            try:
                record = self.sock.recv(LANE_RECORD + 1)
            except BlockingIOError:
                break
            except OSError:
                record = b""
            if not record:
                self.eof = True
                break
            message = self._take(record)
            if message is not None:
                messages.append(message)
        return messages

    def recv_message(self, spin: float = 0.0) -> list:
        """The next whole message (blocking, after polling for ``spin`` seconds: see Spin);
        EOFError when the other end is closed."""
        while True:
            record = self._spin(spin) if spin else None
            if record is None:
                record = self.sock.recv(LANE_RECORD + 1)
            if not record:
                raise EOFError("the lane was closed")
            message = self._take(record)
            if message is not None:
                return message

    def _spin(self, seconds: float) -> bytes | None:
        """A record polled for, for up to ``seconds``; None if none came."""
        deadline = time.perf_counter() + seconds
        while True:
            try:
                return self.sock.recv(LANE_RECORD + 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    return None
                os.sched_yield()

    def _take(self, record: bytes) -> list | None:
        """Add a record to the message being received; the message, once whole."""
        flags = record[0]
        if flags & _START:
            self.parts = []  # a message still open was cut short: its writer died
        if self.parts is None:
            return None  # the rest of a message whose start a reader that died took
        self.parts.append(memoryview(record)[1:])
        if not flags & _END:
            return None
        parts, self.parts = self.parts, None
        if len(parts) == 1:
            body = parts[0]
        else:  # large enough to hold out-of-band buffers, which user code may write to: writable
            body = bytearray()
            for part in parts:
                body += part
        try:
            return unframed(body)
        except ProtocolError:
            self.dropped += 1
            return None

    def reset(self) -> None:
        """Forget a message half received and the records not written yet (their peer died)."""
        self.parts = None
        self.outq.clear()
