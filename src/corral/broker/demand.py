"""What a task asks of the worker that runs it (resources, a named queue), and what a worker has.

A worker says in HELLO what it has (``resources``: amounts by name, ``queues``: the
named queues it serves; docs/protocol.md); a task says in its options what it needs
(``resources``, ``queue``) and how urgent it is (``priority``).  The broker holds a
task's resources on its worker from assignment (a prefetched task included) until
the task's outcome, so that a worker never runs more than it has: what the worker
holds is kept in ``WorkerState.assigned`` (gid -> the resources it holds, None for
none) and its free amounts in ``WorkerState.free``.

A queue is not a resource: it has no amount, a worker serves any number of its
tasks at once, and a task goes to one queue by name (docs/tasks.md says which to use
for what).  These rules are checked here as the broker must: a peer's malformed
value raises ProtocolError.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ProtocolError
from ..wire import protocol

if TYPE_CHECKING:
    from .records import Task, WorkerState

SLACK = 1e-9  # fractions of a resource add up with rounding errors: 0.1 * 3 fits in 0.3


class Demand(NamedTuple):
    """What a task needs of its worker: a queue it serves, and amounts of resources, by name, sorted."""

    queue: str
    needs: tuple[tuple[str, float], ...]


class Place:
    """Where a task stands in the queue, beyond its id (``Task.place``; None for the ordinary task):
    its priority, its demand (None: no resources, the default queue), its rank in front of its
    priority once handed back (0: its id orders it), and why no connected worker could ever run it,
    since when (``unplaced.py``)."""

    __slots__ = ("demand", "priority", "rank", "reason", "stuck_since")

    def __init__(self, priority: int = 0, demand: Demand | None = None) -> None:
        self.priority, self.demand, self.rank = priority, demand, 0
        self.reason: str | None = None
        self.stuck_since = 0.0


def of_options(options: dict) -> Place | None:
    """A task's place, from its checked options (None: priority 0, no resources, the default queue)."""
    queue = options.get("queue", protocol.DEFAULT_QUEUE)
    needs = tuple(sorted(options.get("resources", {}).items()))
    demand = None if queue == protocol.DEFAULT_QUEUE and not needs else Demand(queue, needs)
    priority = options.get("priority", 0)
    return None if demand is None and not priority else Place(priority, demand)


def place_of(task: Task) -> Place:
    """A task's place, made now for an ordinary one (handed back, or found unschedulable)."""
    if task.place is None:
        task.place = Place()
    return task.place


def check_options(options: dict) -> None:
    """A SUBMIT entry's ``priority``, ``resources`` and ``queue``, as the protocol says; ProtocolError if not."""
    priority = options.get("priority", 0)
    if type(priority) is not int or abs(priority) > protocol.MAX_PRIORITY:
        raise ProtocolError(f"bad priority option {priority!r:.40}")
    if "resources" in options:
        amounts(options["resources"], "resources option")
    if "queue" in options:
        queue_name(options["queue"])


def amounts(value: Any, what: str) -> dict[str, float]:
    """A map of resource names to amounts > 0; ProtocolError if it is anything else."""
    if not isinstance(value, dict) or len(value) > protocol.MAX_RESOURCES:
        raise ProtocolError(f"bad {what}: not a map of at most {protocol.MAX_RESOURCES} resources")
    for name, amount in value.items():
        if not 0 < len(name) <= protocol.MAX_RESOURCE_NAME:
            raise ProtocolError(f"bad {what}: resource name {name!r:.40}")
        if (isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount)
                or not 0 < amount <= protocol.MAX_AMOUNT):
            raise ProtocolError(f"bad {what}: {name:.40} = {amount!r:.40}")
    return value


def queue_name(value: Any) -> str:
    """A queue's name; ProtocolError if it is not one."""
    if not isinstance(value, str) or not 0 < len(value) <= protocol.MAX_QUEUE_NAME:
        raise ProtocolError(f"bad queue name {value!r:.40}")
    return value


