"""The broker's part of a task's record (``future.info``): where it ran, how often, and why
each earlier attempt ended.

Only the broker sees a task across its attempts: it notes the worker an attempt ended
on and the reason a begun attempt was retried, and stamps them into the meta of the
task's one RESULT to its client (``worker``, ``host``, ``attempts``, ``tries``).
The task process's own notes (``ran``: times, pid, peak memory) are already there;
the broker passes them on as they are, never unpickling anything.

A task that ends on its first attempt, as nearly all do, keeps nothing here: the
worker it ended on is stamped straight from its RESULT (``stamp``'s ``w``).
"""

from __future__ import annotations

from ..wire import protocol
from .records import Task, WorkerState


def ended_on(task: Task, w: WorkerState) -> None:
    """An attempt of ``task`` that will not be its last ended on worker ``w`` (it ran there)."""
    task.extra().ran_on = w


def retried(task: Task, why: str) -> None:
    """A begun attempt of ``task`` ended for ``why`` (after ``ended_on``), and it runs again."""
    more = task.extra()
    if more.tries is None:
        more.tries = []
    elif len(more.tries) >= protocol.MAX_TRIES:
        del more.tries[0]
    more.tries.append(why[: protocol.MAX_TRY_TEXT])


def stamp(task: Task, meta: dict, w: WorkerState | None = None) -> None:
    """Put the broker's part of ``task``'s record in the meta of its outcome; ``w``: the worker
    whose RESULT it is (None: it ended without one, on the worker it last ran on, if any)."""
    # Strings and an int, no list unless there were earlier attempts: a client keeps the meta of
    # every finished future, and the garbage collector does not watch a dict of such values.
    # What a worker said of these is replaced.
    more = task.more
    if more is not None:
        if w is None:
            w = more.ran_on
        if more.tries:
            meta["tries"] = more.tries
    if w is None:
        meta["worker"] = meta["host"] = None
    else:
        meta["worker"] = w.name
        meta["host"] = w.host
    meta["attempts"] = task.attempts
    if "tries" in meta and (more is None or not more.tries):
        del meta["tries"]
