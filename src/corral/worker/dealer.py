"""A worker's link to a broker elsewhere: a ZeroMQ DEALER with ``stream.Stream``'s methods.

Imported only by a worker that dials a broker (``supervisor.py``): one started over a
socket pair never maps libzmq, and neither do its template and task processes.  Over
CurveZMQ the link watches its handshakes (``security/handshakes.py``), so that a worker
whose key the broker refuses says so and stops, instead of waiting in silence.
"""

from __future__ import annotations

import warnings

import zmq

from ..config import WorkerConfig
from ..errors import ProtocolError, SecurityWarning
from ..logs import logger
from ..security.credentials import Target, resolve
from ..security.handshakes import HandshakeWatch
from ..wire import chunks, sockets


def broker_target(address: str, config: WorkerConfig) -> Target:
    """The broker to dial and its keys (``security/credentials.py``).  Its pool's parent (``corral
    worker``) warned already of a plain TCP link: each of its processes need not say it again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return resolve(address, "worker", keys=config.keys, insecure=config.insecure)


class DealerLink:
    """A worker's connection to a broker elsewhere: a ZeroMQ DEALER with a ``stream.Stream``'s methods."""

    pending = False  # ZeroMQ queues what we send
    eof = False  # a broker that went away is found by its silence

    def __init__(self, ctx: zmq.Context, address: str, curve: tuple | None):
        self.watch: HandshakeWatch | None = None  # a refused key, seen at the handshake

        def watch(sock: zmq.Socket) -> None:
            self.watch = HandshakeWatch(sock, "worker")

        self.sock = sockets.dealer(ctx, address, linger=2000, curve=curve, before_connect=curve and watch)
        self.poll_key = self.sock

    def send(self, frames: list) -> None:
        """Send one message (ZeroMQ queues it; with CurveZMQ, nothing once our key was refused;
        large frames in chunks, ``wire/chunks.py``)."""
        if self.watch is not None:
            self.watch.send(chunks.split(frames, 0) if len(frames) > 1 else frames)
        else:
            sockets.send(self.sock, frames)

    def receive(self) -> list[list]:
        """The messages waiting, their frames as buffers (a split one joined again; one that
        lies about its chunks dropped)."""
        out = []
        for msg in sockets.waiting(self.sock):
            if self.watch is not None and chunks.is_split(msg, 0):
                try:
                    out.append([f.buffer if isinstance(f, zmq.Frame) else f for f in chunks.join(msg, 0)])
                except ProtocolError as exc:
                    logger("worker").warning(f"dropped a malformed message from the broker: {exc}")
                continue
            out.append([f.buffer for f in msg])
        return out

    def handshake_waits(self) -> list:
        """What to poll for handshake events: the monitor, over CurveZMQ."""
        return [self.watch.socket] if self.watch is not None else []

    def refusal(self, events: dict) -> str | None:
        """Why the broker refused our key, if it did (final: ZeroMQ does not dial again)."""
        if self.watch is None or (self.watch.socket not in events and self.watch.refused is None):
            return None
        return self.watch.read()

    def flush(self) -> None:
        """Nothing to flush: ZeroMQ sends."""

    def drain_output(self, timeout: float) -> None:
        """Nothing to wait for: closing waits up to its linger for what is queued."""

    def close(self, linger: int | None = None) -> None:
        """Close the DEALER."""
        if self.watch is not None:
            self.watch.close()
        self.sock.close(linger)
