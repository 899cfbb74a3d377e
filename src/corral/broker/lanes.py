"""Lanes: the broker's side of a task process that takes its tasks straight from it (``LaneSeats``,
a part of ``Broker``).

A persistent worker of an embedded broker's pool may have a lane (``wire/lane.py``):
the broker then sends its TASKS to the worker's task process directly and reads the
results from it, sizing the batches itself (``lane_window``), marking the oldest task
the lane holds as begun (its STARTED after 2 ms, its timeout), and asking the
worker's supervisor to stop the process for a timeout or a kill.  When the process
ends, the supervisor's ENDED says how many tasks it had begun: those end with it,
the rest go back to the queue.  Why: the supervisor then sees no task at all, and a
round trip wakes two processes instead of three.
"""

from __future__ import annotations

import time

from .. import timing, tuning
from ..errors import ProtocolError
from ..wire import protocol
from ..wire.protocol import Kind, Status
from . import output
from .peers import MALFORMED, count, seconds
from .records import PoolLink, Task, WorkerState


class LaneSeats:
    """The lane half of ``Broker`` (its ``lanes``: the workers whose task process reads one)."""

    def serve_lane(self, ident: bytes, link: PoolLink) -> None:
        """Take the results (and progress reports) a worker's task process wrote on its lane."""
        messages = link.lane.receive()
        w = self.workers.get(ident)
        if link.lane.dropped:
            self.complain(f"dropped {link.lane.dropped} malformed message(s) on the lane of worker process {link.pid}")
            link.lane.dropped = 0
        for msg in messages:
            try:
                kind, body = protocol.decode(msg[0])
                if kind == Kind.OUTPUT and w is not None:  # a captured task's, ahead of its result
                    output.forward(self, w, body)
                elif kind == Kind.RESULT and w is not None and ident in self.lanes:
                    self.lane_result(w, body, protocol.unpack(body, msg[1:]))
                elif kind == Kind.PROGRESS and w is not None:  # corral.report() in its task (progress.py)
                    self.worker_progress(w, body)
                else:
                    raise ProtocolError(f"{kind.name} on a lane")
            except MALFORMED as exc:
                self.complain(f"dropped a malformed message on the lane of worker process {link.pid}: "
                              f"{type(exc).__name__}: {exc}")

    def lane_result(self, w: WorkerState, body: dict, frames: list) -> None:
        """Outcomes from a task process, in the order it ran its tasks: the oldest one each."""
        w.busy += seconds(body.get("busy", 0.0))
        for entry, payload in protocol.split_entries(body, "results", frames, 4):
            gid, now = entry[0], time.monotonic()
            if gid != next(iter(w.assigned), None):
                self.complain(f"dropped a result from worker {w.name} for a task it is not running")
                continue
            w.answered += 1
            if entry[1] != Status.FAILED:
                took = now - w.head_since
                w.task_time = timing.smooth(w.task_time, took)
            self.task_done(w, entry, payload)
            self.next_head(w, now)

    def next_head(self, w: WorkerState, now: float) -> None:
        """The oldest task a lane worker holds has begun (the one before it just ended)."""
        w.head_since, w.head_reported, w.stopping = now, False, 0
        task = self.lane_head(w)
        if task is None:
            return
        if not task.started:
            task.started = now  # when, for status
            task.attempts += 1
        if task.more is not None and task.more.kill_with is not None:
            self.stop_on_lane(w, task, "killed", *task.more.kill_with)

    def stop_on_lane(self, w: WorkerState, task: Task, reason: str, sig: str, grace: float) -> None:
        """Have a lane worker stop its task process, which runs ``task``."""
        if w.stopping or w.epoch is None:
            return  # asked already; or it is restarting, and no task of ours runs
        w.stopping, w.stop_reason = task.gid, reason
        self.send(self.workers_sock, w.ident, Kind.KILL, {"lane": w.epoch, "id": task.gid, "signal": sig,
                                                          "grace": grace})

    def lane_head(self, w: WorkerState) -> Task | None:
        """The oldest task a lane worker holds: the one its task process runs (or begins now)."""
        return self.tasks.get(next(iter(w.assigned), -1))

    def lane_due(self, w: WorkerState) -> float | None:
        """When the oldest task of a lane worker is due a STARTED or its timeout (None: nothing due)."""
        task = self.lane_head(w)
        if task is None or w.epoch is None:
            return None
        return timing.due(w.head_since, w.head_reported, task.options.get("timeout"), bool(w.stopping))

    def lane_timers(self, now: float) -> None:
        """STARTED for a lane's oldest task once it has run STARTED_DELAY; its timeout when due."""
        for w in self.lanes.values():
            task = self.lane_head(w)
            if task is None or w.epoch is None:
                continue
            if timing.started_due(now, w.head_since, w.head_reported):
                w.head_reported = True
                self.outbox(task.client).started.append(task.cid)
            if timing.timed_out(now, w.head_since, task.options.get("timeout"), bool(w.stopping)):
                self.stop_on_lane(w, task, "timeout", "SIGKILL", 0.0)

    def lane_ended(self, w: WorkerState, body: dict) -> None:
        """A lane worker's task process ended: the task it ran (if any) ends with it, as the
        worker says how; the tasks behind it never began, and go back to the queue."""
        link = self.paired.get(w.ident)
        if link is not None and link.lane is not None:
            self.serve_lane(w.ident, link)  # everything it wrote before it died
            link.lane.reset()  # and nothing half-written, or half-sent to it
        if body.get("lane") != w.epoch:
            return
        w.epoch = None  # until its next task process reads the lane (LANE)
        pid, how = body.get("pid"), f"its process {body.get('pid')} {body.get('how')}"
        # The tasks it held in front that it had begun ran (the last of them was running):
        # their results, if any, died with it.  The rest never began.
        held = list(w.assigned)
        begun = min(len(held), max(0, count(body.get("begun", 0)) - w.answered))
        for gid in reversed(held[begun:]):  # requeued at the front, in their order
            self.unassign(w, gid, count_attempt=False, why="before it started")
        for gid in held[:begun]:
            task = self.tasks.get(gid)
            if task is None:
                continue
            if w.stopping == gid and w.stop_reason == "timeout":
                meta = protocol.stopped("timeout", task.options.get("timeout"), how)
                self.task_done(w, protocol.result_entry(gid, Status.FAILED, 0, meta), [])
            elif task.killed:
                self.unassign(w, gid, count_attempt=True, why=how)
            else:
                meta = {"error": protocol.ERR_WORKER_LOST, "message": f"the task process {pid} of worker {w.name} "
                                                                      f"{body.get('how')}"}
                self.task_done(w, protocol.result_entry(gid, Status.FAILED, 0, meta), [])
        w.stopping, w.head_reported, w.answered = 0, False, 0


def lane_window(w: WorkerState) -> int:
    """How many tasks to put on a lane at once: the one running, and while tasks are short
    (they can no longer be cancelled there), enough for CREDIT_HORIZON seconds of work."""
    if w.task_time is None or w.task_time > tuning.PIPELINE_TASK_TIME:
        return 1
    return max(2, min(tuning.PIPELINE_TASKS, int(tuning.CREDIT_HORIZON / max(w.task_time, 1e-6))))
