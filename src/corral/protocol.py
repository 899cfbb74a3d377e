"""The corral wire protocol: every message kind, how it is framed and parsed.

This module is the only place that builds or reads message headers; the
client, broker and worker all go through it.  ``docs/protocol.md`` is the
specification; keep the two in step.

A message is a multipart message::

    frame 0      header: 1 byte version, 1 byte kind, UTF-8 JSON object
    frame 1..n   opaque payload frames (pickles and out-of-band buffers)

It travels as a ZeroMQ multipart message, or, between an embedded broker and
the workers it started, over a socket pair (``Stream``): the same frames,
preceded by their count and sizes.

The broker parses only frame 0, a small JSON object with a size limit, so a
malicious payload can never run code in it.  Batched kinds (SUBMIT, TASKS,
RESULT) carry a list of entries in the header; each entry says how many of
the following payload frames belong to it, in order.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

from .errors import ProtocolError

VERSION = 2
MAX_HEADER_BYTES = 1 << 20


class Kind(IntEnum):
    """Message kinds.  Direction: C client, B broker, W worker."""

    HELLO = 1  # C->B, W->B: first message, announces role and identity facts
    WELCOME = 2  # B->C, B->W: accepts a HELLO; carries the heartbeat interval
    SUBMIT = 3  # C->B: a batch of tasks, entries [task_id, nframes, options]
    CANCEL = 4  # C->B, B->W: task ids to drop if not started yet
    STARTED = 5  # W->B, B->C: task ids a worker has begun to run
    RESULT = 6  # W->B, B->C: a batch of outcomes, entries [task_id, status, nframes, meta]
    READY = 7  # W->B: grants the broker credit for N more tasks
    TASKS = 8  # B->W: a batch of tasks, entries [task_id, nframes, options]
    HEARTBEAT = 9  # any direction: "I am alive"; no body needed
    BYE = 10  # C->B, W->B: orderly disconnect
    STATUS = 11  # C->B: asks for the broker's view (workers, queue)
    STATUS_REPLY = 12  # B->C: answer to STATUS
    SHUTDOWN = 13  # B->W: finish the current task, then exit
    ERROR = 14  # B->C, B->W: a request was refused; ``code`` says why (UNKNOWN_PEER: say HELLO again)
    KILL = 15  # C->B, B->W: stop these running tasks' processes (or all of a client's)
    CANCELLED = 16  # W->B, B->C: verdicts on CANCEL: ids dropped before they ran, ids already running
    LANE = 17  # W->B: the worker's task process reads its lane now, taking tasks of this epoch
    ENDED = 18  # W->B: the worker's task process on a lane ended: how, and the task it was running


class Status(IntEnum):
    """How a task ended, in RESULT entries."""

    OK = 0  # payload frames: the pickled return value
    RAISED = 1  # payload frames: the pickled exception raised by the task
    FAILED = 2  # no payload; meta["error"] names the failure, meta["message"] explains


# Names of FAILED errors, mapped to exception classes by the client.
ERR_SERIALIZATION = "serialization"  # pickling failed
ERR_DESERIALIZATION = "deserialization"  # unpickling failed
ERR_WORKER_LOST = "worker_lost"
ERR_BROKEN = "broken"  # the worker's initializer failed: the executor is broken
ERR_CANCELLED = "cancelled"
ERR_TIMEOUT = "timeout"  # the task outran its timeout; its process was killed
ERR_KILLED = "killed"  # Future.kill(), terminate_workers(), or its client went away

# Codes of ERROR messages.
UNKNOWN_PEER = "unknown_peer"  # the broker does not know the sender (it restarted, or dropped it): HELLO again
REFUSED = "refused"  # the broker refuses this peer (too many peers, a claim it may not make): it is not served

def stopped(reason: str, timeout: Any, how: str) -> dict[str, Any]:
    """The FAILED meta of a task whose process was stopped: ``reason`` "timeout" or "killed"."""
    if reason == "timeout":
        return {"error": ERR_TIMEOUT, "message": f"the task ran longer than its timeout of {timeout} s and was "
                                                 f"stopped: {how}"}
    return {"error": ERR_KILLED, "message": f"the task was killed: {how}"}


# When workers (or, for a lane, the broker) report starts and how many tasks they hold.
# A task that ends sooner than STARTED_DELAY is reported by its RESULT alone; a longer one
# gets a STARTED message once this much time has passed, so that its future shows as
# running. Saves two messages per short task.
STARTED_DELAY = 0.002
# A worker holds enough tasks for this many seconds of work, judged by how long its
# recent tasks took: short tasks stream in large batches, long ones stay spread over
# the workers.
CREDIT_HORIZON = 0.01
MAX_CREDIT = 512
# Tasks are queued behind the running one in its process (where they can no longer be
# cancelled) only while tasks take less than PIPELINE_TASK_TIME on average: that matters
# only for long ones.  At most PIPELINE_TASKS of them.
PIPELINE_TASK_TIME = 0.002
PIPELINE_TASKS = 256

# A waiting caller and a lane's task process poll for up to SPIN seconds before they sleep.
SPIN = 200e-6


class Spin:
    """How long a waiter polls before it sleeps: its limit (SPIN) while its waits are short.

    A process that sleeps in poll(2) or recv(2) lets its CPU go idle, and an idle CPU
    sleeps too: waking the process then costs the waker an interrupt to that CPU and
    the sleeper the time for it to come back, tens of microseconds on a virtual
    machine, most of a no-op round trip.  A waiter whose recent waits (a moving
    average) were shorter than its limit polls without sleeping for up to that long,
    yielding its CPU to any other runnable process at each poll; one whose waits are
    longer (long tasks, an idle pool) sleeps at once.
    """

    def __init__(self, limit: float | None = None):
        self.limit = SPIN if limit is None else limit
        self.typical = self.limit  # nothing is spent on spinning until waits prove short

    def budget(self) -> float:
        """Seconds to poll before sleeping, for the next wait."""
        return self.limit if self.typical < self.limit else 0.0

    def waited(self, seconds: float) -> None:
        self.typical = 0.8 * self.typical + 0.2 * seconds

MAX_RETRIES = 1000  # a task's retries option: more is a mistake (or an attack on the workers)
MAX_NAME = 200  # characters of a peer's name or host kept from its HELLO
MAX_TEXT = 64 << 10  # characters of a traceback or message kept from a peer


# Made once: json.dumps with options builds a new encoder at every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_DECODER = json.JSONDecoder()


def encode(kind: Kind, body: dict[str, Any] | None = None) -> bytes:
    """Build header frame 0 for ``kind`` with an optional JSON ``body``."""
    text = _ENCODER.encode(body).encode() if body else b""
    return bytes((VERSION, kind)) + text


def decode(frame: bytes) -> tuple[Kind, dict[str, Any]]:
    """Parse header frame 0.  Raises ProtocolError for anything malformed."""
    if len(frame) < 2:
        raise ProtocolError(f"header too short ({len(frame)} bytes)")
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header too large ({len(frame)} bytes)")
    if frame[0] != VERSION:
        raise ProtocolError(f"unsupported protocol version {frame[0]} (this side speaks {VERSION})")
    try:
        kind = Kind(frame[1])
    except ValueError:
        raise ProtocolError(f"unknown message kind {frame[1]}") from None
    if len(frame) == 2:
        return kind, {}
    try:
        body = _DECODER.decode(bytes(frame[2:]).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ProtocolError(f"header body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("header body is not a JSON object")
    return kind, body


def split_entries(body: dict[str, Any], key: str, frames: list, width: int) -> list[tuple[list, list]]:
    """Pair each entry of a batched header with its payload frames.

    ``width`` is the number of fields an entry must have; field 0 is the task
    id (an int) and the field at index ``nframes_at(key)`` the frame count.
    """
    entries = body.get(key)
    if not isinstance(entries, list):
        raise ProtocolError(f"missing list {key!r}")
    if len(entries) > MAX_BATCH:
        raise ProtocolError(f"{len(entries)} {key} entries in one message (at most {MAX_BATCH})")
    count_at = 2 if key == "results" else 1
    out, pos = [], 0
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != width
            or type(entry[0]) is not int
            or type(entry[count_at]) is not int
            or entry[count_at] < 0
            or not isinstance(entry[-1], dict)
        ):
            raise ProtocolError(f"malformed {key} entry {entry!r:.80}")
        n = entry[count_at]
        out.append((entry, frames[pos : pos + n]))
        pos += n
    if pos != len(frames):
        raise ProtocolError(f"{key}: entries name {pos} frames, message has {len(frames)}")
    return out


MAX_BATCH = 2000  # entries per batched message: keeps every header far below MAX_HEADER_BYTES


MAX_IDS = 20_000  # task ids per CANCEL, CANCELLED, STARTED or KILL: at most ~420 KB of JSON


def ids(body: dict[str, Any], key: str = "ids") -> list[int]:
    """A list of task ids from a header (none if absent); ProtocolError if it is anything else."""
    value = body.get(key, ())
    if not isinstance(value, (list, tuple)) or len(value) > MAX_IDS or any(type(i) is not int for i in value):
        raise ProtocolError(f"{key!r} is not a list of at most {MAX_IDS} task ids")
    return list(value)


def seconds(value: Any, what: str, most: float = 1e9) -> float:
    """A finite number of seconds from 0 to ``most``; ProtocolError if it is anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= most:
        raise ProtocolError(f"bad {what} {value!r:.40}")
    return float(value)


