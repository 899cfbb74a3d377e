"""In-task progress (``corral.report``) and progress bars (``options(progress=...)``,
``corral.progress``): a report reaches ``future.info`` while its task runs, on every way a
worker runs tasks (a lane, supervised, fresh, spawned, a standalone broker's ``corral worker``);
a flood of reports is coalesced; bars count done, failed and retried tasks and what running
tasks report, and close however their map ends; without tqdm, the error says what to install."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

import corral
from corral import reporting
from corral.wire import protocol, sockets
from corral.wire.protocol import Kind
from helpers import TIMEOUT, next_message, wait_for

tqdm = pytest.importorskip("tqdm")


def report_then_wait(fraction, message, release: str) -> float:
    """Report, then wait (bounded) until ``release`` exists; this task's fraction."""
    corral.report(fraction, message)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return fraction


def flood(seconds: float) -> int:
    """Report as fast as possible for ``seconds``; how many reports were made."""
    calls, start = 0, time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        corral.report((now - start) / seconds, f"call {calls}")
        calls += 1
    corral.report(1.0, "all done")
    return calls


def steps(x: int, fail_on: int | None = None) -> int:
    """Report five steps of 20 ms; raise ValueError for ``fail_on``."""
    for i in range(5):
        corral.report((i + 1) / 5, f"item {x} step {i}")
        time.sleep(0.02)
    if x == fail_on:
        raise ValueError(x)
    return x


def die_once_after_report(x: int, marker: str) -> int:
    """Element 0 reports, then dies (SIGKILL) on its first attempt; everything else returns ``x``."""
    if x == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        corral.report(0.5, "about to die")
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def report_and_die() -> None:
    corral.report(0.3, "dying")
    time.sleep(0.5)  # the report leaves before the process goes
    os.kill(os.getpid(), signal.SIGKILL)


def bar_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "corral-progress"]


# -- corral.report ---------------------------------------------------------------------------


def test_report_reaches_info_while_the_task_runs(mode_executor, tmp_path):
    """A report is in future.info within a second or so (bounded generously on a loaded machine),
    while the task still runs; it stays in the record once the task is done."""
    ex = mode_executor(1)
    release = str(tmp_path / "release")
    fut = ex.submit(report_then_wait, 0.25, "a quarter", release)
    asked = time.monotonic()
    info = wait_for(lambda: fut.info.progress is not None and fut.info, what="the report to arrive")
    took = time.monotonic() - asked
    assert (info.progress, info.progress_message) == (0.25, "a quarter")
    assert not fut.done() and info.state == "running"
    open(release, "w").close()
    assert fut.result(timeout=TIMEOUT) == 0.25
    assert (fut.info.progress, fut.info.progress_message) == (0.25, "a quarter")
    assert took < 10, f"the report took {took:.1f} s to arrive"


def test_report_outside_a_task_does_nothing():
    assert corral.report(0.5, "in the client") is None
    assert corral.report() is None
    seen = []
    thread = threading.Thread(target=lambda: seen.append(corral.report(1, "in a thread")))
    thread.start()
    thread.join(TIMEOUT)
    assert seen == [None]


@pytest.mark.parametrize("fraction, message, error", [
    (-0.1, None, ValueError), (1.5, None, ValueError), (math.nan, None, ValueError), (math.inf, None, ValueError),
    ("0.5", None, TypeError), (True, None, TypeError), (None, 3, TypeError), (None, b"bytes", TypeError),
])
def test_report_checks_its_arguments(fraction, message, error):
    with pytest.raises(error, match="corral.report"):
        corral.report(fraction, message)


def test_a_long_message_is_cut(make_executor):
    ex = make_executor(1)
    fut = ex.submit(corral.report, 1, "x" * 10_000)
    assert fut.result(timeout=TIMEOUT) is None
    assert fut.info.progress == 1.0
    assert fut.info.progress_message == "x" * reporting.MAX_MESSAGE
    assert reporting.MAX_MESSAGE == protocol.MAX_PROGRESS_TEXT


