"""A supervisor's large objects: the copies the broker sent it, and which its task process keeps.

The broker owns the model of this cache (``broker/objects.py``): it attaches an
object's frames to the first task this worker gets that needs it (``ref_frames``),
and names the ones to drop when its budget overflows (``forget``), so the supervisor
keeps exactly what the broker believes it keeps.  Each task process keeps the objects
it was handed (``TaskProcess.objects``; ``refs.Objects`` in the process): a task gets
the frames of those its process lacks, and a persistent process is handed each object
once.  A fresh worker's task processes are new for every task, and get them each time.
A new HELLO (not a resumed session) starts with an empty cache, as the broker's model does.
"""

from __future__ import annotations

from .task_process import TaskProcess


class ObjectCache:
    """The objects the broker has sent this worker, by key: (frames, shared-memory frame indices)."""

    def __init__(self) -> None:
        self.kept: dict[str, tuple[list, list]] = {}

    def clear(self) -> None:
        self.kept.clear()

    def take(self, frames: list, options: dict) -> tuple[list, dict]:
        """A task from the broker: keep the objects it carries, drop those it says to forget;
        its own frames and options.  ValueError if it needs an object that is not here."""
        for key in options.get("forget") or ():
            self.kept.pop(key, None)
        attached = options.get("ref_frames", [])
        if not isinstance(attached, list):
            raise ValueError("bad ref_frames option")
        total = 0
        for entry in attached:
            if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                    or type(entry[1]) is not int or entry[1] < 1 or not isinstance(entry[2], list)):
                raise ValueError("bad ref_frames entry")
            total += entry[1]
        if total > len(frames) - 2:
            raise ValueError("its objects' frames do not add up")
        pos = len(frames) - total
        for key, count, shm_indices in attached:
            self.kept[key] = (frames[pos: pos + count], shm_indices)
            pos += count
        refs = options.get("refs", [])
        if not isinstance(refs, list) or not all(isinstance(k, str) for k in refs):
            raise ValueError("bad refs option")
        missing = [k for k in refs if k not in self.kept]
        if missing:
            raise ValueError(f"it needs object {missing[0][:12]}, which the broker never sent")
        blobs = options.get("blobs", [])
        if not isinstance(blobs, list) or not all(
                isinstance(b, list) and len(b) == 2 and type(b[0]) is int and b[1] in refs for b in blobs):
            raise ValueError("bad blobs option")
        rest = {k: v for k, v in options.items() if k not in ("ref_frames", "forget")}
        return frames[: len(frames) - total], rest

    def hand(self, frames: list, options: dict, proc: TaskProcess) -> tuple[list, dict | None]:
        """A task for ``proc``: its frames, with those of the objects the process lacks after them,
        and the options that say so (None for a task that uses none)."""
        refs = options.get("refs")
        if not refs:
            return frames, None
        gone = [k for k in proc.objects if k not in self.kept]
        proc.objects.difference_update(gone)
        extra, attached = [], []
        for key in refs:
            if key in proc.objects:
                continue
            kept, shm_indices = self.kept[key]
            extra.extend(kept)
            attached.append([key, len(kept), shm_indices])
            proc.objects.add(key)
        handed = {"refs": refs, "ref_frames": attached, "forget": gone}
        if "blobs" in options:
            handed["blobs"] = options["blobs"]
        return [*frames, *extra] if extra else frames, handed


def batch(tasks: list, cache: ObjectCache, proc: TaskProcess, header: tuple) -> tuple[tuple, list]:
    """The TASK message for ``tasks`` (``header``: its tuple for each, before its objects): the header
    and the frames, each task's followed by those of the objects ``proc`` lacks."""
    entries, frames = [], []
    for task, entry in zip(tasks, header[1]):
        task_frames, handed = cache.hand(task.frames, task.options, proc)
        entries.append((entry[0], len(task_frames), *entry[2:], handed))
        frames.extend(task_frames)
    return (header[0], entries), frames
