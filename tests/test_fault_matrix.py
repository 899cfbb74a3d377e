"""The fault-injection matrix: every place a task can fail, with real processes and signals.

A task's life has five places where it can go wrong::

    client: pickle the call --> worker: unpickle it --> run it --> pickle the result --> client: unpickle it

For each place we inject: an exception, ``sys.exit()``, ``os._exit()`` and a
segfault (where they can happen there).  Every case must give a clear
exception of the right type within seconds, leave the executor usable (except
a failing initializer, which breaks it as the stdlib's does), and leave no
process behind (the autouse ``no_leaks`` fixture of conftest.py checks that).
Then come crashes at awkward moments: during ``shutdown(wait=True)``, while
large payloads are queued, and of the supervisor itself.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import zlib
from concurrent.futures import wait
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

import corral
from helpers import TIMEOUT, gone, wait_for, wait_for_file

FAST = 10  # a failure must be reported within this many seconds (generous: 2 shared cores)


# -- task functions and pickling booby traps (module level: pickled by reference) ----------


def square(x):
    return x * x


def identity(x):
    return x


def raise_value_error(a, b):
    raise ValueError(a, b)


def call_sys_exit(code):
    sys.exit(code)


def call_os_exit(code):
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def raise_stop_iteration(value):
    raise StopIteration(value)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt("pressed in the task")


def recurse_forever(n=0):
    return recurse_forever(n + 1) + 1


class Reconstructs:
    """Pickles as ``fn(*args)``: what that call does happens wherever it is unpickled."""

    def __init__(self, fn, *args):
        self.fn = fn
        self.args = args

    def __reduce__(self):
        return (self.fn, self.args)


def fail_to_load(message):
    raise ValueError(message)


# Arguments that do something nasty where they are unpickled: in the task process.
LOAD_BOMBS = {
    "raises": Reconstructs(fail_to_load, "refuses to be unpickled"),
    "sys_exit": Reconstructs(sys.exit, 3),
    "os_exit": Reconstructs(os._exit, 3),
    "segfault": Reconstructs(ctypes.string_at, 0),
}


class ReduceRaises:
    def __reduce__(self):
        raise ValueError("refuses to be pickled")


class ReduceExits:
    def __reduce__(self):
        sys.exit(4)


class ReduceSegfaults:
    def __reduce__(self):
        ctypes.string_at(0)


class LockHolder:
    def __init__(self):
        self.name = "holder"
        self.lock = threading.Lock()


def return_reduce_raises():
    return ReduceRaises()


def return_reduce_exits():
    return ReduceExits()


def return_reduce_segfaults():
    return ReduceSegfaults()


def return_lock_holder():
    return LockHolder()


def return_generator():
    return (i for i in range(3))


def return_local_class_with_lambda():
    """Plain pickle refuses this (a local class, a lambda); cloudpickle sends both by value."""

    class Local:
        def __init__(self):
            self.double = lambda v: 2 * v

    return Local()


def load_unless_in(pid, value):
    """Unpickles to ``value`` in any process but ``pid``, where it raises."""
    if os.getpid() == pid:
        raise RuntimeError(f"this result refuses to be unpickled in process {pid}")
    return value


def exit_if_in(pid, value):
    if os.getpid() == pid:
        sys.exit(5)
    return value


def return_client_bomb(client_pid, how):
    return Reconstructs(how, client_pid, "fine elsewhere")


class ClientOnlyError(Exception):
    """An exception that pickles in the worker but cannot be unpickled in the client."""

    def __init__(self, client_pid):
        super().__init__(client_pid)
        self.client_pid = client_pid

    def __reduce__(self):
        return (load_unless_in, (self.client_pid, ValueError("fine elsewhere")))


def raise_client_only_error(client_pid):
    raise ClientOnlyError(client_pid)


def failing_initializer():
    raise RuntimeError("initializer failed on purpose")


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def sleep_then_sigkill(seconds):
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)


def my_supervisor() -> int:
    """The pid of the supervisor running us: our parent, or a fresh task's grandparent (its template forked us)."""
    proc = psutil.Process(os.getppid())
    while True:
        parent = proc.parent()
        if parent is None or not any("corral.worker" in part for part in parent.cmdline()):
            return proc.pid
        proc = parent


def sleep_then_kill_supervisor(seconds):
    """Kill our supervisor; we follow it through the parent-death signal."""
    time.sleep(seconds)
    os.kill(my_supervisor(), signal.SIGKILL)
    time.sleep(30)