@pytest.mark.parametrize("mode", ["lane", "fresh"])
def test_a_flood_of_reports_is_coalesced(make_executor, mode):
    """A task that reports in a tight loop for 1.5 s sends a few reports a second, the latest each
    time, and is hardly slowed; its last report arrives with its result."""
    ex = make_executor(1, **({"fresh": True} if mode == "fresh" else {}))
    fut = ex.submit(flood, 1.5)
    arrived = []
    fut._progress_watch = lambda f: arrived.append(f._progress)  # each PROGRESS that reaches the future
    calls = fut.result(timeout=TIMEOUT)
    assert calls > 10_000, f"only {calls} reports in 1.5 s: report() is too slow"
    # At most one every REPORT_INTERVAL (0.25 s), plus the first: 7; the watch was set a little late.
    assert 1 <= len(arrived) <= 8, arrived
    fractions = [a[0] for a in arrived]
    assert fractions == sorted(fractions)
    assert (fut.info.progress, fut.info.progress_message) == (1.0, "all done")


def test_a_task_killed_after_reporting(mode_executor):
    """Its process dies after a report: the future fails with WorkerLostError, keeps the report,
    and nothing hangs."""
    ex = mode_executor(1)
    fut = ex.submit(report_and_die)
    with pytest.raises(corral.WorkerLostError):
        fut.result(timeout=TIMEOUT)
    assert (fut.info.progress, fut.info.progress_message) == (0.3, "dying")  # sent before it died
    assert ex.submit(abs, -1).result(timeout=TIMEOUT) == 1


def test_a_killed_task_s_bar_closes(make_executor, tmp_path):
    ex = make_executor(1)
    release = str(tmp_path / "never")
    fut = ex.submit(report_then_wait, 0.5, "waiting", release)
    wait_for(lambda: fut.info.progress is not None, what="the report")
    out = io.StringIO()
    results = corral.progress([fut], file=out)
    assert fut.kill(grace=0)
    assert list(results) == [fut]
    assert fut.cancelled()
    assert not bar_threads()
    assert "0/1" in out.getvalue()


# -- the broker's part ----------------------------------------------------------------------


def test_the_broker_passes_reports_on_to_the_task_s_client_only(broker_in_thread):
    """A worker's report for a task it holds reaches the task's client under the client's id (and
    says the task began); one for a task it does not hold, a task id never given out, or a malformed
    PROGRESS is dropped and logged; a report that comes after the task's result is dropped quietly."""
    broker, address, logs = broker_in_thread()
    ctx = zmq.Context()
    socks = [sockets.dealer(ctx, address, linger=0) for _ in range(3)]

    def progress(*entries) -> bytes:
        return protocol.encode(Kind.PROGRESS, {"progress": [list(e) for e in entries]})

    try:
        worker, other, client = socks
        for name, sock in (("w", worker), ("other", other)):
            sock.send(protocol.encode(Kind.HELLO, {"role": "worker", "name": name, "pid": 1}))
            next_message(sock, Kind.WELCOME)
        worker.send(protocol.encode(Kind.READY, {"credit": 1}))
        client.send(protocol.encode(Kind.HELLO, {"role": "client", "retries": 0}))
        next_message(client, Kind.WELCOME)
        client.send_multipart([protocol.encode(Kind.SUBMIT, {"tasks": [[41, 2, {}]]}), b"fn", b"args"])
        gid = next_message(worker, Kind.TASKS)["tasks"][0][0]

        worker.send(progress([gid, 0.5, "half"]))
        assert next_message(client, Kind.PROGRESS) == {"progress": [[41, 0.5, "half"]]}
        assert next_message(client, Kind.STARTED) == {"ids": [41]}  # a report says the task began
        other.send(progress([gid, 0.9, "not mine"]))  # another worker's task
        worker.send(progress([gid + 1000, 0.9, None]))  # never given out
        worker.send(progress([gid, 2, None]))  # malformed: whole message dropped
        worker.send(progress([gid, None, "three quarters"]))
        assert next_message(client, Kind.PROGRESS) == {"progress": [[41, None, "three quarters"]]}
        worker.send_multipart([protocol.encode(Kind.RESULT, {"results": [[gid, 0, 1, {}]]}), b"out"])
        next_message(client, Kind.RESULT)
        worker.send(progress([gid, 1.0, "late"]))  # after its result: quietly dropped
        client.send(protocol.encode(Kind.STATUS))
        next_message(client, Kind.STATUS_REPLY)
        wait_for(lambda: len(logs) >= 3, what="three lines logged")
        time.sleep(0.2)
        assert not client.poll(0), "something more reached the client"
        assert any("for a task it does not hold" in line for line in logs), logs
        assert any("never gave out" in line for line in logs), logs
        assert any("dropped malformed message" in line and "progress fraction" in line for line in logs), logs
        assert len(logs) == 3, logs
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


# -- progress bars -------------------------------------------------------------------------


