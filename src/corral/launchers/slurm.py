"""Workers as SLURM batch jobs: sbatch to start one, squeue to follow them all, scancel to stop them.

::

    Slurm.launch(WorkerLaunch)   job script (jobscript.py) --stdin--> sbatch --parsable    -> "1234"
    Slurm.status(["1234", ...])  squeue -h --states=all -j 1234,... -o "%i|%T|%r"   (one call)
    Slurm.terminate([...])       scancel 1234 ...                                     (one call)

One job per worker, one CPU each by default (``cpus_per_task``), named
``corral-<worker name>``.  The script, and the secret launch document in it, reach
slurmctld through sbatch's standard input: no file of ours holds them (see
``jobscript.py`` for where SLURM keeps them).  sbatch gives the job this process's
environment, less the client's own credentials.  The job is not requeued
(``--no-requeue``): a worker that died with its node is replaced by the executor
with a new key, not restarted with its old one.

Commands run on this machine (a login node), each bounded by
``jobscript.COMMAND_TIMEOUT``; their failures reach the caller in SLURM's own words.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence

from .base import JobState, JobStatus, LaunchFailed, WorkerLaunch
from .jobscript import BatchLauncher, check_count, check_lines, check_text, hms, job_name, run, words

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "RESIZING"}
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}
# and ENDED: COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE, OUT_OF_MEMORY...
GONE = ("Invalid job id specified", "already completing or completed")  # what squeue/scancel say of old jobs


class Slurm(BatchLauncher):
    """Start each worker as a SLURM batch job (see the module's docstring).

    ``partition``, ``cpus_per_task``, ``memory`` (bytes or "4G": ``--mem``), ``walltime``
    (seconds or "[D-]HH:MM:SS": ``--time``; default: the executor's worker wall time, if
    any), ``account`` and ``qos`` become ``#SBATCH`` lines; ``directives`` are more of
    them ("--gres=gpu:1"), ``directives_skip`` leaves out each generated line holding one
    of its words (for sites that reject one), ``prologue`` lines run before the worker
    (``module load python``).  ``python``: the interpreter on the nodes.  ``output``: the
    job's standard output and error (SLURM's ``%j`` pattern works), discarded by default.
    ``submit_options``: more arguments for sbatch itself (``--clusters=gpu``).
    """

    kind = "slurm"
    prefix = "#SBATCH"

    def __init__(self, partition: str | None = None, cpus_per_task: int = 1, memory: int | str | None = None,
                 walltime: float | str | None = None, account: str | None = None, qos: str | None = None,
                 directives: Sequence[str] = (), directives_skip: Sequence[str] = (), prologue: Sequence[str] = (),
                 python: str | None = None, output: str | None = None, submit_options: Sequence[str] = ()):
        super().__init__(memory=memory, walltime=walltime, directives=directives, directives_skip=directives_skip,
                         prologue=prologue, python=python, output=output)
        self.partition = check_text("partition", partition)
        self.cpus_per_task = check_count("cpus_per_task", cpus_per_task)
        self.account = check_text("account", account)
        self.qos = check_text("qos", qos)
        self.submit_options = check_lines("submit_options", submit_options)
        self.user = getpass.getuser()

    def directives_for(self, launch: WorkerLaunch) -> list[str]:
        lines = [f"--job-name={job_name(launch)}", f"--output={self.output}", "--ntasks=1",
                 f"--cpus-per-task={self.cpus_per_task}", "--no-requeue"]
        if self.partition:
            lines.append(f"--partition={self.partition}")
        if self.memory is not None:
            lines.append(f"--mem={self.memory}M")
        seconds = self.job_seconds(launch)
        if seconds is not None:
            lines.append(f"--time={hms(seconds)}")
        if self.account:
            lines.append(f"--account={self.account}")
        if self.qos:
            lines.append(f"--qos={self.qos}")
        return lines

    gone = GONE

    def submit_argv(self) -> list[str]:
        return ["sbatch", "--parsable", *self.submit_options]

    def job_id(self, printed: str) -> str:
        return printed.split(";")[0]  # "ID;CLUSTER" on a multi-cluster site

    def cancel_argv(self, ids: list[str]) -> list[str]:
        return ["scancel", *ids]

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        try:
            done = run(["squeue", "--noheader", "--states=all", "--user", self.user, "--jobs", ",".join(ids),
                        "--format=%i|%T|%r|%k"], "the Slurm launcher")
        except LaunchFailed as exc:
            return {job: JobStatus(JobState.UNKNOWN, str(exc)) for job in ids}
        if done.returncode != 0:
            if any(word in done.stderr for word in GONE):  # squeue -j of one id it forgot
                return {job: self.ended(job, "no longer in squeue") for job in ids}
            return {job: JobStatus(JobState.UNKNOWN, f"squeue failed: {words(done)}") for job in ids}
        found: dict[str, JobStatus] = {}
        for line in done.stdout.splitlines():
            job, _, rest = line.strip().partition("|")
            state, _, rest = rest.partition("|")
            reason, _, comment = rest.partition("|")  # the comment last: it may hold a "|"
            if job not in ids:
                continue
            state = state.split()[0] if state.strip() else "UNKNOWN"
            why = "" if reason in ("", "None") else f" ({reason})"
            detail = f"{state.lower()}{why}"
            if comment.strip() and comment.strip() != "(null)":  # the worker's own words (joblimits.tell_job)
                detail += f": {comment.strip()}"
            if state in PENDING:
                found[job] = JobStatus(JobState.PENDING, detail)
            elif state in RUNNING:
                found[job] = JobStatus(JobState.RUNNING, detail)
            else:
                found[job] = self.ended(job, detail)
        for job in ids:
            if job not in found:
                found[job] = self.ended(job, "no longer in squeue")
        return found

    def output_file(self, job_id: str) -> str | None:
        name = self._names.get(job_id)
        if self.output == "/dev/null" or name is None:
            return None
        path = self.output.replace("%%", "\0").replace("%j", job_id).replace("%x", name).replace("%u", self.user)
        return None if "%" in path else path.replace("\0", "%")

    def __repr__(self) -> str:
        shown = {"partition": self.partition, "cpus_per_task": self.cpus_per_task, "walltime": self.walltime}
        return f"Slurm({', '.join(f'{k}={v!r}' for k, v in shown.items() if v is not None)})"
