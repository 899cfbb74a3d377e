"""Launches that are processes of ours: ``corral worker -`` here, or the ``ssh`` that runs it there.

Each job is a child process whose standard input we hold open: we write the
launch document, then keep the pipe as the worker's *lifeline*, so closing it
tells the worker to leave (it hands back what it holds), and a worker whose
client died leaves when the pipe breaks.  What the process prints is kept, the
last ``TAIL_LINES`` lines of it, so that a launch that failed ("Connection
refused", "Permission denied (publickey)", a traceback) says why in its status.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

from .base import JobState, JobStatus, LaunchFailed

TAIL_LINES = 40  # lines of a job's output kept for its status
LEAVE_GRACE = 5.0  # seconds a worker has to leave once its lifeline is closed, before SIGTERM
KILL_GRACE = 3.0  # seconds after SIGTERM before SIGKILL


class ProcessJob:
    """One child process: its lifeline (stdin), and the tail of what it printed."""

    def __init__(self, argv: list[str], stdin: bytes, env: dict[str, str] | None = None, cwd: str | None = None):
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        except OSError as exc:
            raise LaunchFailed(f"could not run {argv[0]}: {exc.strerror or exc}") from None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.reader = threading.Thread(target=self._read, name=f"corral-launch-{self.proc.pid}", daemon=True)
        self.reader.start()
        self.closing_at: float | None = None
        try:
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()
        except OSError:  # it died at once: its status says why
            self.close_lifeline()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.tail.append(raw.decode(errors="replace").rstrip())
        self.proc.stdout.close()

    def status(self) -> JobStatus:
        code = self.proc.poll()
        if code is None:
            return JobStatus(JobState.RUNNING)
        self.reader.join(1.0)
        how = f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        said = "; ".join(line for line in self.tail if line)
        return JobStatus(JobState.ENDED, f"{how}: {said}" if said else how)

    def close_lifeline(self) -> None:
        """Close the worker's standard input: it leaves."""
        if self.closing_at is None:
            self.closing_at = time.monotonic()
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def finish(self, deadline: float) -> None:
        """Wait for the process until ``deadline``, then SIGTERM (its process group), then SIGKILL; reap it."""
        for sig, until in ((None, deadline), (signal.SIGTERM, deadline + KILL_GRACE), (signal.SIGKILL, None)):
            if sig is not None:
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                self.proc.wait(None if until is None else max(0.0, until - time.monotonic()))
                break
            except subprocess.TimeoutExpired:
                continue
        self.reader.join(1.0)


class ProcessJobs:
    """The process jobs of one launcher, by job id; ``terminate`` is idempotent."""

    def __init__(self) -> None:
        self.jobs: dict[str, ProcessJob] = {}

    def add(self, job_id: str, job: ProcessJob) -> str:
        self.jobs[job_id] = job
        return job_id

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {i: self.jobs[i].status() if i in self.jobs else JobStatus(JobState.ENDED, "not a job of ours")
                for i in job_ids}

    def running(self) -> list[str]:
        return [i for i, job in self.jobs.items() if job.proc.poll() is None]

    def terminate(self, job_ids: Sequence[str], grace: float = LEAVE_GRACE) -> None:
        """Close each one's lifeline, give them ``grace`` seconds together to leave, then signal; reap."""
        jobs = [self.jobs[i] for i in job_ids if i in self.jobs]
        for job in jobs:
            job.close_lifeline()
        deadline = time.monotonic() + grace
        for job in jobs:
            job.finish(deadline)

    def close(self) -> None:
        self.terminate(list(self.jobs))