def checksum(payload, kill_marker=None):
    """CRC of a large payload; with ``kill_marker``, SIGKILL our own process the first time only."""
    if kill_marker is not None and not os.path.exists(kill_marker):
        with open(kill_marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return len(payload), zlib.crc32(payload)


def report_then_wait(marker, seconds):
    """First run: say who we are, then wait to be killed.  A retry returns at once."""
    if os.path.exists(marker):
        return "retried", os.getpid(), my_supervisor()
    with open(marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {my_supervisor()}")
    os.rename(marker + ".tmp", marker)
    time.sleep(seconds)
    return "not killed", os.getpid(), my_supervisor()


def started_then_finish(marker, seconds):
    """Say who we are, run a while, say we are done, return."""
    with open(marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {os.getppid()}")
    os.rename(marker + ".tmp", marker)
    time.sleep(seconds)
    with open(marker + ".done", "w") as f:
        f.write("done")
    return os.getpid(), os.getppid()


def pid_and_parent():
    return os.getpid(), os.getppid()


# -- helpers ---------------------------------------------------------------------------------


def assert_usable(ex):
    assert ex.submit(square, 7).result(timeout=TIMEOUT) == 49
    assert list(ex.map(square, range(4), timeout=TIMEOUT)) == [0, 1, 4, 9]


def failure_of(fut, expected):
    """The exception of ``fut``, which must be an ``expected`` and come within FAST seconds."""
    start = time.monotonic()
    with pytest.raises(expected) as info:
        fut.result(timeout=TIMEOUT)
    assert time.monotonic() - start < FAST, f"took {time.monotonic() - start:.1f} s to fail"
    return info.value


def worker_processes() -> list[psutil.Process]:
    """Our descendants running corral.worker: supervisors, and the task processes they fork."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("corral.worker" in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


# -- 1. pickling the call in the client -------------------------------------------------------------


@pytest.mark.parametrize(
    "arg, where",
    [
        (threading.Lock(), "task.args[0]"),
        ((i for i in range(3)), "task.args[0]"),
        (LockHolder(), "task.args[0].lock"),
        ({"inner": [1, threading.Lock()]}, "task.args[0]['inner'][1]"),
    ],
    ids=["lock", "generator", "attribute", "nested"],
)
def test_unpicklable_argument(mode_executor, arg, where):
    ex = mode_executor(1)
    fut = ex.submit(identity, arg)
    assert fut.done(), "a pickling error in the client fails the future at once"
    exc = failure_of(fut, corral.SerializationError)
    assert type(exc) is corral.SerializationError
    assert where in str(exc)
    assert exc.__cause__ is not None
    with pytest.raises(corral.SerializationError):
        list(ex.map(identity, [1, arg, 3], timeout=TIMEOUT))
    assert_usable(ex)


# -- 2. unpickling the call in the worker -------------------------------------------------------------


@pytest.mark.parametrize("bomb", ["raises", "sys_exit"])
def test_argument_that_fails_to_unpickle_in_the_worker(mode_executor, bomb):
    ex = mode_executor(1)
    fut = ex.options(retries=0).submit(identity, LOAD_BOMBS[bomb])
    exc = failure_of(fut, corral.DeserializationError)
    assert isinstance(exc, BrokenProcessPool)  # as ProcessPoolExecutor says it
    assert "cannot unpickle the task in the worker" in str(exc)
    expected = "ValueError: refuses to be unpickled" if bomb == "raises" else "SystemExit: 3"
    assert expected in str(exc)
    assert_usable(ex)


@pytest.mark.parametrize("bomb, how", [("os_exit", "exited with code 3"), ("segfault", "killed by SIGSEGV")])
def test_argument_that_kills_the_worker_when_unpickled(mode_executor, bomb, how):
    ex = mode_executor(1)
    fut = ex.options(retries=0).submit(identity, LOAD_BOMBS[bomb])
    exc = failure_of(fut, corral.WorkerLostError)
    assert how in str(exc)
    assert "ran 1 time" in str(exc)
    assert_usable(ex)


# -- 3. running it ----------------------------------------------------------------------------------------


def test_task_raises(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(raise_value_error, "a", 2), ValueError)
    assert type(exc) is ValueError
    assert exc.args == ("a", 2)
    text = "".join(traceback.format_exception(exc))
    assert "raise_value_error" in text and "raise ValueError(a, b)" in text  # the worker's frames
    assert_usable(ex)


def test_task_calls_sys_exit(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(call_sys_exit, 3), SystemExit)
    assert exc.args == (3,)
    assert_usable(ex)


@pytest.mark.parametrize("fn, arg, attribute", [(call_sys_exit, 3, "code"), (raise_stop_iteration, 5, "value")],
                         ids=["SystemExit.code", "StopIteration.value"])
def test_exception_attributes_survive_the_trip(make_executor, fn, arg, attribute):
    ex = make_executor(1)
    exc = ex.submit(fn, arg).exception(timeout=TIMEOUT)
    assert exc.args == (arg,)
    assert getattr(exc, attribute) == arg  # what ProcessPoolExecutor gives


def test_task_raises_keyboard_interrupt(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(raise_keyboard_interrupt), KeyboardInterrupt)
    assert exc.args == ("pressed in the task",)
    assert_usable(ex)


def test_task_recurses_forever_fails_fast_and_says_so(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(recurse_forever), (RecursionError, corral.SerializationError))
    text = "".join(traceback.format_exception(exc))
    assert "RecursionError" in text and "recurse_forever" in text
    assert_usable(ex)


def test_task_recursion_error_keeps_its_type(make_executor):
    ex = make_executor(1)
    exc = ex.submit(recurse_forever).exception(timeout=TIMEOUT)
    assert type(exc) is RecursionError  # what ProcessPoolExecutor gives
    assert "recurse_forever" in "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    "fn, args, how",
    [
        (call_os_exit, (3,), "exited with code 3"),
        (segfault, (), "killed by SIGSEGV"),
        (sigkill_self, (), "killed by SIGKILL"),
    ],
    ids=["os_exit", "segfault", "sigkill"],
)
def test_task_kills_its_process(mode_executor, fn, args, how):
    ex = mode_executor(1)
    exc = failure_of(ex.options(retries=0).submit(fn, *args), corral.WorkerLostError)
    assert isinstance(exc, BrokenProcessPool)
    message = str(exc)
    assert how in message
    assert "ran 1 time" in message
    assert "worker" in message and "task process" in message
    assert any(char.isdigit() for char in message.split("task process", 1)[1][:12]), "names the pid"
    assert_usable(ex)


def test_task_that_kills_its_process_is_retried_then_fails(make_executor):
    ex = make_executor(2)  # default retries: 2
    exc = failure_of(ex.submit(segfault), corral.WorkerLostError)
    assert "killed by SIGSEGV" in str(exc)
    assert "ran 3 times" in str(exc)
    assert_usable(ex)


# -- 4. pickling the result ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, names",
    [
        (return_reduce_raises, ["the result of return_reduce_raises()", "refuses to be pickled"]),
        (return_lock_holder, ["the result of return_lock_holder().lock", "lock"]),
        (return_generator, ["the result of return_generator()", "generator"]),
    ],
    ids=["reduce_raises", "lock_attribute", "generator"],
)
def test_result_that_fails_to_pickle(mode_executor, fn, names):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(fn), corral.SerializationError)
    assert not isinstance(exc, corral.DeserializationError)
    for name in names:
        assert name in str(exc)
    assert_usable(ex)


def test_result_whose_reduce_calls_sys_exit(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(return_reduce_exits), SystemExit)
    assert exc.args == (4,)
    assert_usable(ex)


def test_result_whose_reduce_segfaults(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.options(retries=0).submit(return_reduce_segfaults), corral.WorkerLostError)
    assert "killed by SIGSEGV" in str(exc)
    assert_usable(ex)


def test_result_of_a_local_class_with_a_lambda_travels_by_value(mode_executor):
    ex = mode_executor(1)
    result = ex.submit(return_local_class_with_lambda).result(timeout=TIMEOUT)
    assert type(result).__name__ == "Local"
    assert result.double(21) == 42
    assert_usable(ex)


# -- 5. unpickling the result in the client -----------------------------------------------------------------


@pytest.mark.parametrize("how, cause", [(load_unless_in, RuntimeError), (exit_if_in, SystemExit)],
                         ids=["raises", "sys_exit"])
def test_result_that_fails_to_unpickle_in_the_client(mode_executor, how, cause):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(return_client_bomb, os.getpid(), how), corral.DeserializationError)
    assert isinstance(exc, BrokenProcessPool)
    assert "cannot unpickle the result" in str(exc)
    assert isinstance(exc.__cause__, cause)
    # The same object unpickles fine in any other process: it travelled intact as far as the client.
    assert ex.submit(return_client_bomb, os.getpid() + 10**7, load_unless_in).result(TIMEOUT) == "fine elsewhere"
    assert_usable(ex)


def test_exception_that_fails_to_unpickle_in_the_client(mode_executor):
    ex = mode_executor(1)
    exc = failure_of(ex.submit(raise_client_only_error, os.getpid()), corral.DeserializationError)
    assert "cannot unpickle the exception raised by the task" in str(exc)
    assert "refuses to be unpickled" in str(exc)
    assert_usable(ex)


# -- 6. an initializer that raises ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "initializer, initargs, says",
    [(failing_initializer, (), "initializer failed on purpose"), (os._exit, (3,), "code 3")],
    ids=["raises", "os_exit"],
)
def test_failing_initializer_breaks_pending_and_later_submits(mode_executor, initializer, initargs, says):
    ex = mode_executor(2, initializer=initializer, initargs=initargs)
    pending = [ex.submit(square, i) for i in range(6)]
    for fut in pending:
        exc = failure_of(fut, BrokenProcessPool)
        assert says in str(exc)
    for _ in range(2):
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 1).result(timeout=TIMEOUT)
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < FAST


# -- 7. done-callbacks that raise or exit ----------------------------------------------------------------------------


def test_done_callbacks_that_raise_or_exit_do_not_stop_the_executor(mode_executor):
    ex = mode_executor(2)
    ran = []

    def raising(fut):
        ran.append("raising")
        raise RuntimeError("a callback failed on purpose")

    def exiting(fut):
        ran.append("exiting")
        if threading.current_thread() is not threading.main_thread():
            sys.exit(9)  # never in the test's own thread, should the future be done already

    first = ex.submit(sleep_then, 0.5, "first")
    first.add_done_callback(raising)
    second = ex.submit(sleep_then, 0.5, "second")
    second.add_done_callback(exiting)
    others = [ex.submit(sleep_then, 0.05, i) for i in range(10)]
    assert first.result(timeout=TIMEOUT) == "first"
    assert second.result(timeout=TIMEOUT) == "second"
    assert [f.result(timeout=TIMEOUT) for f in others] == list(range(10))
    deadline = time.monotonic() + FAST
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(ran) == ["exiting", "raising"]
    assert_usable(ex)
    later = ex.submit(square, 3)
    later.add_done_callback(exiting)
    assert later.result(timeout=TIMEOUT) == 9
    assert_usable(ex)


# -- 8. a worker crash during shutdown(wait=True) --------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["task_process", "supervisor"])
def test_crash_during_shutdown_wait(mode_executor, victim):
    ex = mode_executor(2)
    others = [ex.submit(sleep_then, 0.2, i) for i in range(8)]
    crasher = sleep_then_sigkill if victim == "task_process" else sleep_then_kill_supervisor
    crashing = ex.options(retries=0).submit(crasher, 0.3)
    start = time.monotonic()
    ex.shutdown(wait=True)
    elapsed = time.monotonic() - start
    assert elapsed < 30, f"shutdown(wait=True) took {elapsed:.1f} s"
    assert all(f.done() for f in [*others, crashing])
    assert [f.result(timeout=0) for f in others] == list(range(8))
    exc = failure_of(crashing, corral.WorkerLostError)
    if victim == "supervisor" and mode_executor.mode == "remote":
        assert "went silent" in str(exc)  # no pool of the broker's saw it die: its silence tells
    else:
        assert "SIGKILL" in str(exc)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


# -- 9. a crash while many large payloads are queued -------------------------------------------------------------------


PAYLOAD = 4 * 1024 * 1024


def payloads(n):
    return [i.to_bytes(4, "little") * (PAYLOAD // 4) for i in range(n)]


@pytest.mark.parametrize("retries", [0, None], ids=["no_retry", "default_retries"])
def test_crash_while_large_payloads_are_queued(mode_executor, tmp_path, retries):
    ex = mode_executor(2)
    data = payloads(40)
    marker = str(tmp_path / "killed")
    victim = 17
    view = ex if retries is None else ex.options(retries=retries)
    futures = [view.submit(checksum, blob, marker if i == victim else None) for i, blob in enumerate(data)]
    done, not_done = wait(futures, timeout=TIMEOUT)
    assert not not_done, f"{len(not_done)} of 40 tasks did not finish in {TIMEOUT} s"
    for i, (fut, blob) in enumerate(zip(futures, data)):
        if i == victim and retries == 0:
            exc = failure_of(fut, corral.WorkerLostError)
            assert "killed by SIGKILL" in str(exc) and "ran 1 time" in str(exc)
        else:
            assert fut.result(timeout=0) == (PAYLOAD, zlib.crc32(blob)), f"task {i}"
    assert os.path.exists(marker), "the victim ran"
    assert_usable(ex)


# -- the supervisor is SIGKILLed while it runs a task ------------------------------------------------------------------


def test_sigkill_of_the_supervisor_mid_task(mode_executor, tmp_path):
    ex = mode_executor(2)
    marker = str(tmp_path / "who")
    fut = ex.submit(report_then_wait, marker, 20)  # default retries
    task_pid, supervisor_pid = map(int, wait_for_file(marker).split())
    supervisors = {p.pid: p for p in worker_processes()}  # ours, or (remote) our `corral worker`'s
    assert supervisor_pid in supervisors, "the task's parent is one of our corral.worker descendants"
    assert task_pid in {c.pid for c in supervisors[supervisor_pid].children(recursive=True)}
    supervisors[supervisor_pid].kill()
    start = time.monotonic()
    outcome, retry_pid, retry_parent = fut.result(timeout=TIMEOUT)
    assert time.monotonic() - start < FAST + 5
    assert outcome == "retried"
    assert retry_parent != supervisor_pid and retry_pid != task_pid
    wait_for(lambda: gone(task_pid), 10, "the task process outlived its supervisor")
    assert_usable(ex)


def test_sigkill_of_the_template_mid_task(make_executor, tmp_path):
    """Breaks: a fresh worker's template (which forks its task processes) is SIGKILLed while one of
    them runs a task. That task process dies with it (parent-death signal); the task is retried, the
    worker starts a new template, and every other task finishes."""
    ex = make_executor(1, fresh=True)
    marker = str(tmp_path / "who")
    fut = ex.submit(report_then_wait, marker, 20)  # default retries
    others = [ex.submit(square, i) for i in range(20)]
    task_pid, supervisor_pid = map(int, wait_for_file(marker).split())
    template = psutil.Process(task_pid).parent()
    assert template.ppid() == supervisor_pid
    template.kill()
    outcome, retry_pid, retry_supervisor = fut.result(timeout=TIMEOUT)
    assert (outcome, retry_supervisor) == ("retried", supervisor_pid), "the same supervisor ran it again"
    wait_for(lambda: gone(task_pid), 10, "the task process outlived its template")
    assert [f.result(timeout=TIMEOUT) for f in others] == [i * i for i in range(20)]
    assert psutil.Process(supervisor_pid).children()[0].pid != template.pid, "a new template"
    assert_usable(ex)


# -- races the soak test found (deterministic reproductions) --------------------------------------------------------


def test_task_process_dying_between_two_tasks_does_not_crash_its_supervisor(make_executor, tmp_path):
    # Persistent, with a fixed prefetch (so no lane: its supervisor hands it each task), which
    # holds the second task while the first runs.
    ex = make_executor(1, prefetch=2)
    marker = str(tmp_path / "first")
    first = ex.submit(started_then_finish, marker, 0.5)
    second = ex.submit(pid_and_parent)
    task_pid, supervisor_pid = map(int, wait_for_file(marker).split())
    supervisor = psutil.Process(supervisor_pid)
    assert supervisor.ppid() == os.getpid() and "corral.worker" in " ".join(supervisor.cmdline())
    supervisor.suspend()  # SIGSTOP: the supervisor cannot read the first result before its process dies
    try:
        wait_for_file(marker + ".done")
        time.sleep(0.3)  # the first result is in the socket by now
        psutil.Process(task_pid).kill()
        wait_for(lambda: gone(task_pid), 10, "the killed task process to end")
    finally:
        supervisor.resume()
    assert first.result(timeout=TIMEOUT) == (task_pid, supervisor_pid)
    pid, parent = second.result(timeout=TIMEOUT)
    assert pid != task_pid
    assert parent == supervisor_pid, "the supervisor crashed; another worker ran the second task"
    assert supervisor.is_running() and supervisor.status() != psutil.STATUS_ZOMBIE


SLOW_START = """
import os, time
try:
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        is_task_process = b"corral.worker.task_process" in f.read()
except OSError:
    is_task_process = False
deadline = time.monotonic() + 20
while is_task_process and os.path.exists(%r) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def test_task_process_killed_before_it_is_ready_is_a_lost_worker(make_executor, tmp_path, monkeypatch):
    # A spawned task process starts slowly enough to be caught before READY; a sitecustomize holds it there.
    # The same code path (wait_until_ready) serves forked ones, where the window is only shorter.
    hold = tmp_path / "hold"
    hold.touch()
    (tmp_path / "sitecustomize.py").write_text(SLOW_START % str(hold))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    ex = make_executor(1, mp_context=multiprocessing.get_context("spawn"))
    deadline = time.monotonic() + TIMEOUT
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "no task process started"
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.ppid() != os.getpid() and "corral.worker.task_process" in " ".join(proc.cmdline()):
                    victim = proc
            except psutil.Error:
                continue
        time.sleep(0.02)
    victim.kill()
    hold.unlink()
    assert ex.submit(square, 4).result(timeout=TIMEOUT) == 16
