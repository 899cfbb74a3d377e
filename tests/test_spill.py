"""The broker spills queued payloads past its memory budget to disk, and reads them back to send them.

A standalone broker with a small budget holds far more queued payload than the budget while its
resident memory stays near it; every result comes back right, a task whose worker dies is read
back again, and the files go when their tasks end (result, cancel, client gone) and with the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib

import psutil
import pytest

from corral.broker.spill import Spill, remove_stale
from helpers import corral_cmd, free_port, start_broker, start_worker, stop

MiB = 1 << 20


def payload(i: int, size: int = MiB) -> bytes:
    """``size`` bytes that differ from task to task."""
    return i.to_bytes(4, "little") * (size // 4)


def spill_files(parent) -> list[str]:
    """The files in the ``corral-spill-*`` directories under ``parent``."""
    return [os.path.join(root, name) for root, _, names in os.walk(parent) for name in names]


def wait_for(what, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(every)


@pytest.fixture
def spilling_broker(tmp_path):
    """A standalone broker with a 32 MiB budget that spills under ``tmp_path/spill``."""
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    proc = start_broker(f"tcp://127.0.0.1:{free_port()}", "--max-memory", "32MiB", "--spill-dir", str(spill_dir))
    proc.spill_dir = spill_dir
    yield proc
    stop(proc)


@pytest.fixture
def workers():
    """``start(connection, *extra)``: ``corral worker`` processes, stopped when the test ends."""
    started: list[subprocess.Popen] = []

    def start(connection: str, *extra: str) -> subprocess.Popen:
        started.append(start_worker(connection, *extra))
        return started[-1]

    yield start
    for proc in started:
        stop(proc)


def test_rss_stays_near_the_budget_and_every_result_is_right(spilling_broker, workers, make_executor):
    n = 800
    ex = make_executor(address=spilling_broker.connection)
    futures = [ex.submit(zlib.crc32, payload(i)) for i in range(n)]
    # No worker yet: everything waits in the broker, all but ~32 MiB of it on disk.
    wait_for(lambda: len(spill_files(spilling_broker.spill_dir)) >= n - 40)
    rss = psutil.Process(spilling_broker.pid).memory_info().rss
    assert rss < 200 * MiB, f"the broker holds {rss / MiB:.0f} MiB with {n} MiB queued and a 32 MiB budget"
    workers(spilling_broker.connection, "--processes", "2")
    assert [f.result(timeout=60) for f in futures] == [zlib.crc32(payload(i)) for i in range(n)]
    wait_for(lambda: not spill_files(spilling_broker.spill_dir), timeout=5)


# -- the spill itself, in process ---------------------------------------------------------------


def _task(gid: int, frames: tuple):
    from corral.broker.records import Task

    return Task(gid, b"client", gid, frames, {})


def test_the_newest_spill_first_and_read_back_each_time(tmp_path):
    spill = Spill(3 * (MiB + 10), str(tmp_path))
    fn = b"pickled function"  # a map's first frame: stored once, never spilled
    tasks = [_task(gid, (fn, payload(gid), b"x" * 10)) for gid in range(1, 9)]
    for task in tasks:
        spill.add(task)
    assert spill.held == 8 * (MiB + 10)
    spill.turn()
    assert spill.held <= spill.budget and spill.files == 5
    assert [type(t.frames) is tuple for t in tasks] == [True] * 3 + [False] * 5  # the oldest stay
    [directory] = tmp_path.iterdir()
    assert directory.name.startswith("corral-spill-") and directory.stat().st_mode & 0o777 == 0o700
    for _ in range(2):  # a retried task is read back again: its frames do not stay in memory
        assert tasks[7].frames.__len__() == 3
        assert spill.outgoing(tasks[7]) == (fn, payload(8), b"x" * 10)
    for task in tasks:
        spill.release(task)
    spill.turn()  # the files of tasks that ended go in the loop turn's spill work
    assert spill.held == 0 and spill.files == 0 and not list(directory.iterdir())
    spill.close()
    assert not directory.exists()


def test_small_tasks_stay_in_memory(tmp_path):
    spill = Spill(1, str(tmp_path), private=True)
    tasks = [_task(gid, (b"f", b"x" * 100)) for gid in range(1, 4)]
    for task in tasks:
        spill.add(task)
    assert not spill.due() or spill.turn() == 0
    assert spill.files == 0 and not list(tmp_path.iterdir())
    spill.close()


def test_a_file_that_cannot_be_read_back_raises(tmp_path):
    spill = Spill(1, str(tmp_path), private=True)
    task = _task(1, (b"f", payload(1, 8192)))
    spill.add(task)
    spill.turn()
    os.truncate(tmp_path / "spill" / "1", 100)
    with pytest.raises(OSError, match="shorter"):
        spill.outgoing(task)
    spill.release(task)
    spill.close()


def test_stale_directories_of_dead_brokers_go(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from corral.broker import spill as module

    host = module._host()
    stale = tmp_path / f"corral-spill-{host}-{int(dead.stdout)}-abc"
    live = tmp_path / f"corral-spill-{host}-{os.getpid()}-abc"
    other = tmp_path / f"corral-spill-elsewhere-{int(dead.stdout)}-abc"
    for path in (stale, live, other):
        path.mkdir()
        (path / "1").write_bytes(b"x")
    assert remove_stale(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


# -- a standalone broker ---------------------------------------------------------------------------


def test_a_stopped_broker_leaves_no_files_and_a_killed_ones_go_at_the_next_start(tmp_path, make_executor):
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    for how in (signal.SIGTERM, signal.SIGKILL):
        proc = start_broker(address, "--max-memory", "1", "--spill-dir", str(spill_dir))
        try:
            ex = make_executor(address=proc.connection)
            for i in range(20):
                ex.submit(zlib.crc32, payload(i, 8192))
            wait_for(lambda: len(spill_files(spill_dir)) == 20)
            proc.send_signal(how)
            proc.wait(15)
        finally:
            stop(proc)
        ex.shutdown(wait=False, cancel_futures=True)
        left = list(spill_dir.iterdir())
        if how == signal.SIGTERM:
            assert left == []
        else:
            assert [p.name.split("-")[-2] for p in left] == [str(proc.pid)]
    proc = start_broker(address, "--max-memory", "1", "--spill-dir", str(spill_dir))
    try:
        wait_for(lambda: not list(spill_dir.iterdir()), timeout=10)  # as it starts serving
    finally:
        stop(proc)


def _die_once(marker: str, data: bytes) -> int:
    """Kill this task's process the first time (the worker is lost), then answer."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return zlib.crc32(data)


