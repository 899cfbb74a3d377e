"""A persistent worker: one task process runs many tasks, fed through the supervisor.

The supervisor holds the tasks it was sent (``pending``) and hands them to its
task process in order (``inflight``: the oldest runs, the rest wait behind it),
so it always knows which one runs: the oldest not answered yet.  It grants the
broker credit for the tasks it wants to hold, and tops it up as results go back,
so the next task is already waiting when one finishes.  How many it holds
adapts to how long its tasks take: enough for about ``CREDIT_HORIZON`` seconds
of work (at least two, at most ``MAX_CREDIT``), so that no-ops stream in batches
while long tasks stay spread over the workers; a fixed ``prefetch`` turns that off.

While tasks are short (``PIPELINE_TASK_TIME`` on average), the task process gets
the tasks after the running one in a pipeline (up to ``PIPELINE_BYTES`` of
payload), so it never waits for the supervisor between two tasks.  Only tasks
still in the supervisor's own queue can be cancelled; one already in the
pipeline runs, as a call already handed to a ProcessPoolExecutor's process
does.  Results that arrive together leave in one RESULT batch.  When the task
process dies, the supervisor says how (exit code or signal), starts a new one,
and the tasks it held but had not started go to that one.
"""

from __future__ import annotations

import signal
import time
from collections import deque

from .. import timing
from ..timing import smooth
from ..tuning import CREDIT_HORIZON, PIPELINE_BYTES, PIPELINE_TASK_TIME, PIPELINE_TASKS
from ..wire import protocol
from ..wire.protocol import MAX_CREDIT, Kind, Status
from ..wire.resend import SentResults
from . import objects, output, task_process
from .containment import exit_words
from .heldtask import HeldTask, malformed, stopped, task_header
from .objects import ObjectCache
from .supervisor import Supervisor


