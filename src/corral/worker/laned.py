"""A worker with a lane: its persistent task process takes tasks straight from an embedded broker.

A worker started by an embedded broker's pool whose supervisor need not see each
task (``WorkerConfig.laned``) inherits a lane (``wire/lane.py``) and passes it on
to its task process, which reads its tasks from the broker there and answers
them there: the supervisor is out of the round trip, and only watches.  It stops
the process when the broker asks (for a task it finds running in the page the
process writes, ``onlane.LanePage``); when the process ends it says how and
how many tasks it had begun (ENDED), and starts the next one with the next epoch
(LANE).  Why: a round trip then wakes two processes instead of three.
"""

from __future__ import annotations

import signal
import time

from ..tuning import LANE_STOP_CHECK
from ..wire import protocol
from ..wire.protocol import Kind
from . import onlane, output, task_process
from .containment import exit_words
from .supervisor import Supervisor


class LaneWorker(Supervisor):
    """The supervisor of a task process on a lane (see the module docstring)."""

    def __init__(self, address: str | None, config=None, *, lane: int, spin: float = 0.0, **kwargs):
        self.lane = lane  # the descriptor its task processes read their tasks from
        self.spin = spin  # seconds its task process polls the lane before it sleeps (poller.Spin)
        self.epoch = 0  # of the task process on the lane: tasks for an earlier one are skipped
        self.page = onlane.LanePage()
        self.lane_stop: tuple | None = None  # (task id, tasks begun then, signal, grace): stop it when it begins
        self.lane_kill_at: float | None = None  # when that SIGTERM turns into SIGKILL
        super().__init__(address, config, **kwargs)

    def hello_extra(self) -> dict:
        return {"lane": self.epoch}

    def start_process(self) -> task_process.TaskProcess:
        self.page.clear()
        return task_process.start(self.setup, False, False, lane=(self.lane, self.epoch, self.page, self.spin))

    def kill_on_lane(self, body: dict) -> None:
        """The broker asks us to stop the task process of epoch ``lane`` if it runs task ``id``."""
        if body["lane"] == self.epoch and self.proc is not None:
            gid = body.get("id")
            if type(gid) is not int:
                raise protocol.ProtocolError("a lane's KILL without a task id")
            sig = signal.SIGKILL if body.get("signal") == "SIGKILL" else signal.SIGTERM
            self.stop_lane_task(gid, sig, protocol.seconds(body.get("grace", 0.0), "grace"))

    def stop_lane_task(self, gid: int, sig: int, grace: float) -> None:
        """Signal the task process if it runs task ``gid``; if that task has not begun,
        when it begins (or never, if the process begins another first: it has ended)."""
        begun, running = self.page.read()
        if running != gid:
            self.lane_stop = (gid, begun, sig, grace)
            return
        self.lane_stop = None
        self.proc.signal(sig)
        if sig != signal.SIGKILL and self.lane_kill_at is None:
            self.lane_kill_at = time.monotonic() + grace

    def read_task_process(self) -> None:
        self.lane_process_ended()  # it writes nothing on its socket after READY: this is its end

    def task_process_exited(self) -> None:
        self.lane_process_ended()

    def lane_process_ended(self) -> None:
        """Report how the task process ended and which task it was running; start the next."""
        proc = self.proc
        code = self.end_process(proc)  # in case it only closed its end
        begun, running = self.page.read()
        if running:
            output.crashed(self, running)  # what the task it ran was capturing, ahead of ENDED
        self.send(Kind.ENDED, {"lane": self.epoch, "pid": proc.pid, "how": exit_words(code), "begun": begun})
        self.epoch += 1
        self.lane_stop, self.lane_kill_at = None, None
        self.proc = self.start_process()
        self.wait_until_ready()
        if self.broken:
            self.proc = None
            self.send(Kind.LANE, {"lane": self.epoch, "broken": self.broken})
            self.stopping = True
        elif not self.stopping:
            self.send(Kind.LANE, {"lane": self.epoch})

    def due(self) -> float | None:
        due = None
        if self.lane_stop is not None:
            due = time.monotonic() + LANE_STOP_CHECK  # watch for its task to begin
        if self.lane_kill_at is not None:
            due = self.lane_kill_at if due is None else min(due, self.lane_kill_at)
        return due

    def timers(self, now: float) -> None:
        if self.lane_stop is not None and self.proc is not None:
            gid, begun, sig, grace = self.lane_stop
            if self.page.read()[0] > begun:  # the next task has begun: it, or another if that one ended
                self.stop_lane_task(gid, sig, grace)
                if self.lane_stop is not None:
                    self.lane_stop = None  # it ran and ended before we saw it
        if self.lane_kill_at is not None and now >= self.lane_kill_at and self.proc is not None:
            self.lane_kill_at = None
            self.proc.signal(signal.SIGKILL)
