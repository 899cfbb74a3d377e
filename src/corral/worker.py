"""The worker role: connect to a broker, take tasks, run them, reply.

::

    broker ROUTER <--DEALER-- Worker.run()           persistent: runs each
                   HELLO, READY(credit)              task in this process
                   --> TASKS                         fresh: forks a child per
                   <-- STARTED, RESULT(+credit)      task from this process,
                   <-> HEARTBEAT                     which is the clean template

A worker asks for ``prefetch`` tasks up front (credit) and returns one credit
with every result, so the next task is already waiting when one finishes.
Tasks received but not started are handed back (BYE ``requeue``) when the
worker leaves on its own, e.g. after ``max_tasks`` tasks.

In fresh mode this process imports nothing of the user's: each task runs in a
child forked from it, which writes its outcome into a pipe and exits; the
supervisor reports the child's death by signal or exit code if no outcome
arrives.  The initializer runs once here, so every child inherits its effects.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import time
import warnings
from collections import deque

import zmq

from . import protocol, serialization
from .execution import Outcome, execute, failed
from .pool import exit_words
from .protocol import Kind

HEARTBEAT_INTERVAL = 1.0


class Worker:
    def __init__(
        self,
        address: str,
        *,
        fresh: bool = False,
        prefetch: int = 1,
        max_tasks: int | None = None,
        parent_pid: int | None = None,
        name: str | None = None,
    ):
        self.address = address
        self.fresh = fresh
        self.prefetch = max(1, prefetch)
        self.max_tasks = max_tasks
        self.parent_pid = parent_pid
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.pending: deque = deque()
        self.done = 0
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.IMMEDIATE, 0)
        self.sock.connect(address)
        self.stopping = False

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.sock.send_multipart([protocol.encode(kind, body), *frames], copy=False)

    def hello(self, broken: str | None = None) -> None:
        info = {
            "role": "worker",
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "fresh": self.fresh,
        }
        if broken:
            info["broken"] = broken
        self.send(Kind.HELLO, info)
        if not broken:
            self.send(Kind.READY, {"credit": self.prefetch})

    def run(self) -> int:
        try:
            while not self.stopping:
                if not self.pending:
                    self.wait_for_work()
                self.drain()
                if self.pending and not self.stopping:
                    task_id, frames = self.pending.popleft()
                    self.run_one(task_id, frames)
                    if self.max_tasks and self.done >= self.max_tasks:
                        self.stopping = True
            self.send(Kind.BYE, {"requeue": [tid for tid, _ in self.pending]})
            return 0
        finally:
            self.sock.close()
            self.ctx.term()

    def wait_for_work(self) -> None:
        """Block until a message arrives; heartbeat and check the parent meanwhile."""
        while not self.sock.poll(HEARTBEAT_INTERVAL * 1000):
            if self.parent_pid and os.getppid() != self.parent_pid:
                self.stopping = True  # the process that started us is gone
                return
            self.send(Kind.HEARTBEAT)

    def drain(self) -> None:
        while True:
            try:
                msg = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                kind, body = protocol.decode(msg[0].bytes)
                if kind == Kind.TASKS:
                    for entry, frames in protocol.split_entries(body, "tasks", msg[1:], 3):
                        self.pending.append((entry[0], [f.buffer for f in frames]))
                elif kind == Kind.CANCEL:
                    self.cancel(set(body.get("ids", ())))
                elif kind == Kind.SHUTDOWN:
                    self.stopping = True
            except protocol.ProtocolError as exc:
                print(f"corral worker: dropped malformed message: {exc}", file=sys.stderr)

    def cancel(self, ids: set) -> None:
        before = len(self.pending)
        self.pending = deque(t for t in self.pending if t[0] not in ids)
        if len(self.pending) != before:
            self.send(Kind.READY, {"credit": before - len(self.pending)})

    def run_one(self, task_id: int, frames: list) -> None:
        self.send(Kind.STARTED, {"ids": [task_id]})
        start = time.monotonic()
        status, out, meta = self.run_forked(frames) if self.fresh else execute(frames)
        meta["busy"] = time.monotonic() - start
        self.done += 1
        last = self.max_tasks is not None and self.done >= self.max_tasks
        body = {"results": [protocol.result_entry(task_id, status, len(out), meta)]}
        if not last:
            body["credit"] = 1
        self.send(Kind.RESULT, body, out)

    def run_forked(self, frames: list) -> Outcome:
        """Run the task in a child forked from this clean template process."""
        data = [bytes(f) for f in frames]  # the child must not touch zmq-owned memory
        if not hasattr(os, "fork"):
            return run_spawned(data)
        rfd, wfd = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with zmq's threads: the child never uses zmq
            pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(rfd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _die_with_parent(signal.SIGKILL)  # not inherited across fork
                status, out, meta = execute(data)
                blob = pickle.dumps((int(status), [bytes(f) for f in out], meta), protocol=5)
                with os.fdopen(wfd, "wb") as pipe:
                    pipe.write(blob)
            except BaseException:  # noqa: BLE001 - the child must never return into the loop
                code = 70
            finally:
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as pipe:
            blob = pipe.read()
        _, wstatus = os.waitpid(pid, 0)
        if blob:
            try:
                status, out, meta = pickle.loads(blob)
                return protocol.Status(status), out, meta
            except Exception:  # noqa: BLE001 - a truncated pipe falls through to the death report
                pass
        how = exit_words(os.waitstatus_to_exitcode(wstatus))
        return failed(protocol.ERR_WORKER_LOST, f"task process {pid} {how} before replying")


def _spawned_entry(data: list, conn) -> None:
    status, out, meta = execute(data)
    conn.send((int(status), [bytes(f) for f in out], meta))


def run_spawned(data: list) -> Outcome:
    """Fresh mode where fork is unavailable: a spawned interpreter per task."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_spawned_entry, args=(data, send), daemon=True)
    proc.start()
    send.close()
    try:
        status, out, meta = recv.recv()
        proc.join()
        return protocol.Status(status), out, meta
    except (EOFError, OSError):
        proc.join()
        return failed(protocol.ERR_WORKER_LOST, f"task process {proc.pid} exited with code {proc.exitcode}")


