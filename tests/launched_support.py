"""What tests/test_launched.py needs beside its tests: launchers that note every job they start, the
tasks the launched workers run, and where a test's jobs and worker processes are to be found.

Kept apart from the test module so that a launched worker, which imports a task's module by name,
imports only this small one (and corral), not pytest.

The launchers are the real ones: ``recording(Slurm)`` is Slurm, whose ``launch`` also notes the
job id it returns (in ``ids``, and in a file when given one, for a client in another process), so
that a test cancels and checks exactly its own jobs, whatever else runs on the cluster.
"""

from __future__ import annotations

import os
import subprocess
import time

from corral.launchers import SGE, SSH, Slurm

QUERY_TIMEOUT = 20  # seconds a squeue/qstat call of the tests may take


def recording(cls):
    """``cls`` (a launcher class) whose ``launch`` also notes each job id it returned."""

    class Recording(cls):
        def __init__(self, *args, ids_file: str | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.ids: list[str] = []
            self.ids_file = ids_file

        def launch(self, launch):
            job = super().launch(launch)
            self.ids.append(job)
            if self.ids_file:
                with open(self.ids_file, "a") as f:
                    f.write(job + "\n")
            return job

    Recording.__name__ = Recording.__qualname__ = cls.__name__
    return Recording


RecordingSlurm = recording(Slurm)
RecordingSGE = recording(SGE)
RecordingSSH = recording(SSH)


# -- the tasks -------------------------------------------------------------------------


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def wait_release(release: str, bound: float) -> int:
    """Stay until the file ``release`` exists (``bound`` seconds at most); this process's pid."""
    deadline = time.monotonic() + bound
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid()


def squares(n: int) -> int:
    """CPU-bound: the sum of the squares below ``n``, the slow way."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def first_run_long(path: str, seconds: float) -> int:
    """Note a run in ``path`` (one line, this pid); the first run sleeps ``seconds``, later ones end at once."""
    first = not os.path.exists(path)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        time.sleep(seconds)
    return os.getpid()


# -- where a test's jobs and workers are -------------------------------------------------


def queued_slurm(ids) -> set[str]:
    """Those of ``ids`` that squeue still lists (pending, running or completing)."""
    done = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True,
                          timeout=QUERY_TIMEOUT, check=True)
    return set(done.stdout.split()) & set(ids)


def queued_sge(ids) -> set[str]:
    """Those of ``ids`` that qstat still lists (queued, running, being deleted)."""
    done = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, timeout=QUERY_TIMEOUT, check=True)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.split() and line.split()[0].isdigit()}
    return listed & set(ids)


def ssh_pid(job: str) -> int:
    """The local ssh process's pid in an SSH launcher's job id (``HOST/PID`` or ``HOST/PID~N``)."""
    return int(job.rsplit("/", 1)[1].split("~")[0])


def corral_processes(kind: str, ids, sshd_pid: int | None = None) -> list[str]:
    """The processes of this machine (zombies aside) that run corral for one of ``ids``: under SLURM
    and Grid Engine, those whose job id (SLURM_JOB_ID, JOB_ID in their environment) is one of them;
    under SSH, the local ssh processes of the ids and every corral process below the test's sshd."""
    import psutil

    ids = set(ids)
    found = []
    variable = {"slurm": "SLURM_JOB_ID", "sge": "JOB_ID"}.get(kind)
    below_sshd: set[int] = set()
    if kind == "ssh" and sshd_pid is not None:
        try:
            below_sshd = {p.pid for p in psutil.Process(sshd_pid).children(recursive=True)}
        except psutil.Error:
            pass
    ssh_pids = {ssh_pid(job) for job in ids} if kind == "ssh" else set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            line = " ".join(proc.info["cmdline"] or [])
            if kind == "ssh":
                ours = (proc.pid in ssh_pids and "ssh" in line) or (proc.pid in below_sshd and "corral" in line)
            else:
                ours = "corral" in line and proc.environ().get(variable) in ids
        except psutil.Error:
            continue
        if ours:
            found.append(f"{proc.pid}: {line[:160]}")
    return found


def netns() -> str:
    """The network namespace this process runs in (``net:[INODE]``)."""
    return os.readlink("/proc/self/ns/net")
