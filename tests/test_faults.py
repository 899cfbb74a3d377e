"""Fault injection with real signals: what breaks, and that nothing is lost."""

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
from helpers import TIMEOUT, gone, kill_client_and_check_family


def slow_pid(x):
    time.sleep(0.3)
    return x, os.getpid()


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def test_sigkill_of_a_worker_mid_task_loses_nothing():
    """Breaks: one worker is SIGKILLed while running tasks. Every task still completes once."""
    with corral.Executor(2) as ex:
        futures = [ex.submit(slow_pid, i) for i in range(12)]
        deadline = time.monotonic() + 30
        while not any(f.running() for f in futures):
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.01)
        victim = next(p for p in psutil.Process().children() if "corral.worker" in " ".join(p.cmdline()))
        victim.kill()
        results = [f.result(timeout=60) for f in futures]
        assert [x for x, _ in results] == list(range(12))
        assert ex.submit(abs, -3).result(timeout=30) == 3  # the pool replaced the dead worker


def test_task_that_kills_its_process_fails_clearly_after_retries():
    """Breaks: the task SIGKILLs its own worker every time it runs."""
    with corral.Executor(2, retries=1) as ex:
        fut = ex.submit(kill_self)
        with pytest.raises(corral.WorkerLostError, match=r"SIGKILL.*ran 2 times"):
            fut.result(timeout=60)
        assert ex.submit(abs, -1).result(timeout=30) == 1


