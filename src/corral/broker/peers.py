"""Peers: who says what to the broker, and what each may say (``Peers``, a part of ``Broker``).

Clients and workers introduce themselves with HELLO; a peer the broker does not
know is told so (ERROR ``unknown_peer``), at most once a heartbeat.  Every message
is checked where it enters (docs/protocol.md): a peer's word affects only its own
tasks, so a worker of another executor cannot break ours, and a SUBMIT that breaks
the rules queues nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from ..errors import ProtocolError
from ..logs import logger
from ..wire import protocol
from ..wire.protocol import Kind
from . import output
from .demand import capacity, check_options
from .dependencies import check_dependencies
from .objects import check_refs
from .records import DEFAULT_RETRIES, ClientState, WorkerState

_log = logger("broker")

MAX_PEERS = 10_000  # clients and workers at once: HELLOs beyond are refused (each costs memory)
# What a malformed message raises somewhere in its handling: it is dropped, and logged.
MALFORMED = (ProtocolError, KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError)


class Peers:
    """The peer half of ``Broker``: HELLO, and each message a client or a worker sends."""

    def receive(self, sock: zmq.Socket | None, ident: bytes, header, frames: list, user: str | None = None) -> None:
        """One message from ``ident``, which came on ``sock`` (None: on its socket pair), sent with
        the CurveZMQ key whose User-Id is ``user`` (None: a plain link)."""
        kind, body = protocol.decode(header)
        now = time.monotonic()
        if kind == Kind.HELLO:
            self.hello(sock, ident, body, now, user)
            return
        peer = self.workers.get(ident) or self.clients.get(ident)
        if peer is not None:
            if peer.user != user:
                self.impostor(ident, user)
                return
            peer.last_seen = now
            handle = self.handle_worker if isinstance(peer, WorkerState) else self.handle_client
            handle(peer, kind, body, protocol.unpack(body, frames))
            return
        if kind != Kind.BYE and now - self.told_unknown.get(ident, -1e9) >= self.heartbeat:
            # A peer we do not know (we restarted, or dropped it as silent) must say HELLO again:
            # told once a heartbeat at most, whatever it sends.
            self.told_unknown[ident] = now
            self.send(sock, ident, Kind.ERROR, {"code": protocol.UNKNOWN_PEER,
                                                "message": "unknown peer: say HELLO first (the broker may have "
                                                           "restarted, or dropped you as silent)"})

    def impostor(self, ident: bytes, user: str | None) -> None:
        """A message under ``ident`` sent with a key other than the one that said HELLO: dropped.

        The ROUTER gives an identity to one connection at a time, so the peer that said HELLO
        has lost its connection and another took its identity: nothing more goes there.  The
        peer it was is gone (its tasks as a lost client's or worker's); it is told so when it
        comes back under a new identity, as after any reconnection."""
        w, c = self.workers.get(ident), self.clients.get(ident)
        whom = f"worker {w.name}" if w is not None else "a client"
        self.complain(f"dropped a message from {who(user)} that came under the identity of {whom}, "
                      "which said HELLO with another key; that peer is dropped")
        if w is not None:
            self.worker_gone(w, f"worker {w.name} (pid {w.pid} on {w.host}): another key took its connection's "
                                "identity")
        if c is not None:
            self.client_gone(c)

    def hello(self, sock: zmq.Socket | None, ident: bytes, body: dict, now: float, user: str | None = None) -> None:
        """A peer introduces itself; one that was known already starts over (it forgot what it had)."""
        role = body.get("role")
        if role not in ("worker", "client") or (role == "client" and sock is None):
            raise ProtocolError(f"HELLO with unknown role {protocol.text(role, 40)!r}")
        if user is not None and not user.startswith(f"{role}:"):
            # A worker key cannot submit; a client key cannot take tasks (security/keys.py).
            self.complain(f"refused a HELLO as a {role} from {who(user)}: its key is not a {role}'s")
            self.send(sock, ident, Kind.ERROR, {"code": protocol.REFUSED,
                                                "message": f"refused: this key is not allowed to connect as a {role}"})
            return
        if user is not None and not self.guard.still_allowed(user):  # revoked while it stayed connected
            self.complain(f"refused a HELLO as a {role} from {who(user)}: that key was revoked")
            self.send(sock, ident, Kind.ERROR, {"code": protocol.REFUSED, "message": "refused: this key was revoked"})
            return
        if "resume" in body and (self.resume(sock, ident, body, user, now) if role == "worker"
                                 else self.resume_client(sock, ident, body, user, now)):
            return  # the same peer on a new connection (sessions.py)
        retries = retries_of(body) if role == "client" else 0
        known = self.workers.get(ident) or self.clients.get(ident)
        if known is not None and known.user != user:
            self.impostor(ident, user)
            return
        old = self.workers.get(ident)
        if old is not None:
            self.worker_gone(old, f"worker {old.name} (pid {old.pid} on {old.host}) said HELLO again")
        old_client = self.clients.get(ident)
        if old_client is not None:
            self.client_gone(old_client)
        if len(self.workers) + len(self.clients) >= MAX_PEERS:
            self.complain(f"refused a {role}: {MAX_PEERS} peers are connected already")
            self.send(sock, ident, Kind.ERROR, {"code": protocol.REFUSED,
                                                "message": f"the broker serves {MAX_PEERS} peers already"})
            return
        self.told_unknown.pop(ident, None)
        if role == "worker":
            self.add_worker(sock, ident, body, now, user)
        else:
            c = self.clients[ident] = ClientState(ident, retries, now, user=user)
            _log.debug(f"client {ident!r} joined{'' if user is None else f' ({who(user)})'}")
            self.send(sock, ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness,
                                                  "session": self.open_client_session(c)})

    def add_worker(self, sock: zmq.Socket, ident: bytes, body: dict, now: float, user: str | None = None) -> None:
        """A worker's HELLO: its record (names cut to size), or a refusal of its claim to be broken."""
        pid = body.get("pid", 0)
        w = WorkerState(
            ident,
            name=protocol.text(body.get("name", "?"), protocol.MAX_NAME),
            host=protocol.text(body.get("host", "?"), protocol.MAX_NAME),
            pid=pid if type(pid) is int and 0 <= pid < 1 << 32 else 0,
            fresh=body.get("fresh") is True,
            last_seen=now,
            joined=now,
            paired=ident in self.paired,
            progress_at=now,
            user=user,
        )
        w.resources, w.queues, group = capacity(body)
        w.free = dict(w.resources or {})
        if "cache" in body:  # bytes of large objects it keeps (objects.py)
            w.cache_size = count(body["cache"], 1 << 50)
        if "ends_in" in body:  # a job's walltime: the scaler may start its replacement ahead
            w.ends_at = now + protocol.seconds(body["ends_in"], "ends_in")
        if body.get("broken"):
            if self.trusts(w):
                self.break_pool(f"the initializer failed in worker {w.name}:\n{protocol.text(body['broken'])}")
            else:
                self.refuse(sock, ident, w, "it says its initializer failed (a worker of another executor's)")
            return
        link = self.paired.get(ident)
        if link is not None and link.lane is not None and isinstance(body.get("lane"), int):
            w.epoch = body["lane"]
            self.lanes[ident] = w
        if self.fleet is not None:
            refused = self.fleet.admit(user)  # a launch's key admits its own worker, once
            if refused:
                self.refuse(sock, ident, w, refused)
                return
        self.groups.join(w, group)
        self.workers[ident] = w
        if self.fleet is not None:
            self.fleet.joined(w, now)
        _log.debug(f"worker {w.name} (pid {w.pid} on {w.host}{'' if user is None else f', {who(user)}'}) joined")
        welcome = {"heartbeat": self.heartbeat, "liveness": self.liveness}
        if not w.paired:  # a worker elsewhere may resume on a new connection (sessions.py)
            welcome["session"] = self.open_session(w)
        self.send(sock, ident, Kind.WELCOME, welcome)

    def drop_revoked(self) -> None:
        """Drop the connected peers whose keys were revoked (``corral keys revoke``) since they
        said HELLO: a client as a silent one, a worker as a lost one; each is told why."""
        allowed = self.guard.allow_lists()
        for peer in [*self.clients.values(), *self.workers.values()]:
            if peer.user is None or self.guard.still_allowed(peer.user, allowed):
                continue
            why = f"its key {peer.user.split(':')[1]!r} was revoked"
            self.send(self.clients_sock if isinstance(peer, ClientState) else self.workers_sock, peer.ident,
                      Kind.ERROR, {"code": protocol.REFUSED, "message": f"refused this peer: {why}"})
            if isinstance(peer, ClientState):
                self.log(f"client {peer.ident!r}: {why}; dropping its tasks")
                self.client_gone(peer)
            else:
                self.log(f"worker {peer.name} (pid {peer.pid} on {peer.host}): {why}; its tasks go to other workers")
                self.send(self.workers_sock, peer.ident, Kind.SHUTDOWN)
                self.worker_gone(peer, f"worker {peer.name} (pid {peer.pid} on {peer.host}): {why}")

    def trusts(self, w: WorkerState) -> bool:
        """May this worker's word break the executor?  Only our own pool's, in an embedded broker:
        a peer's claim affects only that peer's own tasks."""
        return w.paired and self.embedded

    def refuse(self, sock: zmq.Socket | None, ident: bytes, w: WorkerState, why: str) -> None:
        """Serve a worker no more: tell it so and that it should stop."""
        self.complain(f"refused worker {w.name} (pid {w.pid} on {w.host}): {why}")
        self.send(sock, ident, Kind.ERROR, {"code": protocol.REFUSED, "message": f"refused: {why}"})
        self.send(sock, ident, Kind.SHUTDOWN)

    def handle_worker(self, w: WorkerState, kind: Kind, body: dict, frames: list) -> None:
        """One message from a known worker."""
        if kind == Kind.READY:
            self.grant(w, body)
        elif kind == Kind.STARTED:
            self.began(w, protocol.ids(body))
        elif kind == Kind.RESULT:
            started = protocol.ids(body, "started")
            entries = protocol.split_entries(body, "results", frames, 4)
            self.grant(w, body)
            w.busy += seconds(body.get("busy", 0.0))
            for entry, payload in entries:
                self.task_done(w, entry, payload)
            self.began(w, started)
        elif kind == Kind.CANCELLED:
            self.cancel_verdict(w, body)
        elif kind == Kind.LEAVING:
            self.worker_leaving(w, body)
        elif kind == Kind.BYE:
            # Neither what it never began nor what its lifetime's end cut off counts an attempt.
            requeue, interrupted = protocol.ids(body, "requeue"), protocol.ids(body, "interrupted")
            for gid in requeue:
                self.unassign(w, gid, count_attempt=False)
            for gid in reversed(interrupted):
                self.unassign(w, gid, count_attempt=False)
            w.left = protocol.reason(body, w.leaving or "shutdown")
            self.worker_gone(w, None)
        elif kind == Kind.HEARTBEAT:
            if body.get("preparing") is True:  # starting a task process, or importing ahead: making progress
                w.progress_at = time.monotonic()
            if "rss" in body:  # its memory and its task processes', for status
                w.rss = count(body["rss"], 1 << 60)
        elif kind == Kind.PROGRESS:
            self.worker_progress(w, body)
        elif kind == Kind.OUTPUT:
            output.forward(self, w, body)
        elif kind == Kind.ENDED and w.ident in self.lanes:
            self.lane_ended(w, body)
        elif kind == Kind.LANE and w.ident in self.lanes:
            if body.get("broken"):
                self.break_pool(f"the initializer failed in worker {w.name}:\n{protocol.text(body['broken'])}")
            elif type(body.get("lane")) is int:
                w.epoch, w.answered = body["lane"], 0
                w.objects.clear()  # a new task process: it keeps no object yet (objects.py)
                w.object_bytes = 0
            else:
                raise ProtocolError("LANE without an epoch")
        else:
            raise ProtocolError(f"workers do not send {kind.name}")

    def grant(self, w: WorkerState, body: dict) -> None:
        """A worker's credit: more tasks it can take (never more than any worker holds); none
        for a worker that is leaving."""
        credit = count(body.get("credit", 0))
        w.credit = 0 if w.leaving else min(w.credit + credit, protocol.MAX_CREDIT)

    def worker_leaving(self, w: WorkerState, body: dict) -> None:
        """LEAVING: the worker drains before it leaves for good.  It gets nothing more, and the tasks
        it gives back, never begun, go to the front of the queue, in order, no attempt counted."""
        w.leaving = protocol.reason(body, "leaving")
        w.credit = 0
        for gid in reversed(protocol.ids(body, "requeue")):
            self.unassign(w, gid, count_attempt=False)

    def dismiss(self, w: WorkerState, reason: str) -> None:
        """Ask a worker to leave for good (a scaler's scale-down): SHUTDOWN {"leave": true}.  It
        drains, finishing what it runs, and its LEAVING gives back what it has not begun."""
        w.credit, w.leaving = 0, reason  # no credit it grants before its LEAVING counts either
        self.send(self.workers_sock, w.ident, Kind.SHUTDOWN, {"leave": True, "reason": reason})

    def attach(self, deliver: Callable[[Kind, dict | None, list], None]) -> ClientState:
        """Connect a client in this thread (an Executor's embedded broker): no socket.

        The client hands messages to ``from_client``; the broker's messages to it
        go to ``deliver(kind, body, frames)``.
        """
        # ZeroMQ's own peer identities are a zero byte and four more: this cannot clash.
        ident = b"\0local-%d" % len(self.local)
        self.local[ident] = deliver
        c = self.clients[ident] = ClientState(ident, DEFAULT_RETRIES, time.monotonic(), local=True)
        return c

    def from_client(self, c: ClientState, kind: Kind, body: dict, frames: list) -> None:
        """A message from an attached client."""
        c.last_seen = time.monotonic()
        try:
            if kind == Kind.HELLO:
                c.retries = retries_of(body)
                self.send(None, c.ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness})
            else:
                self.handle_client(c, kind, body, frames)
        except MALFORMED as exc:
            self.complain(f"dropped malformed message from the embedded client: {type(exc).__name__}: {exc}")

    def handle_client(self, c: ClientState, kind: Kind, body: dict, frames: list) -> None:
        """One message from a known client (checked whole before anything is done)."""
        if kind == Kind.SUBMIT:
            entries = (protocol.pair_entries(body["tasks"], frames, 1) if c.local  # (built by our own client)
                       else protocol.split_entries(body, "tasks", frames, 3))
            for entry, payload in entries:  # all of them checked first: a malformed SUBMIT queues nothing
                check_task(c, entry, payload)
            if len({entry[0] for entry, _ in entries}) != len(entries):
                raise ProtocolError("a SUBMIT names a task id twice")
            for entry, payload in entries:
                self.submit(c, entry[0], payload, entry[2])
        elif kind == Kind.CANCEL:
            self.cancel(c, protocol.ids(body))
        elif kind == Kind.KILL:
            sig = body.get("signal", "SIGTERM")
            if sig not in ("SIGTERM", "SIGKILL"):
                raise ProtocolError(f"KILL with signal {protocol.text(sig, 20)!r}")
            if body.get("all") is True:
                self.terminate(c, sig == "SIGKILL")
            else:
                self.kill(c, protocol.ids(body), protocol.seconds(body.get("grace", 0.0), "grace", 1e6))
        elif kind == Kind.PUT:
            self.put_objects(c, body, frames)
        elif kind == Kind.RELEASE:
            self.release_objects(c, protocol.keys(body))
        elif kind == Kind.STATUS:
            self.send(self.clients_sock, c.ident, Kind.STATUS_REPLY, *self.status(self.scope(c), body))
        elif kind == Kind.HEARTBEAT:
            pass
        elif kind == Kind.BYE:
            self.client_gone(c)
            if self.embedded:
                self.running = False
        else:
            raise ProtocolError(f"clients do not send {kind.name}")


