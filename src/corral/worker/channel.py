"""The socket pair between a supervisor and its task process: whole messages, few copies.

Each message is one write: an 8-byte length, then a 4-byte header length,
the pickled header (which lists the payload frames' sizes), and the payload
frames back to back.  It is sent with one gathering ``writev`` straight
from the frames' buffers and read into one buffer, whose slices the
unpickler takes as they are: a large array is copied only by the kernel.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import struct

from ..tuning import CHANNEL_BUFFER, CHANNEL_READ_CHUNK
from ..wire import largebuf
from ..wire.stream import size_buffers

_LENGTHS = struct.Struct("!QI")


class Channel:
    """One end of the socket pair between a supervisor and its task process.

    It reads and writes the descriptor with ``os`` calls, so a fresh task process
    can use the bare descriptor it inherited (``sock`` an int: the supervisor
    sized its buffers) without building a socket object: every page a fresh
    process writes is a page the kernel copies for it.
    """

    def __init__(self, sock: socket.socket | int):
        self.sock = None if isinstance(sock, int) else sock
        self.fd = sock if self.sock is None else sock.fileno()
        self.buffer = b""  # the last read (and what was left of the one before); taken up to ``pos``
        self.pos = 0
        if self.sock is not None:
            size_buffers(self.sock, CHANNEL_BUFFER)

    def fileno(self) -> int:
        """Its socket's descriptor (the task process's end is watched through it)."""
        return self.fd

    def send(self, header: tuple, frames: list = ()) -> None:
        """One message: a header tuple and its frames, in one gathering write."""
        views, sizes = [], []
        for frame in frames:
            view = memoryview(frame).cast("B")
            views.append(view)
            sizes.append(view.nbytes)
        head = pickle.dumps((header, sizes), protocol=5)
        body = 4 + len(head) + sum(sizes)
        parts = [_LENGTHS.pack(body, len(head)), head, *views]
        sent = os.writev(self.fd, parts[:512])  # IOV_MAX is 1024 on Linux
        if sent < 8 + body:  # (the usual message goes whole in that one write)
            self._send_rest(parts, sent)

    def _send_rest(self, parts: list, sent: int) -> None:
        """What a first write left: the parts after the ``sent`` bytes written."""
        while True:
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = memoryview(parts[0])[sent:]
            if not parts:
                return
            sent = os.writev(self.fd, parts[:512])

    def recv(self) -> tuple[tuple, list]:
        """One whole message; EOFError when the other end closed."""
        total, head_len = _LENGTHS.unpack(self._take(_LENGTHS.size))
        view = self._take(total - 4)
        header, sizes = pickle.loads(view[:head_len])
        frames, pos = [], head_len
        for size in sizes:
            frames.append(view[pos : pos + size])
            pos += size
        return header, frames

    def buffered(self) -> bool:
        """Did a read bring in more than has been taken (the start of another message)?"""
        return self.pos < len(self.buffer)

    def set_blocking(self, blocking: bool) -> None:
        """Non-blocking, a ``recv`` of a message not there whole raises BlockingIOError (an OSError)."""
        os.set_blocking(self.fd, blocking)

    def poll(self, timeout: float = 0.0) -> bool:
        """Is there something to read (perhaps the start of a message still being written)?"""
        if self.buffered():
            return True
        return bool(select.select([self.fd], [], [], timeout)[0])

    def _take(self, n: int) -> memoryview:
        """The next ``n`` bytes.

        Small messages are read many at a time and handed out as read-only views
        of the bytes read, without a copy.  A message of ``CHANNEL_READ_CHUNK`` or more is
        read straight into a writable buffer of its own: only such a message can
        hold an out-of-band buffer (``serialization.OOB_THRESHOLD``), which the
        unpickler hands to user code as it is (a numpy array the task may write to).
        """
        have = len(self.buffer) - self.pos
        if n >= CHANNEL_READ_CHUNK:
            view = largebuf.buffer(n)
            got = min(have, n)
            view[:got] = memoryview(self.buffer)[self.pos : self.pos + got]
            self.pos += got
            while got < n:
                count = os.readv(self.fd, [view[got:]])
                if not count:
                    raise EOFError("the other end closed the channel")
                got += count
            return view
        while have < n:
            chunk = os.read(self.fd, CHANNEL_READ_CHUNK)
            if not chunk:
                raise EOFError("the other end closed the channel")
            self.buffer = self.buffer[self.pos :] + chunk if have else chunk
            self.pos, have = 0, len(self.buffer)
        self.pos += n
        return memoryview(self.buffer)[self.pos - n : self.pos]

    def close(self) -> None:
        """Close our end."""
        if self.sock is None:
            os.close(self.fd)
        else:
            self.sock.close()
