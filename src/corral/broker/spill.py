"""Queued payloads past a memory budget go to disk (``Spill``), so a deep queue cannot exhaust memory.

The broker holds every queued task's frames until a worker takes it.  100,000
queued tasks of 1 MiB each would be 100 GiB of memory; with a budget, the
broker counts the payload bytes of its tasks that may spill and, once a loop turn leaves
more than the budget, writes the payload of the *newest* queued tasks (the
last to be dispatched) to one file each and keeps only a small handle
(``Spilled``).  A spilled task's frames are read back when they are sent to a
worker (``outgoing``: each dispatch, a retry's included) and never kept in
memory again; its file goes when the task ends, and the directory when the
broker closes.

Writing goes at the disk's pace, so it is spread over loop turns: the broker
stops reading messages once its tasks hold ``BATCH`` over the budget (ZeroMQ
then holds the senders back), and a turn writes at most ``TURN`` bytes and
removes at most ``UNLINKS`` files before the loop goes on with its other work.

What stays in memory: each task's record and its first frame when it is a
pickled function shared by many tasks (a map's), and tasks whose payload is
under ``MIN_SPILL`` bytes (a file would cost more than it saves): those are not
counted, and their end costs the broker nothing here.  A task
already sent to a worker is not spilled: its frames are kept for a retry, and
such tasks are few (what the workers hold).

The directory is private (0700): under the executor's own temporary directory
for an embedded broker, else ``corral-spill-HOST-PID-*`` in ``$TMPDIR`` or the
directory given.  A broker killed with SIGKILL leaves its directory behind; a
broker that starts removes those of dead brokers of the same host and user
(``remove_stale``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable

from .records import Task

MIN_SPILL = 4096  # payload bytes below which a task stays in memory: its file would cost more than it saves
DEFAULT_FRACTION = 4  # the default budget: a quarter of the memory this machine (or cgroup) gives us
FULL_BACKOFF = 1.0  # seconds without spilling after a write failed (the disk is full)
BATCH = 16 << 20  # a loop turn reads on until its tasks hold this much over the budget, then spills
TURN = 32 << 20  # bytes one loop turn writes at most (the loop turns again at once while more is due)
UNLINKS = 1000  # spill files one loop turn removes at most (a departed client's 100,000 take seconds)
TRIM_EVERY = 32 << 20  # bytes spilled or read back between two returns of freed memory to the system
_PREFIX = "corral-spill-"


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library)."""
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_trim()


def _trim() -> None:
    """Give the memory of freed payloads back to the system.  glibc keeps freed blocks of a
    megabyte in its heaps (ZeroMQ's I/O thread allocates them in an arena of its own, the
    broker frees them), so without this the broker's RSS would stay at its peak although it
    holds only the budget; a trim costs about a millisecond."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class Spilled:
    """A spilled task's frames: the first one if it stays in memory, and the sizes of those in its file."""

    __slots__ = ("head", "sizes")

    def __init__(self, head: bytes | None, sizes: tuple[int, ...]):
        self.head = head
        self.sizes = sizes

    def __len__(self) -> int:  # how many frames the task has, as for a tuple of them
        return len(self.sizes) + (self.head is not None)


def weight(frames: tuple) -> int:
    """The payload bytes a task's frames hold in memory: all of them but a first frame that is
    ``bytes`` (a pickled function, stored once for the many tasks of a map: ``TaskTable.compact``)."""
    if len(frames) == 2 and type(frames[0]) is bytes:
        return len(frames[1])  # most tasks: a function shared or small, and one pickle of arguments
    size = sum(map(len, frames))
    if frames and type(frames[0]) is bytes:
        size -= len(frames[0])
    return size


