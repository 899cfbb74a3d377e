"""What tasks write, sent to their client: forwarded as it comes (a worker elsewhere), or captured.

A worker started by an executor's own pool leaves its task processes the
descriptors 1 and 2 it inherited: what tasks print goes straight to the user's
terminal, as with ``ProcessPoolExecutor``, at no cost.  A worker elsewhere
(``corral worker``, a launched worker) has no such terminal in common with its
client, so it forwards the output::

    task process: fd 1, fd 2 --pipes--> supervisor (Forwarder): reads them in its poll loop,
        (unbuffered sys.stdout,           the running task's, batched: every FLUSH_EVERY s
         sys.stderr: capture.py)          or MESSAGE_CHARS  --OUTPUT [task, stream, text]--> broker
                                                             --OUTPUT--> its client, which writes
                                                                         it out with a prefix

Why pipes made once by the supervisor, and not one per task: the supervisor
knows which tasks its task process holds, in the order it runs them, and the
task process writes an end mark on both pipes after each task (``MARK``), so
what arrives is attributed to its task even when the process has begun the next
one (a pipeline of short tasks); a task pays nothing more than its writes and
the two marks.  Why the supervisor: what a task process
wrote before it died (a segfault, SIGKILL) is in the pipe still, and is read and
sent before the task is reported lost.  The supervisor drains the pipes before
it reports any task (``task_ended``), so a task's output always reaches the
client before its result.  A task that writes more than ``TASK_MAX`` bytes has
the rest dropped, and a line says how much; the pipes are always read, so a
flood never blocks the task or the worker.

A task that asks ``capture_output`` is captured by its task process (``capture.py``);
the texts come back here with its outcome (or from the capture files after a
crash) and leave as OUTPUT messages marked ``"capture"`` before its RESULT.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Callable

from ..wire.poller import POLLIN
from ..wire.protocol import MAX_OUTPUT_CHARS, Kind

STREAMS = ("stdout", "stderr")
CHUNK_CHARS = MAX_OUTPUT_CHARS  # characters of one OUTPUT entry (its JSON stays far below the header limit)
MESSAGE_CHARS = 64 << 10  # characters of one OUTPUT message, at most
FLUSH_EVERY = 0.1  # seconds forwarded output may wait to be batched
TASK_MAX = 8 << 20  # bytes forwarded per task; the rest is dropped, and a line says how much
READ_SIZE = 1 << 16  # bytes asked of a pipe at a time
READ_MOST = 1 << 20  # bytes read from one pipe per loop turn (then the broker's messages get a turn)
PIPE_SIZE = 1 << 20  # asked of the kernel for each pipe: fewer wake-ups when a task writes a lot

MARK = b"\x00\x1ecorral: a task ended\x1e\x00"  # what a forwarding task process writes on both pipes after each task

FORWARDED = "CORRAL_FORWARDED_OUTPUT"  # set for a spawned task process whose fd 1 and 2 are the pipes
_child_streams: tuple[int, int] | None = None  # the pipes' write ends: a task process's fd 1 and 2


def child_streams() -> None:
    """In a task process (or a template) just forked: descriptors 1 and 2 become the forwarding
    pipes, if its supervisor forwards; ``sys.stdout``/``stderr`` become unbuffered."""
    if _child_streams is None:
        return
    os.dup2(_child_streams[0], 1)
    os.dup2(_child_streams[1], 2)
    forwarding_here()


def flush_stdio() -> None:
    """Flush what user code printed: a task process leaves with ``os._exit``, which
    would drop it (stdout to a pipe or a file is block-buffered)."""
    for out in (sys.stdout, sys.stderr):
        try:
            if out is not None:
                out.flush()
        except Exception:  # noqa: BLE001 - closed, broken or replaced by the task: nothing to deliver
            pass


def forwarding_here() -> None:
    """This task process's fd 1 and 2 are forwarding pipes: unbuffered streams, an end mark after each task."""
    from . import capture, task_process

    capture.unbuffered_stdio()
    task_process.task_ended = flushed_and_marked  # after each task (task_process.answer)


def flushed_and_marked() -> None:
    """A forwarding task process's end of a task: what the task printed is out, then the end mark."""
    flush_stdio()
    for fd in (1, 2):
        try:
            os.write(fd, MARK)
        except OSError:  # the task closed it: nothing of its output can come after
            pass


