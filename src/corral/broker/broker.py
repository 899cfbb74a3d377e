"""The broker role: the one place that knows where every task is.

::

    clients --DEALER--> ROUTER clients_sock          ROUTER workers_sock <--DEALER-- workers
    (embedded: attach()                                  socket pairs <--Stream-- its pool's workers
     and method calls)   |                                    ^
                         v                                    |
                  tasks{gid: Task}  --> queue (prio) --> dispatch to workers with credit
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
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import zmq

from ..config import HEARTBEAT, LIVENESS
from ..errors import ProtocolError
from ..local.pool import LocalPool
from ..logs import Throttle, logger
from ..security.guard import Guard
from ..security.keys import KeyDir, MemoryKeys
from ..tuning import BACKLOG_RETRY, DRAIN_LIMIT
from ..wire import chunks, largebuf, poller, protocol, sockets
from ..wire.poller import POLLIN, POLLOUT
from ..wire.protocol import Kind
from . import scheduler
from .backlog import Backlogs
from .demand import Groups
from .dependencies import Dependencies, Held
from .housekeeping import Housekeeping
from .lanes import LaneSeats, lane_window
from .objects import ObjectStore, Stored
from .pairs import PoolLinks
from .peers import MALFORMED, Peers
from .progress import Reports
from .queue import TaskQueue
from .records import DEFAULT_RETRIES, ClientState, Outbox, PoolLink, Task, WorkerState
from .sessions import Sessions
from .spill import Spill
from .statusview import StatusView
from .unplaced import Unplaced

if TYPE_CHECKING:
    from ..scaling.fleet import Fleet
from .tasks import TaskTable

__all__ = ["DEFAULT_RETRIES", "Broker"]

MAX_DEPARTED = 64  # departed workers whose records the status keeps (the most recent)


class Broker(Peers, TaskTable, Dependencies, ObjectStore, LaneSeats, PoolLinks, Sessions, Reports, StatusView,
             Housekeeping):
    """The broker: one loop over every socket, which hands each message to the part it concerns
    (``peers.py``, ``tasks.py``, ``dependencies.py``, ``lanes.py``, ``pairs.py``, ``sessions.py``,
    ``progress.py``, ``output.py``), dispatches
    (``scheduler.py``), answers STATUS (``statusview.py``), keeps time (``housekeeping.py``),
    then sends what each peer is owed this turn, one batch each."""

    def __init__(
        self,
        client_address: str | None,
        worker_address: str | None = None,
        *,
        context: zmq.Context | None = None,
        pool: LocalPool | None = None,
        heartbeat: float = HEARTBEAT,
        liveness: int = LIVENESS,
        embedded: bool = False,
        keys: KeyDir | MemoryKeys | None = None,
        insecure: bool = False,
        fleet: Fleet | None = None,
        log=None,
        spill: Spill | None = None,
    ):
        # A CurveZMQ broker's ZAP handler serves its whole context, and a context has room for one:
        # without a context of the caller's, such a broker makes its own (and ends it when it closes).
        self.own_ctx = context is None and keys is not None
        self.ctx = context or (zmq.Context() if self.own_ctx else zmq.Context.instance())
        if not embedded:  # a standalone broker relays large messages one after another (largebuf.py)
            largebuf.reuse()
        self.log = log or logger("broker").warning
        self.complain = Throttle(self.log)  # for what peers send wrong: never a flood of lines
        # Every TCP listener speaks CurveZMQ with the keys of ``keys`` (security/), unless ``insecure``.
        self.guard = Guard(self.ctx, keys, insecure, self.complain)
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
        for monitor in self.guard.monitors:
            self.poller.register(monitor, POLLIN)
        self.paired: dict[bytes, PoolLink] = {}  # the pool's workers on socket pairs, by identity
        self.lanes: dict[bytes, WorkerState] = {}  # those of them whose task process reads a lane
        self.pool = pool
        self.fleet = fleet  # launched workers, scaled with the work (scaling/fleet.py)
        if pool is not None and pool.address is None:
            pool.connect = self.adopt
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.embedded = embedded
        self.told_unknown: dict[bytes, float] = {}  # unknown peers answered ERROR, and when (one a heartbeat)
        self.tasks: dict[int, Task] = {}
        self.queue = TaskQueue(self.tasks)  # by priority, then first in first out (queue.py)
        self.held: dict[int, Held] = {}  # results kept for the tasks that take them (dependencies.py)
        self.waiting_tasks = 0  # tasks waiting for others to succeed, not queued yet (dependencies.py)
        self.unplaced = Unplaced()  # queued tasks no connected worker could ever run (unplaced.py)
        self.groups = Groups()  # worker processes that share their resources (demand.py)
        self.objects: dict[str, Stored] = {}  # large objects by key (objects.py)
        self.object_bytes = 0  # their size
        self.object_bytes_sent = 0  # bytes of objects sent to workers
        self.workers: dict[bytes, WorkerState] = {}
        self.sessions: dict[str, bytes] = {}  # remote workers' session tokens -> identity (sessions.py)
        self.departed: deque[WorkerState] = deque(maxlen=MAX_DEPARTED)
        self.departures = 0
        self.clients: dict[bytes, ClientState] = {}
        self.outboxes: dict[bytes, Outbox] = {}
        self.backlogs = Backlogs()  # what peers that are not reading are owed (backlog.py)
        self.spill = spill or Spill(log=self.log)  # queued payloads past a memory budget go to disk (spill.py)
        self.next_gid = 1
        self.interned: dict[bytes, bytes] = {}
        self.local: dict[bytes, Callable] = {}  # attached clients in this thread: ident -> deliver
        self.broken: str | None = None
        self.running = True
        self.last_beat = 0.0
        self.last_reap = 0.0
        self.deferred = False  # messages were left unread to spill first (drain)
        self.start_view()  # what status reports: counters, recent outcomes, rates (statusview.py)

    def _router(self, address: str) -> zmq.Socket:
        """A ROUTER bound to ``address`` (``wire.sockets``; a CurveZMQ one for TCP, ``Guard``), with as
        many descriptors as we may have."""
        _raise_descriptor_limit()
        return self.guard.router(address)

    # -- the loop ------------------------------------------------------------

    def poll_timeout(self) -> float:
        """Seconds the loop may sleep: a pool is checked for exited workers every 0.1 s, and
        a lane's oldest task when it is due a STARTED or its timeout."""
        timeout = 0.1 if self.pool or self.fleet else self.heartbeat / 2
        if self.backlogs:
            timeout = min(timeout, BACKLOG_RETRY)
        if self.spill.work and self.spill.pending():
            return 0.0  # more to spill, or messages left unread meanwhile
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
        """Start the pool's workers, if there is a pool; remove dead brokers' spill directories."""
        self.spill.start()
        if self.pool:
            self.pool.fill()

    def step(self, events) -> None:
        """One turn of the loop: handle what arrived on the sockets in ``events``, then send."""
        for sock in self.routers:
            if sock in events:
                self.drain(sock)
        for monitor in self.guard.monitors:
            if monitor in events:
                self.guard.read_monitor(monitor)
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
        if self.spill.work:
            self.spill.turn()  # after dispatch, which may have taken what would have spilled
            if self.deferred:  # peers' messages wait unread: their silence is ours, not theirs
                self.deferred = False
                self.excuse_silence(time.monotonic())
        if self.lanes:
            self.lane_timers(time.monotonic())  # before the flush, which sends the STARTED it adds
        if self.backlogs:
            self.backlogs.retry()  # what is owed from earlier turns leaves first
        self.flush()
        self.housekeeping()
        self.watch_output()

    # -- the listening sockets -----------------------------------------------------

    def drain(self, sock: zmq.Socket, limit: int = DRAIN_LIMIT) -> None:
        """Handle the messages waiting on a ROUTER (at most ``limit``: the loop's other work goes on; none more
        while queued payloads over the memory budget wait to be spilled, which this turn does: ``spill.py``)."""
        spill = self.spill
        for _ in range(limit):
            if spill.held > spill.budget and spill.full():
                self.deferred = True  # this turn spills what arrived (step) before it reads more
                return
            try:
                msg = sockets.receive(sock)
            except zmq.Again:
                return
            try:
                self.handle(sock, msg)
            except MALFORMED as exc:
                self.complain(f"dropped malformed message from {msg[0].bytes!r}: {type(exc).__name__}: {exc}")
            if not sockets.more_waiting(sock):
                return

    def handle(self, sock: zmq.Socket, msg: list) -> None:
        """One message from a ROUTER: the sender's identity, then the protocol's frames; on a
        CurveZMQ ROUTER, the key that sent it (its User-Id) too."""
        if len(msg) < 2:
            raise ProtocolError("no header frame")
        if sock in self.guard.curve:
            if chunks.is_split(msg, 1):
                msg = chunks.join(msg, 1)
            user = sockets.user_id(msg[1])
        else:
            user = None
        self.receive(sock, msg[0].bytes, msg[1].bytes, msg[2:], user)

    def break_pool(self, message: str) -> None:
        """An initializer failed: fail everything, as ProcessPoolExecutor does."""
        if self.broken:
            return
        self.broken = message
        self.log(message.splitlines()[0])
        if self.pool:
            self.pool.accepting = False
        for task in list(self.tasks.values()):
            if task.gid in self.tasks:  # (a dependent fails with its dependency)
                self.fail(task, protocol.ERR_BROKEN, message)
        self.queue.clear()
        for w in list(self.workers.values()):
            self.send(self.workers_sock, w.ident, Kind.SHUTDOWN)

    # -- dispatch and output ---------------------------------------------------

    def dispatch(self) -> None:
        """Hand queued tasks to workers with room for them (``scheduler.assign``), one TASKS each."""
        if not self.queue.count:
            return
        for w in self.lanes.values():  # a lane's worker grants no credit: its window is ours to size
            w.credit = 0 if w.epoch is None else max(0, lane_window(w) - len(w.assigned))
        idle_lanes = [w for w in self.lanes.values() if w.credit and not w.assigned]
        now = time.monotonic()
        expected = self.pool.size if self.pool else self.fleet.expected() if self.fleet else 0
        given = scheduler.assign(self.queue, self.tasks, self.workers.values(), expected, now)
        for w, tasks in given:
            entries, frames = self.outgoing(w, tasks)  # (tasks.py)
            if entries:
                self.send(self.workers_sock, w.ident, Kind.TASKS, {"tasks": entries}, frames)
        for w in idle_lanes:
            if w.assigned:  # its task process begins the first of them now
                self.next_head(w, now)

    def flush(self) -> None:
        """Send each client what this turn owes it: STARTED, RESULT, then CANCELLED verdicts, and
        which of its queued tasks no connected worker could ever run (UNPLACED)."""
        for ident, box in self.outboxes.items():
            if box.unplaced:
                for reason, cids in box.unplaced.items():
                    for chunk in protocol.id_chunks(cids):
                        self.send(self.clients_sock, ident, Kind.UNPLACED, {"ids": chunk, "reason": reason})
            if box.started:
                for chunk in protocol.id_chunks(box.started):
                    self.send(self.clients_sock, ident, Kind.STARTED, {"ids": chunk})
            for chunk, frames in protocol.batches(box.results, box.frames, 2):
                self.send(self.clients_sock, ident, Kind.RESULT, {"results": chunk}, frames)
            if box.results or box.dropped:
                self.keep_sent(ident, box)  # a client elsewhere may ask for them again (sessions.py)
                if box.results:
                    self.note_outcomes(ident, box.results)  # counted, and kept a while for status
            if box.dropped or box.too_late:  # after the results, which they may refer to
                for dropped, running in itertools.zip_longest(
                    protocol.id_chunks(box.dropped), protocol.id_chunks(box.too_late), fillvalue=[]
                ):
                    self.send(self.clients_sock, ident, Kind.CANCELLED, {"ids": dropped, "running": running})
        self.outboxes.clear()

    def send(self, sock: zmq.Socket | None, ident: bytes, kind: Kind, body: dict | None = None,
             frames: list = ()) -> None:
        """One message to a peer: an attached client's callback, a pool worker's socket pair (TASKS for a lane go
        on its lane), or a ROUTER; a peer that has gone is skipped."""
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
        try:  # never blocks: what a known peer's full pipe refuses waits in its backlog
            msg = [ident, *protocol.message(kind, body, frames)]
            if frames and sock in self.guard.curve:
                msg = chunks.split(msg, 1)
            self.backlogs.send(sock, msg, self.knows)
        except zmq.ZMQError as exc:  # the peer has gone (ROUTER_MANDATORY)
            if exc.errno != zmq.EHOSTUNREACH:
                raise

    def knows(self, ident: bytes) -> bool:
        """Is ``ident`` a client or a worker the broker serves (one whose messages wait when it is slow)?"""
        return ident in self.clients or ident in self.workers

    def close(self) -> None:
        """Tell the workers to leave (launched ones for good), stop the pool or the fleet, close the sockets."""
        for w in list(self.workers.values()):
            if self.fleet:
                self.dismiss(w, "shutdown")  # a launched worker's job ends with it
            else:
                self.send(self.workers_sock, w.ident, Kind.SHUTDOWN)
        if self.fleet:
            for sock in self.routers:  # what we told them leaves before the jobs are ended
                sock.setsockopt(zmq.LINGER, 1000)
            self.fleet.close()
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
            if link.lane is not None:
                link.lane.close()
        for sock in self.routers:
            sock.close()
        self.close_status_socket()
        self.guard.close()
        self.spill.close()
        largebuf.trim(float("inf"))  # the buffers kept for reuse that nothing uses now
        if self.own_ctx:
            self.ctx.term()

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