def default_budget() -> int:
    """A quarter of this machine's memory, or of the cgroup's limit if that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return max(MIN_SPILL, total // DEFAULT_FRACTION)


def remove_stale(parent: str) -> list[str]:
    """Remove the spill directories in ``parent`` that brokers of this host and user left when they
    died (a pid that no longer runs); the paths removed.  A pid that runs again (reused) keeps
    its directory: only what is surely dead goes."""
    pattern = re.compile(re.escape(f"{_PREFIX}{_host()}-") + r"(\d+)-")
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid == os.getuid() and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class Spill:
    """The payload bytes the broker's tasks hold, and the files of those spilled past ``budget``.

    ``private``: ``parent`` is the broker's own private directory (an embedded broker's); the
    files go in its ``spill`` folder.  Otherwise a ``corral-spill-HOST-PID-*`` directory is made
    in ``parent`` (default ``$TMPDIR``) when the first task spills, and stale ones are removed at
    ``start``.
    """

    def __init__(self, budget: int | None = None, parent: str | None = None, *, private: bool = False,
                 log: Callable[[str], None] | None = None):
        self.budget = default_budget() if budget is None else budget
        self.parent = parent if parent is not None else tempfile.gettempdir()
        self.private = private
        self.log = log or (lambda message: None)
        self.directory: str | None = None  # made at the first spill
        self.held = 0  # payload bytes in memory of the tasks that may spill (MIN_SPILL or more each)
        self.queued: dict[int, Task] = {}  # tasks in memory that may spill, oldest first
        self.files = 0  # tasks spilled, whose files exist
        self.written = 0  # bytes written, all told
        self.full_until = 0.0  # a write failed: try again after this (monotonic)
        self.churn = 0  # bytes spilled or read back since memory was last returned to the system
        self.ended: deque[int] = deque()  # the tasks whose files are to be removed, a batch each turn
        # ``due()``, kept up to date where what it depends on changes: the broker reads it every loop turn.
        self.work = False

    def start(self) -> None:
        """The broker starts: remove what brokers that died left in a shared ``parent``."""
        if not self.private:
            for path in remove_stale(self.parent):
                self.log(f"removed the spill directory {path} of a broker that died")

    def add(self, task: Task) -> None:
        """A task was queued (SUBMIT): count its payload if it may spill (its ``more.weight``,
        which ``release`` uncounts)."""
        size = weight(task.frames)
        if size >= MIN_SPILL:
            self.held += size
            self.queued[task.gid] = task
            task.extra().weight = size
            if self.held > self.budget:
                self.work = True

    def full(self) -> bool:
        """Should the broker read no more this turn: its tasks hold a batch over the budget, which may
        spill now?"""
        return self.held > self.budget + BATCH and bool(self.queued) and time.monotonic() >= self.full_until

    def pending(self) -> bool:
        """Is there payload over the budget that may spill now, or files to remove (the loop should
        not sleep)?"""
        return bool(self.ended) or (self.held > self.budget and bool(self.queued)
                                    and time.monotonic() >= self.full_until)

    def due(self) -> bool:
        """Is there work for ``turn``: payload over the budget, files to remove, freed memory to return?
        (Also kept in ``work``, which costs its reader no call.)"""
        return self.held > self.budget or bool(self.ended) or self.churn >= TRIM_EVERY

    def turn(self) -> int:
        """Spill the newest queued tasks until the tasks hold no more than the budget, or ``TURN``
        bytes are written (the loop has other work: it comes back at once); the bytes written.
        Then, every ``TRIM_EVERY`` bytes, hand the memory freed back to the system (``_trim``)."""
        if self.ended:
            self._unlink(UNLINKS)
        written = 0
        while (self.held > self.budget and self.queued and written < TURN
               and time.monotonic() >= self.full_until):
            gid, task = self.queued.popitem()
            if task.worker is not None or isinstance(task.frames, Spilled):
                continue
            size = task.more.weight
            try:
                task.frames = self._write(gid, task.frames)
            except OSError as exc:
                self.queued[gid] = task
                self.full_until = time.monotonic() + FULL_BACKOFF
                self.log(f"could not spill queued tasks to {self.directory or self.parent}: {exc}; they stay in "
                         f"memory (trying again in {FULL_BACKOFF:g} s)")
                break
            self.held -= size
            self.files += 1
            written += size
        self.written += written
        self.churn += written
        if self.churn >= TRIM_EVERY:
            self.churn = 0
            _trim()
        self.work = self.due()
        return written

    def outgoing(self, task: Task) -> tuple:
        """The frames to send a worker for ``task`` (read back if spilled; OSError if that fails).
        A task sent to a worker does not spill: its frames stay for a retry."""
        self.queued.pop(task.gid, None)
        spilled = task.frames
        if not isinstance(spilled, Spilled):
            return spilled
        with open(self._path(task.gid), "rb") as f:
            frames = [f.read(size) for size in spilled.sizes]
        self.churn += sum(spilled.sizes)
        self.work = self.work or self.churn >= TRIM_EVERY
        if [len(frame) for frame in frames] != list(spilled.sizes):
            raise OSError(f"{self._path(task.gid)} is shorter than the {sum(spilled.sizes)} bytes written")
        return tuple(frames) if spilled.head is None else (spilled.head, *frames)

    def release(self, task: Task) -> None:
        """A task ended (or was dropped): forget its bytes, remove its file.  (A task whose payload
        was not counted has nothing here: the broker need not call this for it.)"""
        more = task.more
        if more is None or not more.weight:
            return
        self.queued.pop(task.gid, None)
        if isinstance(task.frames, Spilled):
            self.files -= 1
            self.ended.append(task.gid)  # removed at the end of this loop turn (``turn``)
            self.work = True
        else:
            self.held -= more.weight
        task.frames = ()
        more.weight = 0

    def close(self) -> None:
        """Remove the spill directory and everything in it (the broker closes)."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        self.files = 0
        self.ended.clear()
        self.queued.clear()

    # -- the files -------------------------------------------------------------------

    def _path(self, gid: int) -> str:
        return os.path.join(self.directory, str(gid))

    def _unlink(self, most: int) -> None:
        """Remove the files of up to ``most`` tasks that ended, oldest first."""
        for _ in range(min(most, len(self.ended))):
            gid = self.ended.popleft()
            try:
                os.unlink(self._path(gid))
            except OSError:
                pass

    def _write(self, gid: int, frames: tuple) -> Spilled:
        if self.directory is None:
            self.directory = self._make_directory()
        head = frames[0] if frames and type(frames[0]) is bytes else None
        rest = frames[1:] if head is not None else frames
        path = self._path(gid)
        try:
            with open(path, "wb") as f:
                for frame in rest:
                    f.write(getattr(frame, "buffer", frame))  # a zmq.Frame, or bytes-like (a joined chunk run)
        except OSError:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return Spilled(head, tuple(len(frame) for frame in rest))

    def _make_directory(self) -> str:
        if self.private:
            path = os.path.join(self.parent, "spill")
            os.makedirs(path, mode=0o700, exist_ok=True)
            return path
        return tempfile.mkdtemp(prefix=f"{_PREFIX}{_host()}-{os.getpid()}-", dir=self.parent)