@pytest.mark.parametrize("fresh", [False, True])
def test_sigkill_of_the_client_leaves_nothing_running(tmp_path, fresh):
    """Breaks: the client process is SIGKILLed mid-map. Its broker and workers must exit within 5 s."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, corral
        ex = corral.Executor(2, fresh={fresh})
        it = ex.map(time.sleep, [0.5] * 100)
        next(it)
        print("running", flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        family = psutil.Process(proc.pid).children(recursive=True)
        assert family, "the client started no workers"
        kill_client_and_check_family(proc, family)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_client_that_exits_as_soon_as_it_made_its_executor_leaves_no_files(tmp_path):
    """Breaks: the client ends (``os._exit``) right after making its executor, before its workers can
    ask to hear of its death.  They were started before the executor was handed over, find the client
    gone as they start, remove its files and exit."""
    script = textwrap.dedent("""
        import os, psutil, corral
        ex = corral.Executor(2)
        print(ex._tmpdir, ex._shm_dir or "", *(p.pid for p in psutil.Process().children()), flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    tmpdir, shm_dir, *pids = out.stdout.split()
    assert len(pids) == 2
    deadline = time.monotonic() + TIMEOUT  # (a worker's start, on a loaded machine)
    while not all(gone(int(p)) for p in pids) or any(os.path.exists(d) for d in (tmpdir, shm_dir) if d):
        assert time.monotonic() < deadline, f"left after the client exited: {os.listdir(os.path.dirname(tmpdir))}"
        time.sleep(0.02)


def test_an_executor_is_refused_once_the_interpreter_exits(tmp_path):
    """Breaks: a program makes an executor in an atexit handler, after the executors were closed.
    Nothing would close that one: it is refused, and nothing is left."""
    script = textwrap.dedent("""
        import atexit, corral
        corral.Executor  # (imported now: an import while the interpreter exits may fail by itself)

        @atexit.register
        def late():
            try:
                corral.Executor(2)
            except RuntimeError as exc:
                print(exc, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cannot start an executor after interpreter shutdown"


def test_options_view_sets_retries_per_task():
    """Breaks: the task SIGKILLs its worker; the per-task retries decide how often it runs."""
    with corral.Executor(2, retries=3) as ex:
        view = ex.options(retries=0)
        with pytest.raises(corral.WorkerLostError, match="ran 1 time"):
            view.submit(kill_self).result(timeout=60)
        assert list(view.map(abs, [-1, -2])) == [1, 2]
        assert view.options(retries=1).submit(abs, -5).result(timeout=30) == 5


def test_options_view_rejects_unknown_and_absurd_options():
    with corral.Executor(1) as ex:
        with pytest.raises(TypeError, match="valid options: retries"):
            ex.options(colour="red")
        with pytest.raises(ValueError, match="retries"):
            ex.options(retries=-1)


def kill_my_worker():
    os.kill(os.getppid(), signal.SIGKILL)  # the supervisor that started this task process
    time.sleep(60)  # its death takes this process along (parent-death signal) before any result


def test_a_task_that_kills_its_worker_at_once_is_not_retried_forever():
    """Breaks: the task SIGKILLs its worker's supervisor before the worker can report it started."""
    with corral.Executor(2, retries=1) as ex:
        with pytest.raises(corral.WorkerLostError, match=r"SIGKILL.*ran 2 times"):
            ex.submit(kill_my_worker).result(timeout=60)
        assert ex.submit(abs, -2).result(timeout=30) == 2


def _running_children(proc: psutil.Process) -> list[psutil.Process]:
    running = []
    for child in proc.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                running.append(child)
        except psutil.NoSuchProcess:
            pass
    return running


def _wait_dead(proc: psutil.Process, seconds: float = 10) -> None:
    """Bounded wait until a process we do not parent is gone or a zombie."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {proc.pid} still running")


@pytest.mark.parametrize("victim", ["persistent", "fresh-spare", "fresh-template"])
def test_an_idle_task_process_killed_between_tasks_costs_nothing(victim):
    """Breaks: the idle task process (persistent: the one between tasks; fresh: the spare forked for
    the next task, or the template that forks them) is SIGKILLed. The next tasks run, none fails,
    none is counted as a retry."""
    fresh = victim != "persistent"
    with corral.Executor(1, fresh=fresh, retries=0) as ex:
        _, first_pid = ex.submit(slow_pid, 0).result(timeout=30)
        [supervisor] = psutil.Process().children()
        deadline = time.monotonic() + 10
        idle = []
        while not idle:  # the fresh worker forks its spare just after the result went out
            assert time.monotonic() < deadline, "no idle task process appeared"
            idle = _running_children(supervisor)  # persistent: the task process; fresh: the template
            if victim == "fresh-spare":
                idle = [p for t in idle for p in _running_children(t) if p.pid != first_pid]
            time.sleep(0.01)
        for proc in idle:
            proc.kill()
            _wait_dead(proc)
        results = [f.result(timeout=30) for f in [ex.submit(slow_pid, i) for i in range(1, 4)]]
        assert [x for x, _ in results] == [1, 2, 3]
        assert all(pid not in {p.pid for p in idle} for _, pid in results)


def test_absurd_max_workers_is_refused_before_anything_starts():
    """max_workers=10**6 would fork until the system refuses: refused at construction instead,
    saying how many this system allows; nothing is started, nothing left on disk."""
    with pytest.raises(ValueError, match=r"max_workers=1,000,000: .* would start about .* ask for fewer workers"):
        corral.Executor(max_workers=10**6)
    with pytest.raises(ValueError, match="ask for fewer workers"):
        corral.Executor(max_workers=10**6, fresh=True)


CLIENT_WITHOUT_ROOM = """
import corral
ex = corral.Executor(4)
try:
    ex.submit(abs, -1).result(30)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
try:
    ex.submit(abs, -1)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
ex.shutdown()
print("done", flush=True)
"""


def _pids_cgroup_root() -> str | None:
    """Where a cgroup v1 pids controller is mounted, if we may make cgroups in it."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, where, kind, options = line.split()[:4]
                if kind == "cgroup" and "pids" in options.split(",") and os.access(where, os.W_OK):
                    return where
    except OSError:
        pass
    return None


def _run_confined(script: str, pids: int) -> subprocess.CompletedProcess:
    """Run ``script`` in a pids cgroup of its own that allows ``pids`` threads and processes in all
    (the system then refuses more), or skip."""
    root = _pids_cgroup_root()
    if root is None:
        pytest.skip("no writable cgroup v1 pids controller to make the system refuse processes")
    group = os.path.join(root, f"corral-test-{os.getpid()}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write(str(pids))

        def confined():
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write("0")

        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              preexec_fn=confined)
    finally:
        os.rmdir(group)


def test_workers_the_system_refuses_break_the_executor_cleanly(tmp_path):
    """When not one worker process can start (the system refuses a new process: here a pids
    cgroup that allows the client's own two threads and nothing more), every future fails saying
    why, later submits raise, shutdown returns, and nothing is left on disk or running."""
    out = _run_confined(CLIENT_WITHOUT_ROOM, 2)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines and lines[-1] == "done", (out.stdout, out.stderr)
    assert lines[0].startswith("BrokenProcessPool") and "could not start a worker process" in lines[0], lines
    assert lines[1].startswith("BrokenProcessPool"), lines


CLIENT_WITHOUT_A_THREAD = """
import corral
try:
    corral.Executor(2)
except RuntimeError as exc:
    print(exc, flush=True)
print("done", flush=True)
"""


def test_an_io_thread_the_system_refuses_fails_the_constructor_cleanly(tmp_path):
    """The system refuses the executor's I/O thread (a pids cgroup with room for the client's main
    thread alone): the constructor raises saying why, and the program ends cleanly, leaving nothing
    (it joined a thread never started at exit, and kept the executor's directories)."""
    out = _run_confined(CLIENT_WITHOUT_A_THREAD, 1)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines and lines[-1] == "done", (out.stdout, out.stderr)
    assert "could not start its I/O thread" in lines[0] and "pids.max" in lines[0], lines
    assert "Traceback" not in out.stderr, out.stderr
