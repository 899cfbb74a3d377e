"""Running one task inside a worker process and packaging its outcome.

A task's payload is a ``serialization.Call``: the function's pickle, then the
arguments' pickle and its out-of-band buffers.  ``execute`` never raises: whatever
happens becomes a (status, frames, meta) triple ready for a RESULT entry.
"""

from __future__ import annotations

import builtins
import traceback
from collections.abc import Callable
from typing import Any

from tblib import pickling_support

from .. import errors, refs, reporting, seeds, serialization
from ..errors import SerializationError
from ..wire import protocol, shm
from . import taskwarnings

# Tracebacks become picklable, so the caller sees the worker's frames.  This covers the
# exception classes that exist now; _raised() adds those of modules imported since (numpy's
# LinAlgError, a class of the task's own module) before it pickles an exception.
pickling_support.install()


# Functions this task process has unpickled, so each is unpickled once, not once per task.
_functions = serialization.FunctionCache()


def ended(meta: dict) -> None:
    """A task has ended (its outcome is ``meta``'s): no progress report is written for it any more,
    and its last report and the warnings it raised go into ``meta`` (either loop of a task process)."""
    reporting.current = 0
    if reporting.used:
        reporting.finish(meta)  # no report is being written when the outcome is
    if taskwarnings.caught:
        taskwarnings.attach(meta)


def import_ahead(pickled_function: bytes) -> None:
    """Unpickle a task's function now, importing its module; processes forked from here then have it."""
    _functions.loads(pickled_function, "a function imported ahead")


def unpack_call(frames: list) -> tuple[Callable, tuple, dict | None, list | None]:
    """A task's function, args, kwargs and chunk, from its payload frames."""
    what = "the task in the worker"
    if len(frames) < 2:
        raise SerializationError(f"cannot unpickle {what}: it has {len(frames)} payload frames, not 2 or more")
    try:
        fn = _functions.loads(frames[0], what)
        args, kwargs, chunk = serialization.loads(frames[1:], what)
    except (TypeError, ValueError) as exc:
        raise errors.DeserializationError(
            f"cannot unpickle {what}: its arguments are not (args, kwargs, chunk)"
        ) from exc
    except errors.DeserializationError as exc:
        missing = exc.__cause__
        if isinstance(missing, ModuleNotFoundError) and missing.name:
            raise errors.DeserializationError(f"{exc}. {_missing_module_advice(missing.name)}") from missing
        raise
    return fn, args, kwargs, chunk


def _unpack_dependent(frames: list, dep_frames: list) -> tuple[Callable, tuple, dict | None, list | None]:
    """``unpack_call`` for a task whose last frames are its dependencies' results: those are
    unpickled first, and stand in for the futures in its arguments."""
    from .. import dependencies

    if not (isinstance(dep_frames, list) and all(type(n) is int and n >= 1 for n in dep_frames)
            and sum(dep_frames) <= len(frames) - 2):
        raise SerializationError("cannot unpickle the task in the worker: its dependencies' frames do not add up")
    total = sum(dep_frames)
    values, pos = [], len(frames) - total
    for i, count in enumerate(dep_frames):
        values.append(serialization.loads(frames[pos: pos + count], f"the result of dependency {i}"))
        pos += count
    with dependencies.resolving(values):
        return unpack_call(frames[: len(frames) - total])


def _missing_module_advice(name: str) -> str:
    """What to do when the client pickled something by reference to a module the worker lacks."""
    return (f"The worker cannot import {name!r}, which the client could: install it where the workers run "
            f"(or put it on their PYTHONPATH), or have the client send its code: "
            f"`import cloudpickle, {name}; cloudpickle.register_pickle_by_value({name})` before submitting")


Outcome = tuple[protocol.Status, list, dict]


OBJECT_OPTIONS = ("refs", "ref_frames", "forget", "blobs")  # what ``execute`` passes to refs.objects


def object_options(options: dict) -> dict | None:
    """The options of a task that concern its large objects (``refs.py``), or None."""
    if "refs" not in options and "forget" not in options:
        return None
    return {k: options[k] for k in OBJECT_OPTIONS if k in options}


def failed(error: str, message: str) -> Outcome:
    """The outcome of a task that failed with ``error`` (a protocol ERR_ name)."""
    return protocol.Status.FAILED, [], {"error": error, "message": message}


