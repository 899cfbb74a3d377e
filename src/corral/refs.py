"""Large objects sent once: ``corral.Ref``, what it pickles as, and the task process's objects.

``Executor.put(obj)`` pickles ``obj`` once and names the pickle by its content (a
SHA-256 digest, salted per executor: its *key*); the broker keeps one copy per key, and each worker a
bounded cache of them (``broker/objects.py``, ``worker/objects.py``).  A ``Ref`` met
while a task's function and arguments are pickled becomes a placeholder naming its
key (``Ref.__reduce_ex__``; the client's ``Collector`` notes it, so that the task's
SUBMIT lists it in ``refs``).  Large out-of-band buffers of the arguments are named
by content the same way ("blobs": a frame of the task stands for the object).

In the task process, ``objects`` keeps what the broker (on a lane) or the supervisor
attached to tasks (``receive``): the frames of each object, kept once in memory that
each use maps without a copy, and a ``put`` object unpickled once per process
(``_object``).  Why here: a persistent task process then unpickles a large object
once, however many tasks use it.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from . import serialization
from .wire import shm


class Ref:
    """A handle on an object stored once with ``Executor.put(obj)``.

    Pass it to any number of tasks of the same executor, as an argument or inside
    one (a list, a closure's variable): in the task it is the object itself.  The
    object stays at the broker while a ``Ref`` to it (or a task that uses it) lives;
    when the last one is dropped, the broker drops it.  ``key`` names its content,
    ``nbytes`` is the size of its pickle.
    """

    __slots__ = ("_handle", "nbytes", "__weakref__")

    def __init__(self, handle: Any, nbytes: int):
        self._handle = handle  # the client's Handle: the object lives at the broker while it does
        self.nbytes = nbytes

    @property
    def key(self) -> str:
        """The object's key: the hex SHA-256 digest of its pickle (and a secret of its executor)."""
        return self._handle.key

    def __repr__(self) -> str:
        return f"<corral.Ref {self.key[:12]} ({self.nbytes:,} bytes)>"

    def __reduce_ex__(self, protocol: int) -> tuple:
        gathering = serialization.gathering()
        if gathering is None:
            raise serialization.GatheringNeeded(
                "a corral.Ref can be pickled only in a task submitted to the executor that made it (it stands for "
                "the object there); pickle the object itself to send it elsewhere")
        return gathering.reference(self)

    def __copy__(self) -> Ref:
        return self

    def __deepcopy__(self, memo: dict) -> Ref:
        return self


# -- in the task process ---------------------------------------------------------------


class _Kept:
    """One object's frames in a task process: each in a memory file of its own (written once),
    or a file of the client's shared-memory directory; mapped, never copied, at each use."""

    __slots__ = ("fds", "names", "value", "has_value")

    def __init__(self, frames: list, shm_indices: list, shm_dir: str | None):
        self.fds: list = []
        self.names: list = []
        for i, frame in enumerate(frames):
            if i in shm_indices:
                if shm_dir is None:
                    raise ValueError("an object names shared-memory files, and this worker has none")
                name = bytes(frame).decode("ascii", "replace")
                if not name or "/" in name or name.startswith("."):
                    raise ValueError(f"bad shared-memory file name {name!r:.80}")
                self.names.append(os.path.join(shm_dir, name))
                self.fds.append(None)
            else:
                self.names.append(None)
                self.fds.append(_memory_file(frame))
        self.value: Any = None
        self.has_value = False

    def frames(self, writable: bool) -> list:
        """The frames, mapped: private (copy on write) if ``writable``, else read-only."""
        out = []
        for fd, name in zip(self.fds, self.names):
            if name is not None:
                view = shm.map_file(name)
                out.append(view if writable else view.toreadonly())
            else:
                out.append(_map(fd, writable))
        return out

    def close(self) -> None:
        for fd in self.fds:
            if isinstance(fd, int):
                os.close(fd)


def _memory_file(frame: Any) -> Any:
    """A frame's bytes in an anonymous memory file (its descriptor); bytes where there is none."""
    view = memoryview(frame).cast("B")
    if not hasattr(os, "memfd_create") or view.nbytes == 0:
        return bytes(view)
    fd = os.memfd_create("corral-object", os.MFD_CLOEXEC)
    pos = 0
    while pos < view.nbytes:
        pos += os.write(fd, view[pos:])
    return fd


def _map(fd: Any, writable: bool) -> Any:
    """A mapping of a memory file: private and writable (no copy until written), or read-only."""
    if not isinstance(fd, int):
        return bytearray(fd) if writable else memoryview(fd)
    size = os.fstat(fd).st_size
    if writable:
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ))


class Objects:
    """A task process's objects, by key, as the broker or its supervisor attached them."""

    def __init__(self) -> None:
        self.kept: dict[str, _Kept] = {}

    def receive(self, options: dict, frames: list, shm_dir: str | None) -> list:
        """Take what a task carries for this store (its last frames, ``ref_frames``: [key, count,
        shm indices] each; ``forget``: keys to drop first); the task's own frames, and its blobs
        (``blobs``: [index, key] each) in place, each a private mapping of the object."""
        for key in options.get("forget") or ():
            kept = self.kept.pop(key, None)
            if kept is not None:
                kept.close()
        attached = options.get("ref_frames") or ()
        total = sum(entry[1] for entry in attached)
        if total > len(frames) - 2:
            raise ValueError("its objects' frames do not add up")
        pos = len(frames) - total
        for key, count, shm_indices in attached:
            if key not in self.kept:
                self.kept[key] = _Kept(frames[pos: pos + count], shm_indices, shm_dir)
            pos += count
        frames = frames[: len(frames) - total]
        for key in options.get("refs") or ():
            if key not in self.kept:
                raise ValueError(f"object {key[:12]} did not come with it")
        blobs = options.get("blobs")
        if blobs:
            frames = list(frames)
            for index, key in blobs:
                if not 2 <= index < len(frames):
                    raise ValueError(f"bad blob frame index {index!r:.20}")
                frames[index] = self.kept[key].frames(writable=True)[0]
        return frames

    def value(self, key: str) -> Any:
        """A ``put`` object, unpickled once (its buffers read-only: tasks share it)."""
        from . import serialization

        kept = self.kept.get(key)
        if kept is None:
            raise RuntimeError(f"the object of corral.Ref {key[:12]} did not come with this task")
        if not kept.has_value:
            kept.value = serialization.loads(kept.frames(writable=False), f"the object of corral.Ref {key[:12]}")
            kept.has_value = True
        return kept.value


objects = Objects()  # this task process's


def _object(key: str) -> Any:
    """What a Ref unpickles as in a task process: its object."""
    return objects.value(key)
