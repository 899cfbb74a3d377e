"""Launches that are processes of ours: ``corral worker -`` here (``Local``), or the ``ssh`` that runs it
on another host (``SSH``).

Each job is a child process whose standard input we hold open: we write the
launch document into it, then keep the pipe as the worker's *lifeline*: closing
it tells the worker to leave (it hands back what it holds), and a worker whose
client died sees the pipe close with it.  What the process prints is kept, its
last ``TAIL_LINES`` lines, so that a launch that failed ("Connection refused",
"Permission denied (publickey)", a traceback) says why in its status.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import JobState, JobStatus, Launcher, LaunchFailed, WorkerLaunch

# Seconds a worker has, once its standard input closed, to hand its tasks back and leave
# (it answers the end of its lifeline at once; the rest is a connection's close) before
# its process gets SIGTERM: long enough for a slow link, short enough that a shutdown does
# not seem to hang.
GRACE_S = 5.0
KILL_AFTER_S = 2.0  # seconds between SIGTERM and SIGKILL
TAIL_LINES = 50  # lines of a job's output (its errors, the worker's last words) kept per launch
LINE_MAX = 4096  # bytes of one output line kept (a line with no end is cut here)
FEED_S = 60.0  # seconds, beyond the launcher's own connect timeout, that writing the launch document may take
OUTPUT_WAIT_S = 0.2  # seconds status() waits for the last output of a process that has just exited
ENDED_KEPT = 1000  # ended launches whose status (exit code, last output) is kept, the newest; older ones are forgotten


class Tail:
    """The last ``TAIL_LINES`` lines of a process's output, read by a thread of its own until the end
    (a process whose pipe nobody reads blocks once the pipe is full)."""

    def __init__(self, stream, name: str):
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._partial = b""
        self._stream = stream
        self.thread = threading.Thread(target=self._read, name=f"corral-launch-output-{name}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fd = self._stream.fileno()
        skipping = False  # the rest of a line longer than LINE_MAX, whose start is kept already
        try:
            while chunk := os.read(fd, 65536):
                *whole, self._partial = (self._partial + chunk).split(b"\n")
                for line in whole:
                    if not skipping:
                        self._add(line)
                    skipping = False
                if len(self._partial) > LINE_MAX:
                    if not skipping:
                        self._add(self._partial)
                    skipping, self._partial = True, b""
        except OSError:
            pass
        finally:
            if self._partial and not skipping:
                self._add(self._partial)
            self._partial = b""
            self._stream.close()

    def _add(self, line: bytes) -> None:
        with self._lock:
            self.lines.append(line[:LINE_MAX].decode(errors="replace").rstrip("\r"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


@dataclass
class Job:
    """One launch's process: where it runs, its output, and how it was stopped."""

    host: str
    proc: subprocess.Popen
    tail: Tail
    terminated: bool = False  # terminate() was called for it
    signalled: list[str] = field(default_factory=list)  # the signals terminate() had to send

    def running(self) -> bool:
        return self.proc.poll() is None


