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

A persistent worker started by an embedded broker's pool also has a lane
(``wire.lane.Lane``): its task process then takes its tasks from the broker
and answers them there itself, and tells the supervisor nothing per task;
it only notes, in a page of memory the two share, how many tasks it has
begun and which one runs (``LanePage``), so that the supervisor can say,
when the process dies or must be stopped, which task that concerns::

    broker  --TASKS (lane epoch)-->  task process  --RESULT (and PROGRESS)-->  broker
                                      page: (tasks begun, task running or 0)

Each message is one write: an 8-byte length, then a 4-byte header length,
the pickled header (which lists the payload frames' sizes), and the payload
frames back to back.  It is sent with one gathering ``sendmsg`` straight
from the frames' buffers and read into one bytearray, whose slices the
unpickler takes as they are: a large array is copied only by the kernel.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import NoReturn

from .. import reporting, serialization
from ..errors import ProtocolError
from ..logs import logger
from ..timing import smooth
from ..tuning import CHANNEL_BUFFER, CHANNEL_READ_CHUNK, RESULT_BATCH_BYTES, RESULT_BATCH_TASK, RESULT_BATCH_TIME
from ..wire import largebuf, protocol
from ..wire.lane import Lane
from ..wire.poller import Spin
from ..wire.stream import size_buffers
from . import capture, containment, output, taskwarnings
from .execution import execute, object_options
from .tasknotes import TaskNotes
from .taskwarnings import caught as _warned  # the warnings a task raised (one list, emptied after each task)

READY, BROKEN, TASK, DONE, PROGRESS = "ready", "broken", "task", "done", "progress"
_log = logger("worker")
_LENGTHS = struct.Struct("!QI")


class Channel:
    """One end of the socket pair between a supervisor and its task process.

    It reads and writes the descriptor with ``os`` calls, so a fresh task process
    can use the bare descriptor it inherited (``sock`` an int: the supervisor
    sized its buffers) without building a socket object: every page a fresh
    process writes is a page the kernel copies for it.
    """

    def __init__(self, sock: socket.socket | int):
        self.sock = None if isinstance(sock, int) else sock
        self.fd = sock if self.sock is None else sock.fileno()
        self.buffer = b""  # the last read (and what was left of the one before); taken up to ``pos``
        self.pos = 0
        if self.sock is not None:
            size_buffers(self.sock, CHANNEL_BUFFER)

    def fileno(self) -> int:
        """Its socket's descriptor (the task process's end is watched through it)."""
        return self.fd

    def send(self, header: tuple, frames: list = ()) -> None:
        """One message: a header tuple and its frames, in one gathering write."""
        views, sizes = [], []
        for frame in frames:
            view = memoryview(frame).cast("B")
            views.append(view)
            sizes.append(view.nbytes)
        head = pickle.dumps((header, sizes), protocol=5)
        parts = [_LENGTHS.pack(4 + len(head) + sum(sizes), len(head)), head, *views]
        while parts:
            sent = os.writev(self.fd, parts[:512])  # IOV_MAX is 1024 on Linux
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = memoryview(parts[0])[sent:]

    def recv(self) -> tuple[tuple, list]:
        """One whole message; EOFError when the other end closed."""
        total, head_len = _LENGTHS.unpack(self._take(_LENGTHS.size))
        view = self._take(total - 4)
        header, sizes = pickle.loads(view[:head_len])
        frames, pos = [], head_len
        for size in sizes:
            frames.append(view[pos : pos + size])
            pos += size
        return header, frames

    def buffered(self) -> bool:
        """Did a read bring in more than has been taken (the start of another message)?"""
        return self.pos < len(self.buffer)

    def set_blocking(self, blocking: bool) -> None:
        """Non-blocking, a ``recv`` of a message not there whole raises BlockingIOError (an OSError)."""
        os.set_blocking(self.fd, blocking)

    def poll(self, timeout: float = 0.0) -> bool:
        """Is there something to read (perhaps the start of a message still being written)?"""
        if self.buffered():
            return True
        return bool(select.select([self.fd], [], [], timeout)[0])

    def _take(self, n: int) -> memoryview:
        """The next ``n`` bytes.

        Small messages are read many at a time and handed out as read-only views
        of the bytes read, without a copy.  A message of ``CHANNEL_READ_CHUNK`` or more is
        read straight into a writable buffer of its own: only such a message can
        hold an out-of-band buffer (``serialization.OOB_THRESHOLD``), which the
        unpickler hands to user code as it is (a numpy array the task may write to).
        """
        have = len(self.buffer) - self.pos
        if n >= CHANNEL_READ_CHUNK:
            view = largebuf.buffer(n)
            got = min(have, n)
            view[:got] = memoryview(self.buffer)[self.pos : self.pos + got]
            self.pos += got
            while got < n:
                count = os.readv(self.fd, [view[got:]])
                if not count:
                    raise EOFError("the other end closed the channel")
                got += count
            return view
        while have < n:
            chunk = os.read(self.fd, CHANNEL_READ_CHUNK)
            if not chunk:
                raise EOFError("the other end closed the channel")
            self.buffer = self.buffer[self.pos :] + chunk if have else chunk
            self.pos, have = 0, len(self.buffer)
        self.pos += n
        return memoryview(self.buffer)[self.pos - n : self.pos]

    def close(self) -> None:
        """Close our end."""
        if self.sock is None:
            os.close(self.fd)
        else:
            self.sock.close()


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
        return _serve_lane(*lane, shm_dir or None, notes)
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
        reporting.current = 0
        if reporting.used:
            reporting.finish(meta)  # no report is being written when DONE is
        if _warned:
            taskwarnings.attach(meta)
        if captured:
            meta["capture"] = capture.end()  # the supervisor sends it ahead of the outcome (output.py)
        pos += count
        task_ended()  # what the task printed is out before its future completes
        conn.send((DONE, gid, int(status), meta), out)


class LanePage:
    """Memory a supervisor shares with its task process on a lane (anonymous, inherited by
    fork): how many tasks the process has begun, and the id of the one it runs (0: none).

    The task process writes it around every task, without a system call or waking anyone;
    the supervisor reads it only when it must know which task its process runs: to stop
    that task, or to say which one died with the process.
    """

    _FORMAT = struct.Struct("qq")

    def __init__(self) -> None:
        import mmap

        self.memory = mmap.mmap(-1, self._FORMAT.size)
        self.begun = 0  # the task process's count (its own copy after the fork)

    def begin(self, gid: int) -> None:
        """Note that task ``gid`` begins."""
        self.begun += 1
        self._FORMAT.pack_into(self.memory, 0, self.begun, gid)

    def end(self) -> None:
        """Note that the running task has ended."""
        self._FORMAT.pack_into(self.memory, 0, self.begun, 0)

    def read(self) -> tuple[int, int]:
        """(tasks begun, the task running or 0)."""
        while True:  # the task process may be writing it: two reads that agree
            first = self._FORMAT.unpack_from(self.memory)
            if self._FORMAT.unpack_from(self.memory) == first:
                return first

    def clear(self) -> None:
        """Before a new task process starts."""
        self.begun = 0
        self._FORMAT.pack_into(self.memory, 0, 0, 0)




def _serve_lane(fd: int, epoch: int, page: LanePage, spin_limit: float, shm_dir: str | None,
                notes: TaskNotes) -> int:
    """Take tasks from the lane and answer them there as they end, until the broker is gone."""
    link = Lane(socket.socket(fileno=fd), blocking=True)
    reporting.attach(lambda gid, fraction, message: link.send(protocol.progress(gid, fraction, message)))
    task_time = 1.0  # moving average; nothing waits until tasks prove short
    spin = Spin(spin_limit)
    while True:
        try:
            waiting = time.perf_counter()
            frames = link.recv_message(spin.budget())
            spin.waited(time.perf_counter() - waiting)
        except (EOFError, OSError):
            return 0
        try:
            kind, body = protocol.decode(frames[0])
            if kind != protocol.Kind.TASKS or body.get("lane") != epoch:
                continue  # sent to a task process of this worker that died before it read them
            tasks = protocol.split_entries(body, "tasks", protocol.unpack(body, frames[1:]), 3)
        except ProtocolError as exc:
            _log.warning(f"task process {os.getpid()}: dropped a malformed message on its lane: {exc}")
            continue
        entries: list = []
        out_frames: list = []
        size, busy, oldest = 0, 0.0, 0.0
        for i, ((gid, _, options), task_frames) in enumerate(tasks):
            page.begin(gid)
            reporting.current = gid  # corral.report() in the task (reporting.py)
            if options and isinstance(options, dict):
                captured = options.get("capture_output") is True
                if captured:
                    capture.begin()
                began = time.perf_counter()
                status, out, meta = execute(task_frames, shm_dir, options.get("shm"), options.get("seed"),
                                            options.get("dep_frames"), object_options(options))
            else:
                captured = False
                began = time.perf_counter()
                status, out, meta = execute(task_frames, shm_dir)
            ended = time.perf_counter()
            reporting.current = 0
            if reporting.used:
                reporting.finish(meta)  # no report is being written when a RESULT is
            notes.note(meta, began, ended)
            if _warned:
                taskwarnings.attach(meta)
            if captured:  # ahead of its outcome, which may wait in this batch
                output.send_captured(lambda kind, body: link.send(protocol.message(kind, body)), gid, capture.end())
            flush_stdio()  # what the task printed is out before its future completes
            entries.append(protocol.result_entry(gid, status, len(out), meta))
            out_frames.extend(out)
            size += sum(memoryview(f).nbytes for f in out)
            busy += ended - began
            oldest = oldest or ended
            task_time = smooth(task_time, ended - began)
            if (i == len(tasks) - 1 or task_time >= RESULT_BATCH_TASK or ended - oldest >= RESULT_BATCH_TIME
                    or size >= RESULT_BATCH_BYTES):
                body = {"results": entries, "busy": round(busy, 6)}
                link.send(protocol.message(protocol.Kind.RESULT, body, out_frames))
                entries, out_frames, size, busy, oldest = [], [], 0, 0.0, 0.0
            page.end()


def flush_stdio() -> None:
    """Flush what user code printed: a task process leaves with ``os._exit``, which
    would drop it (stdout to a pipe or a file is block-buffered)."""
    for out in (sys.stdout, sys.stderr):
        try:
            if out is not None:
                out.flush()
        except Exception:  # noqa: BLE001 - closed, broken or replaced by the task: nothing to deliver
            pass


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
