"""Sessions: a worker or a client whose TCP connection was reset carries on where it was
(``Sessions``, a part of ``Broker``).

A reset ends a TCP connection at once, however short the fault; ZeroMQ dials again, and the
broker's ROUTER gives the new connection a new identity.  Without more, the broker would take
the worker for a stranger, and the worker would stop its tasks, which would run again.  So a
worker's WELCOME carries a session token, and a worker told that the broker does not know it
says HELLO with that token, what it holds, what it began and which results it sent lately::

    worker                       broker
      -- RESULT (new connection) -->     dropped: unknown identity
      <-- ERROR unknown_peer ------
      -- HELLO resume=TOKEN, holding, started, sent, credit -->
                                         the record of TOKEN (same key, still alive) moves to
                                         the new identity; a task it holds stays, one whose
                                         result it sent is asked for again, any other (its
                                         TASKS lost with the connection) goes back to the queue
      <-- WELCOME resumed, resend ---
      -- RESULT (the resent ones) --->
      <-- CANCEL / KILL (again) -----    for the tasks still held that wait for one

Nothing is run twice that the worker still holds or finished within its resend window, and
nothing is lost: a task neither held nor resent goes back to the queue (an attempt counted if
it had begun).  A token the broker does not know (it restarted, or dropped the worker as
silent) gets an ordinary WELCOME, and the worker starts over as before.

A client elsewhere resumes the same way (``resume_client``): its HELLO names the tasks it
awaits (``pending``), and the broker, which keeps what it sent each client for the liveness
window, sends again the results and cancel verdicts among them that were lost, STARTED for
those running, and names those it never received (their SUBMIT lost: ``unknown``), which
the client fails.
"""

from __future__ import annotations

import secrets
import time

import zmq

from ..tuning import SMALL_FRAME
from ..wire import protocol
from ..wire.protocol import Kind
from ..wire.resend import SentResults
from .peers import count, retries_of
from .records import ClientState, Outbox, WorkerState


class Sessions:
    """The session half of ``Broker``: tokens of the connected workers and clients elsewhere (``sessions``)."""

    def open_session(self, peer: WorkerState | ClientState) -> str:
        """A new token for a worker or a client elsewhere that said HELLO."""
        peer.session = secrets.token_hex(16)
        self.sessions[peer.session] = peer.ident
        return peer.session

    def take_over(self, table: dict, ident: bytes, body: dict, user: str | None):
        """(the record, its old identity) of the session a HELLO's ``resume`` names, moved in ``table``
        (workers or clients) to ``ident``; (None, None) if the token is no live peer's with this key."""
        token = body.get("resume")
        old = self.sessions.get(token) if isinstance(token, str) else None
        peer = table.get(old) if old is not None else None
        if peer is None or peer.session != token or peer.user != user or old == ident or \
                getattr(peer, "paired", False):
            return None, None
        del table[old]
        self.backlogs.drop(old)  # what waited for the reset connection goes nowhere now
        peer.ident = ident
        table[ident] = peer
        self.sessions[token] = ident
        return peer, old

    def resume(self, sock: zmq.Socket, ident: bytes, body: dict, user: str | None, now: float) -> bool:
        """A worker's HELLO with ``resume``: move its record to this identity and settle what was lost
        in between.  False if the token is no live worker's with this key (an ordinary HELLO then)."""
        w, old = self.take_over(self.workers, ident, body, user)
        if w is None:
            return False
        w.last_seen = w.progress_at = now
        holding, sent = set(protocol.ids(body, "holding")), set(protocol.ids(body, "sent"))
        for gid in w.assigned:
            task = self.tasks.get(gid)
            if task is not None and task.worker == old:
                task.worker = ident
        self.began(w, [gid for gid in protocol.ids(body, "started") if gid in w.assigned])
        resend = []
        for gid in list(w.assigned):
            if gid in holding:
                continue
            if gid in sent:
                resend.append(gid)
            else:  # its TASKS, or its result beyond the worker's resend window, went with the connection
                self.unassign(w, gid, count_attempt=True, why=f"worker {w.name} lost it with its connection")
        w.credit = min(count(body.get("credit", 0)), protocol.MAX_CREDIT)
        self.send(sock, ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness,
                                              "session": w.session, "resumed": True, "resend": resend})
        self.repeat_requests(w)
        self.complain(f"worker {w.name} (pid {w.pid} on {w.host}) resumed its session on a new connection: "
                      f"{len(w.assigned)} task(s) kept, {len(resend)} result(s) asked for again")
        return True

    def open_client_session(self, c: ClientState) -> str:
        """A new token for a client elsewhere that said HELLO; what it is sent is kept a while."""
        c.sent = SentResults()
        return self.open_session(c)

    def keep_sent(self, ident: bytes, box: Outbox) -> None:
        """Keep the results and cancel verdicts just sent to a client elsewhere, for its liveness window."""
        c = self.clients.get(ident)
        if c is None or c.sent is None:
            return
        window, now = self.heartbeat * self.liveness, time.monotonic()
        c.sent.expire(window)
        c.sent.record(box.results, box.frames, SMALL_FRAME)  # as queued tasks are kept (tasks.compact)
        if c.dropped:
            c.dropped = {cid: when for cid, when in c.dropped.items() if now - when < window}
        for cid in box.dropped:
            c.dropped[cid] = now

    def resume_client(self, sock: zmq.Socket, ident: bytes, body: dict, user: str | None, now: float) -> bool:
        """A client's HELLO with ``resume``: move its record and its tasks to this identity, and send
        again what it should have had (results, cancel verdicts, STARTED); the ids of ``pending`` the
        broker knows nothing of (their SUBMIT was lost) are named in WELCOME's ``unknown``."""
        retries = retries_of(body)
        c, old = self.take_over(self.clients, ident, body, user)
        if c is None:
            return False
        c.retries, c.last_seen = retries, now
        for gid in c.tasks.values():
            task = self.tasks.get(gid)
            if task is not None:
                task.client = ident
        box = self.outboxes.pop(old, None)
        if box is not None:
            self.outboxes[ident] = box
        box = self.outbox(ident)
        unknown = []
        for cid in protocol.ids(body, "pending"):
            gid = c.tasks.get(cid)
            if gid is not None:
                if gid in self.tasks and self.tasks[gid].started:
                    box.started.append(cid)
                continue
            entries, frames = c.sent.take([cid])
            if entries:
                box.results.extend(entries)
                box.frames.extend(frames)
            elif cid in c.dropped:
                box.dropped.append(cid)
            else:
                unknown.append(cid)
        self.send(sock, ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness,
                                              "session": c.session, "resumed": True, "unknown": unknown})
        self.complain(f"a client resumed its session on a new connection: {len(c.tasks)} task(s) kept, "
                      f"{len(unknown)} unknown")
        return True

    def repeat_requests(self, w: WorkerState) -> None:
        """CANCEL and KILL again the tasks of ``w`` that wait for a verdict: the first may have been lost."""
        cancelling = [gid for gid in w.assigned if gid in self.tasks and self.tasks[gid].cancelling]
        killed = [gid for gid in w.assigned if gid in self.tasks and self.tasks[gid].killed]
        if cancelling:
            self.send(self.workers_sock, w.ident, Kind.CANCEL, {"ids": cancelling})
        if killed:
            self.send(self.workers_sock, w.ident, Kind.KILL, {"ids": killed, "signal": "SIGKILL", "grace": 0.0})
