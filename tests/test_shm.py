"""Large buffers between an executor and its own workers go through shared-memory files."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

import corral
from corral.wire import shm

SLOW = 60  # seconds: a bound for waits on large buffers
N = (4 << 20) // 8  # a 4 MiB float64 array: above tuning.SHM_MIN_BYTES


def double_in_place(a):
    a *= 2  # the task may write to its input: it has a private copy-on-write mapping
    return a


def checksum_and_pid(a):
    return float(a.sum()), os.getpid()


def kill_own_process_once(marker, a):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    return float(a.sum())


def shm_files(ex) -> list[str]:
    """Files left in the executor's directory, once the done-callbacks that remove them have run."""
    deadline = time.monotonic() + 5
    while os.listdir(ex._shm_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.listdir(ex._shm_dir)


def test_large_arrays_go_both_ways_through_shared_memory_and_leave_no_files(make_executor):
    ex = make_executor(2)
    if ex._shm_dir is None:
        pytest.skip("this machine has no writable /dev/shm")
    assert os.stat(ex._shm_dir).st_mode & 0o777 == 0o700
    a = np.arange(N, dtype=np.float64)
    out = ex.submit(double_in_place, a).result(SLOW)
    assert np.array_equal(out, a * 2)
    assert np.array_equal(a, np.arange(N, dtype=np.float64)), "the caller's array must not change"
    out += 1  # the result is writable, as ProcessPoolExecutor's is
    results = list(ex.map(double_in_place, [a, a + 1, a + 2]))
    assert [float(r[1]) for r in results] == [2.0, 4.0, 6.0]
    assert shm_files(ex) == [], "input and result files are removed once their futures are done"
    shm_dir = ex._shm_dir
    ex.shutdown()
    assert not os.path.exists(shm_dir)


def test_input_stays_for_a_retry_after_the_worker_dies(make_executor, tmp_path):
    """Breaks: the task process is SIGKILLed while its input is in shared memory; the retry maps it again."""
    ex = make_executor(1, retries=1)
    a = np.ones(N)
    assert ex.submit(kill_own_process_once, str(tmp_path / "once"), a).result(SLOW) == float(N)
    if ex._shm_dir is not None:
        assert shm_files(ex) == []


def test_without_room_in_shared_memory_buffers_travel_as_frames(make_executor):
    """Breaks: the shared-memory directory disappears under a running executor (as when tmpfs is full,
    writing a file fails); large buffers then travel as ZeroMQ frames and nothing is lost."""
    ex = make_executor(1)
    if ex._shm_dir is None:
        pytest.skip("this machine has no writable /dev/shm")
    shm_dir = ex._shm_dir
    shutil.rmtree(shm_dir)
    a = np.arange(N, dtype=np.float64)
    total, _ = ex.submit(checksum_and_pid, a).result(SLOW)
    assert total == float(a.sum())
    assert np.array_equal(ex.submit(double_in_place, a).result(SLOW), a * 2)
    assert not os.path.exists(shm_dir)


def test_store_refuses_names_that_leave_its_directory(tmp_path):
    store = shm.Store(str(tmp_path))
    for bad in (b"../etc/passwd", b"a/b", b"", b".hidden"):
        with pytest.raises(ValueError):
            store.resolve([b"x", b"y", bad], [2], unlink=False)
    with pytest.raises(ValueError):
        store.resolve([b"x"], [5], unlink=False)
    with pytest.raises(OSError):
        store.resolve([b"x", b"y", b"missing"], [2], unlink=False)


def test_address_executors_send_frames(broker_address):
    """Workers of a standalone broker may be on other machines: no shared memory there."""
    from helpers import start_worker, stop

    worker = start_worker(broker_address, "--processes", "1")
    try:
        with corral.Executor(address=broker_address) as ex:
            assert ex._shm_dir is None
            a = np.arange(N, dtype=np.float64)
            # Standalone workers do not share the test's sys.path: send the function by value.
            by_value = type(double_in_place)(double_in_place.__code__, {}, "double_in_place")
            assert np.array_equal(ex.submit(by_value, a).result(SLOW), a * 2)
    finally:
        stop(worker)


def test_corral_shm_dir_says_where_buffers_go(make_executor, tmp_path, monkeypatch):
    """CORRAL_SHM_DIR: where an executor makes its private directory for large buffers
    (the default /dev/shm may be small, or shared); empty: no shared memory at all."""
    root = tmp_path / "buffers"
    root.mkdir()
    monkeypatch.setenv("CORRAL_SHM_DIR", str(root))
    ex = make_executor(1)
    assert os.path.dirname(ex._shm_dir) == str(root)
    a = np.arange(N, dtype=np.float64)
    assert np.array_equal(ex.submit(double_in_place, a).result(SLOW), a * 2)
    ex.shutdown()
    assert os.listdir(root) == []
    monkeypatch.setenv("CORRAL_SHM_DIR", "")
    ex = make_executor(1)
    assert ex._shm_dir is None
    assert np.array_equal(ex.submit(double_in_place, a).result(SLOW), a * 2)
