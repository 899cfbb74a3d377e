"""What tests/test_slurm.py and tests/test_sge.py share: is the resource manager up, a launch of a tiny
program that records what it was given, and jobs that are stopped when a test ends, even on failure.

The daemons are real ones on this machine, started by ``.ci/slurm-setup`` and
``.ci/sge-setup``; without them the tests skip, saying which script to run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from corral.launchers import JobState, Launcher, WorkerLaunch
from corral.launchers.document import make

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
BOUND = 30.0  # seconds: every wait for a job (to run, to end)
_names = itertools.count(1)
_ready: dict[str, str | None] = {}

# The program a test job runs: it reads its standard input's line and writes it, with its argv,
# environment and working directory, to RECORD; then it stays until RELEASE exists (bounded), so
# that the test can look at the running job.  It prints OUTPUT on the way out.
PROGRAM = """\
import json, os, sys, time
record, release, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
line = sys.stdin.readline()
with open(record + ".tmp", "w") as f:
    json.dump({"stdin": line, "pid": os.getpid(), "cwd": os.getcwd(), "env": dict(os.environ)}, f)
os.rename(record + ".tmp", record)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and not os.path.exists(release):
    time.sleep(0.05)
print("job output: done")
"""


def _run(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_missing() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if "slurm" not in _ready:
        if shutil.which("sbatch") is None:
            _ready["slurm"] = "SLURM is not installed here (run .ci/slurm-setup as root)"
        elif not ((done := _run(["scontrol", "ping"])) and "is UP" in done.stdout):
            _ready["slurm"] = "slurmctld does not answer `scontrol ping` (run .ci/slurm-setup as root)"
        elif not ((done := _run(["sinfo", "-h", "-o", "%t"])) and done.stdout.split()
                  and done.stdout.split()[0].startswith(("idle", "mix", "alloc", "comp"))):
            _ready["slurm"] = "no SLURM node takes jobs (`sinfo`; run .ci/slurm-setup as root)"
        else:
            _ready["slurm"] = None
    return _ready["slurm"]


def sge_missing() -> str | None:
    """Why the Grid Engine tests cannot run here, or None.  Sets SGE_ROOT/SGE_CELL if missing."""
    if "sge" not in _ready:
        os.environ.setdefault("SGE_ROOT", "/var/lib/gridengine")
        os.environ.setdefault("SGE_CELL", "default")
        if shutil.which("qsub") is None:
            _ready["sge"] = "Grid Engine is not installed here (run .ci/sge-setup as root)"
        elif not ((done := _run(["qstat", "-f", "-q", "all.q"])) and done.returncode == 0
                  and any(line.startswith("all.q@") and len(line.split()) == 5 for line in done.stdout.splitlines())):
            _ready["sge"] = "sge_qmaster does not answer or all.q is not usable (run .ci/sge-setup as root)"
        else:
            _ready["sge"] = None
    return _ready["sge"]


def needs(marker: str, missing):
    """A decorator: the test is marked ``marker`` and skipped, saying why, where ``missing()`` says so."""
    reason = missing()

    def mark(test):
        return getattr(pytest.mark, marker)(pytest.mark.skipif(bool(reason), reason=reason or "")(test))

    return mark


def document() -> bytes:
    """A real launch document, with a fresh secret key."""
    import zmq

    broker_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    return make("tcp://127.0.0.1:1", broker_public, "test", public, secret, sys_path=[SRC])


def secret_of(doc: bytes) -> str:
    return json.loads(doc)["worker"]["secret"]


class Jobs:
    """Launches a test makes, through ``launch``; ``close`` terminates them all and waits (bounded)
    until the resource manager no longer runs any."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.made: list[tuple[Launcher, str]] = []

    def launch(self, launcher: Launcher, *, seconds: float = BOUND, env: dict | None = None,
               command: tuple[str, ...] | None = None, stdin: bytes | None = None) -> tuple[str, WorkerLaunch, dict]:
        """Start PROGRAM (or ``command``) in a job; returns (job id, launch, paths of its record/release)."""
        n = next(_names)
        paths = {"record": str(self.tmp_path / f"record-{n}.json"), "release": str(self.tmp_path / f"release-{n}")}
        if command is None:
            command = (sys.executable, "-c", PROGRAM, paths["record"], paths["release"], str(seconds))
        wl = WorkerLaunch(name=f"test{os.getpid()}-{n}", command=command, stdin=stdin or document(),
                          env={"CORRAL_TEST_VARIABLE": "a value with spaces 'and quotes'", **(env or {})},
                          cwd=str(self.tmp_path))
        job = launcher.launch(wl)
        self.made.append((launcher, job))
        return job, wl, paths

    def wait_state(self, launcher: Launcher, job: str, states: set[JobState], bound: float = BOUND) -> list:
        """The (state, detail) seen until ``job`` reaches one of ``states``; fails after ``bound`` s."""
        seen = []
        deadline = time.monotonic() + bound
        while True:
            st = launcher.status([job])[job]
            if not seen or seen[-1][0] != st.state:
                seen.append((st.state, st.detail))
            if st.state in states:
                return seen
            assert time.monotonic() < deadline, f"job {job} not {states} within {bound} s: {seen}"
            time.sleep(0.1)

    def close(self) -> list[str]:
        """Terminate every job made; the ids still not ENDED after BOUND seconds."""
        left = []
        by_launcher: dict[int, tuple[Launcher, list[str]]] = {}
        for launcher, job in self.made:
            by_launcher.setdefault(id(launcher), (launcher, []))[1].append(job)
        for launcher, jobs in by_launcher.values():
            with contextlib.suppress(Exception):
                launcher.terminate(jobs)
            deadline = time.monotonic() + BOUND
            while True:
                found = launcher.status(jobs)
                alive = [j for j, st in found.items() if st.state is not JobState.ENDED]
                if not alive or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            left += alive
        return left


@pytest.fixture
def jobs(tmp_path):
    made = Jobs(tmp_path)
    yield made
    left = made.close()
    assert not left, f"jobs still queued or running after the test: {left}"


def wait_file(path: str, bound: float = BOUND) -> dict:
    deadline = time.monotonic() + bound
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {bound} s"
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def processes_holding(text: str) -> list[str]:
    """Processes of this machine whose argv holds ``text``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if text in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline[:200]}")
    return found
