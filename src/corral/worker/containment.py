"""Containment: whatever a task starts ends with the task's process.

A task may start processes of its own (``subprocess.Popen``, ``os.fork``,
a daemon that detaches).  Left alone they would outlive the task, the worker
and the executor, and a forked one holding the task process's socket would
hide the task process's death from its supervisor.  Three layers keep them
in hand, from the cheapest to the most thorough::

    supervisor  (a child subreaper: orphans below it become its children)
      |  cgroup corral-worker-<pid>   (cgroup v2, where we may create one)
      +-- task process   (leads its own process group; a fresh one is a subreaper too)
            +-- what the task started: same process group, unless it left it

- **Process groups.**  Every task process leads a group of its own, which
  its children join unless they ask otherwise.  Signalling the group stops
  the task process and, in one call, what it started.
- **Subreapers.**  A process whose parent dies is normally adopted by init,
  out of our reach.  The supervisor is a child subreaper, so an orphan of its
  task process becomes its child instead, and it can find and stop it even if
  it left the group (``setsid``, a double fork).  A fresh task process is a
  subreaper too, so that while its task runs, what it starts stays below it
  (the supervisor's sweep, which stops every stray child, must not reach a
  running task's helpers); when it exits, they come to the supervisor.
- **A cgroup v2** per worker, where the machine lets us create one (root, or
  a delegated user cgroup): the template or task processes join it, so that
  when the supervisor goes, even by SIGKILL, whoever started it (the pool)
  can stop everything left in it at once (``cgroup.kill``).

When a task process ends (after each task in fresh mode; in persistent mode
when the process ends: timeout, kill, crash, recycling, shutdown) its
supervisor signals its group and then sweeps: every child of the supervisor
that is not one of its own processes is an orphan of a task that ended, and
is stopped with its group and reaped.  In persistent mode the sweep waits for
the task process to end; meanwhile, orphans are only reaped when they exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SWEEP_ROUNDS = 8  # a sweep stops orphans, whose own orphans then come to us: so many rounds at most
REAP_PATIENCE = 1.0  # seconds a sweep waits for SIGKILLed orphans to exit
_LINUX = sys.platform.startswith("linux")
_prctl = None  # libc's prctl, looked up once: a forked task process inherits it ready to call


def prctl(option: int, arg: int) -> bool:
    """Call Linux's prctl(2); False where there is none or it failed."""
    global _prctl
    if not _LINUX:
        return False
    try:
        if _prctl is None:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl  # about 0.4 ms: not in every fresh process
        return _prctl(option, arg) == 0
    except Exception:  # noqa: BLE001 - best effort
        return False


def enter_task_process(fresh: bool) -> None:
    """In a new task process, before any user code runs: lead a process group of our own;
    a fresh one also adopts the orphans of what its task starts (see the module docstring)."""
    try:
        os.setpgid(0, 0)
    except OSError:  # already a session leader (a spawned process that was started as one)
        pass
    if fresh:
        prctl(PR_SET_CHILD_SUBREAPER, 1)


def exit_words(returncode: int) -> str:
    """How a process ended, from a Popen-style return code (-N: killed by signal N)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


def signal_tree(pid: int, sig: int) -> None:
    """Signal a task process and its group (what it started and did not move elsewhere).

    Only ever called for a pid not yet reaped, so the group id cannot belong to anyone else.
    """
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):  # no group yet (it has not called setpgid): the process alone
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Family:
    """A supervisor's hold on the processes below it (one per worker)."""

    def __init__(self, cgroup: bool = True):
        self.subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._children_fd: int | None = None
        if self.subreaper:
            try:
                self._children_fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # a kernel without CONFIG_PROC_CHILDREN: orphans go unnoticed until the end
                pass
        self.cgroup_wanted = cgroup
        self.cgroup: Cgroup | None = None

    # -- the cgroup ----------------------------------------------------------------

    def enter_cgroup(self, ours: Iterable[int]) -> None:
        """Move this worker, with the processes it has started (``ours``), into a cgroup of its
        own; every process it starts later is born there.

        Once, a moment after the worker started (``tuning.CGROUP_DELAY``): making a cgroup and
        moving a process into it takes ~10 ms here, which would otherwise delay the first task
        (and every new task process, if each moved itself).  A process started before then
        that left its task's process group is not in the cgroup: the subreaper still holds it.
        """
        if not self.cgroup_wanted or self.cgroup is not None:
            return
        self.cgroup_wanted = False
        cgroup = Cgroup.create(os.getpid())
        if cgroup is None or not cgroup.join(0):
            if cgroup is not None:
                cgroup.remove()
            return
        self.cgroup = cgroup
        for pid in ours:
            cgroup.join(pid)

    # -- orphans ---------------------------------------------------------------------

    def children(self) -> list[int]:
        """Our children, as the kernel lists them (the main thread's; orphans come to it)."""
        if self._children_fd is None:
            return []
        try:
            data = os.pread(self._children_fd, 1 << 16, 0)
        except OSError:
            return []
        return [int(pid) for pid in data.split()]

    def sweep(self, ours: Iterable[int], stop: bool) -> None:
        """Reap our children that are not ``ours`` and have exited; with ``stop``, stop them
        first (each with its group), and then theirs, which come to us as they die."""
        mine = set(ours)
        deadline = time.monotonic() + REAP_PATIENCE
        for _ in range(SWEEP_ROUNDS if stop else 1):
            strays = [pid for pid in self.children() if pid not in mine]
            if not strays:
                return
            if stop:
                for pid in strays:
                    signal_tree(pid, signal.SIGKILL)
            for pid in strays:
                _reap(pid, deadline if stop else None)

    def close(self, ours: Iterable[int] = ()) -> None:
        """The worker is leaving: stop everything below it but ``ours`` (already stopped)."""
        if self.cgroup is not None and self.cgroup.leave():  # out of it ourselves: then all in it go
            self.cgroup.kill()
        self.sweep(ours, stop=True)
        if self.cgroup is not None:
            self.cgroup.remove()
        if self._children_fd is not None:
            os.close(self._children_fd)
            self._children_fd = None


