"""Per-task records (``future.info``): every state a task reaches, its times, where it ran, its
attempts and why the earlier ones ended, and its peak memory, on every way a worker runs tasks
(a lane, a supervised or spawned persistent process, fresh processes, a standalone broker's
workers over CurveZMQ)."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

import corral
from helpers import TIMEOUT, wait_for, wait_for_file

MIB = 1 << 20
BUFFER = 64 * MIB


def touch_buffer(size: int) -> int:
    """Hold ``size`` bytes, every page written, for a moment; this process's pid."""
    buf = bytearray(size)
    buf[:: 4096] = b"x" * len(buf[:: 4096])
    time.sleep(0.01)
    del buf
    return os.getpid()


def die_once(marker: str) -> int:
    """SIGKILL this process the first time (leaving ``marker``); return the pid the next time."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fail() -> None:
    raise ValueError("no")


def test_a_finished_task_s_record(mode_executor):
    """Times in order, the worker, host and pid that ran it, one attempt, and a peak of at least
    the buffer it held: on a lane, supervised, fresh, spawned, and a standalone broker's workers."""
    ex = mode_executor(1)
    before = time.time()
    fut = ex.submit(touch_buffer, BUFFER)
    pid = fut.result(timeout=TIMEOUT)
    after = time.time()
    info = fut.info
    assert isinstance(info, corral.TaskInfo)
    assert info.state == "done"
    assert before <= info.submitted <= info.started <= info.finished <= after
    assert info.queue_wait == pytest.approx(info.started - info.submitted)
    assert 0.01 <= info.run_time == pytest.approx(info.finished - info.started)
    assert info.pid == pid
    assert info.host == socket.gethostname()
    assert info.worker
    assert (info.attempts, info.earlier_attempts) == (1, ())
    assert info.peak_memory is not None and info.peak_memory >= BUFFER
    # A small task in the same process afterwards: its own peak, not the big one's.
    small = ex.submit(touch_buffer, MIB)
    assert small.result(timeout=TIMEOUT) == pid or mode_executor.mode == "fresh"
    if mode_executor.mode != "fresh":  # a fresh process's peak is its whole life's
        assert small.info.peak_memory < BUFFER
    with pytest.raises(AttributeError):
        info.state = "queued"  # a snapshot
    # A task shorter than PEAK_MEMORY_TASK: measured only in a fresh process.
    quick = ex.submit(int)
    quick.result(timeout=TIMEOUT)
    assert (quick.info.peak_memory is not None) == (mode_executor.mode == "fresh")
    assert quick.info.pid is not None and quick.info.run_time < 1


def test_every_state(make_executor, tmp_path):
    """queued behind a busy worker (prefetch 0), running, done, failed (raised, timed out),
    cancelled (before it ran, or killed), lost."""
    ex = make_executor(1, prefetch=0, retries=0)
    go = str(tmp_path / "go")
    running = ex.submit(wait_for_file, go)
    wait_for(running.running)
    behind = ex.submit(touch_buffer, 1)
    assert behind.info.state == "queued"
    info = running.info
    assert info.state == "running"
    assert info.submitted <= info.started <= time.time()
    assert (info.finished, info.run_time, info.pid) == (None, None, None)
    assert behind.cancel()
    assert behind.info.state == "cancelled"
    open(go, "w").close()
    running.result(timeout=TIMEOUT)
    assert running.info.state == "done"
    failed = ex.submit(fail)
    with pytest.raises(ValueError):
        failed.result(timeout=TIMEOUT)
    assert failed.info.state == "failed"
    assert failed.info.pid is not None and failed.info.run_time is not None
    timed_out = ex.options(timeout=0.2).submit(time.sleep, 10)
    with pytest.raises(corral.TaskTimeoutError):
        timed_out.result(timeout=TIMEOUT)
    assert (timed_out.info.state, timed_out.info.attempts) == ("failed", 1)
    killed = ex.submit(time.sleep, 10)
    wait_for(killed.running)
    assert killed.kill(grace=0)
    wait_for(killed.done)
    assert killed.info.state == "cancelled" and killed.info.worker
    lost = ex.submit(die)
    with pytest.raises(corral.WorkerLostError):
        lost.result(timeout=TIMEOUT)
    info = lost.info
    assert info.state == "lost"
    assert info.attempts == 1 and info.earlier_attempts == ()
    assert info.host == socket.gethostname() and info.worker


def test_waiting_on_dependencies_is_its_own_state(make_executor, tmp_path):
    """A future held back for the tasks it depends on says so, until they have succeeded."""
    ex = make_executor(1, prefetch=0)
    go = str(tmp_path / "go")
    first = ex.submit(wait_for_file, go)
    second = ex.submit(len, first)
    after = ex.options(after=[first]).submit(touch_buffer, 1)
    assert second.info.state == "waiting" and after.info.state == "waiting"
    open(go, "w").close()
    first.result(timeout=TIMEOUT)
    second.result(timeout=TIMEOUT)
    assert second.info.state == "done" and after.result(timeout=TIMEOUT) is not None


@pytest.mark.parametrize("options", [{}, {"max_tasks_per_child": 10**9}, {"fresh": True}],
                         ids=["lane", "supervised", "fresh"])
def test_attempts_and_why_the_earlier_ones_ended(make_executor, tmp_path, options):
    """A task whose process died once ran twice: the record counts both, says why the first
    ended (which worker, which host), and names the process of the second."""
    ex = make_executor(1, retries=1, **options)
    fut = ex.submit(die_once, str(tmp_path / "died"))
    pid = fut.result(timeout=TIMEOUT)
    info = fut.info
    assert info.state == "done"
    assert info.attempts == 2
    assert info.pid == pid
    (why,) = info.earlier_attempts
    assert "SIGKILL" in why and info.worker in why and socket.gethostname() in why, why


def test_a_task_that_cannot_be_pickled_has_a_record(make_executor):
    """Its future fails at once, with a record that says so: it never ran."""
    import threading

    ex = make_executor(1)
    fut = ex.submit(touch_buffer, threading.Lock())
    with pytest.raises(corral.SerializationError):
        fut.result(timeout=TIMEOUT)
    info = fut.info
    assert (info.state, info.attempts, info.started, info.worker) == ("failed", 0, None, None)


def test_a_record_a_worker_got_wrong_reads_as_unknown():
    """What a worker says of a task's run is checked: anything malformed reads as unknown."""
    from corral.wire import protocol

    good = {}
    protocol.note_ran(good, 1_700_000_000_000_000, 500_000, 42, 1 << 20)
    record = protocol.read_record(good)
    assert (record["started"], record["finished"], record["pid"], record["peak"]) == (
        1_700_000_000.0, 1_700_000_000.5, 42, 1 << 20)
    for ran in ("1 2", "1 2 3 4 5", "a 2 3", "-1 2 3", "1 2 ³", 7, ["1", "2", "3"], "1 2 0 0"):
        record = protocol.read_record({"ran": ran, "worker": ["w"], "host": 3, "attempts": -1, "tries": "x"})
        assert record["pid"] is None and record["peak"] is None, ran
        assert (record["worker"], record["host"], record["attempts"], record["tries"]) == (None, None, None, ())