def spawn_streams() -> dict:
    """``subprocess.Popen`` arguments that give a spawned task process the forwarding pipes."""
    if _child_streams is None:
        return {}
    return {"stdout": _child_streams[0], "stderr": _child_streams[1], "env": {**os.environ, FORWARDED: "1"}}


def entries(gid: int, stream: str, text: str) -> list[list]:
    """OUTPUT entries for ``text``: chunks of at most CHUNK_CHARS characters."""
    return [[gid, stream, text[i:i + CHUNK_CHARS]] for i in range(0, len(text), CHUNK_CHARS)] or [[gid, stream, ""]]


def send_entries(send: Callable, rows: list[list], capture: bool = False) -> None:
    """Send OUTPUT messages of at most MESSAGE_CHARS characters each; ``capture``: one task's
    whole capture (its first message says "begin", which replaces an earlier attempt's)."""
    batch, chars, mark = [], 0, "begin"
    for row in rows:
        if batch and chars + len(row[2]) > MESSAGE_CHARS:
            send(Kind.OUTPUT, {"output": batch, "capture": mark} if capture else {"output": batch})
            batch, chars, mark = [], 0, "more"
        batch.append(row)
        chars += len(row[2])
    if batch:
        send(Kind.OUTPUT, {"output": batch, "capture": mark} if capture else {"output": batch})


def send_captured(send: Callable, gid: int, texts: list[str]) -> None:
    """A captured task's [stdout, stderr], as OUTPUT messages marked ``capture``."""
    send_entries(send, [row for stream, text in zip(STREAMS, texts) for row in entries(gid, stream, text)], True)


def held(supervisor) -> list[int]:
    """The tasks a supervisor's task process holds, the running one first (a persistent worker's pipeline)."""
    return [task.gid for task in getattr(supervisor, "inflight", ())]


def reported(supervisor, task, meta: dict) -> None:
    """A supervisor reports a task's outcome (``task``: a heldtask.HeldTask): what the task wrote
    goes to the broker first.

    Captured, it came with the outcome (``meta["capture"]``); a captured task whose
    process died left it in the capture files.  Forwarded, it is in the pipes, if
    the task began at all.
    """
    gid, options = task.gid, task.options
    if "capture" in meta:
        texts = meta.pop("capture")
        if isinstance(texts, list):
            send_captured(supervisor.send, gid, texts)
    elif task.started and options.get("capture_output") is True:  # (one that never began left nothing)
        crashed(supervisor, gid)
    if supervisor.output is not None and task.started:
        supervisor.output.task_ended(gid, held(supervisor))


def crashed(supervisor, gid: int) -> None:
    """Task ``gid``'s process died: what it captured (in the capture files), to the broker."""
    from . import capture

    texts = capture.crashed()
    if texts is not None:
        send_captured(supervisor.send, gid, texts)


class _TaskText:
    """What one task has written so far, being forwarded."""

    __slots__ = ("decoders", "mid_line", "sent", "dropped")

    def __init__(self) -> None:
        self.decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in STREAMS}
        self.mid_line = dict.fromkeys(STREAMS, False)  # its last text on that stream ended mid-line
        self.sent = 0  # bytes forwarded
        self.dropped = 0  # ... and dropped past TASK_MAX


