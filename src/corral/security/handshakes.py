"""What a client or a worker learns when the broker turns its CurveZMQ handshake down.

ZeroMQ handles a refused handshake inside the socket and says nothing to its owner: a
peer whose key is not on the broker's allow-list (revoked, or from another broker's
file) would wait in silence, and one holding the wrong broker key would dial again and
again.  A monitor socket reports both; ``HandshakeWatch`` turns its events into what the
owner should say: a key refusal (final: libzmq does not dial again after it) or the last
failed handshake, for the message that reports a silent broker.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..wire import sockets

_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED)


class HandshakeWatch:
    """The handshake events of one DEALER of a peer in ``role``; poll ``socket``, then ``read``."""

    def __init__(self, sock: zmq.Socket, role: str):
        self.sock = sock
        self.role = role
        self.socket = sock.get_monitor_socket(_EVENTS)
        self.refused: str | None = None  # why the broker refused our key: final, nothing more is sent
        self.last_failure: str | None = None  # of the handshakes since the last that succeeded

    def read(self) -> str | None:
        """Handle the waiting events; ``refused``."""
        while self.refused is None:
            try:
                event = recv_monitor_message(self.socket, zmq.NOBLOCK)["event"]
            except zmq.Again:
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.last_failure = None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused = (f"the broker refused this {self.role}'s key: it is on none of its allow-lists "
                                f"(revoked, or made for another broker); ask for a new connection file "
                                f"(corral keys add-{self.role})")
            else:
                self.last_failure = ("its CurveZMQ handshakes fail: the broker key in the connection file may "
                                     "not be this broker's (was it given new keys?), or it is not a CurveZMQ broker")
        return self.refused

    def send(self, frames: list) -> None:
        """Send on the watched DEALER.  A DEALER whose key was refused has no connection, and ZeroMQ
        does not dial again, so a blocking send would wait forever: wait for room in slices,
        reading the handshake events between them; once refused, drop what is sent."""
        while self.refused is None:
            try:
                sockets.send(self.sock, frames, sockets.NOBLOCK)
                return
            except zmq.Again:
                if self.read() is None:
                    self.sock.poll(100, zmq.POLLOUT)

    def close(self) -> None:
        """Stop watching."""
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.socket.close(0)
