"""A task process on a lane: it takes its tasks from an embedded broker and answers them there.

Why: with the executor's own broker in the client, the supervisor relaying
every task and result over its socket pair is a hop (a wake-up, a copy) each
way.  A persistent task process on a lane (``wire/lane.py``) skips it; its
supervisor keeps the control (kills, deaths, recycling) and learns which task
runs from a page of memory the two share (``LanePage``), written around every
task without a system call::

    broker  --TASKS (lane epoch)-->  task process  --RESULT (and PROGRESS)-->  broker
                                      page: (tasks begun, task running or 0)
"""

from __future__ import annotations

import os
import socket
import struct
import time

from .. import reporting
from ..errors import ProtocolError
from ..logs import logger
from ..timing import smooth
from ..tuning import RESULT_BATCH_BYTES, RESULT_BATCH_TASK, RESULT_BATCH_TIME
from ..wire import protocol
from ..wire.lane import Lane
from ..wire.poller import Spin
from . import capture, execution, output
from .execution import execute, object_options
from .output import flush_stdio
from .tasknotes import TaskNotes

_log = logger("worker")


class LanePage:
    """Memory a supervisor shares with its task process on a lane (anonymous, inherited by
    fork): how many tasks the process has begun, and the id of the one it runs (0: none).

    The task process writes it around every task, without a system call or waking anyone;
    the supervisor reads it only when it must know which task its process runs: to stop
    that task, or to say which one died with the process.
    """

    _FORMAT = struct.Struct("qq")

    def __init__(self) -> None:
        import mmap

        self.memory = mmap.mmap(-1, self._FORMAT.size)
        self.begun = 0  # the task process's count (its own copy after the fork)

    def begin(self, gid: int) -> None:
        """Note that task ``gid`` begins."""
        self.begun += 1
        self._FORMAT.pack_into(self.memory, 0, self.begun, gid)

    def end(self) -> None:
        """Note that the running task has ended."""
        self._FORMAT.pack_into(self.memory, 0, self.begun, 0)

    def read(self) -> tuple[int, int]:
        """(tasks begun, the task running or 0)."""
        while True:  # the task process may be writing it: two reads that agree
            first = self._FORMAT.unpack_from(self.memory)
            if self._FORMAT.unpack_from(self.memory) == first:
                return first

    def clear(self) -> None:
        """Before a new task process starts."""
        self.begun = 0
        self._FORMAT.pack_into(self.memory, 0, 0, 0)


def serve(fd: int, epoch: int, page: LanePage, spin_limit: float, shm_dir: str | None, notes: TaskNotes) -> int:
    """Take tasks from the lane and answer them there as they end, until the broker is gone."""
    link = Lane(socket.socket(fileno=fd), blocking=True)
    reporting.attach(lambda gid, fraction, message: link.send(protocol.progress(gid, fraction, message)))
    task_time = 1.0  # moving average; nothing waits until tasks prove short
    spin = Spin(spin_limit)
    while True:
        try:
            waiting = time.perf_counter()
            frames = link.recv_message(spin.budget())
            spin.waited(time.perf_counter() - waiting)
        except (EOFError, OSError):
            return 0
        try:
            kind, body = protocol.decode(frames[0])
            if kind != protocol.Kind.TASKS or body.get("lane") != epoch:
                continue  # sent to a task process of this worker that died before it read them
            tasks = protocol.split_entries(body, "tasks", protocol.unpack(body, frames[1:]), 3)
        except ProtocolError as exc:
            _log.warning(f"task process {os.getpid()}: dropped a malformed message on its lane: {exc}")
            continue
        entries: list = []
        out_frames: list = []
        size, busy, oldest = 0, 0.0, 0.0
        for i, ((gid, _, options), task_frames) in enumerate(tasks):
            page.begin(gid)
            reporting.current = gid  # corral.report() in the task (reporting.py)
            if options and isinstance(options, dict):
                captured = options.get("capture_output") is True
                if captured:
                    capture.begin()
                began = time.perf_counter()
                status, out, meta = execute(task_frames, shm_dir, options.get("shm"), options.get("seed"),
                                            options.get("dep_frames"), object_options(options))
            else:
                captured = False
                began = time.perf_counter()
                status, out, meta = execute(task_frames, shm_dir)
            ended = time.perf_counter()
            execution.ended(meta)
            notes.note(meta, began, ended)
            if captured:  # ahead of its outcome, which may wait in this batch
                output.send_captured(lambda kind, body: link.send(protocol.message(kind, body)), gid, capture.end())
            flush_stdio()  # what the task printed is out before its future completes
            entries.append(protocol.result_entry(gid, status, len(out), meta))
            out_frames.extend(out)
            size += sum(memoryview(f).nbytes for f in out)
            busy += ended - began
            oldest = oldest or ended
            task_time = smooth(task_time, ended - began)
            if (i == len(tasks) - 1 or task_time >= RESULT_BATCH_TASK or ended - oldest >= RESULT_BATCH_TIME
                    or size >= RESULT_BATCH_BYTES):
                body = {"results": entries, "busy": round(busy, 6)}
                link.send(protocol.message(protocol.Kind.RESULT, body, out_frames))
                entries, out_frames, size, busy, oldest = [], [], 0, 0.0, 0.0
            page.end()
