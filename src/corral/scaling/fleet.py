"""The executor's launched workers: how many there should be, and the launches that make them so.

::

    broker loop (every TICK s)                  launcher thread (``LauncherThread``)
      Fleet.tick(broker)                          one call at a time, may block:
        results <------------------------------   launch() -> job id | LaunchFailed
        match HELLOs to launches (key name)        status([ids]) every poll_interval
        timeouts, failures -> Backoff, LaunchError  terminate([ids])
        policy: launch / retire  -------------->
        retire: SHUTDOWN {"leave": true} to an idle worker

Every launch gets a CurveZMQ key pair of its own, named after it (``local-3``,
``slurm-12``), on the broker's worker allow-list; the worker proves it is that
launch by the key it connects with (its ZAP User-Id), so a HELLO is matched to its
launch without trusting anything the worker says.  The key is revoked when the
launch ends, so a late job of a finished launch cannot join.

A launch is *in flight* from its submission until its worker says HELLO; its
clock (``launch_timeout``) stops while the resource manager says the job is
pending in its queue, so a busy cluster's queue is waited on, not retried.  A
launch that fails (refused, ended before its worker connected, timed out) is
reported, its job terminated, and launching backs off; after
``max_launch_failures`` in a row with no worker connected, the queued tasks fail
with LaunchError instead of waiting forever.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..launchers import document
from ..launchers.base import JobState, JobStatus, Launcher, LaunchFailed, WorkerLaunch
from ..logs import logger
from ..wire import protocol
from . import policy

if TYPE_CHECKING:
    from ..broker.queue import TaskQueue
    from ..broker.records import Task, WorkerState
    from ..security.keys import KeyDir, MemoryKeys

TICK = 0.2  # seconds between the fleet's looks at the broker
MAX_LAUNCH_FAILURES = 3  # failures in a row, with no worker connected, before queued tasks fail
CLOSE_TIMEOUT = 60.0  # seconds shutdown waits for the launcher to terminate every job
KEPT_ERRORS = 20  # launch failures the report keeps (the most recent)
_log = logger("scaling")


class Broker(Protocol):
    """What the fleet uses of its broker (``broker/broker.py``): its workers and tasks, and two acts."""

    workers: dict[bytes, WorkerState]
    tasks: dict[int, Task]
    waiting_tasks: int  # of those, the tasks waiting for others (not queued yet)
    queue: TaskQueue

    def dismiss(self, w: WorkerState, reason: str) -> None: ...

    def fail(self, task: Task, error: str, message: str) -> None: ...


@dataclass
class Launch:
    """One launch, from its submission to its worker's departure."""

    name: str
    since: float  # its launch_timeout clock: submitted, or last seen pending in a queue
    job: str | None = None  # the launcher's job id, once launch() returned
    state: str = "submitting"  # submitting, pending, running, connected
    ident: bytes | None = None  # its worker's broker identity, once it said HELLO
    submitted: float = 0.0
    retiring: bool = False
    detail: str = ""  # the resource manager's last word on it


@dataclass
class Counts:
    """What the fleet has done, for ``summary()``."""

    launched: int = 0
    connected: int = 0
    failed: int = 0
    retired: int = 0
    errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=KEPT_ERRORS))


