"""Large objects kept once (``ObjectStore``, a part of ``Broker``), and each worker's cache of them.

A client's PUT gives the broker an object's frames under its key (the digest of its
content, ``refs.py``); the broker keeps one copy per key, counted per client that
holds it (a PUT each, a RELEASE each) and per task that needs it (SUBMIT option
``refs``)::

    PUT (key, frames) --> objects[key]: holders[client] + 1 (frames kept the first time)
    SUBMIT refs=[key] --> objects[key].tasks + 1, until the task has its outcome
    RELEASE [key]     --> holders[client] - 1; no holder and no task: dropped

The broker cannot see inside a worker, so it keeps the model of each worker's cache
(``WorkerState.objects``: key -> size, least recently used first, within the
``cache`` bytes the worker's HELLO announced).  A task dispatched to a worker that
lacks one of its objects carries its frames (``ref_frames``); when the model
overflows, the oldest objects that no task the worker holds needs are dropped from
it, and the task says so (``forget``).  A lane's model is its task process's, and
starts empty with each new process (LANE); a worker's with each HELLO.  An object
crosses each link once, however many tasks use it.  The broker never unpickles it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire import protocol
from ..wire.protocol import Status
from .records import ClientState, Task, WorkerState


@dataclass(slots=True)
class Stored:
    """An object the broker keeps: its frames, the clients that hold it, the tasks that need it."""

    frames: tuple
    shm: list  # indices of frames that name files of the client's shared-memory directory
    size: int
    holders: dict = field(default_factory=dict)  # client ident -> PUTs not released yet
    tasks: int = 0


class ObjectStore:
    """The object half of ``Broker`` (its ``objects``, and the counters STATUS reports)."""

    def put_objects(self, c: ClientState, body: dict, frames: list) -> None:
        """PUT: keep each object (once per key), held once more by ``c``."""
        for key, obj_frames, shm_indices in protocol.object_entries(body, frames):
            obj = self.objects.get(key)
            if obj is None:
                kept = self.compact(obj_frames)
                obj = self.objects[key] = Stored(kept, shm_indices, sum(len(f) for f in kept))
                self.object_bytes += obj.size
            obj.holders[c.ident] = obj.holders.get(c.ident, 0) + 1

    def release_objects(self, c: ClientState, keys: list) -> None:
        """RELEASE: ``c`` holds each of these once fewer."""
        for key in keys:
            obj = self.objects.get(key)
            if obj is None or c.ident not in obj.holders:
                continue
            obj.holders[c.ident] -= 1
            if obj.holders[c.ident] <= 0:
                del obj.holders[c.ident]
                self._unheld(key, obj)

    def objects_client_gone(self, c: ClientState) -> None:
        """A client has gone: it holds nothing any more."""
        for key, obj in list(self.objects.items()):
            if obj.holders.pop(c.ident, None) is not None:
                self._unheld(key, obj)

    def use_objects(self, c: ClientState, task: Task) -> bool:
        """A new task needs these objects until it has its outcome; False (it failed) if one
        of them is not held for its client."""
        keys = task.options["refs"]
        missing = [k for k in keys if k not in self.objects or c.ident not in self.objects[k].holders]
        if missing:
            task.options = {k: v for k, v in task.options.items() if k not in ("refs", "blobs")}
            self.finish(task, Status.FAILED, [], {
                "error": protocol.ERR_OBJECT, "key": missing[0],
                "message": f"the broker does not hold object {missing[0][:12]} for this client (it restarted, "
                           "or the object was released): put() it again"})
            return False
        for key in keys:
            self.objects[key].tasks += 1
        return True

    def unuse_objects(self, task: Task) -> None:
        """``task`` has its outcome: its objects are needed by one task fewer."""
        for key in task.options["refs"]:
            obj = self.objects.get(key)
            if obj is not None:
                obj.tasks -= 1
                self._unheld(key, obj)

    def _unheld(self, key: str, obj: Stored) -> None:
        if not obj.holders and obj.tasks <= 0:
            del self.objects[key]
            self.object_bytes -= obj.size

    def with_objects(self, w: WorkerState, frames: list | tuple, options: dict, needed: set) -> tuple[list, dict]:
        """A task's frames and options for worker ``w``: the objects it needs that ``w`` lacks
        (in ``w``'s model) follow its frames (``ref_frames``), and those ``w`` must drop to stay
        within its cache (``forget``: none that a task it holds, ``needed``, uses)."""
        model, extra, attached = w.objects, [], []
        for key in options["refs"]:
            if key in model:
                model.move_to_end(key)
                continue
            obj = self.objects[key]
            model[key] = obj.size
            w.object_bytes += obj.size
            extra.extend(obj.frames)
            attached.append([key, len(obj.frames), obj.shm])
            self.object_bytes_sent += obj.size
        forget = []
        while w.object_bytes > w.cache_size:
            victim = next((k for k in model if k not in needed), None)
            if victim is None:
                break  # over budget while its tasks need them all: the oldest goes once they are done
            w.object_bytes -= model.pop(victim)
            forget.append(victim)
        options = {**options, "ref_frames": attached}
        if forget:
            options["forget"] = forget
        return [*frames, *extra], options

    def objects_needed(self, w: WorkerState) -> set:
        """The keys of the objects that the tasks ``w`` holds use."""
        needed: set = set()
        for gid in w.assigned:
            task = self.tasks.get(gid)
            if task is not None:
                needed.update(task.options.get("refs", ()))
        return needed

    def objects_status(self) -> dict:
        """STATUS_REPLY's ``objects``: how many the broker keeps, their bytes, and the bytes of
        objects it has sent to workers."""
        return {"stored": len(self.objects), "bytes": self.object_bytes, "sent_bytes": self.object_bytes_sent}


def check_refs(options: dict, nframes: int) -> None:
    """A SUBMIT entry's ``refs`` and ``blobs`` as the protocol says; ProtocolError if not (a client
    never names ``ref_frames`` or ``forget``, which are the broker's to say)."""
    if "ref_frames" in options or "forget" in options:
        raise protocol.ProtocolError("ref_frames and forget are options of TASKS, not of SUBMIT")
    refs = options.get("refs", [])
    if not isinstance(refs, list) or not refs or len(refs) > protocol.MAX_REFS or len(set(refs)) != len(refs) \
            or not all(protocol.valid_key(k) for k in refs):
        raise protocol.ProtocolError("bad refs option")
    blobs = options.get("blobs", [])
    if not isinstance(blobs, list) or not all(
            isinstance(b, list) and len(b) == 2 and type(b[0]) is int and 2 <= b[0] < nframes and b[1] in refs
            for b in blobs):
        raise protocol.ProtocolError("bad blobs option")
