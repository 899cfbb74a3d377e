"""``TaskInfo``: a task's record as its future knows it (``CorralFuture.info``).

The record is put together where each part is known, and read only when asked
for: the client notes when it submitted the task (and when it heard that the
task began); the task process notes when the task began and ended, its pid and
its peak memory (``worker/tasknotes.py``); the broker adds the worker, the
attempts and why the earlier ones ended (``broker/taskrecord.py``).  All of it
arrives in the meta of the task's RESULT, which the future keeps as it is: a
future pays for its record only when ``info`` is read.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from dataclasses import dataclass

from ..wire import protocol
from . import reports

QUEUED, WAITING, RUNNING_STATE, DONE, FAILED, CANCELLED_STATE, LOST = (
    "queued", "waiting", "running", "done", "failed", "cancelled", "lost")


@dataclass(frozen=True)
class TaskInfo:
    """A snapshot of one task's record (``future.info``).

    Times are wall-clock seconds (``time.time()``): ``submitted`` on the client's
    clock, ``started`` and ``finished`` on the clock of the machine that ran the
    task (while the task runs, ``started`` is when the client heard that it
    began).  A field is None where it is not known (yet): the worker, host, pid,
    finish time and peak memory are known once the task has ended on a worker.
    A chunked ``map`` runs each chunk as one task: its record is the chunk's.
    ``progress`` and ``progress_message`` are what the task last reported with
    ``corral.report()`` (``client/reports.py``), while it runs and after.
    """

    state: str  # "queued", "waiting", "running", "done", "failed", "cancelled" or "lost"
    submitted: float  # when submit() (or map()) made the task
    started: float | None  # when its last attempt began
    finished: float | None  # when its last attempt ended
    queue_wait: float | None  # seconds from submitted to started (two clocks if the worker is elsewhere)
    run_time: float | None  # seconds from started to finished
    worker: str | None  # the name of the worker its last attempt ran on
    host: str | None  # that worker's host
    pid: int | None  # the process that ran its last attempt
    attempts: int  # attempts that began (retries included)
    earlier_attempts: tuple[str, ...]  # why each earlier attempt ended, oldest first
    peak_memory: int | None  # peak resident bytes of its process while it ran (see docs/tasks.md)
    unschedulable: str | None = None  # queued, and no connected worker could ever run it: why
    progress: float | None = None  # the fraction done its task last reported (corral.report), 0 to 1
    progress_message: str | None = None  # the message its task last reported
    stdout: str | None = None  # what it wrote on its stdout, with capture_output (the tail: docs/options.md)
    stderr: str | None = None  # ... and on its stderr


def task_info(fut: Future) -> TaskInfo:
    """The record of ``fut``'s task, from what the future holds now."""
    with fut._condition:
        state, exc = fut._state, fut._exception
    meta: dict = getattr(fut, "_meta", None) or {}  # (unset until its outcome)
    progress = reports.latest(fut, meta)
    record = protocol.read_record(meta)
    started, finished = record["started"], record["finished"]
    if started is None:
        started = fut._heard_started
    attempts = record["attempts"]
    if attempts is None:
        attempts = 1 if state == RUNNING else 0
    return TaskInfo(
        state=_state(state, exc, meta, fut._waiting),
        submitted=fut._submitted,
        started=started,
        finished=finished,
        queue_wait=None if started is None else max(0.0, started - fut._submitted),
        run_time=None if started is None or finished is None else max(0.0, finished - started),
        worker=record["worker"],
        host=record["host"],
        pid=record["pid"],
        attempts=attempts,
        earlier_attempts=record["tries"],
        peak_memory=record["peak"],
        unschedulable=fut._unplaced if state not in (FINISHED, RUNNING, CANCELLED, CANCELLED_AND_NOTIFIED) else None,
        progress=progress[0],
        progress_message=progress[1],
        **_captured(fut),
    )


def _captured(fut: Future) -> dict:
    """``stdout`` and ``stderr``, where the task's output was captured (None where it was not)."""
    captured = getattr(fut, "_captured", None)
    if captured is None:
        return {}
    return {"stdout": captured.get("stdout", ""), "stderr": captured.get("stderr", "")}


def _state(state: str, exc: BaseException | None, meta: dict, waiting: bool) -> str:
    """The record's state, from the future's."""
    if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
        return CANCELLED_STATE
    if state == FINISHED:
        if exc is None:
            return DONE
        return LOST if meta.get("error") == protocol.ERR_WORKER_LOST else FAILED
    if state == RUNNING:
        return RUNNING_STATE
    return WAITING if waiting else QUEUED
