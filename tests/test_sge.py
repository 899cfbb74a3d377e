"""The SGE launcher against a real sge_qmaster and sge_execd (.ci/sge-setup): the secret launch document
reaches the job and nothing else, states, terminate, refusals in qsub's words, time left in a job.
The tests of the job script alone and of the arguments need no daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from clusters import SRC, jobs, needs, processes_holding, secret_of, sge_missing, wait_file  # noqa: F401
from corral.launchers import SGE, JobState, LaunchFailed, WorkerLaunch
from corral.launchers.jobscript import PLACEHOLDER

needs_sge = needs("sge", sge_missing)


def qstat_names() -> list[str]:
    done = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, timeout=20, check=True)
    return [line.split()[2] for line in done.stdout.splitlines() if line.split() and line.split()[0].isdigit()]


@needs_sge
def test_document_reaches_the_job_and_nothing_else(jobs, tmp_path):  # noqa: F811
    launcher = SGE(walltime=600)
    job, wl, paths = jobs.launch(launcher)
    seen = jobs.wait_state(launcher, job, {JobState.RUNNING, JobState.ENDED})
    record = wait_file(paths["record"])
    assert record["stdin"].encode() == wl.stdin, "the launch document did not arrive intact"
    assert record["cwd"] == str(tmp_path)
    assert record["env"]["CORRAL_TEST_VARIABLE"] == wl.env["CORRAL_TEST_VARIABLE"]
    assert record["env"]["JOB_ID"] == job
    assert record["env"]["JOB_NAME"] == f"corral-{wl.name}"
    secret = secret_of(wl.stdin)
    assert secret not in str(record["env"]), "the secret key is in the job's environment"
    # While it runs: Grid Engine's view of the job and every process's argv are free of the secret.
    shown = subprocess.run(["qstat", "-j", job], capture_output=True, text=True, timeout=20).stdout
    assert "env_list" in shown and "script_file:                STDIN" in shown, shown
    assert secret not in shown, "the secret key shows in `qstat -j`"
    assert not processes_holding(secret), f"the secret key is on a command line: {processes_holding(secret)}"
    open(paths["release"], "w").close()
    seen += jobs.wait_state(launcher, job, {JobState.ENDED})
    states = [state for state, _ in seen]
    assert states[0] in (JobState.PENDING, JobState.RUNNING) and states[-1] is JobState.ENDED, seen


@needs_sge
def test_terminate_ends_running_jobs_and_is_idempotent(jobs):  # noqa: F811
    """Eight one-slot jobs run at once (all.q has 16 slots); one qdel ends them all (SIGKILL); deleting
    them again, and an ended job, is no error; qstat lists none afterwards."""
    import psutil

    launcher = SGE()
    launched = [jobs.launch(launcher, seconds=120) for _ in range(8)]
    ids = [job for job, _, _ in launched]
    pids = [wait_file(paths["record"])["pid"] for _, _, paths in launched]
    found = launcher.status(ids)
    assert all(st.state is JobState.RUNNING for st in found.values()), found
    start = time.monotonic()
    launcher.terminate(ids)
    launcher.terminate(ids)  # while they are being deleted
    for job in ids:
        jobs.wait_state(launcher, job, {JobState.ENDED}, bound=15)
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10)
    assert not alive, f"job processes alive after qdel: {alive}"
    assert time.monotonic() - start < 15
    launcher.terminate(ids)
    launcher.terminate(ids + ["999999"])
    assert not [name for name in qstat_names() if name.startswith("corral-test")], qstat_names()


@needs_sge
def test_status_says_ended_with_the_output(jobs, tmp_path):  # noqa: F811
    launcher = SGE(output=str(tmp_path / "job-$JOB_ID.out"))
    job, _, _ = jobs.launch(launcher, seconds=0)
    seen = jobs.wait_state(launcher, job, {JobState.ENDED})
    assert "job output: done" in seen[-1][1], seen
    assert os.path.exists(tmp_path / f"job-{job}.out")
    assert launcher.status(["999999", job])["999999"].state is JobState.ENDED


@needs_sge
def test_parallel_environment_and_memory(jobs, tmp_path):  # noqa: F811
    """-pe smp 2 and -l h_vmem (per slot) are taken, and the worker's interpreter runs under that limit."""
    launcher = SGE(pe="smp", slots=2, memory="2G")
    job, _, paths = jobs.launch(launcher, seconds=0)
    record = wait_file(paths["record"])
    assert record["env"]["NSLOTS"] == "2"
    jobs.wait_state(launcher, job, {JobState.ENDED})