def _die_with_parent(sig: int) -> None:
    """Ask Linux to send us ``sig`` when our parent dies (a parent-death signal)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except Exception:  # noqa: BLE001 - best effort; the getppid check remains
        pass


def _follow_parent(parent: int, bootstrap: str | None) -> None:
    """Exit when the process that started us dies, even by SIGKILL.

    The parent-death signal is SIGHUP, used for nothing else, so that we
    first remove the client's private directory, which a SIGKILLed client
    could not.
    """

    def on_parent_death(signum, frame):
        if bootstrap:
            import shutil

            shutil.rmtree(os.path.dirname(bootstrap), ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGHUP, on_parent_death)
    _die_with_parent(signal.SIGHUP)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process started by a pool: ``python -m corral.worker``."""
    import argparse

    p = argparse.ArgumentParser(prog="corral-worker-process")
    p.add_argument("address")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--max-tasks", type=int, default=None)
    p.add_argument("--bootstrap", default=None, help="file with the pickled sys.path and initializer")
    p.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = p.parse_args(argv)
    if args.parent:
        _follow_parent(args.parent, args.bootstrap)
        if os.getppid() != args.parent:
            return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the client
    worker = Worker(
        args.address,
        fresh=args.fresh,
        prefetch=args.prefetch,
        max_tasks=args.max_tasks,
        parent_pid=args.parent,
    )
    broken = None
    if args.bootstrap:
        broken = bootstrap(args.bootstrap)
    worker.hello(broken)
    if broken:
        worker.sock.close(linger=2000)
        worker.ctx.term()
        return 3
    return worker.run()


def bootstrap(path: str) -> str | None:
    """Adopt the client's sys.path and run its initializer; return an error text on failure."""
    import traceback

    with open(path, "rb") as f:
        sys_path, payload = pickle.load(f)
    sys.path[:] = sys_path
    if payload is None:
        return None
    try:
        initializer, initargs = serialization.loads([payload], "the initializer")
        initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - any failure breaks the pool, as in the stdlib
        return "".join(traceback.format_exception(exc))
    return None


if __name__ == "__main__":
    sys.exit(main())
