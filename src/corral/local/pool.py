"""Local worker processes: start them, notice when they end, stop them.

The embedded broker owns one ``LocalPool``; ``corral worker --processes N``
owns another.  Workers are separate interpreters (``python -m
corral.worker``) started with the client's working directory and
environment; they adopt the client's ``sys.path`` from a bootstrap file, so a
function pickled by reference imports as it would under ``spawn``.  Each one
is told our pid and dies with us (a parent-death signal on Linux, plus a
check of its parent pid while idle).

A pool with no ``address`` (the embedded broker's) connects each worker it
starts to its broker with a socket pair: the worker inherits one end, and
``connect(pid, socket)`` hands the broker the other.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import WorkerConfig
from ..logs import logger
from ..tuning import SPIN, STREAM_BUFFER
from ..wire.stream import size_buffers
from ..worker import containment

START_RETRY = 5.0  # seconds between tries to start workers the system refused


class WorkerStartError(OSError):
    """No worker process could be started (the system refused: out of processes or memory)."""


def process_room() -> int | None:
    """About how many more processes this system lets us start (None: no way to tell).

    The kernel's limits on processes (``pid_max``, ``threads-max``) less those running,
    and this user's ``RLIMIT_NPROC`` less this user's processes.
    """
    try:
        running = sum(1 for name in os.listdir("/proc") if name.isdigit())
        limits = []
        for path in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
            with open(path) as f:
                limits.append(int(f.read()) - running)
    except (OSError, ValueError):
        return None
    try:
        import resource

        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        if nproc != resource.RLIM_INFINITY and os.getuid() != 0:
            import psutil

            mine = sum(p.info["num_threads"] or 1 for p in psutil.process_iter(["uids", "num_threads"])
                       if p.info["uids"] and p.info["uids"].real == os.getuid())
            limits.append(nproc - mine)
    except (ImportError, OSError, ValueError):
        pass
    return max(0, min(limits))


def refusal(workers: int, fresh: bool) -> str | None:
    """Why this system would refuse to start ``workers`` local workers; None if it would not
    (as far as ``process_room`` can tell)."""
    per_worker = 4 if fresh else 2  # supervisor and task process; fresh: also the template and a spare
    room = process_room()
    if room is None or workers * per_worker <= room:
        return None
    return (f"{workers:,} {'fresh ' if fresh else ''}workers would start about {workers * per_worker:,} processes "
            f"({per_worker} each), but this system lets this user start about {room:,} more (enough for about "
            f"{room // per_worker:,} workers)")


def _advice(exc: OSError) -> str:
    """What to do about a refused start, where the error says."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return " (this process may open no more files: raise its limit, `ulimit -n`)"
    if exc.errno == errno.EAGAIN:
        return " (this user may start no more processes: raise the limit, `ulimit -u` or a pids cgroup's pids.max)"
    if exc.errno == errno.ENOMEM:
        return " (out of memory)"
    return ""


@dataclass
class Exited:
    """A worker process that ended, and its Popen-style return code."""
    pid: int
    returncode: int


