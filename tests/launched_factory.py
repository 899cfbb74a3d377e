"""Executors whose workers a launcher starts, for CPython's concurrent.futures suite
(``../shared/conformance/run_cpython_suite.py``, factory spec ``launched_factory:slurm_executor``).

Each executor the suite makes launches its own workers as SLURM jobs (one per worker, on demand),
reached over loopback; they leave, and their jobs end, when it shuts down.

A launched worker forwards what its tasks print to the client, which writes it after a prefix
naming the worker and the task (docs/observability.md).  The suite checks that a task's print
reaches the client's standard output as it is, as it does from a ProcessPoolExecutor's workers,
which share their parent's: so here the workers are started with ``--no-forward-output``, which
leaves a task's output on its worker's standard output, its job's output, and each
job's standard output is the client's own (this machine is the cluster's only node: the job opens
/proc/CLIENT-PID/fd/1, appending), and its standard error, where ``corral worker`` reports, is
discarded (the suite also checks that the client prints nothing on its standard error).

With ``CORRAL_TEST_JOBS_FILE`` set, every job id is appended to that file (launched_support.recording),
so that the test that runs the suite cancels and checks exactly its own jobs.
"""

from __future__ import annotations

import dataclasses
import os

import corral
from launched_support import RecordingSlurm

LAUNCH_TIMEOUT = 60.0  # seconds a running job's worker has to reach the broker
IDLE_TIMEOUT = 60.0  # seconds an idle launched worker is kept


class UnforwardedSlurm(RecordingSlurm):
    """RecordingSlurm whose workers leave their tasks' output on their own standard output."""

    def launch(self, launch):
        return super().launch(dataclasses.replace(launch, command=(*launch.command, "--no-forward-output")))


def slurm_executor(max_workers=None, mp_context=None, **kwargs) -> corral.Executor:
    """``corral.Executor`` with the Slurm launcher; the arguments are ProcessPoolExecutor's."""
    launcher = UnforwardedSlurm(output=f"/proc/{os.getpid()}/fd/1",
                              directives=["--error=/dev/null", "--open-mode=append"],
                              ids_file=os.environ.get("CORRAL_TEST_JOBS_FILE"))
    return corral.Executor(max_workers=max_workers, mp_context=mp_context, launcher=launcher,
                           advertise="127.0.0.1", launch_timeout=LAUNCH_TIMEOUT, idle_timeout=IDLE_TIMEOUT,
                           **kwargs)
