"""Turning calls and results into frames and back.

Everything user-supplied travels as one cloudpickle stream with pickle
protocol 5; buffers that support out-of-band pickling (numpy arrays, bytes
wrapped in ``pickle.PickleBuffer``) become separate ZeroMQ frames so that
they are never copied into the stream.  On the receiving side the frames are
handed to the unpickler as they are.

Most objects pickle with the standard library's C pickler; cloudpickle,
which can also pickle functions and classes by value, takes over only when
that fails or when the pickle would refer to ``__main__`` (whose functions a
worker cannot import).  A task travels as two streams, the function and its
arguments, so that a function pickled by value (a script's or a notebook's)
is pickled once per executor (``FunctionPickles``) and unpickled once per
task process, not once per task.

When pickling fails we search the object for the innermost part that cannot
be pickled, so the error names it (``args[0].lock``) instead of only saying
"cannot pickle '_thread.lock' object".
"""

from __future__ import annotations

import pickle
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from . import errors
from .errors import SerializationError
from .tuning import OOB_THRESHOLD

PROTOCOL = 5
_MAX_DEPTH = 6
# The modules someone asked cloudpickle to pickle by value (register_pickle_by_value),
# a set cloudpickle fills in place: looked at before every pickle.
_BY_VALUE = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", frozenset())


class GatheringNeeded(TypeError):
    """What a corral future or ``Ref`` raises when it is pickled while no gathering is active
    (``client/gathering.py``).  Outside a task's pickling it is the user's TypeError, whose
    message says what to do; within ``call_frames`` it means: pickle the call again, gathering."""


def dumps(obj: Any, what: str | Callable[[], str] = "object", culprit: Any = None,
          out_of_band: bool = True) -> list:
    """Pickle ``obj`` into [stream, *buffers]; SerializationError on failure.

    On failure the error names the part that failed, searched for from
    ``culprit`` (default: ``obj``) and called ``what`` (or what it returns, if a
    callable: a name worth building only for an error).
    """
    buffers: list = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if not out_of_band or raw.nbytes < OOB_THRESHOLD:
            return True  # pickle it in-band
        buffers.append(raw)
        return False

    stream = None
    if not _BY_VALUE:  # else cloudpickle must pickle those modules' contents by value
        try:
            stream = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep)
        except GatheringNeeded:
            raise
        except Exception:  # noqa: BLE001 - cloudpickle gets its turn, and the blame if it fails too
            stream = None
        if stream is not None and b"__main__" in stream:
            stream = None  # refers to the script's own functions or classes: pickle those by value
    if stream is None:
        buffers.clear()
        try:
            stream = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=keep)
        except GatheringNeeded:
            raise
        except Exception as exc:
            path, reason = _find_culprit(obj if culprit is None else culprit, what() if callable(what) else what)
            raise SerializationError(f"cannot pickle {path}: {reason}") from exc
    return [stream, *buffers]


class FunctionPickles:
    """An executor's cache of pickled functions, so a function is pickled once, not once per task.

    Only plain functions without closures are kept, weakly: a function of a
    script (``__main__``) travels by value and costs tens of microseconds to
    pickle.  Like a ProcessPoolExecutor's workers, which hold the script's
    module as it was when they started, tasks then see the function's
    globals as they were at its first submit.
    """

    def __init__(self) -> None:
        self.cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.by_value: frozenset = frozenset(_BY_VALUE)

    def dumps(self, fn: Any, what: str) -> bytes:
        """A function's pickle, from the cache if it is there."""
        if self.by_value != _BY_VALUE:  # register_pickle_by_value() since: pickle functions anew
            self.cache.clear()
            self.by_value = frozenset(_BY_VALUE)
        cacheable = type(fn) is types.FunctionType and fn.__closure__ is None
        if cacheable:
            stream = self.cache.get(fn)
            if stream is not None:
                return stream
        # In-band only: a cached stream must hold everything the function needs.
        stream = dumps(fn, what, out_of_band=False)[0]
        if cacheable and b"corral.refs" not in stream:  # a Ref in its globals must be listed by each task
            self.cache[fn] = stream
        return stream


class FunctionCache:
    """A task process's unpickled functions, by their pickle (the oldest dropped past ``size``).

    A read-only buffer is looked up as it is; nothing is copied or reordered on a hit,
    so a fresh task process, which finds its function here (the template put it
    there), writes to none of the cache's pages.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.cache: dict = {}

    def loads(self, stream: Any, what: str) -> Any:
        """A function from its pickle, unpickled once."""
        try:
            fn = self.cache.get(stream)
        except (TypeError, ValueError):  # a writable buffer cannot be hashed: look up a copy
            stream = bytes(stream)
            fn = self.cache.get(stream)
        if fn is None:
            key = bytes(stream)
            fn = loads([key], what)
            self.cache[key] = fn
            if len(self.cache) > self.size:
                del self.cache[next(iter(self.cache))]
        return fn


def loads(frames: list, what: str = "object") -> Any:
    """Unpickle [stream, *buffers]; SerializationError on failure."""
    try:
        return pickle.loads(frames[0], buffers=frames[1:])
    except BaseException as exc:  # noqa: BLE001 - even sys.exit() in a __reduce__ fails only this object
        raise errors.DeserializationError(f"cannot unpickle {what}: {type(exc).__name__}: {exc}") from exc


def _pickles(obj: Any) -> Exception | None:
    """The exception pickling ``obj`` raises, if any."""
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


@dataclass
class Call:
    """What a task message carries: ``fn(*args, **kwargs)``, or ``fn`` mapped over ``chunk``."""

    fn: Callable
    args: tuple = ()
    kwargs: dict | None = None
    chunk: list | None = None


_pickling = threading.local()  # ``task``: the gathering of the call this thread pickles now, if any


def gathering() -> Any:
    """What the call this thread pickles now reports to (``client/gathering.py``), or None: where
    a corral future or Ref met in the pickle goes (their ``__reduce_ex__``)."""
    return getattr(_pickling, "task", None)


def call_frames(call: Call, functions: FunctionPickles, gathering: Any = None) -> list:
    """A call's payload frames; SerializationError names what could not be pickled.  With
    ``gathering`` (``client/gathering.Gathering``), the futures and Refs met are noted there:
    Refs anywhere, futures among the arguments only (``gathering.arguments``).  Without, a
    future or Ref met raises GatheringNeeded."""
    if gathering is None:
        return [functions.dumps(call.fn, "task.fn"), *dumps((call.args, call.kwargs, call.chunk), "task", culprit=call)]
    outer = getattr(_pickling, "task", None)  # (a call pickled while another is: its own, then the other's again)
    _pickling.task = gathering
    try:
        fn = functions.dumps(call.fn, "task.fn")
        gathering.arguments = True
        return [fn, *dumps((call.args, call.kwargs, call.chunk), "task", culprit=call)]
    finally:
        _pickling.task = outer


def restore_builtin_state(exc: BaseException) -> BaseException:
    """Give unpickled builtin exceptions back what their ``__init__`` sets.

    tblib rebuilds exceptions without calling ``__init__``, so attributes a
    builtin exception derives from its args (``SystemExit.code``,
    ``StopIteration.value``, ``UnicodeError``'s fields) would be missing.
    Builtin ``__init__`` methods take exactly the args they produced.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__module__ == "builtins":
            try:
                type(e).__init__(e, *e.args)
            except Exception:  # noqa: BLE001 - keep what we have
                pass
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return exc