class LauncherThread:
    """Runs the launcher's calls one at a time, off the broker's loop; their outcomes wait in ``done``."""

    def __init__(self, launcher: Launcher):
        self.launcher = launcher
        self.todo: queue.Queue = queue.Queue()
        self.done: collections.deque = collections.deque()
        self.thread = threading.Thread(target=self._run, name="corral-launcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            op = self.todo.get()
            if op is None:
                return
            what, arg = op
            try:
                if what == "launch":
                    self.done.append(("launched", arg.name, self.launcher.launch(arg)))
                elif what == "status":
                    self.done.append(("status", None, self.launcher.status(arg)))
                else:
                    self.launcher.terminate(arg)
            except LaunchFailed as exc:
                self.done.append(("failed", arg.name, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a launcher's bug must not stop the executor
                message = f"{type(self.launcher).__name__}.{what} raised {type(exc).__name__}: {exc}"
                self.done.append(("failed", arg.name, message) if what == "launch" else ("error", None, message))

    def put(self, what: str, arg: Any) -> None:
        self.todo.put((what, arg))

    def stop(self, timeout: float) -> bool:
        """Finish what was asked, then stop; False if that took longer than ``timeout``."""
        self.todo.put(None)
        self.thread.join(timeout)
        return not self.thread.is_alive()


class Fleet:
    """The launched workers of one executor's broker (see the module's docstring)."""

    def __init__(self, launcher: Launcher, keys: KeyDir | MemoryKeys, address: str, command: tuple[str, ...], *,
                 min_workers: int, max_workers: int, idle_timeout: float, launch_timeout: float,
                 sys_path: list[str], initializer: bytes | None, env: dict[str, str] | None = None,
                 cwd: str | None = None, wall_time: float | None = None,
                 max_launch_failures: int = MAX_LAUNCH_FAILURES):
        self.launcher = launcher
        self.keys = keys
        self.address = address
        self.broker_key = keys.broker_keys()[0]
        self.command = command
        self.min_workers, self.max_workers = min_workers, max_workers
        self.idle_timeout = idle_timeout
        self.launch_timeout = launch_timeout
        self.setup = (list(sys_path), initializer)
        self.env, self.cwd, self.wall_time = dict(env or {}), cwd, wall_time
        self.max_launch_failures = max_launch_failures
        self.numbers = itertools.count(1)
        self.launches: dict[str, Launch] = {}  # in flight or connected, by name
        self.issued: set[str] = set()  # every launch's name (its key's): a key admits one worker, once
        self.by_ident: dict[bytes, Launch] = {}
        self.idle_since: dict[bytes, float] = {}
        self.connect_delays: collections.deque = collections.deque(maxlen=8)
        self.backoff = policy.Backoff()
        self.counts = Counts()
        self.thread = LauncherThread(launcher)
        self.last_tick = 0.0
        self.last_poll = 0.0

    # -- the broker's loop calls these ---------------------------------------------

    def tick(self, broker: Broker, now: float) -> None:
        """Take in what the launcher did, follow the workers, then launch or retire."""
        if now - self.last_tick < TICK:
            return
        self.last_tick = now
        self._outcomes(now)
        self._follow(broker, now)
        self._poll(now)
        demand = len(broker.tasks) - broker.waiting_tasks  # a task waiting for others cannot run yet
        want = policy.wanted(demand, self.min_workers, self.max_workers)
        self._launch(want, now)
        self._retire(broker, want, now)
        if (self.backoff.failures >= self.max_launch_failures and not self.by_ident and broker.queue
                and not self._in_flight()):
            self._give_up(broker)

    def admit(self, user: str | None) -> str | None:
        """Why a new worker HELLO under the key ``user`` (its ZAP User-Id) must be refused, or None.

        A launch's key admits one worker, once: the worker it was made for.  A second fresh HELLO
        under it (a worker resuming its session does not say HELLO afresh) is someone else who read
        the key (Grid Engine keeps job scripts world-readable on the node while they run): refused,
        and reported."""
        name = launch_name(user)
        if name is None or name not in self.issued:
            return None
        la = self.launches.get(name)
        if la is not None and la.ident is None:
            return None
        self._note(f"refused a worker that said HELLO afresh with the key of launch {name}, which its worker has "
                   "used already (a launch's key admits one worker, once): if that was not its worker coming back "
                   "after it was dropped, someone has read the key (a job script readable on its node?)")
        return "this launch's key has been used by its worker already"

    def joined(self, w: WorkerState, now: float) -> None:
        """A worker said HELLO: if it holds a launch's key, that launch is done launching."""
        la = self.launches.get(launch_name(w.user) or "")
        if la is None or la.ident is not None:
            return
        la.ident, la.state = w.ident, "connected"
        self.by_ident[w.ident] = la
        self.counts.connected += 1
        self.connect_delays.append(now - la.submitted)
        self.backoff.succeeded()

    def expected(self) -> int:
        """Workers connected or on their way (the scheduler's fair share counts them all)."""
        return len(self.launches)

    def report(self) -> dict[str, Any]:
        """The fleet's figures, for ``summary()``."""
        flight = self._in_flight()
        return {
            "launcher": repr(self.launcher),
            "workers": len(self.by_ident),
            "in_flight": len(flight),
            "pending": sum(1 for la in flight if la.state == "pending"),
            "launched": self.counts.launched,
            "connected": self.counts.connected,
            "launch_failures": self.counts.failed,
            "retired": self.counts.retired,
            "launches_per_slot": round(self.counts.launched / self.max_workers, 3),
            "errors": list(self.counts.errors),
        }

    def close(self) -> None:
        """Terminate every job still followed, stop the launcher thread, release the launcher."""
        jobs = [la.job for la in self.launches.values() if la.job is not None]
        if jobs:
            self.thread.put("terminate", jobs)
        if not self.thread.stop(CLOSE_TIMEOUT):
            _log.warning(f"the launcher did not finish within {CLOSE_TIMEOUT:g} s at shutdown; jobs may be left: "
                         f"{', '.join(jobs)}")
            return
        # A launch submitted while we closed has a job we have not heard of yet.
        late = [job for what, _, job in self.thread.done if what == "launched"]
        try:
            if late:
                self.launcher.terminate(late)
            self.launcher.close()
        except Exception as exc:  # noqa: BLE001
            _log.warning(f"the launcher failed to close: {type(exc).__name__}: {exc}")

    # -- the parts of a tick ---------------------------------------------------------

    def _in_flight(self) -> list[Launch]:
        return [la for la in self.launches.values() if la.ident is None]

    def _outcomes(self, now: float) -> None:
        """What the launcher thread finished since the last tick."""
        while self.thread.done:
            what, name, value = self.thread.done.popleft()
            la = self.launches.get(name) if name is not None else None
            if what == "launched" and la is not None:
                la.job, la.state = value, "running" if la.state == "submitting" else la.state
            elif what == "launched":  # its launch was given up meanwhile
                self.thread.put("terminate", [value])
            elif what == "failed" and la is not None:
                self._failed(la, f"the launch of {name} failed: {value}", now)
            elif what == "status":
                self._statuses(value, now)
            elif what == "error":
                self._note(value)

    def _statuses(self, found: dict[str, JobStatus], now: float) -> None:
        by_job = {la.job: la for la in self._in_flight() if la.job is not None}
        for job, st in found.items():
            la = by_job.get(job)
            if la is None or la.ident is not None:
                continue
            la.detail = st.detail
            if st.state == JobState.PENDING:
                la.state, la.since = "pending", now  # the clock runs only once the job runs
            elif st.state == JobState.RUNNING:
                if la.state == "pending":  # its clock starts now, not at the poll that last saw it wait
                    la.since = now
                la.state = "running"
            elif st.state == JobState.ENDED:
                self._failed(la, f"{self._job_words(la)} ended before its worker reached the broker at "
                                 f"{self.address}{': ' + st.detail if st.detail else ''}", now)

    def _follow(self, broker: Broker, now: float) -> None:
        """Forget launches whose worker left; note which are idle; time out launches still on their way."""
        for ident, la in list(self.by_ident.items()):
            w = broker.workers.get(ident)
            if w is None:  # it left, or was lost: its job ends with it (terminate is idempotent)
                self._end(la)
            elif w.leaving or (w.ends_at is not None and w.ends_at - now < policy.lead_time(self.connect_delays)):
                la.retiring = True  # it leaves soon: its replacement is launched now
            elif w.assigned:
                self.idle_since.pop(ident, None)
            else:
                self.idle_since.setdefault(ident, now)
        for la in self._in_flight():
            if la.state != "pending" and now - la.since > self.launch_timeout:
                self._failed(la, f"{self._job_words(la)} did not reach the broker at {self.address} within "
                                 f"{self.launch_timeout:g} s (launch_timeout)"
                                 f"{'; the resource manager says: ' + la.detail if la.detail else ''}", now)

    def _poll(self, now: float) -> None:
        """Ask the launcher about the jobs still on their way, every ``poll_interval``."""
        if now - self.last_poll < self.launcher.poll_interval:
            return
        jobs = [la.job for la in self._in_flight() if la.job is not None]
        if jobs:
            self.last_poll = now
            self.thread.put("status", jobs)

    def _launch(self, want: int, now: float) -> None:
        if not self.backoff.ready(now):
            return
        supply = len(self._in_flight()) + sum(1 for la in self.by_ident.values() if not la.retiring)
        for _ in range(policy.to_launch(want, supply, len(self.launches), self.max_workers)):
            self._start_one(now)

    def _start_one(self, now: float) -> None:
        name = f"{self.launcher.kind}-{next(self.numbers)}"
        public, secret = self.keys.add("worker", name)
        stdin = document.make(self.address, self.broker_key, name, public, secret, sys_path=self.setup[0],
                              initializer=self.setup[1], lifeline=self.launcher.lifeline)
        self.launches[name] = Launch(name, since=now, submitted=now)
        self.issued.add(name)
        self.counts.launched += 1
        self.thread.put("launch", WorkerLaunch(name=name, command=self.command, stdin=stdin, env=self.env,
                                               cwd=self.cwd, wall_time=self.wall_time))

    def _retire(self, broker: Broker, want: int, now: float) -> None:
        """Tell idle workers beyond what is wanted to leave, each after idle_timeout of idleness."""
        active = [la for la in self.by_ident.values() if not la.retiring]
        idle = [(ident, now - since) for ident, since in self.idle_since.items()
                if not self.by_ident[ident].retiring]
        for ident in policy.to_retire(idle, len(active), want, self.idle_timeout):
            w = broker.workers.get(ident)
            if w is not None:
                self.by_ident[ident].retiring = True
                self.counts.retired += 1
                broker.dismiss(w, "idle")

    def _give_up(self, broker: Broker) -> None:
        """No worker could start: the queued tasks fail with LaunchError, saying why."""
        last = self.counts.errors[-1] if self.counts.errors else "no reason given"
        message = (f"no worker could be started: {self.backoff.failures} launches in a row failed "
                   f"({type(self.launcher).__name__}); the last: {last}")
        for gid in list(broker.queue):
            task = broker.tasks.get(gid)
            if task is not None and task.worker is None:
                broker.fail(task, protocol.ERR_LAUNCH, message)
        broker.queue.clear()

    # -- bookkeeping -----------------------------------------------------------------

    def _failed(self, la: Launch, message: str, now: float) -> None:
        self.counts.failed += 1
        delay = self.backoff.failed(now)
        self._note(f"{message} (next launch in {delay:g} s)")
        self._end(la)

    def _note(self, message: str) -> None:
        self.counts.errors.append(message)
        _log.warning(message)

    def _end(self, la: Launch) -> None:
        """A launch is over: stop its job if it has one, revoke its key, forget it."""
        self.launches.pop(la.name, None)
        if la.ident is not None:
            self.by_ident.pop(la.ident, None)
            self.idle_since.pop(la.ident, None)
        if la.job is not None:
            self.thread.put("terminate", [la.job])
        try:
            self.keys.revoke(la.name)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _job_words(self, la: Launch) -> str:
        job = f" (job {la.job})" if la.job else ""
        return f"the worker launched as {la.name}{job}"


def launch_name(user: str | None) -> str | None:
    """The key name of a worker's ZAP User-Id (``worker:NAME:KEY``), or None."""
    if not user or not user.startswith("worker:"):
        return None
    return user.split(":")[1]
