"""Shared fixtures: every test must clean up after itself.

The autouse ``no_leaks`` fixture fails a test that leaves a child process or
a ``corral-*`` temporary directory behind (of those it created itself: see
``pytest_configure``), after giving them a few seconds to go away, then removes
the leftovers so that one leak does not make the following tests fail too.

Executors are never shared between tests: ``make_executor`` creates them per
test and shuts them down at its end.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

import psutil
import pytest
import zmq

import corral
from corral.broker.broker import Broker
from corral.wire import shm as shm_root
from helpers import TIMEOUT, drop_stale_rehash_lock, free_port, start_broker, start_worker, stop

LEAK_GRACE_S = 5.0
_saved_tmp: tuple = ()


def pytest_configure(config):
    """Give this test session a private temporary directory, and a private one for shared memory.

    The leak check looks for ``corral-*`` directories in these two only: what other
    programs (another user's corral, another test session) make in ``/tmp`` or
    ``/dev/shm`` is not ours to flag, let alone remove.  Worker processes, and the
    clients that tests start, inherit ``TMPDIR`` and ``CORRAL_SHM_DIR``; brokers keep their
    keys in ``CORRAL_HOME``, a directory of this session's, not in the user's ``~/.corral``.
    """
    global _saved_tmp
    private = tempfile.mkdtemp(prefix="ctest-")
    shm = tempfile.mkdtemp(prefix="ctest-", dir="/dev/shm") if os.access("/dev/shm", os.W_OK) else ""
    _saved_tmp = (tempfile.tempdir, os.environ.get("TMPDIR"), os.environ.get(shm_root.ROOT_VARIABLE),
                  os.environ.get("CORRAL_HOME"), private, shm)
    os.environ["TMPDIR"] = private
    os.environ[shm_root.ROOT_VARIABLE] = shm
    os.environ["CORRAL_HOME"] = os.path.join(private, "keys")
    tempfile.tempdir = private


def pytest_unconfigure(config):
    if not _saved_tmp:
        return
    tempdir, env, shm_env, home_env, private, shm = _saved_tmp
    tempfile.tempdir = tempdir
    for name, value in (("TMPDIR", env), (shm_root.ROOT_VARIABLE, shm_env), ("CORRAL_HOME", home_env)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for path in (private, shm):
        if path:
            shutil.rmtree(path, ignore_errors=True)


def pytest_runtest_logreport(report):
    """With ``CORRAL_FAILURES_FILE`` set (``.ci/run`` sets it), note each failure there: the test,
    the phase, and the first line of its reason, one line each, so that a long log can end with them.
    Under pytest-xdist the reports reach the controlling process too: only it writes."""
    path = os.environ.get("CORRAL_FAILURES_FILE")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    reason = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = f"python {sys.version.split()[0]}: {report.nodeid} ({report.when}): {reason}"
    with open(path, "a") as f:
        f.write(line[:500] + "\n")


def _corral_dirs() -> set[str]:
    """corral's private directories: in this session's temporary directory and its shared-memory one."""
    found = set()
    for tmp in (tempfile.gettempdir(), os.environ.get(shm_root.ROOT_VARIABLE)):
        if tmp and os.path.isdir(tmp):
            found |= {os.path.join(tmp, name) for name in os.listdir(tmp) if name.startswith("corral-")}
    return found


def _children() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


def _listing(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return [repr(exc)]


@pytest.fixture(scope="session", autouse=True)
def no_stale_shell_lock():
    """pyenv's rehash lock, if a login shell the tests started and ended left it, goes at the end."""
    started = time.time()
    yield
    drop_stale_rehash_lock(started)


_children_before_test: set[int] = set()  # what this process ran when the test began (module fixtures)


@pytest.fixture(autouse=True)
def no_leaks():
    global _children_before_test
    children_before = _children_before_test = set(_children())
    dirs_before = _corral_dirs()
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        left = {pid: p for pid, p in _children().items() if pid not in children_before}
        dirs = _corral_dirs() - dirs_before
        if (not left and not dirs) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    problems = [f"child process left running: {_describe(p)}" for p in left.values()]
    problems += [f"temporary directory left behind: {d} {_listing(d)}" for d in sorted(dirs)]
    # Clean up so that the next test starts from a clean slate.
    for proc in left.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(left.values()), timeout=5)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    if problems:
        pytest.fail("test leaked resources:\n  " + "\n  ".join(problems), pytrace=False)


