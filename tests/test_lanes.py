"""Lanes: a persistent local worker's task process takes its tasks from the broker and answers
them there itself (lane.Lane); its supervisor watches from aside.  These tests break the
things a lane must survive: a task process dying with tasks queued behind it on the lane, a
kill or a timeout for a task that has not begun yet, garbage and forged results written to
the lane by user code, messages larger than one record."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import pickle
import signal
import socket
import time

import pytest

import corral
from helpers import TIMEOUT


def noop():
    return None


def note_run(path: str, i: int, die: bool = False) -> int:
    """Append ``i`` to ``path`` (one line per run); with ``die``, SIGKILL this process after that."""
    with open(path, "a") as f:
        f.write(f"{i}\n")
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def sleep_then(seconds: float, value):
    time.sleep(seconds)
    return value


def lane_descriptor() -> int:
    """This task process's lane: its one SOCK_SEQPACKET socket."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        kind = sock.type
        sock.close()
        if kind == socket.SOCK_SEQPACKET:
            return fd
    raise AssertionError("no lane in this task process")


def scribble_on_the_lane(value):
    """Write what a buggy or hostile task might: a record that is not a message, the start of a
    message that never ends, a forged result for a task this worker does not run."""
    from corral.wire import protocol
    from corral.wire.lane import Lane

    fd = lane_descriptor()
    sock = socket.socket(fileno=os.dup(fd))
    sock.sendmsg([b"\x03", b"not a message"])
    sock.sendmsg([b"\x01", b"the start of a message that never ends"])
    forged = Lane(sock, blocking=True)
    forged.send(protocol.message(protocol.Kind.RESULT, {"results": [[10**9, 0, 1, {}]]}, [pickle.dumps("forged")]))
    sock.close()
    return value


def warm_up(ex: corral.Executor) -> None:
    """Enough no-ops that the broker knows the tasks are short and queues many on each lane."""
    for _ in range(3):
        [f.result(TIMEOUT) for f in [ex.submit(noop) for _ in range(50)]]


def test_local_persistent_workers_use_lanes_unless_their_supervisor_must_see_each_task(make_executor):
    assert make_executor(1).submit(lane_descriptor).result(TIMEOUT) > 2
    for options in ({"max_tasks_per_child": 3}, {"prefetch": 1}, {"fresh": True}):
        with pytest.raises(AssertionError, match="no lane"):
            make_executor(1, **options).submit(lane_descriptor).result(TIMEOUT)


def test_a_task_process_that_dies_with_tasks_queued_on_its_lane_loses_none(make_executor, tmp_path):
    """Breaks: a task SIGKILLs its own process, every time it runs, while the tasks after it wait
    on the lane. It fails once its retries are spent; every other task completes. The tasks
    behind it never began in a dead process and run once (the new process skips the copies sent
    to the old one); the very short ones just before it, whose results a dead process had not
    sent yet (it sends a batch's together, within 1 ms), count an attempt and run again."""
    ex = make_executor(1)  # retries=2
    warm_up(ex)
    path = str(tmp_path / "runs")
    futures = [ex.submit(note_run, path, i, i == 10) for i in range(60)]
    with pytest.raises(corral.WorkerLostError, match="SIGKILL.*ran 3 times"):
        futures[10].result(TIMEOUT)
    assert [f.result(TIMEOUT) for i, f in enumerate(futures) if i != 10] == [i for i in range(60) if i != 10]
    with open(path) as f:
        runs = collections.Counter(int(line) for line in f)
    assert runs[10] == 3
    assert all(runs[i] == 1 for i in range(11, 60)), "a task that never began ran twice"
    assert all(runs[i] in (1, 2) for i in range(10)), runs
    assert ex.submit(abs, -3).result(TIMEOUT) == 3


def test_a_task_killed_while_it_waits_on_the_lane_is_stopped_when_it_begins(make_executor):
    """Breaks: kill() a task that the broker already put on the lane behind a running one. It
    is stopped as soon as it begins (its future ends cancelled), not after its 20 s."""
    ex = make_executor(1)
    warm_up(ex)
    first = ex.submit(sleep_then, 0.5, "first")
    victim = ex.submit(sleep_then, 20, "victim")
    time.sleep(0.1)
    assert victim.kill(grace=0.5)
    started = time.monotonic()
    assert first.result(TIMEOUT) == "first"
    with pytest.raises(concurrent.futures.CancelledError):
        victim.result(TIMEOUT)
    assert time.monotonic() - started < 10
    assert ex.submit(abs, -4).result(TIMEOUT) == 4


def test_a_timeout_on_the_lane_stops_the_task_and_the_next_runs(make_executor):
    ex = make_executor(1)
    started = time.monotonic()
    with pytest.raises(corral.TaskTimeoutError, match="timeout of 0.5 s"):
        ex.options(timeout=0.5).submit(sleep_then, 20, "late").result(TIMEOUT)
    assert time.monotonic() - started < 10
    assert ex.submit(abs, -5).result(TIMEOUT) == 5


def test_a_long_task_on_the_lane_shows_as_running_and_cannot_be_cancelled(make_executor):
    ex = make_executor(1)
    running = ex.submit(sleep_then, 1.0, "done")
    queued = ex.submit(sleep_then, 0.1, "never")
    deadline = time.monotonic() + TIMEOUT
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.running()
    assert not running.cancel()
    assert queued.cancel(), "a task still at the broker can be cancelled"
    assert running.result(TIMEOUT) == "done"


def test_garbage_and_forged_results_on_the_lane_are_dropped(make_executor):
    """Breaks: user code writes to its lane a record that is no message, half a message, and a
    result for a task its worker does not run. All are dropped; the task's own result, and the
    next tasks', arrive."""
    ex = make_executor(1)
    assert ex.submit(scribble_on_the_lane, "mine").result(TIMEOUT) == "mine"
    assert [f.result(TIMEOUT) for f in [ex.submit(abs, -i) for i in range(20)]] == list(range(20))


def test_messages_larger_than_a_record_cross_the_lane(make_executor):
    from corral.wire.lane import LANE_RECORD

    ex = make_executor(1)
    big = b"x" * (5 * LANE_RECORD + 123)  # bytes pickle in-band: one large frame, several records
    assert ex.submit(sleep_then, 0, big).result(TIMEOUT) == big


def cpu_seconds(pids) -> float:
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


@pytest.mark.parametrize("spin", [None, 0])
def test_spinning_stops_when_the_work_does(spin):
    """A caller and a task process poll for a while before they sleep (poller.Spin), but only
    while their waits are short: after a burst of round trips, an idle executor uses no CPU."""
    import psutil

    kwargs = {} if spin is None else {"spin": spin}
    with corral.Executor(2, **kwargs) as ex:
        for _ in range(500):
            assert ex.submit(noop).result(TIMEOUT) is None
        pids = [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]
        before = cpu_seconds(pids)
        time.sleep(1.0)
        idle = cpu_seconds(pids) - before
        assert ex.submit(sleep_then, 0.3, 7).result(TIMEOUT) == 7  # a long wait: polls 200 us, then sleeps
        waited = cpu_seconds(pids) - before - idle
    assert idle < 0.1, f"an idle executor used {idle:.2f} s of CPU in 1 s"
    assert waited < 0.15, f"waiting 0.3 s for one task used {waited:.2f} s of CPU"
