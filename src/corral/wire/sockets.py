"""The one place ZeroMQ sockets are made, and read without blocking.

Brokers bind a ROUTER; clients and workers connect a DEALER.  Every option a
corral socket needs is set here: IPv6 where the address needs it, how long
closing may wait for what is queued, and CurveZMQ's keys (a ROUTER given the
broker's key pair encrypts every link and admits only the peers its context's
ZAP handler allows, ``security/zap.py``; a DEALER given the broker's public key
reaches only that broker).  Which links get keys is decided elsewhere: the
broker's listeners in ``security/guard.py``, a client's or a worker's link in
``security/credentials.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

from ..addresses import needs_ipv6
from ..tuning import ROUTER_RCVHWM

ZAP_DOMAIN = "corral"  # what a broker's CurveZMQ ROUTER tells its ZAP handler (security/zap.py)


def router(ctx: zmq.Context, address: str, keys: tuple[bytes, bytes] | None = None) -> zmq.Socket:
    """A broker's bound ROUTER: a message to a peer that has gone raises EHOSTUNREACH
    (``ROUTER_MANDATORY``) instead of vanishing; closing waits up to a second for what is queued.
    With ``keys`` (the broker's public and secret key, Z85) it is a CurveZMQ server: every
    peer is encrypted, and let in only if the context's ZAP handler says so (``security/zap.py``)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)  # what a peer's connection may hold unread: tuning.py
    sock.setsockopt(zmq.IPV6, needs_ipv6(address))  # else ZeroMQ cannot bind an IPv6 address
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()
        # Without a ZAP handler in the context, CurveZMQ would let every key in: refuse then.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.bind(address)
    return sock


def dealer(ctx: zmq.Context, address: str, linger: int, curve: tuple[bytes, bytes, bytes] | None = None,
           before_connect=None) -> zmq.Socket:
    """A client's or a worker's DEALER, connected to a broker; closing waits up to ``linger`` ms.
    With ``curve`` (the broker's public key, then this peer's public and secret key, Z85) it
    speaks CurveZMQ, and reaches only the broker that holds that key's secret half.
    ``before_connect(sock)`` runs before it dials (a monitor must be there for the first handshake)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, linger)
    sock.setsockopt(zmq.IPV6, needs_ipv6(address))  # else ZeroMQ cannot reach an IPv6 address
    if curve is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    if before_connect is not None:
        before_connect(sock)
    sock.connect(address)
    return sock


def user_id(frame: zmq.Frame) -> str | None:
    """Who sent a message that came on a CurveZMQ ROUTER (``role:name:key``, from the ZAP handler);
    None on a plain socket."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


# Flags as plain ints: pyzmq's own are enums, and combining them (as ``send_multipart`` does for
# each frame) or passing them costs an enum conversion each, a few microseconds a message.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)


def send(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send a multipart message (``send_multipart``, without its per-frame type checks and enum
    arithmetic): each frame uncopied where ZeroMQ's threshold allows.  ``flags``: 0 or ``NOBLOCK``
    (this module's int; ZeroMQ takes all of a message or none: only its first frame can raise ``zmq.Again``)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags, copy=False)


def receive(sock: zmq.Socket) -> list:
    """One multipart message, its frames uncopied, without blocking (``zmq.Again`` if none waits).
    Each frame says whether more follow (``recv_multipart`` asks the socket, an enum conversion and
    a call into ZeroMQ per frame)."""
    parts = [sock.recv(NOBLOCK, copy=False)]
    while parts[-1].more:
        parts.append(sock.recv(NOBLOCK, copy=False))
    return parts


def more_waiting(sock: zmq.Socket) -> bool:
    """After a receive: does another message wait?  The socket's EVENTS says so, cheaper (2 µs)
    than the ``zmq.Again`` one more receive would raise (5 µs)."""
    return bool(sock.getsockopt(EVENTS) & POLLIN)


def waiting(sock) -> Iterator[list]:
    """The multipart messages already waiting on a ZeroMQ socket, without blocking (frames uncopied)."""
    while True:
        try:
            msg = receive(sock)
        except zmq.Again:
            return
        yield msg
        if not more_waiting(sock):
            return
