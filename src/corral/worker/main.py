"""A worker process's life, from its command line to its exit: ``python -m corral.worker``.

A pool (the executor's own, or ``corral worker``'s) starts each worker as
``python -m corral.worker ADDRESS | --fd N [options]``.  This module parses that
command line, follows the parent that started it (a worker outlives neither
its client nor, if the whole process group is signalled, the client's files),
and runs the supervisor (``supervisor.py``).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time

from ..config import WorkerConfig
from . import task_process
from .fresh import FreshWorker
from .laned import LaneWorker
from .persistent import PersistentWorker
from .supervisor import LEAVE_EXIT, Supervisor


class _ClientFiles:
    """The private directories of the client that started us (its bootstrap file, its shared
    memory), which a client that died without cleaning up leaves to its workers to remove."""

    def __init__(self, parent: int, dirs: list[str]):
        self.parent = parent
        self.dirs = dirs

    def remove(self) -> None:
        """Remove the directories."""
        import shutil

        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)

    def remove_if_client_dies(self, patience: float) -> None:
        """Remove them if the client is gone, or goes within ``patience`` seconds."""
        deadline = time.monotonic() + patience
        while os.getppid() == self.parent and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.getppid() != self.parent:
            self.remove()

    def after_sigterm(self) -> None:
        """We were sent SIGTERM.  If our client was too (the whole process group: ``timeout``,
        a batch system, a shell's kill of a job), it dies without removing its files: we do.
        If only we were (``terminate_workers()``), the client lives and removes them itself."""
        hold_on = time.monotonic() + TERM_SPREAD  # the signal may reach the client a moment after us
        while not _dying(self.parent):
            if time.monotonic() >= hold_on:
                return
            time.sleep(0.002)
        self.remove_if_client_dies(2.0)


TERM_SPREAD = 0.02  # seconds a signal sent to a process group may take to reach all of it
# Signals whose default action ends a process: one of these pending means it is dying.
_FATAL = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _dying(pid: int) -> bool:
    """Has ``pid`` ended, is it exiting, or has it a fatal signal pending (Linux's /proc)?"""
    if os.getppid() != pid:
        return True
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return True
    if fields.get("State", "").split()[:1] in (["Z"], ["X"]):
        return True
    pending = 0
    for key in ("SigPnd", "ShdPnd"):
        try:
            pending |= int(fields.get(key, "0").strip(), 16)
        except ValueError:
            pass
    return any(pending & (1 << (int(sig) - 1)) for sig in _FATAL)


def _follow_parent(files: _ClientFiles, worker: list) -> None:
    """Exit when the process that started us dies, even by SIGKILL.

    The parent-death signal is SIGHUP, used for nothing else, so that we
    first stop our task processes with what their tasks started (``worker``
    holds the supervisor once there is one) and remove the client's private
    directories, which a SIGKILLed client could not.
    """

    def on_parent_death(signum, frame):
        """Our parent died: stop everything below us, remove its files, exit."""
        if worker:
            worker[0].leave_now()
        files.remove()
        os._exit(128 + signum)

    signal.signal(signal.SIGHUP, on_parent_death)
    task_process.die_with_parent(signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process started by a pool: ``python -m corral.worker``."""
    import argparse

    from ..config import seconds

    p = argparse.ArgumentParser(prog="corral-worker-process")
    p.add_argument("address", nargs="?", help="the broker's ZeroMQ address")
    WorkerConfig.add_arguments(p)
    # How this process was started (a pool's plumbing, not what the worker is):
    p.add_argument("--fd", type=int, default=None, help="a socket pair to the broker, inherited (instead of address)")
    p.add_argument("--lane", type=int, default=None, help="with --fd: a second socket pair, for tasks and results")
    p.add_argument("--spin", type=seconds(zero=True), default=0.0,
                   help="with --lane: seconds to poll it before sleeping")
    p.add_argument("--bootstrap", default=None, help="file with the pickled sys.path and initializer")
    p.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--shm", default=None, help="the client's directory for large buffers (shm.py)")
    p.add_argument("--leave-notes", default=None,
                   help="a directory where, leaving for good, we write why, in a file named by our pid")
    args = p.parse_args(argv)
    if (args.address is None) == (args.fd is None):
        p.error("give either the broker's address or --fd")
    files = None
    made: list[Supervisor] = []  # the worker, once made: the parent-death handler stops its processes
    if args.parent:
        files = _ClientFiles(args.parent, [d for d in (args.bootstrap and os.path.dirname(args.bootstrap),
                                                       args.shm) if d])
        _follow_parent(files, made)
        if os.getppid() != args.parent:
            # The client died before we asked to hear of it: no signal will come, and its files
            # are left to us (a client ended at once after making its executor).
            files.remove()
            return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the client
    if args.log_level:
        from ..logs import setup

        setup(args.log_level)
    setup: tuple = (None, None, args.shm)
    if args.bootstrap:
        with open(args.bootstrap, "rb") as f:
            setup = (*pickle.load(f), args.shm)
        sys.path[:] = setup[0]
    config = WorkerConfig.from_args(args)
    started = {"fd": args.fd, "parent_pid": args.parent, "setup": setup}
    if args.lane is not None:
        worker: Supervisor = LaneWorker(args.address, config, lane=args.lane, spin=args.spin, **started)
    elif config.fresh:
        worker = FreshWorker(args.address, config, **started)
    else:
        worker = PersistentWorker(args.address, config, **started)
    made.append(worker)
    if files is not None:
        worker.on_terminated = files.after_sigterm
    code = worker.run()
    if code == LEAVE_EXIT:
        # Drained, and leaving for good: a SIGTERM still on its way (one sent to the whole job, which
        # corral worker passes on as well) must not end us now, as it would while the interpreter
        # exits (which gives SIGTERM its default action back) and make us seem to have crashed.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if code == LEAVE_EXIT and args.leave_notes:
        note(args.leave_notes, worker.leaving)
    if files is not None and worker.link.eof:
        # Our broker's socket pair closed: the client died.  Its files are ours to remove; the
        # parent-death signal that would do it may come after we are gone.  The kernel closes a
        # dying process's sockets before it reparents its children, so wait for that.
        files.remove_if_client_dies(2.0)
    return code



def note(directory: str, reason: str) -> None:
    """Tell the ``corral worker`` that started us why we left for good: a file named by our pid
    (written whole, then renamed, so that it never reads half of it)."""
    path = os.path.join(directory, str(os.getpid()))
    try:
        with open(path + ".new", "w") as f:
            f.write(reason)
        os.replace(path + ".new", path)
    except OSError:
        pass  # it has gone, or removed its directory: no one to tell
