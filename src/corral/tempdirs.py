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
nobody holds is removed, with its twins (those its lock file names, and those
named after it, ``NAME-*``, in the roots the caller gives).  A lock, not a pid,
says who lives: pids are reused, and a process in another PID namespace that
shares ``/tmp`` is not visible by its pid at all.

What is left alone: a directory without a lock file (one being made, another
program's, or one made where ``flock`` is not supported, which is then never
locked); another user's, or one not private (0700); and one whose lock file
names another host, since a file system shared between machines may keep its
locks on each machine alone.

::

    make("corral-")   mkdtemp -> .lock-XXXX: "holder HOST", flock'ed -> renamed to HELD
    note_twin(d, t)   t's path appended to HELD (removed with d)
    remove(d)         the lock let go, then the twins and d removed
    sweep_once(roots) once a process: every unlocked HELD's directory and twins
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import socket
import stat
import tempfile
import threading

PREFIX = "corral-"
HELD = ".held"  # the lock file: "holder HOST", then the paths of the directory's twins, a line each
_NO_FLOCK = {errno.EOPNOTSUPP, errno.ENOLCK, errno.ENOSYS, errno.EINVAL}  # (NFS "nolock", Lustre "noflock")

_lock = threading.Lock()
_held: dict[str, tuple[int | None, list[str]]] = {}  # the directories this process made -> (their lock's
# descriptor, if locked; their twins)
_swept = False


def _holder() -> bytes:
    """This machine, as a lock file's first line names it."""
    host = socket.gethostname().encode(errors="replace").replace(b" ", b"_").replace(b"\n", b"_") or b"-"
    return b"holder " + host


def make(prefix: str = PREFIX) -> str:
    """A new private (0700) directory in the temporary directory, held by this process until ``remove``."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        fd = _hold(path)
    except BaseException:
        try:
            os.rmdir(path)  # empty again; and rmtree needs descriptors, which may be what ran out
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
        raise
    with _lock:
        _held[path] = (fd, [])
    return path


def _hold(path: str) -> int | None:
    """Lock a new lock file in ``path`` and give it its name; its descriptor.  None where this file
    system has no ``flock``: the directory then has no lock file, and no sweep ever takes it."""
    # Locked before it takes its name: a sweeper never finds the lock file unlocked while we live.
    fd, pending = tempfile.mkstemp(prefix=".lock-", dir=path)  # (not inherited across exec: PEP 446)
    try:
        os.write(fd, _holder() + b"\n")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(pending, os.path.join(path, HELD))
    except BaseException as exc:
        os.close(fd)
        os.unlink(pending)
        if isinstance(exc, OSError) and exc.errno in _NO_FLOCK:
            return None
        raise
    return fd


def note_twin(path: str, twin: str) -> None:
    """Have ``twin`` (a directory elsewhere, named after ``path``) removed with ``path``, by a sweep too."""
    with _lock:
        fd, twins = _held[path]
        twins.append(twin)  # (first: ``remove`` takes it even if the lock file cannot say it)
        if fd is not None:
            os.write(fd, os.fsencode(twin) + b"\n")


def remove(path: str) -> None:
    """Remove a directory this process made (``make``), its noted twins first, and let go of its lock
    (first: removing takes descriptors, which may be what ran out; a sweep may then remove it too)."""
    with _lock:
        fd, twins = _held.pop(path, (None, []))
    if fd is not None:
        os.close(fd)
    for twin in twins:
        shutil.rmtree(twin, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)


def sweep_once(twin_roots: tuple[str | None, ...] = ()) -> list[str]:
    """``sweep`` the temporary directory, the first time a process calls this; the paths removed."""
    global _swept
    with _lock:
        if _swept:
            return []
        _swept = True
    return sweep(tempfile.gettempdir(), twin_roots)


def sweep(parent: str, twin_roots: tuple[str | None, ...] = ()) -> list[str]:
    """Remove the ``corral-*`` directories of this user in ``parent`` whose holder on this host has died
    (their lock file is not locked), and their twins: those the lock file names, and those named after
    them in ``twin_roots``.  The directories removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    holder = _holder()
    for name in names:
        path = os.path.join(parent, name)
        if name.startswith(PREFIX) and _private(path) and _dead(path, holder, twin_roots):
            removed.append(path)
    return removed


def _dead(path: str, holder: bytes, twin_roots: tuple[str | None, ...]) -> bool:
    """If the holder of ``path`` has died, remove it and its twins: True."""
    try:  # (not blocking on a FIFO, nor following a link, in its place)
        fd = os.open(os.path.join(path, HELD), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: being made, not made by this module, or never locked
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if os.pread(fd, 512, 0).split(b"\n", 1)[0] != holder:
            return False  # another host's (a shared file system may lock on each host alone)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its holder lives
        name = os.path.basename(path)
        twins = set(_twins(fd, name))
        for root in filter(None, twin_roots):
            twins.update(t for t in glob.glob(os.path.join(glob.escape(root), glob.escape(name) + "-*"))
                         if _private(t))
        for twin in twins:
            shutil.rmtree(twin, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _private(path: str) -> bool:
    """Is ``path`` a private (0700) directory of this user, not a link to one?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _twins(fd: int, name: str) -> list[str]:
    """The twins a lock file names that are what they should be: private directories of this user
    named after the held one (``NAME-*``), so that a damaged lock file cannot point a removal elsewhere."""
    chunks: list[bytes] = []
    while chunk := os.pread(fd, 1 << 16, sum(map(len, chunks))):
        chunks.append(chunk)
    twins = []
    for line in b"".join(chunks).splitlines()[1:]:
        twin = os.fsdecode(line)
        if os.path.isabs(twin) and os.path.basename(twin).startswith(f"{name}-") and _private(twin):
            twins.append(twin)
    return twins


def _not_in_a_child() -> None:
    """A forked child holds none of its parent's directories: it lets go of its copies of the locks'
    descriptors (the parent's locks stay), so that a client's directory can be swept once the client
    died, whatever children it forked live on."""
    global _lock
    _lock = threading.Lock()
    for fd, _ in _held.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _held.clear()


os.register_at_fork(after_in_child=_not_in_a_child)
