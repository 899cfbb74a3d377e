"""Priorities, resources and named queues, with real workers: the order tasks run in, where they
run, how many at once, and what a task no worker could run says (docs/tasks.md)."""

from __future__ import annotations

import os
import subprocess
import time
from signal import SIGKILL

import pytest

import corral
from helpers import TIMEOUT, corral_cmd, start_worker, stop, wait_for


def _note(path: str, label: str, seconds: float = 0.0) -> int:
    """Append ``label`` and this process's parent (its worker) to ``path``, start and end times; sleep between."""
    start = time.monotonic()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{label} {os.getppid()} {start} {time.monotonic()}\n")
    return os.getppid()


def _block(started: str, release: str, log: str | None = None) -> str:
    """Say we run (our pid in ``started``), wait until ``release`` exists (30 s at most), then note it in
    ``log`` as ``note`` does."""
    with open(started, "a") as f:
        f.write(f"{os.getpid()}\n")
    start, deadline = time.monotonic(), time.monotonic() + 30
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    if log:
        with open(log, "a") as f:
            f.write(f"blocker {os.getppid()} {start} {time.monotonic()}\n")
    return "blocker"


# Sent by value: neither task processes nor standalone workers import this module (slow, or not on their path).
note = type(_note)(_note.__code__, {"os": os, "time": time}, "note", _note.__defaults__)
block = type(_block)(_block.__code__, {"os": os, "time": time}, "block", _block.__defaults__)


def ran(path) -> list[tuple[str, int, float, float]]:
    """What ``note`` wrote: (label, worker pid, start, end), in the order the tasks ended."""
    if not path.exists():
        return []
    return [(label, int(pid), float(a), float(b)) for label, pid, a, b in
            (line.split() for line in path.read_text().splitlines())]


def all_of(summary, count: int):
    """``summary`` if ``count`` workers are connected, else None."""
    return summary if sum(w["alive"] for w in summary) == count else None


def most_at_once(runs) -> int:
    """The most of ``runs`` that overlapped in time."""
    edges = sorted([(a, 1) for _, _, a, _ in runs] + [(b, -1) for _, _, _, b in runs])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("mode", [{}, {"prefetch": 0}, {"fresh": True, "prefetch": 0}],
                         ids=["lane", "prefetch0", "fresh"])
def test_higher_priority_runs_first_and_fifo_within_a_priority(make_executor, tmp_path, mode):
    log, started, release = tmp_path / "log", tmp_path / "started", tmp_path / "release"
    ex = make_executor(max_workers=1, **mode)
    first = ex.submit(block, str(started), str(release))
    wait_for(started.exists, what="the blocking task to start")
    futures = [ex.options(priority=p).submit(note, str(log), label)
               for label, p in [("a0", 0), ("b5", 5), ("c0", 0), ("d9", 9), ("e5", 5), ("f-1", -1)]]
    time.sleep(0.1)  # all of them queued at the broker before the worker is free
    release.touch()
    assert first.result(TIMEOUT) == "blocker"
    for fut in futures:
        fut.result(TIMEOUT)
    assert [label for label, *_ in ran(log)] == ["d9", "b5", "e5", "a0", "c0", "f-1"]


def test_a_task_requeued_after_its_worker_is_killed_keeps_its_priority(make_executor, tmp_path):
    """The killed task (priority 0) runs again after a task of priority 5 queued behind it, and before the
    tasks of its own priority (the front of its priority, not of the queue)."""
    log, started, release = tmp_path / "log", tmp_path / "started", tmp_path / "release"
    ex = make_executor(max_workers=1, prefetch=0, retries=1)
    first = ex.submit(block, str(started), str(release), str(log))
    pid = int(wait_for(lambda: started.exists() and started.read_text().split(), what="the task to start")[0])
    later = [ex.submit(note, str(log), "b0"), ex.options(priority=5).submit(note, str(log), "c5")]
    time.sleep(0.1)  # both queued at the broker
    os.kill(pid, SIGKILL)
    wait_for(lambda: len(started.read_text().split()) == 2, what="the killed task to run again")
    release.touch()
    assert first.result(TIMEOUT) == "blocker"
    for fut in later:
        fut.result(TIMEOUT)
    assert [label for label, *_ in ran(log)] == ["c5", "blocker", "b0"]


def test_an_unschedulable_task_is_shown_by_summary_and_fails_after_its_timeout(make_executor, tmp_path):
    ex = make_executor(max_workers=1, resources={"gpu": 1, "mem": "1GB"})
    assert ex.options(resources={"gpu": 1, "mem": "512MB"}).submit(note, str(tmp_path / "log"), "ok").result(TIMEOUT)
    fut = ex.options(resources={"gpu": 2}, timeout=1.0).submit(note, str(tmp_path / "log"), "never")
    summary = wait_for(lambda: (s := ex.summary()).unschedulable and s, what="the task to be found unschedulable")
    assert summary.unschedulable == 1 and "gpu=2 (the most a worker has: gpu=1)" in summary.unschedulable_reasons[0]
    assert "1 unschedulable" in str(summary)
    info = wait_for(lambda: (i := fut.info).unschedulable and i, what="the future to hear it")
    assert info.state == "queued" and "gpu=2 (the most a worker has: gpu=1)" in info.unschedulable
    assert ex.submit(note, str(tmp_path / "log"), "plain").result(TIMEOUT)  # it holds nothing up
    with pytest.raises(corral.TaskTimeoutError, match="gpu=2"):
        fut.result(TIMEOUT)
    assert ex.summary().unschedulable == 0 and fut.info.unschedulable is None and fut.info.state == "failed"
    assert [label for label, *_ in ran(tmp_path / "log")] == ["ok", "plain"]