def final(out: io.StringIO) -> str:
    """The bar as last drawn."""
    return out.getvalue().split("\r")[-1]


def test_a_map_s_bar_counts_done_failed_and_retried(make_executor, tmp_path):
    ex = make_executor(2)
    out = io.StringIO()
    marker = str(tmp_path / "died")
    results = ex.options(retries=1, progress={"file": out, "desc": "mapped"}).map(
        die_once_after_report, range(6), [marker] * 6)
    assert list(results) == list(range(6))
    assert not bar_threads()
    last = final(out)
    assert last.startswith("mapped: 100%") and "6/6" in last, out.getvalue()
    assert "retried=1" in last and "failed" not in last, last
    assert "about to die" in out.getvalue()  # the message a running task reported


def test_a_map_s_bar_when_a_task_fails(make_executor):
    ex = make_executor(2)
    out = io.StringIO()
    with pytest.raises(ValueError):
        list(ex.options(progress={"file": out}).map(steps, range(6), [5] * 6))
    wait_for(lambda: not bar_threads(), what="the bar to close")
    last = final(out)
    assert "6/6" in last and "failed=1" in last, out.getvalue()


def test_a_map_s_bar_counts_chunk_elements_and_in_task_progress(make_executor):
    ex = make_executor(1)
    out = io.StringIO()
    assert list(ex.options(progress={"file": out}).map(steps, range(8), chunksize=4)) == list(range(8))
    drawn = [part.split("|")[2].split()[0] for part in out.getvalue().split("\r") if part.count("|") >= 2]
    counts = [float(text.split("/")[0]) for text in drawn]
    assert counts[-1] == 8 and all(text.endswith("/8") for text in drawn)
    assert any(0 < c < 8 and c != 4 for c in counts), counts  # a chunk's reports moved the bar within it


def test_a_map_over_a_generator_has_no_total(make_executor):
    ex = make_executor(1)
    out = io.StringIO()
    assert list(ex.options(progress={"file": out}).map(abs, (-i for i in range(3)))) == [0, 1, 2]
    assert "3it" in final(out), out.getvalue()


def test_a_bar_closes_when_the_consumer_stops(make_executor):
    ex = make_executor(1)
    out = io.StringIO()
    results = ex.options(progress={"file": out}).map(steps, range(50))
    assert next(results) == 0
    results.close()
    assert not bar_threads()
    unread = ex.options(progress={"file": io.StringIO()}).map(abs, range(5))
    assert bar_threads()
    del unread  # a map never read: its bar closes when it goes
    wait_for(lambda: not bar_threads(), what="the unread map's bar to close")


def test_corral_progress_yields_futures_as_they_complete(make_executor):
    ex = make_executor(2)
    futures = [ex.submit(steps, i, 3) for i in range(5)]
    out = io.StringIO()
    seen = list(corral.progress(futures, desc="waiting", file=out))
    assert set(seen) == set(futures) and len(seen) == 5
    assert not bar_threads()
    last = final(out)
    assert last.startswith("waiting: 100%") and "5/5" in last and "failed=1" in last, last


def test_progress_is_the_client_s_option(make_executor):
    ex = make_executor(1)
    view = ex.options(retries=1, progress=True)
    assert "progress" not in view._options  # never sent to the broker
    assert "progress" not in view.options(timeout=30)._options
    with pytest.raises(TypeError, match="corral.progress"):
        view.submit(abs, 1)
    assert view.options(progress=False).submit(abs, -1).result(timeout=TIMEOUT) == 1
    with pytest.raises(TypeError, match="progress must be"):
        ex.options(progress=5)
    with pytest.raises(TypeError, match="progress must be"):
        ex.options(progress="yes")


MISSING_TQDM = """
import sys
sys.modules["tqdm"] = None  # as if tqdm were not installed
import corral
for attempt in (lambda: corral.progress([]), lambda: ex.options(progress=True)):
    with corral.Executor(1) as ex:
        try:
            attempt()
        except ModuleNotFoundError as exc:
            print(exc)
"""


def test_without_tqdm_the_error_says_what_to_install():
    done = subprocess.run([sys.executable, "-c", MISSING_TQDM], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("pip install 'corral[progress]'" in line for line in lines), done.stdout


def test_a_misspelt_option_is_answered_with_progress_among_the_valid_ones(make_executor):
    ex = make_executor(1)
    with pytest.raises(TypeError, match="unknown task option.*prgress.*the client's own: progress"):
        ex.options(prgress=True)
