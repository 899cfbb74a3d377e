"""The corral wire protocol: every message kind, how it is framed and parsed.

This module is the only place that builds or reads message headers; the
client, broker and worker all go through it.  ``docs/protocol.md`` is the
specification; keep the two in step.

A message is a multipart message::

    frame 0      header: 1 byte version, 1 byte kind, UTF-8 JSON object
    frame 1..n   opaque payload frames (pickles and out-of-band buffers)

It travels as a ZeroMQ multipart message (``sockets.py``), or, between an
embedded broker and the workers it started, over a socket pair
(``stream.py``) or a task process's lane (``lane.py``): the same frames,
preceded by their count and sizes.

The broker parses only frame 0, a small JSON object with a size limit, so a
malicious payload can never run code in it.  Batched kinds (SUBMIT, TASKS,
RESULT) carry a list of entries in the header; each entry says how many of
the following payload frames belong to it, in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

from ..errors import ProtocolError
from ..tuning import PACK_BELOW

VERSION = 2
MAX_HEADER_BYTES = 1 << 20


class Kind(IntEnum):
    """Message kinds.  Direction: C client, B broker, W worker."""

    HELLO = 1  # C->B, W->B: first message, announces role and identity facts (a worker's resources, queues)
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
    SHUTDOWN = 13  # B->W: stop and exit; with "leave": drain, then leave for good
    ERROR = 14  # B->C, B->W: a request was refused; ``code`` says why (UNKNOWN_PEER: say HELLO again)
    KILL = 15  # C->B, B->W: stop these running tasks' processes (or all of a client's)
    CANCELLED = 16  # W->B, B->C: verdicts on CANCEL: ids dropped before they ran, ids already running
    LANE = 17  # W->B: the worker's task process reads its lane now, taking tasks of this epoch
    ENDED = 18  # W->B: the worker's task process on a lane ended: how, and the task it was running
    LEAVING = 19  # W->B: the worker drains before it leaves for good: no more tasks; "requeue" the unstarted
    PUT = 20  # C->B: objects to keep by content hash, entries [key, nframes, meta] (docs/protocol.md 3.10)
    RELEASE = 21  # C->B: "keys": objects this client holds once fewer
    UNPLACED = 22  # B->C: "ids" of queued tasks no connected worker could ever run, and "reason" (null: now one can)
    PROGRESS = 23  # W->B, B->C: in-task progress reports, entries [task_id, fraction, message] (3.11)
    OUTPUT = 24  # W->B, B->C: what running tasks wrote, entries [task_id, stream, text] (docs/protocol.md)


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
ERR_TIMEOUT = "timeout"  # the task outran its timeout; its process was killed
ERR_KILLED = "killed"  # Future.kill(), terminate_workers(), or its client went away
ERR_LAUNCH = "launch"  # no launched worker could be started to run it (the executor's launcher failed)
ERR_DEPENDENCY = "dependency"  # a task it depends on failed ("how") or was cancelled or killed: it did not run
ERR_DEPENDENCY_GONE = "dependency_gone"  # tasks it names in deps/after had finished already: send it again
ERR_OBJECT = "object"  # an object it names in refs is not held for its client (put it again)
ERR_SPILL = "spill"  # the broker could not read back the payload it had spilled to disk

# Codes of ERROR messages.
UNKNOWN_PEER = "unknown_peer"  # the broker does not know the sender (it restarted, or dropped it): HELLO again
REFUSED = "refused"  # the broker refuses this peer (too many peers, a claim it may not make): it is not served

def stopped(reason: str, timeout: Any, how: str) -> dict[str, Any]:
    """The FAILED meta of a task whose process was stopped: ``reason`` "timeout" or "killed"."""
    if reason == "timeout":
        return {"error": ERR_TIMEOUT, "message": f"the task ran longer than its timeout of {timeout} s and was "
                                                 f"stopped: {how}"}
    return {"error": ERR_KILLED, "message": f"the task was killed: {how}"}


# Why a worker leaves for good (LEAVING, BYE "reason"), kept in its record; a peer's other words are
# cut to MAX_REASON characters.
LEAVE_REASONS = ("wall_time", "tasks_max", "idle", "terminated", "lifeline", "broker_timeout", "shutdown")
MAX_REASON = 40


def reason(body: dict[str, Any], default: str) -> str:
    """A LEAVING, BYE or SHUTDOWN body's ``reason``: a short string (``default`` where it has none)."""
    value = body.get("reason")
    return value[:MAX_REASON] if isinstance(value, str) and value else default