def _tests_env() -> dict:
    """An environment in which ``corral worker`` processes can import this module's functions."""
    here = os.path.dirname(__file__)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_a_spilled_task_whose_worker_dies_is_read_back_again(tmp_path, fresh, make_executor):
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}", "--max-memory", "1", "--spill-dir", str(spill_dir))
    worker = None
    try:
        ex = make_executor(address=broker.connection, retries=1)
        data = [payload(i, 100_000) for i in range(4)]
        futures = [ex.submit(_die_once, str(tmp_path / f"marker{i}"), d) for i, d in enumerate(data)]
        wait_for(lambda: len(spill_files(spill_dir)) == 4)
        worker = start_worker(broker.connection, "--processes", "1", *(["--fresh"] if fresh else []),
                              env=_tests_env())
        assert [f.result(timeout=30) for f in futures] == [zlib.crc32(d) for d in data]
        wait_for(lambda: not spill_files(spill_dir), timeout=5)
    finally:
        if worker is not None:
            stop(worker)
        stop(broker)


def test_cancel_kill_and_a_client_gone_remove_the_files(tmp_path, make_executor):
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}", "--max-memory", "1", "--spill-dir", str(spill_dir),
                          "--heartbeat", "0.2", "--liveness", "2")
    client = None
    try:
        ex = make_executor(address=broker.connection)
        futures = [ex.submit(zlib.crc32, payload(i, 8192)) for i in range(10)]
        wait_for(lambda: len(spill_files(spill_dir)) == 10)
        assert all(f.cancel() for f in futures[:5])
        assert futures[5].kill()  # a queued task killed ends at once
        wait_for(futures[5].done, timeout=5)
        wait_for(lambda: len(spill_files(spill_dir)) == 4, timeout=5)
        # Another client queues tasks and dies without a word: its files go when the broker gives it up.
        script = ("import corral, sys, zlib\n"
                  f"ex = corral.Executor(address={broker.connection!r}, heartbeat=0.2, liveness=2)\n"
                  "fs = [ex.submit(zlib.crc32, bytes([i]) * 8192) for i in range(7)]\n"
                  "print('queued', flush=True)\n"
                  "sys.stdin.read()\n")
        client = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        assert client.stdout.readline().strip() == "queued"
        wait_for(lambda: len(spill_files(spill_dir)) == 11)
        client.kill()
        client.wait(5)
        wait_for(lambda: len(spill_files(spill_dir)) == 4, timeout=10)
        assert all(f.cancel() for f in futures[6:])
        wait_for(lambda: not spill_files(spill_dir), timeout=5)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait(5)
        stop(broker)


