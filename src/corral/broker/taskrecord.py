"""The broker's part of a task's record (``future.info``): where it ran, how often, and why
each earlier attempt ended.

Only the broker sees a task across its attempts: it notes the worker an attempt ended
on and the reason a begun attempt was retried, and stamps them into the meta of the
task's one RESULT to its client (``worker`` ``[name, host]``, ``attempts``, ``tries``).
The task process's own notes (``ran``: times, pid, peak memory) are already there;
the broker passes them on as they are, never unpickling anything.
"""

from __future__ import annotations

from .records import Task, WorkerState

MAX_TRIES = 32  # earlier attempts' reasons kept per task; a task retried more keeps the last ones
MAX_TRY_TEXT = 300  # characters of each


def ended_on(task: Task, w: WorkerState) -> None:
    """An attempt of ``task`` ended on worker ``w`` (it ran there)."""
    task.ran_on = w


def retried(task: Task, why: str) -> None:
    """A begun attempt of ``task`` ended for ``why``, and it runs again."""
    tries = task.tries
    if tries is None:
        tries = task.tries = []
    elif len(tries) >= MAX_TRIES:
        del tries[0]
    tries.append(why[:MAX_TRY_TEXT])


def stamp(task: Task, meta: dict) -> None:
    """Put the broker's part of ``task``'s record in the meta of its outcome."""
    w = task.ran_on
    if w is not None:
        meta["worker"] = [w.name, w.host]
    meta["attempts"] = task.attempts
    if task.tries:
        meta["tries"] = task.tries
    elif "tries" in meta:
        del meta["tries"]  # a worker's word on what only the broker knows
