"""What the broker keeps: a record per task, per worker, per client, and what each client is owed this turn."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..config import CACHE_SIZE as DEFAULT_CACHE  # a worker that says nothing of its cache
from ..config import RETRIES as DEFAULT_RETRIES  # a client that says nothing of them
from ..wire import protocol
from ..wire.lane import Lane
from ..wire.poller import POLLIN
from ..wire.protocol import Status
from ..wire.stream import Stream


class _InMore:
    """A field of ``Task.more`` read as the task's own (its default while the task has no
    ``more``) and written so (``more`` made on first write)."""

    def __init__(self, default: Any):
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, task: Any, owner: type | None = None) -> Any:
        if task is None:
            return self
        return self.default if task.more is None else getattr(task.more, self.name)

    def __set__(self, task: Any, value: Any) -> None:
        setattr(task.extra(), self.name, value)


@dataclass(slots=True)
class Task:
    """A task the broker holds, from SUBMIT to its one outcome: where it is, and how often it ran.

    What few tasks need (dependencies, a kill on a lane, a record of earlier attempts) is
    in ``more``, made on first use, so that a million queued tasks stay small; read it
    through the fields below, or test ``more`` first where every task passes."""

    gid: int
    client: bytes
    cid: int
    frames: tuple  # its payload; a spill.Spilled handle while on disk (read it with Spill.outgoing)
    options: dict
    attempts: int = 0
    worker: bytes | None = None
    # False until it begins; then when it began (time.monotonic(), for status), or True where that is
    # not known (a task whose RESULT was also its STARTED, one taken back from a lost worker).
    started: float = False
    killed: bool = False  # a kill was asked for: never retried
    cancelling: bool = False  # the client awaits a cancel verdict from the worker holding it
    # Its priority, what it asks of a worker, its rank when handed back, why it is unschedulable
    # (demand.Place); None for a task of priority 0 that asks nothing.
    place: Any = None
    more: TaskMore | None = None

    @property
    def reason(self) -> str | None:
        """Why no connected worker could ever run it (unplaced.py); None: one could."""
        return None if self.place is None else self.place.reason

    def extra(self) -> TaskMore:
        """Its ``more``, made now if it has none."""
        more = self.more
        if more is None:
            more = self.more = TaskMore()
        return more

    # The fields of ``more``, read and written as the task's own (``_InMore``).
    deps = _InMore(None)  # the results it takes, in argument order: held task ids, or inline frames
    waiting = _InMore(0)  # how many of the tasks it depends on have not succeeded yet
    dependents = _InMore(None)  # the ids of the tasks waiting for it (dependencies.py)
    kill_with = _InMore(None)  # (signal, grace): killed on a lane before it began: stop it when it does


@dataclass(slots=True)
class TaskMore:
    """The fields of a ``Task`` that few tasks need (``Task.more``)."""

    deps: tuple | None = None
    waiting: int = 0
    dependents: list | None = None
    kill_with: tuple | None = None
    # Its record across attempts (taskrecord.py): the worker its last ended attempt ran on, and why
    # each earlier begun attempt ended.
    ran_on: Any = None
    tries: list | None = None
    weight: int = 0  # its payload's bytes, counted by the broker's Spill (spill.py); 0: not counted


@dataclass
class WorkerState:
    """A connected worker: what it holds and may take, how it has done, and, on a lane, where its
    task process is."""

    ident: bytes
    name: str = "?"
    host: str = "?"
    pid: int = 0
    fresh: bool = False
    credit: int = 0
    assigned: dict = field(default_factory=dict)  # gid -> the resources it holds (None: none), in dispatch order
    resources: dict | None = None  # what it has (HELLO's "resources"); None: nothing named
    free: dict = field(default_factory=dict)  # what of them no task it holds has asked for
    queues: frozenset = frozenset((protocol.DEFAULT_QUEUE,))  # the named queues it serves
    group: tuple | None = None  # the processes of one corral worker share ``free`` (demand.Groups)
    tasks: int = 0
    busy: float = 0.0
    errors: int = 0
    last_seen: float = 0.0
    alive: bool = True
    paired: bool = False  # one of our own pool's workers, on a socket pair
    user: str | None = None  # its CurveZMQ key's ZAP User-Id ("worker:NAME:KEY"); None on a plain link
    session: str | None = None  # a remote worker's token, to resume on a new connection (sessions.py)
    progress_at: float = 0.0  # when it last began or ended a task, or said it was preparing to
    # A worker whose task process reads its tasks from a lane (in Broker.lanes; see Lane):
    epoch: int | None = None  # the task process's, while it reads its lane (None: restarting)
    head_since: float = 0.0  # when the oldest task it holds began
    head_reported: bool = False  # STARTED sent for it
    answered: int = 0  # results its task process sent (its tasks begun, less those running or unsent)
    stopping: int = 0  # the task whose process we asked the worker to stop
    stop_reason: str = ""  # why: "timeout" or "killed"
    task_time: float | None = None  # moving average of how long its tasks take
    # Its lifetime (worker/lifetime.py): when it must end, why it drains (LEAVING), why it went.
    ends_at: float | None = None  # monotonic: its hard end, from HELLO's "ends_in" (a job's walltime)
    leaving: str | None = None  # LEAVING's reason: it takes nothing more
    left: str | None = None  # why it went: BYE's or LEAVING's reason, "shutdown", "refused" or "lost"
    # The model of its cache of large objects (objects.py): key -> size, least recently used first.
    objects: OrderedDict = field(default_factory=OrderedDict)
    object_bytes: int = 0
    cache_size: int = DEFAULT_CACHE
    # For status (statusview.py): when it joined and left (monotonic), and the resident memory it last
    # reported, its task processes' included (HEARTBEAT's "rss"; None: not reported).
    joined: float = 0.0
    gone_at: float | None = None
    rss: int | None = None

    def summary(self, now: float) -> dict[str, Any]:
        """Its record in a STATUS_REPLY."""
        return {
            "worker": self.name,
            "host": self.host,
            "pid": self.pid,
            "fresh": self.fresh,
            "tasks": self.tasks,
            "busy_s": round(self.busy, 6),
            "errors": self.errors,
            "alive": self.alive,
            "leaving": self.leaving,
            "left": self.left,
            "ends_in": None if self.ends_at is None or not self.alive else round(max(0.0, self.ends_at - now), 3),
            "resources": self.resources,
            "queues": sorted(self.queues),
        }


@dataclass(slots=True)
class PoolLink:
    """A worker the pool started, connected to us by a socket pair (and, persistent, a lane)."""

    pid: int
    stream: Stream
    flags: int = POLLIN  # what the poller watches it for
    lane: Lane | None = None
    lane_flags: int = POLLIN


@dataclass
class ClientState:
    """A connected client: its tasks by its own ids, and how often they may be retried."""

    ident: bytes
    retries: int = DEFAULT_RETRIES
    last_seen: float = 0.0
    tasks: dict = field(default_factory=dict)  # cid -> gid
    user: str | None = None  # its CurveZMQ key's ZAP User-Id ("client:NAME:KEY"); None on a plain link
    session: str | None = None  # a client elsewhere's token, to resume on a new connection (sessions.py)
    sent: Any = None  # its results sent lately (wire/resend.SentResults), to send again on a resume
    dropped: dict = field(default_factory=dict)  # cid -> when: its cancels that succeeded, lately
    local: bool = False  # attached in this process (an executor's own broker): its messages are ours
    # For status (statusview.py): its tasks that ended (results sent), failed (of those), and were
    # cancelled before they ran.
    ended: int = 0
    failed: int = 0
    cancelled: int = 0


class Outbox:
    """Messages to one client, accumulated during a loop turn and sent as one batch each."""

    def __init__(self) -> None:
        self.results: list = []
        self.frames: list = []
        self.started: list = []
        self.dropped: list = []  # cancel verdicts: dropped before they ran
        self.too_late: list = []  # cancel verdicts: too late, they ran (or run)
        # reason (None: no longer) -> ids of queued tasks no worker could run (unplaced.py); made on first use
        self.unplaced: dict | None = None

    def unplace(self, reason: str | None, cid: int) -> None:
        """No connected worker could ever run a queued task, for ``reason`` (None: now one could)."""
        if self.unplaced is None:
            self.unplaced = {}
        self.unplaced.setdefault(reason, []).append(cid)

    def result(self, cid: int, status: Status, frames: list, meta: dict) -> None:
        """A task's outcome, for this turn's RESULT to the client."""
        self.results.append(protocol.result_entry(cid, status, len(frames), meta))
        self.frames.extend(frames)
