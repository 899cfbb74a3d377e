"""What a task process notes about each task it runs, for the task's record (``future.info``).

Only the task process knows when a task really began and ended, which process ran
it, and how much memory that process needed meanwhile; these go back in the
task's RESULT meta as ``ran``: ``[started, finished, pid, peak]`` (wall-clock
seconds, the process id, peak resident bytes or null).

The peak must cost next to nothing, or short tasks would pay for it: reading
``/proc/self/status`` takes ~20 us, a tenth of a no-op's round trip.  So a
persistent task process keeps ``/proc/self/clear_refs`` open and writes ``5`` to
it before each task (Linux resets the process's high-water mark of resident
memory to what it holds now, ~1 us), and reads the high-water mark after the
task with ``getrusage`` (~1 us).  A fresh task process exists for one task: its
high-water mark since the fork is the task's already.  Where ``clear_refs``
cannot be written (not Linux, or not allowed), the peak is known only when the
task raised the process's high-water mark, and is null otherwise.
"""

from __future__ import annotations

import os
import sys
import time

from ..wire import protocol
from .execution import Outcome, execute

try:
    import resource
except ImportError:  # not a POSIX system
    resource = None  # type: ignore[assignment]

# ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def _high_water() -> int:
    """The process's high-water mark of resident memory, in bytes (0 where unknown)."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


class TaskNotes:
    """Runs tasks in this task process, noting when, where and how much memory (``ran``).

    Made in the task process itself, after the fork (``/proc/self`` is the
    process that opens it).  ``once``: a fresh task process, which runs one task.
    """

    def __init__(self, once: bool):
        self.pid = os.getpid()
        self.once = once
        self.clear_fd: int | None = None
        if not once:
            try:
                self.clear_fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                pass  # not Linux, or not allowed: the delta below

    def run(self, frames: list, shm_dir: str | None, offloaded: list | None) -> Outcome:
        """``execution.execute`` the task, with its ``ran`` in the outcome's meta."""
        exact = self.once
        if self.clear_fd is not None:
            try:
                os.write(self.clear_fd, b"5")
                exact = True
            except OSError:
                os.close(self.clear_fd)
                self.clear_fd = None
        before = 0 if exact else _high_water()
        started = time.time()
        status, out, meta = execute(frames, shm_dir, offloaded)
        finished = time.time()
        peak = _high_water()
        protocol.note_ran(meta, started, finished, self.pid, peak if peak and (exact or peak > before) else None)
        return status, out, meta
