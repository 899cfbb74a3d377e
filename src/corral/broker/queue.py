"""The broker's queue of tasks waiting for a worker: by priority, then first in, first out.

Why not one deque: a task with ``options(priority=N)`` must pass the tasks of lower
priorities, and a task that asks for resources or a named queue (``Demand``,
``demand.py``) must wait for a worker that has them without holding up the tasks
behind it that any worker could run.  So the queue keeps one *line* per demand (the
tasks that ask nothing share one), and within a line one deque per priority.  A
worker takes the best head among the lines it can serve: the highest priority, then
the oldest (a task's id orders submissions; one handed back takes a rank before every
other, so requeued tasks go to the front of their own priority).

The ordinary case costs what the deque did: while every task is plain (one line) and
of priority 0 (one level), that level is ``simple``, and ``append`` and ``take`` touch
only it.

Entries are task ids, kept after the task is dropped (cancelled, killed) and skipped
lazily, as before; ``len`` counts them too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..wire.protocol import DEFAULT_QUEUE
from .demand import Demand, fits, place_of

if TYPE_CHECKING:
    from .records import Task, WorkerState


class Line:
    """The queued tasks of one demand: a deque per priority, the highest first."""

    __slots__ = ("levels", "order")

    def __init__(self) -> None:
        self.levels: dict[int, deque[int]] = {}
        self.order: list[int] = []  # the priorities in ``levels``, highest first

    def level(self, priority: int) -> deque[int]:
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = deque()
            self.order = sorted(self.levels, reverse=True)
        return level

    def gids(self) -> Iterator[int]:
        for priority in self.order:
            yield from self.levels[priority]


class TaskQueue:
    """Task ids waiting for a worker (``Broker.queue``): ``append``, ``appendleft`` (a task handed back,
    in front of its own priority), ``take`` (the next one a worker may run), ``len``, ``clear``."""

    def __init__(self, tasks: dict[int, Task]):
        self.tasks = tasks
        self.plain = Line()  # tasks that ask for no resources and go to the default queue
        self.lines: dict[Demand, Line] = {}  # the others, by what they ask
        self.count = 0
        self.front = -1  # the next rank of a task handed back: before every other
        self.simple: deque[int] | None = None  # the one deque while every task is plain and of priority 0
        self.reshaped()

    def reshaped(self) -> None:
        """Lines or levels came or went: is the queue one deque now (``simple``)?"""
        self.simple = self.plain.levels.get(0) if not self.lines and self.plain.order == [0] else None

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[int]:
        """Every entry (a line at a time, each by priority): for counting and clearing, not dispatch order."""
        yield from self.plain.gids()
        for line in self.lines.values():
            yield from line.gids()

    def clear(self) -> None:
        self.plain = Line()
        self.lines.clear()
        self.count = 0
        self.reshaped()

    def level(self, task: Task) -> deque[int]:
        """The deque of ``task``'s priority in the line of its demand."""
        place = task.place
        if place is None or place.demand is None:
            line = self.plain
        else:
            line = self.lines.get(place.demand)
            if line is None:
                line = self.lines[place.demand] = Line()
        level = line.level(0 if place is None else place.priority)
        if self.simple is None or self.simple is not level:
            self.reshaped()
        return level

    def append(self, task: Task) -> None:
        """Queue a task behind the others of its priority."""
        simple = self.simple
        if simple is not None and task.place is None:  # the ordinary task, in the ordinary queue
            simple.append(task.gid)
        else:
            self.level(task).append(task.gid)
        self.count += 1

    def appendleft(self, gid: int) -> None:
        """Queue a task handed back (retried, requeued) in front of the others of its priority."""
        task = self.tasks[gid]
        place_of(task).rank, self.front = self.front, self.front - 1
        self.level(task).appendleft(gid)
        self.count += 1

    def head(self, line: Line, take: bool = False) -> Task | None:
        """The next task of a line (taken off it with ``take``), dropping the entries of tasks gone or
        taken already."""
        order, levels, tasks = line.order, line.levels, self.tasks
        while order:
            level = levels[order[0]]
            while level:
                task = tasks.get(level[0])
                if task is not None and task.worker is None:
                    if take:
                        level.popleft()
                        self.count -= 1
                    return task
                level.popleft()  # cancelled while queued, or assigned already (queued twice)
                self.count -= 1
            if len(order) == 1:
                break  # the last level stays, empty: the next task of its priority needs no new deque
            del levels[order[0]]
            order.pop(0)
            self.reshaped()
        return None

    def take(self, w: WorkerState | None) -> Task | None:
        """Take the next task worker ``w`` may run (None: any worker), or None if there is none."""
        simple = self.simple
        if simple is not None and (w is None or DEFAULT_QUEUE in w.queues):  # the ordinary case: ``head``, short
            tasks = self.tasks
            while simple:
                self.count -= 1
                task = tasks.get(simple.popleft())
                if task is not None and task.worker is None:
                    return task
            return None
        serves_plain = w is None or DEFAULT_QUEUE in w.queues  # fits(None, w)
        if not self.lines:
            return self.head(self.plain, True) if serves_plain else None
        best = best_line = None
        if serves_plain:
            best, best_line = self.head(self.plain), self.plain
        for demand, line in list(self.lines.items()):
            if w is not None and not fits(demand, w):
                continue
            task = self.head(line)
            if task is None:
                del self.lines[demand]
                self.reshaped()
            elif best is None or before(task, best):
                best, best_line = task, line
        return None if best is None else self.pop(best_line)

    def prune(self) -> None:
        """Forget the lines whose tasks have all gone (cancelled, failed, taken): lines no worker fits are
        not looked at by ``take``, and while one is left the ordinary case is not taken."""
        for demand, line in list(self.lines.items()):
            if self.head(line) is None:
                del self.lines[demand]
                self.reshaped()

    def popleft(self) -> int | None:
        """The id of the next task in order, whoever may run it (None: nothing is queued)."""
        task = self.take(None)
        return None if task is None else task.gid

    def pop(self, line: Line) -> Task:
        """Remove the head of ``line`` (``head`` found it)."""
        self.count -= 1
        return self.tasks[line.levels[line.order[0]].popleft()]

    def waiting(self, line: Line) -> list[Task]:
        """The tasks of ``line`` still waiting (in no particular order)."""
        tasks = [self.tasks.get(gid) for gid in line.gids()]
        return [t for t in tasks if t is not None and t.worker is None]

def before(a: Task, b: Task) -> bool:
    """Does ``a`` go before ``b``: a higher priority, or the same and queued first?"""
    return order(a) < order(b)


def order(task: Task) -> tuple[int, int]:
    """``task``'s place in the queue: its priority, highest first, then its rank (or its id)."""
    place = task.place
    if place is None:
        return 0, task.gid
    return -place.priority, place.rank or task.gid
