"""The worker role's supervisor: what every worker does, whatever runs its tasks.

::

    broker ROUTER <--DEALER-- supervisor (this module)  --socket pair-->  task process
                   HELLO, READY(credit)              never runs            (task_process.py)
                   --> WELCOME, TASKS                user code             persistent: many
                   <-- STARTED, RESULT(+credit)      watches time,         tasks; fresh: one
                   --> CANCEL, KILL, SHUTDOWN        memory, exit
                   <-> HEARTBEAT

The supervisor never runs user code, so it answers heartbeats while a task
holds the GIL in C code for minutes, and it can always stop a task: on a
timeout, on ``Future.kill()``, when its client is gone.  It learns of a task
process's end from the process itself (a pidfd), and stops what the task
started with it (``containment.py``).

Each way of running tasks is a subclass, in a module of its own:
``persistent.py`` (one task process for many tasks, fed through the
supervisor), ``fresh.py`` (a new process for every task, forked from a
template) and ``laned.py`` (a persistent task process that takes its tasks
straight from an embedded broker, watched by the supervisor).  This class
holds the rest: the link to the broker (a ZeroMQ DEALER, or a socket pair
inherited from the pool that started us), HELLO and heartbeats, the loop,
reconnecting to a standalone broker that went silent (``housekeeping.py``), and the
start and end of task processes (``processes.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from ..config import HEARTBEAT, LIVENESS, WorkerConfig
from ..logs import Throttle, logger
from ..wire import largebuf, poller, protocol, stream
from ..wire.poller import POLLIN, POLLOUT
from ..wire.protocol import Kind
from . import capture, containment, output, task_process
from .housekeeping import Housekeeping
from .lifetime import DRAIN_SIGNALS, Lifetime
from .memory import MemoryGauge
from .processes import TaskProcesses
from .standing import Standing

REFUSED_EXIT = 4  # our exit code when the broker refused our key at the handshake: no point starting again
LEAVE_EXIT = 5  # our exit code when our lifetime is over (lifetime.py): corral worker does not replace us

WAIT_NOTE = 5.0  # a standalone worker with no broker after this many seconds says so; then at doubling intervals
WAIT_NOTE_MAX = 60.0  # ... at least once a minute
MAX_BACKOFF = 10.0  # seconds between tries to reach a broker that went silent, at most
_log = logger("worker")


class Supervisor(TaskProcesses, Standing, Lifetime, Housekeeping):
    """A worker's supervisor: its link to the broker, its loop, and its task processes' lives.

    ``config`` says what the worker is (``config.WorkerConfig``); the rest is how it
    was started: a ZeroMQ ``address``, or an inherited socket pair ``fd``, the
    ``parent_pid`` it dies with, and ``setup``: (sys.path, pickled initializer or
    None, shared-memory directory or None).  A mode fills in what happens to tasks
    (``take``, ``feed``, ``cancel``, ``kill``, the task process's messages and end,
    ``timers``).
    """

    def __init__(
        self,
        address: str | None,
        config: WorkerConfig | None = None,
        *,
        fd: int | None = None,
        parent_pid: int | None = None,
        name: str | None = None,
        setup: tuple = (None, None, None),
    ):
        config = config or WorkerConfig()
        self.config = config
        largebuf.reuse()  # results read from the task process, relayed, read again (largebuf.py)
        self.target = None if fd is not None else _dealer().broker_target(address, config)
        self.address = self.target.address if self.target is not None else "its socket pair"
        self.fd = fd  # our end of a socket pair to the broker, instead of a ZeroMQ address
        self.fresh = config.fresh
        self.spawn = config.spawn
        self.idle_timeout = config.idle_timeout
        self.max_memory = config.max_memory
        self.parent_pid = parent_pid
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # (sys.path, pickled initializer or None, directory for large buffers or None)
        self.setup = (setup[0] if setup[0] is not None else list(sys.path), setup[1], setup[2])
        self.reconnect_on_silence = (config.reconnect or not parent_pid) and fd is None
        self.heartbeat = HEARTBEAT  # until the broker's WELCOME says otherwise
        self.liveness = LIVENESS
        self.proc: task_process.TaskProcess | None = None  # the task process there is, if any
        self.broken: str | None = None  # an initializer's traceback: the executor is broken
        self.stopping = False
        self.said_hello = False
        self.welcomed = False  # the broker answered our last HELLO
        self.session: str | None = None  # the broker's token for us, to resume on a new connection
        self.resuming = False  # we said HELLO with it, and wait for the answer
        self.waiting_since, self.wait_note = time.monotonic(), WAIT_NOTE  # for note_waiting()
        self.complain = Throttle(self.warn)  # what the broker sends wrong: never a flood of lines
        self.idle_since = time.monotonic()
        self.parent_checked = 0.0
        # What a task starts ends with its task process (containment.py): we adopt the
        # orphans of our task processes, and keep them in a cgroup where we may.
        self.family = containment.Family()
        self.gauge = MemoryGauge()  # reported in heartbeats, for status
        self.last_sweep = self.started_at = time.monotonic()
        self.start_lifetime(self.started_at)
        self.on_terminated: Callable[[], None] | None = None  # called by on_sigterm before we exit
        # What tasks print: captured where they ask (capture.py), forwarded by a worker that dials its broker
        # (output.py); both made before anything is forked, for every task process to inherit.
        capture.prepare(self.setup[2])
        self.output = output.Forwarder(self.send) if fd is None and config.forward_output else None
        self.before_connect()
        self.ctx = _zmq().Context() if fd is None else None
        self.link: stream.Link
        self.connect()

    def before_connect(self) -> None:
        """What a mode must do before ZeroMQ starts its threads (fork a template: template.py)."""

    # -- the broker connection --------------------------------------------------

    def connect(self) -> None:
        """Dial the broker: a socket pair we inherited, or a new DEALER."""
        if self.fd is not None:
            self.link = stream.Stream(socket.socket(fileno=self.fd))
        else:
            self.link = _dealer().DealerLink(self.ctx, self.address, self.target.curve)
        self.last_heard = self.last_sent = time.monotonic()

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        """One message to the broker."""
        self.link.send(protocol.message(kind, body, frames))
        self.last_sent = time.monotonic()

    def hello(self, resume: dict | None = None) -> None:
        """Introduce ourselves (again, after a reconnect), with the credit we grant; with ``resume``,
        as the worker of that session, on a new connection (broker/sessions.py)."""
        info = {
            "role": "worker",
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "fresh": self.fresh,
            **protocol.placement(self.config.resources, self.config.queues, self.config.group),
            "cache": self.config.cache_size,  # bytes of large objects we keep (objects.py)
            **self.hello_extra(),
            **self.lifetime_hello(),
            **(resume or {}),
        }
        if self.broken:
            info["broken"] = self.broken
        self.send(Kind.HELLO, info)
        self.said_hello = True
        if resume is None:
            self.granted = 0
        if not self.broken:
            self.flush()

    def hello_extra(self) -> dict:
        """What a mode adds to HELLO."""
        return {}

    def reconnect(self) -> bool:
        """The broker went silent: drop its tasks and dial again until it answers."""
        self.forget_tasks()
        self.waiting_since, self.wait_note = time.monotonic(), WAIT_NOTE
        backoff = self.heartbeat
        while not self.stopping:
            self.link.close(linger=0)
            self.connect()
            self.hello()
            if self.answered_within(backoff):
                self.last_heard = time.monotonic()
                return True
            if self.stopping:
                break
            self.note_waiting()
            backoff = min(backoff * 2, MAX_BACKOFF)
        return False

    def note_waiting(self) -> None:
        """A standalone worker that has no broker yet says so, and for how long (at growing intervals)."""
        waited = time.monotonic() - self.waiting_since
        if self.reconnect_on_silence and not self.welcomed and waited >= self.wait_note:
            self.wait_note = min(self.wait_note * 2, waited + WAIT_NOTE_MAX)
            keys = ("; if it runs, it may not take this worker's key (revoked?) or hold the key this "
                    "connection file names: its log says which") if self.target.curve else ""
            self.say(f"waiting for the broker at {self.address} ({waited:.0f} s so far{keys})")

    def say(self, line: str, level: int = logging.INFO) -> None:
        """Log ``line`` as this worker's (``corral.worker``)."""
        _log.log(level, f"{self.name}: {line}")

    def warn(self, line: str) -> None:
        """Log a warning (what the broker sent wrong: through ``complain``, throttled)."""
        self.say(line, logging.WARNING)

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        """Serve the broker until it or our parent is gone, or we are told to stop; the exit code."""
        try:
            self.start()
            self.hello()
            if self.broken:
                return 3
            signal.signal(signal.SIGTERM, self.on_sigterm)
            if self.standalone:  # a signal to leave for good: drain first (lifetime.py)
                for each in DRAIN_SIGNALS:
                    signal.signal(each, self.on_drain_signal)
            waits = poller.Watched(_zmq().Poller() if self.fd is None else poller.FdPoller())
            while not self.stopping:
                link = self.link.poll_key  # writable matters only while output waits
                wanted = {link: POLLIN | (POLLOUT if self.link.pending else 0)}
                # The task process's socket, and its end (a pidfd): seen even while a process it
                # forked holds that socket open.  Looked at only while it is still the one we watched:
                # its successor may get the same descriptor numbers.
                watched = self.proc
                fd = watched.fileno() if watched is not None else None
                ended = watched.pidfd if watched is not None else None
                for each in (fd, ended, *self.extra_waits(), *self.handshake_waits()):
                    if each is not None:
                        wanted[each] = POLLIN
                if self.output is not None:
                    wanted.update(self.output.waits)
                waits.watch(wanted)
                events = dict(waits.poll(self.poll_timeout() * 1000))
                self.extra_events(events)
                if self.output is not None:
                    self.output.read(events, self)
                if self.key_refused(events):
                    return REFUSED_EXIT
                if events.get(link, 0) & POLLOUT:
                    self.link.flush()
                if events.get(link, 0) & POLLIN:
                    self.last_heard = time.monotonic()
                    self.drain()
                if fd in events and self.proc is watched is not None:
                    self.read_task_process()
                if ended in events and self.proc is watched is not None:
                    self.task_process_exited()
                self.serve_tasks()
                if not self.housekeeping():
                    waits.watch({})  # the link is closed and made anew
                    if not self.reconnect():
                        break
            self.flush()
            # What never began goes back to the queue; what we cut off (our lifetime ended) too.
            self.send(Kind.BYE, {"requeue": self.unstarted(), **self.farewell()})
            return self.exit_code(LEAVE_EXIT)
        finally:
            # Task processes go with whatever their tasks started (containment.py); stdout and
            # stderr were flushed after each task, and they run no atexit handlers anyway.
            self.end_processes()
            capture.cleanup()
            self.family.close()
            self.link.drain_output(2.0)
            self.link.close()
            if self.ctx is not None:
                self.ctx.term()

    def extra_waits(self) -> list:
        """Descriptors (numbers) a mode watches besides the broker's and the task process's."""
        return []

    def extra_events(self, events: dict) -> None:
        """What a mode does with those descriptors' events."""

    def serve_tasks(self) -> None:
        """A turn's work on tasks, after the messages are read: feed the task process, send results."""
        self.flush()

    def unstarted(self) -> list[int]:
        """The tasks we hold that never started (they go back to the queue when we leave)."""
        return []

    def on_sigterm(self, signum, frame) -> None:
        """Terminated (``terminate_workers()``, a batch system): take the task processes along,
        with what their tasks started."""
        self.leave_now()
        capture.cleanup()
        if self.on_terminated is not None:
            self.on_terminated()
        os._exit(128 + signum)

    def leave_now(self) -> None:
        """Stop every process below us, at once: we are about to exit (a signal)."""
        for proc in self.task_processes():
            proc.signal(signal.SIGTERM)
        self.family.close()  # SIGKILLs what is left: a template and its task processes die with us anyway

    def poll_timeout(self) -> float:
        """Seconds the loop may sleep: a heartbeat, or until the next thing due (``due``)."""
        due = min((t for t in (self.due(), self.lifetime_due(), self.output and self.output.due()) if t is not None),
                  default=None)
        return self.heartbeat if due is None else max(0.0, min(self.heartbeat, due - time.monotonic()))

    def due(self) -> float | None:
        """When a mode next has something to do (a timeout, a STARTED), if anything."""
        return None

    # -- messages from the broker ---------------------------------------------------

    def drain(self) -> None:
        """Handle every message the broker has sent."""
        try:
            messages = self.link.receive()
        except protocol.ProtocolError as exc:  # our broker's socket pair is broken: nothing more can be trusted
            self.warn(f"the broker's socket pair is corrupt ({exc}); exiting")
            messages, self.stopping = [], True
        if self.link.eof:
            self.stopping = True  # the broker closed its socket pair: its process is gone
        if messages:
            self.heard = time.monotonic()
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
            self.take(protocol.split_entries(body, "tasks", protocol.unpack(body, msg[1:]), 3))
        elif kind == Kind.CANCEL:
            self.cancel(set(protocol.ids(body)))
        elif kind == Kind.KILL and "lane" in body:
            self.kill_on_lane(body)
        elif kind == Kind.KILL:
            self.kill(set(protocol.ids(body)), signal.SIGKILL if body.get("signal") == "SIGKILL" else signal.SIGTERM,
                      protocol.seconds(body.get("grace", 0.0), "grace"))
        elif kind == Kind.SHUTDOWN and body.get("leave") is True:
            self.shutdown_to_leave(body)
        elif kind == Kind.SHUTDOWN:
            self.stopping = True
        elif kind == Kind.WELCOME:
            self.welcome(body)
        elif kind == Kind.ERROR:
            self.refused(body)

    def take(self, entries: list) -> None:
        """TASKS: entries (task id, frame count, options) with their frames, to run."""
        raise protocol.ProtocolError("TASKS for a worker that takes none")

    def cancel(self, ids: set) -> None:
        """CANCEL: drop those of ``ids`` that have not started; say which were dropped, which not."""
        self.send(Kind.CANCELLED, {"ids": [], "running": sorted(ids)})

    def kill(self, ids: set, sig: int, grace: float) -> None:
        """KILL: stop those tasks, even running (SIGKILL ``grace`` seconds after ``sig``)."""

    def kill_on_lane(self, body: dict) -> None:
        """KILL of a task on a lane (a worker with a lane only)."""

    def resume_state(self) -> dict:
        """What a HELLO that resumes our session says of our tasks (broker/sessions.py)."""
        return {}

    def resend(self, gids: list) -> None:
        """Send again the results of ``gids``, which the broker did not get (a mode keeps them a while)."""

    def forget_tasks(self) -> None:
        """Our broker no longer knows our tasks: stop the running one, drop the rest."""

    def flush(self) -> None:
        """Send what this turn owes the broker (results, credit)."""

    # -- time-driven work -----------------------------------------------------------

    def timers(self, now: float) -> None:
        """What a mode must do when its time comes (timeouts, STARTED, kills that escalate)."""

    def idle(self) -> bool:
        """Do we hold no task at all (for ``idle_timeout``)?"""
        return True

    def preparing(self) -> bool:
        """Do we hold tasks none of which has begun because we are getting ready to run them (a task
        process's start, an import ahead)?  Our HEARTBEAT says so, so that the broker does not take
        them back as stalled."""
        return False


def _zmq():
    """ZeroMQ, imported only by a worker that dials a broker: one started over a socket pair
    never needs it, and neither its template nor its task processes map libzmq."""
    import zmq

    return zmq


def _dealer():
    """The link to a broker elsewhere (``dealer.py``), imported as ZeroMQ is: only when one is dialled."""
    from . import dealer

    return dealer