class ProcessLauncher(Launcher):
    """A launcher whose jobs are child processes fed the launch document on a kept-open standard input.

    A subclass says what to run (``argv``) and where (``pick``); this class starts it, feeds it,
    follows it and stops it.  Job ids are ``HOST/PID`` (``HOST/PID~N`` if an earlier launch's
    process had the same pid).
    """

    lifeline = True  # the documents of these workers say so: they leave when their standard input closes
    connect_timeout = 10  # seconds a subclass's process may take before it reads its standard input

    def __init__(self, python: str | None = None):
        super().__init__(python)
        self._jobs: dict[str, Job] = {}  # in launch order
        self._issued: set[str] = set()  # every job id given out, forgotten ones included: none is given twice
        self._lock = threading.Lock()  # the scaler's thread and close() may meet

    def argv(self, host: str, launch: WorkerLaunch) -> tuple[list[str], dict | None, str | None]:
        """(argv, environment or None for ours, working directory or None) of the process for ``launch``."""
        raise NotImplementedError

    def pick(self, running: collections.Counter) -> str:
        """The host the next launch goes to, given how many workers each one runs; LaunchFailed if none."""
        raise NotImplementedError

    def cannot_run(self, exc: OSError) -> str:
        """What to say when the process cannot be started at all."""
        return f"cannot run the worker's command: {exc}"

    def ended_words(self, code: int) -> str:
        """How a process that exited by itself with ``code`` ended, in words."""
        return f"exit code {code}"

    # -- launch, status, terminate ----------------------------------------------------

    def running(self) -> collections.Counter:
        """How many of our launches run on each host."""
        return collections.Counter(job.host for job in self._jobs.values() if job.running())

    def launch(self, launch: WorkerLaunch) -> str:
        with self._lock:
            host = self.pick(self.running())
            argv, env, cwd = self.argv(host, launch)
            try:
                # Its own session: a Ctrl-C at the user's terminal reaches Python (which shuts the
                # executor down, ending the workers in order), not every worker at once.
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise LaunchFailed(self.cannot_run(exc)) from None
            job_id = f"{host}/{proc.pid}"
            serial = 1
            while job_id in self._issued:  # the pid of an earlier launch's process, used again
                serial += 1
                job_id = f"{host}/{proc.pid}~{serial}"
            self._issued.add(job_id)
            self._jobs[job_id] = Job(host, proc, Tail(proc.stdout, job_id))
            self._forget_old()
        if not self._feed(proc, launch.stdin):
            self._stop([proc])
            with self._lock:
                self._jobs.pop(job_id, None)
            raise LaunchFailed(f"the worker's command for {host} did not take the launch document within "
                               f"{self.connect_timeout + FEED_S:g} s; it was stopped")
        return job_id

    def _forget_old(self) -> None:
        """Forget the oldest ended launches beyond ``ENDED_KEPT`` (each holds up to TAIL_LINES lines)."""
        ended = [job_id for job_id, job in self._jobs.items() if not job.running()]
        for job_id in ended[:max(0, len(ended) - ENDED_KEPT)]:
            del self._jobs[job_id]

    def _feed(self, proc: subprocess.Popen, data: bytes) -> bool:
        """Write the document to the process's standard input, and leave it open; False if that took too
        long.  Bounded: a host that takes the connection but never reads would otherwise hold launch()
        for ever once the pipe is full.  If the process ends first (refused, unreachable), its status
        says why."""
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        deadline = time.monotonic() + self.connect_timeout + FEED_S
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                break
            _, ready, _ = select.select([], [fd], [], min(left, 0.5))
            if not ready:
                continue
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return True  # it ended: status() tells why
        return not view or proc.poll() is not None

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self._lock:
            return {job_id: self._status(self._jobs.get(job_id)) for job_id in job_ids}

    def _status(self, job: Job | None) -> JobStatus:
        if job is None:
            return JobStatus(JobState.ENDED, "not a job of this launcher (or forgotten)")
        code = job.proc.poll()
        if code is None:
            return JobStatus(JobState.RUNNING)
        job.tail.thread.join(OUTPUT_WAIT_S)  # its last words, once the pipe is read to its end
        if job.signalled:
            said = (f"ended by terminate(): the worker was still there {GRACE_S:g} s after its standard "
                    f"input closed, so its process got {' then '.join(job.signalled)} (exit code {code})")
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            said = f"its process was killed by {name}"
        else:
            said = self.ended_words(code)
        if job.terminated and not job.signalled:
            said += " after terminate()"
        output = job.tail.text()
        return JobStatus(JobState.ENDED, f"{said}; its last output:\n{output}" if output else said)

    def terminate(self, job_ids: Sequence[str]) -> None:
        """Close each worker's standard input (it hands back its tasks and leaves), then, after ``GRACE_S``,
        SIGTERM and SIGKILL the processes still there; reaped.  Ids unknown or ended: nothing to do."""
        with self._lock:
            jobs = [self._jobs[job_id] for job_id in job_ids if job_id in self._jobs]
        for job in jobs:
            job.terminated = True
        self._stop([job.proc for job in jobs], jobs)

    def _stop(self, procs: list[subprocess.Popen], jobs: Sequence[Job] = ()) -> None:
        for proc in procs:
            try:
                proc.stdin.close()  # the lifeline's end
            except OSError:
                pass  # its reader has gone (BrokenPipeError on the flush): it has ended
        deadline = time.monotonic() + GRACE_S
        for how, wait in ((None, GRACE_S), (signal.SIGTERM, KILL_AFTER_S), (signal.SIGKILL, KILL_AFTER_S)):
            alive = [proc for proc in procs if proc.poll() is None]
            if not alive:
                break
            if how is not None:
                for proc in alive:
                    proc.send_signal(how)
                for job in jobs:
                    if job.proc in alive:
                        job.signalled.append(how.name)
                deadline = time.monotonic() + wait
            for proc in alive:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for job in jobs:
            job.tail.thread.join(1.0)

    def close(self) -> None:
        """Terminate every worker still running and reap its process (the launcher may be used again)."""
        with self._lock:
            ids = [job_id for job_id, job in self._jobs.items() if job.running()]
        self.terminate(ids)