class LocalPool:
    """Worker processes on this machine: started with ``worker``'s command line, replaced, stopped.

    With no ``address``, each is connected to the embedded broker by a socket pair
    (``connect``); otherwise it dials ``address``."""
    def __init__(
        self,
        address: str | None,
        size: int,
        worker: WorkerConfig,
        *,
        bootstrap: str | None = None,
        shm: str | None = None,
        spin: float = SPIN,
        env: dict[str, str] | None = None,
        leave_notes: str | None = None,
    ):
        self.address = address
        self.size = size
        self.worker = worker  # what each worker is (its command line: worker.argv())
        self.bootstrap = bootstrap
        self.shm = shm
        self.spin = spin  # seconds a lane's task process polls before it sleeps (poller.Spin)
        # The environment workers start with (default ours): a launched worker's keys travel here,
        # never on a command line, where every user of the machine sees them.
        self.env = env
        self.leave_notes = leave_notes  # a directory where a worker that leaves for good says why
        self.connect: Callable[..., None] | None = None  # set by the broker when address is None
        # A persistent worker's task process takes tasks from the broker directly, on a lane,
        # where its supervisor need not see each task (WorkerConfig.laned).
        self.lanes = worker.laned
        self.procs: dict[int, subprocess.Popen] = {}
        self.accepting = True  # False once broken or stopping: no restarts
        self.retry_at = 0.0  # after the system refused a process: no new one before this
        self.short = False  # running with fewer workers than asked (said once)

    def command(self, fd: int | None = None) -> list[str]:
        """The command line that starts a worker (``--fd`` for a socket pair)."""
        where = [self.address] if fd is None else ["--fd", str(fd)]
        cmd = [sys.executable, "-m", "corral.worker", *where, "--parent", str(os.getpid()), *self.worker.argv()]
        if self.bootstrap:
            cmd += ["--bootstrap", self.bootstrap]
        if self.shm:
            cmd += ["--shm", self.shm]
        if self.leave_notes:
            cmd += ["--leave-notes", self.leave_notes]
        return cmd

    def start_one(self) -> int:
        """Start one worker; its pid."""
        env = dict(os.environ if self.env is None else self.env)
        # corral itself must import in the worker even if it is only on our sys.path: the directory
        # that holds the package (corral/local/pool.py: three levels up), never the package's own
        # directory, whose modules (joblib.py, config.py, ...) would shadow top-level ones in tasks.
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        ours, theirs = socket.socketpair() if self.address is None else (None, None)
        lane_ours = lane_theirs = None
        try:  # (every step may find no descriptor left: what was made is closed)
            fds = [theirs.fileno()] if theirs else []
            cmd = self.command(*fds)
            if ours is not None and self.lanes:
                lane_ours, lane_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                for sock in (lane_ours, lane_theirs):
                    size_buffers(sock, STREAM_BUFFER)
                fds.append(lane_theirs.fileno())
                cmd += ["--lane", str(lane_theirs.fileno()), "--spin", repr(self.spin)]
            proc = subprocess.Popen(cmd, env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL, pass_fds=fds)
        except BaseException:
            for sock in (ours, lane_ours):
                if sock:
                    sock.close()
            raise
        finally:
            for sock in (theirs, lane_theirs):
                if sock:
                    sock.close()
        if ours:
            self.connect(proc.pid, ours, lane_ours)
        self.procs[proc.pid] = proc
        return proc.pid

    def fill(self) -> None:
        """Start workers until ``size`` are alive.

        If the system refuses a new process (out of processes or memory), the workers
        started so far serve on and the rest are tried again after a while; with none
        at all, WorkerStartError says why.
        """
        now = time.monotonic()
        if now < self.retry_at:
            return
        while self.accepting and len(self.procs) < self.size:
            try:
                self.start_one()
            except OSError as exc:
                self.retry_at = now + START_RETRY
                if not self.procs:
                    raise WorkerStartError(f"could not start a worker process: {exc}{_advice(exc)}") from exc
                if not self.short:
                    logger("pool").warning(f"started {len(self.procs)} of {self.size} worker processes; the system "
                                           f"refused more ({exc}); trying again every {START_RETRY:g} s")
                self.short = True
                return
        self.short = False

    def reap(self) -> list[Exited]:
        """Forget workers that have ended and say how they ended."""
        gone = []
        for pid, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                del self.procs[pid]
                containment.after_worker(pid)  # what it could not stop itself, if it was killed
                gone.append(Exited(pid, code))
        return gone

    def stop(self, grace: float = 3.0) -> None:
        """Wait ``grace`` seconds for workers told to exit, then kill the rest."""
        self.accepting = False
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
            containment.after_worker(proc.pid)
        self.procs.clear()

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every worker alive."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def kill(self, pid: int) -> None:
        """SIGKILL one worker."""
        proc = self.procs.get(pid)
        if proc is not None and proc.poll() is None:
            proc.kill()
