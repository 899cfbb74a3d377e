"""A worker's lifetime: `corral worker -` (a launcher's), and leaving for good (worker/lifetime.py).

Real brokers, real `corral worker` processes, real signals: a worker that leaves drains (LEAVING),
hands back what it had not begun and what it had to cut off (BYE), and is not replaced; no task is
lost, none completes twice, none counts an attempt for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import time

import psutil
import pytest

import corral
from corral.broker.broker import Broker
from corral.launchers import document
from corral.security.keys import read_connection
from corral.wire.protocol import Kind
from corral.worker.lifetime import drain_margin
from helpers import TIMEOUT, corral_cmd, free_port, pid_of_task, read_line, runs, start_broker, stop, wait_for

TESTS = os.path.dirname(os.path.abspath(__file__))


def _first_run_long(path: str, seconds: float) -> int:
    """Note a run in ``path``; the first run sleeps ``seconds``, later ones end at once."""
    first = not os.path.exists(path)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        time.sleep(seconds)
    return os.getpid()


# Standalone workers do not share the test's sys.path: sent by value.
first_run_long = type(_first_run_long)(_first_run_long.__code__, {"os": os, "time": time}, "first_run_long")


def worker(address: str, *extra: str, env: dict | None = None, stdin=None) -> subprocess.Popen:
    """`corral worker ADDRESS ...`, its stderr a text pipe, not in a SLURM or Grid Engine job."""
    env = {k: v for k, v in (env or os.environ).items() if k not in ("SLURM_JOB_ID", "JOB_ID", "SGE_ROOT")}
    return subprocess.Popen(corral_cmd("worker", address, *extra), stderr=subprocess.PIPE, stdin=stdin, env=env,
                            text=True)


def ended(proc: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str]:
    """``proc``'s exit code and the rest of its stderr, once it exits by itself within ``timeout``."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"still running after {timeout} s: {proc.stderr.read()}")
    said = proc.stderr.read()
    proc.stderr.close()
    return code, said


def records(ex: corral.Executor) -> dict[int, dict]:
    """The broker's worker records, by pid."""
    return {w["pid"]: w for w in ex.summary()}


def joined(ex: corral.Executor, count: int) -> list[int]:
    """Wait until ``count`` workers are connected; their pids."""
    return wait_for(lambda: [pid for pid, w in records(ex).items() if w["alive"]][:count]
                    if sum(w["alive"] for w in ex.summary()) >= count else None, what=f"{count} workers")


