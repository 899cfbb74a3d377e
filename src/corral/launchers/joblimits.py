"""What a worker in a batch job asks of its resource manager, and tells it.

A worker started inside a SLURM or Grid Engine job knows its job's hard end by
itself, so it can stop taking tasks and leave before it (``corral worker``'s
default ``--wall-time auto``): nothing is lost to a walltime.  And a worker that
never reached its broker writes why in its SLURM job's comment (``tell_job``),
where the launcher's ``squeue`` reads it: the failed launch is reported with the
worker's own words even when the job's output goes nowhere.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time

ASK_TIMEOUT = 10.0  # seconds a squeue/qstat call may take


def time_left() -> float | None:
    """Seconds until the hard end of the job this process runs in; None outside a job, for a job
    with no time limit, or when its resource manager cannot say."""
    if os.environ.get("SLURM_JOB_ID"):
        return slurm_time_left(os.environ["SLURM_JOB_ID"])
    if os.environ.get("JOB_ID") and os.environ.get("SGE_ROOT"):
        return sge_time_left(os.environ["JOB_ID"])
    return None


COMMENT_MAX = 240  # characters of a message kept in a SLURM job's comment


def tell_job(message: str) -> None:
    """Leave ``message`` where this job's launcher looks: a SLURM job's comment (users may set their own
    jobs' comments).  Elsewhere, and if it fails, nothing: the message is on standard error too."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and shutil.which("scontrol"):
        text = " ".join(message.split())[:COMMENT_MAX]
        try:
            subprocess.run(["scontrol", "update", f"JobId={job}", f"Comment={text}"], capture_output=True,
                           timeout=ASK_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


def slurm_time_left(job_id: str) -> float | None:
    """``squeue -j ID -h -o %L``: what is left as [D-]HH:MM:SS, MM:SS under an hour, or UNLIMITED /
    NOT_SET / INVALID (None)."""
    out = _ask(["squeue", "-h", "-j", job_id, "-o", "%L"])
    return parse_duration(out) if out else None


def sge_time_left(job_id: str) -> float | None:
    """``qstat -j ID``'s h_rt (seconds, or HH:MM:SS elsewhere), less the time since the job started
    (the "submit/start at" of ``qstat -u USER``, local time, to the second).  Grid Engine's
    ``qstat -j`` does not say when a job started; if the start cannot be found, the whole h_rt."""
    out = _ask(["qstat", "-j", job_id])
    if not out:
        return None
    limit = None
    for line in out.splitlines():
        if "resource_list" in line and "h_rt=" in line:
            limit = parse_duration(line.split("h_rt=", 1)[1].split(",")[0].strip())
            break
    if limit is None:
        return None
    started = _sge_started(job_id)
    if started is None:
        return limit
    return max(0.0, limit - max(0.0, time.time() - started))


def _sge_started(job_id: str) -> float | None:
    """When a running Grid Engine job started (epoch seconds), from ``qstat -u USER``'s listing."""
    user = os.environ.get("USER") or getpass.getuser()
    out = _ask(["qstat", "-s", "r", "-u", user])
    for line in (out or "").splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[0] == job_id:
            try:
                return time.mktime(time.strptime(f"{fields[5]} {fields[6]}", "%m/%d/%Y %H:%M:%S"))
            except (ValueError, OverflowError):
                return None
    return None


def parse_duration(text: str) -> float | None:
    """Seconds of ``[D-]HH:MM:SS``, ``MM:SS``, ``SS`` (SLURM, SGE); None for anything else."""
    text = text.strip()
    days = 0
    if "-" in text:
        head, _, text = text.partition("-")
        if not head.isdigit():
            return None
        days = int(head)
    parts = text.split(":")
    if not parts or len(parts) > 3 or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return float(days * 86400 + seconds)


def _ask(argv: list[str]) -> str | None:
    """What a resource manager's command prints, or None if it cannot be run or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=ASK_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
