"""A readable per-worker summary table (``Executor.summary()``, ``corral demo``)."""

from __future__ import annotations

COLUMNS = (("worker", "worker"), ("host", "host"), ("pid", "pid"), ("tasks", "tasks"),
           ("busy_s", "busy s"), ("errors", "errors"), ("left", "left"))  # left: why it went (None: it is here)


class Summary(list):
    """A list of dicts, one per worker, whose ``str`` is a table."""

    def __init__(self, workers, queued: int = 0, running: int = 0, launches: dict | None = None,
                 unschedulable: int = 0, unschedulable_reasons: list | None = None, waiting: int = 0,
                 objects: dict | None = None):
        super().__init__(workers)
        self.queued = queued
        self.running = running
        self.waiting = waiting  # tasks waiting for their dependencies (docs/tasks.md)
        self.launches = launches  # an executor with a launcher: what its fleet did (scaling/fleet.py)
        # Queued tasks that no connected worker could ever run (their resources, their queue), and why.
        self.unschedulable = unschedulable
        self.unschedulable_reasons = list(unschedulable_reasons or [])
        # Large objects at the broker (broker/objects.py): "stored", their "bytes", and "sent_bytes" to workers.
        self.objects = objects or {"stored": 0, "bytes": 0, "sent_bytes": 0}

    def __str__(self) -> str:
        rows = [[h for _, h in COLUMNS]]
        for w in self:
            rows.append([f"{w[k]:.3f}" if k == "busy_s" else "" if w.get(k) is None else str(w[k])
                         for k, _ in COLUMNS])
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        lines = ["  ".join(c.rjust(n) if 2 <= i < 6 else c.ljust(n) for i, (c, n) in enumerate(zip(r, widths))).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * n for n in widths))
        total = sum(w["tasks"] for w in self)
        waiting = f", {self.waiting} waiting for others" if self.waiting else ""
        lines.append(f"{len(self)} workers, {total} tasks, {self.queued} queued, {self.running} running{waiting}")
        if self.unschedulable:
            lines.append(f"{self.unschedulable} unschedulable: no connected worker could run them")
            lines.extend(f"  {why}" for why in self.unschedulable_reasons)
        if self.launches:
            f = self.launches
            lines.append(f"launches: {f['launched']} ({f['launches_per_slot']} per worker slot), {f['in_flight']} in "
                         f"flight ({f['pending']} pending), {f['launch_failures']} failed, {f['retired']} retired idle")
            lines.extend(f"  launch failure: {e}" for e in f["errors"][-3:])
        return "\n".join(lines)