def timing(body: dict[str, Any], heartbeat: float, liveness: int) -> tuple[float, int]:
    """A WELCOME's heartbeat interval and liveness (the current ones where it names none)."""
    beat = seconds(body.get("heartbeat", heartbeat), "heartbeat", 3600.0)
    count = body.get("liveness", liveness)
    if beat <= 0 or type(count) is not int or not 1 <= count <= 1000:
        raise ProtocolError(f"bad heartbeat {beat!r} or liveness {count!r:.20}")
    return beat, count


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A peer's string, at most ``limit`` characters (anything else is shown as its repr)."""
    return (value if isinstance(value, str) else repr(value))[:limit]


def id_chunks(ids: list) -> Iterator[list]:
    """``ids`` in lists short enough for one header each (at least one list, maybe empty)."""
    yield ids[:MAX_IDS]
    for start in range(MAX_IDS, len(ids), MAX_IDS):
        yield ids[start : start + MAX_IDS]


def batches(entries: list, frames: list, count_at: int):
    """Split a batch into messages of at most MAX_BATCH entries, each with its own frames."""
    pos = 0
    for start in range(0, len(entries), MAX_BATCH):
        chunk = entries[start : start + MAX_BATCH]
        n = sum(entry[count_at] for entry in chunk)
        yield chunk, frames[pos : pos + n]
        pos += n


