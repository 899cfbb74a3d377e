"""What the broker says when asked STATUS (``StatusView``, a part of ``Broker``).

::

    task ends ------> finish(): a failure counted          (per task: one test)
    turn's flush ---> note_outcomes(): the turn's RESULT   (per client and turn: two counters,
                      entries counted and kept in ``recent``  one list append)
    heartbeat ------> sample_rates(): (time, ended, failed) kept for the rates
    STATUS ---------> status(): everything else, computed now: workers' states and running
                      tasks, queued tasks by queue and priority, recent outcomes as events,
                      the asking client's fellow clients

The ordinary task pays for none of the rest: queues are counted, events built and
workers described only when someone asks.  What is kept is bounded: about
``MAX_EVENTS`` recent outcomes (the RESULT entries the clients were sent, meta and
all, never payloads), and a few samples for the rates.

A client sees the ids of its own tasks, and of the tasks of clients that connected
with the same CurveZMQ key (the same ZAP User-Id): another client's task shows as
null, in running tasks and events alike (``scope``).  The broker never unpickles: an
event's error text is the worker's ``traceback`` meta (docs/protocol.md), or the
failure's message.

An executor's own broker may also answer STATUS on a status socket
(``Executor(status_file=...)``): an ipc:// ROUTER in a private directory, which
answers HELLO, HEARTBEAT and STATUS only (with the executor's own view) and refuses
anything else.  It is polled every tenth of a second from ``housekeeping``, not in
the loop's poll, so that the ordinary turn does not pay for it.
"""

from __future__ import annotations

import json
import socket
import time
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from operator import itemgetter
from typing import Any

import zmq

from ..errors import ProtocolError
from ..status import MAX_EVENTS
from ..wire import protocol, sockets
from ..wire.protocol import Kind, Status
from .records import ClientState, WorkerState

TRIM_AT = 2 * MAX_EVENTS  # recent outcomes gathered before the oldest beyond MAX_EVENTS are dropped
MAX_ERROR_TEXT = 4096  # characters of an event's error text: its tail, where a traceback says what was raised
RATE_WINDOW = 10.0  # seconds the rates are taken over
RATE_SAMPLES = 24  # samples kept, about one a second
MAX_STATUS_SOCKET_MESSAGES = 100  # read from the status socket per poll
FAILED_STATES = {protocol.ERR_WORKER_LOST: "lost", protocol.ERR_KILLED: "killed", protocol.ERR_TIMEOUT: "timeout"}