def capacity(body: dict) -> tuple[dict[str, float] | None, frozenset[str], str | None]:
    """A worker's HELLO: the resources it has (None: none), the queues it serves, the group it shares
    its resources with (None: none)."""
    resources = amounts(body["resources"], "HELLO resources") if "resources" in body else None
    queues = body.get("queues", [protocol.DEFAULT_QUEUE])
    if not isinstance(queues, list) or not 0 < len(queues) <= protocol.MAX_QUEUES:
        raise ProtocolError(f"bad HELLO queues: not a list of 1 to {protocol.MAX_QUEUES} names")
    group = body.get("group")
    if group is not None and (not isinstance(group, str) or not 0 < len(group) <= protocol.MAX_NAME):
        raise ProtocolError(f"bad HELLO group {group!r:.40}")
    return (dict(resources) if resources else None), frozenset(queue_name(q) for q in queues), group


def fits(demand: Demand | None, w: WorkerState) -> bool:
    """May ``w`` take a task of ``demand`` now: does it serve the queue, and are the resources free?"""
    if demand is None:
        return protocol.DEFAULT_QUEUE in w.queues
    if demand.queue not in w.queues:
        return False
    free = w.free
    return all(free.get(name, 0) + SLACK >= amount for name, amount in demand.needs)


def hold(w: WorkerState, task: Task) -> tuple | None:
    """Set aside on ``w`` what ``task`` needs, from now until its outcome; what was held (None: nothing).
    A task found unschedulable before is no longer: it has a worker."""
    place = task.place
    if place is None:
        return None
    place.reason = None
    if place.demand is None or not place.demand.needs:
        return None
    for name, amount in place.demand.needs:
        w.free[name] -= amount
    return place.demand.needs


def release(w: WorkerState, held: tuple | None) -> None:
    """Give back what ``hold`` set aside (its return value: a task's outcome came, or it left the worker)."""
    if held:
        for name, amount in held:
            w.free[name] += amount


def could_ever(demand: Demand | None, w: WorkerState) -> bool:
    """Could ``w`` run a task of ``demand`` when it is idle?"""
    if demand is None:
        return protocol.DEFAULT_QUEUE in w.queues
    have = w.resources or {}
    return demand.queue in w.queues and all(have.get(n, 0) + SLACK >= a for n, a in demand.needs)


def why_not(demand: Demand | None, workers: list[WorkerState]) -> str:
    """Why no worker of ``workers`` (all connected) could ever run a task of ``demand``, in words."""
    queue = protocol.DEFAULT_QUEUE if demand is None else demand.queue
    serving = [w for w in workers if queue in w.queues]
    if not serving:
        served = sorted({q for w in workers for q in w.queues})
        return (f"no connected worker serves queue {queue!r} (they serve: {', '.join(served) or 'nothing'}); "
                f"start one with corral worker --queue {queue}")
    lacking = []
    for name, amount in demand.needs:
        most = max((w.resources or {}).get(name, 0) for w in serving)
        if most + SLACK < amount:
            lacking.append(f"{name}={amount:g} (the most a worker has: {name}={most:g})")
    return (f"no connected worker has the resources it asks for: {', '.join(lacking) or 'not all at once'}; "
            "give a worker more with corral worker --resources, or ask for less")


class Groups:
    """Worker processes that share their resources: those of one ``corral worker`` (HELLO's ``group``).

    ``corral worker --resources gpu=1 --processes 8`` has one GPU for its eight processes, not
    eight: each process says the same ``group`` token, and the broker gives them one ``free``
    map, so what one of them holds the others cannot take.  A group belongs to one key (a
    peer cannot join another's), and lasts while one of its processes is connected."""

    def __init__(self) -> None:
        self.free: dict[tuple, dict] = {}
        self.members: dict[tuple, int] = {}

    def join(self, w: WorkerState, token: str | None) -> None:
        """``w`` shares the free resources of the group named ``token`` (a new group: its own)."""
        if token is None or w.resources is None:
            return
        key = (w.user, token)
        if key in self.free:
            w.free = self.free[key]
        else:
            self.free[key] = w.free
        self.members[key] = self.members.get(key, 0) + 1
        w.group = key

    def leave(self, w: WorkerState) -> None:
        """``w`` is gone (what it held was given back first)."""
        key = w.group
        if key is None:
            return
        w.group = None
        self.members[key] -= 1
        if not self.members[key]:
            del self.members[key], self.free[key]
