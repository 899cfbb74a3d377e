"""``Local``: launched workers on this machine, started and stopped by the scaler.

Unlike the executor's own pool (``launcher=None``), whose workers are joined to it
by socket pairs, these dial the executor's broker over TCP with CurveZMQ like any
remote worker: the same path as an SSH host or a batch job, with nothing to install.
It suits autoscaling on one large machine, and trying a launcher's settings before
a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .base import JobStatus, Launcher, WorkerLaunch
from .processes import ProcessJob, ProcessJobs


class Local(Launcher):
    """Start each worker as a process of ours (``corral worker -``), its launch document on its stdin."""

    kind = "local"
    poll_interval = 0.5
    lifeline = True

    def __init__(self, python: str | None = None):
        super().__init__(python)
        self.jobs = ProcessJobs()

    def default_host(self) -> str:
        return "127.0.0.1"

    def launch(self, launch: WorkerLaunch) -> str:
        argv = [self.python, *launch.command[1:]]
        job = ProcessJob(argv, launch.stdin, env={**os.environ, **launch.env}, cwd=launch.cwd)
        return self.jobs.add(str(job.proc.pid), job)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return self.jobs.status(job_ids)

    def terminate(self, job_ids: Sequence[str]) -> None:
        self.jobs.terminate(job_ids)

    def close(self) -> None:
        self.jobs.close()

    def __repr__(self) -> str:
        return "Local()"