class StatusView:
    """The status half of ``Broker``: counters kept as tasks end, and STATUS_REPLY built when asked."""

    def start_view(self) -> None:
        """The counters and rings, empty (from ``Broker.__init__``)."""
        # Tasks whose outcome was sent to their client: ``ended_before`` plus ``recent_count``.
        self.ended_before = 0  # those that have left ``recent``
        self.failures = 0  # of those, the ones that did not succeed
        # [client identity, RESULT entries, wall-clock time, their events as JSON (made when first asked)]:
        # the latest batches, at least MAX_EVENTS entries once there were as many
        self.recent: list = []
        self.recent_count = 0  # entries in ``recent``
        self.gone_scopes: dict[bytes, str] = {}  # clients with a key that left lately: identity -> User-Id
        self.samples: deque = deque(maxlen=RATE_SAMPLES)  # (monotonic, ended, failures)
        self.status_sock: zmq.Socket | None = None
        self.host = socket.gethostname()

    # -- as tasks end ------------------------------------------------------------

    def count_failure(self, client: bytes) -> None:
        """A task of ``client`` ended without a value (raised, failed, lost, killed, timed out)."""
        self.failures += 1
        c = self.clients.get(client)
        if c is not None:
            c.failed += 1

    def note_outcomes(self, ident: bytes, results: list) -> None:
        """This turn's RESULT entries for client ``ident``: counted, and kept as recent events."""
        n = len(results)
        c = self.clients.get(ident)
        if c is not None:
            c.ended += n
        self.recent.append([ident, results, time.time(), None])
        self.recent_count += n
        if self.recent_count >= TRIM_AT:
            self.trim_recent()

    def trim_recent(self) -> None:
        """Forget the oldest batches beyond MAX_EVENTS entries (at once, once TRIM_AT have gathered: the
        ordinary turn pays nothing for it)."""
        recent = self.recent
        sizes = list(accumulate(map(len, map(itemgetter(1), recent))))
        cut = bisect_right(sizes, sizes[-1] - MAX_EVENTS)  # the batches to drop: MAX_EVENTS entries or more stay
        if cut:
            dropped = sizes[cut - 1]
            del recent[:cut]
            self.recent_count -= dropped
            self.ended_before += dropped

    def ended(self) -> int:
        """Tasks whose outcome was sent to their client, since the broker started."""
        return self.ended_before + self.recent_count

    def note_client_gone(self, c: ClientState) -> None:
        """A client left: its recent events stay visible to its key's clients (the last 1,000 such)."""
        if c.user is not None:
            self.gone_scopes[c.ident] = c.user
            if len(self.gone_scopes) > MAX_EVENTS:
                del self.gone_scopes[next(iter(self.gone_scopes))]

    def scope_of_ident(self, ident: bytes) -> Any:
        """What a batch of ``ident``'s outcomes is seen under: its client's key's User-Id, or its identity."""
        c = self.clients.get(ident)
        return _scope_of(c) if c is not None else self.gone_scopes.get(ident, ident)

    def sample_rates(self, now: float) -> None:
        """Once a heartbeat: how many tasks had ended by now (about one sample a second is kept)."""
        if not self.samples or now - self.samples[-1][0] >= 0.9:
            self.samples.append((now, self.ended(), self.failures))

    # -- when asked --------------------------------------------------------------

    def scope(self, c: ClientState | None) -> set:
        """Whose task ids the viewer ``c`` may see (None: the executor's status socket, which sees its
        executor's): clients with its CurveZMQ key, or itself on a plain link."""
        if c is None or c.local:
            return {other.ident for other in self.clients.values() if other.local}
        return {c.user} if c.user is not None else {c.ident}

    def status(self, scope: frozenset | set = frozenset(), body: dict | None = None) -> tuple[dict[str, Any], list]:
        """STATUS_REPLY's header (counts) and frames: the worker records (JSON), then the rest of the
        status (JSON: rates, queues, events, clients, workers starting), as ``scope`` may see it (by
        default no client's tasks: their ids null, no events)."""
        want = (body or {}).get("events", 0)  # (a STATUS that asks for none stays small)
        if type(want) is not int or not 0 <= want <= MAX_EVENTS:
            raise ProtocolError(f"STATUS asks for {want!r:.20} events (0 to {MAX_EVENTS})")
        now, wall = time.monotonic(), time.time()
        visible = {ident for ident, c in self.clients.items() if _scope_of(c) in scope}
        records = [self.worker_record(w, now, visible) for w in (*self.departed, *self.workers.values())]
        running = sum(1 for t in self.tasks.values() if t.started)
        waiting = self.waiting_tasks
        counts = {"queued": len(self.tasks) - running - waiting, "running": running, "waiting": waiting,
                  "held": len(self.held), "connected": len(self.workers), "departed": self.departures,
                  # (a failure is counted as it ends, its result with the turn's others: never below 0)
                  "done": max(0, self.ended() - self.failures), "failed": self.failures}
        counts.update(self.unplaced.counts(self, now))
        if self.objects or self.object_bytes_sent:
            counts["objects"] = self.objects_status()
        if self.fleet:
            counts["launches"] = self.fleet.report()
        more = {"time": wall, "rate": self.rates(now), "queues": self.queued_by_queue(),
                "clients": self.fellow_clients(visible), "starting": self.starting()}
        events = self.events(scope, want) if want else []
        return counts, [_json(records), _json(more)[:-1] + b',"events":[' + b",".join(events) + b"]}"]

    def worker_record(self, w: WorkerState, now: float, visible: set) -> dict[str, Any]:
        """A worker's record: ``WorkerState.summary``, with its state, what it runs now and for how
        long (the task's id if ``visible`` holds its client), its busy share and its memory."""
        record = w.summary(now)
        running = []
        busy_now = 0.0
        if w.alive:
            lane_head = next(iter(w.assigned), None) if w.ident in self.lanes else None
            for gid in w.assigned:
                task = self.tasks.get(gid)
                if task is None or not task.started:
                    continue
                since = (task.started if task.started is not True else w.head_since if gid == lane_head else None)
                took = None if since is None else round(max(0.0, now - since), 3)
                busy_now += took or 0.0
                running.append({"task": task.cid if task.client in visible else None, "for_s": took})
        span = (w.gone_at if w.gone_at is not None else now) - w.joined
        share = min(1.0, (w.busy + busy_now) / span) if span > 0 else 0.0
        state = ("gone" if not w.alive else "leaving" if w.leaving else "busy" if running else "idle")
        record.update(state=state, running=running, busy_share=round(share, 4), rss=w.rss)
        return record

    def rates(self, now: float) -> dict[str, float]:
        """Tasks done and failed per second over about the last RATE_WINDOW seconds."""
        base = None
        for sample in self.samples:  # the newest at least RATE_WINDOW old, else the oldest
            if base is None or now - sample[0] >= RATE_WINDOW:
                base = sample
        if base is None:
            return {"done_per_s": 0.0, "failed_per_s": 0.0}
        span = max(1.0, now - base[0])  # (a broker that just started: over its first second)
        failed = self.failures - base[2]
        done = max(0, self.ended() - base[1] - failed)
        return {"done_per_s": round(done / span, 3), "failed_per_s": round(failed / span, 3)}

    def queued_by_queue(self) -> dict[str, dict]:
        """Tasks not begun and not waiting for others, by queue, then by priority (JSON keys); every queue
        a connected worker serves is listed, with 0 if nothing waits there."""
        queues: dict[str, dict] = {}
        for w in self.workers.values():
            for name in w.queues:
                queues.setdefault(name, {"queued": 0, "priorities": {}})
        for task in self.tasks.values():
            if task.started or (task.more is not None and task.more.waiting):
                continue
            place = task.place
            name = protocol.DEFAULT_QUEUE if place is None or place.demand is None else place.demand.queue
            priority = "0" if place is None else str(place.priority)
            entry = queues.setdefault(name, {"queued": 0, "priorities": {}})
            entry["queued"] += 1
            entry["priorities"][priority] = entry["priorities"].get(priority, 0) + 1
        return queues

    def events(self, scope: set, most: int) -> list[bytes]:
        """The latest ``most`` task outcomes of the clients in ``scope``, the newest last, each as JSON.
        A batch's events are made once, when first asked for: asking again costs a join."""
        out: list[bytes] = []
        seen: dict[bytes, bool] = {}
        for batch in reversed(self.recent):
            ident = batch[0]
            shown = seen.get(ident)
            if shown is None:
                shown = seen[ident] = self.scope_of_ident(ident) in scope
            if not shown:
                continue
            encoded = batch[3]
            if encoded is None:
                at = batch[2]
                encoded = batch[3] = [_json(_event(entry, at)) for entry in batch[1]]
            out.extend(reversed(encoded))
            if len(out) >= most:
                del out[most:]
                break
        return out[::-1]

    def fellow_clients(self, visible: set) -> list[dict]:
        """The clients whose tasks the viewer sees, with what each has submitted and how it went."""
        out = []
        for ident in sorted(visible):
            c = self.clients[ident]
            ended = c.ended
            running = queued = 0
            for gid in c.tasks.values():
                task = self.tasks.get(gid)
                if task is None:
                    continue
                if task.started:
                    running += 1
                elif not (task.more is not None and task.more.waiting):
                    queued += 1
            name = "local" if c.local else c.user.split(":")[1] if c.user else "plain"
            out.append({"client": name, "id": ident.hex()[-8:],
                        "submitted": ended + c.cancelled + len(c.tasks), "done": max(0, ended - c.failed),
                        "failed": c.failed, "cancelled": c.cancelled, "queued": queued, "running": running})
        return out

    def starting(self) -> list[dict]:
        """The pool's worker processes that have not said HELLO yet."""
        if not self.pool:
            return []
        known = {w.pid for w in self.workers.values()}
        return [{"worker": None, "host": self.host, "pid": pid, "state": "starting", "running": [], "tasks": 0,
                 "busy_s": 0.0, "busy_share": 0.0, "rss": None, "errors": 0, "left": None, "resources": None,
                 "queues": []} for pid in self.pool.procs if pid not in known]

    # -- an executor's status socket -------------------------------------------------

    def open_status_socket(self, address: str) -> None:
        """Answer STATUS (and nothing else) on an ipc:// ROUTER at ``address`` too."""
        self.status_sock = sockets.router(self.ctx, address)

    def serve_status_socket(self) -> None:
        """What waits on the status socket: HELLO gets WELCOME, STATUS the executor's status, any
        other kind is refused (and logged)."""
        sock = self.status_sock
        for _ in range(MAX_STATUS_SOCKET_MESSAGES):
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(msg) < 2:
                continue
            ident = msg[0]
            try:
                kind, body = protocol.decode(msg[1])
                if kind == Kind.HELLO:
                    reply = [protocol.encode(Kind.WELCOME, {"heartbeat": self.heartbeat, "liveness": self.liveness})]
                elif kind == Kind.STATUS:
                    counts, frames = self.status(self.scope(None), body)
                    reply = [protocol.encode(Kind.STATUS_REPLY, counts), *frames]
                elif kind in (Kind.HEARTBEAT, Kind.BYE):
                    continue
                else:
                    raise ProtocolError(f"the status socket answers STATUS only, not {kind.name}")
            except (ProtocolError, ValueError) as exc:
                self.complain(f"refused a message on the status socket: {exc}")
                reply = [protocol.encode(Kind.ERROR, {"code": protocol.REFUSED, "message": f"refused: {exc}"})]
            try:
                sock.send_multipart([ident, *reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # it has gone, or does not read: a status request is not worth waiting for

    def close_status_socket(self) -> None:
        if self.status_sock is not None:
            self.status_sock.close(linger=0)
            self.status_sock = None


def _scope_of(c: ClientState) -> Any:
    """What a client's outcomes are kept under: its key's User-Id, or (a plain link) its identity."""
    return c.user if c.user is not None else c.ident


def _event(entry: list, at: float) -> dict[str, Any]:
    """A RESULT entry [cid, status, nframes, meta] as a status event; ``at``: when it was sent."""
    cid, status, _, meta = entry
    record = protocol.read_record(meta) if isinstance(meta, dict) else {}
    error = None
    if status == Status.OK:
        state = "done"
    elif status == Status.RAISED:
        state = "failed"
        error = meta.get("traceback") if isinstance(meta, dict) else None
        error = error if isinstance(error, str) else "the task raised an exception"
    else:
        code = meta.get("error") if isinstance(meta, dict) else None
        state = FAILED_STATES.get(code, "failed")
        message = meta.get("message") if isinstance(meta, dict) else None
        error = message if isinstance(message, str) else str(code)
    if error is not None and len(error) > MAX_ERROR_TEXT:
        error = "..." + error[-(MAX_ERROR_TEXT - 3):]
    return {"task": cid, "worker": record.get("worker"), "host": record.get("host"),
            "started": record.get("started"), "finished": record.get("finished") or round(at, 6),
            "state": state, "error": error}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
