"""Time as corral's roles judge it: smoothed durations, and what a running task is due when.

A worker's supervisor (for the task its process runs) and the broker (for the
oldest task on a lane) apply the same two rules to a running task: it is
reported as started once it has run ``STARTED_DELAY`` (a shorter one is reported
by its result alone, which saves two messages per short task), and it is stopped
once it has run its timeout.  Durations are smoothed the same way everywhere: a
worker's credit, the broker's lane windows, a lane's result batching, a
waiter's spin.
"""

from __future__ import annotations

from .tuning import SMOOTHING, STARTED_DELAY


def smooth(average: float | None, sample: float) -> float:
    """A moving average that follows ``sample`` (``sample`` itself, if there is no average yet)."""
    return sample if average is None else (1 - SMOOTHING) * average + SMOOTHING * sample


def due(started: float, reported: bool, timeout: float | None, stopping: bool) -> float | None:
    """When a task that began at ``started`` is next due something: its STARTED (unless
    ``reported``), or its timeout (unless it is being stopped already); None: nothing."""
    when = None if reported else started + STARTED_DELAY
    if timeout and not stopping:
        end = started + timeout
        when = end if when is None else min(when, end)
    return when


def started_due(now: float, started: float, reported: bool) -> bool:
    """Is it time to report the task that began at ``started`` as started?"""
    return not reported and now - started >= STARTED_DELAY


def timed_out(now: float, started: float, timeout: float | None, stopping: bool) -> bool:
    """Has the task that began at ``started`` run its ``timeout`` (and is not being stopped already)?"""
    return bool(timeout) and not stopping and now - started >= timeout
