"""The ``corral`` command: standalone broker and workers, demo, address checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import zmq

import corral
from corral.broker.broker import Broker
from corral.cli import build_parser
from corral.cli.worker import MAX_RESTART_DELAY_S, QUICK_EXIT_S, Restarts
from corral.wire.protocol import Kind
from helpers import (
    connection_file,
    corral_cmd,
    free_port,
    held_descriptors,
    pid_of_task,
    read_line,
    start_worker,
    stop,
)


def test_version_and_help():
    out = subprocess.run(corral_cmd("--version"), capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"corral {corral.__version__}"
    out = subprocess.run(corral_cmd("--help"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "demo" in out.stdout and "broker" in out.stdout


def test_demo_prints_estimate_rate_and_table():
    out = subprocess.run(
        corral_cmd("demo", "--tasks", "20", "--samples", "2000", "--workers", "2"),
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("pi ~= 3.") == 2
    assert "tasks/s" in out.stdout
    for column in ("worker", "host", "pid", "tasks", "busy s", "errors"):
        assert column in out.stdout


def test_a_plain_tcp_listener_needs_insecure_and_warns_at_every_start():
    """Before, a loopback TCP broker was plain TCP, open to every user of the machine."""
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(corral.InsecureAddressError, match="insecure=True"):
        Broker(address)  # no keys, no insecure: nothing listens
    for _ in range(2):  # every start says so, not the first one only
        ctx = zmq.Context()
        with pytest.warns(corral.SecurityWarning, match="anyone who can reach this port"):
            Broker(address, context=ctx, insecure=True).close()
        ctx.term()
    proc = subprocess.Popen(corral_cmd("broker", "--listen", address, "--insecure"), stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(proc.stderr).startswith(f"corral: SecurityWarning: listening on {address} without encryption")
        assert "listening" in read_line(proc.stderr)
    finally:
        stop(proc)
        proc.stderr.close()


@pytest.mark.parametrize("fresh", [False, True])
def test_standalone_broker_and_workers(broker_address, fresh):
    worker = start_worker(broker_address, "--processes", "2", *(["--fresh"] if fresh else []))
    try:
        with corral.Executor(address=broker_address) as ex:
            assert sum(ex.map(abs, range(-100, 100), chunksize=7)) == 10000
            pids = set(ex.map(pid_of_task, range(10)))
            if fresh:
                assert len(pids) == 10  # a new process per task
            summary = ex.summary()
            assert sum(w["tasks"] for w in summary) >= 10
    finally:
        stop(worker)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_a_standalone_workers_task_process_holds_nothing_of_its_supervisor(broker_address, fresh):
    """User code cannot reach its worker's ZeroMQ connection (its TCP socket, ZeroMQ's own
    descriptors): a task process holds only the socket to its supervisor."""
    worker = start_worker(broker_address, "--processes", "1", *(["--fresh"] if fresh else []))
    try:
        with corral.Executor(address=broker_address) as ex:
            for held in [ex.submit(held_descriptors).result(60) for _ in range(3)]:
                assert len(held) == 1 and held[0].startswith("socket:"), f"a task process holds {held}"
    finally:
        stop(worker)


def test_workers_join_in_the_middle_of_a_map(broker_address):
    first = start_worker(broker_address, "--processes", "1")
    late = None
    try:
        with corral.Executor(address=broker_address) as ex:
            results = ex.map(pid_of_task, range(200))
            pids = [next(results) for _ in range(5)]
            late = start_worker(broker_address, "--processes", "1")
            pids += list(results)
            assert len(pids) == 200
            assert len(set(pids)) == 2, "the worker that joined mid-map took no work"
    finally:
        stop(first)
        if late is not None:
            stop(late)


def test_each_summary_asks_a_standalone_broker_once(broker_address):
    """summary() sends one STATUS and gets one answer, however busy the client's I/O loop is
    meanwhile (a map's results arriving): the broker computes its status once per call, and
    each call gets the answer to its own request."""
    worker = start_worker(broker_address, "--processes", "2")
    try:
        with corral.Executor(address=broker_address) as ex:
            answers = []
            on_message = ex._io.on_message

            def counting(kind, body, frames):  # counts, then does exactly what it did
                if kind == Kind.STATUS_REPLY:
                    answers.append(body)
                on_message(kind, body, frames)

            ex._io.on_message = counting
            results = ex.map(abs, range(-20_000, 20_000))
            summaries = [ex.summary() for _ in range(5)]
            assert sum(results) == 400_000_000
            assert len(summaries) == 5 and len(answers) == 5
    finally:
        stop(worker)


BAD_VALUES = [
    (["demo", "--tasks", "-5"], "--tasks", "integer >= 1"),
    (["demo", "--tasks", "0"], "--tasks", "integer >= 1"),
    (["demo", "--tasks", "many"], "--tasks", "integer >= 1"),
    (["demo", "--samples", "0"], "--samples", "integer >= 1"),
    (["demo", "--workers", "0"], "--workers", "integer >= 1"),
    (["broker", "--heartbeat", "0"], "--heartbeat", "seconds > 0"),
    (["broker", "--heartbeat", "nan"], "--heartbeat", "seconds > 0"),
    (["broker", "--heartbeat", "inf"], "--heartbeat", "seconds > 0"),
    (["broker", "--liveness", "0"], "--liveness", "integer >= 1"),
    (["worker", "tcp://127.0.0.1:7700", "--processes", "0"], "--processes", "integer >= 1"),
    (["worker", "tcp://127.0.0.1:7700", "--prefetch", "-1"], "--prefetch", "integer >= 0"),
    (["worker", "tcp://127.0.0.1:7700", "--max-tasks-per-child", "0"], "--max-tasks-per-child", "integer >= 1"),
    (["worker", "tcp://127.0.0.1:7700", "--idle-timeout", "-1"], "--idle-timeout", "seconds > 0"),
    (["worker", "tcp://127.0.0.1:7700", "--idle-timeout", "inf"], "--idle-timeout", "seconds > 0"),
    (["worker", "tcp://127.0.0.1:7700", "--max-memory", "lots"], "--max-memory", "512MB"),
    (["worker", "tcp://127.0.0.1:7700", "--max-memory", "inf"], "--max-memory", "512MB"),
    (["worker", "tcp://127.0.0.1:7700", "--max-memory", "0"], "--max-memory", "512MB"),
]


@pytest.mark.parametrize("argv, option, expected", BAD_VALUES, ids=[" ".join(a[0::2]) for a, _, _ in BAD_VALUES])
def test_a_bad_numeric_option_is_a_usage_error(capsys, argv, option, expected):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: corral ")
    assert f"error: argument {option}: expected " in err and expected in err and repr(argv[-1]) in err


def test_good_numeric_options_parse():
    args = build_parser().parse_args(["worker", "tcp://127.0.0.1:7700", "--processes", "3", "--prefetch", "0",
                                      "--idle-timeout", "2.5", "--max-memory", "2GB", "--max-tasks-per-child", "1"])
    assert (args.processes, args.prefetch, args.idle_timeout, args.max_memory) == (3, 0, 2.5, 2 * 10**9)
    args = build_parser().parse_args(["broker", "--heartbeat", "0.5", "--liveness", "1"])
    assert (args.heartbeat, args.liveness) == (0.5, 1)


def test_a_bad_value_exits_2_without_a_traceback():
    """Before, `corral demo --tasks 0` died with ZeroDivisionError and `--max-memory lots` with ValueError."""
    for argv in (["demo", "--tasks", "0"], ["worker", "tcp://127.0.0.1:7700", "--max-memory", "lots"]):
        out = subprocess.run(corral_cmd(*argv), capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("usage: corral ") and "error: argument " in out.stderr


@pytest.mark.parametrize("argv", [
    ["--idle-timeout", "-1"], ["--idle-timeout", "nan"], ["--max-memory", "lots"], ["--prefetch", "-1"],
    ["--max-tasks", "0"], ["--spin", "-1"], ["--spin", "inf"],
])
def test_the_worker_process_parser_checks_its_values_too(argv):
    # A subprocess: a worker's main() that accepted the value would go on to serve.
    out = subprocess.run([sys.executable, "-m", "corral.worker", "tcp://127.0.0.1:7700", *argv],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"error: argument {argv[0]}: expected " in out.stderr, out.stderr


def test_a_worker_process_that_keeps_failing_is_restarted_with_backoff(tmp_path):
    """Before, `corral worker` started a new interpreter every 0.2 s forever, and said nothing."""
    starts = tmp_path / "starts"
    # Every worker process (not the `corral worker` command itself) exits with code 3 as it starts.
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if b'corral.worker' in open('/proc/self/cmdline', 'rb').read():\n"
        f"    open({str(starts)!r}, 'a').write('start\\n')\n"
        "    os._exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(corral_cmd("worker", connection_file(address), "--processes", "1"), env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4.0)
    finally:
        stop(proc)
    err = proc.stderr.read()
    proc.stderr.close()
    assert f"1 persistent process(es) waiting for the broker at {address}" in err
    assert "exited with code 3" in err and "3 times in a row" in err, err
    # Starts at about 0, 0.5, 1.5 and 3.5 s (each after its predecessor failed), not 15 or more.
    assert 3 <= len(starts.read_text().split()) <= 5, err


def test_restarts_back_off_and_recover():
    r = Restarts()
    r.note_started([1], now=0.0)
    assert "once" in r.ended(1, 1, now=0.2) and not r.due(0.3) and r.due(0.7)
    r.note_started([2], now=0.7)
    assert "2 times in a row" in r.ended(2, -9, now=0.9) and "killed by SIGKILL" in r.ended(3, -9, now=1.0)
    assert r.failures == 3 and not r.due(2.9) and r.due(3.0)  # 0.5, 1, 2 s
    for n in range(4, 12):
        r.ended(n, 1, now=10.0 + n)
    assert r.not_before - 21.0 == MAX_RESTART_DELAY_S
    r.note_started([20], now=60.0)
    assert r.due(60.0 + QUICK_EXIT_S) and r.failures == 0  # one lived: the next failure waits 0.5 s again
    assert r.ended(20, 0, now=100.0) is None  # a clean exit (idle_timeout) is no failure
    r.note_started([21], now=100.0)
    assert "after 50 s; starting another" in r.ended(21, 1, now=150.0) and r.due(150.0)
