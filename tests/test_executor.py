"""The concurrent.futures Executor API of corral.Executor, against real workers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import corral
from helpers import TIMEOUT, start_worker, stop, wait_for

# -- task functions (module level: pickled by reference) -----------------------


def square(x):
    return x * x


def add(a, b):
    return a + b


def echo_kwargs(*args, **kwargs):
    return args, kwargs


def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm(self):
        return math.hypot(self.x, self.y)

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))


def make_point(x, y):
    return Point(x, y)


def usable_cpus():
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# -- construction ----------------------------------------------------------------


# ProcessPoolExecutor has max_tasks_per_child from Python 3.11: nothing to compare with before.
NEEDS_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="the stdlib's option is new in 3.11")


def _stdlib_error(**kwargs):
    with pytest.raises(Exception) as info:
        ProcessPoolExecutor(**kwargs)
    return info.value


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "message"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": -1}, ValueError, "max_workers must be greater than 0"),
        ({"initializer": 42}, TypeError, "initializer must be a callable"),
        pytest.param({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1", marks=NEEDS_311),
        pytest.param({"max_tasks_per_child": "x"}, TypeError, None, marks=NEEDS_311),
    ],
)
def test_constructor_validation_matches_process_pool(kwargs, exc_type, message):
    expected = _stdlib_error(**kwargs)
    assert type(expected) is exc_type
    with pytest.raises(exc_type) as info:
        corral.Executor(**kwargs)
    assert type(info.value) is type(expected)
    assert str(info.value) == str(expected)
    if message is not None:
        assert str(info.value) == message


def test_map_chunksize_validation_matches_process_pool(make_executor):
    ppe = ProcessPoolExecutor(1)
    try:
        with pytest.raises(ValueError) as expected:
            ppe.map(square, [1], chunksize=0)
    finally:
        ppe.shutdown()
    ex = make_executor(1)
    with pytest.raises(ValueError) as info:
        ex.map(square, [1], chunksize=0)
    assert str(info.value) == str(expected.value)
    assert ex.submit(square, 3).result(TIMEOUT) == 9


def test_is_a_concurrent_futures_executor_with_default_workers(make_executor):
    ex = make_executor()
    assert isinstance(ex, concurrent.futures.Executor)
    assert ex._max_workers == usable_cpus()
    fut = ex.submit(square, 4)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(TIMEOUT) == 16


# -- submit ------------------------------------------------------------------------


def test_submit_result(make_executor):
    ex = make_executor(2)
    futures = [ex.submit(add, i, b=10) for i in range(20)]
    assert [f.result(TIMEOUT) for f in futures] == [i + 10 for i in range(20)]


def test_fn_is_positional_only_so_fn_kwarg_passes_through(make_executor):
    ex = make_executor(1)
    assert ex.submit(echo_kwargs, fn=1).result(TIMEOUT) == ((), {"fn": 1})
    assert ex.submit(echo_kwargs, 1, self=2, fn=3).result(TIMEOUT) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=echo_kwargs)


def test_lambdas_closures_and_classes(make_executor):
    ex = make_executor(2)
    assert ex.submit(lambda x: x * 2, 21).result(TIMEOUT) == 42

    offset = 100

    def closure(x):
        return x + offset

    assert ex.submit(closure, 5).result(TIMEOUT) == 105

    class Local:
        def __init__(self, v):
            self.v = v

        def doubled(self):
            return self.v * 2

    assert ex.submit(Local(8).doubled).result(TIMEOUT) == 16
    result = ex.submit(lambda: Local(3)).result(TIMEOUT)
    assert type(result).__name__ == "Local" and result.v == 3

    assert ex.submit(Point(3, 4).norm).result(TIMEOUT) == 5.0
    assert ex.submit(make_point, 1, 2).result(TIMEOUT) == Point(1, 2)
    assert ex.submit(Point, 5, 6).result(TIMEOUT) == Point(5, 6)


# -- map ---------------------------------------------------------------------------


def test_map_keeps_order(make_executor):
    ex = make_executor(2)
    delays = [0.2, 0.0, 0.1, 0.0, 0.05, 0.0]
    assert list(ex.map(sleep_then_return, delays, range(6), timeout=TIMEOUT)) == list(range(6))


def test_map_stops_at_shortest_iterable(make_executor):
    ex = make_executor(2)
    assert list(ex.map(add, [1, 2, 3, 4], [10, 20], timeout=TIMEOUT)) == [11, 22]
    assert list(ex.map(add, [], [1], timeout=TIMEOUT)) == []


@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_chunksize(make_executor, chunksize):
    ex = make_executor(2)
    assert list(ex.map(square, range(50), timeout=TIMEOUT, chunksize=chunksize)) == [x * x for x in range(50)]
    assert list(ex.map(add, range(10), range(100, 103), chunksize=chunksize)) == [100, 102, 104]


def test_map_over_endless_generator(make_executor):
    ex = make_executor(2)
    results = ex.map(square, itertools.count())
    assert [next(results) for _ in range(100)] == [x * x for x in range(100)]
    results.close()
    assert ex.submit(square, 12).result(TIMEOUT) == 144
    assert list(ex.map(square, range(5), timeout=TIMEOUT)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("chunksize, cap", [(1, 4096), (3, 1024)], ids=["tasks", "chunks"])
def test_map_read_ahead_is_capped_whatever_max_workers(broker_address, chunksize, cap):
    """max_workers=1_000_000 with address= made map read 32 million items ahead: the whole input."""
    read = 0

    def endless():
        nonlocal read
        for read in itertools.count(1):
            assert read <= 2 * cap * chunksize, "map read far beyond its window"
            yield read

    ex = corral.Executor(address=broker_address, max_workers=1_000_000)  # a broker with no workers
    try:
        ex.map(abs, endless(), chunksize=chunksize)
        assert read == cap * chunksize  # the first window is submitted at once; nothing runs it
    finally:
        # Cancels the queued tasks (shutdown(cancel_futures=True) would leave the oldest
        # max_workers of them, that is all, waiting for a worker).
        ex.terminate_workers()
        ex.shutdown()


def test_map_early_stop_cancels_queued_work(make_executor):
    ex = make_executor(1)
    results = ex.map(time.sleep, [0.2] * 100)
    assert next(results) is None
    assert next(results) is None
    results.close()
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < 5, "queued map tasks were not cancelled"


def test_map_timeout(make_executor):
    ex = make_executor(1)
    results = ex.map(sleep_then_return, [1.0], ["late"], timeout=0.2)
    start = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):  # the builtin TimeoutError from 3.11
        next(results)
    assert 0.15 < time.monotonic() - start < 5  # raising at all shows the 0.2 s deadline was applied
    with pytest.raises(concurrent.futures.TimeoutError):
        list(ex.map(sleep_then_return, [1.0], ["late"], timeout=0.1))


# -- cancellation and shutdown --------------------------------------------------------


def test_shutdown_cancel_futures(make_executor, tmp_path):
    ex = make_executor(1)
    # The blocker must outlast the submits and the shutdown call below, even on a loaded machine.
    blocker = ex.submit(sleep_then_return, 2.0, "blocker")
    wait_for(blocker.running)
    paths = [tmp_path / f"queued-{i}" for i in range(10)]
    queued = [ex.submit(touch, path) for path in paths]
    start = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - start < 5
    assert blocker.result(0) == "blocker"
    # Like ProcessPoolExecutor, up to max_workers calls already handed out may still run.
    cancelled = [f.cancelled() for f in queued]
    assert sum(cancelled) >= len(queued) - ex._max_workers
    assert cancelled == sorted(cancelled), "a newer task ran while an older one was cancelled"
    for fut, path in zip(queued, paths, strict=True):
        assert fut.done()
        assert path.exists() == (not fut.cancelled())
        if not fut.cancelled():
            assert fut.result(0) == path


def test_cancel_queued_future_never_runs(make_executor, tmp_path):
    ex = make_executor(1)
    blocker = ex.submit(sleep_then_return, 2.0, "blocker")
    wait_for(blocker.running)
    marker = tmp_path / "cancelled-task-ran"
    victim = ex.submit(touch, marker)
    assert victim.cancel() is True
    assert victim.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        victim.result(0)
    assert blocker.result(TIMEOUT) == "blocker"
    # The task behind the cancelled one runs, so the cancelled one would have run by now.
    after = tmp_path / "after"
    assert ex.submit(touch, after).result(TIMEOUT) == after
    ex.shutdown(wait=True)
    assert after.exists()
    assert not marker.exists()


def test_tasks_cancelled_right_after_submit_never_run(make_executor, tmp_path):
    """Submits racing the I/O thread: a CANCEL must never reach the broker before its SUBMIT."""
    ex = make_executor(1)
    blocker = ex.submit(sleep_then_return, 3.0, "blocker")
    wait_for(blocker.running)
    futures, paths = [], []
    for round_ in range(20):
        batch = [tmp_path / f"{round_}-{i}" for i in range(25)]
        batch_futures = [ex.submit(touch, path) for path in batch]
        for fut in batch_futures:
            assert fut.cancel() is True  # nothing runs while the blocker does
        futures += batch_futures
        paths += batch
    assert blocker.result(TIMEOUT) == "blocker"
    assert ex.submit(touch, tmp_path / "after").result(TIMEOUT)
    ex.shutdown(wait=True)
    ran = [path.name for path in paths if path.exists()]
    assert not ran, f"cancelled tasks ran: {ran}"


def test_cancel_running_or_done_future_returns_false(make_executor):
    ex = make_executor(1)
    running = ex.submit(sleep_then_return, 0.5, "r")
    wait_for(running.running)
    assert running.cancel() is False
    assert running.result(TIMEOUT) == "r"
    assert running.cancel() is False


def test_wait_and_as_completed(make_executor):
    ex = make_executor(2)
    futures = [ex.submit(sleep_then_return, 0.05 * (i % 3), i) for i in range(10)]
    done, not_done = concurrent.futures.wait(futures, timeout=TIMEOUT)
    assert done == set(futures) and not not_done

    slow = ex.submit(sleep_then_return, 1.0, "slow")
    fast = ex.submit(sleep_then_return, 0.0, "fast")
    done, not_done = concurrent.futures.wait(
        [slow, fast], timeout=TIMEOUT, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert fast in done and slow in not_done

    futures = [ex.submit(square, i) for i in range(10)]
    seen = {f.result() for f in concurrent.futures.as_completed(futures, timeout=TIMEOUT)}
    assert seen == {i * i for i in range(10)}
    assert slow.result(TIMEOUT) == "slow"


def test_futures_have_every_field_of_the_stdlib_future_and_a_working_condition(make_executor):
    """CorralFuture sets Future's fields itself (with a leaner Condition, and lists made when
    first used): none may be missing on this Python, and waiting with a timeout, from several
    threads, must still work."""
    fut = make_executor(1).submit(sleep_then_return, 0.3, "late")
    for name in vars(concurrent.futures.Future()):
        getattr(fut, name)
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.01)
    seen = []
    waiters = [threading.Thread(target=lambda: seen.append(fut.result(TIMEOUT))) for _ in range(3)]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(TIMEOUT)
    assert seen == ["late"] * 3


def test_callbacks_and_waiters_on_futures_that_make_their_lists_when_used(make_executor):
    """A future's callback and waiter lists are made when something is first put in them;
    callbacks added before and after completion run once each, and wait() and as_completed()
    leave no waiter behind."""
    ex = make_executor(1)
    calls = []

    def called(n: int) -> list:  # callbacks run in the I/O thread, just after waiters are woken
        deadline = time.monotonic() + TIMEOUT
        while len(calls) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return calls

    pending = ex.submit(sleep_then_return, 0.3, "late")
    pending.add_done_callback(lambda f: calls.append(("before", f.result())))
    done, not_done = concurrent.futures.wait([pending], timeout=0.01)
    assert not done and not_done == {pending}
    assert [f.result() for f in concurrent.futures.as_completed([pending], timeout=TIMEOUT)] == ["late"]
    assert called(1) == [("before", "late")]
    assert not pending._waiters
    pending.add_done_callback(lambda f: calls.append(("after", f.result())))  # done: runs at once
    assert calls == [("before", "late"), ("after", "late")]
    other = ex.submit(square, 3)
    other.add_done_callback(lambda f: calls.append(("other", f.result())))
    done, _ = concurrent.futures.wait([pending, other], timeout=TIMEOUT)
    assert len(done) == 2 and all(not f._waiters for f in done)
    assert called(3)[-1] == ("other", 9)
    unwatched = ex.submit(sleep_then_return, 0.3, 16)  # pending at the first assert
    assert "_waiters" not in vars(unwatched) and "_done_callbacks" not in vars(unwatched)
    assert unwatched.result(TIMEOUT) == 16
    assert "_waiters" not in vars(unwatched) and "_done_callbacks" not in vars(unwatched)
    with pytest.raises(ValueError):
        unwatched._waiters.remove(object())  # as an empty list would


def test_asyncio_integration(make_executor):
    ex = make_executor(2)

    async def main():
        loop = asyncio.get_running_loop()
        a = await asyncio.wait_for(asyncio.wrap_future(ex.submit(square, 7)), TIMEOUT)
        b = await asyncio.wait_for(loop.run_in_executor(ex, add, 2, 3), TIMEOUT)
        many = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(8))), TIMEOUT
        )
        return a, b, many

    assert asyncio.run(main()) == (49, 5, [i * i for i in range(8)])


def test_done_callback_runs_exactly_once(make_executor):
    ex = make_executor(1)
    calls = []
    event = threading.Event()

    def callback(fut):
        calls.append(fut.result())
        event.set()

    fut = ex.submit(sleep_then_return, 0.1, "value")
    fut.add_done_callback(callback)
    assert fut.result(TIMEOUT) == "value"
    assert event.wait(TIMEOUT)
    # Later traffic must not complete the future (and call back) again.
    assert ex.submit(square, 2).result(TIMEOUT) == 4
    time.sleep(0.2)
    assert calls == ["value"]

    late = []
    fut.add_done_callback(lambda f: late.append(f.result()))
    assert late == ["value"]
    assert calls == ["value"]


def test_done_callback_that_raises_does_not_break_the_executor(make_executor):
    ex = make_executor(1)

    def bad_callback(fut):
        raise RuntimeError("callback failure")

    fut = ex.submit(square, 3)
    fut.add_done_callback(bad_callback)
    assert fut.result(TIMEOUT) == 9
    assert ex.submit(square, 4).result(TIMEOUT) == 16


def test_context_manager():
    with corral.Executor(1) as ex:
        fut = ex.submit(sleep_then_return, 0.2, "done")
    assert fut.done() and fut.result(0) == "done"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_context_manager_propagates_exceptions():
    with pytest.raises(KeyError), corral.Executor(1) as ex:
        ex.submit(square, 1).result(TIMEOUT)
        raise KeyError("inside")
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_submit_and_map_after_shutdown_raise(make_executor):
    ex = make_executor(1)
    assert ex.submit(square, 2).result(TIMEOUT) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1, 2])


def test_shutdown_twice_does_not_touch_a_recycled_descriptor(make_executor, tmp_path):
    ex = make_executor(1)
    assert ex.submit(square, 2).result(TIMEOUT) == 4
    ex.shutdown(wait=True)
    stale = ex._io.wake_w
    with pytest.raises(OSError):
        os.fstat(stale)  # the wake-up pipe is closed: its number may be reused
    path = tmp_path / "innocent"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        os.dup2(fd, stale)  # another part of the program now owns that number
        try:
            ex.shutdown(wait=True)
            ex.shutdown(wait=False, cancel_futures=True)
        finally:
            os.close(stale)
    finally:
        os.close(fd)
    assert path.read_bytes() == b""


def test_shutdown_without_wait():
    ex = corral.Executor(1)
    fut = ex.submit(sleep_then_return, 0.3, "finished")
    ex.shutdown(wait=False)
    assert fut.result(TIMEOUT) == "finished"
    ex._io.thread.join(TIMEOUT)
    assert not ex._io.thread.is_alive()


def test_shutdown_soon_after_start_is_quick():
    ex = corral.Executor(2)
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < 2.5


def test_a_burst_larger_than_one_message_loses_nothing():
    # 30,000 submits in one burst: more entries than one SUBMIT header may carry (1 MiB).
    with corral.Executor(2) as ex:
        futures = [ex.submit(abs, -i) for i in range(30_000)]
        assert sum(f.result(timeout=120) for f in futures) == sum(range(30_000))


# -- a caller waiting for a result runs the loop itself (_IOLoop.lead) ------------------------


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt in the main thread, as in an interactive session (a shell
    that started us in the background may have set it to be ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


# The embedded broker's loop, and a link to a broker elsewhere (a ZeroMQ socket that changes threads).
leading_modes = pytest.mark.parametrize("mode_executor", ["lane", "remote"], indirect=True)


@leading_modes
def test_a_caller_waiting_for_its_result_reads_it_itself(mode_executor):
    """The outcome is set (and its done-callbacks run) in the thread waiting in result(), not the
    I/O thread: the caller ran the loop, over a TCP link too.  (Not the main thread: with pytest's
    handlers installed, it waits instead; see the test after the next.)"""
    ex = mode_executor(1)
    assert ex.submit(square, 2).result(TIMEOUT) == 4
    seen, results = [], []
    fut = ex.submit(sleep_then_return, 0.3, "late")
    fut.add_done_callback(lambda f: seen.append(threading.current_thread().name))
    waiter = threading.Thread(target=lambda: results.append(fut.result(TIMEOUT)), name="waiter")
    waiter.start()
    waiter.join(TIMEOUT)
    assert results == ["late"] and seen == ["waiter"]
    batch = threading.Thread(target=lambda: results.extend(ex.submit(square, i).result(TIMEOUT) for i in range(100)))
    batch.start()
    batch.join(TIMEOUT)
    assert results[1:] == [i * i for i in range(100)]


@leading_modes
def test_a_leader_does_not_sleep_through_its_own_round_trip(mode_executor):
    """A stall check, not a speed test: a waiting caller that sent its task must not then sleep
    until its poll times out (0.1 s with a pool, a heartbeat with a broker elsewhere), as it once
    did with the embedded broker.  100 round trips take ~0.05 s; stalled, 10 s or more."""
    ex = mode_executor(1)
    assert ex.submit(square, 1).result(TIMEOUT) == 1
    results = []

    def round_trips() -> None:
        started = time.monotonic()
        for i in range(100):
            results.append(ex.submit(square, i).result(TIMEOUT))
        results.append(time.monotonic() - started)

    caller = threading.Thread(target=round_trips, name="waiter")  # (pytest's main thread would not lead)
    caller.start()
    caller.join(TIMEOUT * 3)
    assert results[:-1] == [i * i for i in range(100)]
    assert results[-1] < 5.0, f"100 round trips took {results[-1]:.1f} s: a leader slept through its poll"


# The main thread of a program with no Python handler of its own (pytest-timeout's for SIGALRM keeps
# the tests' main thread from leading): an executor of its own (no argument), or a client of a
# standalone broker over CurveZMQ (its connection file).
MAIN_THREAD_LEADS = """
import os, signal, sys, threading, time
import corral

