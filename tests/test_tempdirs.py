"""Private directories held while their maker lives, and swept once it died (``corral/tempdirs.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import corral
from corral import tempdirs
from helpers import TIMEOUT

LIVE_CLIENT = textwrap.dedent("""
    import sys, corral
    ex = corral.Executor(2)
    print(ex.submit(pow, 2, 3).result(60), ex._tmpdir, ex._shm_dir, flush=True)
    sys.stdin.readline()
    print(ex.submit(pow, 2, 4).result(60), flush=True)
    ex.shutdown()
""")


@pytest.fixture
def private_tmp(tmp_path):
    """An environment whose temporary and shared-memory directories are the test's own, so that
    what its processes sweep is what it made."""
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), CORRAL_SHM_DIR=str(tmp_path / "shm"))
    for name in ("tmp", "shm"):
        (tmp_path / name).mkdir()
    return env


def _kill_with_its_workers(proc: subprocess.Popen) -> None:
    """SIGKILL a client and every process it started, as a batch system ending a job or the OOM
    killer does: the client is stopped first, so that it starts no worker meanwhile."""
    os.kill(proc.pid, signal.SIGSTOP)
    family = psutil.Process(proc.pid).children(recursive=True)
    for p in family:
        p.kill()
    proc.kill()
    proc.wait(TIMEOUT)
    _, alive = psutil.wait_procs(family, timeout=TIMEOUT)
    assert not alive, f"still running: {alive}"


def test_files_of_a_client_killed_with_its_workers_go_at_the_next_start(private_tmp, tmp_path):
    """Breaks: a client and its workers are SIGKILLed together, so none of them removes the client's
    directories (its bootstrap file, its shared memory). The next executor started on the machine
    removes them; a live client's, and a directory corral did not make, stay."""
    dead = subprocess.Popen([sys.executable, "-c", LIVE_CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=private_tmp)
    live = subprocess.Popen([sys.executable, "-c", LIVE_CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=private_tmp)
    try:
        answer, dead_tmp, dead_shm = dead.stdout.readline().split()
        assert answer == "8"
        _kill_with_its_workers(dead)
        assert os.path.isdir(dead_tmp) and os.path.isdir(dead_shm), "nothing was left to sweep"
        answer, live_tmp, live_shm = live.stdout.readline().split()
        assert answer == "8"
        foreign = tmp_path / "tmp" / "corral-not-ours"  # no lock file: another program's, or being made
        foreign.mkdir()

        sweeper = "import corral; corral.Executor(1).shutdown()"
        subprocess.run([sys.executable, "-c", sweeper], env=private_tmp, check=True, timeout=TIMEOUT)

        assert not os.path.exists(dead_tmp) and not os.path.exists(dead_shm)
        assert os.path.isdir(live_tmp) and os.path.isdir(live_shm) and foreign.is_dir()
        out, _ = live.communicate("go\n", timeout=TIMEOUT)
        assert out.strip() == "16", "the live client's executor still works"
        foreign.rmdir()
        assert os.listdir(tmp_path / "tmp") == [] and os.listdir(tmp_path / "shm") == []
    finally:
        for proc in (dead, live):
            if proc.poll() is None:
                proc.kill()
                proc.wait(TIMEOUT)


def test_a_directory_this_process_holds_is_not_swept():
    """Breaks: a sweep runs while this very process holds a directory (a second executor's start).
    Its lock is held by another open file, so the sweep leaves it."""
    path = tempdirs.make()
    try:
        assert path not in tempdirs.sweep(os.path.dirname(path))
        assert os.path.isfile(os.path.join(path, tempdirs.HELD))
    finally:
        tempdirs.remove(path)
    assert not os.path.exists(path)


def _dead_directory(parent, name: str, *twins, holder: bytes | None = None):
    """A private ``corral-*`` directory whose holder died: its lock file, unlocked, names ``twins``."""
    path = parent / name
    path.mkdir(mode=0o700)
    lines = [holder if holder is not None else tempdirs._holder(), *(os.fsencode(str(t)) for t in twins)]
    (path / tempdirs.HELD).write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_lock_file_names_no_removal_outside_its_twins(tmp_path):
    """Breaks: a dead directory's lock file names paths that are not its twins: another directory,
    a link named as a twin, a relative path. Only the real twins go: the one it names, and one named
    after it in a twin root that it never named (its maker died before it could)."""
    parent, shm = tmp_path / "tmp", tmp_path / "shm"
    parent.mkdir()
    shm.mkdir()
    twin, unnamed = shm / "corral-dead-abc", shm / "corral-dead-xyz"
    for d in (twin, unnamed):
        d.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("keep")
    link = shm / "corral-dead-link"
    link.symlink_to(victim)
    dead = _dead_directory(parent, "corral-dead", twin, victim, link, "corral-dead-rel")

    assert tempdirs.sweep(str(parent), (str(shm),)) == [str(dead)]
    assert not dead.exists() and not twin.exists() and not unnamed.exists()
    assert (victim / "data").read_text() == "keep" and link.is_symlink()


def test_a_lock_file_that_is_a_link_a_directory_or_a_fifo_is_left_alone(tmp_path):
    """Breaks: a directory's lock file is a symbolic link (to a file nobody locks), a directory, or a
    FIFO (whose opening would block). The sweep neither follows, fails, nor waits: it leaves them."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    (tmp_path / "elsewhere").write_text(tempdirs._holder().decode() + "\n")
    odd = []
    for name, make in (("link", lambda p: p.symlink_to(tmp_path / "elsewhere")), ("dir", lambda p: p.mkdir()),
                       ("fifo", lambda p: os.mkfifo(p))):
        path = parent / f"corral-{name}"
        path.mkdir(mode=0o700)
        make(path / tempdirs.HELD)
        odd.append(path)
    assert tempdirs.sweep(str(parent)) == []
    assert all(p.is_dir() for p in odd)


def test_what_is_not_private_or_was_made_on_another_host_is_left_alone(tmp_path):
    """Breaks: a dead-looking directory that is not private (0700), or whose lock file names another
    host (a temporary directory shared between machines, whose locks may hold on each machine alone).
    Neither is this sweep's to judge."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    open_to_all = _dead_directory(parent, "corral-open")
    open_to_all.chmod(0o755)
    elsewhere = _dead_directory(parent, "corral-elsewhere", holder=b"holder some-other-host")
    assert tempdirs.sweep(str(parent)) == []
    assert open_to_all.is_dir() and elsewhere.is_dir()


def test_a_forked_child_does_not_keep_its_parents_directories(private_tmp, tmp_path):
    """Breaks: the client forks a child (a ``fork`` multiprocessing worker) that outlives it; the
    client and its workers are SIGKILLed. The child held a copy of the lock's descriptor, so the
    directory stayed locked for as long as it lived. Now a forked child lets go of its copies."""
    script = textwrap.dedent("""
        import os, sys, time, corral
        ex = corral.Executor(2)
        print(ex.submit(pow, 2, 3).result(60), ex._tmpdir, ex._shm_dir, flush=True)
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        sys.stdin.readline()
    """)
    client = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=private_tmp)
    child = None
    try:
        _, tmp, shm = client.stdout.readline().split()
        child = psutil.Process(int(client.stdout.readline()))
        os.kill(client.pid, signal.SIGSTOP)
        for p in psutil.Process(client.pid).children(recursive=True):
            if p.pid != child.pid:
                p.kill()
        client.kill()
        client.wait(TIMEOUT)
        assert child.is_running() and os.path.isdir(tmp)
        sweeper = "import corral; corral.Executor(1).shutdown()"
        subprocess.run([sys.executable, "-c", sweeper], env=private_tmp, check=True, timeout=TIMEOUT)
        assert not os.path.exists(tmp) and not os.path.exists(shm)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(TIMEOUT)
        if child is not None and child.is_running():
            child.kill()
            child.wait(TIMEOUT)


def test_an_executor_that_runs_out_of_descriptors_at_any_step_of_its_start_leaves_nothing(private_tmp, tmp_path):
    """Breaks: the process may open a few descriptors more than it has, at each count in turn, so that
    each step of an executor's start (its directories, its lock, its broker, its workers' sockets, its
    wake-up pipe) in turn finds none. Whatever fails says so, and leaves no descriptor, nor a directory
    that the next start does not remove (removing one takes descriptors too)."""
    script = textwrap.dedent("""
        import os, resource, corral
        from concurrent.futures.process import BrokenProcessPool
        base = len(os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        refused = started = 0
        for extra in range(0, 60):
            resource.setrlimit(resource.RLIMIT_NOFILE, (base + extra, hard))
            try:
                ex = corral.Executor(1)
            except (OSError, RuntimeError, corral.CorralError) as exc:
                refused += 1
            else:
                try:
                    assert ex.submit(pow, 2, 5).result(60) == 32
                except BrokenProcessPool as exc:  # its pool could start no worker: it says why, and what to do
                    assert "ulimit -n" in str(exc), exc
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                ex.shutdown()
                started += 1
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        left = len(os.listdir("/proc/self/fd")) - base
        print(refused, started, left, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], env=private_tmp, capture_output=True, text=True,
                         timeout=TIMEOUT * 4)
    assert out.returncode == 0, out.stderr[-2000:]
    refused, started, left = map(int, out.stdout.split())
    assert refused and started, "the steps of a start were not all reached"
    assert left <= 0, f"{left} descriptors left open"
    # A directory that could not be removed for want of descriptors is no longer held: the next start removes it.
    sweeper = "import corral; corral.Executor(1).shutdown()"
    subprocess.run([sys.executable, "-c", sweeper], env=private_tmp, check=True, timeout=TIMEOUT)
    for root in (tmp_path / "tmp", tmp_path / "shm"):
        assert not os.listdir(root), {name: os.listdir(root / name) for name in os.listdir(root)}


def test_corral_worker_holds_its_private_directory(private_tmp, tmp_path, broker_address):
    """Breaks: ``corral worker`` and its processes are SIGKILLed. Its private directory (launched
    workers' bootstrap, departed processes' notes) goes at the next start."""
    worker = subprocess.Popen([sys.executable, "-m", "corral", "worker", broker_address, "--processes", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=private_tmp)
    try:
        tmp = tmp_path / "tmp"
        deadline = time.monotonic() + TIMEOUT
        while not any(name.startswith("corral-") for name in os.listdir(tmp)):
            assert worker.poll() is None, worker.stderr.read()
            assert time.monotonic() < deadline, "corral worker made no private directory"
            time.sleep(0.02)
        (held,) = [tmp / name for name in os.listdir(tmp) if name.startswith("corral-")]
        assert (held / tempdirs.HELD).is_file()
        _kill_with_its_workers(worker)
        assert held.is_dir()
        sweeper = "import corral; corral.Executor(1).shutdown()"
        subprocess.run([sys.executable, "-c", sweeper], env=private_tmp, check=True, timeout=TIMEOUT)
        assert not held.exists()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(TIMEOUT)


def test_an_executor_removes_its_directories_at_shutdown():
    """The ordinary end: the held directory and its shared-memory twin go with the executor."""
    ex = corral.Executor(1)
    tmpdir, shm_dir = ex._tmpdir, ex._shm_dir
    assert os.path.isfile(os.path.join(tmpdir, tempdirs.HELD))
    ex.shutdown()
    assert not os.path.exists(tmpdir)
    assert shm_dir is None or not os.path.exists(shm_dir)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root, to give a directory to another user")
def test_another_users_directories_are_not_swept(tmp_path):
    """Breaks: another user of the machine left a dead ``corral-*`` directory (its lock unheld) in
    the shared temporary directory. Even a sweep by root leaves it: it is not ours to judge."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    theirs = parent / "corral-theirs"
    theirs.mkdir()
    (theirs / tempdirs.HELD).write_text("")
    for path in (theirs, theirs / tempdirs.HELD):
        os.chown(path, 65534, 65534)
    assert tempdirs.sweep(str(parent)) == []
    assert theirs.is_dir()