PACK_BELOW = 64 << 10  # payload frames smaller than this travel packed together in one frame


def pack(body: dict[str, Any], frames: list) -> list:
    """Pack a batch's small payload frames into one leading frame, to send.

    A batch of a thousand no-ops is two frames instead of a thousand: each
    ZeroMQ frame costs the sender and the receiver a few microseconds, a
    packed one only its bytes.  ``body["packed"]`` gets every frame's size,
    or -1 for a large frame, which follows the packed one on its own, never
    copied.
    """
    if len(frames) < 2:
        return frames
    sizes, small, large = [], [], []
    for frame in frames:
        n = len(frame)
        if n < PACK_BELOW:
            sizes.append(n)
            small.append(frame)
        else:
            sizes.append(-1)
            large.append(frame)
    body["packed"] = sizes
    return [b"".join(small), *large]


def message(kind: Kind, body: dict[str, Any] | None = None, frames: list = ()) -> list:
    """A whole message to send: header frame 0, then the payload frames, packed."""
    if not frames:
        return [encode(kind, body)]
    body = dict(body or {})
    frames = pack(body, list(frames))
    return [encode(kind, body), *frames]


def unpack(body: dict[str, Any], frames: list) -> list:
    """The payload frames of a received message, packed or not (see ``pack``)."""
    sizes = body.get("packed")
    if sizes is None:
        return frames
    if not isinstance(sizes, list) or not frames:
        raise ProtocolError("malformed 'packed' list")
    blob = frames[0].buffer if hasattr(frames[0], "buffer") else memoryview(frames[0])
    out, pos, large = [], 0, iter(frames[1:])
    for n in sizes:
        if not isinstance(n, int) or isinstance(n, bool) or n < -1:
            raise ProtocolError(f"bad packed frame size {n!r:.40}")
        if n == -1:
            frame = next(large, None)
            if frame is None:
                raise ProtocolError("'packed' names more large frames than the message has")
            out.append(frame)
        else:
            out.append(blob[pos : pos + n])
            pos += n
    if pos != len(blob) or next(large, None) is not None:
        raise ProtocolError("'packed' sizes do not match the message's frames")
    return out


def waiting(sock) -> Iterator[list]:
    """The multipart messages already waiting on a ZeroMQ socket, without blocking (frames uncopied)."""
    import zmq

    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return


def task_entry(task_id: int, nframes: int, options: dict[str, Any] | None = None) -> list:
    """An entry of SUBMIT or TASKS."""
    return [task_id, nframes, options or {}]


