"""A fresh worker: every task runs in a brand-new task process, which exits after it.

Its task processes are forked from a template (``template.py``), itself forked
before ZeroMQ starts its threads; where fork is unavailable or a ``spawn``
context asked for it, each is a new interpreter instead.  The supervisor forks
the next task's process while it waits for that task (the ``spare``), and sends
the template each new function to import ahead (``warming_up``), so a task
process starts with its module imported and its function unpickled.  Once a
task has answered, its process and its process group are stopped at once, and
what left the group comes to the supervisor as an orphan and is stopped in the
next sweep (``containment.py``).
"""

from __future__ import annotations

import os
import signal
import time

from ..tuning import IMPORT_PATIENCE, SLOW_IMPORT, WARM_BYTES, WARM_MAX
from . import objects, task_process
from .heldtask import task_header
from .persistent import PersistentWorker
from .template import Template, TemplateGone


class FreshWorker(PersistentWorker):
    """A new task process per task, from a warm template (see the module docstring)."""

    stops_strays = True  # every stray belongs to a task that is over: a running task's stay below its process

    def before_connect(self) -> None:
        super().before_connect()
        self.spare: task_process.TaskProcess | None = None  # the next task's process, forked ahead
        self.zombies: list[task_process.TaskProcess] = []  # finished task processes not collected yet
        # The template is forked now, before ZeroMQ starts its threads (template.py says why).
        self.template = self.new_template() if not self.spawn and hasattr(os, "fork") else None
        # Send the template each new function to import ahead; not with an initializer,
        # which runs in each task process and may set up what those imports read.
        self.warming = self.template is not None and self.setup[1] is None
        self.warmed: set[bytes] = set()  # pickled functions sent to it

    def start(self) -> None:
        """Nothing to start before HELLO: a task process comes with each task."""

    # -- task processes -----------------------------------------------------------

    def start_process(self) -> task_process.TaskProcess:
        if self.template is None:
            return super().start_process()
        if self.template.check():
            try:
                return self.template.fork()
            except TemplateGone:
                pass
        self.template.close()  # killed (from outside, or stuck importing): its task processes died with it
        self.template = self.new_template()
        self.warming = False  # in case an import killed it
        return self.template.fork()

    def new_template(self) -> Template:
        """A template (in our cgroup, once we are in it: its task processes are born there too)."""
        return Template(self.setup)

    def task_processes(self) -> list[task_process.TaskProcess]:
        return [p for p in (self.proc, self.spare) if p is not None]

    def own_processes(self) -> list[int]:
        own = [p.pid for p in (self.proc, self.spare, *self.zombies) if p is not None and p.template is None]
        if self.template is not None:
            own.append(self.template.pid)
        return own

    def end_processes(self) -> None:
        for proc in (self.proc, self.spare):
            if proc is not None:
                proc.end()
        if self.template is not None and self.template.importing:
            self.template.kill()  # no waiting behind an import to collect the processes below
        for proc in self.zombies:
            proc.reap()
        if self.template is not None:
            self.template.close()

    def feed(self, fork: bool = True) -> None:
        """Hand the next task to a new task process (the spare, if there is one).

        ``fork=False``: only to the spare, which is there already.
        """
        if not self.pending or self.stopping or self.inflight or self.room_left() == 0 or self.warming_up():
            return
        spare, self.spare = self.spare, None
        if spare is not None and spare.template is not None and not spare.template.check():
            spare.retire()  # it died with its template
            spare = None
        if spare is None and not fork:
            return
        task = self.pending.popleft()
        proc = spare or self.start_process()
        try:
            proc.conn.send(*objects.batch([task], self.objects, proc, task_header([task])))
        except OSError:  # it died before it got the task
            self.retire(proc)
            self.pending.appendleft(task)
            if spare is not None and fork:
                self.feed()  # the spare died while it waited: a new process, at once
            return
        self.proc = proc
        self.inflight.append(task)
        self.next_head()

    def serve_tasks(self) -> None:
        super().serve_tasks()
        self.prepare_spare()
        if self.template is not None:
            self.template.flush()  # what the spare's FORK did not take along

    def prepare_spare(self) -> None:
        """Fork the next task process while we wait for the next task.

        Not with an initializer, which would run in a process that may never get a task.
        """
        if self.spare is None and self.setup[1] is None and not (self.stopping or self.broken or self.leaving):
            if self.template is None or not self.template.importing:  # its FORK would wait behind the import
                self.spare = self.start_process()

    def answered(self, proc: task_process.TaskProcess) -> None:
        # Its task is over, and so is what the task started in its process group (what
        # left the group comes to us as an orphan once the process is gone: swept).
        proc.signal(signal.SIGKILL)
        self.retire(proc)
        self.proc = None
        self.family.sweep(self.own_processes(), stop=True)  # the previous tasks' strays, by now

    def died_initializing(self, proc: task_process.TaskProcess) -> bool:
        return not proc.ready and self.setup[1] is not None

    def retire(self, proc: task_process.TaskProcess) -> None:
        """Close a finished task process; collect it later, without waiting for it now."""
        if not proc.retire():
            self.zombies.append(proc)

    # -- importing ahead ------------------------------------------------------------

    def warming_up(self) -> bool:
        """Is the template first importing the next task's function, for its process to inherit?"""
        template = self.template
        if not self.warming or template is None or not template.alive:
            return False
        if template.importing:
            if time.monotonic() - template.import_started < IMPORT_PATIENCE:
                return True
            template.kill()  # stuck: start_process() starts a new, cold template
            self.warming = False
            return False
        fn = self.pending[0].frames[0]
        if len(self.warmed) >= WARM_MAX or fn.nbytes > WARM_BYTES:
            return False
        pickled = bytes(fn)
        if pickled in self.warmed:
            return False
        self.warmed.add(pickled)
        template.import_ahead(pickled)
        return template.importing > 0

    def importing(self) -> bool:
        """Is the template importing a function we sent it?"""
        return self.template is not None and self.template.importing > 0

    def extra_waits(self) -> list:
        return [self.template.fileno()] if self.importing() else []  # (a number: the template may close)

    def extra_events(self, events: dict) -> None:
        if self.template is not None and self.template.fileno() in events:
            self.template_answered()

    def template_answered(self) -> None:
        """The template has imported a function: a spare forked before a slow import is cold, replace it."""
        self.template.read_answers()
        if self.template.imported() > SLOW_IMPORT and self.spare is not None:
            self.spare.retire()
            self.spare = None

    # -- time-driven work -----------------------------------------------------------

    def due(self) -> float | None:
        due = super().due()
        if self.importing():
            give_up = self.template.import_started + IMPORT_PATIENCE
            due = give_up if due is None else min(due, give_up)
        return due

    def timers(self, now: float) -> None:
        if self.zombies:
            self.zombies = [p for p in self.zombies if p.reap(block=False) is None]
        super().timers(now)

    def preparing(self) -> bool:
        return super().preparing() or (bool(self.pending) and self.current is None and self.importing())

