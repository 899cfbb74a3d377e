"""Worker processes: fresh isolation, recycling, initializers, environment, sockets, summary."""

from __future__ import annotations

import collections
import importlib
import multiprocessing
import os
import socket
import stat
import sys
import time

import psutil
import pytest

from helpers import TIMEOUT, held_sockets

MUTATED = False
INIT_VALUE = None


# -- task functions ------------------------------------------------------------------


def getpid():
    return os.getpid()


def mutate_process():
    """Change this process's state in three ways; report what it was before."""
    global MUTATED
    before = (MUTATED, os.environ.get("CORRAL_TEST_MUTATION"), "wave" in sys.modules)
    MUTATED = True
    os.environ["CORRAL_TEST_MUTATION"] = "mutated"
    import wave  # noqa: F401 - imported for its side effect on sys.modules

    return os.getpid(), before


def observe_process():
    return os.getpid(), (MUTATED, os.environ.get("CORRAL_TEST_MUTATION"), "wave" in sys.modules)


def record_initialization(path, value):
    global INIT_VALUE
    INIT_VALUE = value
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def get_init_value():
    time.sleep(0.01)
    return os.getpid(), INIT_VALUE


def probe_environment(module_name):
    module = importlib.import_module(module_name)
    return os.getcwd(), os.environ.get("CORRAL_TEST_ENV"), module.VALUE


def fail():
    raise ValueError("counted as an error")


# -- fresh workers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"fresh": True}, {"max_tasks_per_child": 1}], ids=["fresh", "max_tasks_per_child=1"]
)
def test_fresh_tasks_are_isolated(make_executor, kwargs):
    ex = make_executor(1, **kwargs)
    pid1, before = ex.submit(mutate_process).result(TIMEOUT)
    assert before == (False, None, False)
    pid2, seen = ex.submit(observe_process).result(TIMEOUT)
    assert seen == (False, None, False)
    pids = [ex.submit(getpid).result(TIMEOUT) for _ in range(4)]
    assert len({pid1, pid2, *pids}) == 6
    assert os.getpid() not in pids


def leave_a_thread_running():
    import threading

    threading.Thread(target=time.sleep, args=(60,)).start()  # not a daemon: a normal exit would wait for it
    return os.getpid()


@pytest.mark.parametrize(
    "kwargs", [{}, {"mp_context": multiprocessing.get_context("spawn")}], ids=["forked", "spawned"]
)
def test_a_fresh_task_process_leaves_without_waiting_for_its_threads(make_executor, kwargs):
    """A fresh task process ends as soon as its task is answered, as os._exit() would: no atexit
    handlers, no joining the threads its task left running."""
    ex = make_executor(1, fresh=True, **kwargs)
    pids = [ex.submit(leave_a_thread_running).result(TIMEOUT) for _ in range(2)]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
        assert time.monotonic() < deadline, "a task process waited for the thread its task started"
        time.sleep(0.02)


def test_persistent_worker_keeps_state(make_executor):
    """The contrast case, showing the isolation test above can fail."""
    ex = make_executor(1)
    pid1, before = ex.submit(mutate_process).result(TIMEOUT)
    assert before == (False, None, False)
    pid2, seen = ex.submit(observe_process).result(TIMEOUT)
    assert pid1 == pid2
    assert seen == (True, "mutated", True)


def test_max_tasks_per_child_recycles_persistent_workers(make_executor):
    ex = make_executor(1, max_tasks_per_child=2)
    assert not ex._fresh
    pids = [f.result(TIMEOUT) for f in [ex.submit(getpid) for _ in range(6)]]
    counts = collections.Counter(pids)
    assert len(counts) == 3
    assert set(counts.values()) == {2}
    # Sequential submits recycle the same way.
    more = [ex.submit(getpid).result(TIMEOUT) for _ in range(4)]
    assert len(set(more)) == 2
    assert not set(more) & set(pids)


# -- initializer ----------------------------------------------------------------------------


def test_initializer_runs_once_per_persistent_worker(make_executor, tmp_path):
    log = tmp_path / "init.log"
    ex = make_executor(2, initializer=record_initialization, initargs=(str(log), "ready"))
    results = [f.result(TIMEOUT) for f in [ex.submit(get_init_value) for _ in range(40)]]
    assert {value for _, value in results} == {"ready"}
    ex.shutdown(wait=True)
    initialized = [int(line) for line in log.read_text().split()]
    assert len(initialized) == len(set(initialized)) <= 2, "an initializer ran twice in one worker"
    assert {pid for pid, _ in results} <= set(initialized)


def test_initializer_runs_in_every_fresh_task_process(make_executor, tmp_path):
    # As with ProcessPoolExecutor(max_tasks_per_child=1): each new process initializes itself,
    # and the supervisor it is forked from runs no user code.
    log = tmp_path / "init.log"
    ex = make_executor(1, fresh=True, initializer=record_initialization, initargs=(str(log), "set"))
    results = [ex.submit(get_init_value).result(TIMEOUT) for _ in range(4)]
    assert [value for _, value in results] == ["set"] * 4
    ex.shutdown(wait=True)
    initialized = [int(line) for line in log.read_text().split()]
    assert sorted(initialized) == sorted(pid for pid, _ in results)