def execute(frames: list, shm_dir: str | None = None, offloaded: list | None = None,
            seed: list | None = None, dep_frames: list | None = None, objects: dict | None = None) -> Outcome:
    """Unpickle, run and pickle back one task.

    With ``shm_dir`` (the client's shared-memory directory), the frames at the
    ``offloaded`` indices name files there, and a large result goes back the same
    way (its meta lists them).  With ``seed`` (the task's ``seed`` option), each
    call runs on its own random streams (``seeds.py``).  ``dep_frames``: the task's last frames are the
    results of the tasks it depends on, this many frames each (``dependencies.py``).  ``objects``: the
    options that name the large objects it uses, and carry those not here yet (``refs.py``).
    """
    try:
        if objects:
            frames = refs.objects.receive(objects, frames, shm_dir)
        if offloaded:
            if shm_dir is None:
                raise SerializationError("cannot unpickle the task in the worker: it names shared-memory "
                                         "buffers, and this worker has none")
            frames = shm.Store(shm_dir).resolve(frames, offloaded, unlink=False)
        # The call is made here, not through a Call object's method: in a fresh task
        # process every function that runs writes to pages the kernel must copy.
        if dep_frames:
            fn, args, kwargs, chunk = _unpack_dependent(frames, dep_frames)
        else:
            fn, args, kwargs, chunk = unpack_call(frames)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        return failed(protocol.ERR_DESERIALIZATION, f"cannot unpickle the task in the worker: {exc}")
    except SerializationError as exc:
        return failed(protocol.ERR_DESERIALIZATION, str(exc))
    try:
        if seed is not None:
            value = _seeded(fn, args, kwargs, chunk, seed)
        else:
            value = [fn(*one) for one in chunk] if chunk is not None else fn(*args, **(kwargs or {}))
    except BaseException as exc:  # noqa: BLE001 - the stdlib also reports SystemExit etc.
        return _raised(exc)
    try:
        out = serialization.dumps(value, lambda: f"the result of {getattr(fn, '__qualname__', None) or repr(fn)}()")
        if shm_dir is None or len(out) == 1:  # only an out-of-band buffer can be large enough to offload
            return protocol.Status.OK, out, {}
        out, indices, _ = shm.Store(shm_dir).offload(out, 1)
        return protocol.Status.OK, out, {"shm": indices} if indices else {}
    except SerializationError as exc:
        return failed(protocol.ERR_SERIALIZATION, str(exc))
    except BaseException as exc:  # noqa: BLE001 - e.g. sys.exit() in the result's __reduce__
        return _raised(exc)


def _seeded(fn: Callable, args: tuple, kwargs: dict | None, chunk: list | None, option: list) -> Any:
    """The call, or each element of the chunk, right after seeding its own streams (``seeds.begin``).
    Here, not in ``seeds``: ``_raised`` drops this module's frames from the user's traceback."""
    keys = seeds.keys(option, None if chunk is None else len(chunk))
    try:
        if chunk is None:
            seeds.begin(option[0], keys[0])
            return fn(*args, **(kwargs or {}))
        value = []
        for one, key in zip(chunk, keys):
            seeds.begin(option[0], key)
            value.append(fn(*one))
        return value
    finally:
        seeds.end()


_GROUPS = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11+
MAX_TRACEBACK_FRAMES = 100  # a RecursionError's thousand frames nest too deep to pickle


def _raised(exc: BaseException) -> Outcome:
    """The outcome of a task that raised ``exc``: pickled with its traceback, or failing that, its text."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the worker's own frames: the caller's traceback starts in their function
    exc.__traceback__ = tb
    _install_pickling(exc)
    meta = {"traceback": traceback_text(exc)}  # for the broker's status, which never unpickles
    try:
        return protocol.Status.RAISED, serialization.dumps(exc, "the exception"), meta
    except SerializationError as perr:
        if _trim_traceback(exc):
            try:
                return protocol.Status.RAISED, serialization.dumps(exc, "the exception"), meta
            except SerializationError:
                pass
        text = "".join(traceback.format_exception(exc))
        return failed(
            protocol.ERR_SERIALIZATION,
            f"the task raised {type(exc).__name__}, which cannot be pickled ({perr}); "
            f"its traceback in the worker was:\n{text}",
        )


def traceback_text(exc: BaseException, most: int = protocol.MAX_TRACEBACK_META) -> str:
    """``exc``'s traceback as text, its last ``most`` characters (where it says what was raised)."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = f"{type(exc).__name__} (its traceback could not be formatted)"
    return text if len(text) <= most else "..." + text[-(most - 3):]


def _install_pickling(exc: BaseException) -> None:
    """Let tblib pickle every exception in ``exc``'s chain with its traceback.

    A class that tblib has not been told about pickles without its traceback, cause and
    context, and at import time it was told only of the classes that existed then.  The
    chain is walked here (cause, context, an ExceptionGroup's members) rather than by
    tblib, which walks ``__context__`` only from version 3: pyproject allows 1.7.
    """
    classes, seen, todo = set(), set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        classes.add(type(e))
        todo += [e.__cause__, e.__context__]
        if isinstance(e, _GROUPS):
            todo += e.exceptions
    pickling_support.install(*classes)


def _trim_traceback(exc: BaseException) -> bool:
    """Keep the first and last frames of a very deep traceback; True if it was cut."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if len(frames) <= MAX_TRACEBACK_FRAMES:
        return False
    half = MAX_TRACEBACK_FRAMES // 2
    frames[half - 1].tb_next = frames[-half]
    if hasattr(exc, "add_note"):
        exc.add_note(f"({len(frames) - 2 * half} traceback frames omitted by corral)")
    return True
