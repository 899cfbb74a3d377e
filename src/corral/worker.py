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

A worker asks for ``prefetch`` tasks up front (credit) and returns one credit
with every result, so the next task is already waiting when one finishes.
It hands the task process one task at a time, so a task it holds has either
started (reported in STARTED) or can still be cancelled, never in between.

If the broker goes silent, a worker started by a local pool exits (its
client is gone); a standalone worker reconnects with backoff and joins the
broker again when it is back.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass

import zmq

from . import protocol, runner
from .pool import exit_words
from .protocol import Kind, Status

HEARTBEAT_INTERVAL = 1.0
# A task that ends sooner than this is reported by its RESULT alone; a longer one
# gets a STARTED message once this much time has passed, so that its future shows
# as running. Saves two messages per short task.
STARTED_DELAY = 0.002
READY_TRIES = 3  # task processes that may die before saying READY, when there is no initializer to blame
LIVENESS = 3
MAX_BACKOFF = 10.0


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
        setup: tuple = (None, None),
        spawn: bool = False,
        idle_timeout: float | None = None,
        max_memory: int | None = None,
        reconnect: bool = False,
    ):
        self.address = address
        self.fresh = fresh
        self.prefetch = max(1, prefetch)
        self.max_tasks = max_tasks
        self.parent_pid = parent_pid
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.setup = (setup[0] if setup[0] is not None else list(sys.path), setup[1])
        self.spawn = spawn
        self.idle_timeout = idle_timeout
        self.max_memory = max_memory
        self.reconnect_on_silence = reconnect or not parent_pid
        self.heartbeat = HEARTBEAT_INTERVAL
        self.liveness = LIVENESS
        self.pending: deque[Held] = deque()
        self.current: Held | None = None
        self.proc: runner.TaskProcess | None = None
        self.broken: str | None = None
        self.stopping = False
        self.said_hello = False
        self.idle_since = time.monotonic()
        self.ctx = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.connect()

    # -- the broker connection --------------------------------------------------

    def connect(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(self.address)
        self.last_heard = self.last_sent = time.monotonic()

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.sock.send_multipart([protocol.encode(kind, body), *frames], copy=False)
        self.last_sent = time.monotonic()

    def hello(self) -> None:
        info = {
            "role": "worker",
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "fresh": self.fresh,
        }
        if self.broken:
            info["broken"] = self.broken
        self.send(Kind.HELLO, info)
        self.said_hello = True
        if not self.broken:
            self.send(Kind.READY, {"credit": self.prefetch})

    def reconnect(self) -> bool:
        """The broker went silent: drop its tasks and dial again until it answers."""
        if self.current is not None:
            self.stop_task(self.current, "orphaned", signal.SIGKILL, 0.0)
            self.task_process_ended()  # collects it; its report goes nowhere, the broker is gone
        self.pending.clear()
        backoff = self.heartbeat
        while not self.stopping:
            self.sock.close(linger=0)
            self.connect()
            self.hello()
            if self.sock.poll(backoff * 1000):
                self.last_heard = time.monotonic()
                return True
            backoff = min(backoff * 2, MAX_BACKOFF)
        return False

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        try:
            if not self.fresh:
                self.proc = self.start_process(None)
                self.wait_until_ready()
            self.hello()
            if self.broken:
                return 3
            signal.signal(signal.SIGTERM, self.on_sigterm)
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            while not self.stopping:
                fd = self.proc.fileno() if self.proc is not None else None
                if fd is not None:
                    poller.register(fd, zmq.POLLIN)
                events = dict(poller.poll(self.poll_timeout() * 1000))
                if fd is not None:
                    poller.unregister(fd)
                if self.sock in events:
                    self.last_heard = time.monotonic()
                    self.drain()
                if fd is not None and fd in events and self.proc is not None:
                    self.read_task_process()
                self.start_next()
                if not self.housekeeping():
                    poller.unregister(self.sock)
                    if not self.reconnect():
                        break
                    poller.register(self.sock, zmq.POLLIN)
            self.send(Kind.BYE, {"requeue": [t.gid for t in self.pending]})
            return 0
        finally:
            if self.proc is not None:
                if self.current is not None:
                    self.proc.signal(signal.SIGKILL)
                self.proc.close()
            self.sock.close()
            self.ctx.term()

    def on_sigterm(self, signum, frame) -> None:
        """Terminated (``terminate_workers()``, a batch system): take the task process along."""
        if self.proc is not None:
            self.proc.signal(signal.SIGTERM)
        os._exit(128 + signum)

    def poll_timeout(self) -> float:
        timeout = self.heartbeat
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
        while True:
            try:
                msg = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self.handle(msg)
            except (protocol.ProtocolError, KeyError, TypeError, ValueError) as exc:
                print(f"corral worker: dropped malformed message: {exc}", file=sys.stderr)

    def handle(self, msg: list) -> None:
        kind, body = protocol.decode(msg[0].bytes)
        if kind == Kind.TASKS:
            for entry, frames in protocol.split_entries(body, "tasks", msg[1:], 3):
                options = entry[2] if isinstance(entry[2], dict) else {}
                self.pending.append(Held(entry[0], [f.buffer for f in frames], options))
        elif kind == Kind.CANCEL:
            self.cancel(set(body.get("ids", ())))
        elif kind == Kind.KILL:
            self.kill(set(body.get("ids", ())), body)
        elif kind == Kind.SHUTDOWN:
            self.stopping = True
        elif kind == Kind.WELCOME:
            self.heartbeat = float(body.get("heartbeat", self.heartbeat))
            self.liveness = int(body.get("liveness", self.liveness))

    def cancel(self, ids: set) -> None:
        """Drop the named tasks not started yet; tell the broker which ones those were."""
        dropped = [t.gid for t in self.pending if t.gid in ids]
        self.pending = deque(t for t in self.pending if t.gid not in ids)
        running = sorted(ids - set(dropped))
        self.send(Kind.CANCELLED, {"ids": dropped, "running": running, "credit": len(dropped)})

    def kill(self, ids: set, body: dict) -> None:
        sig = signal.SIGKILL if body.get("signal") == "SIGKILL" else signal.SIGTERM
        grace = float(body.get("grace", 0.0))
        waiting = [t for t in self.pending if t.gid in ids]
        for task in waiting:
            self.pending.remove(task)
            self.report(task, *_stopped(task, "killed", "before it started"))
        if self.current is not None and self.current.gid in ids:
            self.stop_task(self.current, "killed", sig, grace)

    def stop_task(self, task: Held, reason: str, sig: int, grace: float) -> None:
        """Signal the process running ``task``; SIGKILL follows after ``grace`` seconds."""
        if task.stop_reason is None:
            task.stop_reason = reason
        self.proc.signal(sig)
        if sig != signal.SIGKILL:
            task.kill_at = time.monotonic() + grace

    # -- task processes -----------------------------------------------------------

    def start_process(self, first: Held | None) -> runner.TaskProcess:
        task = None if first is None else (first.gid, [bytes(f) for f in first.frames])
        return runner.start(self.setup, task, self.spawn)

    def wait_until_ready(self) -> None:
        """A persistent task process runs the initializer first; wait for its verdict.

        Dying before READY breaks the executor only when an initializer ran (as in
        the stdlib); otherwise the process was killed from outside, and we start
        another, a few times.
        """
        for _ in range(READY_TRIES):
            while not self.proc.conn.poll(self.heartbeat):
                if self.parent_gone():
                    self.stopping = True
                    return
                if self.said_hello:
                    self.send(Kind.HEARTBEAT)
            try:
                header, _ = runner.recv(self.proc.conn)
            except (EOFError, OSError):
                self.proc.conn.close()
                how = exit_words(self.proc.reap())
                if self.setup[1] is not None:
                    self.broken = f"the task process {how} while running the initializer"
                    return
                self.proc = self.start_process(None)
                continue
            if header[0] == runner.BROKEN:
                self.broken = header[1]
                self.proc.reap()
            else:
                self.proc.ready = True
            return
        self.broken = f"{READY_TRIES} task processes in a row died before they were ready ({how})"

    def start_next(self) -> None:
        if self.current is not None or not self.pending or self.stopping:
            return
        task = self.pending.popleft()
        task.started = time.monotonic()
        if self.fresh:
            self.proc = self.start_process(task)
        else:
            if self.proc is None:
                self.proc = self.start_process(None)
                self.wait_until_ready()
                if self.broken:
                    self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": self.broken})
                    self.stopping = True
                    return
            try:
                runner.send(self.proc.conn, (runner.TASK, task.gid), task.frames)
            except OSError:  # the task process died between two tasks: this one never reached it
                task.started = 0.0
                self.pending.appendleft(task)
                self.task_process_ended()
                return
        self.current = task

    def read_task_process(self) -> None:
        proc, task = self.proc, self.current
        try:
            header, frames = runner.recv(proc.conn)
        except (EOFError, OSError):
            self.task_process_ended()
            return
        if header[0] == runner.READY:  # a fresh task process finished its initializer
            proc.ready = True
            return
        if header[0] == runner.BROKEN:  # a fresh task process's initializer failed
            self.report(task, Status.FAILED, [], {"error": protocol.ERR_BROKEN, "message": header[1]})
            self.current = None
            self.stopping = True
            return
        _, gid, status, meta = header
        if task is None or gid != task.gid:
            return
        self.current = None
        proc.tasks += 1
        if task.stop_reason is not None:  # finished before the signal landed: it was still stopped
            self.task_process_ended(task)
            return
        self.report(task, Status(status), frames, meta)
        if self.fresh:
            proc.close()
            self.proc = None
        elif self.recycle_reason(proc):
            proc.close()
            self.proc = None

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
        """The task process is gone (or we stopped it): report the task it was running."""
        proc = self.proc
        proc.signal(signal.SIGKILL)
        proc.conn.close()
        code = proc.reap()
        self.proc = None
        task = task or self.current
        self.current = None
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
        meta["busy"] = time.monotonic() - task.started if task.started else 0.0
        self.idle_since = time.monotonic()
        self.send(Kind.RESULT, {"results": [protocol.result_entry(task.gid, status, len(frames), meta)], "credit": 1},
                  frames)

    # -- time-driven work -----------------------------------------------------------

    def housekeeping(self) -> bool:
        """Timeouts, heartbeats, idleness, the parent.  False: the broker is gone."""
        now = time.monotonic()
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
            self.send(Kind.HEARTBEAT)
        if now - self.last_heard > self.heartbeat * self.liveness:
            if not self.reconnect_on_silence:  # started by a client's pool: the client and its broker are gone
                self.stopping = True
                return True
            print(f"corral worker: the broker at {self.address} went silent; reconnecting", file=sys.stderr)
            return False
        return True

    def parent_gone(self) -> bool:
        return bool(self.parent_pid) and os.getppid() != self.parent_pid


def _stopped(task: Held, reason: str, how: str) -> tuple[Status, list, dict]:
    if reason == "timeout":
        limit = task.options.get("timeout")
        return Status.FAILED, [], {"error": protocol.ERR_TIMEOUT, "message": f"the task ran longer than its "
                                   f"timeout of {limit} s and was stopped: {how}"}
    return Status.FAILED, [], {"error": protocol.ERR_KILLED, "message": f"the task was killed: {how}"}


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
    runner.die_with_parent(signal.SIGHUP)


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
    p.add_argument("--spawn", action="store_true", help="spawn task processes instead of forking them")
    p.add_argument("--idle-timeout", type=float, default=None)
    p.add_argument("--max-memory", type=int, default=None)
    p.add_argument("--reconnect", action="store_true", help="if the broker goes silent, dial again (standalone)")
    args = p.parse_args(argv)
    if args.parent:
        _follow_parent(args.parent, args.bootstrap)
        if os.getppid() != args.parent:
            return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the client
    setup: tuple = (None, None)
    if args.bootstrap:
        with open(args.bootstrap, "rb") as f:
            setup = pickle.load(f)
        sys.path[:] = setup[0]
    worker = Worker(
        args.address,
        fresh=args.fresh,
        prefetch=args.prefetch,
        max_tasks=args.max_tasks,
        parent_pid=args.parent,
        setup=setup,
        spawn=args.spawn,
        idle_timeout=args.idle_timeout,
        max_memory=args.max_memory,
        reconnect=args.reconnect,
    )
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
