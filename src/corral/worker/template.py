"""The template: a fresh worker's fork server.

A fresh worker runs every task in a new process.  Forking that process from
the supervisor itself would make the supervisor pay for it twice: the fork
copies its page tables, and while the child lives every page the busy
supervisor writes (its ZeroMQ buffers, its heap) is copied again.  So the
supervisor forks, once, before it starts ZeroMQ's threads, an idle template
process that has imported what a task process needs and does nothing but fork
task processes on request::

    supervisor (worker.py)              template (this module)         task process
      IMPORT a function's pickle ---->  unpickle it (imports its module)
      <-------------------- time taken
      FORK + socket (SCM_RIGHTS) ---->  fork ---------------------------> serve() (task_process.py)
        [+ a pid to collect]            (reap that one when it exits)
      <-------------------------- pid
      COLLECT pid ------------------->  reap it when it exits
      WAIT pid ---------------------->  reap it now
      <------------------------- code
      close ------------------------->  reap the rest, exit

The template is warm: the supervisor sends it the pickle of each new function
its tasks call, and the template unpickles it once, which imports the
function's module.  Task processes forked after that start with the module
imported and the function unpickled, as a ``fork`` pool's processes start
with their parent's imports; without it, every fresh task would import
(say) numpy anew.  Each task process still gets its own copy-on-write copy of
all of it, so nothing a task does reaches the next.  A failure to unpickle is
the task process's to report (it unpickles the function itself).  The
supervisor sends IMPORT only between tasks and forks nothing until the
template has answered (it keeps serving the broker meanwhile), so FORK and
WAIT never queue behind a slow import; if the template dies, or takes longer
than ``IMPORT_PATIENCE``, the supervisor starts a new one and stops sending
functions ahead.  Before its first fork, the template also runs a task
process's own code on a no-op task a few dozen times (``_warm_up``), so that
the interpreter's rewriting of that code as it runs is done once here rather
than in every task process.

The template forks with libc's ``fork()`` rather than ``os.fork()`` while that
is safe: ``os.fork()`` also runs the at-fork hooks of the modules the
template has imported (``threading``, ``logging``, ``random``), and every page
those touch in the child is a page the kernel copies (on the 2-core test VM,
about 150 pages, an eighth of a fresh task's CPU).  In a process with a single thread,
and whose locks are all free because nothing else runs, the only hook that
matters is ``random``'s, which reseeds; the child does that itself.  When an
imported function's module starts a thread or registers at-fork hooks of its
own, the template goes back to ``os.fork()`` for good.

The task process talks to the supervisor over the socket it was given, as if
the supervisor had forked it; the supervisor signals it by pid.  A pid stays
reserved until the supervisor has asked for it to be collected (COLLECT or
WAIT), so a signal never reaches a recycled pid.  A pid to collect waits for
the supervisor's next request and rides on it (in a FORK request's own pid
field, or as a COLLECT just before it), so that a fresh task wakes the
template once, not twice.  If the supervisor dies, the template gets SIGKILL
(a parent-death signal) and its task processes follow it the same way.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import socket
import struct
import sys
import time
import warnings

from .. import serialization
from ..tuning import CHANNEL_BUFFER, COLLECT_BATCH, COLLECT_EVERY, WARM_UP_ROUNDS
from ..wire.stream import size_buffers
from . import channel, containment, execution, forkperf, output, task_process, taskwarnings

FORK, COLLECT, WAIT, IMPORT = b"f", b"c", b"w", b"i"
_REQUEST = struct.Struct("!ci")  # operation, pid (FORK: one to collect, or 0; IMPORT: the pickle's length)
_REPLY = struct.Struct("!ci")  # the operation answered; FORK: a pid, WAIT: a return code, IMPORT: microseconds
_FD_SPACE = socket.CMSG_SPACE(struct.calcsize("i"))  # room for the one descriptor a FORK request carries


class TemplateGone(OSError):
    """The template process died (it was killed from outside)."""


class Template:
    """The supervisor's handle on its template process."""

    def __init__(self, setup: tuple):
        ours, theirs = socket.socketpair()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # a restart forks a supervisor with threads
            pid = os.fork()
        if pid == 0:  # it keeps none of the supervisor's descriptors, so its task processes have none
            task_process.run_child(lambda: _serve(theirs, setup), [ours], keep=[theirs.fileno()])
        theirs.close()
        self.pid = pid
        self.sock = ours
        self.alive = True
        self.to_collect: list[int] = []  # pids to collect, sent with the next request
        self.importing = 0  # IMPORT requests not answered yet
        self.import_started = 0.0
        self.slowest_import = 0.0  # seconds, of those answered since the last look (taken by imported())

    def fileno(self) -> int:
        """Our socket to the template (readable: it answered, or it is gone)."""
        return self.sock.fileno()

    def fork(self) -> task_process.TaskProcess:
        """A new task process, connected to us by a socket pair."""
        ours, theirs = socket.socketpair()
        size_buffers(theirs, CHANNEL_BUFFER)  # here, not in the task process
        try:
            collect = self.to_collect.pop() if self.to_collect else 0
            self.flush()
            socket.send_fds(self.sock, [_REQUEST.pack(FORK, collect)], [theirs.fileno()])
            pid = self._reply(FORK)
        except (OSError, EOFError) as exc:
            ours.close()
            self.alive = False
            raise TemplateGone(f"the template process {self.pid} is gone") from exc
        finally:
            theirs.close()
        if pid < 0:
            ours.close()
            raise OSError(f"the template process {self.pid} could not fork a task process")
        return task_process.TaskProcess(pid, channel.Channel(ours), template=self)

    def check(self) -> bool:
        """Is the template still there?  With no answer due, a readable socket means it has gone."""
        if self.alive and not self.importing and select.select([self.sock], [], [], 0)[0]:
            self.alive = False
        return self.alive

    def import_ahead(self, pickled_function: bytes) -> None:
        """Have the template unpickle a function, so the task processes it forks next have it.

        Answered later: call ``read_answers()`` when our socket is readable.
        """
        if self._ask(IMPORT, len(pickled_function)):
            try:
                self.sock.sendall(pickled_function)
            except OSError:
                self.alive = False
                return
            if not self.importing:
                self.import_started = time.monotonic()
            self.importing += 1

    def read_answers(self) -> None:
        """Take the IMPORT answers that have arrived (our socket was readable)."""
        while self.importing and self.alive and select.select([self.sock], [], [], 0)[0]:
            try:
                self._reply(None)
            except (OSError, EOFError):
                self.alive = False
        if not self.alive:
            self.importing = 0

    def imported(self) -> float:
        """The longest time an IMPORT took since the last call, in seconds."""
        slowest, self.slowest_import = self.slowest_import, 0.0
        return slowest

    def collect(self, pid: int) -> None:
        """Reap ``pid`` when it exits; we will not signal it again (told with the next request)."""
        self.to_collect.append(pid)

    def wait(self, pid: int) -> int:
        """Reap ``pid`` (it has exited or been killed) and return its Popen-style code."""
        if self._ask(WAIT, pid):
            try:
                return self._reply(WAIT)
            except (OSError, EOFError):
                self.alive = False
        return -signal.SIGKILL  # the template died, and its task processes with it (parent-death signal)

    def kill(self) -> None:
        """Stop it now (stuck importing); its task processes die with it."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
            self.alive = False
            self.importing = 0

    def close(self) -> None:
        """The template reaps what is left and exits."""
        self.flush()
        self.sock.close()
        os.waitpid(self.pid, 0)

    def _ask(self, op: bytes, pid: int) -> bool:
        """Send a request (COLLECTs waiting go first); False if the template is gone."""
        self.flush()
        if self.alive:
            try:
                self.sock.sendall(_REQUEST.pack(op, pid))
                return True
            except OSError:
                self.alive = False
        return False

    def flush(self) -> None:
        """Send the pids to collect that no request took along (the supervisor is about to wait)."""
        if self.to_collect and self.alive:
            try:
                self.sock.sendall(b"".join(_REQUEST.pack(COLLECT, pid) for pid in self.to_collect))
            except OSError:
                self.alive = False
        self.to_collect.clear()

    def _reply(self, op: bytes | None) -> int:
        """Read answers until the one to ``op`` (None: one answer of any kind); IMPORT answers are noted."""
        while True:
            data = self.sock.recv(_REPLY.size, socket.MSG_WAITALL)
            if len(data) < _REPLY.size:
                raise EOFError("the template process closed its socket")
            answered, value = _REPLY.unpack(data)
            if answered == IMPORT:
                self.importing = max(0, self.importing - 1)
                self.slowest_import = max(self.slowest_import, value / 1e6)
            if op is None or answered == op:
                return value


def _task_process(fd: int, setup: tuple, pin: forkperf.Pin | None) -> int:
    """A fresh task process's life, on the socket the supervisor passed us for it."""
    return task_process.serve(channel.Channel(fd), setup, True, prepared=True, unpin=pin and pin.release)


