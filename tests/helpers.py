"""Helpers for tests that run the ``corral`` command: standalone brokers and workers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def corral_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral.cli", *args]


def start_broker(address: str, *extra: str) -> subprocess.Popen:
    """A standalone broker; returns once it listens."""
    proc = subprocess.Popen(corral_cmd("broker", "--listen", address, *extra), stderr=subprocess.PIPE, text=True)
    assert "listening" in proc.stderr.readline()
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_worker(address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(corral_cmd("worker", address, *extra), stderr=subprocess.DEVNULL)


# Standalone workers do not share the test's sys.path: send the function by value.
def _pid_of_task(_):
    time.sleep(0.02)
    return os.getpid()


pid_of_task = type(_pid_of_task)(_pid_of_task.__code__, {"time": time, "os": os}, "pid_of_task")
