"""Large frames split into chunks on CurveZMQ links, and joined again where they arrive.

Why: CurveZMQ encrypts each ZeroMQ frame as one box, which its receiver can open
only once all of it has arrived.  A 64 MiB frame is therefore encrypted, then
carried, then decrypted, one after the other on each link; through a broker that
is four such links for a task's argument and its result.  Cut into chunks of
``CHUNK_BYTES``, the sender's I/O thread encrypts the next chunk while the
receiver's decrypts the last one, so each link costs about one pass over the
bytes instead of two.  Plain links gain nothing (TCP already streams a frame), so
only CurveZMQ sockets split.

A split message carries one extra frame first, where the header would be: a
marker byte (``MARK``, which no header starts with) and, for each frame that was
split, its place counted from the header (0) and how many chunks stand there (two
unsigned 32-bit integers, little-endian).  Whoever receives it joins each run of
chunks into one writable buffer (one copy) before reading it: the broker, which
may keep or send on the frames, and the client or worker.
Everything above this module sees the message as it was sent.
"""

from __future__ import annotations

import struct

from ..errors import ProtocolError
from ..tuning import CHUNK_BYTES, SPLIT_BYTES
from . import largebuf

MARK = 0xFF  # a header's first byte is the protocol version, never this
_PAIR = struct.Struct("<II")
MAX_SPLIT = 1 << 16  # runs one message may name: far more than any message's large frames


def split(msg: list, at: int) -> list:
    """``msg`` with each payload frame of ``SPLIT_BYTES`` or more cut into chunks (views,
    no copy) and the marker frame put before its header (at index ``at``); ``msg`` itself
    when no frame is that large."""
    runs = []
    out = msg[: at + 1]
    for frame in msg[at + 1:]:
        size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
        if size < SPLIT_BYTES:
            out.append(frame)
            continue
        view = memoryview(frame)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        runs.append(_PAIR.pack(len(out) - at, -(-size // CHUNK_BYTES)))
        out.extend(view[pos: pos + CHUNK_BYTES] for pos in range(0, size, CHUNK_BYTES))
    if not runs:
        return msg
    out.insert(at, bytes((MARK,)) + b"".join(runs))
    return out


def is_split(msg: list, at: int) -> bool:
    """Does the frame at ``at`` (a ``zmq.Frame``) mark a split message?"""
    frame = msg[at] if len(msg) > at else None
    return frame is not None and len(frame) > 0 and frame.buffer[0] == MARK


def join(msg: list, at: int) -> list:
    """A split message (``is_split``) as it was sent: the marker at ``at`` taken out and each
    run of chunks joined into one writable buffer (``largebuf``: a received frame is
    writable).  ProtocolError if the marker does not fit the message (a
    peer that lies)."""
    marker = msg[at].bytes
    if (len(marker) - 1) % _PAIR.size or not 0 < len(marker) - 1 <= MAX_SPLIT * _PAIR.size:
        raise ProtocolError(f"a split message's marker frame is {len(marker)} bytes")
    frames = msg[:at] + msg[at + 1:]
    out = frames[: at + 1]
    pos = at + 1
    for start, count in _PAIR.iter_unpack(memoryview(marker)[1:]):
        start += at
        if start < pos or count < 2 or start + count > len(frames):
            raise ProtocolError(f"a split message names chunks {start - at}..{start - at + count} of "
                                f"{len(frames) - at} frames")
        out.extend(frames[pos:start])
        chunks = [c.buffer if hasattr(c, "buffer") else memoryview(c) for c in frames[start: start + count]]
        whole = largebuf.buffer(sum(map(len, chunks)))
        offset = 0
        for chunk in chunks:
            whole[offset: offset + len(chunk)] = chunk
            offset += len(chunk)
        out.append(whole)
        pos = start + count
    out.extend(frames[pos:])
    return out