MAX_CREDIT = 512  # tasks a worker may hold at once (credit it may grant): more is a mistake
MAX_DEPENDENCIES = 100_000  # tasks one task may wait for
MAX_REFS = 1000  # objects one task may name (refs), and entries of one PUT or RELEASE
MAX_RETRIES = 1000  # a task's retries option: more is a mistake (or an attack on the workers)
MAX_NAME = 200  # characters of a peer's name or host kept from its HELLO
MAX_TEXT = 64 << 10  # characters of a traceback or message kept from a peer
MAX_OUTPUT_CHARS = 16 << 10  # characters of one OUTPUT entry's text (a task's output comes in many)
# Placement (broker/demand.py): a task's priority, resources and queue; a worker's resources and queues.
DEFAULT_QUEUE = "default"  # the queue of a task that names none, and the one a worker serves unless told others
MAX_PRIORITY = 1 << 31  # a priority option is an integer from -MAX_PRIORITY to MAX_PRIORITY
MAX_RESOURCES = 32  # resources named by one task or one worker
MAX_RESOURCE_NAME = 64  # characters of a resource's name
MAX_AMOUNT = 1e18  # an amount of a resource: a number > 0 (bytes of memory fit)
MAX_QUEUE_NAME = 64  # characters of a queue's name
MAX_QUEUES = 32  # queues one worker serves


# Made once: json.dumps with options builds a new encoder at every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_DECODER = json.JSONDecoder()
_KINDS = {int(kind): kind for kind in Kind}


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
    kind = _KINDS.get(frame[1])  # (a dict: Kind(n) costs an enum call, in every message's path)
    if kind is None:
        raise ProtocolError(f"unknown message kind {frame[1]}")
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
        # (Exact types, as JSON makes them: ``type() is`` costs less than isinstance, per entry.)
        if (
            type(entry) is not list
            or len(entry) != width
            or type(entry[0]) is not int
            or type(n := entry[count_at]) is not int
            or n < 0
            or type(entry[-1]) is not dict
        ):
            raise ProtocolError(f"malformed {key} entry {entry!r:.80}")
        out.append((entry, frames[pos : pos + n]))
        pos += n
    if pos != len(frames):
        raise ProtocolError(f"{key}: entries name {pos} frames, message has {len(frames)}")
    return out


def pair_entries(entries: list, frames: list, count_at: int) -> list[tuple[list, list]]:
    """``split_entries`` unchecked, for a message between the parts of one process (an executor and
    its embedded broker), which built it: each entry with its frames (the count at ``count_at``)."""
    out, pos = [], 0
    for entry in entries:
        n = entry[count_at]
        out.append((entry, frames[pos : pos + n]))
        pos += n
    return out


MAX_BATCH = 2000  # entries per batched message: keeps every header far below MAX_HEADER_BYTES
BATCH_BYTES = 2 << 20  # a sender ends a batched message once its payload frames reach this


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


MAX_SEED = 2**256 - 1  # a seed: 256 bits is plenty, and bounds the header
MAX_POSITION = 2**63 - 1  # a seeded call's number, or an element's index within a map


def valid_seed(value: Any) -> bool:
    """Is ``value`` a ``seed`` task option: ``[seed, n]`` or ``[seed, n, index]``, integers >= 0 (3.6)?"""
    return (isinstance(value, list) and 2 <= len(value) <= 3 and all(type(v) is int and v >= 0 for v in value)
            and value[0] <= MAX_SEED and all(v <= MAX_POSITION for v in value[1:]))


