"""How many workers to launch or retire: the scaler's arithmetic, apart from everything it touches.

    demand  = min(max_workers, tasks queued + running)
    want    = max(min_workers, demand)
    supply  = workers connected (and not leaving soon) + launches still in flight
    launch  = want - supply                      (never past max_workers in all)
    retire  = idle workers beyond want, each only after idle_timeout of idleness

A steady load does not flap: a worker is retired only after ``idle_timeout``
seconds without a task, so work that comes in bursts with shorter gaps keeps its
workers, and a launch is made only for work that is there now.  Failed launches
back off (``Backoff``), so a resource manager that refuses is asked again after
1, 2, 4 ... 30 seconds, not in a loop.
"""

from __future__ import annotations

from collections.abc import Iterable

BACKOFF_FIRST = 1.0  # seconds before the first retry after a failed launch
BACKOFF_MAX = 30.0  # ... doubling up to this
LEAD_MIN = 5.0  # seconds before a worker's end its replacement is launched, at least


def wanted(queued_and_running: int, min_workers: int, max_workers: int) -> int:
    """Workers the work calls for now."""
    return max(min_workers, min(max_workers, queued_and_running))


def to_launch(want: int, supply: int, total: int, max_workers: int) -> int:
    """Launches to make now: what is wanted beyond supply, within ``max_workers`` workers and
    launches in all (``total`` counts every connected worker and every launch in flight,
    including those that will leave soon)."""
    return max(0, min(want - supply, max_workers - total))


def to_retire(idle_for: Iterable[tuple[bytes, float]], active: int, want: int, idle_timeout: float) -> list[bytes]:
    """Idle workers to retire: those idle longer than ``idle_timeout``, longest idle first,
    as many as ``active`` exceeds ``want``."""
    excess = active - want
    if excess <= 0:
        return []
    ripe = sorted(((since, ident) for ident, since in idle_for if since >= idle_timeout), reverse=True)
    return [ident for _, ident in ripe[:excess]]


def lead_time(connect_delays: list[float]) -> float:
    """How long before a worker's announced end to launch its replacement: twice the slowest
    recent launch-to-connect delay, at least LEAD_MIN."""
    return max(LEAD_MIN, 2 * max(connect_delays, default=0.0))


class Backoff:
    """When the next launch may be tried after failures in a row."""

    def __init__(self) -> None:
        self.failures = 0  # in a row, since a launched worker last connected
        self.not_before = 0.0

    def failed(self, now: float) -> float:
        """One more failure: the delay before the next try."""
        self.failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        """A launched worker reached the broker: the path works."""
        self.failures = 0
        self.not_before = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.not_before
