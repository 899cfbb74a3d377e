"""A socket pair between an embedded broker and a worker it started: protocol messages as a stream.

Each message is the same frames as over ZeroMQ, written as its frame count,
the frames' sizes, then the frames (docs/protocol.md, section 2).  ``Endpoint``
is what this and a lane (``lane.py``) share.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Any, Protocol

from ..errors import ProtocolError
from ..tuning import LARGE_MESSAGE, STREAM_BUFFER, STREAM_READ_CHUNK
from . import largebuf

_COUNT = struct.Struct("!I")
MAX_FRAMES = 1 << 20  # frames in one message on a Stream; more is garbage
MAX_MESSAGE = 1 << 40  # bytes in one message on a Stream
# Reads land in one buffer per thread (tuning.STREAM_READ_CHUNK says why).
_read_buffers = threading.local()


def _read_buffer() -> bytearray:
    """This thread's read buffer."""
    buffer = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = bytearray(STREAM_READ_CHUNK)
    return buffer


def size_buffers(sock: socket.socket, size: int) -> None:
    """Make a socket's send and receive buffers ``size`` bytes each, where the system allows
    (a setting of the socket: it stays when the socket is passed to another process)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass


class Link(Protocol):
    """What a peer needs of its link to another: whole messages out and in, without blocking.

    A socket pair (``Stream``), a task process's lane (``lane.Lane``) and a worker's ZeroMQ
    DEALER (``worker.supervisor``) are links; a client's links to its broker take messages
    as (kind, body, frames) instead (``client.links.Link``).
    """

    pending: bool  # output waits for the socket to become writable (then ``flush``)
    eof: bool  # the other end has gone

    @property
    def poll_key(self) -> Any:
        """What a poller's events call it."""

    def send(self, frames: list) -> None:
        """Queue one message (its frames) and write what the socket takes now."""

    def receive(self) -> list[list]:
        """Every whole message that has arrived, as lists of frames."""

    def flush(self) -> None:
        """Write queued output until the socket would block."""

    def close(self) -> None:
        """Close the link."""