SHUTDOWN_PATIENCE = 60.0  # seconds the executor fixture waits for an executor to shut down


def _shut_down(ex: corral.Executor) -> None:
    """Shut an executor down, in bounded time: if it hangs (a result that never comes), dump the
    other threads' stacks, kill the processes the test started, and fail the test, instead of
    hanging the whole session.  What ran before the test (a module's sshd) is left to its fixture."""
    worker = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    worker.start()
    worker.join(SHUTDOWN_PATIENCE)
    if not worker.is_alive():
        return
    stacks = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for thread_id, frame in sys._current_frames().items():
        if thread_id == threading.get_ident():
            continue  # this one waits here, below pytest's own frames
        # A thread's innermost frames say where it waits; the rest is threading's and pytest's.
        stacks.write(f"\n--- {names.get(thread_id, thread_id)}\n{''.join(traceback.format_stack(frame, limit=-6))}")
    for pid, proc in _children().items():
        if pid not in _children_before_test:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    pytest.fail(f"the executor did not shut down within {SHUTDOWN_PATIENCE:g} s; the other threads' innermost frames:"
                f"{stacks.getvalue()}", pytrace=False)


@pytest.fixture
def make_executor():
    """A factory of executors that are shut down (in bounded time) when the test ends."""
    made: list[corral.Executor] = []

    def make(*args, **kwargs) -> corral.Executor:
        ex = corral.Executor(*args, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        _shut_down(ex)


# How a worker may run tasks: a persistent task process on a lane (the executor's own workers'
# default), a persistent one fed by its supervisor, a fresh process per task, spawned task
# processes, and remote workers (``corral worker`` on a standalone broker).
WORKER_MODES = ("lane", "supervised", "fresh", "spawn", "remote")
_MODE_OPTIONS = {
    "lane": {},
    "supervised": {"max_tasks_per_child": 10**9},  # the supervisor must count the tasks: no lane
    "fresh": {"fresh": True},
    "spawn": {"mp_context": multiprocessing.get_context("spawn")},
}


@pytest.fixture(params=WORKER_MODES)
def mode_executor(request, make_executor):
    """A factory of executors whose workers run tasks one way (``WORKER_MODES``), called as
    ``make_executor`` is; ``mode_executor.mode`` says which.  Remote workers get a standalone
    broker and ``corral worker --processes max_workers`` (whose processes can import the test
    modules), both stopped when the test ends."""
    mode = request.param
    started: list = []
    made: list = []

    def make(max_workers: int = 2, **kwargs) -> corral.Executor:
        if mode != "remote":
            return make_executor(max_workers, **{**_MODE_OPTIONS[mode], **kwargs})
        if kwargs.get("initializer") is not None:
            pytest.skip("remote workers take no initializer from the executor")
        broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
        started.append(broker)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                          os.environ.get("PYTHONPATH")]))}
        started.append(start_worker(broker.connection, "--processes", str(max_workers), env=env))
        made.append(make_executor(address=broker.connection, **kwargs))
        return made[-1]

    make.mode = mode
    yield make
    for ex in made:  # before its broker and workers go
        _shut_down(ex)
    for proc in reversed(started):  # the workers first: they leave, then their broker
        stop(proc)


@pytest.fixture
def broker_address():
    """A standalone ``corral broker`` on a free loopback port, stopped when the test ends: what
    clients and workers are given to reach it, the connection file it wrote."""
    proc = start_broker(f"tcp://127.0.0.1:{free_port()}")
    try:
        yield proc.connection
    finally:
        stop(proc)


@pytest.fixture
def broker_in_thread(tmp_path):
    """A standalone broker on an ipc:// address, served by a thread; yields (broker, address, logs)."""
    made = []

    def make(**kwargs):
        ctx = zmq.Context()
        address = f"ipc://{tmp_path}/broker-{len(made)}"
        logs: list[str] = []
        broker = Broker(address, context=ctx, log=logs.append, **kwargs)
        thread = threading.Thread(target=broker.serve, name="test-broker", daemon=True)
        thread.start()
        made.append((broker, thread, ctx))
        return broker, address, logs

    yield make
    for broker, thread, ctx in made:
        broker.running = False
        thread.join(TIMEOUT)
        ctx.term()
        assert not thread.is_alive()
