"""A task's processes are the task's: what a task starts ends with its task process.

Tasks here start processes of their own (a forked child that outlives the task, a
``subprocess.Popen``, a child that leaves the process group, a daemon that double-forks)
and the tests check that nothing they started outlives what the documentation promises,
and that none of it can wedge a worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import corral
from corral.worker import containment
from helpers import gone, wait_for

MODES = {
    "persistent": {},  # a lane: tasks straight from the broker to the task process
    "supervised": {"max_tasks_per_child": 1000},  # no lane: the supervisor hands each task over
    "fresh": {"fresh": True},
}


def fork_and_return():
    """Fork a child that outlives the task (and holds the task process's descriptors)."""
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    return child


def fork_then_die():
    """Fork such a child, then die without answering."""
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
    os._exit(1)


def fork_then_sleep(seconds):
    fork_and_return()
    time.sleep(seconds)


def popen_sleep(new_session=False):
    return subprocess.Popen(["sleep", "120"], start_new_session=new_session).pid


def popen_then_sleep(seconds, path):
    with open(path, "w") as f:
        f.write(str(popen_sleep(new_session=True)))
    time.sleep(seconds)


def daemon(path):
    """Double-fork a daemon in a session of its own, as daemonizing code does; return at once."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(120)
        os._exit(0)
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(open(path).read())


def alive(pid):
    return not gone(pid)


def read_pid(path):
    return int(path.read_text()) if path.exists() and path.read_text() else None


@pytest.mark.parametrize("mode", MODES)
def test_a_forked_child_that_outlives_its_task_does_not_wedge_the_worker(make_executor, mode):
    """The worker learns of its task process's end from the process, not from a socket the
    child still holds: a later death, timeout and kill each end their task, and shutdown returns."""
    ex = make_executor(1, **MODES[mode])
    child = ex.submit(fork_and_return).result(30)
    assert alive(child) or mode == "fresh"  # fresh: gone with its task process (below)
    fut = ex.options(retries=0).submit(fork_then_die)
    with pytest.raises(corral.WorkerLostError, match="exited with code 1"):
        fut.result(15)
    with pytest.raises(corral.TaskTimeoutError):
        ex.options(timeout=0.5).submit(fork_then_sleep, 60).result(15)
    fut = ex.submit(fork_then_sleep, 60)
    wait_for(fut.running, 15, "the task to start")
    assert fut.kill(grace=0.2)
    wait_for(fut.done, 15, "the killed task to end")
    assert ex.submit(abs, -3).result(15) == 3
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < 10
    wait_for(lambda: gone(child), 5, "the forked child to end")


def test_a_fresh_task_that_forks_and_dies_is_reported_at_once(make_executor):
    ex = make_executor(1, fresh=True)
    with pytest.raises(corral.WorkerLostError, match="exited with code 1"):
        ex.options(retries=0).submit(fork_then_die).result(15)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("new_session", [False, True], ids=["in-group", "own-session"])
def test_popen_children_end_with_the_task_process(make_executor, mode, new_session):
    ex = make_executor(1, **MODES[mode])
    pid = ex.submit(popen_sleep, new_session).result(30)
    if mode == "fresh":  # each task process ends with its task: so does what it started
        wait_for(lambda: gone(pid), 5, "a fresh task's child to end after its task")
    else:  # a persistent task process's children live as long as it does
        assert ex.submit(alive, pid).result(30)
    ex.shutdown(wait=True)
    wait_for(lambda: gone(pid), 5, "the task's child to end at shutdown")


@pytest.mark.parametrize("mode", MODES)
def test_a_daemon_a_task_starts_ends_with_its_task_process(make_executor, mode, tmp_path):
    ex = make_executor(1, **MODES[mode])
    pid = ex.submit(daemon, str(tmp_path / "daemon.pid")).result(30)
    if mode == "fresh":
        wait_for(lambda: gone(pid), 5, "a fresh task's daemon to end after its task")
    else:
        assert alive(pid)
    ex.shutdown(wait=True)
    wait_for(lambda: gone(pid), 5, "the task's daemon to end at shutdown")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stop", ["timeout", "kill"])
def test_a_stopped_task_takes_its_children_along(make_executor, mode, stop, tmp_path):
    """Timed out or killed while a child (in a session of its own) runs: the child goes too."""
    ex = make_executor(1, **MODES[mode])
    path = tmp_path / "child.pid"
    if stop == "timeout":
        fut = ex.options(timeout=1).submit(popen_then_sleep, 60, str(path))
        with pytest.raises(corral.TaskTimeoutError):
            fut.result(20)
    else:
        fut = ex.submit(popen_then_sleep, 60, str(path))
        pid = wait_for(lambda: read_pid(path), 15, "the task's child")
        assert fut.kill(grace=0.5)
        wait_for(fut.done, 15, "the killed task to end")
    pid = read_pid(path)
    wait_for(lambda: gone(pid), 5, "the stopped task's child to end")
    assert ex.submit(abs, -1).result(15) == 1  # the worker carries on


def test_a_task_child_in_another_session_dies_with_a_sigkilled_worker(make_executor, tmp_path):
    """Even a SIGKILL of the worker's supervisor, which can stop nothing, leaves nothing: its
    cgroup (where the machine allows one) is stopped by the pool that started the worker."""
    ex = make_executor(1)
    supervisor = wait_for(lambda: next(iter(psutil.Process(os.getpid()).children()), None), 10, "the worker")
    cgroup = containment.Cgroup.path_for(supervisor.pid)
    if cgroup is None:
        pytest.skip("no writable cgroup v2 here: a SIGKILLed supervisor's strays outlive it")
    # The worker moves into its cgroup a moment after it starts (tuning.CGROUP_DELAY).
    wait_for(lambda: os.path.isdir(cgroup), 10, "the worker's cgroup")
    path = tmp_path / "child.pid"
    fut = ex.options(retries=0).submit(popen_then_sleep, 60, str(path))
    pid = wait_for(lambda: read_pid(path), 15, "the task's child")
    supervisor.kill()
    wait_for(lambda: gone(pid), 5, "the task's child to end with its SIGKILLed worker")
    with pytest.raises(corral.WorkerLostError):
        fut.result(30)


def test_nothing_of_a_worker_is_left_in_its_cgroup(make_executor):
    """A worker removes its cgroup when it leaves, and the pool removes one a killed worker left."""
    ex = make_executor(2)
    assert ex.submit(abs, -1).result(30) == 1
    workers = [p.pid for p in psutil.Process(os.getpid()).children()]
    paths = [containment.Cgroup.path_for(pid) for pid in workers]
    if paths[0] is None:
        pytest.skip("no writable cgroup v2 here")
    wait_for(lambda: all(os.path.isdir(p) for p in paths), 10, "each worker's cgroup")
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: not os.path.isdir(paths[0]), 5, "the killed worker's cgroup to be removed")
    ex.shutdown(wait=True)
    assert not any(os.path.isdir(p) for p in paths)


CLIENT = """
import sys, time, corral
sys.path.insert(0, {tests!r})
import test_containment
ex = corral.Executor(2, fresh={fresh})
fut = ex.submit(test_containment.popen_then_sleep, 60, {path!r})
while not fut.running():
    time.sleep(0.01)
print(ex._tmpdir, ex._shm_dir, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("how", ["SIGTERM to the process group", "SIGKILL to the client"])
def test_a_client_killed_with_its_workers_leaves_nothing(tmp_path, fresh, how):
    """What ``timeout``, a batch system or a shell does: the client and its workers are signalled
    together (or the client alone is SIGKILLed).  Nothing of ours stays on disk or running:
    not the client's private directories, not a process a task started in a session of its own."""
    path = tmp_path / "child.pid"
    script = CLIENT.format(tests=os.path.dirname(__file__), fresh=fresh, path=str(path))
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        dirs = client.stdout.readline().split()
        assert len(dirs) == 2 and all(os.path.isdir(d) for d in dirs), dirs
        pid = wait_for(lambda: read_pid(path), 15, "the task's child")
        family = psutil.Process(client.pid).children(recursive=True)
        if how.startswith("SIGTERM"):
            os.killpg(client.pid, signal.SIGTERM)
        else:
            client.kill()
        client.wait(10)
        _, alive_left = psutil.wait_procs(family, timeout=5)
        assert not alive_left, f"still running 5 s after the client died: {alive_left}"
        wait_for(lambda: gone(pid), 5, "the task's child to end")
        wait_for(lambda: not any(os.path.exists(d) for d in dirs), 5, "the client's directories to go")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)