# -- what workers inherit ----------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_workers_get_cwd_env_and_sys_path(make_executor, tmp_path, monkeypatch, fresh):
    module_name = f"corral_probe_{os.getpid()}_{int(fresh)}"
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / f"{module_name}.py").write_text("VALUE = 'from the probe module'\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CORRAL_TEST_ENV", "set before the executor")
    monkeypatch.syspath_prepend(str(libdir))
    ex = make_executor(1, fresh=fresh)
    cwd, env, value = ex.submit(probe_environment, module_name).result(TIMEOUT)
    assert os.path.samefile(cwd, workdir)
    assert env == "set before the executor"
    assert value == "from the probe module"
    ex.shutdown(wait=True)
    sys.modules.pop(module_name, None)


def print_twice(i):
    print(f"line {i} from a task")
    print(f"no newline {i};", end="")
    return i


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fresh": True}, {"mp_context": multiprocessing.get_context("spawn")}],
    ids=["persistent", "fresh", "spawn"],
)
def test_what_a_task_prints_comes_out_before_its_result(make_executor, monkeypatch, capfd, kwargs):
    # Without PYTHONUNBUFFERED a task process's stdout (a file here) is block-buffered:
    # a task process that left without flushing it would lose the output.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    ex = make_executor(1, **kwargs)
    for i in range(3):
        assert ex.submit(print_twice, i).result(TIMEOUT) == i
        out = capfd.readouterr().out
        assert f"line {i} from a task" in out and f"no newline {i};" in out
    ex.shutdown(wait=True)


class NoFlush:
    def write(self, text):
        return len(text)


def replace_stdout_and_stderr(i):
    import sys

    sys.stdout, sys.stderr = NoFlush(), None  # what corral flushes after the task is not a file
    return i, os.getpid()


def test_a_task_that_replaces_stdout_does_not_break_its_process(make_executor):
    ex = make_executor(1, retries=0)
    results = [ex.submit(replace_stdout_and_stderr, i).result(TIMEOUT) for i in range(3)]
    assert [i for i, _ in results] == [0, 1, 2]
    assert len({pid for _, pid in results}) == 1, "the task process died after a task"


# -- sockets ------------------------------------------------------------------------------------


def _inet_sockets(proc: psutil.Process):
    getter = getattr(proc, "net_connections", None) or proc.connections
    return getter(kind="inet")


def test_embedded_broker_listens_nowhere(make_executor):
    ex = make_executor(2)
    assert all(f.result(TIMEOUT) for f in [ex.submit(getpid) for _ in range(8)])
    tmpdir = ex._tmpdir
    assert stat.S_IMODE(os.stat(tmpdir).st_mode) == 0o700
    # The client calls its embedded broker in-process; each worker reaches it over a socket
    # pair made when the worker started: no ZeroMQ socket, no socket file, nothing to connect to.
    assert ex._broker.routers == []
    assert len(ex._broker.paired) == 2
    sockets = [name for name in os.listdir(tmpdir) if stat.S_ISSOCK(os.stat(os.path.join(tmpdir, name)).st_mode)]
    assert not sockets, f"socket files in the private directory: {sockets}"

    me = psutil.Process()
    workers = me.children(recursive=True)
    assert workers, "no worker processes found"
    for proc in [me, *workers]:
        listening = [c for c in _inet_sockets(proc) if c.status == psutil.CONN_LISTEN]
        assert not listening, f"{proc.pid} listens on {listening}"
    for proc in workers:
        assert not _inet_sockets(proc), f"worker {proc.pid} has inet sockets"
    ex.shutdown(wait=True)
    assert not os.path.exists(tmpdir)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_a_task_process_holds_no_socket_but_its_own(make_executor, fresh):
    """User code cannot reach its worker's connection to the broker: a task process inherits none
    of its supervisor's descriptors but stdio, only its own socket to its supervisor and (persistent)
    its lane, which carries its own tasks and results."""
    ex = make_executor(1, fresh=fresh)
    results = [ex.submit(held_sockets).result(TIMEOUT) for _ in range(3)]
    [supervisor] = psutil.Process().children()
    for held in results:
        types = [kind for _, kind in held]
        assert types == ([socket.SOCK_STREAM] if fresh else [socket.SOCK_STREAM, socket.SOCK_SEQPACKET]), held
        shared = {target for target, _ in held} & _descriptor_targets(supervisor.pid)
        assert shared == (set() if fresh else {held[1][0]}), f"shares {shared} with its supervisor"


def _descriptor_targets(pid: int) -> set[str]:
    """What a process's descriptors point at (``socket:[inode]`` for a socket)."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return found


# -- summary ------------------------------------------------------------------------------------


def test_summary(make_executor):
    ex = make_executor(2)
    pids = {f.result(TIMEOUT) for f in [ex.submit(getpid) for _ in range(10)]}
    with pytest.raises(ValueError):
        ex.submit(fail).result(TIMEOUT)
    summary = ex.summary()
    assert isinstance(summary, list)
    assert summary and all(isinstance(row, dict) for row in summary)
    for row in summary:
        assert {"worker", "host", "pid", "tasks", "busy_s", "errors"} <= set(row)
    assert sum(row["tasks"] for row in summary) == 11
    assert sum(row["errors"] for row in summary) == 1
    # Tasks run in task processes that the workers (their supervisors) started.
    assert {psutil.Process(pid).ppid() for pid in pids} <= {row["pid"] for row in summary}
    assert all(row["busy_s"] >= 0 for row in summary)
    text = str(summary)
    lines = text.splitlines()
    for column in ("worker", "host", "pid", "tasks", "busy s", "errors"):
        assert column in lines[0]
    for row in summary:
        assert str(row["pid"]) in text
    assert "11 tasks" in lines[-1]
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.summary()
