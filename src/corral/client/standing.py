"""The client's standing with its broker: welcomed, lost, refused, resumed (``Standing``, a part
of ``IOLoop``).

A client says HELLO and is welcomed; every later turn asks whether the broker has gone
silent while an answer is awaited (``lost``).  The broker may refuse us (our key revoked, or
refused at the handshake: ``refused``), or not know us: it restarted (we start over, failing
what it held), or our TCP connection was reset and ZeroMQ dialled again, which the broker sees
as a new identity (we resume our session there, broker/sessions.py, and nothing is lost).
"""

from __future__ import annotations

import os
import time

from ..errors import BrokerLostError
from ..wire import protocol
from ..wire.protocol import Kind
from .future import settle
from .links import KEY_REFUSED, Link


class Standing:
    """Our standing with the broker: its methods read and change the IOLoop's ``welcomed``,
    ``session``, ``resuming``, futures and status requests, and say HELLO on its link."""

    def hello(self, link: Link, resume: dict | None = None) -> None:
        """Say HELLO to the broker (again, after it lost us); with ``resume``, as the client of
        that session, on a new connection (broker/sessions.py)."""
        link.post(Kind.HELLO, {"role": "client", "retries": self.retries, "pid": os.getpid(), **(resume or {})})

    def resume(self) -> None:
        """Told we are unknown: our TCP connection may have been reset (ZeroMQ dialled again, and the
        broker knows the new connection by a new identity).  Say HELLO with our session and the tasks
        we await; status requests not answered go again."""
        self.welcomed, self.resuming = False, True
        self.status_asked.extendleft(reversed(self.status_waiters))
        self.status_waiters.clear()
        self.hello(self.link, {"resume": self.session, "pending": list(self.futures)})

    def resumed(self, body: dict) -> None:
        """The WELCOME answering our resuming HELLO: carry on, or, if the broker does not know our
        session (it restarted), start over; the tasks whose SUBMIT it never had fail either way."""
        self.resuming = False
        if body.get("resumed") is not True or body.get("session") != self.session:
            self.welcomed = True
            self.fail_all(BrokerLostError(
                f"the broker at {self.address} no longer knows this client (it restarted, or lost touch "
                "with it): the tasks it held are lost. Later tasks go to it as usual."))
            return
        lost = BrokerLostError(f"the connection to the broker at {self.address} was reset while this task "
                               "was sent, and the broker never had it")
        for cid in protocol.ids(body, "unknown"):
            fut = self.futures.pop(cid, None)
            if fut is not None:
                settle(fut, None, lost)
        for chunk in protocol.id_chunks(list(self.cancel_verdicts)):  # a lost CANCEL or verdict: ask again
            self.link.post(Kind.CANCEL, {"ids": chunk})

    def start_over(self, exc: BaseException) -> None:
        """The broker lost our tasks (it went silent, or restarted and does not know us): fail
        them all, and say HELLO again, so that later tasks go to whichever broker answers there."""
        self.welcomed = False
        self.fail_all(exc)
        self.last_heard = time.monotonic()  # later tasks get a whole liveness period of their own
        self.hello(self.link)

    def lost(self, silence: float) -> bool:
        """Is the broker gone?  Never an embedded one: it lives in this very thread.  Silence
        counts only while we wait for an answer: a task submitted after an idle spell (after
        a BrokerLostError, say) has a whole liveness period of its own."""
        if self.broker is not None:
            return False
        if not (self.futures or self.status_asked or self.status_waiters):
            self.last_heard = time.monotonic()
            return False
        return silence > self.heartbeat * self.liveness

    def refused(self, body: dict) -> None:
        """The broker refused a message: it does not know us (it restarted), or will not serve us."""
        message = protocol.text(body.get("message"), 500)
        if body.get("code") == protocol.UNKNOWN_PEER:
            # Only a broker that welcomed our last HELLO can have lost us; until one does, the
            # refusals are of what we sent before that HELLO (whose tasks failed already).
            if self.welcomed and self.session is not None and self.broker is None:
                self.resume()
            elif self.welcomed:
                self.welcomed = False
                self.start_over(BrokerLostError(
                    f"the broker at {self.address} no longer knows this client (it restarted, or lost "
                    "touch with it): the tasks it held are lost. Later tasks go to it as usual."))
            return
        if body.get("code") == KEY_REFUSED:  # at the handshake, from our own link: final, nothing more is sent
            self.welcomed = False
            self.broken = BrokerLostError(f"{message[:1].upper()}{message[1:]} (broker at {self.address}).")
            self.fail_all(self.broken)
            return
        if body.get("code") == protocol.REFUSED and self.welcomed:
            # It serves us no more (our key was revoked): what we had there is lost.
            self.welcomed = False
            self.start_over(BrokerLostError(f"the broker at {self.address} {message}; the tasks it held are "
                                            "lost. Later tasks are sent to it again."))
            return
        self.complain(f"the broker at {self.address} refused a request: {message}")
