"""A worker's lifetime: when it stops taking tasks, and how it leaves for good (``Lifetime``,
a part of ``Supervisor``).

A worker of an executor's own pool lives as long as its client wants it.  One that
``corral worker`` started, by hand or through a launcher on a batch node, has a
lifetime of its own, which ends when::

    its job's walltime is near       (--wall-time, or the job's own limit)     "wall_time"
    it has run --tasks-max tasks                                               "tasks_max"
    it had nothing to do for --idle-timeout seconds                            "idle"
    the broker said nothing for --broker-timeout seconds                       "broker_timeout"
    it is sent SIGTERM (a batch system, scancel, corral worker stopping)       "terminated"
    its launcher's lifeline closed (corral worker signals SIGUSR1)             "lifeline"
    the broker sends SHUTDOWN {"leave": true}                                  "shutdown", or its reason

Then it *drains* rather than dies.  It tells the broker LEAVING, which sends it
nothing more and queues the tasks it held but had not begun again, at the front.
Its running task may finish while there is time; when there is none left, it is
cut off, and BYE names it ``interrupted``: the broker runs it again elsewhere
without counting an attempt, since the task did not fail, the worker's time ran
out.  The worker exits with LEAVE_EXIT, which tells ``corral worker`` not to
replace it.

A walltime is a hard end: the batch system kills the job then, whatever runs.
So the worker stops taking tasks ``drain_margin`` seconds before it, and cuts off
what still runs CUT_BEFORE_END seconds before it, while it can still say so.
"""

from __future__ import annotations

import signal
import time

from ..wire import protocol
from ..wire.protocol import Kind

CUT_BEFORE_END = 1.0  # seconds before a hard end at which a running task is cut off (BYE must still leave)
# A batch system that ends a job (scancel, a SLURM walltime) sends SIGTERM to each of its processes:
# ``corral worker``, which passes it on to its worker processes, and those processes themselves.  A
# worker process thus gets it twice, a moment apart: the second one within this many seconds of the
# first is the same signal, not a second one (which would mean "leave at once").
SAME_SIGNAL_S = 1.0
# Seconds a worker whose task process was killed by a SIGTERM it did not send waits for its own:
# both were sent to the whole job, one process after another.
JOB_SIGNAL_SPREAD = 0.5
RECONNECT_SLICE = 0.5  # seconds a reconnecting worker waits at a time, so that a signal or a timeout is seen
# The signals a standalone worker drains on, and the reason each gives.
DRAIN_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGUSR1: "lifeline"}


def drain_margin(lifetime: float) -> float:
    """Seconds before a hard end at which a worker stops taking tasks, for a life of ``lifetime`` s.

    A tenth of its life, so that the task it runs then likely ends before the cut;
    at least 2 s, for LEAVING to reach the broker and the held tasks to be placed
    elsewhere; at most 120 s, so that a day-long job does not idle for hours: a task
    longer than the margin is cut off and runs again elsewhere, at no attempt's cost.
    """
    return min(max(0.1 * lifetime, 2.0), 120.0)