def result_entry(task_id: int, status: Status, nframes: int, meta: dict[str, Any] | None = None) -> list:
    """An entry of RESULT."""
    return [task_id, int(status), nframes, meta or {}]


# -- the local transport -------------------------------------------------------------

# ZeroMQ's poll flags as plain ints: pyzmq's are enum flags, and each operation on
# one costs microseconds in a loop that runs for every message.
POLLIN, POLLOUT = 1, 2

_COUNT = struct.Struct("!I")
MAX_FRAMES = 1 << 20  # frames in one message on a Stream; more is garbage
MAX_MESSAGE = 1 << 40  # bytes in one message on a Stream
STREAM_BUFFER = 4 << 20  # socket buffer: bursts of small messages never wait for the reader
READ_CHUNK = 256 << 10
# Reads land in one buffer per thread, then only what arrived is appended to a stream's own
# buffer: a fresh READ_CHUNK bytes object per read is a mmap, a mremap and a munmap (glibc
# maps allocations this large), three system calls per message.
_read_buffers = threading.local()
LARGE_MESSAGE = 1 << 20  # a message this large is read straight into a buffer of its own


def _read_buffer() -> bytearray:
    buffer = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = bytearray(READ_CHUNK)
    return buffer


def size_buffers(sock: socket.socket, size: int) -> None:
    """Make a socket's send and receive buffers ``size`` bytes each, where the system allows
    (a setting of the socket: it stays when the socket is passed to another process)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass


class _Endpoint:
    """What a Stream and a Lane share: a socket, and a queue of output it has not taken yet."""

    sock: socket.socket
    outq: deque

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def poll_key(self) -> int:
        """What a poller's events call it: both zmq.Poller and FdPoller report its fd."""
        return self.sock.fileno()

    @property
    def pending(self) -> bool:
        """Is output waiting for the socket to become writable?"""
        return bool(self.outq)

    def close(self) -> None:
        self.sock.close()


class Stream(_Endpoint):
    """Protocol messages over a stream socket: an embedded broker and a worker it started.

    A ZeroMQ message between two processes wakes an I/O thread on each side
    and costs tens of microseconds of CPU; a local worker's messages instead
    go over a socket pair made when the worker is started (so nothing else can
    connect to it), each written with one ``sendmsg``::

        4-byte frame count N | N 8-byte frame sizes | the N frames back to back

    Writes never block: what the socket does not take at once waits in a queue
    that ``flush()`` writes when the socket is writable (``pending``), so two
    peers sending each other a lot at the same time cannot deadlock.
    ``receive()`` returns every whole message that has arrived, without
    blocking; the frames of a message are slices of one buffer, never copied
    again.  A framing error raises ProtocolError: the stream cannot be trusted
    after it, and its owner closes it.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        size_buffers(sock, STREAM_BUFFER)
        self.outq: deque[memoryview] = deque()
        self.inbuf = bytearray()
        self.large: bytearray | None = None  # a large message being read into its own buffer
        self.large_sizes: list[int] = []
        self.filled = 0
        self.eof = False  # the peer closed its end (or died)

    def send(self, frames: list) -> None:
        """Queue one message and write as much of the queue as the socket takes now."""
        self.outq.extend(framed(frames))
        self.flush()

    def flush(self) -> None:
        """Write queued output until the socket would block."""
        while self.outq and not self.eof:
            try:
                sent = self.sock.sendmsg(list(self.outq)[:512])  # IOV_MAX is 1024 on Linux
            except BlockingIOError:
                return
            except OSError:  # the peer is gone: what we had for it is moot
                self.eof = True
                break
            while sent and sent >= self.outq[0].nbytes:
                sent -= self.outq.popleft().nbytes
            if sent:
                self.outq[0] = self.outq[0][sent:]
        if self.eof:
            self.outq.clear()

    def drain_output(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds until queued output is written (before closing)."""
        if self.outq and not self.eof:
            deadline = time.monotonic() + timeout
            while self.outq and not self.eof and time.monotonic() < deadline:
                select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))
                self.flush()

    def receive(self) -> list[list]:
        """Every whole message that has arrived; sets ``eof`` when the peer has closed."""
        messages: list[list] = []
        drained = False  # the last read was short: the socket is empty, no need for a read that says so
        while not self.eof:
            if self.large is not None:
                if not self._read_large():
                    break
                if self.filled == len(self.large):
                    messages.append(_split(self.large, self.large_sizes))
                    self.large = None
                continue
            if not self._parse_all(messages):
                continue  # a large message: the rest goes straight into its own buffer
            if drained:
                break
            scratch = _read_buffer()
            try:
                got = self.sock.recv_into(scratch)
            except BlockingIOError:
                break
            except OSError:
                got = 0
            if not got:
                self.eof = True
                break
            with memoryview(scratch) as view:
                self.inbuf += view[:got]
            drained = got < READ_CHUNK
        return messages

    def _parse_all(self, messages: list) -> bool:
        """Take every whole message in ``inbuf``; False if a large one now needs reading."""
        while (message := self._parse()) is not None:
            messages.append(message)
        return self.large is None

    def _read_large(self) -> bool:
        try:
            got = self.sock.recv_into(memoryview(self.large)[self.filled :])
        except BlockingIOError:
            return False
        except OSError:
            got = 0
        if not got:
            self.eof = True
            return False
        self.filled += got
        return True

    def _parse(self) -> list | None:
        """The next whole message in ``inbuf``, or None; a large one moves to its own buffer."""
        buf = self.inbuf
        if len(buf) < _COUNT.size:
            return None
        count = _COUNT.unpack_from(buf)[0]
        if not 0 < count <= MAX_FRAMES:
            raise ProtocolError(f"a stream message with {count} frames")
        start = _COUNT.size + 8 * count
        if len(buf) < start:
            return None
        sizes = list(struct.unpack_from(f"!{count}Q", buf, _COUNT.size))
        total = sum(sizes)
        if total > MAX_MESSAGE:
            raise ProtocolError(f"a stream message of {total} bytes")
        if len(buf) >= start + total:
            body = bytes(buf[start : start + total])
            del buf[: start + total]
            return _split(body, sizes)
        if total >= LARGE_MESSAGE:
            try:
                self.large = bytearray(total)
            except MemoryError:
                raise ProtocolError(f"no memory for a stream message of {total} bytes") from None
            self.filled = len(buf) - start
            self.large[: self.filled] = buf[start:]
            self.large_sizes = sizes
            buf.clear()
        return None


