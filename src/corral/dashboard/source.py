"""What the dashboard shows, in the shape of ``Executor.status()`` (docs/observability.md).

``snapshot`` is the dashboard's one way to ask a broker how things stand.  Where the
executor has ``status()`` it is asked for that dict as it is; otherwise the dict is
built from ``summary()``: the same keys, those ``summary()`` cannot know left out.  The
page treats every key as optional, so an older broker (or this fallback) shows less,
never an error.  Only counts and worker records are read: never a task's payload.
"""

from __future__ import annotations

import time
from typing import Any


def snapshot(executor: Any, timeout: float = 5.0) -> dict[str, Any]:
    """How things stand at ``executor``'s broker, as the status schema's dict."""
    status = getattr(executor, "status", None)
    if callable(status):
        return dict(status(timeout=timeout))
    return from_summary(executor.summary(timeout=timeout), getattr(executor, "_address", None))


def from_summary(summary: Any, address: str | None = None) -> dict[str, Any]:
    """The status dict that ``summary()``'s table and counts give: no rates, events or clients."""
    workers = [_worker(w) for w in summary]
    tasks = sum(w.get("tasks") or 0 for w in summary)
    failed = sum(w.get("errors") or 0 for w in summary)  # failed attempts, retried ones included
    connected = sum(1 for w in workers if w["state"] != "gone")
    counts = {
        "queued": getattr(summary, "queued", 0),
        "running": getattr(summary, "running", 0),
        "waiting": getattr(summary, "waiting", 0),
        "done": max(0, tasks - failed),
        "failed": failed,
        "connected": connected,
        "departed": len(workers) - connected,
        "unschedulable": getattr(summary, "unschedulable", 0),
    }
    return {"time": time.time(), "address": address, "counts": counts, "workers": workers,
            "launches": getattr(summary, "launches", None), "objects": getattr(summary, "objects", None) or {}}


def _worker(record: dict) -> dict[str, Any]:
    """A worker record of ``summary()`` with the schema's ``state``."""
    w = dict(record)
    if "state" not in w:
        if w.get("left") or w.get("alive") is False:
            w["state"] = "gone"
        elif w.get("leaving"):
            w["state"] = "leaving"
        else:
            w["state"] = "connected"  # summary() does not say whether it is busy or idle; status() does
    return w
