"""A worker's resident memory, for the broker's status (HEARTBEAT's ``rss``).

What a worker costs its machine is its supervisor's memory plus its task processes'
and whatever those started (a fresh worker's template too): the sum of their resident
set sizes, which counts the pages they share once per process.  Measuring walks the
process table, so it is done at most every ``EVERY`` seconds, in the supervisor, never
in a task process.
"""

from __future__ import annotations

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