def framed(frames: list) -> list[memoryview]:
    """A message's frames as a stream carries them: count and sizes, then the frames (uncopied)."""
    views = [f.buffer if hasattr(f, "buffer") else memoryview(f).cast("B") for f in frames]
    return [memoryview(struct.pack(f"!I{len(views)}Q", len(views), *(v.nbytes for v in views))), *views]


def unframed(body) -> list:
    """The frames of one whole stream-framed message (views of ``body``); ProtocolError if it is not one."""
    if len(body) < _COUNT.size:
        raise ProtocolError("a message shorter than its frame count")
    count = _COUNT.unpack_from(body)[0]
    start = _COUNT.size + 8 * count
    if not 0 < count <= MAX_FRAMES or len(body) < start:
        raise ProtocolError(f"a message with {count} frames")
    sizes = list(struct.unpack_from(f"!{count}Q", body, _COUNT.size))
    if start + sum(sizes) != len(body):
        raise ProtocolError("a message whose frame sizes do not add up to its length")
    return _split(memoryview(body)[start:], sizes)


LANE_RECORD = 64 << 10  # message bytes per record: far below any system's socket send buffer
_START, _END = 1, 2


class Lane(_Endpoint):
    """Tasks and results between an embedded broker and a worker's task process, directly.

    A worker started by an embedded broker's pool gets a second socket pair, a
    SOCK_SEQPACKET one: its task processes read their tasks from it and write
    their results to it, so that neither waits for the supervisor (a process
    that must wake up in the middle of every round trip).  Each message is
    framed as on a ``Stream`` and cut into records of at most LANE_RECORD
    bytes, each behind a flags byte: START on a message's first record, END on
    its last.  The kernel hands over each record whole or not at all, so a task
    process that dies half-way through reading or writing a message leaves
    whole records behind it, and the next reader finds its place again: it
    drops records until a START, and a message whose END never came.

    Non-blocking (the broker's end: what the socket does not take waits in
    ``outq``, written by ``flush()`` when it is writable) or blocking (a task
    process's end: ``recv_message()``).
    """

    def __init__(self, sock: socket.socket, blocking: bool = False):
        self.sock = sock
        sock.setblocking(blocking)
        self.outq: deque[tuple[bytes, memoryview]] = deque()  # records not written yet
        self.parts: list | None = None  # the records of the message being received
        self.dropped = 0  # malformed messages received and dropped
        self.eof = False

    def send(self, frames: list) -> None:
        """Queue one message's records and write what the socket takes now."""
        body = memoryview(b"".join(framed(frames)))
        for pos in range(0, len(body), LANE_RECORD):
            flags = (_START if pos == 0 else 0) | (_END if pos + LANE_RECORD >= len(body) else 0)
            self.outq.append((bytes((flags,)), body[pos : pos + LANE_RECORD]))
        self.flush()

    def flush(self) -> None:
        while self.outq and not self.eof:
            try:
                self.sock.sendmsg(self.outq[0])
            except BlockingIOError:
                return
            except OSError:  # the other end is closed: what we had for it is moot
                self.eof = True
                break
            self.outq.popleft()
        if self.eof:
            self.outq.clear()

    def receive(self) -> list[list]:
        """Every whole message that has arrived, without blocking; sets ``eof`` at end of file."""
        messages: list[list] = []
        while not self.eof:
            try:
                record = self.sock.recv(LANE_RECORD + 1)
            except BlockingIOError:
                break
            except OSError:
                record = b""
            if not record:
                self.eof = True
                break
            message = self._take(record)
            if message is not None:
                messages.append(message)
        return messages

    def recv_message(self, spin: float = 0.0) -> list:
        """The next whole message (blocking, after polling for ``spin`` seconds: see Spin);
        EOFError when the other end is closed."""
        while True:
            record = self._spin(spin) if spin else None
            if record is None:
                record = self.sock.recv(LANE_RECORD + 1)
            if not record:
                raise EOFError("the lane was closed")
            message = self._take(record)
            if message is not None:
                return message

    def _spin(self, seconds: float) -> bytes | None:
        deadline = time.perf_counter() + seconds
        while True:
            try:
                return self.sock.recv(LANE_RECORD + 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() >= deadline:
                    return None
                os.sched_yield()

    def _take(self, record: bytes) -> list | None:
        flags = record[0]
        if flags & _START:
            self.parts = []  # a message still open was cut short: its writer died
        if self.parts is None:
            return None  # the rest of a message whose start a reader that died took
        self.parts.append(memoryview(record)[1:])
        if not flags & _END:
            return None
        parts, self.parts = self.parts, None
        if len(parts) == 1:
            body = parts[0]
        else:  # large enough to hold out-of-band buffers, which user code may write to: writable
            body = bytearray()
            for part in parts:
                body += part
        try:
            return unframed(body)
        except ProtocolError:
            self.dropped += 1
            return None

    def reset(self) -> None:
        """Forget a message half received and the records not written yet (their peer died)."""
        self.parts = None
        self.outq.clear()


class FdPoller:
    """``zmq.Poller``'s interface over ``select.poll``, for plain file descriptors.

    Where no ZeroMQ socket is involved (an embedded broker, a worker on a socket
    pair) this is one poll(2) per call; ``zmq_poll`` makes two.  Flags are
    ZeroMQ's (POLLIN 1, POLLOUT 2); a hang-up or an error reads as POLLIN, so
    that the reader finds out.
    """

    def __init__(self) -> None:
        self.poll_object = select.poll()

    def register(self, obj, flags: int) -> None:
        fd = obj if isinstance(obj, int) else obj.fileno()
        wanted = (select.POLLIN if flags & POLLIN else 0) | (select.POLLOUT if flags & POLLOUT else 0)
        self.poll_object.register(fd, wanted)

    def unregister(self, obj) -> None:
        self.poll_object.unregister(obj if isinstance(obj, int) else obj.fileno())

    def poll(self, timeout: float | None = None, spin: float = 0.0) -> list[tuple[int, int]]:
        """Ready descriptors as (fd, flags); ``timeout`` in milliseconds, None: forever;
        polling without sleeping for the first ``spin`` seconds of it (see Spin)."""
        readable = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL
        happened = []
        if spin and timeout != 0:
            deadline = time.perf_counter() + (spin if timeout is None else min(spin, timeout / 1000))
            while not (happened := self.poll_object.poll(0)) and time.perf_counter() < deadline:
                os.sched_yield()
        if not happened:
            happened = self.poll_object.poll(timeout)
        return [
            (fd, (POLLIN if flags & readable else 0) | (POLLOUT if flags & select.POLLOUT else 0))
            for fd, flags in happened
        ]


def _split(body, sizes: list[int]) -> list:
    view = memoryview(body)
    frames, pos = [], 0
    for size in sizes:
        frames.append(view[pos : pos + size])
        pos += size
    return frames