class Forwarder:
    """A supervisor's end of its task processes' output pipes (see the module docstring).

    ``send(kind, body)`` sends a message to the broker.  Made before the supervisor
    forks anything: the pipes' write ends must be there for every task process.

    Which task wrote what: a task process may begin its next task (a pipeline of short
    tasks) before the supervisor has read what the last one wrote, so after each task
    it writes an end mark (``MARK``) on both pipes, once what the task printed is
    flushed.  The bytes on a pipe belong to the oldest task of the process whose mark
    has not come on that pipe yet; a task whose process died has no mark, and
    everything left on the pipes is its.
    """

    def __init__(self, send: Callable):
        global _child_streams
        self.send = send
        self.readers: dict[int, str] = {}
        writers = []
        for stream in STREAMS:
            r, w = os.pipe()
            os.set_blocking(r, False)
            _pipe_size(w)
            self.readers[r] = stream
            writers.append(w)
        _child_streams = (writers[0], writers[1])
        self.waits = dict.fromkeys(self.readers, POLLIN)  # the pipes, for the supervisor's poll
        self.carry = dict.fromkeys(STREAMS, b"")  # what may be the start of a mark
        self.marked: dict[str, set] = {s: set() for s in STREAMS}  # tasks whose mark came on that pipe
        self.texts: dict[int, _TaskText] = {}
        self.rows: list[list] = []  # OUTPUT entries not sent yet
        self.chars = 0
        self.due_at: float | None = None
        self.stray = 0  # bytes written while no task ran (dropped)

    def read(self, events: dict, supervisor) -> None:
        """Read the pipes that ``events`` says are readable, for the tasks that ``supervisor``'s task
        process holds (``held``)."""
        tasks = None
        for fd in self.readers:
            if fd in events:
                if tasks is None:
                    tasks = held(supervisor)
                self._read(fd, tasks, READ_MOST)

    def _read(self, fd: int, tasks: list[int], most: int | None) -> None:
        got = 0
        stream = self.readers[fd]
        while most is None or got < most:
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            got += len(data)
            self._take(stream, self.carry[stream] + data, tasks)
            if len(data) < READ_SIZE:  # a pipe gives all it holds: it is empty now (no read more to learn it)
                return

    def _take(self, stream: str, data: bytes, tasks: list[int]) -> None:
        """Attribute ``data`` (read from ``stream``'s pipe) to the tasks that wrote it, up to the marks."""
        marked = self.marked[stream]
        if data == MARK:  # the usual read: a task's end mark alone (the task wrote nothing)
            owner = next((gid for gid in tasks if gid not in marked), None)
            if owner is not None:
                marked.add(owner)
            self.carry[stream] = b""
            return
        while True:
            owner = next((gid for gid in tasks if gid not in marked), None)
            at = data.find(MARK)
            if at < 0:
                break
            self._add(owner, stream, data[:at])
            if owner is not None:
                marked.add(owner)
            data = data[at + len(MARK):]
        keep = next((k for k in range(min(len(MARK) - 1, len(data)), 0, -1) if data.endswith(MARK[:k])), 0)
        self._add(owner, stream, data[:len(data) - keep])
        self.carry[stream] = data[len(data) - keep:]

    def _add(self, gid: int | None, stream: str, data: bytes) -> None:
        if not data:
            return
        if gid is None:
            self.stray += len(data)
            return
        task = self.texts.get(gid)
        if task is None:
            task = self.texts[gid] = _TaskText()
        room = TASK_MAX - task.sent
        if len(data) > room:
            task.dropped += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        task.sent += len(data)
        text = task.decoders[stream].decode(data)
        if text:
            self._row(task, gid, stream, text)

    def _row(self, task: _TaskText, gid: int, stream: str, text: str) -> None:
        self.rows.extend(entries(gid, stream, text))
        task.mid_line[stream] = not text.endswith("\n")
        self.chars += len(text)
        if self.chars >= MESSAGE_CHARS:
            self.flush()
        elif self.due_at is None:
            self.due_at = time.monotonic() + FLUSH_EVERY

    def task_ended(self, gid: int, tasks: list[int]) -> None:
        """Task ``gid`` has ended (its outcome is about to be reported; ``tasks``: those its process
        still holds): what it wrote, all of it, goes now."""
        for fd, stream in self.readers.items():
            marked = self.marked[stream]
            if gid in marked:  # its mark has come: all it wrote there has been read
                marked.discard(gid)
                continue
            self._read(fd, [gid, *tasks], None)
            if gid not in marked and self.carry[stream]:  # its process died mid-mark
                self._add(gid, stream, self.carry[stream])
                self.carry[stream] = b""
            marked.discard(gid)
        task = self.texts.pop(gid, None)
        if task is not None:
            for stream, decoder in task.decoders.items():
                rest = decoder.decode(b"", final=True)
                if rest:
                    self._row(task, gid, stream, rest)
                if task.mid_line[stream]:  # the task's last line ends with the task
                    self._row(task, gid, stream, "\n")
            if task.dropped:
                self._row(task, gid, "stderr", f"[corral: {task.dropped} bytes of this task's output dropped]\n")
        self.flush()

    def due(self) -> float | None:
        """When batched output must go (None: nothing waits)."""
        return self.due_at

    def timers(self, now: float) -> None:
        """Send batched output whose time has come."""
        if self.due_at is not None and now >= self.due_at:
            self.flush()

    def flush(self) -> None:
        """Send what is batched."""
        rows, self.rows, self.chars, self.due_at = self.rows, [], 0, None
        if rows:
            send_entries(self.send, rows)


def _pipe_size(fd: int) -> None:
    """Ask for a larger pipe buffer where the system allows it (Linux)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (OSError, ImportError):
        pass
