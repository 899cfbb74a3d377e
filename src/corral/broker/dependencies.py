"""Tasks that wait for other tasks (``Dependencies``, a part of ``Broker``).

A client names what a task waits for in its SUBMIT options: ``deps``, the tasks
whose results it takes as arguments, in the order of its placeholders, and
``after``, tasks it only runs after.  Such a task is not queued; it waits::

    SUBMIT (deps, after) --> waiting (task.waiting = how many have not succeeded)
    a dependency succeeds --> its result is held (Held) for its dependents; waiting - 1;
                              at 0 the task is queued like any other
    a dependency fails, is cancelled or killed --> the dependents fail (ERR_DEPENDENCY),
                              and theirs in turn
    dispatch --> TASKS carries the task's frames, then each dependency's result frames
                 ("dep_frames": their counts), so the result never goes through the client

A held result is released when the last task that takes it has its outcome (a
retried dependent needs it again).  A dependency the broker no longer knows has
finished, and its result went to the client: the task fails at once with
ERR_DEPENDENCY_GONE, and the client sends it again with that result inline (a
``deps`` entry ``[nframes]``, its frames after the task's own).  The broker never
unpickles any of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..wire import protocol, shm
from ..wire.protocol import Status
from .records import ClientState, Task


@dataclass(slots=True)
class Held:
    """A finished task's result, kept while tasks that take it as an argument need it."""

    frames: tuple
    users: int  # dependents still to finish that take it


class Dependencies:
    """The dependency half of ``Broker``: waiting tasks, held results, failures passed on."""

    def take_inline(self, task: Task) -> tuple[list, list]:
        """A new task's ``deps`` and ``after`` options, taken off its options, for ``wait_for``:
        in ``deps``, a result sent inline is its frames, taken off the task's."""
        options = task.options
        data = options.get("deps") or ()
        task.options = {k: v for k, v in options.items() if k not in ("deps", "after")}
        inline = sum(d[0] for d in data if type(d) is list)
        frames, tail, pos, deps = task.frames, (), 0, []
        if inline:
            task.frames, tail = frames[: len(frames) - inline], frames[len(frames) - inline:]
        for d in data:
            if type(d) is list:
                deps.append(tuple(tail[pos: pos + d[0]]))
                pos += d[0]
            else:
                deps.append(d)
        return deps, options.get("after") or []

    def wait_for(self, c: ClientState, task: Task, data: list, after: list) -> bool:
        """Link a new task to what it waits for (``take_inline``'s); True if it can be queued now.
        A dependency that has finished already fails the task with ERR_DEPENDENCY_GONE (the
        client sends it again with that result inline)."""
        deps, gone = [], []
        for d in data:
            if type(d) is tuple:
                deps.append(d)
                continue
            gid = c.tasks.get(d)
            if gid is None or gid == task.gid:
                gone.append(d)
            deps.append(gid)
        waits = {g for g in deps if type(g) is int}
        for cid in after:
            gid = c.tasks.get(cid)
            if gid is None or gid == task.gid:
                gone.append(cid)
            else:
                waits.add(gid)
        if gone:
            self.finish(task, Status.FAILED, [], {
                "error": protocol.ERR_DEPENDENCY_GONE, "deps": gone,
                "message": "a task this one depends on had finished when it reached the broker"})
            return False
        task.deps = tuple(deps) if data else None
        for gid in waits:
            dep = self.tasks[gid]
            if dep.dependents is None:
                dep.dependents = []
            dep.dependents.append(task.gid)
        task.waiting = len(waits)
        if waits:
            self.waiting_tasks += 1
        return not waits

    def dependency_ended(self, task: Task, status: Status, payload: list, meta: dict, how: str) -> None:
        """``task`` has its outcome (``how``: "done", "failed", "cancelled", "killed"): its
        dependents run (taking its result) or fail, theirs in turn."""
        if how == "done":
            self._succeeded(task, payload, meta)
            return
        work = deque([(task, how)])
        while work:
            dep, why = work.popleft()
            for gid in dep.dependents or ():
                t = self.tasks.get(gid)
                if t is None:
                    continue
                verb = "raised an exception" if why == "failed" else f"was {why}"
                self.finish(t, Status.FAILED, [], {
                    "error": protocol.ERR_DEPENDENCY, "dep": dep.cid, "how": why,
                    "message": f"a task it depends on {verb}, so it did not run"}, cascade=False)
                if t.dependents:
                    work.append((t, "failed"))

    def _succeeded(self, task: Task, payload: list, meta: dict) -> None:
        """Hold ``task``'s result for the dependents that take it; queue those now ready."""
        users = 0
        for gid in task.dependents:
            t = self.tasks.get(gid)
            if t is None:
                continue
            if t.deps is not None and task.gid in t.deps:
                users += 1
            t.waiting -= 1
            if t.waiting == 0:
                self.waiting_tasks -= 1
                self.queue.append(t)
        if users:
            offloaded = meta.get("shm") if isinstance(meta, dict) else None
            if offloaded and self.pool is not None and self.pool.shm:
                # An embedded worker's large result is in files that the client removes once it
                # has mapped them: map them here too, so that the dependents' copy outlives that.
                payload = shm.Store(self.pool.shm).resolve(payload, offloaded, unlink=False)
            self.held[task.gid] = Held(tuple(payload), users)

    def release_results(self, task: Task) -> None:
        """``task`` has its outcome: the results it took are held for one task fewer."""
        for gid in {d for d in task.deps if type(d) is int}:
            held = self.held.get(gid)
            if held is not None:
                held.users -= 1
                if held.users <= 0:
                    del self.held[gid]

    def with_results(self, task: Task, frames: tuple | list) -> tuple[list, dict]:
        """A dependent task's frames and options for its worker: its own ``frames``, then those
        of each result it takes ("dep_frames": how many each)."""
        frames, counts = list(frames), []
        for d in task.deps:
            result = d if type(d) is tuple else self.held[d].frames
            frames.extend(result)
            counts.append(len(result))
        return frames, {**task.options, "dep_frames": counts}


def check_dependencies(options: dict, nframes: int) -> None:
    """A SUBMIT entry's ``deps`` and ``after`` as the protocol says they must be; ProtocolError if not."""
    data, after = options.get("deps", []), options.get("after", [])
    for name, value in (("deps", data), ("after", after)):
        if not isinstance(value, list) or len(value) > protocol.MAX_DEPENDENCIES:
            raise protocol.ProtocolError(f"bad {name} option")
    inline = 0
    for d in data:
        if type(d) is list and len(d) == 1 and type(d[0]) is int and d[0] >= 1:
            inline += d[0]
        elif type(d) is not int or d < 0:
            raise protocol.ProtocolError(f"bad deps entry {d!r:.40}")
    if any(type(a) is not int or a < 0 for a in after):
        raise protocol.ProtocolError("bad after option")
    if inline > nframes - 2:
        raise protocol.ProtocolError("deps name more inline frames than the task has")
