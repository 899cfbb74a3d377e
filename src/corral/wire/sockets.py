"""The one place ZeroMQ sockets are made, and read without blocking.

Brokers bind a ROUTER; clients and workers connect a DEALER.  Every option a
corral socket needs is set here (IPv6 where the address needs it, how long
closing may wait for what is queued), so that what every TCP link will need
next (CurveZMQ keys) has a single home.
"""

from __future__ import annotations

from collections.abc import Iterator

import zmq

from ..addresses import needs_ipv6


def router(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A broker's bound ROUTER: a message to a peer that has gone raises EHOSTUNREACH
    (``ROUTER_MANDATORY``) instead of vanishing; closing waits up to a second for what is queued."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.IPV6, needs_ipv6(address))  # else ZeroMQ cannot bind an IPv6 address
    sock.bind(address)
    return sock


def dealer(ctx: zmq.Context, address: str, linger: int) -> zmq.Socket:
    """A client's or a worker's DEALER, connected to a broker; closing waits up to ``linger`` ms."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, linger)
    sock.setsockopt(zmq.IPV6, needs_ipv6(address))  # else ZeroMQ cannot reach an IPv6 address
    sock.connect(address)
    return sock


def waiting(sock) -> Iterator[list]:
    """The multipart messages already waiting on a ZeroMQ socket, without blocking (frames uncopied)."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
