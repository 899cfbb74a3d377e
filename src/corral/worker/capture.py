"""A task's output kept for it (``options(capture_output=True)``): the task process's side.

Why at the level of descriptors, in the task process: what a task writes reaches
descriptors 1 and 2 by many roads (``print``, ``sys.stdout.buffer``, C code's
``printf``, a subprocess it starts), and only redirecting those descriptors
catches them all.  Why in the task process: a task process on a lane answers the
broker itself, so no supervisor sees where one task ends and the next begins;
the task process does, and redirects the descriptors for exactly the tasks that
ask, so that every other task pays nothing.

Why files, not pipes: a task may write more than a pipe holds while nobody reads
it (the task process is busy running the task).  The two files have names the
supervisor chose (``prepare``: in the executor's private shared-memory directory,
or a private directory of its own) and which every task process it starts
inherits; a task process opens them for a captured task only, so that between
tasks it holds no descriptor but its own socket.  It removes them when it has
read them: files that exist after its process died belong to the task that was
running, and when a task process dies in the middle of a task (a segfault,
SIGKILL), the supervisor reads them (``crashed``) before it reports the task lost.

While a task is captured, ``sys.stdout`` and ``sys.stderr`` are unbuffered (as
with ``python -u``): what the task printed is in the file at once, even if the
process dies before it could flush.  A C library's own stdio buffer is out of
our reach: what C code had buffered and not written is lost in a hard crash.

A captured stream keeps its last ``CAPTURE_MAX`` bytes, after a line that says
how many were cut.  The file itself holds everything the task wrote until it
ends (on disk, in the temporary directory).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

CAPTURE_MAX = 1 << 20  # bytes kept of each captured stream: its tail
_STREAMS = ("stdout", "stderr")

_paths: tuple[str, str] | None = None  # the two capture files (stdout, stderr): named by prepare()
_own_dir: str | None = None  # the directory prepare() named for them (made by the first captured task)
_open: tuple[int, int] | None = None  # while a task is captured: the files, and copies of descriptors 1 and 2
_saved: tuple[int, int] | None = None
_unbuffered: tuple | None = None  # sys.stdout and sys.stderr while a task is captured
_before: tuple | None = None  # what sys.stdout and sys.stderr were before it


def prepare(directory: str | None) -> None:
    """Name the two capture files (in the supervisor, before it forks: its task processes inherit the
    names): in ``directory`` (the executor's private one), or in a private directory of our own,
    named now and made by the first task that is captured (a worker that never captures leaves
    nothing to clean up, even when it is killed)."""
    global _paths, _own_dir
    if directory is None:  # (os.urandom, as secrets.token_hex does, without the 3.5 ms import of secrets)
        directory = _own_dir = os.path.join(tempfile.gettempdir(), f"corral-{os.urandom(8).hex()}")
    base = os.path.join(directory, f"capture-{os.getpid()}")
    _paths = (f"{base}-stdout", f"{base}-stderr")


def inherit(paths: list[str]) -> None:
    """A spawned task process: the supervisor's capture files are these."""
    global _paths
    _paths = (paths[0], paths[1])


def names() -> list[str]:
    """The capture files' names, for a spawned task process's command line."""
    return list(_paths) if _paths is not None else []


def cleanup() -> None:
    """The supervisor leaves: the files (if a task left them) and its directory go."""
    if _paths is not None:
        for path in _paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if _own_dir is not None:
        with contextlib.suppress(OSError):
            os.rmdir(_own_dir)


def begin() -> None:
    """A captured task begins: its descriptors 1 and 2, and ``sys.stdout``/``stderr``, go to the files."""
    global _open, _saved, _unbuffered, _before
    from .output import flush_stdio

    flush_stdio()  # what earlier tasks printed goes where it went, not into this task's record
    if _paths is None:
        prepare(None)  # a task process without a supervisor's names (tests): its own
    _open = tuple(_create(path) for path in _paths)
    _saved = (os.dup(1), os.dup(2))
    os.dup2(_open[0], 1)
    os.dup2(_open[1], 2)
    if _unbuffered is None:
        _unbuffered = tuple(_unbuffered_stream(fd, old) for fd, old in ((1, sys.stdout), (2, sys.stderr)))
    _before = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _unbuffered


def _create(path: str) -> int:
    """Open a capture file, empty; the first time, make the supervisor's directory for it (0700)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.dirname(path), 0o700)
        return os.open(path, flags, 0o600)


def end() -> list[str]:
    """The captured task has ended: the descriptors go back; what it wrote, [stdout, stderr] (tails)."""
    global _before, _open, _saved
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - closed or replaced by the task: nothing more to take
            pass
    if _before is not None:
        sys.stdout, sys.stderr = _before
        _before = None
    os.dup2(_saved[0], 1)
    os.dup2(_saved[1], 2)
    texts = [tail(fd) for fd in _open]
    for fd in (*_open, *_saved):
        os.close(fd)
    for path in _paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
    _open = _saved = None
    return texts


def crashed() -> list[str] | None:
    """In the supervisor, after its task process died: what the task that ran was capturing
    ([stdout, stderr]), or None if it left no files; they are removed."""
    if _paths is None:
        return None
    texts = []
    for path in _paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            texts.append(None)
            continue
        try:
            texts.append(tail(fd))
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
    if texts == [None, None]:
        return None
    return [t or "" for t in texts]

def tail(fd: int, limit: int = CAPTURE_MAX) -> str:
    """The last ``limit`` bytes of a capture file as text, after a line that says what was cut."""
    size = os.fstat(fd).st_size
    start = max(0, size - limit)
    data = os.pread(fd, size - start, start)
    if not start:
        return data.decode("utf-8", "replace")
    newline = data.find(b"\n", 0, 4096)
    if newline >= 0:  # whole lines
        start += newline + 1
        data = data[newline + 1:]
    return f"[corral: {start} bytes cut]\n" + data.decode("utf-8", "replace")


def _unbuffered_stream(fd: int, like) -> io.TextIOWrapper:
    """A text stream on ``fd`` that writes each write at once (``python -u``'s)."""
    encoding = getattr(like, "encoding", None) or "utf-8"
    errors = getattr(like, "errors", None) or "backslashreplace"
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors, write_through=True)  # type: ignore[arg-type]


def unbuffered_stdio() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` unbuffered (a task process whose output is forwarded:
    what it printed is out at once, and survives a crash)."""
    sys.stdout = _unbuffered_stream(1, sys.stdout)
    sys.stderr = _unbuffered_stream(2, sys.stderr)
