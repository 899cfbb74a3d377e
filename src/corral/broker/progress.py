"""In-task progress on its way through the broker (``Reports``, a part of ``Broker``).

A task's ``corral.report()`` reaches the broker as PROGRESS from the worker that
runs it (from its supervisor, or on its lane from its task process), and goes on
at once to the task's client, under the client's id for the task.  The broker
keeps none of it.  A report is passed on only for a task that the sending worker
holds: one for a task that has ended since (its worker sent the report before
the result) is dropped quietly, as a late result is; one for a task id the broker
never gave out, or a task another worker holds, is dropped and logged.
"""

from __future__ import annotations

from ..wire import protocol
from ..wire.protocol import Kind
from .records import WorkerState


class Reports:
    """The progress half of ``Broker``."""

    def worker_progress(self, w: WorkerState, body: dict) -> None:
        """PROGRESS from worker ``w``: each report to its task's client (checked whole first)."""
        by_client: dict[bytes, list] = {}
        for gid, fraction, text in protocol.progress_entries(body):
            task = self.tasks.get(gid)
            if task is None:
                if gid >= self.next_gid:
                    self.complain(f"dropped a progress report from worker {w.name} for task {gid}, "
                                  "which the broker never gave out")
                continue  # ended already: the report came before its result, which went first
            if task.worker != w.ident:
                self.complain(f"dropped a progress report from worker {w.name} for a task it does not hold")
                continue
            if not task.started:  # a report says it began (its STARTED may come later, or never)
                self.began(w, [gid])
            by_client.setdefault(task.client, []).append([task.cid, fraction, text])
        for client, entries in by_client.items():
            self.send(self.clients_sock, client, Kind.PROGRESS, {"progress": entries})