def who(user: str | None) -> str:
    """A peer's key in a log line: ``client key NAME`` (its ZAP User-Id without the key), or a plain link."""
    if user is None:
        return "a peer on a plain link"
    role, _, rest = user.partition(":")
    return f"{role} key {rest.partition(':')[0]!r}"


def check_task(c: ClientState, entry: list, frames: list) -> None:
    """A SUBMIT entry as the protocol says it must be; ProtocolError if not."""
    cid, _, options = entry
    if cid < 0 or cid in c.tasks:
        raise ProtocolError(f"task id {cid} is {'negative' if cid < 0 else 'in use already'}")
    if len(frames) < 2:
        raise ProtocolError(f"task {cid} has {len(frames)} payload frames (a function and its arguments: 2 or more)")
    if options:
        retries = options.get("retries", 0)
        if type(retries) is not int or not 0 <= retries <= protocol.MAX_RETRIES:
            raise ProtocolError(f"bad retries option {retries!r:.40}")
        if "timeout" in options and not protocol.seconds(options["timeout"], "timeout option") > 0:
            raise ProtocolError(f"bad timeout option {options['timeout']!r:.40}")
        if "shm" in options and not (isinstance(options["shm"], list) and len(options["shm"]) <= len(frames)):
            raise ProtocolError("bad shm option")
        if "deps" in options or "after" in options:
            check_dependencies(options, len(frames))
        if "seed" in options and not protocol.valid_seed(options["seed"]):
            raise ProtocolError(f"bad seed option {options['seed']!r:.60}")
        if "priority" in options or "resources" in options or "queue" in options:
            check_options(options)
        if "refs" in options or "blobs" in options or "ref_frames" in options or "forget" in options:
            check_refs(options, len(frames))


def retries_of(body: dict) -> int:
    """A client's default retries, from its HELLO."""
    retries = body.get("retries", DEFAULT_RETRIES)
    if type(retries) is not int or not 0 <= retries <= protocol.MAX_RETRIES:
        raise ProtocolError(f"bad retries {retries!r:.40}")
    return retries


def seconds(value: Any) -> float:
    """A peer's number of seconds (ProtocolError if it is not one)."""
    return protocol.seconds(value, "number of seconds")


def count(value: Any, most: int = 1_000_000) -> int:
    """A peer's count, 0 to ``most`` (ProtocolError if it is not one)."""
    if type(value) is not int or value < 0 or value > most:
        raise ProtocolError(f"bad count {value!r:.40}")
    return value