def test_a_payload_that_cannot_be_read_back_fails_its_task(spilling_broker, workers, make_executor):
    ex = make_executor(address=spilling_broker.connection)
    lost = ex.submit(zlib.crc32, payload(1, 40 * MiB))  # over the 32 MiB budget: it spills
    [path] = wait_for(lambda: spill_files(spilling_broker.spill_dir))
    os.unlink(path)
    workers(spilling_broker.connection, "--processes", "1")
    with pytest.raises(RuntimeError, match="task failed: spill: the broker could not read back"):
        lost.result(timeout=30)
    assert ex.submit(zlib.crc32, payload(2, 40 * MiB)).result(timeout=30) == zlib.crc32(payload(2, 40 * MiB))


@pytest.mark.parametrize(("argv", "expected"), [
    (["--max-memory", "lots"], "error: argument --max-memory: expected a size"),
    (["--max-memory", "0"], "error: argument --max-memory: expected a size"),
    (["--spill-dir", "/no/such/directory"], "error: argument --spill-dir: no such directory"),
])
def test_the_command_line_answers_bad_values_as_argparse_does(argv, expected):
    out = subprocess.run(corral_cmd("broker", "--listen", "ipc:///tmp/never-bound", *argv), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr, out.stderr


# -- the executor's own broker ---------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"fresh": True}], ids=["lane", "fresh"])
def test_the_embedded_broker_spills_past_broker_memory(options, make_executor):
    ex = make_executor(1, broker_memory="256KiB", **options)
    data = [payload(i, 100_000) for i in range(60)]  # under the size that travels through shared memory
    assert list(ex.map(zlib.crc32, data)) == [zlib.crc32(d) for d in data]
    spill = ex._broker.spill
    assert spill.written > 1_000_000 and spill.files == 0 and spill.held == 0
    assert spill.directory is not None and spill.directory.startswith(ex._tmpdir)
    assert os.listdir(spill.directory) == []


def test_broker_memory_is_checked(make_executor):
    with pytest.raises(ValueError, match="broker_memory 'lots' is not a size"):
        make_executor(broker_memory="lots")
    with pytest.raises(ValueError, match="broker_memory must be a positive number of bytes"):
        make_executor(broker_memory=0)
    with pytest.raises(ValueError, match="corral broker --max-memory"):
        make_executor(address="ipc:///tmp/nowhere", broker_memory="1GB")


def _crc_plus(data: bytes, extra: int, table: dict) -> int:
    return zlib.crc32(data) + extra + len(table)


def test_spilled_dependents_wait_then_run_with_results_and_objects(tmp_path, make_executor):
    """Tasks that wait for a dependency and take an object (Executor.put) spill like any other:
    read back when they run, each with its dependency's result and the object."""
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}", "--max-memory", "1", "--spill-dir", str(spill_dir))
    worker = None
    try:
        ex = make_executor(address=broker.connection)
        table = ex.put({i: i for i in range(1000)})
        gate = tmp_path / "gate"
        first = ex.submit(_wait_then, str(gate), 7)
        data = [payload(i, 100_000) for i in range(6)]
        futures = [ex.submit(_crc_plus, d, first, table) for d in data]
        worker = start_worker(broker.connection, "--processes", "1", env=_tests_env())
        wait_for(lambda: len(spill_files(spill_dir)) == 6)  # waiting, and spilled
        gate.touch()
        assert [f.result(timeout=30) for f in futures] == [zlib.crc32(d) + 7 + 1000 for d in data]
        wait_for(lambda: not spill_files(spill_dir), timeout=5)
    finally:
        if worker is not None:
            stop(worker)
        stop(broker)


def _wait_then(path: str, value: int) -> int:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value
