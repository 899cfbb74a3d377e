"""``Local``: launched workers on this machine, started and stopped by the scaler.

Unlike the executor's own pool (``launcher=None``), whose workers are joined to it
by socket pairs, these dial the executor's broker over TCP with CurveZMQ like any
remote worker: the same path as an SSH host or a batch job, with nothing to install.
It suits autoscaling on one large machine, and trying a launcher's settings before
a cluster.  Each worker is a ``corral worker -`` process of the client, its launch
document on its standard input (``processes.py``).
"""

from __future__ import annotations

import collections
import os

from .base import WorkerLaunch
from .processes import ProcessLauncher

HOST = "localhost"  # the host part of a Local job id ("localhost/PID")


class Local(ProcessLauncher):
    """Start each worker as a process of ours on this machine; its job id is ``localhost/PID``."""

    kind = "local"
    poll_interval = 0.5

    def default_host(self) -> str:
        return "127.0.0.1"

    def pick(self, running: collections.Counter) -> str:
        return HOST

    def argv(self, host: str, launch: WorkerLaunch) -> tuple[list[str], dict | None, str | None]:
        cwd = launch.cwd if launch.cwd and os.path.isdir(launch.cwd) else None
        return [self.python, *launch.command[1:]], {**os.environ, **launch.env}, cwd

    def cannot_run(self, exc: OSError) -> str:
        return f"could not run {self.python}: {exc.strerror or exc}"

    def __repr__(self) -> str:
        return "Local()"
