"""Which worker gets which queued task: fair share, priorities, resources and queues (``assign``).

``assign`` sees the queue, the tasks and the workers with room, and hands out tasks
without sending anything, so it can be tested in process.  Which task a worker gets
next is the queue's to say (``queue.TaskQueue.take``: the highest priority first, the
oldest within one, among the tasks whose resources and queue that worker has free).
"""

from __future__ import annotations

from collections.abc import Iterable

from .demand import hold
from .queue import TaskQueue
from .records import Task, WorkerState


def assign(queue: TaskQueue, tasks: dict[int, Task], workers: Iterable[WorkerState], pool_size: int,
           now: float) -> list[tuple[WorkerState, list[Task]]]:
    """Take tasks off the front of ``queue`` for the workers with credit; what each one got, in order.

    One task per worker per round, least loaded first, so that N tasks start on N idle
    workers instead of waiting in the prefetch of the first one.  And no worker holds
    more than its fair share of the work there is: one that ran short tasks asks for
    many, and must not take a burst of long ones that the others could run (a pool's
    workers count even before they connect).  A queue entry whose task has gone
    (cancelled, or assigned already) is skipped.  Each task given is marked as the
    worker's (``task.worker``, ``worker.assigned``, with the resources it holds there
    until its outcome), and uses one credit.  A worker for which no queued task fits
    (its queues, its free resources) is left out of the round: the tasks that fit
    nowhere now wait without holding up the others.
    """
    workers = list(workers)
    ready = sorted((w for w in workers if w.credit > 0), key=lambda w: len(w.assigned))
    held = sum(len(w.assigned) for w in workers)
    share = max(1, (queue.count + held) // max(len(workers), pool_size, 1))
    ready = [w for w in ready if len(w.assigned) < share]
    for w in ready:
        if not w.assigned:  # it holds nothing yet: its clock for starting what it gets begins now
            w.progress_at = now
    given: dict[bytes, tuple[WorkerState, list[Task]]] = {}
    while ready and queue.count:  # (its count: no call to __bool__, in a loop that runs every turn)
        for w in list(ready):
            if not queue.count:
                break
            task = queue.take(w)
            if task is None:  # nothing queued fits it (or nothing is queued)
                ready.remove(w)
                continue
            task.worker = w.ident
            w.assigned[task.gid] = None if task.place is None else hold(w, task)
            w.credit -= 1
            given.setdefault(w.ident, (w, []))[1].append(task)
            if w.credit <= 0 or len(w.assigned) >= share:
                ready.remove(w)
    return list(given.values())
