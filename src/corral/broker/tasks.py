"""The task table: every task from SUBMIT to its one outcome (``TaskTable``, a part of ``Broker``).

A task is queued, assigned to a worker (``scheduler.py``), begun, and ends once:
with a result that goes to its client, or a failure.  A worker that disappears
gives its tasks back: those it had begun count an attempt and are queued again at
the front until ``retries`` is spent, the others go back without counting.  A
result for a task the broker no longer assigns to that worker is dropped, so no
task completes twice.  Cancels and kills reach the worker holding a task, whose
verdict decides (only it knows whether the task has begun).
"""

from __future__ import annotations

import signal
import time

from ..errors import ProtocolError
from ..logs import logger
from ..tuning import INTERNED, SMALL_FRAME
from ..wire import protocol
from ..wire.protocol import Kind, Status
from . import taskrecord
from .demand import of_options, release
from .records import ClientState, Outbox, Task, WorkerState
from .spill import MIN_SPILL

_log = logger("broker")

_NO_OPTIONS: dict = {}  # shared by every task without options; never modified
_STATUSES = frozenset(int(s) for s in Status)


class TaskTable:
    """The task half of ``Broker``: its methods read and change ``tasks``, ``queue``, the
    clients' and workers' records and the outboxes, and send CANCEL and KILL through
    ``Broker.send``."""

    def began(self, w: WorkerState, gids) -> None:
        """Worker ``w`` has begun these tasks (STARTED, or a RESULT's ``started``)."""
        for gid in gids:
            task = self.tasks.get(gid)
            if task is not None and task.worker == w.ident and not task.started:
                now = time.monotonic()
                task.started = now  # when, for status
                task.attempts += 1
                w.progress_at = now
                self.outbox(task.client).started.append(task.cid)

    def task_done(self, w: WorkerState, entry: list, payload: list) -> None:
        """A task's outcome from the worker that holds it (any other worker's is dropped)."""
        gid, status, _, meta = entry
        task = self.tasks.get(gid)
        if task is None or task.worker != w.ident:
            return  # late or duplicate: that task was reassigned or finished already
        if status not in _STATUSES:
            raise ProtocolError(f"unknown status {status!r:.20}")
        if not task.started:  # a short task: its RESULT is also its STARTED
            task.started = True
            task.attempts += 1
        held = w.assigned.pop(gid, None)
        if held:
            release(w, held)
        w.tasks += 1
        w.progress_at = time.monotonic()
        error = meta.get("error") if status == Status.FAILED else None
        if error == protocol.ERR_BROKEN:
            if self.trusts(w):
                self.break_pool(f"the initializer failed in worker {w.name}:\n{protocol.text(meta.get('message'))}")
                return
            # Another executor's worker cannot break ours: its task goes elsewhere, and it goes.
            message = f"worker {w.name} said its initializer failed"
            self.settle(w, task, Status.FAILED, [], {"error": protocol.ERR_WORKER_LOST, "message": message})
            self.refuse(self.workers_sock, w.ident, w, "it says its initializer failed")
            self.worker_gone(w, None)
            return
        self.settle(w, task, status, payload, meta)

    def settle(self, w: WorkerState, task: Task, status: Status, payload: list, meta: dict) -> None:
        """A task's outcome from its worker: retried if its process died (within ``retries``), else final."""
        if status != Status.OK:
            error = meta.get("error") if status == Status.FAILED else None
            retry = error == protocol.ERR_WORKER_LOST or (
                error == protocol.ERR_TIMEOUT and task.options.get("retry_on_timeout")
            )
            w.errors += 1
            if retry and not task.killed:
                # The task's process died (or outran its timeout and the client asked
                # for retries): the same as losing a worker.
                task.worker, task.started = None, False
                taskrecord.ended_on(task, w)
                self.retry_or_fail(task, f"{protocol.text(meta.get('message'))} (on {w.host})", error)
                return
        self.finish(task, status, payload, meta, w=w)

    def finish(self, task: Task, status: Status, payload: list, meta: dict, cascade: bool = True,
               w: WorkerState | None = None) -> None:
        """A task's one and only outcome (from worker ``w``'s RESULT, if it came in one): forward it
        to its client and forget the task; then the tasks waiting for it run or fail
        (``dependencies.py``)."""
        self.drop(task)
        taskrecord.stamp(task, meta, w)
        if status:  # counted for status (statusview.py); the results each client got are counted per turn
            self.count_failure(task.client)
        box = self.outbox(task.client)
        box.result(task.cid, status, payload, meta)
        if task.cancelling:  # its cancel came too late; the verdict follows the result
            box.too_late.append(task.cid)
        if cascade and task.more is not None and task.more.dependents:
            how = ("done" if status == Status.OK else
                   "killed" if status == Status.FAILED and meta.get("error") == protocol.ERR_KILLED else "failed")
            self.dependency_ended(task, status, payload, meta, how)

    def dropped(self, task: Task) -> None:
        """A task cancelled before it ran: forget it, tell its client, fail what waits for it."""
        self.drop(task)
        self.outbox(task.client).dropped.append(task.cid)
        c = self.clients.get(task.client)
        if c is not None:
            c.cancelled += 1
        if task.dependents:
            self.dependency_ended(task, Status.FAILED, [], {}, "cancelled")

    def fail(self, task: Task, error: str, message: str) -> None:
        """End a task with a failure of ``error`` (a protocol ERR_ name)."""
        self.finish(task, Status.FAILED, [], {"error": error, "message": message})

    def unassign(self, w: WorkerState, gid: int, count_attempt: bool, why: str = "") -> None:
        """Take a task back from a worker: killed, cancelled, retried (an attempt counted if
        ``count_attempt`` and it had begun) or queued again at the front."""
        task = self.tasks.get(gid)
        release(w, w.assigned.pop(gid, None))
        if task is None or task.worker != w.ident:
            return
        started = task.started
        task.worker, task.started = None, False
        if started:
            taskrecord.ended_on(task, w)
        if task.killed:
            self.fail(task, protocol.ERR_KILLED, f"the task was killed: {why}")
        elif task.cancelling and not started:  # it never ran: the cancel succeeds
            self.dropped(task)
        elif started and count_attempt:
            self.retry_or_fail(task, why)
        else:
            if started:
                task.attempts -= 1
            self.queue.appendleft(gid)

    def retry_or_fail(self, task: Task, why: str, error: str = protocol.ERR_WORKER_LOST) -> None:
        """Queue a task again at the front if it has attempts left, else fail it saying why."""
        retries = task.options.get("retries", self.clients[task.client].retries if task.client in self.clients else 0)
        if task.attempts <= retries:
            taskrecord.retried(task, why)
            self.queue.appendleft(task.gid)
            return
        plural = "s" if task.attempts != 1 else ""
        self.fail(task, error, f"{why}; the task ran {task.attempts} time{plural} and was not retried further")

    def worker_gone(self, w: WorkerState, why: str | None) -> None:
        """Take a worker out of service; requeue or fail what it held."""
        if not w.alive:
            return
        w.alive, w.gone_at = False, time.monotonic()
        if w.left is None:  # it said no BYE: it was lost, or we refused it
            w.left = "lost" if why is not None else "refused"
        _log.debug(f"worker {w.name} (pid {w.pid} on {w.host}) left: {w.left}")
        self.workers.pop(w.ident, None)
        self.sessions.pop(w.session, None)
        self.lanes.pop(w.ident, None)
        self.departed.append(w)
        self.departures += 1
        oldest = self.tasks.get(next(iter(w.assigned), None))
        if why is not None and oldest is not None and not oldest.started:
            # A task shorter than the worker's STARTED delay is reported by its RESULT alone,
            # so the task it was running may not be marked yet. The oldest one it held was
            # the one running: count it, or a task that kills its worker would run forever.
            oldest.started = True
            oldest.attempts += 1
        for gid in list(w.assigned):
            if why is not None:
                w.errors += 1 if self.tasks.get(gid) and self.tasks[gid].started else 0
            self.unassign(w, gid, count_attempt=True, why=why or f"worker {w.name} left")
        self.groups.leave(w)

    def submit(self, c: ClientState, cid: int, frames: list, options: dict) -> None:
        """Queue a task (checked already: ``_check_task``).  Its small frames are kept as
        bytes, not as ZeroMQ frames (a fraction of the memory), and a function frame
        repeated task after task (a map) is stored once."""
        if self.broken:
            self.outbox(c.ident).result(
                cid, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": self.broken}
            )
            return
        gid = self.next_gid
        self.next_gid += 1
        task = self.tasks[gid] = Task(gid, c.ident, cid, self.compact(frames), options or _NO_OPTIONS)
        c.tasks[cid] = gid
        if not options:  # the ordinary task
            frames = task.frames
            if len(frames) != 2 or len(frames[1]) >= MIN_SPILL or type(frames[0]) is not bytes:
                # (A smaller payload, the common one, is not counted and never spills: no call.)
                self.spill.add(task)  # counted from here on if it may spill: its end releases it (spill.py)
            self.queue.append(task)
            return
        if "priority" in options or "resources" in options or "queue" in options:
            task.place = of_options(options)
        waits = self.take_inline(task) if "deps" in options or "after" in options else None
        self.spill.add(task)  # (after the results sent inline are taken apart)
        if "refs" in options and not self.use_objects(c, task):
            return  # an object it needs is not held for its client (objects.py)
        if waits is not None and not self.wait_for(c, task, *waits):
            return  # it waits for other tasks (dependencies.py), or failed already
        self.queue.append(task)

    def compact(self, frames: list) -> tuple:
        """A tuple, not a list: one of bytes only is dropped from the garbage collector's
        watch, which a million queued tasks would otherwise make it scan again and again."""
        kept = [f if type(f) is bytes else bytes(f) if len(f) < SMALL_FRAME else f for f in frames]
        if kept and isinstance(kept[0], bytes):
            shared = self.interned.get(kept[0])
            if shared is None:
                if len(self.interned) >= INTERNED:
                    self.interned.clear()
                shared = self.interned[kept[0]] = kept[0]
            kept[0] = shared
        return tuple(kept)

    def cancel(self, c: ClientState, cids) -> None:
        """Cancel tasks that have not started; every id gets a verdict (CANCELLED).

        A queued task is dropped here. A task a worker holds is the worker's to
        judge, since only it knows whether the task has started. A task the
        broker no longer knows has finished: its RESULT went out first.
        """
        box = self.outbox(c.ident)
        by_worker: dict[bytes, list] = {}
        for cid in cids:
            task = self.tasks.get(c.tasks.get(cid, -1))
            if task is None:
                box.too_late.append(cid)
            elif task.worker is None:
                self.dropped(task)
            elif task.worker in self.lanes:  # on its way to a task process, or in it: it runs
                box.too_late.append(cid)
            elif not task.cancelling:
                task.cancelling = True
                by_worker.setdefault(task.worker, []).append(task.gid)
        for ident, gids in by_worker.items():
            self.send(self.workers_sock, ident, Kind.CANCEL, {"ids": gids})

    def cancel_verdict(self, w: WorkerState, body: dict) -> None:
        """A worker's answer to CANCEL: which tasks it dropped, which had started."""
        self.grant(w, body)
        w.progress_at = time.monotonic()
        verdicts = [(g, True) for g in protocol.ids(body)] + [(g, False) for g in protocol.ids(body, "running")]
        for gid, dropped in verdicts:
            task = self.tasks.get(gid)
            if task is None or task.worker != w.ident or not task.cancelling:
                continue  # finished meanwhile: its verdict went out with its result
            task.cancelling = False
            if dropped:
                self.dropped(task)
            else:
                self.outbox(task.client).too_late.append(task.cid)

    def kill(self, c: ClientState, cids, grace: float, sig: str = "SIGTERM") -> None:
        """Stop running tasks: their workers signal the task processes and report back."""
        by_worker: dict[bytes, list] = {}
        for cid in cids:
            task = self.tasks.get(c.tasks.get(cid, -1))
            if task is None or task.killed:
                continue
            task.killed = True
            w = self.lanes.get(task.worker)
            if task.worker is None:  # still queued: gone at once
                self.kill_queued(task, "before it started")
            elif w is not None:  # on a lane: stop its process when the task runs there
                task.kill_with = (sig, grace)
                if task.gid == next(iter(w.assigned), None):
                    self.stop_on_lane(w, task, "killed", sig, grace)
            else:
                by_worker.setdefault(task.worker, []).append(task.gid)
        for ident, gids in by_worker.items():
            self.send(self.workers_sock, ident, Kind.KILL, {"ids": gids, "signal": sig, "grace": grace})

    def kill_queued(self, task: Task, why: str) -> None:
        """A task killed before any worker took it: it ends now."""
        self.fail(task, protocol.ERR_KILLED, f"the task was killed {why}")

    def drop(self, task: Task) -> None:
        """Forget a task wherever it is; a queue entry is skipped lazily by dispatch()."""
        self.tasks.pop(task.gid, None)
        c = self.clients.get(task.client)
        if c is not None:
            c.tasks.pop(task.cid, None)
        more = task.more
        if more is not None:
            if more.deps is not None:
                self.release_results(task)
            if more.waiting:  # it ends before what it waited for (dependencies.py)
                more.waiting = 0
                self.waiting_tasks -= 1
            if more.weight:
                self.spill.release(task)  # its payload's bytes, or its spill file
        if task.options and "refs" in task.options:
            self.unuse_objects(task)
        w = self.workers.get(task.worker) if task.worker is not None else None
        if w is not None:
            held = w.assigned.pop(task.gid, None)
            if held:
                release(w, held)

    def outgoing(self, w: WorkerState, tasks: list[Task]) -> tuple[list, list]:
        """The entries and frames of the TASKS that gives ``w`` these tasks: each task's frames (read back
        if spilled: ``spill.py``), with the results it takes (``dependencies.py``) and the objects ``w``
        lacks (``objects.py``).  A task whose spill file cannot be read fails instead, and ``w`` gets its
        credit back."""
        spill = self.spill
        if not spill.files and not spill.queued:  # none has spilled, none may (spill.py): all frames in memory
            for task in tasks:
                if task.more is not None or (task.options and "refs" in task.options):
                    break
            else:  # the ordinary batch, and its short way: plain tasks
                return ([protocol.task_entry(task.gid, len(task.frames), task.options) for task in tasks],
                        [frame for task in tasks for frame in task.frames])
        entries: list = []
        frames: list = []
        needed = None  # the objects w lacks (objects.py), once a task needs one
        for task in tasks:
            try:
                task_frames = self.spill.outgoing(task)
            except OSError as exc:
                release(w, w.assigned.pop(task.gid, None))  # its resources too, as unassign gives them back
                w.credit += 1
                task.worker = None
                self.fail(task, protocol.ERR_SPILL, f"the broker could not read back the arguments it had spilled "
                                                    f"to disk: {exc}; its spill directory must stay while it runs")
                continue
            options = task.options
            if task.deps is not None:
                task_frames, options = self.with_results(task, task_frames)
            if "refs" in options:
                if needed is None:
                    needed = self.objects_needed(w) if self.objects else set()
                task_frames, options = self.with_objects(w, task_frames, options, needed)
            entries.append(protocol.task_entry(task.gid, len(task_frames), options))
            frames.extend(task_frames)
        return entries, frames

    def terminate(self, c: ClientState, hard: bool) -> None:
        """``terminate_workers()``/``kill_workers()``: stop everything this client started."""
        sig = "SIGKILL" if hard else "SIGTERM"
        why = f"terminated by {'kill' if hard else 'terminate'}_workers()"
        running = [self.tasks[g] for g in c.tasks.values() if g in self.tasks]
        for task in running:
            if task.worker is None and task.gid in self.tasks:  # (a dependent may have failed with its dependency)
                self.kill_queued(task, why)
        self.kill(c, [t.cid for t in running if t.gid in self.tasks], 0.0, sig)
        for task in running:
            if task.gid in self.tasks:  # the future fails now, as ProcessPoolExecutor's do
                self.fail(task, protocol.ERR_WORKER_LOST, f"the worker running this task was {why}")
        if self.embedded and self.pool:
            self.pool.accepting = False
            self.pool.signal_all(signal.SIGKILL if hard else signal.SIGTERM)

    def client_gone(self, c: ClientState) -> None:
        """Drop a departed client's queued tasks and stop its running ones."""
        _log.debug(f"client {c.ident!r} left; {len(c.tasks)} of its tasks dropped")
        self.kill(c, list(c.tasks), grace=self.heartbeat)
        for gid in list(c.tasks.values()):
            if gid in self.tasks:
                self.drop(self.tasks[gid])
        self.objects_client_gone(c)
        self.note_client_gone(c)  # (statusview.py)
        self.clients.pop(c.ident, None)
        self.outboxes.pop(c.ident, None)
        self.sessions.pop(c.session, None)

    def outbox(self, client: bytes) -> Outbox:
        """What this turn owes ``client`` (made on first use)."""
        box = self.outboxes.get(client)
        if box is None:
            box = self.outboxes[client] = Outbox()
        return box
