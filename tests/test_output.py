"""What tasks print and warn, in the client: output forwarded from workers elsewhere (with a
prefix), captured per task (``capture_output``), warnings raised again once per task; and
corral's own messages, which go through ``logging``.

Real processes throughout: the executor's own workers in every mode, and a standalone broker
with ``corral worker`` processes; a client whose streams are read runs in a subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import zmq

import corral
import output_tasks
from corral.errors import WorkerLostError
from corral.wire import protocol, sockets
from corral.wire.protocol import Kind
from corral.worker.capture import CAPTURE_MAX
from corral.worker.output import TASK_MAX
from helpers import corral_cmd, free_port, next_message, read_line, start_broker, start_worker, stop, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
PREFIX = r"\[[^\]\s]+:\d+ task \d+\] "


@pytest.fixture
def remote():
    """A standalone broker and ``corral worker --processes 1`` (which can import output_tasks):
    the broker's connection file."""
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
    worker = start_worker(broker.connection, "--processes", "1", env=ENV)
    try:
        yield broker.connection
    finally:
        stop(worker)
        stop(broker)


def run_client(address: str, body: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``body`` in a client process (``ex``: an executor on ``address``); its stdout and stderr."""
    script = "import sys, corral, output_tasks\nwith corral.Executor(address=sys.argv[1]) as ex:\n"
    script += textwrap.indent(textwrap.dedent(body), "    ")
    return subprocess.run([sys.executable, "-c", script, address], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


# -- forwarded output --------------------------------------------------------------------


def test_a_remote_tasks_output_reaches_the_clients_streams_with_a_prefix(remote):
    done = run_client(remote, """
        assert ex.submit(output_tasks.chatty, 5).result(60) == 5
        assert ex.submit(output_tasks.chatty, 6).result(60) == 6
    """)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    err = done.stderr.splitlines()
    assert [line for line in out if re.fullmatch(PREFIX + r"out \d", line)] == out, out
    assert [line[-5:] for line in out] == ["out 5", "out 6"]
    assert [line for line in err if re.fullmatch(PREFIX + r"err \d", line)] == err, err
    assert [line[-5:] for line in err] == ["err 5", "err 6"]
    assert out[0].split("]")[0] != out[1].split("]")[0]  # two tasks, each named


def test_a_launched_workers_output_is_forwarded_too():
    script = textwrap.dedent("""
        import corral, output_tasks
        from corral.launchers import Local
        with corral.Executor(max_workers=1, launcher=Local()) as ex:
            assert ex.submit(output_tasks.chatty, 4).result(120) == 4
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=180)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(PREFIX + "out 4\n", done.stdout), done.stdout
    assert re.search("^" + PREFIX + "err 4$", done.stderr, re.MULTILINE), done.stderr


def test_each_line_of_a_map_of_short_tasks_names_its_own_task(remote):
    """Short tasks run in a pipeline (the next one begins before the supervisor has read what the
    last one wrote): each line is still its own task's."""
    done = run_client(remote, """
        assert list(ex.map(output_tasks.echo, range(300))) == list(range(300))
    """)
    assert done.returncode == 0, done.stderr
    owners = {}
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"\[[^\]\s]+:\d+ task (\d+)\] element (\d+)", line)
        assert match, line
        owners.setdefault(int(match[1]), []).append(int(match[2]))
    assert sorted(owners) == list(range(1, 301))  # the client numbers a map's tasks in order
    assert all(elements == [task - 1] for task, elements in owners.items()), owners


def test_a_remote_tasks_last_words_before_a_segfault_are_forwarded(remote):
    done = run_client(remote, """
        try:
            ex.options(retries=0).submit(output_tasks.last_words).result(60)
        except corral.WorkerLostError:
            print("lost", flush=True)
    """)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(PREFIX + "last words", lines[0]), lines
    assert re.fullmatch(PREFIX + "no newline yet", lines[1]), lines  # ended with its task
    assert lines[2] == "lost"


