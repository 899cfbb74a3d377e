"""What a launcher is: the small interface between the executor's scaler and a resource manager.

::

    Executor(launcher=Slurm(...))
        scaler (scaling/)  --launch(WorkerLaunch)-->  launcher  --sbatch / ssh / qsub-->  node
             ^                                                                            |
             |          status([job ids]) / terminate([job ids])                          v
        broker (TCP, CurveZMQ)  <-------- the worker dials in with its own key -------  corral worker -

A launcher starts one worker per ``launch``: it runs ``launch.command`` on some
machine with ``launch.stdin`` as that command's standard input, and returns an
opaque job id.  The standard input is the *launch document* (``document.py``):
the broker's address and public key and the worker's own key pair.  It is a secret:
a launcher hands it over through its launch channel (SSH's standard input, or
the job script that sbatch/qsub read from their own standard input), never on a
command line and never in a file that only a shared filesystem would carry to
the node.

The scaler calls a launcher from a thread of its own, never from the broker's
loop, so a launcher may block (run ``sbatch``, wait for ``ssh``).  It calls
``status`` with the ids of the launches it still follows, at most every
``poll_interval`` seconds, and ``terminate`` when a launch is no longer wanted
(it timed out, the executor shuts down).  ``terminate`` must be idempotent:
it may be called again for a job that already ended or was terminated.

A third party adds a resource manager by subclassing ``Launcher`` and naming it
in the ``corral.launchers`` entry point group (see docs/launchers.md).
"""

from __future__ import annotations

import enum
import os
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


class LaunchFailed(Exception):
    """Raised by ``Launcher.launch`` when the resource manager refused the launch (sbatch's error,
    ssh's "connection refused"); its message says what happened, in the resource manager's words.
    The scaler reports it, backs off and tries again."""


class JobState(enum.Enum):
    """Where a launched worker's job is, as its resource manager says."""

    PENDING = "pending"  # queued by the resource manager, not started yet (a launch, not a worker)
    RUNNING = "running"  # the worker's command runs (it may not have reached the broker yet)
    ENDED = "ended"  # the command ended, or the job left the queue
    UNKNOWN = "unknown"  # the resource manager could not be asked this time


@dataclass(frozen=True)
class JobStatus:
    """A launch's state, and what the resource manager says of it (an exit code, a reason)."""

    state: JobState
    detail: str = ""  # e.g. "exit code 1", "cancelled", the last lines the worker printed


@dataclass(frozen=True)
class WorkerLaunch:
    """One worker to start: what to run where the worker should run, and its secret standard input.

    ``command`` is argv for the node (``python -m corral worker - ...``); a launcher
    may replace its first element, the interpreter, with its own ``python``.
    ``stdin`` is the launch document (bytes, ends with a newline): feed it to the
    command's standard input.  ``lifeline``: keep that standard input open for as
    long as the launcher wants the worker (SSH: the connection), the worker leaves
    when it closes.  ``env`` holds extra, non-secret environment variables.
    """

    name: str  # unique within the executor, e.g. "slurm-3": the worker's key name and job name
    command: tuple[str, ...]
    stdin: bytes = field(repr=False)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # the client's working directory, where the node has it
    wall_time: float | None = None  # seconds the job may live, if the launcher asks its resource manager for it

    def shell_command(self, python: str | None = None) -> str:
        """``command`` as one line for a shell (with ``python`` as the interpreter, if given)."""
        argv = list(self.command)
        if python:
            argv[0] = python
        return shlex.join(argv)


class Launcher(ABC):
    """Starts, follows and stops workers through one resource manager (see the module's docstring).

    Subclasses set ``kind`` (a short word for messages and job names) and may change
    ``poll_interval``.  ``python``: the interpreter on the nodes (default: this one's path,
    which suits a node that shares this machine's software).
    """

    kind = "launcher"
    poll_interval = 2.0  # seconds between status() calls the scaler makes at most
    lifeline = False  # the worker's standard input stays open while we want it (``WorkerLaunch``)

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    @abstractmethod
    def launch(self, launch: WorkerLaunch) -> str:
        """Start one worker; return its job id (a string this launcher understands).
        Raise LaunchFailed, with the resource manager's words, if it refused."""

    @abstractmethod
    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The state of each of ``job_ids`` (one call for many: one squeue, not one per job).
        An id the resource manager no longer knows is ENDED."""

    @abstractmethod
    def terminate(self, job_ids: Sequence[str]) -> None:
        """Stop these jobs (scancel, qdel, close the SSH connection).  Idempotent: an id that
        already ended or was terminated is no error."""

    def default_host(self) -> str | None:
        """The host workers should dial when the executor is given neither ``advertise`` nor
        ``interface``: None means this machine's address on its default route (a launcher whose
        workers run here says 127.0.0.1)."""
        return None

    def script(self, launch: WorkerLaunch | None = None) -> str:
        """The job script this launcher would submit for ``launch`` (a placeholder one if None),
        secrets left out; launchers without a script say how they run the command."""
        launch = launch or example_launch()
        return launch.shell_command(self.python) + " < LAUNCH-DOCUMENT\n"

    def close(self) -> None:  # noqa: B027 (optional: most launchers hold nothing)
        """Release what the launcher holds (connections, temporary files).  Called once, at shutdown,
        after ``terminate`` of every job still followed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def example_launch() -> WorkerLaunch:
    """A placeholder WorkerLaunch, for ``Launcher.script()`` with no launch."""
    return WorkerLaunch(name="worker-1", command=(sys.executable, "-m", "corral", "worker", "-"),
                        stdin=b"{}\n", cwd=os.getcwd())
