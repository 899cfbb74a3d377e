"""Who may connect to a broker over CurveZMQ, and who each message is from.

ZeroMQ asks a ZAP handler about every CurveZMQ handshake before the broker
reads a byte of the peer's messages.  Ours is pyzmq's ``ThreadAuthenticator``
(a thread of the broker's process) with two choices of our own: a public key
is let in only if the allow-list of a role holds it (``keys.KeyDir``, read again
when it changes, so a revocation needs no restart), and the User-Id ZeroMQ then
attaches to each of that peer's messages is ``client:NAME:KEY`` or ``worker:NAME:KEY``,
which the broker reads with ``sockets.user_id``::

    peer --CURVE hello--> ROUTER --ZAP request--> RoleAuthenticator.callback
                                                   allowed? keys.allowed(role)
    peer --message-----> ROUTER  frame User-Id = "worker:node-1:<its public key>"
"""

from __future__ import annotations

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from ..logs import Throttle, logger
from ..wire.sockets import ZAP_DOMAIN
from .keys import ROLES, KeyDir


class RoleAuthenticator(ThreadAuthenticator):
    """The broker's ZAP handler: CurveZMQ keys from the role allow-lists of ``keys``."""

    def __init__(self, ctx: zmq.Context, keys: KeyDir, complain=None):
        super().__init__(ctx, log=logger("broker.auth"))
        self.keys = keys
        self.complain = complain or Throttle(logger("broker").warning)  # the broker's own, where it has one

    def start(self) -> None:
        """Start answering the context's ZAP requests (one handler per context)."""
        super().start()
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def identify(self, key: bytes) -> str | None:
        """``role:name:key`` for a public key (Z85) on an allow-list, else None."""
        for role in ROLES:
            name = self.keys.allowed(role).get(key)
            if name is not None:
                return f"{role}:{name}:{key.decode()}"
        return None

    def callback(self, domain: str, key: bytes) -> bool:
        """Is this public key (Z85) allowed in?  Called by the authenticator's thread."""
        if self.identify(key) is not None:
            return True
        self.complain(f"refused a connection with an unknown CurveZMQ key {key.decode()!r} "
                      "(revoked, or never added with corral keys)")
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The User-Id of an allowed peer's messages: ``role:name:key``."""
        return self.identify(z85.encode(client_public_key)) or "unknown"
