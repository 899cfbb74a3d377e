"""The broker's listeners: CurveZMQ on every TCP one, and what the broker learns of refused peers.

A TCP ROUTER is a CurveZMQ server with the broker's key pair; the ZAP handler
(``zap.RoleAuthenticator``, a thread of the broker's process) lets a peer in only
if its public key is on the allow-list of a role, before the broker reads a byte
of its messages, and tags each message with the key's User-Id (``role:name:key``),
which ``Peers`` checks against the HELLO.  ZeroMQ drops a peer whose handshake
fails without telling the owner of the socket; a monitor socket per ROUTER does
tell, so the broker can log that a plain-TCP peer, or one with another broker's
key, was turned away.  ``ipc://`` listeners stay plain: the 0700 directory that
holds them is their guard.  ``insecure`` makes TCP ones plain too, with a warning.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import addresses
from ..errors import InsecureAddressError
from ..wire import sockets
from .credentials import require_curve, warn_insecure
from .keys import ROLES, KeyDir, MemoryKeys

_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "its handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "it did not complete a CurveZMQ handshake (a plain-TCP peer, "
                                         "or one that holds another broker's public key)",
}  # a key on no allow-list fails in the ZAP handler, which logs it with the key (zap.py)


class Guard:
    """What makes a broker's listeners secure: its keys, ZAP handler and handshake monitors."""

    def __init__(self, ctx: zmq.Context, keys: KeyDir | MemoryKeys | None, insecure: bool, complain):
        self.ctx = ctx
        self.keys = keys
        self.insecure = insecure
        self.complain = complain
        self.auth = None  # the ZAP handler, started with the first CurveZMQ listener
        self.curve: set[zmq.Socket] = set()  # the listeners that speak CurveZMQ
        self.monitors: list[zmq.Socket] = []

    def router(self, address: str) -> zmq.Socket:
        """A bound ROUTER for ``address``: CurveZMQ if it is TCP and we have keys."""
        if addresses.parse(address, listen=True).scheme != "tcp":
            return sockets.router(self.ctx, address)
        if self.keys is None:
            if not self.insecure:
                raise InsecureAddressError(
                    f"refusing to listen on {address} without CurveZMQ keys: give the broker a key directory "
                    "(corral broker makes one), or insecure=True (--insecure) on a network you trust")
            warn_insecure(f"listening on {address} without encryption or authentication: anyone who can reach "
                          "this port can run code on the workers and read every task", stacklevel=5)
            return sockets.router(self.ctx, address)
        require_curve()
        if self.auth is None:
            from .zap import RoleAuthenticator

            self.auth = RoleAuthenticator(self.ctx, self.keys, self.complain)
            try:
                self.auth.start()
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE:
                    raise
                raise RuntimeError("this ZeroMQ context answers CurveZMQ handshakes for another broker already "
                                   "(one ZAP handler per context): give each CurveZMQ broker a context of its own, "
                                   "or none (it then makes one)") from None
        sock = sockets.router(self.ctx, address, keys=self.keys.broker_keys())
        self.curve.add(sock)
        self.monitors.append(sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))
        return sock

    def read_monitor(self, monitor: zmq.Socket) -> None:
        """Log the refused handshakes a monitor reports (throttled: a flood makes one line a second)."""
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            why = _FAILED.get(event["event"])
            if why is not None:
                self.complain(f"refused a connection on {event['endpoint'].decode(errors='replace')}: {why}")

    def still_allowed(self, user: str, allowed: dict | None = None) -> bool:
        """Is the key of a connected peer (its User-Id ``role:name:key``) still on its role's allow-list?
        ``allowed``: the allow-lists by role, read once for many peers (``allow_lists``)."""
        role, _, rest = user.partition(":")
        key = rest.partition(":")[2].encode()
        if role not in ROLES:
            return False
        return key in (allowed[role] if allowed is not None else self.keys.allowed(role))

    def allow_lists(self) -> dict[str, dict[bytes, str]]:
        """Every role's allow-list as it is now (each read again only if it changed)."""
        return {role: self.keys.allowed(role) for role in ROLES}

    def close(self) -> None:
        """Stop the monitors and the ZAP handler."""
        for monitor in self.monitors:
            monitor.close(0)
        self.monitors.clear()
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
