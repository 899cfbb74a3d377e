"""A worker's standing with its broker: welcomed, refused, resumed (``Standing``, a part of
``Supervisor``).

The broker welcomes a worker's HELLO, with a session token for a worker elsewhere.  It may
not know the worker later: it restarted (the worker starts over, dropping its tasks), or the
worker's TCP connection was reset and ZeroMQ dialled again, which the broker sees as a new
identity (the worker resumes its session there: broker/sessions.py).  It may refuse the
worker, by a message or, over CurveZMQ, at the handshake (``key_refused``: then it stops).
"""

from __future__ import annotations

import logging

from ..wire import protocol


class Standing:
    """Our standing with the broker: its methods read and change the Supervisor's ``welcomed``,
    ``session`` and ``resuming``, and say HELLO again through it."""

    def welcome(self, body: dict) -> None:
        """WELCOME: the broker's timing, and our session; the answer to a resuming HELLO says whether
        that session goes on (then the results it lacks go again) or not (then neither do our tasks)."""
        self.heartbeat, self.liveness = protocol.timing(body, self.heartbeat, self.liveness)
        session = body.get("session")
        if self.resuming:
            self.resuming = False
            if body.get("resumed") is True and session == self.session:
                self.say(f"resumed its session with the broker at {self.address} on a new connection")
                self.resend(protocol.ids(body, "resend"))
                self.welcomed = True
                return
            self.forget_tasks()  # a broker that does not know our session does not know our tasks
        if not self.welcomed and self.reconnect_on_silence:
            self.say(f"joined the broker at {self.address}")
        self.session = session if isinstance(session, str) and len(session) <= 64 else None
        self.welcomed = True

    def handshake_waits(self) -> list:
        """The link's handshake monitor, where it has one (a CurveZMQ DEALER: ``dealer.py``)."""
        return self.link.handshake_waits() if self.fd is None else []

    def key_refused(self, events: dict) -> bool:
        """Did the broker refuse our key at the handshake?  Then it never will take it: say so."""
        refused = self.link.refusal(events) if self.fd is None else None
        if refused:
            self.say(f"{refused} (broker at {self.address})", logging.ERROR)
        return bool(refused)

    def refused(self, body: dict) -> None:
        """The broker refused what we sent: it does not know us (it restarted), or will not serve us."""
        if body.get("code") == protocol.UNKNOWN_PEER:
            # Only a broker that welcomed our last HELLO can have lost us; until one does, the
            # refusals are of what we sent before that HELLO.
            if self.welcomed and self.session is not None and self.fd is None:
                # A new connection (ours was reset), or a broker that restarted: try our session first.
                self.welcomed, self.resuming = False, True
                self.hello({"resume": self.session, **self.resume_state()})
            elif self.welcomed:
                self.complain(f"the broker at {self.address} no longer knows this worker (it restarted?); "
                              "joining again")
                self.welcomed = False
                self.forget_tasks()
                self.hello()
            return
        self.complain(f"the broker at {self.address} refused this worker: {protocol.text(body.get('message'), 500)}")