def _forked_task_process(fd: int, setup: tuple, pin: forkperf.Pin | None) -> int:
    """The same, in a process forked for it: first contained (``containment``); not in
    the warm-up, which runs ``_task_process`` in the template itself."""
    containment.enter_task_process(True)
    return _task_process(fd, setup, pin)


def _warm_up(setup: tuple) -> None:
    """Run a task process's path here, on a socket pair, WARM_UP_ROUNDS times: from the
    reseeding that follows a fork, through ``_task_process``, to a no-op task's result.

    CPython counts a function's first calls before it rewrites (quickens) its bytecode,
    then specializes instructions to what they meet, and every code object a fresh
    task process runs for the first time is a page the kernel copies for it.  The
    template itself never ran them; once it has, its task processes find them settled:
    on the 2-core test VM, 19-32 fewer pages copied per fresh task process (of 270-330),
    measured on Python 3.10, 3.11 and 3.13, and about 20 more (of 265, Python 3.11) since
    the warm-up runs the whole path rather than the task alone.  About 2 ms, once per
    template.
    """
    ours, theirs = socket.socketpair()
    supervisor = channel.Channel(ours.fileno())
    task = serialization.call_frames(serialization.Call(len, ([],)), serialization.FunctionPickles())
    bare = (setup[0], None, None)  # the user's initializer runs in task processes only
    ended, task_process.task_ended = task_process.task_ended, output.flush_stdio  # no end marks (output.py)
    try:
        for gid in range(WARM_UP_ROUNDS):
            supervisor.send((task_process.TASK, [(gid, len(task), None, None, None, False)]), task)
            forkperf.after_libc_fork()
            _task_process(theirs.fileno(), bare, None)
            supervisor.recv()
    finally:
        task_process.task_ended = ended
        ours.close()
        theirs.close()


