"""The task process: the only place where user code runs.

A worker is a supervisor that never runs user code, so it always answers
heartbeats and can stop a task at any moment.  It hands tasks to a task
process over a socket pair and reads the outcomes back::

    supervisor (worker.py)                    task process (this module)
      fork/spawn ----------------------------> run the initializer
      <------------------------------- READY | BROKEN traceback
      TASK [(gid, nframes, shm, seed)...], frames --> unpickle, run, pickle, each in turn
      <------------------- PROGRESS gid fraction message (corral.report, reporting.py)
      <----------------------------- DONE gid status meta, frames
      close the socket (or a signal) --------> exit

A persistent worker keeps one task process for many tasks (and replaces it
after ``max_tasks``, a timeout, a kill, or too much memory); a fresh worker
starts one per task, which exits after replying.  Task processes are forked
from the supervisor, which has imported nothing of the user's, or spawned as
new interpreters (``python -m corral.worker.task_process FD``) where fork is unavailable or
the user asked for ``spawn``.

A persistent worker started by an embedded broker's pool may also have a lane:
its task process then takes its tasks from the broker and answers them there
itself (``onlane.py``).  The socket pair carries ``Channel`` messages (``channel.py``).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import NoReturn

from .. import reporting, serialization
from ..logs import logger
from . import capture, containment, execution, onlane, output, taskwarnings
from .channel import Channel
from .execution import execute
from .output import flush_stdio
from .tasknotes import TaskNotes

READY, BROKEN, TASK, DONE, PROGRESS = "ready", "broken", "task", "done", "progress"
_log = logger("worker")


class TaskProcess:
    """The supervisor's handle on one task process.

    Its end is learned from the process itself (a pidfd, where the system has
    them), never only from its socket: a process the task forked may hold that
    socket open long after the task process died (``containment``).
    """

    def __init__(self, pid: int, conn: Channel, popen: subprocess.Popen | None = None, template=None):
        self.pid = pid
        self.conn = conn
        self.popen = popen
        self.template = template  # the template.Template that forked it, which collects it for us
        self.ready = False
        self.tasks = 0  # tasks it has finished
        self.returncode: int | None = None
        self.pidfd = _pidfd(pid)  # readable once the process has ended
        self.objects: set = set()  # keys of the large objects it keeps (worker/objects.py)

    def fileno(self) -> int:
        """Its socket's descriptor (the task process's end is watched through it)."""
        return self.conn.fileno()

    def signal(self, sig: int) -> None:
        """Signal the process and its process group (what its task started: ``containment``)."""
        if self.returncode is None and (self.template is None or self.template.alive):
            containment.signal_tree(self.pid, sig)

    def exited(self) -> bool:
        """Has the process ended?  (Without a pidfd: only a child of ours can tell.)"""
        if self.pidfd is not None:
            return bool(select.select([self.pidfd], [], [], 0)[0])
        return self.template is None and self.reap(block=False) is not None

    def reap(self, block: bool = True) -> int | None:
        """Collect the exit status: a Popen-style return code (-N: killed by signal N)."""
        if self.returncode is None:
            if self.template is not None:
                if block:
                    self.returncode = self.template.wait(self.pid)
            elif self.popen is not None:
                self.returncode = self.popen.wait() if block else self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        if self.returncode is not None:
            self._forget_pidfd()
        return self.returncode

    def end(self) -> int:
        """Stop it now, with everything in its process group, and collect it."""
        self.signal(signal.SIGKILL)
        self.conn.close()
        return self.reap()

    def close(self) -> None:
        """Ask it to exit (it sees end-of-file) and collect it."""
        self.conn.close()
        self.reap()

    def retire(self) -> bool:
        """Ask it to exit, without waiting; False if it must still be reaped later."""
        self.conn.close()
        if self.template is not None:
            self._forget_pidfd()
            self.template.collect(self.pid)  # never signalled again: the template may reap it
            return True
        return self.reap(block=False) is not None

    def _forget_pidfd(self) -> None:
        """Close the pidfd (the process is collected)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` ends (Linux 5.3); None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def start(setup: tuple, once: bool, spawn: bool, lane: tuple | None = None) -> TaskProcess:
    """Start a task process; ``setup`` is (sys.path, pickled initializer or None, shm directory or None).

    With ``once`` it runs the one task it is sent and exits (a fresh
    worker's); otherwise it runs the tasks it is sent until its socket closes.
    With ``lane`` (descriptor, epoch, LanePage), a persistent one takes its
    tasks from that lane instead.  It keeps none of the supervisor's
    descriptors but stdio (and the lane).  It leads a process group of its
    own (``containment``) before any user code runs.
    """
    ours, theirs = socket.socketpair()
    if spawn or not hasattr(os, "fork"):
        cmd = [sys.executable, "-m", "corral.worker.task_process", str(theirs.fileno()), *capture.names()]
        popen = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, **output.spawn_streams())
        theirs.close()
        conn = Channel(ours)
        conn.send(("setup", setup, once))
        return TaskProcess(popen.pid, conn, popen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # zmq's threads: the child never touches zmq
        pid = os.fork()
    if pid == 0:
        keep = [theirs.fileno()] + ([lane[0]] if lane else [])

        def run() -> int:
            """Contain ourselves, then serve."""
            containment.enter_task_process(once)
            return serve(Channel(theirs), setup, once, lane=lane)

        run_child(run, [ours], keep=keep)
    theirs.close()
    return TaskProcess(pid, Channel(ours))


def run_child(run: Callable[[], int], sockets: list, keep: list[int] | None = None,
              leave: Callable[[int], object] = os._exit) -> NoReturn:
    """The rest of a forked child's life: close the parent's ``sockets``, ``run``, and
    leave with its code (``leave``: ``os._exit`` or the like), never returning into the
    parent's frames.

    With ``keep`` (descriptors of a child of a supervisor), every other descriptor but
    stdio is closed too: the supervisor's connection to its broker (a socket pair, or a ZeroMQ socket's
    TCP connection and ZeroMQ's own descriptors), which user code must not reach.
    Descriptors are closed by number: the parent's objects that own them stay
    referenced by those frames until os._exit, so none of them closes the same
    number again later (and a fresh process runs none of their Python code).
    """
    code = 70
    try:
        for sock in sockets:
            os.close(sock.fileno())
        if keep is not None:
            output.child_streams()  # a worker that forwards its tasks' output: fd 1 and 2 are its pipes
            for fd in _descriptors():
                if fd > 2 and fd not in keep:
                    try:
                        os.close(fd)
                    except OSError:
                        pass  # the listing's own descriptor, closed already
        code = run()
    finally:
        flush_stdio()
        leave(code)


def _descriptors() -> list[int]:
    """This process's open descriptors (Linux, macOS); none found elsewhere."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(name) for name in os.listdir(listing)]
        except (OSError, ValueError):
            continue
    return []


def serve(conn: Channel, setup: tuple, once: bool, prepared: bool = False, lane: tuple | None = None,
          unpin: Callable[[], None] | None = None) -> int:
    """The task process's life: initialize, then run tasks until told to stop.

    ``prepared``: forked from a template, which set the signal dispositions and
    ``sys.path`` already (every page a fresh process writes is a page the kernel
    copies: doing less here makes fresh tasks faster).  ``lane``: take the
    tasks from that lane (``start``).  ``unpin``: called before any user code
    runs (the template forked us held on one CPU, ``template._Pin``).
    """
    if not prepared:
        set_signals()
        sys.path[:] = setup[0]
        taskwarnings.install()
    elif taskwarnings.caught:
        taskwarnings.caught.clear()  # the template's own, not a task's
    die_with_parent(signal.SIGKILL)  # a parent-death signal is not inherited
    _, initializer, shm_dir = setup
    if initializer is not None or not once:  # a fresh process with nothing to report stays silent
        if unpin is not None:
            unpin()
            unpin = None
        broken = run_initializer(initializer)
        if broken is not None:
            conn.send((BROKEN, broken))
            return 3
        conn.send((READY,))
    notes = TaskNotes(once)
    if lane is not None:
        return onlane.serve(*lane, shm_dir or None, notes)
    reporting.attach(lambda gid, fraction, message: conn.send((PROGRESS, gid, fraction, message)))
    while True:
        try:
            answer(conn, shm_dir or None, notes, unpin)
        except (EOFError, OSError):
            return 0  # the supervisor closed our socket: time to go
        if once:
            return 0  # the caller leaves with os._exit (run_child, main)


def answer(conn: Channel, shm_dir: str | None, notes: TaskNotes, unpin: Callable[[], None] | None = None) -> None:
    """Read one TASK message, run its tasks in order and answer each as it ends (DONE), with
    its ``notes``; ``unpin`` first, if given (``serve``).

    EOFError or OSError when the supervisor has closed the socket.
    """
    header, frames = conn.recv()
    if unpin is not None:
        unpin()
    pos = 0
    for gid, count, offloaded, seed, dep_frames, captured, *objects in header[1]:
        if captured:
            capture.begin()
        began = time.perf_counter()
        reporting.current = gid  # corral.report() in the task (reporting.py)
        status, out, meta = execute(frames[pos : pos + count], shm_dir, offloaded, seed, dep_frames,
                                    objects[0] if objects else None)
        notes.note(meta, began, time.perf_counter())
        execution.ended(meta)
        if captured:
            meta["capture"] = capture.end()  # the supervisor sends it ahead of the outcome (output.py)
        pos += count
        task_ended()  # what the task printed is out before its future completes
        conn.send((DONE, gid, int(status), meta), out)


task_ended = flush_stdio  # after each task (answer); a forwarding task process's also marks the end (output.py)


def set_signals() -> None:
    """A task process's (and a template's) signal dispositions."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the client
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def run_initializer(payload: bytes | None) -> str | None:
    """Run the user's initializer; return its traceback as text if it fails."""
    if payload is None:
        return None
    try:
        initializer, initargs = serialization.loads([payload], "the initializer")
        initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - any failure breaks the pool, as in the stdlib
        return "".join(traceback.format_exception(exc))
    return None


def die_with_parent(sig: int) -> None:
    """Ask Linux to send us ``sig`` when our parent dies (a parent-death signal)."""
    containment.prctl(containment.PR_SET_PDEATHSIG, sig)


def main(argv: list[str] | None = None) -> int:
    """A spawned task process: ``python -m corral.worker.task_process FD``."""
    argv = sys.argv[1:] if argv is None else argv
    conn = Channel(socket.socket(fileno=int(argv[0])))
    if len(argv) == 3:  # the supervisor's capture files
        capture.inherit(argv[1:])
    if os.environ.pop(output.FORWARDED, None):
        output.forwarding_here()
    try:
        header, _ = conn.recv()
    except (EOFError, OSError):
        return 0  # the supervisor went away before we started
    _, setup, once = header
    containment.enter_task_process(once)
    code = serve(conn, setup, once)
    if once:  # leave as a forked fresh task process does (run_child): no atexit, no waiting for threads
        flush_stdio()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