def valid_key(value: Any) -> bool:
    """Is ``value`` an object's key: 64 lowercase hex digits (a SHA-256 digest, 3.10)?"""
    return type(value) is str and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def object_entries(body: dict[str, Any], frames: list) -> list[tuple[str, list, list]]:
    """A PUT's objects: (key, frames, shared-memory frame indices) each; ProtocolError if malformed."""
    entries = body.get("objects")
    if not isinstance(entries, list) or len(entries) > MAX_REFS:
        raise ProtocolError("PUT without a list of objects")
    out, pos = [], 0
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 3 or not valid_key(entry[0]) or type(entry[1]) is not int
                or not 1 <= entry[1] <= len(frames) - pos or not isinstance(entry[2], dict)):
            raise ProtocolError(f"malformed PUT entry {entry!r:.80}")
        shm = entry[2].get("shm", [])
        if not isinstance(shm, list) or any(type(i) is not int or not 0 <= i < entry[1] for i in shm):
            raise ProtocolError("bad shm list in a PUT entry")
        out.append((entry[0], frames[pos: pos + entry[1]], shm))
        pos += entry[1]
    if pos != len(frames):
        raise ProtocolError(f"PUT: entries name {pos} frames, message has {len(frames)}")
    return out


def keys(body: dict[str, Any], key: str = "keys") -> list[str]:
    """A list of object keys from a header (none if absent); ProtocolError if it is anything else."""
    value = body.get(key, ())
    if not isinstance(value, list) or len(value) > MAX_REFS or not all(valid_key(k) for k in value):
        raise ProtocolError(f"{key!r} is not a list of at most {MAX_REFS} object keys")
    return value


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
    """Split a batch into messages of at most MAX_BATCH entries, each with its own frames; a message
    also ends with the entry that brings its frames to BATCH_BYTES, so that none brings its receiver
    gigabytes at once (a broker spilling past its memory budget reads on a message at a time)."""
    if len(entries) == 1:  # one task, or one result: a message of its own
        yield entries, frames
        return
    if sum(map(len, frames)) >= BATCH_BYTES:
        yield from _by_bytes(entries, frames, count_at)
        return
    pos = 0
    for start in range(0, len(entries), MAX_BATCH):
        chunk = entries[start : start + MAX_BATCH]
        n = sum(entry[count_at] for entry in chunk)
        yield chunk, frames[pos : pos + n]
        pos += n


def _by_bytes(entries: list, frames: list, count_at: int):
    """``batches`` of large payloads: entries counted one by one."""
    start = pos = 0
    while start < len(entries):
        end = start
        n = size = 0
        while end < len(entries) and end - start < MAX_BATCH and size < BATCH_BYTES:
            k = entries[end][count_at]
            size += sum(map(len, frames[pos + n : pos + n + k]))
            n += k
            end += 1
        yield entries[start:end], frames[pos : pos + n]
        start, pos = end, pos + n




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
        if type(n) is not int or n < -1:  # (not a bool either: its type is bool)
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


def task_entry(task_id: int, nframes: int, options: dict[str, Any] | None = None) -> list:
    """An entry of SUBMIT or TASKS."""
    return [task_id, nframes, options or {}]


def placement(resources: tuple | None, queues: tuple | None, group: str | None = None) -> dict[str, Any]:
    """What a worker's HELLO says of what it has and serves: ``resources`` (shared by the processes of one
    ``group``), ``queues`` (none: nothing named, the default queue)."""
    body: dict[str, Any] = {}
    if resources:
        body["resources"] = dict(resources)
        if group:
            body["group"] = group
    if queues:
        body["queues"] = list(queues)
    return body


def result_entry(task_id: int, status: Status, nframes: int, meta: dict[str, Any] | None = None) -> list:
    """An entry of RESULT."""
    return [task_id, int(status), nframes, meta or {}]