class Lifetime:
    """The worker's lifetime: its methods read and change the Supervisor's ``config``, ``stopping``
    and tasks (through the mode's ``give_back``, ``running``), and send LEAVING through it."""

    def start_lifetime(self, now: float) -> None:
        """Take the lifetime ``config`` gives (called once, as the worker starts)."""
        config = self.config
        self.standalone = config.standalone
        self.tasks_done = 0  # tasks that ended here (for tasks_max)
        self.heard = now  # when the broker last said anything, or we started (for broker_timeout)
        self.leaving: str | None = None  # why we leave for good, once we drain
        self.cut_at: float | None = None  # when what still runs is cut off
        self.signalled: str | None = None  # set by a signal handler or SHUTDOWN, acted on by the loop
        self.drain_signals = 0  # SIGTERMs (or SIGUSR1s) received
        self.drain_signal_at = 0.0  # monotonic: when the first one came
        self.got_sigterm = False  # one of them was SIGTERM (a batch system's, corral worker's)
        self.cut_off: list[int] = []  # tasks whose process the signal that ends our job killed
        self.end = self.drain_at = None  # monotonic: the hard end, and when to stop taking tasks
        if config.ends_at is not None:
            left = config.ends_at - time.time()
            self.end = now + left
            self.drain_at = self.end - drain_margin(max(left, 0.0))

    def lifetime_hello(self) -> dict:
        """What HELLO says of our lifetime: seconds to our hard end (the scaler replaces us ahead)."""
        if self.end is None:
            return {}
        return {"ends_in": round(max(0.0, self.end - time.monotonic()), 3)}

    def room_left(self, holding: int = 0) -> int | None:
        """How many more tasks we may take, besides ``holding`` (None: no limit)."""
        if self.leaving:
            return 0
        if self.config.tasks_max is None:
            return None
        return max(0, self.config.tasks_max - self.tasks_done - holding)

    def lifetime_due(self) -> float | None:
        """When our lifetime next needs a look (to drain, to cut off, the broker's timeout)."""
        times = [self.cut_at if self.leaving else self.drain_at]
        if self.config.broker_timeout is not None:
            times.append(self.heard + self.config.broker_timeout)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def over(self, now: float) -> str | None:
        """Why our lifetime is over now, if it is."""
        if self.signalled:
            return self.signalled
        tasks_max = self.config.tasks_max
        if tasks_max is not None and self.tasks_done >= tasks_max:
            return "tasks_max"
        if self.drain_at is not None and now >= self.drain_at:
            return "wall_time"
        if self.config.broker_timeout is not None and now - self.heard > self.config.broker_timeout:
            return "broker_timeout"
        return None

    def check_lifetime(self, now: float) -> None:
        """Start draining when our lifetime is over; stop once drained, or cut off what runs when
        time is up."""
        if self.leaving is None:
            why = self.over(now)
            if why is not None:
                self.begin_leaving(why, now)
        if self.leaving is None:
            return
        if not self.running() or (self.cut_at is not None and now >= self.cut_at):
            self.stopping = True  # run() sends BYE: what still runs is "interrupted"

    def begin_leaving(self, why: str, now: float) -> None:
        """Drain: take no more tasks, give back those not begun (LEAVING), and set when to cut off."""
        self.leaving = why
        if why == "broker_timeout":
            grace = 0.0  # no broker to send a result to
        elif why in ("wall_time", "tasks_max", "idle"):
            grace = None  # until the hard end, if any
        else:
            grace = self.config.term_grace
        cuts = [t for t in (now + grace if grace is not None else None,
                            self.end - CUT_BEFORE_END if self.end is not None else None) if t is not None]
        self.cut_at = min(cuts) if cuts else None
        ends = f"; what runs is cut off in {max(0.0, self.cut_at - now):.1f} s" if self.cut_at is not None else ""
        self.say(f"leaving ({words(why, self.config)}){ends if self.running() else ''}")
        if why == "broker_timeout" and not self.welcomed and self.fd is None:
            from ..addresses import why_unreachable

            why = f"never reached the broker at {self.address}: {why_unreachable(self.address)}"
            self.warn(why)
            from ..launchers.joblimits import tell_job

            tell_job(why)
        self.send(Kind.LEAVING, {"reason": why, "requeue": self.give_back()})

    def farewell(self) -> dict:
        """BYE's body beyond ``requeue``: why we leave for good, and what we cut off."""
        if self.leaving is None:
            return {}
        return {"reason": self.leaving, "interrupted": [*self.cut_off, *self.running()]}

    def exit_code(self, leave_exit: int) -> int:
        """Our exit code once the loop is over: ``leave_exit`` when a standalone worker's life ended."""
        return leave_exit if self.leaving is not None and self.standalone else 0

    def on_drain_signal(self, signum, frame) -> None:
        """SIGTERM (SIGUSR1: the lifeline closed) to a standalone worker: drain.  One while draining
        already (a wall time's) gives what runs ``term_grace`` seconds at most; a second one leaves
        at once, as an executor's worker does on the first, unless it comes within SAME_SIGNAL_S of
        the first: that is the same signal to the whole job, passed on by ``corral worker`` too."""
        now = time.monotonic()
        if signum == signal.SIGTERM:
            self.got_sigterm = True
        if self.drain_signals:
            if now - self.drain_signal_at < SAME_SIGNAL_S:
                return
            self.on_sigterm(signum, frame)
        self.drain_signals += 1
        self.drain_signal_at = now
        if self.leaving is None:
            self.signalled = DRAIN_SIGNALS.get(signum, "terminated")
        else:
            grace_end = time.monotonic() + self.config.term_grace
            self.cut_at = grace_end if self.cut_at is None else min(self.cut_at, grace_end)

    def ended_with_the_job(self, code: int | None) -> bool:
        """Did a task process that exited with ``code``, not stopped by us, die of the SIGTERM that
        ends our whole job (scancel, a walltime: the batch system signals every process of it)?
        Then its task did not fail: it was cut off, and goes back at no attempt's cost.  Our own
        SIGTERM may come a moment after the task process's: waited for, JOB_SIGNAL_SPREAD s at most.
        (SIGKILL: a fresh task process whose template the same SIGTERM ended.)"""
        if not self.standalone or code not in (-signal.SIGTERM, -signal.SIGKILL):
            return False
        deadline = time.monotonic() + JOB_SIGNAL_SPREAD
        while not self.got_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)  # our signal handler runs between these
        return self.got_sigterm

    def shutdown_to_leave(self, body: dict) -> None:
        """SHUTDOWN {"leave": true}: the broker wants us gone for good (scaled down), after a drain."""
        self.signalled = protocol.reason(body, "shutdown")

    def answered_within(self, seconds: float) -> bool:
        """Has the broker said something within ``seconds``?  Waited for in slices, so that a
        lifetime's end (a signal, the broker's timeout) is seen meanwhile: then we stop."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            self.check_lifetime(now)
            if self.stopping or now >= deadline:
                return False
            if self.link.sock.poll(min(RECONNECT_SLICE, deadline - now) * 1000):
                return True

    def give_back(self) -> list[int]:
        """Take out the tasks we hold that have not reached a task process; their ids (a mode's)."""
        return []

    def running(self) -> list[int]:
        """The tasks a task process has begun and not answered (a mode's)."""
        return []


def words(reason: str, config) -> str:
    """A leaving reason in words, for the log and ``corral worker``'s last line (``config``: the
    worker's WorkerConfig, for the numbers)."""
    if reason == "tasks_max":
        return f"{config.tasks_max} task(s) done"
    if reason == "broker_timeout":
        return f"no word from the broker for {config.broker_timeout:g} s"
    fixed = {"wall_time": "wall time reached", "idle": "idle timeout", "terminated": "terminated",
             "lifeline": "the launcher's lifeline closed"}
    return fixed.get(reason, f"asked by the broker: {reason}")
