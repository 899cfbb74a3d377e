"""The embedded broker's own workers, each on a socket pair (``PoolLinks``, a part of ``Broker``).

A worker the pool starts inherits one end of a socket pair (``wire/stream.py``),
and a persistent one a lane too; the pool hands the broker the other ends
(``adopt``).  Nothing else can connect to them, and a message costs one system call
instead of two ZeroMQ I/O thread hand-offs.
"""

from __future__ import annotations

import socket

from ..errors import ProtocolError
from ..wire.lane import Lane
from ..wire.poller import POLLIN, POLLOUT
from ..wire.stream import Stream
from .peers import MALFORMED
from .records import PoolLink


class PoolLinks:
    """The socket-pair half of ``Broker`` (its ``paired``: the pool's workers, by identity)."""

    def adopt(self, pid: int, sock: socket.socket, lane: socket.socket | None = None) -> None:
        """A worker the pool just started, connected to us by a socket pair (and a lane)."""
        ident = b"\0pool-%d" % pid  # cannot clash with a ZeroMQ identity (a zero byte and four more)
        self.paired[ident] = link = PoolLink(pid, Stream(sock), lane=Lane(lane) if lane is not None else None)
        self.poller.register(link.stream, link.flags)
        if link.lane is not None:
            self.poller.register(link.lane, link.lane_flags)

    def serve_stream(self, ident: bytes, link: PoolLink, events: int) -> None:
        """Read what a pool worker sent on its socket pair; a broken or closed one ends its link."""
        if events & POLLOUT:
            link.stream.flush()
        try:
            messages = link.stream.receive()
        except ProtocolError as exc:  # the framing is broken: nothing after it can be trusted
            self.log(f"worker process {link.pid} sent garbage ({exc}); stopping it")
            if self.pool:
                self.pool.kill(link.pid)
            self.disconnect(ident)
            return
        for msg in messages:
            try:
                self.receive(None, ident, msg[0], msg[1:])
            except MALFORMED as exc:
                self.complain(f"dropped malformed message from worker process {link.pid}: {type(exc).__name__}: {exc}")
        if link.stream.eof:
            self.disconnect(ident)

    def disconnect(self, ident: bytes) -> None:
        """Close a worker's socket pair.  Its process has ended, or is being stopped: the pool
        reports how (``reap_pool``), and its tasks go back to the queue then."""
        link = self.paired.pop(ident)
        self.poller.unregister(link.stream)
        link.stream.close()
        if link.lane is not None:
            self.serve_lane(ident, link)  # the results its task process sent before
            self.poller.unregister(link.lane)
            link.lane.close()
        w = self.workers.get(ident)
        if w is not None:
            w.credit = 0
            w.epoch = None


    def watch_output(self) -> None:
        """Watch a socket pair (or lane) for writability only while output waits for it:
        otherwise poll would never sleep."""
        for link in self.paired.values():
            wanted = POLLIN | (POLLOUT if link.stream.pending else 0)
            if wanted != link.flags:
                self.poller.register(link.stream, wanted)
                link.flags = wanted
            if link.lane is not None:
                wanted = POLLIN | (POLLOUT if link.lane.pending else 0)
                if wanted != link.lane_flags:
                    self.poller.register(link.lane, wanted)
                    link.lane_flags = wanted
