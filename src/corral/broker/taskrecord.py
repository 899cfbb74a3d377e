"""The broker's part of a task's record (``future.info``): where it ran, how often, and why
each earlier attempt ended.

Only the broker sees a task across its attempts: it notes the worker an attempt ended
on and the reason a begun attempt was retried, and stamps them into the meta of the
task's one RESULT to its client (``worker``, ``host``, ``attempts``, ``tries``).
The task process's own notes (``ran``: times, pid, peak memory) are already there;
the broker passes them on as they are, never unpickling anything.
"""

from __future__ import annotations

from ..wire import protocol
from .records import Task, WorkerState


def ended_on(task: Task, w: WorkerState) -> None:
    """An attempt of ``task`` ended on worker ``w`` (it ran there)."""
    task.attempted = (w, task.attempted[1] if task.attempted else None)


def retried(task: Task, why: str) -> None:
    """A begun attempt of ``task`` ended for ``why`` (after ``ended_on``), and it runs again."""
    w, tries = task.attempted or (None, None)
    if tries is None:
        tries = []
        task.attempted = (w, tries)
    elif len(tries) >= protocol.MAX_TRIES:
        del tries[0]
    tries.append(why[: protocol.MAX_TRY_TEXT])


def stamp(task: Task, meta: dict) -> None:
    """Put the broker's part of ``task``'s record in the meta of its outcome."""
    w, tries = task.attempted or (None, None)
    if w is None:
        protocol.note_attempts(meta, None, None, task.attempts, tries)
    else:
        protocol.note_attempts(meta, w.name, w.host, task.attempts, tries)
