"""What a task process notes about each task it runs, for the task's record (``future.info``).

Only the task process knows when a task really began and ended, which process ran
it, and how much memory that process needed meanwhile; these go back in the
task's RESULT meta as ``ran`` (``protocol.note_ran``).

The notes must cost next to nothing, or short tasks would pay for them: the
caller's two ``perf_counter`` reads, which it makes anyway, and one short string
per task; wall-clock time is ``perf_counter`` plus an offset read again each
second (``SYNC``), so that a slewed clock cannot drift the record far.  The peak memory costs ~2 us more
(reading ``/proc/self/status`` would cost 20 us), so a persistent task process
measures it only for tasks that ran ``PEAK_MEMORY_TASK`` (1 ms) or longer: it
reads the process's high-water mark of resident memory with ``getrusage``, then
writes ``5`` to ``/proc/self/clear_refs``, which resets that mark to what the
process holds now, ready for the next task.  The mark a measured task reads is
therefore the peak since the last measured task ended: shorter tasks in between
count too.  A fresh task process runs one task: its mark since the fork is the
task's, always read.  Where ``clear_refs`` cannot be written (not Linux, or not
allowed), a persistent process's peak is known only when the mark rose since
the last reading.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ..tuning import PEAK_MEMORY_TASK
from ..wire import protocol

try:
    import resource
except ImportError:  # not a POSIX system
    resource = None  # type: ignore[assignment]

# ru_maxrss is in kilobytes on Linux, in bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024
SYNC = 1.0  # seconds between two readings of the wall clock's offset from perf_counter


def _high_water() -> int:
    """The process's high-water mark of resident memory, in bytes (0 where unknown)."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


class TaskNotes:
    """Notes when, where and with how much memory this task process ran each task (``ran``).

    Made in the task process itself, after the fork (``/proc/self`` is the
    process that opens it).  ``once``: a fresh task process, which runs one task.
    """

    def __init__(self, once: bool):
        self.pid = os.getpid()
        self.once = once
        # Opened for each reset, not held: a task's code sees no descriptor of ours but its
        # supervisor's socket (the open costs about 2 us, paid by tasks of 1 ms or more).
        self.resettable = not once
        self.last = 0  # the mark last read, where it cannot be reset
        self.synced = -SYNC  # when (perf_counter) the offset was last read
        self.offset = 0.0  # wall-clock seconds minus perf_counter seconds
        if not once:
            self.reset()  # what the process needed to start is no task's

    def note(self, meta: dict[str, Any], began: float, ended: float) -> None:
        """Note in its outcome's ``meta`` that a task ran from ``began`` to ``ended`` (``perf_counter``)."""
        if ended - self.synced >= SYNC:
            self.synced = time.perf_counter()
            self.offset = time.time() - self.synced
        took = ended - began
        peak = self.peak() if self.once or took >= PEAK_MEMORY_TASK else None
        protocol.note_ran(meta, int((began + self.offset) * 1e6), int(took * 1e6), self.pid, peak)

    def peak(self) -> int | None:
        """The peak resident bytes since the mark was last reset (None where unknown); reset it."""
        mark = _high_water()
        if self.once or self.reset():
            return mark or None
        rose, self.last = mark > self.last, mark
        return mark if rose else None

    def reset(self) -> bool:
        """Reset the high-water mark to what the process holds now; False where it cannot be."""
        if not self.resettable:
            return False
        try:
            fd = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self.resettable = False  # not Linux, or not allowed
            return False
        try:
            os.write(fd, b"5")
            return True
        except OSError:
            self.resettable = False
            return False
        finally:
            os.close(fd)
