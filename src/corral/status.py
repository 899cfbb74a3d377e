"""What the broker says of itself, for people and programs.

``Summary``: a readable per-worker table (``Executor.summary()``, ``corral demo``).
``assemble``: a STATUS_REPLY as one JSON-able dict (``Executor.status()``, ``corral status --json``;
its keys are listed in docs/observability.md).  ``report``: that dict as text (``corral status``).
Readers tolerate missing keys: an older broker sends fewer.
"""

from __future__ import annotations

import time
from typing import Any

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


MAX_EVENTS = 1000  # the most recent task events a STATUS may ask for (broker/statusview.py keeps as many)
COUNTS = ("queued", "running", "waiting", "done", "failed", "connected", "departed", "unschedulable")
NO_OBJECTS = {"stored": 0, "bytes": 0, "sent_bytes": 0}


def assemble(workers: list, counts: dict, more: dict, address: str | None) -> dict[str, Any]:
    """The status dict from a STATUS_REPLY: its counts (header), worker records (frame 1) and the rest
    (frame 2, absent from older brokers)."""
    rate = more.get("rate") or {}
    return {
        "time": more.get("time", time.time()),
        "address": address,
        "counts": {key: counts.get(key, 0) for key in COUNTS},
        "rate": {"done_per_s": rate.get("done_per_s", 0.0), "failed_per_s": rate.get("failed_per_s", 0.0)},
        "queues": more.get("queues", {}),
        "workers": [_worker(w) for w in workers] + list(more.get("starting", [])),
        "launches": counts.get("launches"),
        "objects": counts.get("objects") or dict(NO_OBJECTS),
        "unschedulable_reasons": counts.get("unschedulable_reasons", []),
        "events": more.get("events", []),
        "clients": more.get("clients", []),
    }


def _worker(w: dict) -> dict:
    """A worker record, with the keys an older broker did not send."""
    if "state" not in w:
        w["state"] = "gone" if not w.get("alive", True) else "leaving" if w.get("leaving") else "idle"
    for key, default in (("running", []), ("busy_share", None), ("rss", None)):
        w.setdefault(key, default)
    return w


def report(status: dict[str, Any], failures: int = 3) -> str:
    """``status`` (``assemble``'s dict) as text for a terminal: counts and rates, queues, a table of the
    workers, launches, and the latest ``failures`` failed tasks with the end of their error."""
    counts = status.get("counts", {})
    rate = status.get("rate", {})
    stamp = time.strftime("%H:%M:%S", time.localtime(status.get("time", time.time())))
    lines = [f"corral status of {status.get('address') or 'a broker'} at {stamp}"]
    tasks = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("queued", "running", "waiting", "done", "failed"))
    lines.append(f"tasks:   {tasks}")
    lines.append(f"rate:    {rate.get('done_per_s', 0.0):.1f} done/s, {rate.get('failed_per_s', 0.0):.1f} failed/s "
                 "(last 10 s)")
    lines.append(f"workers: {counts.get('connected', 0)} connected, {counts.get('departed', 0)} departed")
    if counts.get("unschedulable"):
        lines.append(f"         {counts['unschedulable']} tasks unschedulable: no connected worker could run them")
        lines.extend(f"           {why}" for why in status.get("unschedulable_reasons", []))
    queues = status.get("queues") or {}
    if queues:
        lines.append("queues:  " + "; ".join(
            f"{name}: {q.get('queued', 0)} queued" + (" (priority " + ", ".join(
                f"{p}: {n}" for p, n in sorted(q.get("priorities", {}).items(), key=lambda i: -int(i[0]))) + ")"
                if len(q.get("priorities", {})) > 1 or any(p != "0" for p in q.get("priorities", {})) else "")
            for name, q in sorted(queues.items())))
    launches = status.get("launches")
    if launches:
        lines.append(f"launches: {launches.get('launched', 0)} launched, {launches.get('in_flight', 0)} in flight "
                     f"({launches.get('pending', 0)} pending), {launches.get('launch_failures', 0)} failed, "
                     f"{launches.get('retired', 0)} retired idle")
        lines.extend(f"  launch failure: {e}" for e in launches.get("errors", [])[-3:])
    lines.append("")
    lines.extend(_workers_table(status.get("workers", [])))
    failed = [e for e in status.get("events", []) if e.get("state") != "done"][-failures:] if failures else []
    if failed:
        lines.append("")
        lines.append("latest failures:")
        for e in failed:
            task = "a task" if e.get("task") is None else f"task {e['task']}"
            error = (e.get("error") or "").strip().splitlines()
            lines.append(f"  {task} {e.get('state')} on {e.get('worker') or '?'}: {error[-1] if error else ''}")
    return "\n".join(lines)


WORKER_COLUMNS = ("worker", "host", "pid", "state", "running", "tasks", "busy", "memory", "errors", "left")


def _workers_table(workers: list) -> list[str]:
    """The workers, one row each: the ones here first, then those that left."""
    if not workers:
        return ["(no workers)"]
    order = {"busy": 0, "idle": 1, "starting": 2, "leaving": 3, "gone": 4}
    rows = [list(WORKER_COLUMNS)]
    for w in sorted(workers, key=lambda w: order.get(w.get("state"), 5)):
        running = w.get("running") or []
        if running:
            first = running[0]
            task = "?" if first.get("task") is None else str(first["task"])
            took = "" if first.get("for_s") is None else f" {_duration(first['for_s'])}"
            shown = f"{task}{took}" + (f" +{len(running) - 1}" if len(running) > 1 else "")
        else:
            shown = "-"
        share = w.get("busy_share")
        rows.append([str(w.get("worker") or "-"), str(w.get("host") or "?"), str(w.get("pid") or "?"),
                     str(w.get("state") or "?"), shown, str(w.get("tasks", 0)),
                     "-" if share is None else f"{share:.0%}", _size(w.get("rss")), str(w.get("errors", 0)),
                     str(w.get("left") or "")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(WORKER_COLUMNS))]
    right = {2, 5, 6, 7, 8}
    lines = ["  ".join(c.rjust(n) if i in right else c.ljust(n) for i, (c, n) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * n for n in widths))
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
