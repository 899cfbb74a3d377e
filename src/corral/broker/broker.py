"""The broker role: the one place that knows where every task is.

::

    clients --DEALER--> ROUTER clients_sock          ROUTER workers_sock <--DEALER-- workers
    (embedded: attach()                                  socket pairs <--Stream-- its pool's workers
     and method calls)   |                                    ^
                         v                                    |
                  tasks{gid: Task}  --> queue (FIFO) --> dispatch to workers with credit
                         ^                                    |
                         +---- RESULT / STARTED batched per client <---+

The broker never unpickles a payload: it moves opaque frames and reads only
the JSON header (``protocol.decode``).  It is single-threaded: one loop polls
every socket, handles every waiting message, dispatches, then flushes the
per-client batches it accumulated, so a burst costs one send per peer.

An embedded broker (one with a pool) has no ZeroMQ socket at all: its client
calls it in the same thread, and each worker of its pool gets one end of a
socket pair when it is started (``stream.Stream``): nothing else can
connect, and a message costs one system call instead of two ZeroMQ I/O
thread hand-offs.

A persistent worker of its pool may have a lane (``lane.Lane``): the
broker then sends its TASKS to the worker's task process directly and reads
the results from it, sizing the batches itself (``_lane_window``), marking
the oldest task the lane holds as begun (its STARTED after 2 ms, its timeout),
and asking the worker's supervisor to stop the process for a timeout or a
kill; when the process ends, the supervisor's ENDED says how many tasks it had
begun, and those end with it while the rest go back to the queue.

When a worker disappears (its process ended, it went silent, or a fresh
worker reports that a task's process died) its started tasks count an
attempt and go back to the front of the queue until ``retries`` is spent;
tasks it had received but not started go back without counting.  A result
for a task the broker no longer assigns to that worker is dropped, so no
task completes twice.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from .. import tuning
from ..errors import ProtocolError
from ..local.pool import LocalPool, exit_words
from ..throttle import Throttle
from ..wire import poller, protocol, sockets
from ..wire.lane import Lane
from ..wire.poller import POLLIN, POLLOUT
from ..wire.protocol import Kind, Status
from ..wire.stream import Stream

DEFAULT_RETRIES = 2
SMALL_FRAME = 64 << 10  # frames below this are stored as bytes; larger ones stay zero-copy ZeroMQ frames
INTERNED = 1024  # distinct first frames (pickled functions) stored once
_NO_OPTIONS: dict = {}  # shared by every task without options; never modified
_STATUSES = frozenset(int(s) for s in Status)
MAX_PEERS = 10_000  # clients and workers at once: HELLOs beyond are refused (each costs memory)
MAX_DEPARTED = 64  # departed workers whose records the status keeps (the most recent)
STALL_BEATS = 10  # heartbeats a remote worker may hold tasks without starting any, unless it is preparing


@dataclass(slots=True)
class Task:
    gid: int
    client: bytes
    cid: int
    frames: tuple
    options: dict
    attempts: int = 0
    worker: bytes | None = None
    started: bool = False
    killed: bool = False  # a kill was asked for: never retried
    kill_with: tuple | None = None  # (signal, grace): killed on a lane before it began: stop it when it does
    cancelling: bool = False  # the client awaits a cancel verdict from the worker holding it


@dataclass
class WorkerState:
    ident: bytes
    name: str = "?"
    host: str = "?"
    pid: int = 0
    fresh: bool = False
    credit: int = 0
    assigned: dict = field(default_factory=dict)  # gid -> None, in the order dispatched
    tasks: int = 0
    busy: float = 0.0
    errors: int = 0
    last_seen: float = 0.0
    alive: bool = True
    paired: bool = False  # one of our own pool's workers, on a socket pair
    progress_at: float = 0.0  # when it last began or ended a task, or said it was preparing to
    # A worker whose task process reads its tasks from a lane (in Broker.lanes; see Lane):
    epoch: int | None = None  # the task process's, while it reads its lane (None: restarting)
    head_since: float = 0.0  # when the oldest task it holds began
    head_reported: bool = False  # STARTED sent for it
    answered: int = 0  # results its task process sent (its tasks begun, less those running or unsent)
    stopping: int = 0  # the task whose process we asked the worker to stop
    stop_reason: str = ""  # why: "timeout" or "killed"
    task_time: float | None = None  # moving average of how long its tasks take

    def summary(self) -> dict[str, Any]:
        return {
            "worker": self.name,
            "host": self.host,
            "pid": self.pid,
            "fresh": self.fresh,
            "tasks": self.tasks,
            "busy_s": round(self.busy, 6),
            "errors": self.errors,
            "alive": self.alive,
        }


@dataclass(slots=True)
class Paired:
    """A worker the pool started, connected to us by a socket pair."""

    pid: int
    stream: Stream
    flags: int = POLLIN  # what the poller watches it for
    lane: Lane | None = None
    lane_flags: int = POLLIN


@dataclass
class ClientState:
    ident: bytes
    retries: int = DEFAULT_RETRIES
    last_seen: float = 0.0
    tasks: dict = field(default_factory=dict)  # cid -> gid


class Outbox:
    """Messages to one client, accumulated during a loop turn and sent as one batch each."""

    def __init__(self) -> None:
        self.results: list = []
        self.frames: list = []
        self.started: list = []
        self.cancelled: list = []  # cancel verdicts: dropped before they ran
        self.running: list = []  # cancel verdicts: too late, they ran (or run)

    def result(self, cid: int, status: Status, frames: list, meta: dict) -> None:
        self.results.append(protocol.result_entry(cid, status, len(frames), meta))
        self.frames.extend(frames)


class Broker:
    def __init__(
        self,
        client_address: str | None,
        worker_address: str | None = None,
        *,
        context: zmq.Context | None = None,
        pool: LocalPool | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        embedded: bool = False,
        log=None,
    ):
        self.ctx = context or zmq.Context.instance()
        # One address can serve both roles (the HELLO says which a peer is).
        # Without one, clients attach() in this thread and workers come from the pool.
        self.clients_sock = self._router(client_address) if client_address else None
        shared = not worker_address or worker_address == client_address
        self.workers_sock = self.clients_sock if shared else self._router(worker_address)
        self.routers = [] if self.clients_sock is None else [self.clients_sock]
        if self.workers_sock is not None and self.workers_sock is not self.clients_sock:
            self.routers.append(self.workers_sock)
        # zmq_poll only where ZeroMQ sockets are: an embedded broker waits in one poll(2).
        self.poller = zmq.Poller() if self.routers else poller.FdPoller()
        for sock in self.routers:
            self.poller.register(sock, POLLIN)
        self.paired: dict[bytes, Paired] = {}  # the pool's workers on socket pairs, by identity
        self.lanes: dict[bytes, WorkerState] = {}  # those of them whose task process reads a lane
        self.pool = pool
        if pool is not None and pool.address is None:
            pool.connect = self.adopt
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.embedded = embedded
        self.log = log or (lambda msg: print(f"corral broker: {msg}", file=sys.stderr))
        self.complain = Throttle(self.log)  # for what peers send wrong: never a flood of lines
        self.told_unknown: dict[bytes, float] = {}  # unknown peers answered ERROR, and when (one a heartbeat)
        self.tasks: dict[int, Task] = {}
        self.queue: deque[int] = deque()
        self.workers: dict[bytes, WorkerState] = {}
        self.departed: deque[WorkerState] = deque(maxlen=MAX_DEPARTED)
        self.departures = 0
        self.clients: dict[bytes, ClientState] = {}
        self.outboxes: dict[bytes, Outbox] = {}
        self.next_gid = 1
        self.interned: dict[bytes, bytes] = {}
        self.local: dict[bytes, Callable] = {}  # attached clients in this thread: ident -> deliver
        self.broken: str | None = None
        self.running = True
        self.last_beat = 0.0
        self.last_reap = 0.0

    def _router(self, address: str) -> zmq.Socket:
        _raise_descriptor_limit()
        return sockets.router(self.ctx, address)

    # -- the loop ------------------------------------------------------------

    def poll_timeout(self) -> float:
        """Seconds the loop may sleep: a pool is checked for exited workers every 0.1 s, and
        a lane's oldest task when it is due a STARTED or its timeout."""
        timeout = 0.1 if self.pool else self.heartbeat / 2
        if self.lanes:
            now = time.monotonic()
            for w in self.lanes.values():
                due = self.lane_due(w)
                if due is not None:
                    timeout = min(timeout, max(0.0, due - now))
        return timeout

    def serve(self) -> None:
        """Run a standalone broker until ``running`` is cleared."""
        self.start()
        try:
            while self.running:
                self.step(dict(self.poller.poll(self.poll_timeout() * 1000)))
        finally:
            self.close()

    def start(self) -> None:
        if self.pool:
            self.pool.fill()

    def step(self, events) -> None:
        """One turn of the loop: handle what arrived on the sockets in ``events``, then send."""
        for sock in self.routers:
            if sock in events:
                self.drain(sock)
        for ident, link in list(self.paired.items()):
            happened = events.get(link.stream.poll_key)
            if link.lane is not None:
                on_lane = events.get(link.lane.poll_key, 0)
                if on_lane & POLLOUT:
                    link.lane.flush()
                if on_lane & POLLIN or happened:  # results first: what the worker says may concern them
                    self.serve_lane(ident, link)
            if happened:
                self.serve_stream(ident, link, happened)
        self.dispatch()
        if self.lanes:
            self.lane_timers(time.monotonic())  # before the flush, which sends the STARTED it adds
        self.flush()
        self.housekeeping()
        for link in self.paired.values():
            # Watch for writability only while output waits: otherwise poll would never sleep.
            wanted = POLLIN | (POLLOUT if link.stream.pending else 0)
            if wanted != link.flags:
                self.poller.register(link.stream, wanted)
                link.flags = wanted
            if link.lane is not None:
                wanted = POLLIN | (POLLOUT if link.lane.pending else 0)
                if wanted != link.lane_flags:
                    self.poller.register(link.lane, wanted)
                    link.lane_flags = wanted

    # -- the pool's workers, on socket pairs ------------------------------------

    def adopt(self, pid: int, sock: socket.socket, lane: socket.socket | None = None) -> None:
        """A worker the pool just started, connected to us by a socket pair (and a lane)."""
        ident = b"\0pool-%d" % pid  # cannot clash with a ZeroMQ identity (a zero byte and four more)
        self.paired[ident] = link = Paired(pid, Stream(sock), lane=Lane(lane) if lane is not None else None)
        self.poller.register(link.stream, link.flags)
        if link.lane is not None:
            self.poller.register(link.lane, link.lane_flags)

    def serve_stream(self, ident: bytes, link: Paired, events: int) -> None:
        if events & POLLOUT:
            link.stream.flush()
        try:
            messages = link.stream.receive()
        except ProtocolError as exc:  # the framing is broken: nothing after it can be trusted
            self.log(f"worker process {link.pid} sent garbage ({exc}); stopping it")
            if self.pool:
                self.pool.kill(link.pid)
            self.disconnect(ident)
            return
        for msg in messages:
            try:
                self.receive(None, ident, msg[0], msg[1:])
            except _MALFORMED as exc:
                self.complain(f"dropped malformed message from worker process {link.pid}: {type(exc).__name__}: {exc}")
        if link.stream.eof:
            self.disconnect(ident)

    def disconnect(self, ident: bytes) -> None:
        """Close a worker's socket pair.  Its process has ended, or is being stopped: the pool
        reports how (``reap_pool``), and its tasks go back to the queue then."""
        link = self.paired.pop(ident)
        self.poller.unregister(link.stream)
        link.stream.close()
        if link.lane is not None:
            self.serve_lane(ident, link)  # the results its task process sent before
            self.poller.unregister(link.lane)
            link.lane.close()
        w = self.workers.get(ident)
        if w is not None:
            w.credit = 0
            w.epoch = None

    # -- lanes: tasks and results straight between the broker and a task process ---------

    def serve_lane(self, ident: bytes, link: Paired) -> None:
        """Take the results a worker's task process wrote on its lane."""
        messages = link.lane.receive()
        w = self.workers.get(ident)
        if link.lane.dropped:
            self.complain(f"dropped {link.lane.dropped} malformed message(s) on the lane of worker process {link.pid}")
            link.lane.dropped = 0
        for msg in messages:
            try:
                kind, body = protocol.decode(msg[0])
                if kind != Kind.RESULT or w is None or ident not in self.lanes:
                    raise ProtocolError(f"{kind.name} on a lane")
                self.lane_result(w, body, protocol.unpack(body, msg[1:]))
            except _MALFORMED as exc:
                self.complain(f"dropped a malformed message on the lane of worker process {link.pid}: "
                              f"{type(exc).__name__}: {exc}")

    def lane_result(self, w: WorkerState, body: dict, frames: list) -> None:
        """Outcomes from a task process, in the order it ran its tasks: the oldest one each."""
        w.busy += _seconds(body.get("busy", 0.0))
        for entry, payload in protocol.split_entries(body, "results", frames, 4):
            gid, now = entry[0], time.monotonic()
            if gid != next(iter(w.assigned), None):
                self.complain(f"dropped a result from worker {w.name} for a task it is not running")
                continue
            w.answered += 1
            if entry[1] != Status.FAILED:
                took = now - w.head_since
                w.task_time = took if w.task_time is None else 0.8 * w.task_time + 0.2 * took
            self.task_done(w, entry, payload)
            self.next_head(w, now)

    def next_head(self, w: WorkerState, now: float) -> None:
        """The oldest task a lane worker holds has begun (the one before it just ended)."""
        w.head_since, w.head_reported, w.stopping = now, False, 0
        task = self.lane_head(w)
        if task is None:
            return
        if not task.started:
            task.started = True
            task.attempts += 1
        if task.kill_with is not None:
            self.stop_on_lane(w, task, "killed", *task.kill_with)

    def stop_on_lane(self, w: WorkerState, task: Task, reason: str, sig: str, grace: float) -> None:
        """Have a lane worker stop its task process, which runs ``task``."""
        if w.stopping or w.epoch is None:
            return  # asked already; or it is restarting, and no task of ours runs
        w.stopping, w.stop_reason = task.gid, reason
        self.send(self.workers_sock, w.ident, Kind.KILL, {"lane": w.epoch, "id": task.gid, "signal": sig,
                                                          "grace": grace})

    def lane_head(self, w: WorkerState) -> Task | None:
        """The oldest task a lane worker holds: the one its task process runs (or begins now)."""
        return self.tasks.get(next(iter(w.assigned), -1))

    def lane_due(self, w: WorkerState) -> float | None:
        """When the oldest task of a lane worker is due a STARTED or its timeout (None: nothing due)."""
        task = self.lane_head(w)
        if task is None or w.epoch is None:
            return None
        due = None if w.head_reported else w.head_since + tuning.STARTED_DELAY
        limit = task.options.get("timeout")
        if limit and not w.stopping:
            due = min(due or 1e300, w.head_since + limit)
        return due

    def lane_timers(self, now: float) -> None:
        for w in self.lanes.values():
            task = self.lane_head(w)
            if task is None or w.epoch is None:
                continue
            if not w.head_reported and now - w.head_since >= tuning.STARTED_DELAY:
                w.head_reported = True
                self.outbox(task.client).started.append(task.cid)
            limit = task.options.get("timeout")
            if limit and not w.stopping and now - w.head_since >= limit:
                self.stop_on_lane(w, task, "timeout", "SIGKILL", 0.0)

    def lane_ended(self, w: WorkerState, body: dict) -> None:
        """A lane worker's task process ended: the task it ran (if any) ends with it, as the
        worker says how; the tasks behind it never began, and go back to the queue."""
        link = self.paired.get(w.ident)
        if link is not None and link.lane is not None:
            self.serve_lane(w.ident, link)  # everything it wrote before it died
            link.lane.reset()  # and nothing half-written, or half-sent to it
        if body.get("lane") != w.epoch:
            return
        w.epoch = None  # until its next task process reads the lane (LANE)
        pid, how = body.get("pid"), f"its process {body.get('pid')} {body.get('how')}"
        # The tasks it held in front that it had begun ran (the last of them was running):
        # their results, if any, died with it.  The rest never began.
        held = list(w.assigned)
        begun = min(len(held), max(0, _count(body.get("begun", 0)) - w.answered))
        for gid in reversed(held[begun:]):  # requeued at the front, in their order
            self.unassign(w, gid, count_attempt=False, why="before it started")
        for gid in held[:begun]:
            task = self.tasks.get(gid)
            if task is None:
                continue
            if w.stopping == gid and w.stop_reason == "timeout":
                meta = protocol.stopped("timeout", task.options.get("timeout"), how)
                self.task_done(w, protocol.result_entry(gid, Status.FAILED, 0, meta), [])
            elif task.killed:
                self.unassign(w, gid, count_attempt=True, why=how)
            else:
                meta = {"error": protocol.ERR_WORKER_LOST, "message": f"the task process {pid} of worker {w.name} "
                                                                      f"{body.get('how')}"}
                self.task_done(w, protocol.result_entry(gid, Status.FAILED, 0, meta), [])
        w.stopping, w.head_reported, w.answered = 0, False, 0

    def drain(self, sock: zmq.Socket, limit: int = 10000) -> None:
        for _ in range(limit):
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self.handle(sock, msg)
            except _MALFORMED as exc:
                self.complain(f"dropped malformed message from {msg[0].bytes!r}: {type(exc).__name__}: {exc}")

    def handle(self, sock: zmq.Socket, msg: list) -> None:
        if len(msg) < 2:
            raise ProtocolError("no header frame")
        self.receive(sock, msg[0].bytes, msg[1].bytes, msg[2:])

    def receive(self, sock: zmq.Socket | None, ident: bytes, header, frames: list) -> None:
        """One message from ``ident``, which came on ``sock`` (None: on its socket pair)."""
        kind, body = protocol.decode(header)
        now = time.monotonic()
        if kind == Kind.HELLO:
            self.hello(sock, ident, body, now)
            return
        worker = self.workers.get(ident)
        if worker is not None:
            worker.last_seen = now
            self.handle_worker(worker, kind, body, protocol.unpack(body, frames))
            return
        client = self.clients.get(ident)
        if client is not None:
            client.last_seen = now
            self.handle_client(client, kind, body, protocol.unpack(body, frames))
            return
        if kind != Kind.BYE and now - self.told_unknown.get(ident, -1e9) >= self.heartbeat:
            # A peer we do not know (we restarted, or dropped it as silent) must say HELLO again:
            # told once a heartbeat at most, whatever it sends.
            self.told_unknown[ident] = now
            self.send(sock, ident, Kind.ERROR, {"code": protocol.UNKNOWN_PEER,
                                                "message": "unknown peer: say HELLO first (the broker may have "
                                                           "restarted, or dropped you as silent)"})

    def hello(self, sock: zmq.Socket | None, ident: bytes, body: dict, now: float) -> None:
        """A peer introduces itself; one that was known already starts over (it forgot what it had)."""
        role = body.get("role")
        if role not in ("worker", "client") or (role == "client" and sock is None):
            raise ProtocolError(f"HELLO with unknown role {protocol.text(role, 40)!r}")
        retries = _retries(body) if role == "client" else 0
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
            self.add_worker(sock, ident, body, now)
        else:
            self.clients[ident] = ClientState(ident, retries, now)
            self.send(sock, ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness})

    # -- workers ---------------------------------------------------------------

    def add_worker(self, sock: zmq.Socket, ident: bytes, body: dict, now: float) -> None:
        pid = body.get("pid", 0)
        w = WorkerState(
            ident,
            name=protocol.text(body.get("name", "?"), protocol.MAX_NAME),
            host=protocol.text(body.get("host", "?"), protocol.MAX_NAME),
            pid=pid if type(pid) is int and 0 <= pid < 1 << 32 else 0,
            fresh=body.get("fresh") is True,
            last_seen=now,
            paired=ident in self.paired,
            progress_at=now,
        )
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
        self.workers[ident] = w
        self.send(sock, ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness})

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
        if kind == Kind.READY:
            self.grant(w, body)
        elif kind == Kind.STARTED:
            self.began(w, protocol.ids(body))
        elif kind == Kind.RESULT:
            started = protocol.ids(body, "started")
            entries = protocol.split_entries(body, "results", frames, 4)
            self.grant(w, body)
            w.busy += _seconds(body.get("busy", 0.0))
            for entry, payload in entries:
                self.task_done(w, entry, payload)
            self.began(w, started)
        elif kind == Kind.CANCELLED:
            self.cancel_verdict(w, body)
        elif kind == Kind.BYE:
            for gid in protocol.ids(body, "requeue"):
                self.unassign(w, gid, count_attempt=False)
            self.worker_gone(w, None)
        elif kind == Kind.HEARTBEAT:
            if body.get("preparing") is True:  # starting a task process, or importing ahead: making progress
                w.progress_at = time.monotonic()
        elif kind == Kind.ENDED and w.ident in self.lanes:
            self.lane_ended(w, body)
        elif kind == Kind.LANE and w.ident in self.lanes:
            if body.get("broken"):
                self.break_pool(f"the initializer failed in worker {w.name}:\n{protocol.text(body['broken'])}")
            elif type(body.get("lane")) is int:
                w.epoch, w.answered = body["lane"], 0
            else:
                raise ProtocolError("LANE without an epoch")
        else:
            raise ProtocolError(f"workers do not send {kind.name}")

    def grant(self, w: WorkerState, body: dict) -> None:
        """A worker's credit: more tasks it can take (never more than any worker holds)."""
        w.credit = min(w.credit + _count(body.get("credit", 0)), protocol.MAX_CREDIT)

    def began(self, w: WorkerState, gids) -> None:
        """Worker ``w`` has begun these tasks (STARTED, or a RESULT's ``started``)."""
        for gid in gids:
            task = self.tasks.get(gid)
            if task is not None and task.worker == w.ident and not task.started:
                task.started = True
                task.attempts += 1
                w.progress_at = time.monotonic()
                self.outbox(task.client).started.append(task.cid)

    def task_done(self, w: WorkerState, entry: list, payload: list) -> None:
        gid, status, _, meta = entry
        task = self.tasks.get(gid)
        if task is None or task.worker != w.ident:
            return  # late or duplicate: that task was reassigned or finished already
        if status not in _STATUSES:
            raise ProtocolError(f"unknown status {status!r:.20}")
        if not task.started:  # a short task: its RESULT is also its STARTED
            task.started = True
            task.attempts += 1
        w.assigned.pop(gid, None)
        w.tasks += 1
        w.progress_at = time.monotonic()
        error = meta.get("error") if status == Status.FAILED else None
        if error == protocol.ERR_BROKEN:
            if self.trusts(w):
                self.break_pool(f"the initializer failed in worker {w.name}:\n{protocol.text(meta.get('message'))}")
                return
            # Another executor's worker cannot break ours: its task goes elsewhere, and it goes.
            message = f"worker {w.name} said its initializer failed"
            self.settle(w, task, Status.FAILED, [], {"error": protocol.ERR_WORKER_LOST, "message": message})
            self.refuse(self.workers_sock, w.ident, w, "it says its initializer failed")
            self.worker_gone(w, None)
            return
        self.settle(w, task, status, payload, meta)

    def settle(self, w: WorkerState, task: Task, status: Status, payload: list, meta: dict) -> None:
        """A task's outcome from its worker: retried if its process died (within ``retries``), else final."""
        error = meta.get("error") if status == Status.FAILED else None
        retry = error == protocol.ERR_WORKER_LOST or (
            error == protocol.ERR_TIMEOUT and task.options.get("retry_on_timeout")
        )
        if retry and not task.killed:
            # The task's process died (or outran its timeout and the client asked
            # for retries): the same as losing a worker.
            task.worker, task.started = None, False
            w.errors += 1
            self.retry_or_fail(task, f"{protocol.text(meta.get('message'))} (on {w.host})", error)
            return
        if status != Status.OK:
            w.errors += 1
        self.finish(task, status, payload, meta)

    def finish(self, task: Task, status: Status, payload: list, meta: dict) -> None:
        """A task's one and only outcome: forward it to its client and forget the task."""
        self.drop(task)
        box = self.outbox(task.client)
        box.result(task.cid, status, payload, meta)
        if task.cancelling:  # its cancel came too late; the verdict follows the result
            box.running.append(task.cid)

    def fail(self, task: Task, error: str, message: str) -> None:
        self.finish(task, Status.FAILED, [], {"error": error, "message": message})

    def unassign(self, w: WorkerState, gid: int, count_attempt: bool, why: str = "") -> None:
        task = self.tasks.get(gid)
        w.assigned.pop(gid, None)
        if task is None or task.worker != w.ident:
            return
        started = task.started
        task.worker, task.started = None, False
        if task.killed:
            self.fail(task, protocol.ERR_KILLED, f"the task was killed: {why}")
        elif task.cancelling and not started:  # it never ran: the cancel succeeds
            self.drop(task)
            self.outbox(task.client).cancelled.append(task.cid)
        elif started and count_attempt:
            self.retry_or_fail(task, why)
        else:
            if started:
                task.attempts -= 1
            self.queue.appendleft(gid)

    def retry_or_fail(self, task: Task, why: str, error: str = protocol.ERR_WORKER_LOST) -> None:
        retries = task.options.get("retries", self.clients[task.client].retries if task.client in self.clients else 0)
        if task.attempts <= retries:
            self.queue.appendleft(task.gid)
            return
        plural = "s" if task.attempts != 1 else ""
        self.fail(task, error, f"{why}; the task ran {task.attempts} time{plural} and was not retried further")

    def worker_gone(self, w: WorkerState, why: str | None) -> None:
        """Take a worker out of service; requeue or fail what it held."""
        if not w.alive:
            return
        w.alive = False
        self.workers.pop(w.ident, None)
        self.lanes.pop(w.ident, None)
        self.departed.append(w)
        self.departures += 1
        oldest = self.tasks.get(next(iter(w.assigned), None))
        if why is not None and oldest is not None and not oldest.started:
            # A task shorter than the worker's STARTED delay is reported by its RESULT alone,
            # so the task it was running may not be marked yet. The oldest one it held was
            # the one running: count it, or a task that kills its worker would run forever.
            oldest.started = True
            oldest.attempts += 1
        for gid in list(w.assigned):
            if why is not None:
                w.errors += 1 if self.tasks.get(gid) and self.tasks[gid].started else 0
            self.unassign(w, gid, count_attempt=True, why=why or f"worker {w.name} left")

    # -- clients ---------------------------------------------------------------

    def attach(self, deliver: Callable[[Kind, dict | None, list], None]) -> ClientState:
        """Connect a client in this thread (an Executor's embedded broker): no socket.

        The client hands messages to ``from_client``; the broker's messages to it
        go to ``deliver(kind, body, frames)``.
        """
        # ZeroMQ's own peer identities are a zero byte and four more: this cannot clash.
        ident = b"\0local-%d" % len(self.local)
        self.local[ident] = deliver
        c = self.clients[ident] = ClientState(ident, DEFAULT_RETRIES, time.monotonic())
        return c

    def from_client(self, c: ClientState, kind: Kind, body: dict, frames: list) -> None:
        """A message from an attached client."""
        c.last_seen = time.monotonic()
        try:
            if kind == Kind.HELLO:
                c.retries = _retries(body)
                self.send(None, c.ident, Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness})
            else:
                self.handle_client(c, kind, body, frames)
        except _MALFORMED as exc:
            self.complain(f"dropped malformed message from the embedded client: {type(exc).__name__}: {exc}")

    def handle_client(self, c: ClientState, kind: Kind, body: dict, frames: list) -> None:
        if kind == Kind.SUBMIT:
            entries = protocol.split_entries(body, "tasks", frames, 3)
            for entry, payload in entries:  # all of them checked first: a malformed SUBMIT queues nothing
                _check_task(c, entry, payload)
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
        elif kind == Kind.STATUS:
            self.send(self.clients_sock, c.ident, Kind.STATUS_REPLY, *self.status())
        elif kind == Kind.HEARTBEAT:
            pass
        elif kind == Kind.BYE:
            self.client_gone(c)
            if self.embedded:
                self.running = False
        else:
            raise ProtocolError(f"clients do not send {kind.name}")

    def submit(self, c: ClientState, cid: int, frames: list, options: dict) -> None:
        """Queue a task (checked already: ``_check_task``).  Its small frames are kept as
        bytes, not as ZeroMQ frames (a fraction of the memory), and a function frame
        repeated task after task (a map) is stored once."""
        if self.broken:
            self.outbox(c.ident).result(
                cid, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": self.broken}
            )
            return
        gid = self.next_gid
        self.next_gid += 1
        self.tasks[gid] = Task(gid, c.ident, cid, self.compact(frames), options or _NO_OPTIONS)
        c.tasks[cid] = gid
        self.queue.append(gid)

    def compact(self, frames: list) -> tuple:
        """A tuple, not a list: one of bytes only is dropped from the garbage collector's
        watch, which a million queued tasks would otherwise make it scan again and again."""
        kept = [f if type(f) is bytes else bytes(f) if len(f) < SMALL_FRAME else f for f in frames]
        if kept and isinstance(kept[0], bytes):
            shared = self.interned.get(kept[0])
            if shared is None:
                if len(self.interned) >= INTERNED:
                    self.interned.clear()
                shared = self.interned[kept[0]] = kept[0]
            kept[0] = shared
        return tuple(kept)

    def cancel(self, c: ClientState, cids) -> None:
        """Cancel tasks that have not started; every id gets a verdict (CANCELLED).

        A queued task is dropped here. A task a worker holds is the worker's to
        judge, since only it knows whether the task has started. A task the
        broker no longer knows has finished: its RESULT went out first.
        """
        box = self.outbox(c.ident)
        by_worker: dict[bytes, list] = {}
        for cid in cids:
            task = self.tasks.get(c.tasks.get(cid, -1))
            if task is None:
                box.running.append(cid)
            elif task.worker is None:
                self.drop(task)
                box.cancelled.append(cid)
            elif task.worker in self.lanes:  # on its way to a task process, or in it: it runs
                box.running.append(cid)
            elif not task.cancelling:
                task.cancelling = True
                by_worker.setdefault(task.worker, []).append(task.gid)
        for ident, gids in by_worker.items():
            self.send(self.workers_sock, ident, Kind.CANCEL, {"ids": gids})

    def cancel_verdict(self, w: WorkerState, body: dict) -> None:
        """A worker's answer to CANCEL: which tasks it dropped, which had started."""
        self.grant(w, body)
        w.progress_at = time.monotonic()
        verdicts = [(g, True) for g in protocol.ids(body)] + [(g, False) for g in protocol.ids(body, "running")]
        for gid, dropped in verdicts:
            task = self.tasks.get(gid)
            if task is None or task.worker != w.ident or not task.cancelling:
                continue  # finished meanwhile: its verdict went out with its result
            task.cancelling = False
            if dropped:
                self.drop(task)
                self.outbox(task.client).cancelled.append(task.cid)
            else:
                self.outbox(task.client).running.append(task.cid)

    def kill(self, c: ClientState, cids, grace: float, sig: str = "SIGTERM") -> None:
        """Stop running tasks: their workers signal the task processes and report back."""
        by_worker: dict[bytes, list] = {}
        for cid in cids:
            task = self.tasks.get(c.tasks.get(cid, -1))
            if task is None or task.killed:
                continue
            task.killed = True
            w = self.lanes.get(task.worker)
            if task.worker is None:  # still queued: gone at once
                self.unassign_queued(task, "before it started")
            elif w is not None:  # on a lane: stop its process when the task runs there
                task.kill_with = (sig, grace)
                if task.gid == next(iter(w.assigned), None):
                    self.stop_on_lane(w, task, "killed", sig, grace)
            else:
                by_worker.setdefault(task.worker, []).append(task.gid)
        for ident, gids in by_worker.items():
            self.send(self.workers_sock, ident, Kind.KILL, {"ids": gids, "signal": sig, "grace": grace})

    def unassign_queued(self, task: Task, why: str) -> None:
        self.fail(task, protocol.ERR_KILLED, f"the task was killed {why}")

    def drop(self, task: Task) -> None:
        """Forget a task wherever it is; a queue entry is skipped lazily by dispatch()."""
        self.tasks.pop(task.gid, None)
        self.forget(task)
        w = self.workers.get(task.worker) if task.worker is not None else None
        if w is not None:
            w.assigned.pop(task.gid, None)

    def terminate(self, c: ClientState, hard: bool) -> None:
        """``terminate_workers()``/``kill_workers()``: stop everything this client started."""
        sig = "SIGKILL" if hard else "SIGTERM"
        why = f"terminated by {'kill' if hard else 'terminate'}_workers()"
        running = [self.tasks[g] for g in c.tasks.values() if g in self.tasks]
        for task in running:
            if task.worker is None:
                self.unassign_queued(task, why)
        self.kill(c, [t.cid for t in running if t.gid in self.tasks], 0.0, sig)
        for task in running:
            if task.gid in self.tasks:  # the future fails now, as ProcessPoolExecutor's do
                self.fail(task, protocol.ERR_WORKER_LOST, f"the worker running this task was {why}")
        if self.embedded and self.pool:
            self.pool.accepting = False
            self.pool.signal_all(signal.SIGKILL if hard else signal.SIGTERM)

    def client_gone(self, c: ClientState) -> None:
        """Drop a departed client's queued tasks and stop its running ones."""
        self.kill(c, list(c.tasks), grace=self.heartbeat)
        for gid in list(c.tasks.values()):
            if gid in self.tasks:
                self.drop(self.tasks[gid])
        self.clients.pop(c.ident, None)
        self.outboxes.pop(c.ident, None)

    def forget(self, task: Task) -> None:
        c = self.clients.get(task.client)
        if c is not None:
            c.tasks.pop(task.cid, None)

    def break_pool(self, message: str) -> None:
        """An initializer failed: fail everything, as ProcessPoolExecutor does."""
        if self.broken:
            return
        self.broken = message
        self.log(message.splitlines()[0])
        if self.pool:
            self.pool.accepting = False
        for task in list(self.tasks.values()):
            self.fail(task, protocol.ERR_BROKEN, message)
        self.queue.clear()
        for w in list(self.workers.values()):
            self.send(self.workers_sock, w.ident, Kind.SHUTDOWN)

    # -- dispatch and output ---------------------------------------------------

    def dispatch(self) -> None:
        if not self.queue:
            return
        for w in self.lanes.values():  # a lane's worker grants no credit: its window is ours to size
            w.credit = 0 if w.epoch is None else max(0, _lane_window(w) - len(w.assigned))
        idle_lanes = [w for w in self.lanes.values() if w.credit and not w.assigned]
        # One task per worker per round, least loaded first, so that N tasks start
        # on N idle workers instead of waiting in the prefetch of the first one.
        ready = sorted((w for w in self.workers.values() if w.credit > 0), key=lambda w: len(w.assigned))
        # And no worker holds more than its fair share of the work there is: one that
        # ran short tasks asks for many, and must not take a burst of long ones that
        # the others could run (the pool's workers count even before they connect).
        held = sum(len(w.assigned) for w in self.workers.values())
        workers = max(len(self.workers), self.pool.size if self.pool else 0, 1)
        share = max(1, (len(self.queue) + held) // workers)
        ready = [w for w in ready if len(w.assigned) < share]
        batches: dict[bytes, tuple[list, list]] = {}
        now = time.monotonic()
        for w in ready:
            if not w.assigned:  # it holds nothing yet: its clock for starting what it gets begins now
                w.progress_at = now
        while ready and self.queue:
            for w in list(ready):
                task = None
                while task is None and self.queue:
                    task = self.tasks.get(self.queue.popleft())
                    if task is not None and task.worker is not None:
                        task = None  # cancelled while queued
                if task is None:
                    break
                task.worker = w.ident
                w.assigned[task.gid] = None
                w.credit -= 1
                entries, frames = batches.setdefault(w.ident, ([], []))
                entries.append(protocol.task_entry(task.gid, len(task.frames), task.options))
                frames.extend(task.frames)
                if w.credit <= 0 or len(w.assigned) >= share:
                    ready.remove(w)
        for ident, (entries, frames) in batches.items():
            self.send(self.workers_sock, ident, Kind.TASKS, {"tasks": entries}, frames)
        for w in idle_lanes:
            if w.assigned:  # its task process begins the first of them now
                self.next_head(w, now)

    def outbox(self, client: bytes) -> Outbox:
        box = self.outboxes.get(client)
        if box is None:
            box = self.outboxes[client] = Outbox()
        return box

    def flush(self) -> None:
        for ident, box in self.outboxes.items():
            if box.started:
                for chunk in protocol.id_chunks(box.started):
                    self.send(self.clients_sock, ident, Kind.STARTED, {"ids": chunk})
            for chunk, frames in protocol.batches(box.results, box.frames, 2):
                self.send(self.clients_sock, ident, Kind.RESULT, {"results": chunk}, frames)
            if box.cancelled or box.running:  # after the results, which they may refer to
                for dropped, running in itertools.zip_longest(
                    protocol.id_chunks(box.cancelled), protocol.id_chunks(box.running), fillvalue=[]
                ):
                    self.send(self.clients_sock, ident, Kind.CANCELLED, {"ids": dropped, "running": running})
        self.outboxes.clear()

    def send(self, sock: zmq.Socket | None, ident: bytes, kind: Kind, body: dict | None = None,
             frames: list = ()) -> None:
        deliver = self.local.get(ident)
        if deliver is not None:
            deliver(kind, body, frames)
            return
        link = self.paired.get(ident)
        if link is not None:
            w = self.lanes.get(ident)
            if kind == Kind.TASKS and w is not None:  # straight to its task process
                link.lane.send(protocol.message(kind, {**(body or {}), "lane": w.epoch}, frames))
                return
            link.stream.send(protocol.message(kind, body, frames))
            return
        if sock is None:
            return  # a pool worker whose socket pair has closed: it is gone
        try:
            sock.send_multipart([ident, *protocol.message(kind, body, frames)], copy=False)
        except zmq.ZMQError as exc:  # the peer has gone (ROUTER_MANDATORY)
            if exc.errno != zmq.EHOSTUNREACH:
                raise

    # -- time-driven work --------------------------------------------------------

    def housekeeping(self) -> None:
        now = time.monotonic()
        if self.pool and now - self.last_reap >= 0.1:
            self.last_reap = now
            self.reap_pool()
        if now - self.last_beat < self.heartbeat:
            return
        self.last_beat = now
        limit = self.heartbeat * self.liveness
        for w in self.workers.values():
            self.send(self.workers_sock, w.ident, Kind.HEARTBEAT)
        for c in list(self.clients.values()):
            # The embedded broker shares its client's process: silence there means
            # a busy interpreter (the GIL held), not a dead client.
            if now - c.last_seen > limit and not self.embedded:
                self.log(f"client {c.ident!r} went silent; dropping its tasks")
                self.client_gone(c)
            else:
                self.send(self.clients_sock, c.ident, Kind.HEARTBEAT)
        for w in list(self.workers.values()):
            # Workers' supervisors never run user code, so silence means the
            # process or its host is gone (or stopped), busy or not.
            if now - w.last_seen > limit:
                self.worker_gone(w, f"worker {w.name} (pid {w.pid} on {w.host}) went silent for {limit:g} s")
                if self.pool and w.pid in self.pool.procs:
                    self.pool.kill(w.pid)  # hung or stopped: make room for a replacement
            elif self.stalled(w, now):
                stall = self.heartbeat * STALL_BEATS
                self.refuse(self.workers_sock, w.ident, w, f"it held {len(w.assigned)} task(s) for {stall:g} s "
                                                           "without starting any; they go to other workers")
                self.worker_gone(w, None)  # its tasks never started: back to the queue, no attempt counted
        self.told_unknown = {ident: t for ident, t in self.told_unknown.items() if now - t < self.heartbeat}
        self.complain.tick()

    def stalled(self, w: WorkerState, now: float) -> bool:
        """Does a remote worker sit on tasks it received, none of them begun, while it reports
        no progress (a worker busy with a long task has begun it; one preparing says so)?"""
        if w.paired or not w.assigned or now - w.progress_at <= self.heartbeat * STALL_BEATS:
            return False
        return not any(self.tasks[gid].started for gid in w.assigned if gid in self.tasks)

    def reap_pool(self) -> None:
        for exited in self.pool.reap():
            for w in list(self.workers.values()):
                if w.pid == exited.pid:
                    how = exit_words(exited.returncode)
                    self.worker_gone(w, f"worker {w.name} (pid {w.pid} on {w.host}) {how}")
        # Replace workers on demand: one that left when idle (idle_timeout) comes
        # back only when there is work for it.
        if self.queue:
            self.pool.fill()

    def status(self) -> tuple[dict[str, Any], list]:
        """STATUS_REPLY's header and payload: counts, then one JSON frame of worker records
        (every connected worker, and the most recent of those that left), which no header
        limit bounds."""
        workers = [w.summary() for w in (*self.departed, *self.workers.values())]
        running = sum(1 for t in self.tasks.values() if t.started)
        counts = {"queued": len(self.tasks) - running, "running": running, "connected": len(self.workers),
                  "departed": self.departures}
        return counts, [json.dumps(workers, separators=(",", ":")).encode()]

    def close(self) -> None:
        for w in list(self.workers.values()):
            self.send(self.workers_sock, w.ident, Kind.SHUTDOWN)
        deadline = time.monotonic() + 1.0
        for link in self.paired.values():
            link.stream.drain_output(max(0.0, deadline - time.monotonic()))
        if self.pool:
            # A worker still starting up has not said HELLO, so it gets no SHUTDOWN:
            # end it now rather than after the pool's grace period. It holds no task.
            registered = {w.pid for w in self.workers.values()}
            for pid in list(self.pool.procs):
                if pid not in registered:
                    self.pool.kill(pid)
            self.pool.stop()
        for link in self.paired.values():
            link.stream.close()
        for sock in self.routers:
            sock.close()


def _raise_descriptor_limit() -> None:
    """A listening broker holds a descriptor per connected peer: let it have as many as the
    system allows this user (the soft limit, often 1,024, is raised to the hard one), so
    that peers which connect and idle do not lock real clients out so soon."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, OSError, ValueError):
        pass


_MALFORMED = (ProtocolError, KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError)


def _check_task(c: ClientState, entry: list, frames: list) -> None:
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


def _retries(body: dict) -> int:
    retries = body.get("retries", DEFAULT_RETRIES)
    if type(retries) is not int or not 0 <= retries <= protocol.MAX_RETRIES:
        raise ProtocolError(f"bad retries {retries!r:.40}")
    return retries


def _seconds(value: Any) -> float:
    return protocol.seconds(value, "number of seconds")


def _lane_window(w: WorkerState) -> int:
    """How many tasks to put on a lane at once: the one running, and while tasks are short
    (they can no longer be cancelled there), enough for CREDIT_HORIZON seconds of work."""
    if w.task_time is None or w.task_time > tuning.PIPELINE_TASK_TIME:
        return 1
    return max(2, min(tuning.PIPELINE_TASKS, int(tuning.CREDIT_HORIZON / max(w.task_time, 1e-6))))


def _count(value: Any) -> int:
    if type(value) is not int or value < 0 or value > 1_000_000:
        raise ProtocolError(f"bad count {value!r:.40}")
    return value