def test_a_remote_task_flooding_its_output_is_bounded_and_blocks_nothing(remote):
    started = time.monotonic()
    done = run_client(remote, """
        assert ex.submit(output_tasks.lines, 200_000).result(120) == 200_000  # 20 MB
        assert ex.submit(output_tasks.chatty, 1).result(60) == 1  # the worker goes on
    """, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started < 150
    forwarded = [line for line in done.stdout.splitlines() if "xxxx" in line]
    assert TASK_MAX // 100 - 1 <= len(forwarded) <= TASK_MAX // 100 + 1  # lines of 100 bytes up to the cap
    assert re.fullmatch(PREFIX + "00000000x+", forwarded[0])
    assert re.search(rf"{PREFIX}\[corral: {20_000_000 - TASK_MAX} bytes of this task's output dropped\]",
                     done.stderr), done.stderr[-500:]
    assert done.stdout.splitlines()[-1].endswith("out 1")


def test_a_worker_told_not_to_forward_keeps_the_output(tmp_path):
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
    log = tmp_path / "worker.out"
    with open(log, "w") as out:
        worker = subprocess.Popen(corral_cmd("worker", broker.connection, "--processes", "1", "--no-forward-output"),
                                  stdout=out, stderr=subprocess.DEVNULL, env=ENV)
    try:
        done = run_client(broker.connection, "assert ex.submit(output_tasks.chatty, 9).result(60) == 9\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        deadline = time.monotonic() + 10
        while "out 9" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text() == "out 9\n"
    finally:
        stop(worker)
        stop(broker)


# -- captured output ------------------------------------------------------------------------


def test_captured_output_is_kept_per_task_and_not_printed(mode_executor, capfd):
    ex = mode_executor(1)
    captured = ex.options(capture_output=True)
    futures = [captured.submit(output_tasks.chatty, i) for i in range(3)]
    assert [f.result(60) for f in futures] == [0, 1, 2]
    for i, f in enumerate(futures):
        assert (f.info.stdout, f.info.stderr) == (f"out {i}\n", f"err {i}\n")
    plain = ex.submit(output_tasks.chatty, 7)
    assert plain.result(60) == 7
    assert plain.info.stdout is None and plain.info.stderr is None
    time.sleep(0.3)  # forwarded output (remote) is written by a thread
    out, err = capfd.readouterr()
    assert "out 0" not in out and "err 0" not in err  # captured: printed nowhere
    assert "out 7" in out and "err 7" in err  # not captured: where it always went


def test_captured_output_keeps_its_tail(mode_executor):
    if mode_executor.mode not in ("lane", "remote"):
        pytest.skip("one local and one remote mode are enough for the bound")
    ex = mode_executor(1)
    n = CAPTURE_MAX // 100 + 5000  # half a megabyte past the bound
    f = ex.options(capture_output=True).submit(output_tasks.lines, n)
    assert f.result(120) == n
    text = f.info.stdout
    first, rest = text.split("\n", 1)
    assert re.fullmatch(r"\[corral: \d+ bytes cut\]", first), first
    assert len(rest) <= CAPTURE_MAX
    assert rest.endswith(f"{n - 1:08d}" + "x" * 91 + "\n")  # the last line is there
    assert rest.startswith(f"{n - len(rest) // 100:08d}")  # whole lines, the latest ones


def test_a_captured_task_that_segfaults_keeps_its_last_lines(mode_executor):
    ex = mode_executor(1)
    f = ex.options(capture_output=True, retries=0).submit(output_tasks.last_words)
    with pytest.raises(WorkerLostError):
        f.result(60)
    assert f.info.stdout == "last words\nno newline yet"
    assert f.info.state == "lost"
    assert ex.options(capture_output=True).submit(output_tasks.chatty, 1).result(60) == 1  # the worker goes on


def test_capture_output_must_be_a_bool():
    with corral.Executor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="capture_output must be True or False"):
            ex.options(capture_output="yes")


# -- warnings -------------------------------------------------------------------------------


def test_a_tasks_warnings_are_raised_again_in_the_client_once_per_task(mode_executor):
    ex = mode_executor(1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert ex.submit(output_tasks.warns, 1000).result(60) == 1000
        assert ex.submit(output_tasks.warns, 3).result(60) == 3
    runtime = [w for w in record if w.category is RuntimeWarning]
    custom = [w for w in record if w.category is output_tasks.TaskWarning]
    assert [str(w.message) for w in runtime] == ["careful", "careful"]  # once per task, not 1003 times
    assert [str(w.message) for w in custom] == ["custom", "custom"]
    assert runtime[0].filename == output_tasks.__file__ or runtime[0].filename.endswith("output_tasks.py")
    assert runtime[0].lineno == output_tasks.warns.__code__.co_firstlineno + 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the task's other warning
def test_pytest_warns_catches_a_tasks_warning(mode_executor):
    ex = mode_executor(1)
    with pytest.warns(output_tasks.TaskWarning, match="custom"):
        ex.submit(output_tasks.warns, 1).result(60)


def test_a_warning_category_the_client_cannot_import_is_a_user_warning_naming_it(mode_executor):
    ex = mode_executor(1)
    with pytest.warns(UserWarning, match=r"no_such_module_for_corral\.GhostWarning: boo"):
        assert ex.submit(output_tasks.ghost_warning).result(60) == 1


def test_the_clients_filters_decide(make_executor):
    ex = make_executor(1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("ignore")
        ex.submit(output_tasks.warns, 5).result(60)
    assert record == []


# -- corral's own messages -------------------------------------------------------------------


@pytest.mark.parametrize("verbose", [True, False], ids=["-v", "quiet"])
def test_corral_broker_verbose_says_more(verbose):
    """``-v``: the broker's debugging lines (who joined, who left) are printed; without it, not."""
    port = free_port()
    proc = subprocess.Popen(corral_cmd("broker", "--listen", f"tcp://127.0.0.1:{port}", *(["-v"] if verbose else [])),
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = [read_line(proc.stderr)]
        while "connection file" not in lines[-1]:
            lines.append(read_line(proc.stderr))
        connection = lines[-1].split("connection file ", 1)[1].split(" (")[0]
        with corral.Executor(address=connection) as ex:
            ex.summary()
    finally:
        stop(proc)
        said = proc.stderr.read()
        proc.stderr.close()
    joined = re.search(r"^corral\.broker: client .* joined", said, re.MULTILINE)
    assert bool(joined) == verbose, said


def test_a_library_user_sees_nothing_of_corral_by_default(tmp_path):
    script = textwrap.dedent("""
        import corral, output_tasks
        with corral.Executor(max_workers=2) as ex:
            assert list(ex.map(abs, range(-50, 50))) == [abs(i) for i in range(-50, 50)]
            try:
                ex.options(retries=0).submit(output_tasks.last_words).result(60)
            except corral.WorkerLostError:
                pass
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # the task's own words went to stdout; corral said nothing
    assert done.stdout == "last words\nno newline yet"


# -- the broker's part ----------------------------------------------------------------------


def test_the_broker_passes_output_on_to_the_task_s_client_only(broker_in_thread):
    """A worker's OUTPUT for a task it holds reaches that task's client, under the client's id and
    with the worker's name; a worker's claim about another worker's task, or a task id never given
    out, is dropped and logged, and a malformed OUTPUT is dropped whole: no other client hears any."""
    broker, address, logs = broker_in_thread()
    ctx = zmq.Context()
    socks = [sockets.dealer(ctx, address, linger=0) for _ in range(4)]

    def output(*entries) -> bytes:
        return protocol.encode(Kind.OUTPUT, {"output": [list(e) for e in entries]})

    try:
        worker, liar, owner, bystander = socks
        for name, sock in (("w", worker), ("liar", liar)):
            sock.send(protocol.encode(Kind.HELLO, {"role": "worker", "name": name, "pid": 1}))
            next_message(sock, Kind.WELCOME)
        worker.send(protocol.encode(Kind.READY, {"credit": 1}))
        for sock in (owner, bystander):
            sock.send(protocol.encode(Kind.HELLO, {"role": "client", "retries": 0}))
            next_message(sock, Kind.WELCOME)
        owner.send_multipart([protocol.encode(Kind.SUBMIT, {"tasks": [[7, 2, {}]]}), b"fn", b"args"])
        gid = next_message(worker, Kind.TASKS)["tasks"][0][0]

        worker.send(output([gid, "stdout", "hello\n"], [gid, "stderr", "oops\n"]))
        assert next_message(owner, Kind.OUTPUT) == {
            "worker": "w", "output": [[7, "stdout", "hello\n"], [7, "stderr", "oops\n"]]}
        liar.send(output([gid, "stdout", "forged\n"]))  # not its task
        worker.send(output([gid + 1000, "stdout", "nobody's\n"]))  # never given out
        worker.send(output([gid, "stdin", "no such stream\n"]))  # malformed: dropped whole
        worker.send(output([gid, "stdout", "bye\n"]))
        assert next_message(owner, Kind.OUTPUT) == {"worker": "w", "output": [[7, "stdout", "bye\n"]]}
        wait_for(lambda: len(logs) >= 3, what="three lines logged")
        time.sleep(0.2)
        for sock in (owner, bystander):  # only heartbeats wait there
            while sock.poll(0):
                kind, body = protocol.decode(sock.recv_multipart()[0])
                assert kind == Kind.HEARTBEAT, f"{kind.name} {body} reached a client"
        assert sum("for tasks it does not hold" in line for line in logs) == 2, logs
        assert any("malformed" in line for line in logs), logs
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
