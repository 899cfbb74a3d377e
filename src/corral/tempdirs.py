"""Private directories that a process holds while it lives, and the sweep of those whose holder died.

An executor keeps its workers' bootstrap file in a private (0700) temporary
directory, and large buffers in a twin on tmpfs (``wire/shm.py``).  It removes
both when it shuts down, and its workers remove them if it dies first.  Nobody
removed them when the client was killed together with its workers (a process
group or a cgroup SIGKILLed: a batch system ending a job, the OOM killer), or in
the few milliseconds between making them and starting its first worker; on
tmpfs what stays holds memory until the machine restarts.

So each such directory holds a lock file (``HELD``) that its maker keeps locked
(``flock``) for as long as it lives; the kernel lets go of the lock when the
process ends, however it ends.  The first executor (or ``corral worker``) a
process starts sweeps: each ``corral-*`` directory of this user whose lock
nobody holds is removed, with the twins its lock file names.  A lock, not a
pid, says who lives: pids are reused, and a process in another PID namespace
that shares ``/tmp`` is not visible by its pid at all.  A directory without a
lock file (one being made, or another program's) is left alone.

::

    make("corral-")   mkdtemp -> .lock-XXXX created, flock'ed -> renamed to HELD
    note_twin(d, t)   t's path appended to HELD (removed with d)
    remove(d)         the twins, d, then the lock's descriptor closed
    sweep_once()      once a process: every unlocked HELD's directory and twins
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import threading

PREFIX = "corral-"
HELD = ".held"  # the lock file; its text: the paths of the directory's twins, a line each

_lock = threading.Lock()
_held: dict[str, int] = {}  # the directories this process holds -> their lock's descriptor
_swept = False


def make(prefix: str = PREFIX) -> str:
    """A new private (0700) directory in the temporary directory, held by this process until ``remove``."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        # Locked before it takes its name: a sweeper never finds the lock file unlocked while we live.
        fd, pending = tempfile.mkstemp(prefix=".lock-", dir=path)  # not inherited by children (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(pending, os.path.join(path, HELD))
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    with _lock:
        _held[path] = fd
    return path


def note_twin(path: str, twin: str) -> None:
    """Have ``twin`` (a directory elsewhere, named after ``path``) removed with ``path``, by a sweep too."""
    with _lock:
        fd = _held.get(path)
        if fd is not None:
            os.write(fd, os.fsencode(twin) + b"\n")


def remove(path: str) -> None:
    """Remove a directory this process made (``make``), its twins first, and let go of its lock."""
    with _lock:
        fd = _held.pop(path, None)
    if fd is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        for twin in _twins(fd, os.path.basename(path)):
            shutil.rmtree(twin, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


def sweep_once() -> list[str]:
    """``sweep`` the temporary directory, the first time a process calls this; the paths removed."""
    global _swept
    with _lock:
        if _swept:
            return []
        _swept = True
    return sweep(tempfile.gettempdir())


def sweep(parent: str) -> list[str]:
    """Remove the ``corral-*`` directories of this user in ``parent`` whose holder has died (their lock
    file is not locked), and their twins; the directories removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(parent, name)
        if not _ours(path):
            continue
        try:
            fd = os.open(os.path.join(path, HELD), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # no lock file: being made, or not made by this module
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its holder lives
            for twin in _twins(fd, name):
                shutil.rmtree(twin, ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _ours(path: str) -> bool:
    """Is ``path`` a directory (not a link to one) of this user?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _twins(fd: int, name: str) -> list[str]:
    """The twins a lock file names that are what they should be: directories of this user named
    after the held one (``NAME-*``), so that a damaged lock file cannot point a removal elsewhere."""
    chunks = []
    while chunk := os.pread(fd, 1 << 16, sum(map(len, chunks))):
        chunks.append(chunk)
    twins = []
    for line in b"".join(chunks).splitlines():
        twin = os.fsdecode(line)
        if os.path.isabs(twin) and os.path.basename(twin).startswith(f"{name}-") and _ours(twin):
            twins.append(twin)
    return twins
