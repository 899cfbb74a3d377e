"""Turning calls and results into frames and back.

Everything user-supplied travels as one cloudpickle stream with pickle
protocol 5; buffers that support out-of-band pickling (numpy arrays, bytes
wrapped in ``pickle.PickleBuffer``) become separate ZeroMQ frames so that
they are never copied into the stream.  On the receiving side the frames are
handed to the unpickler as they are.

When pickling fails we search the object for the innermost part that cannot
be pickled, so the error names it (``args[0].lock``) instead of only saying
"cannot pickle '_thread.lock' object".
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .errors import DeserializationError, SerializationError

PROTOCOL = 5
# Buffers smaller than this are cheaper to copy into the stream than to send
# as a frame of their own.
OOB_THRESHOLD = 64 * 1024
_MAX_DEPTH = 6


def dumps(obj: Any, what: str = "object") -> list:
    """Pickle ``obj`` into [stream, *buffers]; SerializationError on failure."""
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_THRESHOLD:
            return True  # pickle it in-band
        buffers.append(raw)
        return False

    try:
        stream = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep)
    except Exception as exc:
        path, reason = _find_culprit(obj, what)
        raise SerializationError(f"cannot pickle {path}: {reason}") from exc
    return [stream, *buffers]


def loads(frames: list, what: str = "object") -> Any:
    """Unpickle [stream, *buffers]; SerializationError on failure."""
    try:
        return pickle.loads(frames[0], buffers=frames[1:])
    except BaseException as exc:  # noqa: BLE001 - even sys.exit() in a __reduce__ fails only this object
        raise DeserializationError(f"cannot unpickle {what}: {type(exc).__name__}: {exc}") from exc


def _pickles(obj: Any) -> Exception | None:
    try:
        cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=lambda b: False)
    except Exception as exc:
        return exc
    return None


def _children(obj: Any):
    """Parts of ``obj`` that its pickle would contain, with their path suffix."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"[{key!r}]", value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            yield f"[{i}]", value
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for key, value in state.items():
                yield f".{key}", value
        closure = getattr(obj, "__closure__", None)
        code = getattr(obj, "__code__", None)
        if closure and code is not None:
            for name, cell in zip(code.co_freevars, closure):
                try:
                    yield f".<closure {name}>", cell.cell_contents
                except ValueError:
                    continue
        glob = getattr(obj, "__globals__", None)
        if code is not None and isinstance(glob, dict):
            for name in code.co_names:
                if name in glob:
                    yield f".<global {name}>", glob[name]


def _find_culprit(obj: Any, path: str) -> tuple[str, str]:
    """Descend into ``obj`` while some part still fails to pickle."""
    exc = _pickles(obj)
    if exc is None:
        return path, "pickling failed (the object pickles on retry; is it changing?)"
    for _ in range(_MAX_DEPTH):
        for suffix, child in _children(obj):
            child_exc = _pickles(child)
            if child_exc is not None:
                obj, path, exc = child, path + suffix, child_exc
                break
        else:
            break
    return path, f"{type(exc).__name__}: {exc}"
