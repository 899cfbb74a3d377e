"""The client's half of large objects: ``Executor.put``, and large arguments sent once.

An object is named by the SHA-256 digest of its frames and of a secret of this
executor (its *key*), so the same content has the same key in every task of the
executor; the secret keeps another client of a shared broker from sending other
content under a key of ours (it cannot know one), so no client's tasks ever get
another's object.  SHA-256, not BLAKE2b: with the SHA instructions of current x86
and ARM processors it hashes about twice as fast (a large argument is hashed at
every submit).  This executor keeps one ``Handle`` per
key while anything uses it: the ``Ref``s that ``put`` returned, and the futures of
the tasks that need it (until they are done).  The first handle of a key sends a
PUT with the object's frames; when the last user of a handle is gone (the garbage
collector frees it), a RELEASE follows, so the broker drops its copy once no client
and no task needs it (``broker/objects.py``).  Both go through the I/O loop's
``objects_out``, ahead of the SUBMITs queued after them.

While a task is pickled, each ``Ref`` in it (an argument, or a closure's variable)
becomes a placeholder (``Collector``), and each out-of-band buffer of its arguments
of ``AUTO_OBJECT_BYTES`` or more becomes an object of its own (a *blob*): its frame
travels as an empty one, and the SUBMIT's ``blobs`` says which object stands there.
The same array given to a thousand tasks then reaches each worker once; the last few
stay a while after their tasks (``LINGER_OBJECTS``), for the next task that takes them.  Not with
an embedded broker's shared memory (``wire/shm.py``), where a large argument is
written to a file per task, which its task process maps: hashing a buffer (about
0.5 GB/s) costs more than the one copy that writing it takes (several GB/s), and
nothing crosses a network there.  ``put`` objects do go there, their large frames as
files of the executor's directory named by the key (written once, replaced
atomically, removed when the last handle goes), which each task process maps.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any

from .. import refs, serialization
from ..refs import Ref
from ..tuning import SHM_MIN_BYTES
from ..wire import protocol, shm
from ..wire.protocol import Kind

# A buffer of PIECES_FROM bytes or more is hashed in pieces of PIECE_BYTES, on up to
# MAX_HASH_THREADS threads (``_pieces_digest``).
PIECES_FROM = 16 << 20
PIECE_BYTES = 4 << 20
MAX_HASH_THREADS = 8
_CPUS = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
AUTO_OBJECT_BYTES = 1 << 20  # an argument's buffer this large is sent once per worker, by its content
# The large arguments used last stay at the broker after their tasks are done, so that one task
# at a time with the same array does not send it again each time: this many, this many bytes.
LINGER_OBJECTS = 4
LINGER_BYTES = 1 << 30


class Handle:
    """One key's life in this executor: the object stays at the broker while this lives."""

    __slots__ = ("key", "owner", "__weakref__")

    def __init__(self, key: str, owner: Objects):
        self.key = key
        self.owner = owner


def digest(secret: bytes, kind: bytes, frames: list) -> str:
    """The key of an object (``kind``: b"p" a pickle, b"b" a raw buffer) made of ``frames``."""
    h = hashlib.sha256(secret + kind)
    for frame in frames:
        view = memoryview(frame).cast("B")
        h.update(view.nbytes.to_bytes(8, "big"))
        h.update(view if view.nbytes < PIECES_FROM else _pieces_digest(view))
    return h.hexdigest()


def _pieces_digest(view: memoryview) -> bytes:
    """The SHA-256 digests of ``view``'s pieces of ``PIECE_BYTES``, one after the other, hashed on
    as many threads as this process may use CPUs (hashlib lets go of the GIL while it hashes).

    Why: a large argument is hashed at every submit (to send it once), at about 1.5 GB/s on
    one core: 43 ms for 64 MiB, a fifth of its round trip over TCP.  The pieces depend on the
    size alone, so the same content always has the same key."""
    starts = range(0, view.nbytes, PIECE_BYTES)
    digests: list = [None] * len(starts)

    def hash_every(step: int, first: int) -> None:
        for i in range(first, len(starts), step):
            digests[i] = hashlib.sha256(view[starts[i]: starts[i] + PIECE_BYTES]).digest()

    n = max(1, min(len(_CPUS), len(starts), MAX_HASH_THREADS))
    helpers = [threading.Thread(target=hash_every, args=(n, i), name="corral-hash", daemon=True)
               for i in range(1, n)]
    for t in helpers:
        t.start()
    hash_every(n, 0)
    for t in helpers:
        t.join()
    return b"".join(digests)


class Collector:
    """The Refs met while one task is pickled (``gathering.Gathering.reference``)."""

    def __init__(self, owner: Objects):
        self.owner = owner
        self.handles: dict[str, Handle] = {}
        self.foreign = False  # a Ref of another executor

    def reference(self, ref: Ref) -> tuple:
        """What ``ref`` pickles as: a placeholder that is its object in the task process."""
        handle = ref._handle
        if handle.owner is not self.owner:
            self.foreign = True
        else:
            self.handles[handle.key] = handle
        return refs._object, (handle.key,)


