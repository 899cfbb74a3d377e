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
import os
import shutil
import tempfile
import time

import psutil
import pytest

import corral
from corral.local import shm as shm_root
from helpers import free_port, start_broker, stop

LEAK_GRACE_S = 5.0
_saved_tmp: tuple = ()


def pytest_configure(config):
    """Give this test session a private temporary directory, and a private one for shared memory.

    The leak check looks for ``corral-*`` directories in these two only: what other
    programs (another user's corral, another test session) make in ``/tmp`` or
    ``/dev/shm`` is not ours to flag, let alone remove.  Worker processes, and the
    clients that tests start, inherit ``TMPDIR`` and ``CORRAL_SHM_DIR``.
    """
    global _saved_tmp
    private = tempfile.mkdtemp(prefix="ctest-")
    shm = tempfile.mkdtemp(prefix="ctest-", dir="/dev/shm") if os.access("/dev/shm", os.W_OK) else ""
    _saved_tmp = (tempfile.tempdir, os.environ.get("TMPDIR"), os.environ.get(shm_root.ROOT_VARIABLE), private, shm)
    os.environ["TMPDIR"] = private
    os.environ[shm_root.ROOT_VARIABLE] = shm
    tempfile.tempdir = private


def pytest_unconfigure(config):
    if not _saved_tmp:
        return
    tempdir, env, shm_env, private, shm = _saved_tmp
    tempfile.tempdir = tempdir
    for name, value in (("TMPDIR", env), (shm_root.ROOT_VARIABLE, shm_env)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for path in (private, shm):
        if path:
            shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture(autouse=True)
def no_leaks():
    children_before = set(_children())
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


@pytest.fixture
def make_executor():
    """A factory of executors that are shut down when the test ends."""
    made: list[corral.Executor] = []

    def make(*args, **kwargs) -> corral.Executor:
        ex = corral.Executor(*args, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def broker_address():
    """A standalone ``corral broker`` on a free loopback port, stopped when the test ends."""
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = start_broker(address)
    try:
        yield address
    finally:
        stop(proc)
