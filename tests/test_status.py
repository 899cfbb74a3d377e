"""The broker's status: ``Executor.status()``, ``corral status``, and an executor's status file.

Real brokers, workers and clients: an executor's own broker, or ``corral broker`` with
``corral worker`` processes on loopback (CurveZMQ keys, a second client key made with
``corral keys add-client``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

import corral
from corral.status import report
from corral.wire import protocol
from corral.wire.protocol import Kind
from helpers import TIMEOUT, corral_cmd, free_port, start_broker, start_worker, stop, takes_ctrl_c, wait_for


def wait_then(path: str, seconds: float) -> str:
    """A task that says it runs (a file), then sleeps: one that status sees running."""
    open(path, "w").close()
    time.sleep(seconds)
    return "slept"


def boom(x):
    raise ValueError(f"boom {x}")


def status_when(ex, predicate, what: str) -> dict:
    """``ex.status()`` once ``predicate`` holds for it."""

    def check():
        status = ex.status()
        return status if predicate(status) else None

    return wait_for(check, what=what)


def corral_run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(corral_cmd(*args), capture_output=True, text=True, timeout=timeout)


def test_status_after_a_map_with_a_running_task_and_a_failure(make_executor, tmp_path):
    ex = make_executor(2)
    assert list(ex.map(abs, range(-50, 0))) == list(range(50, 0, -1))
    failed = ex.submit(boom, 7)
    with pytest.raises(ValueError):
        failed.result(TIMEOUT)
    rate = ex.status()["rate"]  # over the last 10 s: now, while the map is in it
    assert rate["done_per_s"] > 0 and rate["failed_per_s"] > 0
    marker = str(tmp_path / "running")
    slow = ex.submit(wait_then, marker, 30)
    wait_for(lambda: os.path.exists(marker), what="the slow task to begin")
    status = status_when(ex, lambda s: any(w["running"] for w in s["workers"]) and all(
        w["rss"] for w in s["workers"] if w["state"] != "gone"), "a task seen running, the workers' memory reported")
    json.dumps(status)  # JSON-able as it is
    assert status["counts"]["done"] == 50 and status["counts"]["failed"] == 1
    assert status["counts"]["running"] == 1 and status["counts"]["connected"] == 2
    busy = [w for w in status["workers"] if w["state"] == "busy"]
    assert len(busy) == 1 and busy[0]["running"][0]["task"] == slow._cid
    assert busy[0]["running"][0]["for_s"] >= 0 and 0 < busy[0]["busy_share"] <= 1
    assert sum(w["tasks"] for w in status["workers"]) == 51
    assert all(w["rss"] > 1 << 20 and w["pid"] and w["host"] for w in status["workers"])
    events = status["events"]
    assert len(events) == 51 and [e["state"] for e in events].count("done") == 50
    failure = next(e for e in events if e["state"] == "failed")
    assert failure["task"] == failed._cid and failure["worker"] in {w["worker"] for w in status["workers"]}
    assert "Traceback" in failure["error"] and "ValueError: boom 7" in failure["error"]
    assert failure["finished"] >= failure["started"] > time.time() - 300
    assert status["clients"] and status["clients"][0]["submitted"] == 52
    assert "2 workers, 51 tasks, 0 queued, 1 running" in str(ex.summary())  # summary() is what it was
    slow.kill()


def test_counts_stay_whole_past_the_events_kept(make_executor):
    ex = make_executor(2)
    futures = [ex.submit(abs, -i) for i in range(2600)]
    assert [f.result(TIMEOUT) for f in futures] == list(range(2600))
    status = ex.status()
    assert status["counts"]["done"] == 2600 and status["counts"]["failed"] == 0
    shown = [e["task"] for e in status["events"]]  # the last 1,000 to end, in the order they ended
    assert len(set(shown)) == 1000 and set(shown) <= {f._cid for f in futures}
    (me,) = status["clients"]
    assert (me["client"], me["submitted"], me["done"], me["queued"], me["running"]) == ("local", 2600, 2600, 0, 0)


def test_a_worker_that_left_is_gone_and_says_why(make_executor):
    ex = make_executor(1, idle_timeout=0.3)
    assert ex.submit(abs, -1).result(TIMEOUT) == 1
    status = status_when(ex, lambda s: any(w["state"] == "gone" for w in s["workers"]), "the idle worker gone")
    gone = next(w for w in status["workers"] if w["state"] == "gone")
    assert gone["left"] == "idle" and gone["running"] == [] and gone["tasks"] == 1
    assert 0 <= gone["busy_share"] <= 1 and status["counts"]["departed"] >= 1
    assert "gone" in report(status)


def test_a_running_task_and_memory_seen_whatever_runs_the_tasks(mode_executor, tmp_path):
    ex = mode_executor(2)
    marker = str(tmp_path / "running")
    slow = ex.submit(wait_then, marker, 30)
    wait_for(lambda: os.path.exists(marker), what="the task to begin")
    status = status_when(ex, lambda s: any(w["running"] for w in s["workers"]) and all(
        w["rss"] for w in s["workers"] if w["state"] != "gone"), "the task seen running, the workers' memory")
    (running,) = [r for w in status["workers"] for r in w["running"]]
    assert running["task"] == slow._cid and running["for_s"] is not None and running["for_s"] >= 0
    time.sleep(0.5)
    later = ex.status()
    (again,) = [r for w in later["workers"] for r in w["running"]]
    assert again["for_s"] >= running["for_s"] + 0.3
    slow.kill()


def test_queued_tasks_by_queue_and_priority_with_no_workers(make_executor, broker_address):
    ex = make_executor(address=broker_address)
    futures = [ex.submit(abs, 1) for _ in range(3)]
    futures += [ex.options(priority=5).submit(abs, 2) for _ in range(2)]
    futures += [ex.options(queue="gpu").submit(abs, 3)]
    futures += [ex.options(queue="gpu", priority=-1).submit(abs, 4)]
    status = status_when(ex, lambda s: s["counts"]["queued"] == 7, "7 tasks queued")
    assert status["queues"] == {"default": {"queued": 5, "priorities": {"0": 3, "5": 2}},
                                "gpu": {"queued": 2, "priorities": {"0": 1, "-1": 1}}}
    assert status["workers"] == [] and status["counts"]["running"] == 0
    for f in futures:
        f.cancel()


def test_another_clients_task_ids_are_hidden(make_executor, tmp_path):
    keys = tmp_path / "keys"
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}", "--keys", str(keys))
    worker = None
    try:
        bob = tmp_path / "bob.json"
        added = corral_run("keys", "--keys", str(keys), "add-client", "bob", "-o", str(bob))
        assert added.returncode == 0, added.stderr
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                          os.environ.get("PYTHONPATH")]))}
        worker = start_worker(broker.connection, "--processes", "2", env=env)
        alice_ex = make_executor(address=broker.connection)
        bob_ex = make_executor(address=str(bob))
        assert alice_ex.submit(abs, -1).result(TIMEOUT) == 1
        marker = str(tmp_path / "running")
        slow = alice_ex.submit(wait_then, marker, 30)
        wait_for(lambda: os.path.exists(marker), what="alice's task to begin")

        def running(s):
            return any(w["running"] for w in s["workers"])

        mine = status_when(alice_ex, running, "alice's task seen running")
        theirs = status_when(bob_ex, running, "alice's task seen running by bob")
        assert [r["task"] for w in mine["workers"] for r in w["running"]] == [slow._cid]
        assert [r["task"] for w in theirs["workers"] for r in w["running"]] == [None]
        assert theirs["counts"]["running"] == 1  # counted, not named
        assert [e["task"] for e in mine["events"]] == [1] and theirs["events"] == []
        assert [c["client"] for c in theirs["clients"]] == ["bob"]
        assert "bob" not in [c["client"] for c in mine["clients"]]
        # `corral status` with alice's key is one of alice's clients: it sees her task's id.
        shown = corral_run("status", broker.connection, "--json", "--timeout", "30")
        assert shown.returncode == 0, shown.stderr
        seen = json.loads(shown.stdout)
        assert [r["task"] for w in seen["workers"] for r in w["running"]] == [slow._cid]
        status_when(bob_ex, lambda s: len(s["workers"]) == 2 and all(w["rss"] for w in s["workers"]),
                    "the remote workers' memory reported")
        slow.kill()
    finally:
        if worker is not None:
            stop(worker)
        stop(broker)


@pytest.fixture
def busy_broker(tmp_path):
    """A standalone broker with one worker, and an executor on it that has run a few tasks."""
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
    worker = start_worker(broker.connection, "--processes", "1")
    try:
        with corral.Executor(address=broker.connection) as ex:
            assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
            yield broker, ex
    finally:
        stop(worker)
        stop(broker)


def test_corral_status_json_and_report(busy_broker):
    broker, ex = busy_broker
    shown = corral_run("status", broker.connection, "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["counts"]["done"] == 3 and len(status["workers"]) == 1
    assert status["address"].startswith("tcp://127.0.0.1:")
    name = status["workers"][0]["worker"]
    report = corral_run("status", broker.connection)
    assert report.returncode == 0, report.stderr
    assert name in report.stdout and "3 done" in report.stdout and "worker" in report.stdout
    assert "memory" in report.stdout and "busy" in report.stdout and "Traceback" not in report.stderr


@pytest.mark.parametrize("order", ["file first", "file after --watch"])
def test_corral_status_watch_until_sigint(busy_broker, order):
    """``--watch`` takes an optional SECONDS, so ``--watch FILE`` gave FILE to it: FILE is taken as the
    FILE|ADDRESS where no other follows, and the report comes every 2 s (the default)."""
    broker, _ = busy_broker
    argv = [broker.connection, "--watch", "0.2"] if order == "file first" else ["--watch", broker.connection]
    proc = subprocess.Popen(corral_cmd("status", *argv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=takes_ctrl_c)
    try:
        time.sleep(3 if order == "file first" else 5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.count("corral status of") >= (3 if order == "file first" else 2)  # not a tty: a new report each time
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_corral_status_watch_refreshes_in_place_on_a_terminal(busy_broker):
    import pty
    import select

    broker, _ = busy_broker
    leader, follower = pty.openpty()
    proc = subprocess.Popen(corral_cmd("status", broker.connection, "--watch", "0.2"), stdout=follower,
                            stderr=subprocess.PIPE, text=True, preexec_fn=takes_ctrl_c)
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + TIMEOUT
        while seen.count(b"\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
            if select.select([leader], [], [], 1)[0]:
                seen += os.read(leader, 65536)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    assert seen.count(b"\x1b[H\x1b[2J") >= 3 and b"corral status of" in seen  # cursor home, clear, the report
    assert proc.returncode == 0 and "Traceback" not in err


def test_corral_status_of_an_unreachable_broker(tmp_path):
    started = time.monotonic()
    shown = corral_run("status", f"ipc://{tmp_path}/nothing", "--timeout", "1")
    assert shown.returncode == 1
    assert "no broker answered" in shown.stderr and "Traceback" not in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 30


@pytest.mark.parametrize("argv, message", [
    ([], "required"),
    (["127.0.0.1:7700"], "no scheme"),
    (["ipc:///x", "--watch", "soon"], "argument --watch"),
    (["--watch", "soon", "ipc:///x"], "argument --watch"),
    (["--watch", "5"], "required"),
    (["--watch", "127.0.0.1:7700"], "no scheme"),
    (["ipc:///x", "--timeout", "-1"], "argument --timeout"),
    (["tcp://127.0.0.1:7700"], "TCP address"),
])
def test_corral_status_bad_arguments(argv, message):
    shown = corral_run("status", *argv)
    assert shown.returncode == 2
    assert message in shown.stderr and "usage: corral status" in shown.stderr and "Traceback" not in shown.stderr


@pytest.mark.parametrize("where", [True, "file"])
def test_executor_status_file(make_executor, tmp_path, where):
    path = str(tmp_path / "status.json") if where == "file" else True
    ex = make_executor(2, status_file=path)
    assert ex.submit(abs, -4).result(TIMEOUT) == 4
    status_file = ex.status_file
    assert status_file == (path if where == "file" else status_file) and os.path.exists(status_file)
    assert os.stat(status_file).st_mode & 0o777 == 0o600
    body = json.loads(open(status_file).read())
    socket_dir = body["address"][len("ipc://"):].rsplit("/", 1)[0]
    assert os.stat(socket_dir).st_mode & 0o777 == 0o700
    shown = corral_run("status", status_file, "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["counts"]["done"] == 1 and status["events"][0]["task"] is not None  # the executor's own view
    assert len(status["workers"]) >= 1
    # The status socket answers STATUS only: a SUBMIT is refused.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(body["address"])
        sock.send_multipart(protocol.message(Kind.SUBMIT, {"tasks": [[1, 2, {}]]}, [b"f", b"a"]))
        assert sock.poll(TIMEOUT * 1000)
        kind, reply = protocol.decode(sock.recv_multipart()[0])
        assert kind == Kind.ERROR and reply["code"] == protocol.REFUSED and "STATUS only" in reply["message"]
    finally:
        sock.close(linger=0)
        ctx.term()
    assert ex.status()["counts"]["done"] == 1  # nothing was queued
    ex.shutdown()
    assert not os.path.exists(status_file) and not os.path.exists(socket_dir)


def test_status_file_of_an_executor_with_launched_workers(make_executor):
    from corral.launchers import Local

    ex = make_executor(2, launcher=Local(), status_file=True)
    assert list(ex.map(abs, [-1, -2])) == [1, 2]
    status_file = ex.status_file
    shown = corral_run("status", status_file)
    assert shown.returncode == 0, shown.stderr
    assert "launches: " in shown.stdout and "2 done" in shown.stdout
    assert ex.status()["launches"]["launched"] >= 1
    ex.shutdown()
    assert not os.path.exists(status_file) and not os.path.exists(os.path.dirname(status_file))


def test_status_file_options_checked(make_executor, broker_address, tmp_path):
    with pytest.raises(ValueError, match="status_file"):
        corral.Executor(address=broker_address, status_file=True)
    with pytest.raises(ValueError, match="no such directory"):
        corral.Executor(1, status_file=str(tmp_path / "missing" / "status.json"))
    with pytest.raises(ValueError, match="status_file must be"):
        corral.Executor(1, status_file=3)


def test_status_tolerates_an_older_reply():
    """A broker that sends only counts and worker records (no third frame) still gives a whole dict."""
    from corral.status import assemble

    status = assemble([{"worker": "w", "host": "h", "pid": 1, "tasks": 2, "busy_s": 0.1, "errors": 0,
                        "alive": True, "leaving": None, "left": None}], {"queued": 1, "running": 0}, {}, None)
    assert status["counts"]["queued"] == 1 and status["workers"][0]["state"] == "idle"
    assert status["events"] == [] and status["rate"] == {"done_per_s": 0.0, "failed_per_s": 0.0}
    assert "w" in report(status)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
