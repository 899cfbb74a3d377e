"""Queued tasks that no connected worker could ever run, found so that they do not wait in silence.

A task that asks for more of a resource than any connected worker has in all, or
for a queue no connected worker serves, would wait forever.  Every ``REVIEW``
seconds (and for each status request) the broker looks at each line of its queue
(one per demand, ``queue.py``): a line no connected worker could serve even when idle
is *unschedulable*, and each of its tasks gets a reason in words (``Task.reason``,
which STATUS_REPLY counts and ``future.info`` may show) and a clock: a task with
``options(timeout=T)`` that stays unschedulable for T seconds fails with
TaskTimeoutError, saying why.  A worker that joins with what the task needs clears
the reason, and the task waits as any other.  While no worker is connected at all
(a pool starting, a fleet launching) nothing is judged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import protocol
from .demand import could_ever, place_of, why_not

if TYPE_CHECKING:
    from .broker import Broker

REVIEW = 0.1  # seconds between looks at the queue while tasks wait
MAX_REASONS = 8  # distinct reasons a STATUS_REPLY lists


class Unplaced:
    """The broker's count of unschedulable tasks, and their reasons, as of its last review."""

    def __init__(self) -> None:
        self.last = 0.0
        self.count = 0
        self.reasons: list[str] = []
        self.flagged: set = set()  # the demands found unschedulable last time (None: the plain line)

    def review(self, broker: Broker, now: float, force: bool = False) -> None:
        """Judge each line of the queue again; fail the tasks whose timeout their wait outran."""
        if not force and now - self.last < REVIEW:
            return
        self.last = now
        broker.queue.prune()
        workers = broker.workers.values()  # connected ones only (worker_gone takes them out)
        count, reasons, flagged, overdue = 0, [], set(), []
        for demand in [None, *broker.queue.lines]:
            if workers and not any(could_ever(demand, w) for w in workers):
                reason = why_not(demand, list(workers))
                flagged.add(demand)
            elif demand in self.flagged:
                reason = None  # a worker that could run them came
            else:
                continue
            line = broker.queue.plain if demand is None else broker.queue.lines[demand]
            for task in broker.queue.waiting(line):
                if reason is None:
                    if task.place is not None and task.place.reason is not None:
                        task.place.reason = None
                        broker.outbox(task.client).unplace(None, task.cid)
                    continue
                place = place_of(task)
                if place.reason is None:
                    place.reason, place.stuck_since = reason, now
                    # Its client hears it once (future.info), and again only if it changes.
                    broker.outbox(task.client).unplace(reason, task.cid)
                count += 1
                timeout = task.options.get("timeout")
                if timeout is not None and now - place.stuck_since >= timeout:
                    overdue.append(task)
            if reason is not None and len(reasons) < MAX_REASONS:
                reasons.append(reason)
        for task in overdue:
            count -= 1
            broker.fail(task, protocol.ERR_TIMEOUT,
                        f"the task waited {task.options['timeout']:g} s (its timeout) for a worker that could run "
                        f"it, and none came: {task.reason}")
        self.count, self.reasons, self.flagged = count, reasons, flagged

    def counts(self, broker: Broker, now: float) -> dict:
        """STATUS_REPLY's ``unschedulable`` count and ``unschedulable_reasons``, judged now."""
        if not broker.queue:
            return {"unschedulable": 0}
        self.review(broker, now, force=True)
        return {"unschedulable": self.count, "unschedulable_reasons": self.reasons} if self.count else \
            {"unschedulable": 0}