class Endpoint:
    """What a Stream and a Lane share: a socket, and a queue of output it has not taken yet."""

    sock: socket.socket
    outq: deque

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.sock.fileno()

    @property
    def poll_key(self) -> int:
        """What a poller's events call it: both zmq.Poller and FdPoller report its fd."""
        return self.sock.fileno()

    @property
    def pending(self) -> bool:
        """Is output waiting for the socket to become writable?"""
        return bool(self.outq)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class Stream(Endpoint):
    """Protocol messages over a stream socket: an embedded broker and a worker it started.

    A ZeroMQ message between two processes wakes an I/O thread on each side
    and costs tens of microseconds of CPU; a local worker's messages instead
    go over a socket pair made when the worker is started (so nothing else can
    connect to it), each written with one ``sendmsg``::

        4-byte frame count N | N 8-byte frame sizes | the N frames back to back

    Writes never block: what the socket does not take at once waits in a queue
    that ``flush()`` writes when the socket is writable (``pending``), so two
    peers sending each other a lot at the same time cannot deadlock.
    ``receive()`` returns every whole message that has arrived, without
    blocking; the frames of a message are slices of one buffer, never copied
    again.  A framing error raises ProtocolError: the stream cannot be trusted
    after it, and its owner closes it.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        size_buffers(sock, STREAM_BUFFER)
        self.outq: deque[memoryview] = deque()
        self.inbuf = bytearray()
        self.large: memoryview | None = None  # a large message being read into its own buffer
        self.large_sizes: list[int] = []
        self.filled = 0
        self.eof = False  # the peer closed its end (or died)

    def send(self, frames: list) -> None:
        """Queue one message and write as much of the queue as the socket takes now."""
        self.outq.extend(framed(frames))
        self.flush()

    def flush(self) -> None:
        """Write queued output until the socket would block."""
        while self.outq and not self.eof:
            try:
                sent = self.sock.sendmsg(list(self.outq)[:512])  # IOV_MAX is 1024 on Linux
            except BlockingIOError:
                return
            except OSError:  # the peer is gone: what we had for it is moot
                self.eof = True
                break
            while sent and sent >= self.outq[0].nbytes:
                sent -= self.outq.popleft().nbytes
            if sent:
                self.outq[0] = self.outq[0][sent:]
        if self.eof:
            self.outq.clear()

    def drain_output(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds until queued output is written (before closing)."""
        if self.outq and not self.eof:
            deadline = time.monotonic() + timeout
            while self.outq and not self.eof and time.monotonic() < deadline:
                select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))
                self.flush()

    def receive(self) -> list[list]:
        """Every whole message that has arrived; sets ``eof`` when the peer has closed."""
        messages: list[list] = []
        drained = False  # the last read was short: the socket is empty, no need for a read that says so
        while not self.eof:
            if self.large is not None:
                if not self._read_large():
                    break
                if self.filled == len(self.large):
                    messages.append(_split(self.large, self.large_sizes))
                    self.large = None
                continue
            if not self._parse_all(messages):
                continue  # a large message: the rest goes straight into its own buffer
            if drained:
                break
            scratch = _read_buffer()
            try:
                got = self.sock.recv_into(scratch)
            except BlockingIOError:
                break
            except OSError:
                got = 0
            if not got:
                self.eof = True
                break
            with memoryview(scratch) as view:
                self.inbuf += view[:got]
            drained = got < STREAM_READ_CHUNK
        return messages

    def _parse_all(self, messages: list) -> bool:
        """Take every whole message in ``inbuf``; False if a large one now needs reading."""
        while (message := self._parse()) is not None:
            messages.append(message)
        return self.large is None

    def _read_large(self) -> bool:
        """Read more of a large message into its own buffer."""
        try:
            got = self.sock.recv_into(memoryview(self.large)[self.filled :])
        except BlockingIOError:
            return False
        except OSError:
            got = 0
        if not got:
            self.eof = True
            return False
        self.filled += got
        return True

    def _parse(self) -> list | None:
        """The next whole message in ``inbuf``, or None; a large one moves to its own buffer."""
        buf = self.inbuf
        if len(buf) < _COUNT.size:
            return None
        count = _COUNT.unpack_from(buf)[0]
        if not 0 < count <= MAX_FRAMES:
            raise ProtocolError(f"a stream message with {count} frames")
        start = _COUNT.size + 8 * count
        if len(buf) < start:
            return None
        sizes = list(struct.unpack_from(f"!{count}Q", buf, _COUNT.size))
        total = sum(sizes)
        if total > MAX_MESSAGE:
            raise ProtocolError(f"a stream message of {total} bytes")
        if len(buf) >= start + total:
            body = bytes(buf[start : start + total])
            del buf[: start + total]
            return _split(body, sizes)
        if total >= LARGE_MESSAGE:
            try:
                self.large = largebuf.buffer(total)
            except MemoryError:
                raise ProtocolError(f"no memory for a stream message of {total} bytes") from None
            self.filled = len(buf) - start
            self.large[: self.filled] = buf[start:]
            self.large_sizes = sizes
            buf.clear()
        return None


def framed(frames: list) -> list[memoryview]:
    """A message's frames as a stream carries them: count and sizes, then the frames (uncopied)."""
    views = [f.buffer if hasattr(f, "buffer") else memoryview(f).cast("B") for f in frames]
    return [memoryview(struct.pack(f"!I{len(views)}Q", len(views), *(v.nbytes for v in views))), *views]


def unframed(body) -> list:
    """The frames of one whole stream-framed message (views of ``body``); ProtocolError if it is not one."""
    if len(body) < _COUNT.size:
        raise ProtocolError("a message shorter than its frame count")
    count = _COUNT.unpack_from(body)[0]
    start = _COUNT.size + 8 * count
    if not 0 < count <= MAX_FRAMES or len(body) < start:
        raise ProtocolError(f"a message with {count} frames")
    sizes = list(struct.unpack_from(f"!{count}Q", body, _COUNT.size))
    if start + sum(sizes) != len(body):
        raise ProtocolError("a message whose frame sizes do not add up to its length")
    return _split(memoryview(body)[start:], sizes)


def _split(body, sizes: list[int]) -> list:
    """``body`` cut into frames of ``sizes``."""
    view = memoryview(body)
    frames, pos = [], 0
    for size in sizes:
        frames.append(view[pos : pos + size])
        pos += size
    return frames
