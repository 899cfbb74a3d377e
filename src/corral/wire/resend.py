"""Results sent lately over a TCP link, kept to send again if the connection is reset.

A RESULT on its way when a TCP connection was reset is lost with it, and so is one sent on
the new connection before the other side knew that connection for its peer's.  When the
peer resumes its session (broker/sessions.py), what was lost is asked for again: a worker
keeps the results it sent the broker, the broker those it sent each client elsewhere.  A
result is kept for the liveness window (after that the session is over anyway), and all of
them together up to RESEND_BYTES: a result pushed out early costs, should the connection
be reset, a rerun of its task (a worker's) or a failed future (a client's), nothing else.
"""

from __future__ import annotations

import time
from collections import OrderedDict

RESEND_BYTES = 64 << 20  # payload bytes kept, at most (the newest results stay)


class SentResults:
    """RESULT entries and their frames, by task id, oldest first."""

    def __init__(self) -> None:
        # gid -> (when sent, its entry, its frames, their bytes)
        self.kept: OrderedDict[int, tuple[float, list, list, int]] = OrderedDict()
        self.bytes = 0

    def record(self, entries: list, frames: list, small: int = 0) -> None:
        """Keep the results just sent: ``entries`` (result entries), their ``frames`` in order.
        Frames shorter than ``small`` bytes are kept as copies: a small ZeroMQ frame received
        zero-copy pins the whole buffer ZeroMQ read it into (kilobytes), as long as it lives."""
        now, pos = time.monotonic(), 0
        for entry in entries:
            count = entry[2]
            own = [bytes(f) if small and memoryview(f).nbytes < small else f for f in frames[pos:pos + count]]
            pos += count
            size = sum(memoryview(f).nbytes for f in own)
            self.forget(entry[0])
            self.kept[entry[0]] = (now, entry, own, size)
            self.bytes += size
        while self.bytes > RESEND_BYTES and self.kept:
            self.forget(next(iter(self.kept)))

    def expire(self, window: float) -> None:
        """Drop those sent more than ``window`` seconds ago."""
        oldest = time.monotonic() - window
        while self.kept:
            gid, (when, *_) = next(iter(self.kept.items()))
            if when >= oldest:
                return
            self.forget(gid)

    def forget(self, gid: int) -> None:
        """Drop the result of ``gid``, if kept."""
        kept = self.kept.pop(gid, None)
        if kept is not None:
            self.bytes -= kept[3]

    def ids(self) -> list[int]:
        """The tasks whose results are kept."""
        return list(self.kept)

    def take(self, gids: list) -> tuple[list, list]:
        """(entries, frames) of the kept results of ``gids``, to send again."""
        entries, frames = [], []
        for gid in gids:
            kept = self.kept.get(gid)
            if kept is not None:
                entries.append(kept[1])
                frames.extend(kept[2])
        return entries, frames