@needs_sge
def test_refusals_are_in_qsub_words(jobs):  # noqa: F811
    with pytest.raises(LaunchFailed, match='qsub refused the job of .*unknown queue "no-such.q"'):
        jobs.launch(SGE(queue="no-such.q"))
    with pytest.raises(LaunchFailed, match="qsub refused .*no-such-pe"):
        jobs.launch(SGE(pe="no-such-pe", slots=2))


@needs_sge
def test_time_left_inside_a_job(jobs, tmp_path):  # noqa: F811
    """corral.launchers.joblimits.time_left() in a job with -l h_rt=600 says about 600 s, less its age."""
    out = tmp_path / "left"
    program = ("import sys, time; time.sleep(2); from corral.launchers.joblimits import time_left; "
               f"open({str(out)!r}, 'w').write(repr(time_left()))")
    job, _, _ = jobs.launch(SGE(walltime="0:10:00"), command=(sys.executable, "-c", program),
                            env={"PYTHONPATH": SRC})
    jobs.wait_state(SGE(), job, {JobState.ENDED})
    left = float(out.read_text())
    assert 540 <= left <= 599, left


def test_script_directives_prologue_and_no_secret():
    launcher = SGE(queue="all.q", pe="smp", slots=4, memory="8G", walltime="1:30:00", project="proj",
                   directives=["-l gpu=1", "#$ -notify"], directives_skip=["h_vmem"],
                   prologue=["module load python/3.12"])
    wl = WorkerLaunch(name="sge-7", command=("python3", "-m", "corral", "worker", "-"),
                      stdin=b'{"secret":"TOPSECRET"}\n', env={"OMP_NUM_THREADS": "1"}, cwd="/home/me")
    text = launcher.script(wl)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ("#$ -N corral-sge-7", "#$ -S /bin/bash", "#$ -q all.q", "#$ -pe smp 4", "#$ -l h_rt=5400",
                     "#$ -P proj", "#$ -l gpu=1", "#$ -notify", "#$ -o /dev/null", "#$ -j y", "#$ -r n",
                     "module load python/3.12", "if [ -d /home/me ]; then cd /home/me; fi",
                     "export OMP_NUM_THREADS=1"):
        assert expected in lines, (expected, text)
    assert not any("h_vmem" in line for line in lines), text
    assert "#$ -l h_vmem=2048M" in SGE(pe="smp", slots=4, memory="8G").script().splitlines()
    assert lines[-3].startswith(f"exec {sys.executable} -m corral worker - <<'CORRAL_LAUNCH_DOCUMENT'")
    assert lines[-2] == PLACEHOLDER and lines[-1] == "CORRAL_LAUNCH_DOCUMENT"
    assert "TOPSECRET" not in text
    assert "TOPSECRET" in launcher.job_script(wl, secret=True)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"slots": 0}, ValueError, "slots must be 1 or more"),
    ({"slots": 2}, ValueError, "needs a parallel environment"),
    ({"walltime": 0}, ValueError, "walltime must be more than 0"),
    ({"walltime": "1:xx:00"}, ValueError, "is not"),
    ({"memory": -1}, ValueError, "memory must be more than 0"),
    ({"queue": ""}, ValueError, "queue must be a name without spaces"),
    ({"project": 5}, TypeError, "project must be a string"),
    ({"directives": [None]}, TypeError, "must be a list of strings"),
    ({"output": "/tmp/my output"}, ValueError, "output must be a file's path without spaces"),
])
def test_arguments_are_checked_at_construction(kwargs, error, words):
    with pytest.raises(error, match=words):
        SGE(**kwargs)
