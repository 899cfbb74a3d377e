"""The I/O loop's link to its broker: a ZeroMQ DEALER to a broker elsewhere (``SocketLink``),
or method calls to the embedded broker that the loop's own thread serves (``DirectLink``).

Both take protocol messages as (kind, body, frames) and give back those that have arrived;
``Link`` is what the loop needs of either.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Protocol

import zmq

from ..broker.broker import Broker
from ..logs import logger
from ..security.handshakes import HandshakeWatch
from ..wire import chunks, protocol, sockets
from ..wire.poller import POLLIN
from ..wire.protocol import Kind

KEY_REFUSED = "key_refused"  # not on the wire: what SocketLink reports when the broker refused our key


class Link(Protocol):
    """What the I/O loop needs of its link to a broker."""

    poller: object  # waits for the link (and the loop's wake-up pipe)

    def post(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        """Send one message to the broker."""

    def receive(self, events: dict) -> Iterator[tuple[Kind, dict, list]]:
        """The messages that have arrived, given what the poller reported."""

    def close(self) -> None:
        """Close the link (an embedded broker stops with it)."""


class SocketLink:
    """The I/O loop's connection to a broker elsewhere: a ZeroMQ DEALER socket."""

    def __init__(self, ctx: zmq.Context, address: str, curve: tuple[bytes, bytes, bytes] | None = None):
        self.watch: HandshakeWatch | None = None  # the broker's verdict on our key (handshakes.py)

        def watch(sock: zmq.Socket) -> None:
            self.watch = HandshakeWatch(sock, "client")

        self.sock = sockets.dealer(ctx, address, linger=1000, curve=curve, before_connect=curve and watch)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, POLLIN)
        self.told_refused = False
        if self.watch is not None:
            self.poller.register(self.watch.socket, POLLIN)

    def handshake_note(self) -> str:
        """Why the broker may seem silent: its handshakes fail (a sentence, or "")."""
        failure = self.watch.last_failure if self.watch is not None else None
        return f" The broker at that address is reached, but {failure}." if failure else ""

    def post(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        """One message to the broker (over CurveZMQ, large frames in chunks: ``wire/chunks.py``)."""
        msg = protocol.message(kind, body, frames)
        if self.watch is not None:
            self.watch.send(chunks.split(msg, 0) if frames else msg)
        else:
            sockets.send(self.sock, msg)

    def receive(self, events: dict) -> Iterator[tuple[Kind, dict, list]]:
        """The messages that arrived, parsed (malformed ones dropped); a refused key as ERROR ``key_refused``."""
        if self.watch is not None and (self.watch.socket in events or self.watch.refused):
            refused = self.watch.read()
            if refused and not self.told_refused:
                self.told_refused = True
                yield Kind.ERROR, {"code": KEY_REFUSED, "message": refused}, []
        if self.sock not in events:
            return
        for msg in sockets.waiting(self.sock):
            try:
                if self.watch is not None and chunks.is_split(msg, 0):  # (CurveZMQ only)
                    msg = chunks.join(msg, 0)
                kind, body = protocol.decode(msg[0].bytes)
                frames = protocol.unpack(body, msg[1:])
            except protocol.ProtocolError as exc:
                logger("client").warning(f"dropped a malformed message: {exc}")
                continue
            yield kind, body, frames

    def close(self) -> None:
        """Close the link."""
        if self.watch is not None:
            self.watch.close()
        self.sock.close()


class DirectLink:
    """The I/O loop's connection to the embedded broker, which this same thread serves.

    Messages are method calls both ways: no socket, no frames to build or
    parse, no copy.  The broker's answers wait in ``inbox`` until its turn ends.
    """

    def __init__(self, broker: Broker):
        self.broker = broker
        self.inbox: deque = deque()
        self.client = broker.attach(self.deliver)
        self.poller = broker.poller  # the loop waits on the broker's sockets, and its own wake pipe
        broker.start()

    def deliver(self, kind: Kind, body: dict | None, frames: list) -> None:
        """A message from the broker, kept until its turn ends."""
        self.inbox.append((kind, body or {}, frames))

    def post(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        """One message to the broker."""
        self.broker.from_client(self.client, kind, body or {}, list(frames))

    def receive(self, events: dict) -> Iterator[tuple[Kind, dict, list]]:
        """The messages that arrived, parsed (malformed ones dropped)."""
        self.broker.step(events)
        while self.inbox:
            yield self.inbox.popleft()

    def close(self) -> None:
        """Close the link."""
        self.broker.close()