def children_cmdlines(pid: int) -> list[str]:
    """The command lines of ``pid`` and every process below it."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    lines = []
    for p in procs:
        try:
            lines.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return lines


def launch_document(connection: str, **kwargs) -> bytes:
    """The launch document a launcher would write for a worker of the broker of ``connection``."""
    creds = read_connection(connection, "worker")
    return document.make(creds.address, creds.broker_key, creds.name, creds.public, creds.secret, **kwargs)


def test_drain_margin():
    assert drain_margin(4) == 2.0 and drain_margin(100) == 10.0 and drain_margin(10**6) == 120.0


def test_corral_worker_dash_runs_a_launch_document_and_keeps_its_secret_off_command_lines(broker_address):
    initializer = pickle.dumps((exec, ("import os; os.environ['CORRAL_TEST_INIT'] = 'ran'",)))
    doc = launch_document(broker_address, sys_path=[TESTS], initializer=initializer)
    secret = read_connection(broker_address, "worker").secret.decode()
    proc = worker("-", "--processes", "1", stdin=subprocess.PIPE)
    proc.stdin.write(doc.decode())
    proc.stdin.close()  # no lifeline: the worker stays
    try:
        with corral.Executor(address=broker_address) as ex:
            import helpers

            assert ex.submit(os.getenv, "CORRAL_TEST_INIT").result(TIMEOUT) == "ran"  # the initializer ran
            # helpers is imported by reference: found through the document's sys_path
            assert isinstance(ex.submit(helpers.record_then_sleep, os.devnull, 0).result(TIMEOUT), int)
            lines = children_cmdlines(proc.pid)
            assert len(lines) >= 3 and not any(secret in line for line in lines), lines
            bootstrap = [line for line in lines if "--bootstrap" in line]
            assert bootstrap, lines
            private = os.path.dirname(bootstrap[0].split("--bootstrap ")[1].split()[0])
            assert os.stat(private).st_mode & 0o777 == 0o700
    finally:
        proc.send_signal(signal.SIGTERM)
    code, said = ended(proc)
    assert code == 0 and "all 1 processes left (terminated)" in said, said
    assert not os.path.exists(private)


@pytest.mark.parametrize("raw", [b"", b"not json\n", b'{"corral": 1}\n', b'{"corral": 1, "address": 5}\n'],
                         ids=["empty", "garbled", "no-key", "bad-address"])
def test_a_bad_launch_document_is_a_usage_error(raw):
    proc = subprocess.run(corral_cmd("worker", "-", "--processes", "1"), input=raw, capture_output=True,
                          timeout=TIMEOUT)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith("usage:") and "error:" in err and "Traceback" not in err, err
    assert "standard input" in err, err


@pytest.mark.parametrize("argv", [["--wall-time", "soon"], ["--wall-time", "-5"], ["--tasks-max", "0"],
                                  ["--broker-timeout", "0"], ["--term-grace", "-1"]])
def test_bad_lifetime_options_are_usage_errors(argv):
    proc = subprocess.run(corral_cmd("worker", "ipc:///nowhere", *argv), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_worker_leaves_after_tasks_max_and_nothing_is_lost(broker_address):
    first = worker(broker_address, "--processes", "1", "--tasks-max", "3")
    later = None
    try:
        with corral.Executor(address=broker_address, retries=0) as ex:
            [pid] = joined(ex, 1)
            futures = [ex.submit(pid_of_task, i) for i in range(7)]
            code, said = ended(first)
            assert code == 0 and "all 1 processes left (3 task(s) done)" in said, said
            later = worker(broker_address, "--processes", "1")
            pids = [f.result(TIMEOUT) for f in futures]
            assert sorted(pids.count(p) for p in set(pids)) == [3, 4]  # a task process each
            gone = records(ex)[pid]
            assert gone["left"] == "tasks_max" and gone["tasks"] == 3 and not gone["alive"]
            assert all(w["left"] is None for w in records(ex).values() if w["alive"])
    finally:
        stop(first)
        if later is not None:
            stop(later)


def test_a_wall_time_shorter_than_the_work_hands_everything_back(broker_address, tmp_path):
    """retries=0: the task cut off at the wall time is not a failure; it completes elsewhere, once."""
    log = tmp_path / "runs"
    short = worker(broker_address, "--processes", "1", "--wall-time", "6")  # drains at 4 s, cuts at 5 s
    later = None
    try:
        with corral.Executor(address=broker_address, retries=0) as ex:
            [pid] = joined(ex, 1)
            assert 0 < records(ex)[pid]["ends_in"] <= 6
            long = ex.submit(first_run_long, str(log), 60)
            quick = [ex.submit(pid_of_task, i) for i in range(3)]
            wait_for(lambda: runs(log), what="the long task to start")
            code, said = ended(short, 15)
            assert code == 0 and "all 1 processes left (wall time reached)" in said, said
            assert not long.done()
            later = worker(broker_address, "--processes", "1")
            assert long.result(TIMEOUT) == runs(log)[-1]
            assert len({f.result(TIMEOUT) for f in quick}) == 1  # run by the later worker, handed back or queued
            assert len(runs(log)) == 2  # cut off once, completed once
            gone = records(ex)[pid]
            assert gone["left"] == "wall_time" and gone["errors"] == 0
    finally:
        stop(short)
        if later is not None:
            stop(later)


def test_sigterm_drains_and_the_running_task_completes_elsewhere_without_an_attempt(broker_address, tmp_path):
    log = tmp_path / "runs"
    first = worker(broker_address, "--processes", "1", "--term-grace", "1")
    later = None
    try:
        with corral.Executor(address=broker_address, retries=0) as ex:
            [pid] = joined(ex, 1)
            fut = ex.submit(first_run_long, str(log), 60)
            wait_for(lambda: runs(log), what="the task to start")
            signalled = time.monotonic()
            first.send_signal(signal.SIGTERM)
            code, said = ended(first, 15)
            assert time.monotonic() - signalled < 8  # term grace 1 s, a heartbeat to notice, the exit
            assert code == 0 and "all 1 processes left (terminated)" in said, said
            later = worker(broker_address, "--processes", "1")
            assert fut.result(TIMEOUT) == runs(log)[-1]
            assert len(runs(log)) == 2
            assert records(ex)[pid]["left"] == "terminated"
    finally:
        stop(first)
        if later is not None:
            stop(later)


@pytest.mark.parametrize("mode", [(), ("--fresh",)], ids=["persistent", "fresh"])
def test_sigterm_to_the_whole_job_drains_like_sigterm_to_corral_worker(broker_address, tmp_path, mode):
    """scancel and a SLURM walltime send SIGTERM to every process of the job at once: corral worker, its
    worker process, the task process.  The worker still drains: the running task, killed by that
    SIGTERM (or cut off after the term grace), runs again elsewhere without counting an attempt."""
    log = tmp_path / "runs"
    first = worker(broker_address, "--processes", "1", "--term-grace", "1", *mode)
    later = None
    try:
        with corral.Executor(address=broker_address, retries=0) as ex:
            [pid] = joined(ex, 1)
            fut = ex.submit(first_run_long, str(log), 60)
            wait_for(lambda: runs(log), what="the task to start")
            tree = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
            assert runs(log)[0] in [p.pid for p in tree]
            for proc in tree:  # as slurmstepd does: each process of the job, one after another
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGTERM)
            code, said = ended(first, 15)
            assert code == 0 and "all 1 processes left (terminated)" in said, said
            later = worker(broker_address, "--processes", "1")
            assert fut.result(TIMEOUT) == runs(log)[-1]
            assert len(runs(log)) == 2
            assert records(ex)[pid]["left"] == "terminated"
    finally:
        stop(first)
        if later is not None:
            stop(later)


def test_a_task_that_ends_within_the_term_grace_is_not_cut_off(broker_address, tmp_path):
    log = tmp_path / "runs"
    proc = worker(broker_address, "--processes", "1", "--term-grace", "20")
    try:
        with corral.Executor(address=broker_address, retries=0) as ex:
            [pid] = joined(ex, 1)
            fut = ex.submit(first_run_long, str(log), 2)
            wait_for(lambda: runs(log), what="the task to start")
            proc.send_signal(signal.SIGTERM)
            assert fut.result(TIMEOUT) != os.getpid()
            code, said = ended(proc, 15)
            assert code == 0 and "terminated" in said, said
            assert len(runs(log)) == 1
    finally:
        stop(proc)


def test_the_lifeline_closing_makes_the_worker_leave(broker_address):
    doc = launch_document(broker_address, lifeline=True)
    proc = worker("-", "--processes", "2", stdin=subprocess.PIPE)
    proc.stdin.write(doc.decode())
    proc.stdin.flush()  # and kept open: the launcher wants the worker
    try:
        with corral.Executor(address=broker_address) as ex:
            pids = joined(ex, 2)
            assert ex.submit(abs, -3).result(TIMEOUT) == 3
            time.sleep(0.5)
            assert proc.poll() is None  # the lifeline holds
            proc.stdin.close()
            code, said = ended(proc, 15)
            assert code == 0 and "all 2 processes left (the launcher's lifeline closed)" in said, said
            assert {records(ex)[p]["left"] for p in pids} == {"lifeline"}
    finally:
        stop(proc)


def test_a_worker_with_no_broker_leaves_after_the_broker_timeout(tmp_path):
    started = time.monotonic()
    proc = worker(f"ipc://{tmp_path}/nobody", "--processes", "1", "--broker-timeout", "1.5")
    code, said = ended(proc, 15)
    assert code == 0 and "no word from the broker for 1.5 s" in said, said
    assert time.monotonic() - started < 10


def test_a_worker_whose_broker_was_killed_leaves_after_the_broker_timeout():
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
    proc = worker(broker.connection, "--processes", "1", "--broker-timeout", "2")
    try:
        wait_for(lambda: "joined the broker" in read_line(proc.stderr), what="the worker to join")
        broker.kill()
        broker.wait(10)
        killed = time.monotonic()
        code, said = ended(proc, 20)
        assert code == 0 and "no word from the broker for 2 s" in said, said
        assert time.monotonic() - killed < 10
    finally:
        stop(proc)
        stop(broker)


def test_shutdown_with_leave_makes_a_worker_leave_for_good(tmp_path):
    """The broker asks (a scale-down): the worker drains and leaves; a plain SHUTDOWN (a standalone broker
    stopping) only ends the process, which corral worker replaces."""
    address = f"ipc://{tmp_path}/broker"
    broker = Broker(address)
    proc = worker(address, "--processes", "1")
    try:
        def turn():
            broker.step(dict(broker.poller.poll(50)))
            return broker.workers

        first = next(iter(wait_for(turn, what="the worker to join").values()))
        broker.send(broker.workers_sock, first.ident, Kind.SHUTDOWN)
        second = wait_for(lambda: [w for w in turn().values() if w.pid != first.pid], what="a replacement")[0]
        assert first.left == "shutdown"
        broker.dismiss(second, "scale_down")
        wait_for(lambda: turn() == {} and not second.alive, what="the worker to leave")
        assert second.left == "scale_down"
        code, said = ended(proc, 15)
        assert code == 0 and "all 1 processes left (asked by the broker: scale_down)" in said, said
        statuses = [w["left"] for w in json.loads(broker.status()[1][0])]
        assert statuses == ["shutdown", "scale_down"]
    finally:
        stop(proc)
        broker.close()


def test_wall_time_auto_outside_a_job_is_none_and_a_given_one_is_told_to_the_broker(broker_address):
    procs = [worker(broker_address, "--processes", "1"), worker(broker_address, "--processes", "1",
                                                                "--wall-time", "300")]
    try:
        with corral.Executor(address=broker_address) as ex:
            joined(ex, 2)
            ends = sorted((w["ends_in"] for w in ex.summary()), key=lambda e: e is None)
            assert ends[1] is None and 290 < ends[0] <= 300, ends
    finally:
        for proc in procs:
            stop(proc)
            proc.stderr.close()


def test_the_executors_own_idle_workers_still_exit_and_come_back(make_executor):
    ex = make_executor(1, idle_timeout=0.3)
    first = ex.submit(os.getpid).result(TIMEOUT)
    wait_for(lambda: any(w["left"] == "idle" for w in ex.summary()), what="the idle worker to leave")
    assert ex.submit(os.getpid).result(TIMEOUT) != first  # the pool started another: not gone for good
