"""Workers as (Son of) Grid Engine batch jobs: qsub to start one, qstat to follow them all, qdel to stop them.

::

    SGE.launch(WorkerLaunch)   job script (jobscript.py) --stdin--> qsub -terse    -> "1234"
    SGE.status(["1234", ...])  qstat -u USER                                          (one call)
    SGE.terminate([...])       qdel 1234 ...                                          (one call)

One job per worker, one slot by default, named ``corral-<worker name>``, run by
bash (``-S /bin/bash``) and not rerun if its host fails (``-r n``: the executor
starts a new worker, with a new key).  The script, and the secret launch document in
it, reach sge_qmaster through qsub's standard input: no file of ours holds them (see
``jobscript.py`` for where Grid Engine keeps them).  Grid Engine does not pass this
process's environment to the job unless asked (``directives=["-V"]``, which leaves
the client's credentials out too).

``qdel`` of a running job kills it at once (SIGKILL) unless the job was submitted
with ``-notify``: then SIGUSR2 comes first, the queue's ``notify`` time before.
qstat lists only jobs still queued or running: a job it does not list has ended.
Commands run on this machine (a submit host), each bounded by
``jobscript.COMMAND_TIMEOUT``; their failures reach the caller in Grid Engine's own words.
"""

from __future__ import annotations

import getpass
import math
from collections.abc import Sequence

from .base import JobState, JobStatus, LaunchFailed, WorkerLaunch
from .jobscript import SHELL, BatchLauncher, check_count, check_text, job_name, run, words

GONE = ("does not exist", "already in deletion", "registered the job", "has deleted job")  # qdel: no error


class SGE(BatchLauncher):
    """Start each worker as a Grid Engine batch job (see the module's docstring).

    ``queue`` (``-q``), ``pe`` and ``slots`` (``-pe PE SLOTS``; more than one slot needs a
    parallel environment), ``memory`` (bytes or "4G": ``-l h_vmem=``, per slot, so the job
    gets ``memory`` in all), ``walltime`` (seconds or "[D-]HH:MM:SS": ``-l h_rt=``; default:
    the executor's worker wall time, if any) and ``project`` (``-P``) become ``#$`` lines;
    ``directives`` are more of them ("-l gpu=1"), ``directives_skip`` leaves out each
    generated line holding one of its words (for sites that reject one: "h_vmem" where
    memory is ``mem_free``), ``prologue`` lines run before the worker.  ``python``: the
    interpreter on the nodes.  ``output``: the job's standard output and error (Grid Engine's
    ``$JOB_ID`` pattern works), discarded by default.
    """

    kind = "sge"
    prefix = "#$"

    def __init__(self, queue: str | None = None, pe: str | None = None, slots: int = 1,
                 memory: int | str | None = None, walltime: float | str | None = None, project: str | None = None,
                 directives: Sequence[str] = (), directives_skip: Sequence[str] = (), prologue: Sequence[str] = (),
                 python: str | None = None, output: str | None = None):
        super().__init__(memory=memory, walltime=walltime, directives=directives, directives_skip=directives_skip,
                         prologue=prologue, python=python, output=output)
        self.queue = check_text("queue", queue)
        self.pe = check_text("pe", pe)
        self.slots = check_count("slots", slots)
        if self.slots > 1 and self.pe is None:
            raise ValueError(f"slots={slots} needs a parallel environment (pe=\"smp\", or what `qconf -spl` lists "
                             f"at your site): Grid Engine gives a job more than one slot only through one")
        self.project = check_text("project", project)
        self.user = getpass.getuser()

    def directives_for(self, launch: WorkerLaunch) -> list[str]:
        lines = [f"-N {job_name(launch)}", f"-S {SHELL}", f"-o {self.output}", "-j y", "-r n"]
        if self.queue:
            lines.append(f"-q {self.queue}")
        if self.pe:
            lines.append(f"-pe {self.pe} {self.slots}")
        if self.memory is not None:
            lines.append(f"-l h_vmem={math.ceil(self.memory / self.slots)}M")
        seconds = self.job_seconds(launch)
        if seconds is not None:
            lines.append(f"-l h_rt={seconds}")
        if self.project:
            lines.append(f"-P {self.project}")
        return lines

    gone = GONE

    def submit_argv(self) -> list[str]:
        return ["qsub", "-terse"]

    def job_id(self, printed: str) -> str:
        return printed.split(".")[0]  # "ID.TASKS" for an array job

    def cancel_argv(self, ids: list[str]) -> list[str]:
        return ["qdel", *ids]

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        try:
            done = run(["qstat", "-u", self.user], "the SGE launcher")
        except LaunchFailed as exc:
            return {job: JobStatus(JobState.UNKNOWN, str(exc)) for job in ids}
        if done.returncode != 0:
            return {job: JobStatus(JobState.UNKNOWN, f"qstat failed: {words(done)}") for job in ids}
        listed: dict[str, str] = {}
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0] in ids:
                listed[fields[0]] = fields[4]
        found: dict[str, JobStatus] = {}
        for job in ids:
            state = listed.get(job)
            if state is None:
                found[job] = self.ended(job, "no longer in qstat")
            elif "E" in state:  # Eqw: it will not start until someone clears the error
                found[job] = JobStatus(JobState.PENDING, f"{state}: in error, it will not start (`qstat -j {job}` "
                                                         f"says why)")
            elif "q" in state or "h" in state:
                found[job] = JobStatus(JobState.PENDING, f"{state}: waiting")
            elif "z" in state:
                found[job] = self.ended(job, state)
            else:  # r, t (starting), R (restarted), s/S/T (suspended), d (being deleted)
                found[job] = JobStatus(JobState.RUNNING, state)
        return found

    def output_file(self, job_id: str) -> str | None:
        name = self._names.get(job_id)
        if self.output == "/dev/null" or name is None:
            return None
        path = self.output.replace("$JOB_ID", job_id).replace("$JOB_NAME", name).replace("$USER", self.user)
        return None if "$" in path else path

    def __repr__(self) -> str:
        shown = {"queue": self.queue, "pe": self.pe, "slots": self.slots, "walltime": self.walltime}
        return f"SGE({', '.join(f'{k}={v!r}' for k, v in shown.items() if v is not None)})"