# In-task progress (PROGRESS, 3.11): ``corral.report()`` in a task, sent by its task process, passed on by
# the broker to the task's client.  A report's fraction (0 to 1) or message (a string) may be null: unchanged.
MAX_PROGRESS_TEXT = 256  # characters of a report's message
MAX_PROGRESS_ENTRIES = 100  # reports in one PROGRESS


def progress_entries(body: dict[str, Any]) -> list[tuple[int, float | None, str | None]]:
    """A PROGRESS's reports: (task id, fraction or None, message or None) each; ProtocolError if malformed."""
    entries = body.get("progress")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_PROGRESS_ENTRIES:
        raise ProtocolError(f"PROGRESS without a list of 1 to {MAX_PROGRESS_ENTRIES} reports")
    out = []
    for entry in entries:
        if type(entry) is not list or len(entry) != 3 or type(entry[0]) is not int or entry[0] < 0:
            raise ProtocolError(f"malformed PROGRESS entry {entry!r:.80}")
        task_id, fraction, text = entry
        if fraction is not None and (type(fraction) not in (int, float) or not 0 <= fraction <= 1):
            raise ProtocolError(f"bad progress fraction {fraction!r:.40}")
        if text is not None and (type(text) is not str or len(text) > MAX_PROGRESS_TEXT):
            raise ProtocolError(f"bad progress message {text!r:.40}")
        out.append((task_id, None if fraction is None else float(fraction), text))
    return out


def progress(task_id: int, fraction: float | None, text: str | None) -> list:
    """A whole PROGRESS message of one report."""
    return [encode(Kind.PROGRESS, {"progress": [[task_id, fraction, text]]})]


# A task's record in its RESULT meta (3.7; the client's ``future.info``): ``ran`` from the task
# process (``note_ran``), ``worker``, ``host``, ``attempts`` and ``tries`` from the broker (``broker/taskrecord.py``).
# A task that raised also has ``traceback`` (the task process's text of it, its last MAX_TRACEBACK_META
# characters), which the broker keeps for status without unpickling anything.
MAX_TRACEBACK_META = 4096
MAX_TRIES = 32  # earlier attempts' reasons kept per task: the last ones
MAX_TRY_TEXT = 300  # characters of each


def note_ran(meta: dict[str, Any], started_us: int, took_us: int, pid: int, peak: int | None) -> None:
    """The task process's part of a task's record: ``"START RUN PID [PEAK]"``, integers: when it
    began (microseconds since the epoch), how long it ran (microseconds), in which process, and
    its peak memory (bytes) if known.  One string: the broker passes it on without parsing it."""
    meta["ran"] = f"{started_us} {took_us} {pid}" if peak is None else f"{started_us} {took_us} {pid} {peak}"


def read_record(meta: dict[str, Any]) -> dict[str, Any]:
    """A task's record from a RESULT meta, each field None (``tries`` empty) where it is missing or
    malformed: started, finished (wall-clock seconds), pid, peak, worker, host, attempts, tries."""
    record: dict[str, Any] = dict.fromkeys(("started", "finished", "pid", "peak"))
    ran = meta.get("ran")
    fields = ran.split(" ", 4) if isinstance(ran, str) else ()
    if len(fields) in (3, 4) and all(f.isascii() and f.isdigit() and len(f) <= 20 for f in fields):
        start, took, pid, *peak = (int(f) for f in fields)
        record.update(started=start / 1e6, finished=(start + took) / 1e6, pid=pid or None,
                      peak=peak[0] or None if peak else None)
    worker, host, attempts, tries = (meta.get(key) for key in ("worker", "host", "attempts", "tries"))
    record.update(
        worker=worker if isinstance(worker, str) else None,
        host=host if isinstance(host, str) else None,
        attempts=attempts if type(attempts) is int and attempts >= 0 else None,
        tries=tuple(t for t in tries if isinstance(t, str)) if isinstance(tries, list) else (),
    )
    return record