def sleep_then(seconds):
    time.sleep(seconds)
    return seconds

with (corral.Executor(address=sys.argv[1]) if len(sys.argv) > 1 else corral.Executor(1)) as ex:
    assert ex.submit(abs, -1).result(60) == 1
    seen = []
    fut = ex.submit(sleep_then, 0.3)
    fut.add_done_callback(lambda f: seen.append(threading.current_thread().name))
    assert fut.result(60) == 0.3
    print("set in", seen)
    fut = ex.submit(sleep_then, 1.0)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    began = time.monotonic()
    try:
        fut.result(60)
    except KeyboardInterrupt:
        print(f"interrupted after {time.monotonic() - began:.1f} s")
    print("then", fut.result(60), [ex.submit(abs, -i).result(60) for i in range(5)])
"""


@pytest.mark.parametrize("where", ["embedded", "remote"])
def test_the_main_thread_leads_and_ctrl_c_loses_nothing(where, request):
    """The main thread reads its own result, from its executor's own broker or from one elsewhere
    (a done-callback runs in it); Ctrl-C while it waits comes out of result() at once, and nothing
    is lost."""
    args, worker = [], None
    if where == "remote":
        args = [request.getfixturevalue("broker_address")]
        worker = start_worker(args[0], "--processes", "1")
    try:
        done = subprocess.run([sys.executable, "-c", MAIN_THREAD_LEADS, *args], capture_output=True,
                              text=True, timeout=TIMEOUT * 2)
    finally:
        if worker is not None:
            stop(worker)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "set in ['MainThread']"
    assert lines[1] in ("interrupted after 0.3 s", "interrupted after 0.4 s"), lines
    assert lines[2] == "then 1.0 [0, 1, 2, 3, 4]"


@leading_modes
def test_ctrl_c_while_the_main_thread_waits_for_a_result_loses_nothing(mode_executor, ctrl_c):
    """Breaks: SIGINT reaches the main thread while it waits in result(), running the
    executor's loop itself. KeyboardInterrupt comes out of result() at once; no message is
    lost: the same future, and the next ones, still complete."""
    ex = mode_executor(1)
    assert ex.submit(square, 2).result(TIMEOUT) == 4
    fut = ex.submit(sleep_then_return, 1.0, "late")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        fut.result(TIMEOUT)
    assert time.monotonic() - started < 0.9
    timer.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert fut.result(TIMEOUT) == "late"
    assert [f.result(TIMEOUT) for f in [ex.submit(square, i) for i in range(50)]] == [i * i for i in range(50)]


def test_ctrl_c_while_a_leader_handles_messages_is_raised_after_them(ctrl_c):
    from corral.client.leading import SigintDeferred

    guard = SigintDeferred()
    guard.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            with guard:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here, and only notes it
                handled = True
        assert handled
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@leading_modes
def test_result_timeout_while_leading(mode_executor):
    ex = mode_executor(1)
    fut = ex.submit(sleep_then_return, 0.5, "late")
    started = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.1)
    assert 0.08 <= time.monotonic() - started < 0.4
    assert fut.result(TIMEOUT) == "late"
    other = ex.submit(square, 5)
    assert [f.result() for f in concurrent.futures.as_completed([other], timeout=TIMEOUT)] == [25]


@leading_modes
def test_with_a_python_handler_for_another_signal_the_main_thread_only_waits(mode_executor):
    """A handler that may raise (here for SIGUSR1) could interrupt the main thread in the middle
    of a message; with one installed, the I/O thread handles them all."""
    ex = mode_executor(1)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        assert [ex.submit(square, i).result(TIMEOUT) for i in range(20)] == [i * i for i in range(20)]
    finally:
        signal.signal(signal.SIGUSR1, previous)


@leading_modes
def test_many_threads_waiting_at_once(mode_executor):
    ex = mode_executor(2)
    futures = [ex.submit(sleep_then_return, 0.01 * (i % 5), i) for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(8) as waiters:
        assert list(waiters.map(lambda f: f.result(TIMEOUT), futures)) == list(range(200))


@leading_modes
def test_status_cancel_and_kill_from_other_threads_while_callers_lead(mode_executor):
    """Callers take turns running the loop while other threads ask for the status, cancel a queued
    task and kill a running one: each request is answered, no result is lost or mixed up."""
    ex = mode_executor(2)
    wait_for(lambda: len([w for w in ex.summary() if w["alive"]]) == 2, TIMEOUT, "both workers to join")
    long = [ex.submit(sleep_then_return, 30, "never") for _ in range(2)]  # one on each worker
    wait_for(lambda: all(f.running() for f in long), TIMEOUT, "both long tasks to start")
    queued = ex.submit(square, 7)
    summaries, verdicts = [], []

    def ask() -> None:
        for _ in range(10):
            summaries.append(len(ex.summary()))
        verdicts.append(queued.cancel())
        verdicts.extend(f.kill() for f in long)

    def outcome(fut) -> str:
        try:
            return fut.result(TIMEOUT)
        except concurrent.futures.CancelledError:  # killed: a killed task's future ends cancelled
            return "killed"

    with concurrent.futures.ThreadPoolExecutor(4) as waiters:
        asker = threading.Thread(target=ask, name="asker")
        asker.start()
        outcomes = list(waiters.map(outcome, [*long, queued]))
        asker.join(TIMEOUT)
        later = [ex.submit(square, i) for i in range(40)]
        assert list(waiters.map(lambda f: f.result(TIMEOUT), later)) == [i * i for i in range(40)]
    assert summaries == [2] * 10
    assert verdicts == [True, True, True]
    assert outcomes == ["killed", "killed", "killed"]


@pytest.fixture(scope="module")
def bystander():
    """A child of this process that no test started (as a module's sshd is): made before each test's
    leak check, so it is not the test's."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_hanging_shutdown_fails_its_test_instead_of_hanging_the_session(monkeypatch, bystander):
    """The executor fixture gives shutdown a bounded time; past it, the test fails with the other
    threads' stacks (the executor's among them), and the processes the test started are killed,
    not those that ran before it (a module's sshd, here a bystander)."""
    import conftest

    ex = corral.Executor(1)
    fut = ex.submit(time.sleep, 60)
    wait_for(fut.running, TIMEOUT, "the task to start")
    monkeypatch.setattr(conftest, "SHUTDOWN_PATIENCE", 1.0)
    with pytest.raises(pytest.fail.Exception, match="did not shut down within 1 s; the other threads'") as failed:
        conftest._shut_down(ex)
    assert "--- corral-io" in str(failed.value), str(failed.value)
    with pytest.raises(subprocess.TimeoutExpired):  # it lives (a SIGKILL would take a moment to end it)
        bystander.wait(0.5)
    ex.kill_workers()
    wait_for(lambda: not ex._io.thread.is_alive(), TIMEOUT, "the executor to end")
