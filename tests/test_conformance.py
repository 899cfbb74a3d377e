"""CPython's own concurrent.futures test suite, run against corral.Executor.

The runner lives beside the repository in ``../shared/conformance``; it fetches
the CPython tests when the interpreter does not ship them.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusters import needs, slurm_missing

HERE = Path(__file__).resolve().parent
RUNNER = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "run_cpython_suite.py"


@pytest.mark.timeout(960)  # the whole CPython suite: about 100 s here, more on a loaded machine
@pytest.mark.skipif(not RUNNER.exists(), reason="the shared conformance runner is not checked out beside the repo")
def test_cpython_concurrent_futures_suite():
    env = dict(os.environ, CF_EXECUTOR_FACTORY="corral:Executor")
    proc = subprocess.run(
        [sys.executable, str(RUNNER)], check=False, env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0 and "tests not found" in proc.stderr:
        pytest.skip(f"CPython's concurrent.futures tests are not available for {sys.version.split()[0]} here")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and " 0 failed" in last, proc.stdout[-6000:] + proc.stderr[-3000:]


@needs("slurm", slurm_missing)
@pytest.mark.timeout(1260)  # about 75 s here: each test's executor launches its workers as SLURM jobs
@pytest.mark.skipif(not RUNNER.exists(), reason="the shared conformance runner is not checked out beside the repo")
def test_cpython_concurrent_futures_suite_with_slurm_launched_workers(tmp_path):
    """The same suite against executors whose workers are SLURM jobs (launched_factory.py); afterwards
    squeue lists none of the jobs it made."""
    import launched_support

    jobs_file = tmp_path / "jobs"
    path = [str(HERE), str(HERE.parent / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, CF_EXECUTOR_FACTORY="launched_factory:slurm_executor", PYTHONPATH=os.pathsep.join(path),
               CORRAL_TEST_JOBS_FILE=str(jobs_file))
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(RUNNER)], check=False, env=env, capture_output=True, text=True,
                              timeout=1200)
    finally:
        ids = jobs_file.read_text().split() if jobs_file.exists() else []
        left = launched_support.queued_slurm(ids)
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:  # completing after their executor's shutdown
            time.sleep(0.5)
            left = launched_support.queued_slurm(ids)
        if left:
            subprocess.run(["scancel", *left], timeout=20, check=False)
    print(f"the suite with SLURM-launched workers: {time.monotonic() - started:.0f} s, {len(ids)} jobs")
    if proc.returncode != 0 and "tests not found" in proc.stderr:
        pytest.skip(f"CPython's concurrent.futures tests are not available for {sys.version.split()[0]} here")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and " 0 failed" in last, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert ids, "the suite launched no SLURM job"
    assert not left, f"jobs still in squeue 30 s after the suite: {sorted(left)}"
