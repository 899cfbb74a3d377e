"""What a RESULT entry becomes in the client: a future's result, its exception, or its cancellation.

The I/O thread calls ``resolve`` for each entry as the RESULT arrives (or, while a
caller leads the loop and holds outcomes back, just after: ``leading.py``): the
payload is unpickled here, in the client, never in the broker.  A task's record,
its warnings and what it printed come first, so that ``result()`` returns after them.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from .. import serialization
from ..errors import (
    DeserializationError,
    LaunchError,
    ObjectError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ..serialization import restore_builtin_state
from ..wire import protocol
from ..wire.protocol import Status
from . import dependents, output
from .future import settle

if TYPE_CHECKING:
    from .ioloop import IOLoop


def resolve(io: IOLoop, entry: list, frames: list) -> None:
    """Set a future's outcome from a RESULT entry of ``io``'s broker (unpickled here)."""
    cid, status, _, meta = entry
    if isinstance(meta, dict) and meta.get("shm") and io.store is not None:
        try:  # the result's large buffers, in files: map them, and remove the files at once
            frames = io.store.resolve(frames, meta["shm"], unlink=True)
        except (ValueError, OSError) as exc:
            status, frames, meta = Status.FAILED, [], {"error": protocol.ERR_DESERIALIZATION,
                                                       "message": f"cannot read the result: {exc}"}
    fut = io.futures.pop(cid, None)
    if fut is None or fut.cancelled():
        return
    fut._meta = meta  # its record (info.py), before callbacks may read it
    if "warnings" in meta:
        output.rewarn(meta["warnings"])  # before it completes: result() returns after them
    if io.output is not None and cid in io.output.printed:
        io.output.written(cid)  # what it printed, before result() returns
    if fut._kill_requested or (status == Status.FAILED and meta.get("error") == protocol.ERR_KILLED):
        fut._set_killed()  # after kill(), whatever finished first, the future ends cancelled
        return
    try:
        if status == Status.OK:
            settle(fut, serialization.loads(frames, "the result"), None)
        elif status == Status.RAISED:
            exc = serialization.loads(frames, "the exception raised by the task")
            settle(fut, None, restore_builtin_state(exc) if isinstance(exc, BaseException) else exc)
        elif meta.get("error") == protocol.ERR_DEPENDENCY:
            settle(fut, None, dependents.failure(fut._waits, meta))
        elif meta.get("error") == protocol.ERR_DEPENDENCY_GONE and fut._waits is not None:
            exc = dependents.send_again(io, fut, meta)
            if exc is not None:
                settle(fut, None, exc)
        else:
            if meta.get("error") == protocol.ERR_BROKEN and io.broken is None:
                io.broken = failure(meta)  # later submits raise, as ProcessPoolExecutor's do
            settle(fut, None, failure(meta))
    except SerializationError as exc:
        settle(fut, None, exc)
    if fut._waits is not None and fut.done():
        fut._waits = None  # its frames, kept to send it again, and the futures it waited for


# The exception each FAILED result's error stands for (a BrokenProcessPool, and anything else, below).
_ERRORS: dict[str, type[Exception]] = {
    protocol.ERR_SERIALIZATION: SerializationError,
    protocol.ERR_DESERIALIZATION: DeserializationError,
    protocol.ERR_WORKER_LOST: WorkerLostError,
    protocol.ERR_TIMEOUT: TaskTimeoutError,
    protocol.ERR_LAUNCH: LaunchError,
    protocol.ERR_OBJECT: ObjectError,
}


def failure(meta: dict) -> BaseException:
    """The exception a FAILED result stands for."""
    error, message = meta.get("error"), str(meta.get("message", ""))
    if isinstance(error, str) and error in _ERRORS:  # (a lying peer's error may be any JSON value)
        return _ERRORS[error](message)
    if error == protocol.ERR_BROKEN:
        return BrokenProcessPool(
            f"A worker's initializer failed; the executor is broken and takes no more work.\n{message}"
        )
    return RuntimeError(f"task failed: {error}: {message}")