def _reap(pid: int, deadline: float | None) -> bool:
    """Collect a child that has exited; wait for it until ``deadline`` (None: not at all)."""
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:  # not ours after all (collected meanwhile)
            return True
        if deadline is None or time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


class Cgroup:
    """A worker's cgroup v2, ``corral-worker-<pid>``, beside the one it was started in.

    Made only where the machine allows (a cgroup2 hierarchy we may write to);
    everything fails quietly otherwise: the process groups and the subreaper
    still contain what a task starts while its supervisor lives.
    """

    def __init__(self, path: str):
        self.path = path

    @staticmethod
    def path_for(pid: int) -> str | None:
        """Where the worker of ``pid``, started by this process, keeps its cgroup (None: nowhere)."""
        base = _own_cgroup()
        return None if base is None else os.path.join(base, f"corral-worker-{pid}")

    @classmethod
    def create(cls, pid: int) -> Cgroup | None:
        """A new cgroup for worker ``pid``; None where we may not make one."""
        path = cls.path_for(pid)
        if path is None:
            return None
        if os.path.isdir(path):  # left by a worker of the same pid that was SIGKILLed: stale
            cleanup(path)
        try:
            os.mkdir(path)
        except OSError:
            return None
        return cls(path)

    def join(self, pid: int) -> bool:
        """Move ``pid`` (0: the calling process) into this cgroup; False if that failed."""
        return _write(os.path.join(self.path, "cgroup.procs"), pid)

    def leave(self) -> bool:
        """Move the calling process back to the cgroup it came from; False if that failed."""
        return _write(os.path.join(os.path.dirname(self.path), "cgroup.procs"), 0)

    def kill(self) -> None:
        """SIGKILL everything in it."""
        kill_cgroup(self.path)

    def remove(self) -> None:
        """Remove it once empty."""
        remove_cgroup(self.path)


def _write(path: str, pid: int) -> bool:
    try:
        with open(path, "w") as f:
            f.write(str(pid))
        return True
    except OSError:
        return False


def _own_cgroup() -> str | None:
    """This process's cgroup v2 directory, if the machine has a cgroup2 hierarchy we may write to."""
    if not _LINUX:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            relative = next((line[3:].strip() for line in f if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as f:
            mount = next((line.split()[4] for line in f if " - cgroup2 " in line), None)
    except OSError:
        return None
    if relative is None or mount is None:
        return None
    path = os.path.join(mount, relative.lstrip("/"))
    return path if os.access(path, os.W_OK) else None


def kill_cgroup(path: str) -> None:
    """SIGKILL every process in a cgroup (cgroup.kill, Linux 5.14; else one by one)."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        return
    except OSError:
        pass
    for _ in range(SWEEP_ROUNDS):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(line) for line in f if line.strip()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def remove_cgroup(path: str, patience: float = REAP_PATIENCE) -> bool:
    """Remove an empty cgroup, waiting up to ``patience`` seconds for its processes to go."""
    deadline = time.monotonic() + patience
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:  # still populated (dying processes), or not ours to remove
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def cleanup(path: str) -> None:
    """Stop what a worker left in its cgroup, and remove the cgroup."""
    kill_cgroup(path)
    remove_cgroup(path)


def after_worker(pid: int) -> None:
    """A worker this process started has ended: stop whatever it left running in its cgroup
    (it could not, if it was SIGKILLed) and remove the cgroup."""
    path = Cgroup.path_for(pid)
    if path is not None and os.path.isdir(path):
        cleanup(path)

