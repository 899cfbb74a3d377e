"""A worker's resident memory, for the broker's status (HEARTBEAT's ``rss``).

What a worker costs its machine is its supervisor's memory plus its task processes'
and whatever those started (a fresh worker's template too): the sum of their resident
set sizes, which counts the pages they share once per process.  It is measured at most
every ``EVERY`` seconds, in the supervisor, never in a task process.

On Linux the tree is read straight from ``/proc`` (each process's ``statm``, and its
threads' ``children``): a few small reads.  psutil, which works everywhere, walks the
whole process table, and importing it costs a worker ~13 ms of CPU, paid in the middle of
its first seconds of work; it is the fallback where ``/proc`` cannot say.
"""

from __future__ import annotations

import os
import time

EVERY = 1.0  # seconds between measurements


class MemoryGauge:
    """The supervisor's memory and its descendants', measured when due (``due``, ``measure``)."""

    def __init__(self) -> None:
        self.at = time.monotonic() - EVERY  # due at once
        self.process = None  # psutil's view of us, made on first use (psutil is imported then)

    def due(self, now: float) -> bool:
        return now - self.at >= EVERY

    def measure(self, now: float) -> int | None:
        """Bytes resident in us and our descendants now (None if the system will not say)."""
        self.at = now
        total = _proc_tree_rss(os.getpid())
        return total if total is not None else self._psutil_tree_rss()

    def _psutil_tree_rss(self) -> int | None:
        try:
            import psutil

            if self.process is None:
                self.process = psutil.Process()
            total = self.process.memory_info().rss
            for child in self.process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # it ended meanwhile, or is not ours to read
                    pass
            return total
        except (ImportError, OSError, Exception):  # noqa: BLE001 - status is never worth failing a worker for
            return None


def _proc_tree_rss(pid: int) -> int | None:
    """The resident bytes of ``pid`` and its descendants, from /proc; None where /proc lacks what it takes."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{pid}/task/{pid}/children", "rb"):
            pass
    except (OSError, ValueError, AttributeError):
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page
            for tid in os.listdir(f"/proc/{p}/task"):  # a child belongs to the thread that started it
                with open(f"/proc/{p}/task/{tid}/children", "rb") as f:
                    todo.extend(int(child) for child in f.read().split())
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            continue
    return total