def test_resources_and_queues_on_a_standalone_broker(broker_address, tmp_path):
    """Two `corral worker`s: one GPU for the two processes of the first; two GPUs for the one process
    of the second, which serves the queue "io" too. A task asking for 2 GPUs runs only on the second,
    io tasks only there; neither ever runs more GPU tasks at once than it has GPUs."""
    log = tmp_path / "log"
    one = start_worker(broker_address, "--processes", "2", "--resources", "gpu=1,mem=8GB")
    two = start_worker(broker_address, "--processes", "1", "--resources", "gpu=2", "--queue", "io",
                       "--queue", "default")
    try:
        with corral.Executor(address=broker_address, retries=0) as ex:
            workers = wait_for(lambda: all_of(ex.summary(), 3), what="3 worker processes")
            one_pids = {w["pid"] for w in workers if w["resources"] == {"gpu": 1, "mem": 8_000_000_000}}
            two_pids = {w["pid"] for w in workers if w["queues"] == ["default", "io"]}
            assert len(one_pids) == 2 and len(two_pids) == 1
            futures = [ex.options(resources={"gpu": 1}).submit(note, str(log), "gpu1", 0.15) for _ in range(4)]
            futures += [ex.options(resources={"gpu": 2}).submit(note, str(log), "gpu2", 0.1) for _ in range(2)]
            futures += [ex.options(queue="io").submit(note, str(log), "io", 0.05) for _ in range(3)]
            futures += [ex.submit(note, str(log), "plain", 0.05) for _ in range(3)]
            for fut in futures:
                fut.result(TIMEOUT)
    finally:
        stop(one)
        stop(two)
    runs = ran(log)
    assert {pid for label, pid, *_ in runs if label in ("gpu2", "io")} <= two_pids
    assert {pid for label, pid, *_ in runs if label == "gpu1"} <= one_pids | two_pids
    on_one = [r for r in runs if r[0] == "gpu1" and r[1] in one_pids]
    assert on_one and most_at_once(on_one) <= 1  # one GPU between the first worker's two processes
    assert most_at_once([r for r in runs if r[1] in two_pids and r[0].startswith("gpu")]) <= 1  # its only process


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"priority": "high"}, ValueError, "priority must be an integer"),
    ({"priority": True}, ValueError, "priority must be an integer"),
    ({"resources": "gpu"}, TypeError, "resources must be a dict"),
    ({"resources": {"gpu": 0}}, ValueError, "resource gpu must be a number > 0"),
    ({"resources": {"gpu": "lots"}}, ValueError, "is not an amount"),
    ({"resources": {"a b": 1}}, ValueError, "is not a name"),
    ({"queue": ""}, ValueError, "is not a name"),
    ({"queue": 3}, TypeError, "queue must be a string"),
])
def test_bad_options_are_refused_clearly(options, error, words):
    from corral.config import check_task_options

    with pytest.raises(error, match=words):
        check_task_options(options)


def test_bad_executor_resources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="resource gpu must be"):
        corral.Executor(max_workers=1, resources={"gpu": -1})
    with pytest.raises(ValueError, match="give them to `corral worker`"):
        corral.Executor(address="ipc://" + str(tmp_path / "nowhere"), resources={"gpu": 1})


@pytest.mark.parametrize("argv", [["--resources", "gpu"], ["--resources", "gpu=none"], ["--resources", "gpu=-1"],
                                  ["--resources", "gpu=1,gpu=2"], ["--queue", ""], ["--queue", "a b"]])
def test_bad_worker_placement_arguments_are_usage_errors(argv):
    proc = subprocess.run(corral_cmd("worker", "ipc:///nowhere", *argv), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert f"argument --{argv[0][2:]}" in proc.stderr, proc.stderr


def test_a_future_hears_that_its_task_is_unschedulable_and_when_it_no_longer_is(broker_address, tmp_path):
    """Over CurveZMQ: a task for a queue no worker serves says why in its info; a worker that
    serves it comes, the record clears, and the task runs there."""
    first = start_worker(broker_address, "--processes", "1")
    second = None
    try:
        with corral.Executor(address=broker_address) as ex:
            assert ex.submit(note, str(tmp_path / "log"), "plain").result(TIMEOUT)
            fut = ex.options(queue="big").submit(note, str(tmp_path / "log"), "big")
            info = wait_for(lambda: (i := fut.info).unschedulable and i, what="the future to hear it")
            assert "big" in info.unschedulable and info.state == "queued"
            second = start_worker(broker_address, "--processes", "1", "--queue", "big")
            assert fut.result(TIMEOUT)
            assert fut.info.unschedulable is None and fut.info.state == "done"
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