class Objects:
    """An executor's large objects: one live handle per key (see the module docstring)."""

    def __init__(self, loop: Any, store: shm.Store | None):
        self.loop = loop  # the I/O loop: its objects_out carries PUT and RELEASE
        self.store = store
        self.lock = threading.RLock()  # a handle's end (a weakref callback) may come in any thread, at any time
        self.live: dict[str, weakref.ref] = {}
        self.secret = os.urandom(32)  # in every key (see the module docstring)
        self.recent: OrderedDict[str, tuple[Handle, int]] = OrderedDict()  # large arguments used last
        self.recent_bytes = 0

    def put(self, obj: Any) -> Ref:
        """``Executor.put``: pickle ``obj`` once, send it once; its Ref."""
        frames = serialization.dumps(obj, "the object given to put()")
        key = digest(self.secret, b"p", frames)
        return Ref(self.handle(key, frames, 1), sum(memoryview(f).nbytes for f in frames))

    def prepare(self, frames: list, options: dict | None, collector: Collector | None
                ) -> tuple[list, dict | None, list]:
        """A pickled task's frames and options, with the objects it needs (``refs``, ``blobs``), and
        the handles its future must hold.  ``collector``: the Refs met (None: none).  ValueError for
        a Ref of another executor."""
        if collector is not None and collector.foreign:
            raise ValueError("a corral.Ref of another executor was given to a task: a Ref stands for an object "
                             "only in tasks of the executor whose put() made it; put() the object here too")
        handles = dict(collector.handles) if collector is not None else {}
        blobs = []
        for i in range(2 if self.store is None else len(frames), len(frames)):  # see the module docstring
            view = memoryview(frames[i])
            if view.nbytes >= AUTO_OBJECT_BYTES:
                key = digest(self.secret, b"b", [view])
                handles[key] = self.handle(key, [view], 0)
                self.linger(handles[key], view.nbytes)
                frames[i] = b""
                blobs.append([i, key])
        if not handles:
            return frames, options, []
        if len(handles) > protocol.MAX_REFS:
            raise ValueError(f"a task may use at most {protocol.MAX_REFS} large objects; it uses {len(handles)}")
        added: dict = {"refs": list(handles)}
        if blobs:
            added["blobs"] = blobs
        return frames, {**(options or {}), **added}, list(handles.values())

    def handle(self, key: str, frames: list, first: int) -> Handle:
        """The live handle of ``key``; a new one sends the object (``frames``: its buffers from
        index ``first`` may go to shared memory)."""
        with self.lock:
            alive = self.live.get(key)
            handle = alive() if alive is not None else None
            if handle is not None:
                return handle
            handle = Handle(key, self)
            kept, offloaded = self.keep(key, frames, first)
            self.live[key] = weakref.ref(handle, functools.partial(self.dead, key, files=len(offloaded)))
            meta = {"shm": offloaded} if offloaded else {}
            self.loop.post_object(Kind.PUT, {"objects": [[key, len(kept), meta]]}, kept)
        return handle

    def linger(self, handle: Handle, nbytes: int) -> None:
        """Keep ``handle`` among the large arguments used last (the oldest let go past the bounds)."""
        with self.lock:
            old = self.recent.pop(handle.key, None)
            if old is not None:
                self.recent_bytes -= old[1]
            self.recent[handle.key] = (handle, nbytes)
            self.recent_bytes += nbytes
            while len(self.recent) > LINGER_OBJECTS or (self.recent_bytes > LINGER_BYTES and len(self.recent) > 1):
                self.recent_bytes -= self.recent.popitem(last=False)[1][1]

    def keep(self, key: str, frames: list, first: int) -> tuple[list, list]:
        """The frames to send, copied (the caller may change its buffers later), the large ones as files
        named by the key where there is shared memory; and the indices of those."""
        kept, offloaded = [], []
        for i, frame in enumerate(frames):
            view = memoryview(frame).cast("B")
            if self.store is not None and i >= first and view.nbytes >= SHM_MIN_BYTES:
                written = self.store.write(view)
                if written is not None:
                    name = f"{key}-{len(offloaded)}"
                    os.replace(written, os.path.join(self.store.directory, name))  # mapped ones keep theirs
                    kept.append(name.encode())
                    offloaded.append(i)
                    continue
            kept.append(bytes(view))
        return kept, offloaded

    def dead(self, key: str, ref: weakref.ref, files: int) -> None:
        """The last user of a handle has gone: the broker may drop the object, and its files go."""
        with self.lock:
            if self.live.get(key) is ref:  # else a new handle of the same content was made: the files are its own
                del self.live[key]
                for n in range(files):
                    shm.remove(os.path.join(self.store.directory, f"{key}-{n}"))
        self.loop.post_object(Kind.RELEASE, {"keys": [key]})  # one for each PUT


def hold(fut: Any, handles: list) -> Any:
    """``fut``, holding the handles of the objects its task uses until it is done."""
    if handles:
        fut._objects = handles
        fut.add_done_callback(_let_go)
    return fut


def _let_go(fut: Any) -> None:
    fut._objects = None
