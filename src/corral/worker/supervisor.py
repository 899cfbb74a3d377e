"""The worker role: a supervisor that takes tasks from a broker and runs each in a task process.

::

    broker ROUTER <--DEALER-- Worker (supervisor)  --socket pair-->  task process
                   HELLO, READY(credit)             never runs          (runner.py)
                   --> WELCOME, TASKS               user code           persistent: many
                   <-- STARTED, RESULT(+credit)     watches time,       tasks; fresh: one
                   --> CANCEL, KILL, SHUTDOWN       memory, exit
                   <-> HEARTBEAT

The supervisor never runs user code, so it answers heartbeats while a task
holds the GIL in C code for minutes, and it can always stop a task: on a
timeout, on ``Future.kill()``, when its client is gone.  When a task process
dies, the supervisor says how (exit code or signal) and, for a persistent
worker, starts a new one; tasks it held but had not started go to the new one.

A worker grants the broker credit for the tasks it wants to hold, and tops
the credit up as results go back, so the next task is already waiting when
one finishes.  How many it holds adapts to how long its tasks take: enough
for about ``CREDIT_HORIZON`` seconds of work (at least two, at most
``MAX_CREDIT``), so that no-ops stream in batches while long tasks stay
spread over the workers; a fixed ``prefetch`` turns that off.

While tasks are short (``PIPELINE_TASK_TIME`` on average), a persistent
task process gets the tasks after the running one in a pipeline (up to
``PIPELINE_BYTES`` of payload), so it never waits for the supervisor between
two tasks.  The tasks run in order, so the supervisor
always knows which one is running: the oldest one not answered yet.  Only
tasks still in the supervisor's own queue can be cancelled; one already in
the pipeline runs, as a call already handed to a ProcessPoolExecutor's
process does.  Results that arrive together leave in one RESULT batch.

A worker started by an embedded broker's pool talks to it over an inherited
socket pair (``--fd``, ``stream.Stream``) instead of a ZeroMQ socket.  A
persistent one whose supervisor need not look at each task (no max_tasks,
max_memory, idle_timeout, fixed prefetch or spawn) also inherits a lane
(``--lane``, ``lane.Lane``): its task process takes its tasks from the
broker and answers them there, and the supervisor only watches.  It stops
the process when the broker asks (for a task it finds running in the page
the process writes, ``runner.LanePage``), and when the process ends it says
how and how many tasks it had begun (ENDED), and starts the next one with
the next epoch (LANE).  If
the broker goes silent (or closes that socket pair), a worker started by a
local pool exits (its client is gone); a standalone worker reconnects with
backoff and joins the broker again when it is back.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import HEARTBEAT, LIVENESS, WorkerConfig
from ..local.pool import exit_words
from ..logs import Throttle, logger
from ..tuning import CREDIT_HORIZON, PIPELINE_TASK_TIME, PIPELINE_TASKS, STARTED_DELAY
from ..wire import poller, protocol, stream
from ..wire.poller import POLLIN, POLLOUT
from ..wire.protocol import MAX_CREDIT, Kind, Status
from . import containment
from . import task_process as runner
from .template import Template, TemplateGone

if TYPE_CHECKING:
    import zmq

WAIT_NOTE = 5.0  # a standalone worker with no broker after this many seconds says so; then at doubling intervals
WAIT_NOTE_MAX = 60.0  # ... at least once a minute
# Payload bytes queued in a task process's socket behind the running task: far
# below the socket buffer, so the supervisor never blocks writing to it.
PIPELINE_BYTES = 64 << 10
# A fresh worker's template imports each new function ahead (template.py): at most
# this many, none larger than WARM_BYTES pickled, each given IMPORT_PATIENCE seconds.
# A spare forked before an import that took over SLOW_IMPORT is replaced by a warm one.
WARM_MAX = 64
WARM_BYTES = 1 << 20
IMPORT_PATIENCE = 60.0
SLOW_IMPORT = 0.001
LANE_STOP_CHECK = 0.001  # seconds between looks at a lane's page for a task to stop when it begins
PARENT_CHECK = 0.1  # seconds between checks that our parent lives (it also sends a signal when it dies)
READY_TRIES = 3  # task processes that may die before saying READY, when there is no initializer to blame
MAX_BACKOFF = 10.0
_log = logger("worker")


@dataclass
class Held:
    """A task this worker holds: waiting, or running in the task process."""

    gid: int
    frames: list
    options: dict
    started: float = 0.0
    stop_reason: str | None = None  # why we are killing its process: "timeout" or "killed"
    kill_at: float | None = None  # when SIGTERM turns into SIGKILL
    reported: bool = False  # STARTED sent
    kill_signal: int | None = None  # killed while waiting in the pipeline: stop it when it starts
    grace: float = 0.0
    size: int = 0  # payload bytes


class Worker:
    """A worker's supervisor: its link to the broker, the tasks it holds, and its task processes.

    ``config`` says what the worker is (``config.WorkerConfig``); the rest is how it
    was started: a ZeroMQ ``address``, or an inherited socket pair ``fd`` (and a
    ``lane``, whose task processes poll it ``spin`` seconds before they sleep), the
    ``parent_pid`` it dies with, and ``setup``: (sys.path, pickled initializer or
    None, shared-memory directory or None).
    """

    def __init__(
        self,
        address: str | None,
        config: WorkerConfig | None = None,
        *,
        fd: int | None = None,
        lane: int | None = None,
        spin: float = 0.0,
        parent_pid: int | None = None,
        name: str | None = None,
        setup: tuple = (None, None, None),
    ):
        config = config or WorkerConfig()
        fresh, prefetch, max_tasks = config.fresh, config.prefetch, config.max_tasks
        self.config = config
        self.address = address or "its socket pair"
        self.fd = fd  # our end of a socket pair to the broker, instead of a ZeroMQ address
        # A lane (runner.py): the task process takes tasks from the broker and answers them
        # there; we watch it.  The pool gives one only where we need not look at each task
        # (LocalPool.lanes).
        self.lane = lane
        self.spin = spin  # seconds its task process polls the lane before it sleeps (poller.Spin)
        self.epoch = 0  # of the task process on the lane: tasks for an earlier one are skipped
        self.page = runner.LanePage() if lane is not None else None
        self.lane_stop: tuple | None = None  # (task id, tasks begun then, signal, grace): stop it when it begins
        self.lane_kill_at: float | None = None  # when that SIGTERM turns into SIGKILL
        self.fresh = fresh
        # None: hold as many tasks as CREDIT_HORIZON says, at least 2 (fresh: 2).
        self.adaptive = prefetch is None and not fresh
        self.prefetch = max(1, prefetch if prefetch is not None else 2)
        self.granted = 0  # credit the broker holds from us and has not used yet
        self.task_time: float | None = None  # moving average of how long a task takes
        self.max_tasks = max_tasks
        self.parent_pid = parent_pid
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # (sys.path, pickled initializer or None, directory for large buffers or None)
        self.setup = (setup[0] if setup[0] is not None else list(sys.path), setup[1], setup[2])
        self.spawn = config.spawn
        self.idle_timeout = config.idle_timeout
        self.max_memory = config.max_memory
        self.reconnect_on_silence = (config.reconnect or not parent_pid) and fd is None
        self.heartbeat = HEARTBEAT  # until the broker's WELCOME says otherwise
        self.liveness = LIVENESS
        self.pending: deque[Held] = deque()  # received, not handed to the task process yet
        self.inflight: deque[Held] = deque()  # handed to the task process, in order; [0] runs
        self.pipe_bytes = 0  # payload bytes of the tasks in self.inflight
        self.results: list = []  # RESULT entries and frames, sent at the end of a loop turn
        self.result_frames: list = []
        self.busy = 0.0  # seconds those tasks ran, together
        self.proc: runner.TaskProcess | None = None
        self.spare: runner.TaskProcess | None = None  # fresh: the next task's process, forked ahead
        self.zombies: list[runner.TaskProcess] = []  # finished task processes not collected yet
        self.broken: str | None = None
        self.stopping = False
        self.said_hello = False
        self.welcomed = False  # the broker answered our last HELLO
        self.waiting_since, self.wait_note = time.monotonic(), WAIT_NOTE  # for note_waiting()
        self.complain = Throttle(self.warn)  # what the broker sends wrong: never a flood of lines
        self.idle_since = time.monotonic()
        self.parent_checked = 0.0
        # What a task starts ends with its task process (containment.py): we adopt the
        # orphans of our task processes, and keep them in a cgroup where we may.
        self.family = containment.Family()
        self.last_sweep = time.monotonic()
        self.on_terminated: Callable[[], None] | None = None  # called by on_sigterm before we exit
        # A fresh worker forks its task processes from a template, itself forked
        # now, before ZeroMQ starts its threads (template.py says why).
        self.template = self.new_template() if fresh and not config.spawn and hasattr(os, "fork") else None
        # Send the template each new function to import ahead; not with an initializer,
        # which runs in each task process and may set up what those imports read.
        self.warming = self.template is not None and self.setup[1] is None
        self.warmed: set[bytes] = set()  # pickled functions sent to it
        self.ctx = _zmq().Context() if fd is None else None
        self.link: stream.Stream | _DealerLink
        self.connect()

    # -- the broker connection --------------------------------------------------

    def connect(self) -> None:
        if self.fd is not None:
            self.link = stream.Stream(socket.socket(fileno=self.fd))
        else:
            self.link = _DealerLink(self.ctx, self.address)
        self.last_heard = self.last_sent = time.monotonic()

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.link.send(protocol.message(kind, body, frames))
        self.last_sent = time.monotonic()

    def hello(self) -> None:
        info = {
            "role": "worker",
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "fresh": self.fresh,
        }
        if self.lane is not None:
            info["lane"] = self.epoch
        if self.broken:
            info["broken"] = self.broken
        self.send(Kind.HELLO, info)
        self.said_hello = True
        self.granted = 0
        if not self.broken:
            self.flush()

    def reconnect(self) -> bool:
        """The broker went silent: drop its tasks and dial again until it answers."""
        self.forget_tasks()
        self.waiting_since, self.wait_note = time.monotonic(), WAIT_NOTE
        backoff = self.heartbeat
        while not self.stopping:
            self.link.close(linger=0)
            self.connect()
            self.hello()
            if self.link.sock.poll(backoff * 1000):
                self.last_heard = time.monotonic()
                return True
            self.note_waiting()
            backoff = min(backoff * 2, MAX_BACKOFF)
        return False

    def forget_tasks(self) -> None:
        """Our broker no longer knows our tasks: stop the running one, drop the rest."""
        if self.current is not None:
            self.stop_task(self.current, "orphaned", signal.SIGKILL, 0.0)
            self.task_process_ended()  # collects it; its report goes nowhere, the broker is gone
        self.pending.clear()
        self.results, self.result_frames, self.busy = [], [], 0.0

    def note_waiting(self) -> None:
        """A standalone worker that has no broker yet says so, and for how long (at growing intervals)."""
        waited = time.monotonic() - self.waiting_since
        if self.reconnect_on_silence and not self.welcomed and waited >= self.wait_note:
            self.wait_note = min(self.wait_note * 2, waited + WAIT_NOTE_MAX)
            self.say(f"waiting for the broker at {self.address} ({waited:.0f} s so far)")

    def say(self, line: str, level: int = logging.INFO) -> None:
        """Log ``line`` as this worker's (``corral.worker``)."""
        _log.log(level, f"{self.name}: {line}")

    def warn(self, line: str) -> None:
        """Log a warning (what the broker sent wrong: through ``complain``, throttled)."""
        self.say(line, logging.WARNING)

    @property
    def current(self) -> Held | None:
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
            return self.prefetch
        return max(self.prefetch, min(MAX_CREDIT, int(CREDIT_HORIZON / max(estimate, 1e-6))))

    def flush(self) -> None:
        """Send the results gathered this turn in one RESULT, with the credit to top up."""
        held = len(self.pending) + len(self.inflight)
        lane = self.lane is not None  # the broker decides how many tasks a lane gets
        credit = 0 if self.stopping or self.broken or lane else max(0, self.want() - held - self.granted)
        self.granted += credit
        if self.results:
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

    def run(self) -> int:
        try:
            if not self.fresh:
                self.proc = self.start_process()
                self.wait_until_ready()
            self.hello()
            if self.broken:
                return 3
            signal.signal(signal.SIGTERM, self.on_sigterm)
            waits = _zmq().Poller() if self.fd is None else poller.FdPoller()
            while not self.stopping:
                link = self.link.poll_key  # writable matters only while output waits
                waits.register(link, POLLIN | (POLLOUT if self.link.pending else 0))
                # The task process's socket, and its end (a pidfd): seen even while a process it
                # forked holds that socket open.  Looked at only while it is still the one we watched:
                # its successor may get the same descriptor numbers.
                watched = self.proc
                fd = watched.fileno() if watched is not None else None
                ended = watched.pidfd if watched is not None else None
                for each in (fd, ended):
                    if each is not None:
                        waits.register(each, POLLIN)
                importing = self.template is not None and self.template.importing > 0
                if importing:
                    waits.register(self.template, POLLIN)
                events = dict(waits.poll(self.poll_timeout() * 1000))
                for each in (fd, ended):
                    if each is not None:
                        waits.unregister(each)
                if importing:
                    waits.unregister(self.template)
                    if self.template.fileno() in events:
                        self.template_answered()
                if events.get(link, 0) & POLLOUT:
                    self.link.flush()
                if events.get(link, 0) & POLLIN:
                    self.last_heard = time.monotonic()
                    self.drain()
                if fd in events and self.proc is watched is not None:
                    self.read_task_process()
                if ended in events and self.proc is watched is not None:
                    self.task_process_exited()
                # A task that can begin without a fork begins before the results go, so that
                # their RESULT says it began (no STARTED of its own); no fork delays them.
                self.feed(fork=False)
                self.flush()
                self.feed()
                self.flush()
                self.prepare_spare()
                if self.template is not None:
                    self.template.flush()  # what the spare's FORK did not take along
                if not self.housekeeping():
                    waits.unregister(link)
                    if not self.reconnect():
                        break
            self.flush()
            # Tasks queued here or behind the running one never started: they go back.
            unstarted = list(self.inflight)[1:] + list(self.pending)
            self.send(Kind.BYE, {"requeue": [t.gid for t in unstarted]})
            return 0
        finally:
            # Task processes go with whatever their tasks started (containment.py); stdout and
            # stderr were flushed after each task, and they run no atexit handlers anyway.
            for proc in (self.proc, self.spare):
                if proc is not None:
                    proc.end()
            if self.template is not None and self.template.importing:
                self.template.kill()  # no waiting behind an import to collect the processes below
            for proc in self.zombies:
                proc.reap()
            if self.template is not None:
                self.template.close()
            self.family.close()
            self.link.drain_output(2.0)
            self.link.close()
            if self.ctx is not None:
                self.ctx.term()

    def on_sigterm(self, signum, frame) -> None:
        """Terminated (``terminate_workers()``, a batch system): take the task processes along,
        with what their tasks started."""
        self.leave_now()
        if self.on_terminated is not None:
            self.on_terminated()
        os._exit(128 + signum)

    def leave_now(self) -> None:
        """Stop every process below us, at once: we are about to exit (a signal)."""
        for proc in (self.proc, self.spare):
            if proc is not None:
                proc.signal(signal.SIGTERM)
        self.family.close()  # SIGKILLs what is left: the template and its task processes die with us anyway

    def poll_timeout(self) -> float:
        timeout = self.heartbeat
        if self.lane_stop is not None:
            timeout = LANE_STOP_CHECK  # watch for its task to begin
        if self.lane_kill_at is not None:
            timeout = min(timeout, max(0.0, self.lane_kill_at - time.monotonic()))
        if self.template is not None and self.template.importing:
            timeout = min(timeout, max(0.0, self.template.import_started + IMPORT_PATIENCE - time.monotonic()))
        task = self.current
        if task is not None:
            deadline = self.deadline(task)
            if not task.reported:
                deadline = min(deadline or 1e300, task.started + STARTED_DELAY)
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        return timeout

    def deadline(self, task: Held) -> float | None:
        if task.kill_at is not None:
            return task.kill_at
        limit = task.options.get("timeout")
        return task.started + limit if limit and task.stop_reason is None else None

    def drain(self) -> None:
        try:
            messages = self.link.receive()
        except protocol.ProtocolError as exc:  # our broker's socket pair is broken: nothing more can be trusted
            self.warn(f"the broker's socket pair is corrupt ({exc}); exiting")
            messages, self.stopping = [], True
        if self.link.eof:
            self.stopping = True  # the broker closed its socket pair: its process is gone
        for msg in messages:
            try:
                self.handle(msg)
            except (protocol.ProtocolError, KeyError, TypeError, ValueError, AttributeError, IndexError,
                    OverflowError) as exc:
                self.complain(f"dropped a malformed message: {type(exc).__name__}: {exc}")

    def handle(self, msg: list) -> None:
        """One message from the broker, its frames as buffers (memoryviews)."""
        kind, body = protocol.decode(msg[0])
        if kind == Kind.TASKS:
            for entry, frames in protocol.split_entries(body, "tasks", protocol.unpack(body, msg[1:]), 3):
                self.granted = max(0, self.granted - 1)
                task = Held(entry[0], frames, entry[2], size=sum(f.nbytes for f in frames))
                problem = _malformed_task(task)
                if problem:  # never queued: a task we cannot run must not reach the task process
                    self.report(task, Status.FAILED, [], {"error": protocol.ERR_DESERIALIZATION,
                                                          "message": f"the worker got a malformed task: {problem}"})
                else:
                    self.pending.append(task)
        elif kind == Kind.CANCEL:
            self.cancel(set(protocol.ids(body)))
        elif kind == Kind.KILL and "lane" in body:
            if self.lane is not None and body["lane"] == self.epoch and self.proc is not None:
                gid = body.get("id")
                if type(gid) is not int:
                    raise protocol.ProtocolError("a lane's KILL without a task id")
                sig = signal.SIGKILL if body.get("signal") == "SIGKILL" else signal.SIGTERM
                self.stop_lane_task(gid, sig, protocol.seconds(body.get("grace", 0.0), "grace"))
        elif kind == Kind.KILL:
            self.kill(set(protocol.ids(body)), body)
        elif kind == Kind.SHUTDOWN:
            self.stopping = True
        elif kind == Kind.WELCOME:
            self.heartbeat, self.liveness = protocol.timing(body, self.heartbeat, self.liveness)
            if not self.welcomed and self.reconnect_on_silence:
                self.say(f"joined the broker at {self.address}")
            self.welcomed = True
        elif kind == Kind.ERROR:
            self.refused(body)

    def refused(self, body: dict) -> None:
        """The broker refused what we sent: it does not know us (it restarted), or will not serve us."""
        if body.get("code") == protocol.UNKNOWN_PEER:
            # Only a broker that welcomed our last HELLO can have lost us; until one does, the
            # refusals are of what we sent before that HELLO.
            if self.welcomed:
                self.complain(f"the broker at {self.address} no longer knows this worker (it restarted?); "
                              "joining again")
                self.welcomed = False
                self.forget_tasks()
                self.hello()
            return
        self.complain(f"the broker at {self.address} refused this worker: {protocol.text(body.get('message'), 500)}")

    def cancel(self, ids: set) -> None:
        """Drop the named tasks still queued here; tell the broker which ones those were.

        A task already in the task process's pipeline runs (it may have begun).
        """
        dropped = [t.gid for t in self.pending if t.gid in ids]
        self.pending = deque(t for t in self.pending if t.gid not in ids)
        running = sorted(ids - set(dropped))
        self.send(Kind.CANCELLED, {"ids": dropped, "running": running})

    def kill(self, ids: set, body: dict) -> None:
        sig = signal.SIGKILL if body.get("signal") == "SIGKILL" else signal.SIGTERM
        grace = float(body.get("grace", 0.0))
        waiting = [t for t in self.pending if t.gid in ids]
        for task in waiting:
            self.pending.remove(task)
            self.report(task, *_stopped(task, "killed", "before it started"))
        for task in self.inflight:
            if task.gid in ids:
                task.kill_signal, task.grace = sig, grace
        head = self.current
        if head is not None and head.gid in ids:
            self.stop_task(head, "killed", sig, grace)
        # A killed task still behind the running one is stopped when its turn comes (next_head).

    def stop_task(self, task: Held, reason: str, sig: int, grace: float) -> None:
        """Signal the process running ``task``; SIGKILL follows after ``grace`` seconds."""
        if task.stop_reason is None:
            task.stop_reason = reason
        self.proc.signal(sig)
        if sig != signal.SIGKILL:
            task.kill_at = time.monotonic() + grace

    # -- a task process on a lane -----------------------------------------------------

    def stop_lane_task(self, gid: int, sig: int, grace: float) -> None:
        """Signal the task process if it runs task ``gid``; if that task has not begun,
        when it begins (or never, if the process begins another first: it has ended)."""
        begun, running = self.page.read()
        if running != gid:
            self.lane_stop = (gid, begun, sig, grace)
            return
        self.lane_stop = None
        self.proc.signal(sig)
        if sig != signal.SIGKILL and self.lane_kill_at is None:
            self.lane_kill_at = time.monotonic() + grace

    def lane_process_ended(self) -> None:
        """Report how the task process ended and which task it was running; start the next."""
        proc = self.proc
        code = self.end_process(proc)  # in case it only closed its end
        begun, _ = self.page.read()
        self.send(Kind.ENDED, {"lane": self.epoch, "pid": proc.pid, "how": exit_words(code), "begun": begun})
        self.epoch += 1
        self.lane_stop, self.lane_kill_at = None, None
        self.proc = self.start_process()
        self.wait_until_ready()
        if self.broken:
            self.proc = None
            self.send(Kind.LANE, {"lane": self.epoch, "broken": self.broken})
            self.stopping = True
        elif not self.stopping:
            self.send(Kind.LANE, {"lane": self.epoch})

    # -- task processes -----------------------------------------------------------

    def start_process(self) -> runner.TaskProcess:
        if self.template is None:
            if self.page is not None:
                self.page.clear()
                return runner.start(self.setup, False, False, lane=(self.lane, self.epoch, self.page, self.spin),
                                    family=self.family)
            return runner.start(self.setup, self.fresh, self.spawn, family=self.family)
        if self.template.check():
            try:
                return self.template.fork()
            except TemplateGone:
                pass
        self.template.close()  # killed (from outside, or stuck importing): its task processes died with it
        self.template = self.new_template()
        self.warming = False  # in case an import killed it
        return self.template.fork()

    def new_template(self) -> Template:
        """A template in our cgroup: its task processes, and what they start, are born there."""
        template = Template(self.setup)
        self.family.adopt(template.pid)
        return template

    def end_process(self, proc: runner.TaskProcess) -> int:
        """Stop a task process with everything its tasks started; its return code."""
        code = proc.end()
        self.family.sweep(self.own_processes(), stop=True)  # what left its group came to us when it died
        return code

    def own_processes(self) -> list[int]:
        """The processes we started ourselves and keep: everything else below us is a stray."""
        own = [p.pid for p in (self.proc, self.spare, *self.zombies) if p is not None and p.template is None]
        if self.template is not None:
            own.append(self.template.pid)
        return own

    def prepare_spare(self) -> None:
        """A fresh worker forks the next task process while it waits for the next task.

        Not with an initializer, which would run in a process that may never get a task.
        """
        if self.fresh and self.spare is None and self.setup[1] is None and not (self.stopping or self.broken):
            if self.template is None or not self.template.importing:  # its FORK would wait behind the import
                self.spare = self.start_process()

    def warming_up(self) -> bool:
        """Fresh: is the template first importing the next task's function, for its process to inherit?"""
        template = self.template
        if not self.warming or template is None or not template.alive:
            return False
        if template.importing:
            if time.monotonic() - template.import_started < IMPORT_PATIENCE:
                return True
            template.kill()  # stuck: start_process() starts a new, cold template
            self.warming = False
            return False
        fn = self.pending[0].frames[0]
        if len(self.warmed) >= WARM_MAX or fn.nbytes > WARM_BYTES:
            return False
        pickled = bytes(fn)
        if pickled in self.warmed:
            return False
        self.warmed.add(pickled)
        template.import_ahead(pickled)
        return template.importing > 0

    def template_answered(self) -> None:
        """The template has imported a function: a spare forked before a slow import is cold, replace it."""
        self.template.read_answers()
        if self.template.imported() > SLOW_IMPORT and self.spare is not None:
            self.spare.retire()
            self.spare = None

    def retire(self, proc: runner.TaskProcess) -> None:
        """Close a finished task process; collect it later, without waiting for it now."""
        if not proc.retire():
            self.zombies.append(proc)

    def reap_zombies(self) -> None:
        self.zombies = [p for p in self.zombies if p.reap(block=False) is None]

    def wait_until_ready(self) -> None:
        """A persistent task process runs the initializer first; wait for its verdict.

        Dying before READY breaks the executor only when an initializer ran (as in
        the stdlib); otherwise the process was killed from outside, and we start
        another, a few times.
        """
        for _ in range(READY_TRIES):
            header = self.first_word()
            if header is None:
                if self.stopping:
                    return
                how = exit_words(self.end_process(self.proc))
                if self.setup[1] is not None:
                    self.broken = f"the task process {how} while running the initializer"
                    return
                self.proc = self.start_process()
                continue
            if header[0] == runner.BROKEN:
                self.broken = header[1]
                self.end_process(self.proc)
            else:
                self.proc.ready = True
            return
        self.broken = f"{READY_TRIES} task processes in a row died before they were ready ({how})"

    def first_word(self) -> tuple | None:
        """The task process's READY or BROKEN; None if it died first (or our parent did: stopping)."""
        proc = self.proc
        watched = [proc.conn] + ([proc.pidfd] if proc.pidfd is not None else [])
        while True:
            readable = select.select(watched, [], [], self.heartbeat)[0]
            if proc.conn in readable:
                break
            if readable or (proc.pidfd is None and proc.exited()):
                return None  # ended, though a process its initializer forked may hold its socket
            if self.parent_gone():
                self.stopping = True
                return None
            if self.said_hello:
                self.send(Kind.HEARTBEAT, {"preparing": True})
        if proc.pidfd is not None and proc.exited():
            proc.conn.set_blocking(False)  # it ended: take what it wrote whole, never wait for the rest
        try:
            return proc.conn.recv()[0]
        except (EOFError, OSError):
            return None

    def feed(self, fork: bool = True) -> None:
        """Hand queued tasks to the task process: one if fresh, else a pipeline of them.

        ``fork=False``: only to a process that is there already (a fresh worker's spare).
        """
        if not self.pending or self.stopping:
            return
        if self.fresh:
            if not self.inflight and not self.warming_up():
                spare, self.spare = self.spare, None
                if spare is not None and spare.template is not None and not spare.template.check():
                    spare.retire()  # it died with its template
                    spare = None
                if spare is None and not fork:
                    return
                task = self.pending.popleft()
                proc = spare or self.start_process()
                try:
                    proc.conn.send(_task_header([task]), task.frames)
                except OSError:  # it died before it got the task
                    self.retire(proc)
                    self.pending.appendleft(task)
                    if spare is not None and fork:
                        self.feed()  # the spare died while it waited: a new process, at once
                    return
                self.proc = proc
                self.inflight.append(task)
                self.next_head()
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
        batch: list[Held] = []
        while self.pending and self.room_for(self.pending[0]):
            task = self.pending.popleft()
            batch.append(task)
            self.inflight.append(task)
            self.pipe_bytes += task.size
        if not batch:
            return
        frames = [f for task in batch for f in task.frames]
        try:
            self.proc.conn.send(_task_header(batch), frames)
        except OSError:  # the task process died: the tasks of this batch never reached it
            for task in batch:
                self.inflight.pop()
                self.pipe_bytes -= task.size
            self.pending.extendleft(reversed(batch))
            self.task_process_ended(None)  # reports the task it was running, if any
            return
        if self.inflight[0] is batch[0]:
            self.next_head()

    def room_for(self, task: Held) -> bool:
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
        if self.lane is not None:
            self.lane_process_ended()  # it writes nothing after READY: this is its end
            return
        while self.proc is not None:
            self.read_one()
            if self.proc is None or not self.proc.conn.buffered():  # more, later, wakes the poll
                return

    def task_process_exited(self) -> None:
        """The task process has ended (its pidfd said so): take the messages it wrote whole,
        then report it, without waiting for an end of file that a process it forked may
        keep from coming."""
        proc = self.proc
        if self.lane is not None:
            self.lane_process_ended()
            return
        proc.conn.set_blocking(False)
        while self.proc is proc:
            self.read_one()  # ends it at the first message not there whole (BlockingIOError)

    def read_one(self) -> None:
        proc, task = self.proc, self.current
        try:
            header, frames = proc.conn.recv()
        except (EOFError, OSError):
            self.task_process_ended()
            return
        if header[0] == runner.READY:  # a fresh task process finished its initializer
            proc.ready = True
            return
        if header[0] == runner.BROKEN:  # a fresh task process's initializer failed
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": header[1]})
            self.inflight.clear()
            self.stopping = True
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
        if self.fresh:
            # Its task is over, and so is what the task started in its process group (what
            # left the group comes to us as an orphan once the process is gone: swept).
            proc.signal(signal.SIGKILL)
            self.retire(proc)
            self.proc = None
            self.family.sweep(self.own_processes(), stop=True)  # the previous tasks' strays, by now
        elif not self.inflight and self.recycle_reason(proc):
            self.proc = None
            self.end_process(proc)

    def recycle_reason(self, proc: runner.TaskProcess) -> str | None:
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

    def task_process_ended(self, task: Held | None = None) -> None:
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
            self.report(task, *_stopped(task, task.stop_reason, f"its process {proc.pid} {exit_words(code)}"))
        elif self.fresh and not proc.ready and self.setup[1] is not None:
            message = f"the task process {proc.pid} {exit_words(code)} while running the initializer"
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": message})
            self.stopping = True
        else:
            message = f"the task process {proc.pid} of worker {self.name} {exit_words(code)}"
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_WORKER_LOST, "message": message})

    def report(self, task: Held, status: Status, frames: list, meta: dict) -> None:
        """Queue a task's outcome for this turn's RESULT batch."""
        now = time.monotonic()
        busy = now - task.started if task.started else 0.0
        self.busy += busy
        self.idle_since = now
        if task.started and status != Status.FAILED:
            self.task_time = busy if self.task_time is None else 0.8 * self.task_time + 0.2 * busy
        self.results.append(protocol.result_entry(task.gid, status, len(frames), meta))
        self.result_frames.extend(frames)

    # -- time-driven work -----------------------------------------------------------

    def housekeeping(self) -> bool:
        """Timeouts, heartbeats, idleness, the parent.  False: the broker is gone."""
        now = time.monotonic()
        if self.zombies:
            self.reap_zombies()
        if now - self.last_sweep >= self.heartbeat:
            # Orphans of what tasks started come to us: reap those that exited; a fresh worker's
            # belong to tasks that are over (a running task's stay below its process), so stop them.
            self.last_sweep = now
            self.family.sweep(self.own_processes(), stop=self.fresh)
        if self.lane_stop is not None and self.proc is not None:
            gid, begun, sig, grace = self.lane_stop
            if self.page.read()[0] > begun:  # the next task has begun: it, or another if that one ended
                self.stop_lane_task(gid, sig, grace)
                if self.lane_stop is not None:
                    self.lane_stop = None  # it ran and ended before we saw it
        if self.lane_kill_at is not None and now >= self.lane_kill_at and self.proc is not None:
            self.lane_kill_at = None
            self.proc.signal(signal.SIGKILL)
        task = self.current
        if task is not None:
            if task.kill_at is not None and now >= task.kill_at:
                task.kill_at = None
                self.proc.signal(signal.SIGKILL)
            limit = task.options.get("timeout")
            if limit and task.stop_reason is None and now - task.started >= limit:
                self.stop_task(task, "timeout", signal.SIGKILL, 0.0)
        if task is not None and not task.reported and now - task.started >= STARTED_DELAY:
            task.reported = True
            self.send(Kind.STARTED, {"ids": [task.gid]})
        if self.parent_gone():
            self.stopping = True
            return True
        if self.idle_timeout and task is None and not self.pending and now - self.idle_since > self.idle_timeout:
            self.stopping = True
            return True
        if now - self.last_sent >= self.heartbeat:
            self.heartbeat_now()
        if not self.welcomed:
            self.note_waiting()
        if now - self.last_heard > self.heartbeat * self.liveness:
            if not self.reconnect_on_silence:  # started by a client's pool: the client and its broker are gone
                self.stopping = True
                return True
            if self.welcomed:
                self.say(f"the broker at {self.address} went silent; reconnecting")
                self.welcomed = False
            return False
        return True

    def heartbeat_now(self) -> None:
        """A HEARTBEAT; it says we are preparing (a task process's start, an import ahead) while we
        hold tasks none of which has begun, so that the broker does not take them back as stalled."""
        preparing = self.pending and self.current is None and (
            self.proc is None or not self.proc.ready or (self.template is not None and self.template.importing))
        self.send(Kind.HEARTBEAT, {"preparing": True} if preparing else None)

    def parent_gone(self) -> bool:
        """Has the process that started us died?  Asked at most every PARENT_CHECK seconds."""
        if not self.parent_pid:
            return False
        now = time.monotonic()
        if now - self.parent_checked < PARENT_CHECK:
            return False
        self.parent_checked = now
        return os.getppid() != self.parent_pid


