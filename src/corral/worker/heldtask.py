"""A task a persistent or fresh worker's supervisor holds: its record, the checks it passes
before it may reach a task process, and the header that hands tasks to one."""

from __future__ import annotations

from dataclasses import dataclass

from ..wire import protocol
from ..wire.protocol import Status
from . import task_process


@dataclass
class HeldTask:
    """A task this worker holds: waiting, or running in the task process."""

    gid: int
    frames: list
    options: dict
    started: float = 0.0
    stop_reason: str | None = None  # why we are killing its process: "timeout" or "killed"
    kill_at: float | None = None  # when SIGTERM turns into SIGKILL
    reported: bool = False  # STARTED sent
    kill_signal: int | None = None  # killed while waiting in the pipeline: stop it when it starts
    grace: float = 0.0
    size: int = 0  # payload bytes


def malformed(task: HeldTask) -> str | None:
    """What is wrong with a task the broker sent us, if anything (a broker that lies must not
    make us crash, or make the task process run garbage)."""
    if len(task.frames) < 2:
        return f"{len(task.frames)} payload frames (a function and its arguments: 2 or more)"
    timeout = task.options.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 1e9):
        return f"a timeout of {timeout!r:.40}"
    shm = task.options.get("shm")
    if shm is not None and not (isinstance(shm, list) and all(type(i) is int and 2 <= i < len(task.frames)
                                                               for i in shm)):
        return "bad shared-memory frames"
    if "seed" in task.options and not protocol.valid_seed(task.options["seed"]):
        return f"a seed option of {task.options['seed']!r:.60}"
    deps = task.options.get("dep_frames")
    if deps is not None and not (isinstance(deps, list) and all(type(n) is int and n >= 1 for n in deps)
                                 and sum(deps) <= len(task.frames) - 2):
        return "bad dependency frames"
    return None


def task_header(tasks: list[HeldTask]) -> tuple:
    """The TASK message that hands ``tasks`` to a task process: (gid, frame count, shared-memory frames,
    seed option, dependency frames, capture its output) each."""
    return task_process.TASK, [(t.gid, len(t.frames), t.options.get("shm"), t.options.get("seed"),
                                t.options.get("dep_frames"), t.options.get("capture_output") is True) for t in tasks]


def stopped(task: HeldTask, reason: str, how: str) -> tuple[Status, list, dict]:
    """The outcome of a task whose process was stopped for ``reason``."""
    return Status.FAILED, [], protocol.stopped(reason, task.options.get("timeout"), how)