def _collect(pids: list[int]) -> list[int]:
    """Reap those of ``pids`` that have exited; the rest are still running."""
    return [pid for pid in pids if not os.waitpid(pid, os.WNOHANG)[0]]


def _serve(ctl: socket.socket, setup: tuple) -> int:
    """The template's life: fork task processes until the supervisor closes our socket."""
    parent = os.getppid()
    task_process.set_signals()  # its task processes inherit them
    sys.path[:] = setup[0]
    taskwarnings.install()  # its task processes inherit it
    task_process.die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return 0  # the supervisor died before the parent-death signal was set
    _warm_up(setup)
    huge = forkperf.HugePages.here()
    forkperf.make_shareable(huge)
    fork = forkperf.Forker()
    leave = forkperf.libc_exit() or os._exit
    # Every page this loop writes while a task process lives is copied for it (in the
    # template: a fork shares them all again), so it touches as few objects as it can:
    # requests are read into one buffer, the methods it calls are looked up once, and
    # exited task processes are collected every COLLECT_BATCH of them, or after
    # COLLECT_EVERY seconds without a request.
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    request = bytearray(_REQUEST.size)
    into = [request]
    recvmsg_into, sendall, unpack_from, pack = ctl.recvmsg_into, ctl.sendall, _REQUEST.unpack_from, _REPLY.pack
    exited: list[int] = []  # pids to reap once they exit
    while True:
        if exited and not poller.poll(COLLECT_EVERY * 1000):
            exited = _collect(exited)
            continue
        try:
            got, ancillary, _, _ = recvmsg_into(into, _FD_SPACE, socket.MSG_WAITALL)
        except OSError:
            break
        if got < _REQUEST.size:
            break  # the supervisor closed our socket: time to go
        op, pid = unpack_from(request)
        if op == FORK:
            fd = int.from_bytes(ancillary[0][2][:4], sys.byteorder, signed=True)
            if pid:
                exited.append(pid)
            try:
                child = fork()
            except OSError:
                child = -1  # out of processes or memory: the supervisor raises
            if child == 0:
                pin = fork.pin if fork.pinned else None
                task_process.run_child(functools.partial(_forked_task_process, fd, setup, pin), [ctl], leave=leave)
            os.close(fd)
            sendall(pack(FORK, child))
        elif op == COLLECT:
            exited.append(pid)
        elif op == WAIT:
            if pid in exited:
                exited.remove(pid)
            sendall(pack(WAIT, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))
        elif op == IMPORT:
            pickled = ctl.recv(pid, socket.MSG_WAITALL)
            started = time.perf_counter()
            try:
                execution.import_ahead(pickled)
            except Exception:  # noqa: BLE001 - the task process will unpickle it and report why it fails
                pass
            fork.imported()
            forkperf.make_shareable(huge)  # what the import made is shared by every task process
            sendall(pack(IMPORT, min(int((time.perf_counter() - started) * 1e6), 2**31 - 1)))
        if len(exited) >= COLLECT_BATCH:
            exited = _collect(exited)
    for pid in exited:
        os.waitpid(pid, 0)
    return 0