class _DealerLink:
    """A worker's connection to a broker elsewhere: a ZeroMQ DEALER with a ``stream.Stream``'s methods."""

    pending = False  # ZeroMQ queues what we send
    eof = False  # a broker that went away is found by its silence

    def __init__(self, ctx: zmq.Context, address: str):
        self.sockets = _sockets()
        self.sock = self.sockets.dealer(ctx, address, linger=2000)
        self.poll_key = self.sock

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames, copy=False)

    def receive(self) -> list[list]:
        """The messages waiting, their frames as buffers."""
        return [[f.buffer for f in msg] for msg in self.sockets.waiting(self.sock)]

    def flush(self) -> None:
        pass

    def drain_output(self, timeout: float) -> None:
        pass  # closing waits up to LINGER for what is queued

    def close(self, linger: int | None = None) -> None:
        self.sock.close(linger)


def _zmq():
    """ZeroMQ, imported only by a worker that dials a broker: one started over a socket pair
    never needs it, and neither its template nor its task processes map libzmq."""
    import zmq

    return zmq


def _sockets():
    """corral's ZeroMQ sockets (``wire.sockets``), imported as ZeroMQ is: only when a broker is dialled."""
    from ..wire import sockets

    return sockets


def _malformed_task(task: Held) -> str | None:
    """What is wrong with a task the broker sent us, if anything (a broker that lies must not
    make us crash, or make the task process run garbage)."""
    if len(task.frames) < 2:
        return f"{len(task.frames)} payload frames (a function and its arguments: 2 or more)"
    timeout = task.options.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= 1e9):
        return f"a timeout of {timeout!r:.40}"
    shm = task.options.get("shm")
    if shm is not None and not (isinstance(shm, list) and all(type(i) is int and 2 <= i < len(task.frames)
                                                               for i in shm)):
        return "bad shared-memory frames"
    return None


def _task_header(tasks: list[Held]) -> tuple:
    """The TASK message that hands ``tasks`` to a task process: (gid, frame count, shared-memory frames) each."""
    return runner.TASK, [(t.gid, len(t.frames), t.options.get("shm")) for t in tasks]


def _stopped(task: Held, reason: str, how: str) -> tuple[Status, list, dict]:
    return Status.FAILED, [], protocol.stopped(reason, task.options.get("timeout"), how)
