"""CPython's own concurrent.futures test suite, run against corral.Executor.

The runner lives beside the repository in ``../shared/conformance``; it fetches
the CPython tests when the interpreter does not ship them.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
