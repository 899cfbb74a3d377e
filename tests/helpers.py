"""Helpers for tests that run the ``corral`` command: standalone brokers and workers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def corral_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral.cli", *args]


def takes_ctrl_c() -> None:
    """``preexec_fn`` for a command a test stops with SIGINT, as Ctrl-C would: SIGINT at its default.
    A shell without job control starts background commands with SIGINT ignored, the children
    inherit that, and Python then installs no KeyboardInterrupt handler (``pytest ... &`` would fail)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def connection_file(address: str) -> str:
    """The connection file of the broker that listens (or will) on ``address``, made now if it
    does not exist yet (a broker started later keeps it): in ``$CORRAL_HOME``, the session's."""
    from corral.security.provision import provision

    return str(provision(address)[1])


def read_line(stream, timeout: float = 30) -> str:
    """The next line of a process's pipe, or AssertionError after ``timeout`` seconds.  Read a byte
    at a time from the descriptor, past the stream's buffer (which would hide a second line
    from the wait), so use this for every line up to the one wanted; ``stream.read()`` after is fine."""
    import select

    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([stream.fileno()], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no whole line within {timeout} s (so far {line!r})"
        byte = os.read(stream.fileno(), 1)
        if not byte:
            break  # the end of the pipe
        line += byte
    return line.decode(errors="replace")


def start_broker(address: str, *extra: str) -> subprocess.Popen:
    """A standalone broker; returns once it listens.  A TCP one's connection file (what clients
    and workers are given) is ``proc.connection``."""
    proc = subprocess.Popen(corral_cmd("broker", "--listen", address, *extra), stderr=subprocess.PIPE, text=True)
    first = read_line(proc.stderr)
    while "SecurityWarning" in first:  # --insecure: said before it listens
        first = read_line(proc.stderr)
    assert "listening" in first, first
    proc.connection = None
    if "(CurveZMQ)" in first:
        proc.connection = read_line(proc.stderr).split("connection file ", 1)[1].split(" (")[0]
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_worker(address: str, *extra: str, cwd: str | None = None, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(corral_cmd("worker", address, *extra), stderr=subprocess.DEVNULL, cwd=cwd, env=env)


# Standalone workers do not share the test's sys.path: send the function by value.
def _pid_of_task(_):
    time.sleep(0.02)
    return os.getpid()


pid_of_task = type(_pid_of_task)(_pid_of_task.__code__, {"time": time, "os": os}, "pid_of_task")


def _held_descriptors(_=None):
    """What this process's descriptors above stdio point at (``socket:[...]``, ``anon_inode:...``)."""
    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory listing's own descriptor, closed by now
        if int(name) > 2:
            held.append(target)
    return held


held_descriptors = type(_held_descriptors)(_held_descriptors.__code__, {"os": os}, "held_descriptors",
                                           _held_descriptors.__defaults__)


def _held_sockets():
    """(target, socket type) of each socket this process holds above stdio."""
    import socket

    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if int(name) > 2 and target.startswith("socket:"):
            sock = socket.socket(fileno=os.dup(int(name)))
            held.append((target, int(sock.type)))
            sock.close()
    return sorted(held, key=lambda pair: pair[1])


held_sockets = type(_held_sockets)(_held_sockets.__code__, {"os": os}, "held_sockets")


def record_then_sleep(path: str, seconds: float) -> int:
    """A task that notes its pid in ``path`` (one line per run), then sleeps.

    It lives here, not in a test module: a task process imports the module of the
    function it runs, and a test module's imports (pytest and all) can take longer
    than the short timeouts the tests give such tasks.
    """
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def runs(path) -> list[int]:
    """The pids a task wrote to ``path``, one line per run."""
    return [int(line) for line in path.read_text().split()] if path.exists() else []


TIMEOUT = 30  # seconds: the bound of every wait in the tests (a result, a process, a file)


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def wait_for_file(path, timeout: float = TIMEOUT) -> str:
    """The contents of ``path`` once it exists; fail after ``timeout`` seconds."""
    wait_for(lambda: os.path.exists(path), timeout, f"{path} to appear")
    with open(path) as f:
        return f.read()


def gone(pid: int) -> bool:
    """Has the process ended (a zombie counts: only its parent's wait is missing)?"""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_client_and_check_family(client: subprocess.Popen, family: list) -> None:
    """SIGKILL a client process; everything it started must be gone within 5 s."""
    client.kill()
    client.wait(10)
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"still running 5 s after the client died: {alive}"


class HelperError(Exception):
    """An exception class that a worker imports by reference, long after corral's own modules."""


def raise_helper_error(message: str):
    raise HelperError(message)


def raise_helper_error_from_numpy():
    """HelperError caused by numpy's LinAlgError: two late-imported classes in one chain."""
    import numpy

    try:
        numpy.linalg.inv(numpy.zeros((2, 2)))
    except numpy.linalg.LinAlgError as exc:
        raise HelperError("inverting failed") from exc


def next_message(sock, kind) -> dict:
    """The body of the next message of ``kind`` (a ``protocol.Kind``) on the raw ZeroMQ socket
    ``sock``, skipping heartbeats; bounded."""
    from corral.wire import protocol  # (here: the helpers serve processes that import no corral)

    deadline = time.monotonic() + TIMEOUT
    while True:
        assert sock.poll(max(0.0, deadline - time.monotonic()) * 1000), f"no {kind.name}"
        got, body = protocol.decode(sock.recv_multipart()[0])
        if got == kind:
            return body
        assert got == protocol.Kind.HEARTBEAT, f"expected {kind.name}, got {got.name} {body}"


def drop_stale_rehash_lock(since: float) -> None:
    """Remove pyenv's rehash lock if a login shell of ours left it (made since ``since``, and no rehash
    runs now): an ssh session or a Grid Engine job (bash as a login shell) that a test ended in the
    middle of `pyenv init` leaves it behind, and every later login shell of the machine's user then
    waits 60 s for it (our sshd's sessions and .ci/sge-setup's jobs give up on it at once)."""
    lock = Path(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))) / "shims" / ".pyenv-shim"
    try:
        if lock.stat().st_mtime < since:
            return
    except OSError:
        return
    if not any("pyenv-rehash" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        lock.unlink(missing_ok=True)