class PersistentWorker(Supervisor):
    """Tasks held by the supervisor and fed to one task process (see the module docstring)."""

    def before_connect(self) -> None:
        prefetch = self.config.prefetch
        # None: hold as many tasks as CREDIT_HORIZON says, at least 2 (fresh: 2).
        self.adaptive = prefetch is None and not self.fresh
        self.prefetch = max(1, prefetch if prefetch is not None else 2)
        self.max_tasks = self.config.max_tasks
        self.granted = 0  # credit the broker holds from us and has not used yet
        self.task_time: float | None = None  # moving average of how long a task takes
        self.pending: deque[HeldTask] = deque()  # received, not handed to the task process yet
        self.inflight: deque[HeldTask] = deque()  # handed to the task process, in order; [0] runs
        self.pipe_bytes = 0  # payload bytes of the tasks in self.inflight
        self.results: list = []  # RESULT entries and frames, sent at the end of a loop turn
        self.result_frames: list = []
        self.busy = 0.0  # seconds those tasks ran, together
        # A worker elsewhere keeps what it sent a while, for a session resumed after a reset (resend.py).
        self.sent = SentResults() if self.fd is None else None
        self.objects = ObjectCache()  # the large objects the broker sent us (objects.py)

    def hello(self, resume: dict | None = None) -> None:
        if resume is None:  # the broker starts a new model of our cache: so do we
            self.objects.clear()
        super().hello(resume)

    # -- what we hold ---------------------------------------------------------------

    @property
    def current(self) -> HeldTask | None:
        """The task the task process is running: the oldest one it has not answered."""
        return self.inflight[0] if self.inflight else None

    def estimate(self) -> float | None:
        """How long a task takes: the recent average, or longer if the running one already ran longer."""
        head = self.current
        if head is None or not head.started or self.task_time is None:
            return self.task_time
        return max(self.task_time, time.monotonic() - head.started)

    def want(self) -> int:
        """How many tasks to hold (queued here plus in the task process)."""
        estimate = self.estimate()
        if not self.adaptive or estimate is None:
            want = self.prefetch
        else:
            want = max(self.prefetch, min(MAX_CREDIT, int(CREDIT_HORIZON / max(estimate, 1e-6))))
        room = self.room_left()  # tasks_max: no more than we will run (lifetime.py)
        return want if room is None else min(want, room)

    def flush(self) -> None:
        """Send the results gathered this turn in one RESULT, with the credit to top up."""
        held = len(self.pending) + len(self.inflight)
        credit = 0 if self.stopping or self.broken or self.leaving else max(0, self.want() - held - self.granted)
        self.granted += credit
        if self.results:
            if self.sent is not None:
                self.sent.expire(self.heartbeat * self.liveness)
                self.sent.record(self.results, self.result_frames)
            busy = round(self.busy, 6)
            started = self.begun_unreported()
            for chunk, frames in protocol.batches(self.results, self.result_frames, 2):
                body = {"results": chunk, "credit": credit, "busy": busy}
                if started:
                    body["started"], started = started, None
                self.send(Kind.RESULT, body, frames)
                credit = busy = 0
            self.results, self.result_frames, self.busy = [], [], 0.0
        elif credit:
            self.send(Kind.READY, {"credit": credit})

    def serve_tasks(self) -> None:
        # A task that can begin without a fork begins before the results go, so that
        # their RESULT says it began (no STARTED of its own); no fork delays them.
        self.feed(fork=False)
        self.flush()
        if self.pending:  # (with none left, a second flush would find nothing more to send)
            self.feed()
            self.flush()

    def resume_state(self) -> dict:
        """Our tasks, for a HELLO that resumes our session: held, begun, results sent or about to be,
        and all the credit we grant (what the broker had may have been lost)."""
        held = [t.gid for t in (*self.inflight, *self.pending)]
        sent = [entry[0] for entry in self.results]
        if self.sent is not None:
            self.sent.expire(self.heartbeat * self.liveness)
            sent += self.sent.ids()
        begun = [self.current.gid] if self.current is not None and self.current.started else []
        self.granted = 0 if self.stopping or self.broken or self.leaving else max(0, self.want() - len(held))
        return {"holding": held, "started": begun, "sent": sent, "credit": self.granted}

    def resend(self, gids: list) -> None:
        if self.sent is None:
            return
        entries, frames = self.sent.take(gids)
        if entries:
            self.send(Kind.RESULT, {"results": entries, "credit": 0, "busy": 0.0}, frames)

    def unstarted(self) -> list[int]:
        return [t.gid for t in list(self.inflight)[1:] + list(self.pending)]

    def idle(self) -> bool:
        return self.current is None and not self.pending

    def give_back(self) -> list[int]:
        given, self.pending = [t.gid for t in self.pending], deque()
        return given

    def running(self) -> list[int]:
        return [self.current.gid] if self.current is not None else []

    def preparing(self) -> bool:
        return bool(self.pending) and self.current is None and (self.proc is None or not self.proc.ready)

    def forget_tasks(self) -> None:
        if self.current is not None:
            self.stop_task(self.current, "orphaned", signal.SIGKILL, 0.0)
            self.task_process_ended()  # collects it; its report goes nowhere, the broker is gone
        self.pending.clear()
        self.results, self.result_frames, self.busy = [], [], 0.0
        if self.sent is not None:
            self.sent = SentResults()

    # -- messages from the broker ---------------------------------------------------

    def take(self, entries: list) -> None:
        for entry, frames in entries:
            self.granted = max(0, self.granted - 1)
            options, problem = entry[2], None
            if "refs" in options or "forget" in options:
                try:
                    frames, options = self.objects.take(frames, options)
                except ValueError as exc:
                    problem = str(exc)
            task = HeldTask(entry[0], frames, options, size=sum(f.nbytes for f in frames))
            problem = problem or malformed(task)
            if problem:  # never queued: a task we cannot run must not reach the task process
                self.report(task, Status.FAILED, [], {"error": protocol.ERR_DESERIALIZATION,
                                                      "message": f"the worker got a malformed task: {problem}"})
            else:
                self.pending.append(task)

    def cancel(self, ids: set) -> None:
        """Drop the named tasks still queued here; tell the broker which ones those were.

        A task already in the task process's pipeline runs (it may have begun).
        """
        dropped = [t.gid for t in self.pending if t.gid in ids]
        self.pending = deque(t for t in self.pending if t.gid not in ids)
        running = sorted(ids - set(dropped))
        self.send(Kind.CANCELLED, {"ids": dropped, "running": running})

    def kill(self, ids: set, sig: int, grace: float) -> None:
        waiting = [t for t in self.pending if t.gid in ids]
        for task in waiting:
            self.pending.remove(task)
            self.report(task, *stopped(task, "killed", "before it started"))
        for task in self.inflight:
            if task.gid in ids:
                task.kill_signal, task.grace = sig, grace
        head = self.current
        if head is not None and head.gid in ids:
            self.stop_task(head, "killed", sig, grace)
        # A killed task still behind the running one is stopped when its turn comes (next_head).

    def stop_task(self, task: HeldTask, reason: str, sig: int, grace: float) -> None:
        """Signal the process running ``task``; SIGKILL follows after ``grace`` seconds."""
        if task.stop_reason is None:
            task.stop_reason = reason
        self.proc.signal(sig)
        if sig != signal.SIGKILL:
            task.kill_at = time.monotonic() + grace

    # -- the task process -------------------------------------------------------------

    def start_process(self) -> task_process.TaskProcess:
        return task_process.start(self.setup, self.fresh, self.spawn)

    def feed(self, fork: bool = True) -> None:
        """Hand queued tasks to the task process, a pipeline of them while they are short.

        ``fork=False``: only to a process that is there already.
        """
        if not self.pending or self.stopping or self.room_left(len(self.inflight)) == 0:
            return
        if self.proc is None:
            if not fork:
                return
            self.proc = self.start_process()
            self.wait_until_ready()
            if self.broken:
                task = self.pending.popleft()
                self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": self.broken})
                self.stopping = True
                return
        batch: list[HeldTask] = []
        while self.pending and self.room_for(self.pending[0]):
            task = self.pending.popleft()
            batch.append(task)
            self.inflight.append(task)
            self.pipe_bytes += task.size
        if not batch:
            return
        header, frames = objects.batch(batch, self.objects, self.proc, task_header(batch))
        try:
            self.proc.conn.send(header, frames)
        except OSError:  # the task process died: the tasks of this batch never reached it
            for task in batch:
                self.inflight.pop()
                self.pipe_bytes -= task.size
            self.pending.extendleft(reversed(batch))
            self.task_process_ended(None)  # reports the task it was running, if any
            return
        if self.inflight[0] is batch[0]:
            self.next_head()

    def room_for(self, task: HeldTask) -> bool:
        """May ``task`` join the task process's pipeline now?"""
        if not self.inflight:
            return True  # the task process is idle and reads it at once, however large
        if self.max_memory or self.inflight[0].stop_reason:
            return False  # memory is checked between tasks; a process being stopped gets nothing more
        estimate = self.estimate()
        if estimate is None or estimate > PIPELINE_TASK_TIME:
            return False  # not known to be short: keep tasks here, where they can still be cancelled
        if self.max_tasks and self.proc.tasks + len(self.inflight) >= self.max_tasks:
            return False
        if self.room_left(len(self.inflight)) == 0:
            return False
        return len(self.inflight) < PIPELINE_TASKS and self.pipe_bytes + task.size <= PIPELINE_BYTES

    def begun_unreported(self) -> list[int]:
        """The running task, if it has begun and the broker has not been told: a RESULT takes it along."""
        task = self.current
        if task is None or not task.started or task.reported:
            return []
        task.reported = True
        return [task.gid]

    def next_head(self) -> None:
        """The oldest task in the pipeline has begun (the one before it just ended)."""
        task = self.current
        if task is None:
            return
        task.started = time.monotonic()
        if task.kill_signal is not None:
            self.stop_task(task, "killed", task.kill_signal, task.grace)

    def read_task_process(self) -> None:
        """Read the messages the task process has written (a burst arrives in one read)."""
        while self.proc is not None:
            self.read_one()
            if self.proc is None or not self.proc.conn.buffered():  # more, later, wakes the poll
                return

    def task_process_exited(self) -> None:
        """The task process has ended (its pidfd said so): take the messages it wrote whole,
        then report it, without waiting for an end of file that a process it forked may
        keep from coming."""
        proc = self.proc
        proc.conn.set_blocking(False)
        while self.proc is proc:
            self.read_one()  # ends it at the first message not there whole (BlockingIOError)

    def read_one(self) -> None:
        """One message of the task process: READY or BROKEN (fresh), a task's outcome (DONE), or its
        progress (PROGRESS)."""
        proc, task = self.proc, self.current
        try:
            header, frames = proc.conn.recv()
        except (EOFError, OSError):
            self.task_process_ended()
            return
        if header[0] == task_process.READY:  # a fresh task process finished its initializer
            proc.ready = True
            return
        if header[0] == task_process.BROKEN:  # a fresh task process's initializer failed
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": header[1]})
            self.inflight.clear()
            self.stopping = True
            return
        if header[0] == task_process.PROGRESS:  # corral.report() in the running task: to the broker
            if task is not None and header[1] == task.gid:
                self.send(Kind.PROGRESS, {"progress": [list(header[1:4])]})
            return
        _, gid, status, meta = header
        if task is None or gid != task.gid:
            return
        self.inflight.popleft()
        self.pipe_bytes -= task.size
        proc.tasks += 1
        if task.stop_reason is not None:  # finished before the signal landed: it was still stopped
            self.task_process_ended(task)
            return
        self.report(task, Status(status), frames, meta)
        self.next_head()
        self.answered(proc)

    def answered(self, proc: task_process.TaskProcess) -> None:
        """The task process has answered a task: replace it if it has run its share, or grown too large."""
        if not self.inflight and self.recycle_reason(proc):
            self.proc = None
            self.end_process(proc)

    def recycle_reason(self, proc: task_process.TaskProcess) -> str | None:
        """Why the task process must make room for a new one after this task, if it must."""
        if self.max_tasks and proc.tasks >= self.max_tasks:
            return "max_tasks"
        if self.max_memory:
            try:
                import psutil

                if psutil.Process(proc.pid).memory_info().rss > self.max_memory:
                    return "max_memory"
            except Exception:  # noqa: BLE001 - it died meanwhile; the next read notices
                return None
        return None

    def task_process_ended(self, task: HeldTask | None = None) -> None:
        """The task process is gone (or we stopped it): report the task it was running.

        The tasks behind it in the pipeline never started: they wait for the next
        task process.
        """
        proc, self.proc = self.proc, None
        code = self.end_process(proc)
        task = task or self.current
        if self.inflight and self.inflight[0] is task:
            self.inflight.popleft()
        self.pipe_bytes = 0
        while self.inflight:
            waiting = self.inflight.pop()
            waiting.started = 0.0
            self.pending.appendleft(waiting)
        if task is None:
            return
        if task.stop_reason is not None:
            self.report(task, *stopped(task, task.stop_reason, f"its process {proc.pid} {exit_words(code)}"))
        elif self.ended_with_the_job(code):  # lifetime.py: handed back at BYE, as if we had cut it off
            self.say(f"task {task.gid}: its process {proc.pid} {exit_words(code)} with our job; handed back")
            self.cut_off.append(task.gid)
        elif self.died_initializing(proc):
            message = f"the task process {proc.pid} {exit_words(code)} while running the initializer"
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": message})
            self.stopping = True
        else:
            message = f"the task process {proc.pid} of worker {self.name} {exit_words(code)}"
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_WORKER_LOST, "message": message})

    def died_initializing(self, proc: task_process.TaskProcess) -> bool:
        """Did the task process die inside the initializer (which breaks the executor)?  A persistent
        one's initializer ran before it got a task (``wait_until_ready``)."""
        return False

    def report(self, task: HeldTask, status: Status, frames: list, meta: dict) -> None:
        """Queue a task's outcome for this turn's RESULT batch (what it printed goes first: ``output.py``)."""
        if task.options or self.output is not None:
            output.reported(self, task, meta)
        now = time.monotonic()
        busy = now - task.started if task.started else 0.0
        self.busy += busy
        self.idle_since = now
        self.tasks_done += 1
        if task.started and status != Status.FAILED:
            self.task_time = smooth(self.task_time, busy)
        self.results.append(protocol.result_entry(task.gid, status, len(frames), meta))
        self.result_frames.extend(frames)

    # -- time-driven work -----------------------------------------------------------

    def due(self) -> float | None:
        task = self.current
        if task is None:
            return None
        when = timing.due(task.started, task.reported, task.options.get("timeout"), task.stop_reason is not None)
        if task.kill_at is not None:  # SIGKILL after a grace
            when = task.kill_at if when is None else min(when, task.kill_at)
        return when

    def timers(self, now: float) -> None:
        task = self.current
        if task is None:
            return
        if task.kill_at is not None and now >= task.kill_at:
            task.kill_at = None
            self.proc.signal(signal.SIGKILL)
        if timing.timed_out(now, task.started, task.options.get("timeout"), task.stop_reason is not None):
            self.stop_task(task, "timeout", signal.SIGKILL, 0.0)
        if timing.started_due(now, task.started, task.reported):
            task.reported = True
            self.send(Kind.STARTED, {"ids": [task.gid]})
