"""The Slurm launcher against a real slurmctld and slurmd (.ci/slurm-setup): the secret launch document
reaches the job and nothing else, states, terminate, refusals in sbatch's words, time left in a job.
The tests of the job script alone and of the arguments need no daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from clusters import SRC, jobs, needs, processes_holding, secret_of, slurm_missing, wait_file  # noqa: F401
from corral.launchers import JobState, LaunchFailed, Slurm, WorkerLaunch
from corral.launchers.jobscript import PLACEHOLDER

needs_slurm = needs("slurm", slurm_missing)


def squeue_names() -> list[str]:
    done = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=20, check=True)
    return done.stdout.split()


@needs_slurm
def test_document_reaches_the_job_and_nothing_else(jobs, tmp_path):  # noqa: F811
    launcher = Slurm(walltime=600)
    job, wl, paths = jobs.launch(launcher)
    seen = jobs.wait_state(launcher, job, {JobState.RUNNING, JobState.ENDED})
    record = wait_file(paths["record"])
    assert record["stdin"].encode() == wl.stdin, "the launch document did not arrive intact"
    assert record["cwd"] == str(tmp_path)
    assert record["env"]["CORRAL_TEST_VARIABLE"] == wl.env["CORRAL_TEST_VARIABLE"]
    assert record["env"]["SLURM_JOB_ID"] == job
    assert record["env"]["SLURM_JOB_NAME"] == f"corral-{wl.name}"
    secret = secret_of(wl.stdin)
    assert secret not in str(record["env"]), "the secret key is in the job's environment"
    # While it runs: SLURM's view of the job and every process's argv are free of the secret.
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=20).stdout
    assert f"JobId={job}" in shown and "Command=" in shown
    assert secret not in shown, "the secret key shows in `scontrol show job`"
    assert not processes_holding(secret), f"the secret key is on a command line: {processes_holding(secret)}"
    open(paths["release"], "w").close()
    seen += jobs.wait_state(launcher, job, {JobState.ENDED})
    states = [state for state, _ in seen]
    assert states[0] in (JobState.PENDING, JobState.RUNNING) and states[-1] is JobState.ENDED, seen
    assert "completed" in seen[-1][1], seen


@needs_slurm
def test_terminate_ends_running_jobs_and_is_idempotent(jobs):  # noqa: F811
    """Eight one-CPU jobs run at once (the node advertises 16 CPUs); one scancel ends them all within
    KillWait; terminating them again, and an ended job, is no error; squeue lists none afterwards."""
    import psutil

    launcher = Slurm()
    launched = [jobs.launch(launcher, seconds=120) for _ in range(8)]
    ids = [job for job, _, _ in launched]
    pids = [wait_file(paths["record"])["pid"] for _, _, paths in launched]
    found = launcher.status(ids)
    assert all(st.state is JobState.RUNNING for st in found.values()), found
    start = time.monotonic()
    launcher.terminate(ids)
    for job in ids:
        jobs.wait_state(launcher, job, {JobState.ENDED}, bound=15)
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
    assert not alive, f"job processes alive after scancel: {alive}"
    took = time.monotonic() - start
    assert took < 15, took
    launcher.terminate(ids)
    launcher.terminate(ids + ids)
    assert not [name for name in squeue_names() if name.startswith("corral-test")], squeue_names()


@needs_slurm
def test_status_says_ended_with_the_output_and_forgotten_ids(jobs, tmp_path):  # noqa: F811
    launcher = Slurm(output=str(tmp_path / "job-%j.out"))
    job, _, paths = jobs.launch(launcher, seconds=0)
    seen = jobs.wait_state(launcher, job, {JobState.ENDED})
    assert "job output: done" in seen[-1][1], seen
    assert os.path.exists(tmp_path / f"job-{job}.out")
    # An id slurmctld never had (or forgot), alone and among others: ENDED, in one squeue call.
    assert launcher.status(["999999"])["999999"].state is JobState.ENDED
    both = launcher.status([job, "999998"])
    assert both[job].state is JobState.ENDED and both["999998"].state is JobState.ENDED
    launcher.terminate(["999999", job])


@needs_slurm
def test_refusals_are_in_sbatch_words(jobs):  # noqa: F811
    with pytest.raises(LaunchFailed, match="sbatch refused the job of .*invalid partition specified"):
        jobs.launch(Slurm(partition="no-such-partition"))
    with pytest.raises(LaunchFailed, match="(?i)sbatch refused .*gres"):
        jobs.launch(Slurm(directives=["--gres=no-such-thing:1"]))


@needs_slurm
def test_time_left_inside_a_job(jobs, tmp_path):  # noqa: F811
    """corral.launchers.joblimits.time_left() in a job with --time=10:00 says about 600 s."""
    out = tmp_path / "left"
    program = ("import sys; from corral.launchers.joblimits import time_left; "
               f"open({str(out)!r}, 'w').write(repr(time_left()))")
    job, _, _ = jobs.launch(Slurm(walltime="0:10:00"), command=(sys.executable, "-c", program),
                            env={"PYTHONPATH": SRC})
    jobs.wait_state(Slurm(), job, {JobState.ENDED})
    left = float(out.read_text())
    assert 540 <= left <= 600, left
    # And a long one: days.
    out.unlink()
    job, _, _ = jobs.launch(Slurm(walltime="2-00:00:00"), command=(sys.executable, "-c", program),
                            env={"PYTHONPATH": SRC})
    jobs.wait_state(Slurm(), job, {JobState.ENDED})
    left = float(out.read_text())
    assert 2 * 86400 - 60 <= left <= 2 * 86400, left


def test_script_directives_prologue_and_no_secret():
    launcher = Slurm(partition="short", cpus_per_task=4, memory="1.5G", walltime=90061, account="proj",
                     qos="high", directives=["--gres=gpu:1", "#SBATCH --exclusive"], directives_skip=["--qos"],
                     prologue=["module load python/3.12", "source ~/venv/bin/activate"])
    wl = WorkerLaunch(name="slurm-7", command=("python3", "-m", "corral", "worker", "-"),
                      stdin=b'{"secret":"TOPSECRET"}\n', env={"OMP_NUM_THREADS": "1"}, cwd="/home/me/work dir")
    text = launcher.script(wl)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ("#SBATCH --job-name=corral-slurm-7", "#SBATCH --partition=short", "#SBATCH --cpus-per-task=4",
                     "#SBATCH --mem=1536M", "#SBATCH --time=25:01:01", "#SBATCH --account=proj",
                     "#SBATCH --gres=gpu:1", "#SBATCH --exclusive", "#SBATCH --output=/dev/null",
                     "module load python/3.12", "source ~/venv/bin/activate",
                     "if [ -d '/home/me/work dir' ]; then cd '/home/me/work dir'; fi", "export OMP_NUM_THREADS=1"):
        assert expected in lines, (expected, text)
    assert not any("--qos" in line for line in lines), text
    assert lines.index("#SBATCH --exclusive") < lines.index("module load python/3.12")
    assert lines[-3].startswith(f"exec {sys.executable} -m corral worker - <<'CORRAL_LAUNCH_DOCUMENT'")
    assert lines[-2] == PLACEHOLDER and lines[-1] == "CORRAL_LAUNCH_DOCUMENT"
    assert "TOPSECRET" not in text
    assert "TOPSECRET" in launcher.job_script(wl, secret=True)
    # python= replaces the interpreter; no launch: a placeholder one.
    assert "exec /opt/py/bin/python -m corral worker -" in Slurm(python="/opt/py/bin/python").script()


@pytest.mark.parametrize("kwargs, error, words", [
    ({"cpus_per_task": -1}, ValueError, "cpus_per_task must be 1 or more"),
    ({"cpus_per_task": 1.5}, TypeError, "cpus_per_task must be a whole number"),
    ({"walltime": -5}, ValueError, "walltime must be more than 0"),
    ({"walltime": "one hour"}, ValueError, "is not \"\\[D-\\]HH:MM:SS\""),
    ({"walltime": "10"}, ValueError, "is not"),
    ({"walltime": [1]}, TypeError, "walltime must be seconds"),
    ({"memory": "lots"}, ValueError, "is not a size"),
    ({"memory": 0}, ValueError, "memory must be more than 0"),
    ({"partition": "a b"}, ValueError, "partition must be a name without spaces"),
    ({"directives": "--exclusive"}, TypeError, "must be a list of strings, not one string"),
    ({"prologue": ["a\nb"]}, ValueError, "must be one line"),
    ({"directives_skip": [""]}, ValueError, "empty string"),
    ({"submit_options": [3]}, TypeError, "must be a list of strings"),
    ({"python": 3}, TypeError, "python must be the interpreter"),
])
def test_arguments_are_checked_at_construction(kwargs, error, words):
    with pytest.raises(error, match=words):
        Slurm(**kwargs)


def test_walltime_forms():
    assert Slurm(walltime=59.2).walltime == 60
    assert Slurm(walltime="1:00:00").walltime == 3600
    assert Slurm(walltime="2-01:00:00").walltime == 2 * 86400 + 3600
    assert Slurm(walltime="30:00").walltime == 1800
    assert "#SBATCH --time=49:00:00" in Slurm(walltime="2-01:00:00").script().splitlines()


def test_commands_missing_mean_unknown_and_launch_failed(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    launcher = Slurm()
    assert launcher.status(["1"])["1"].state is JobState.UNKNOWN
    with pytest.raises(LaunchFailed, match="sbatch was not found on PATH"):
        launcher.launch(WorkerLaunch(name="x", command=("python3",), stdin=b"{}\n"))
    with pytest.raises(LaunchFailed, match="scancel was not found"):
        launcher.terminate(["1"])


@needs_slurm
def test_a_job_pending_in_the_queue_is_waited_for_and_never_launched_twice(make_executor):
    """A held job stays PENDING: the executor counts it as a worker on its way (no second launch, no
    launch_timeout while it waits), says so in its summary, and runs the task once the job is released."""
    ex = make_executor(launcher=Slurm(submit_options=["--hold"]), max_workers=1, launch_timeout=2,
                       advertise="127.0.0.1", heartbeat=0.5)
    fut = ex.submit(pow, 3, 4)
    deadline = time.monotonic() + 30
    while ex.summary().launches["pending"] != 1:
        assert time.monotonic() < deadline, ex.summary().launches
        time.sleep(0.2)
    time.sleep(4)  # twice the launch_timeout: a pending job is not timed out
    launches = ex.summary().launches
    assert launches["launched"] == 1 and launches["launch_failures"] == 0 and launches["pending"] == 1, launches
    assert not fut.done()
    job = next(iter(ex._broker.fleet.launches.values())).job
    subprocess.run(["scontrol", "release", job], check=True, timeout=20)
    assert fut.result(timeout=60) == 81
    assert ex.summary().launches["launched"] == 1


@needs_slurm
def test_a_worker_that_never_reaches_its_broker_says_why_in_its_jobs_status(tmp_path):
    """Its job's output goes nowhere, yet the launcher's status carries the worker's words: it wrote
    them in its job's comment before it left."""
    import zmq

    from corral.launchers import document
    from helpers import free_port

    broker_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    address = f"tcp://127.0.0.1:{free_port()}"
    launch = WorkerLaunch(name="unreachable-1", command=(sys.executable, "-m", "corral", "worker", "-",
                                                         "--processes", "1", "--broker-timeout", "1"),
                          stdin=document.make(address, broker_public, "unreachable-1", public, secret),
                          env={"PYTHONPATH": SRC}, cwd=str(tmp_path))
    launcher = Slurm()
    job = launcher.launch(launch)
    try:
        deadline = time.monotonic() + 60
        while (status := launcher.status([job])[job]).state is not JobState.ENDED or "refused" not in status.detail:
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
        assert f"never reached the broker at {address}: connection refused" in status.detail, status.detail
    finally:
        launcher.terminate([job])
