"""A supervisor's task processes: starting one, waiting for it to be ready, and ending it with
everything its tasks started (``TaskProcesses``, a part of ``Supervisor``).

A task process's end is learned from the process itself (a pidfd), never only from
its socket, which a process the task forked may hold open long after.  When one
ends, its process group goes with it, and the strays that left the group come to
us as orphans and are swept (``containment.py``).
"""

from __future__ import annotations

import select

from ..tuning import READY_TRIES
from ..wire.protocol import Kind
from . import task_process
from .containment import exit_words


class TaskProcesses:
    """The task-process half of ``Supervisor``: ``proc`` (the task process there is, if any), its
    start (a mode says how: ``start_process``), readiness and end."""

    def start(self) -> None:
        """Before HELLO: a persistent task process, ready (its initializer has run)."""
        self.proc = self.start_process()
        self.wait_until_ready()

    def task_processes(self) -> list[task_process.TaskProcess]:
        """Every task process we hold."""
        return [self.proc] if self.proc is not None else []

    def end_processes(self) -> None:
        """We are leaving: our task processes go (see run)."""
        if self.proc is not None:
            self.proc.end()

    def start_process(self) -> task_process.TaskProcess:
        """A new task process (the mode's kind)."""
        raise NotImplementedError

    def read_task_process(self) -> None:
        """The task process's socket is readable."""

    def task_process_exited(self) -> None:
        """The task process has ended (its pidfd said so)."""

    def end_process(self, proc: task_process.TaskProcess) -> int:
        """Stop a task process with everything its tasks started; its return code."""
        code = proc.end()
        self.family.sweep(self.own_processes(), stop=True)  # what left its group came to us when it died
        return code

    def own_processes(self) -> list[int]:
        """The processes we started ourselves and keep: everything else below us is a stray."""
        return [p.pid for p in self.task_processes() if p.template is None]

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
            if header[0] == task_process.BROKEN:
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
