"""Large buffers through shared memory, between an executor and its own local workers.

A 64 MiB array sent as a ZeroMQ frame is copied eight times on its way to a
local task process and back: into and out of the kernel at every socket.
When the executor starts its workers itself, they share its machine, so a
buffer of at least ``SHM_MIN_BYTES`` goes another way::

    client: pickle (protocol 5) --> out-of-band buffer --> write to a file in
            a private tmpfs directory (one copy) --> the frame carries its name
    task process: map the file copy-on-write (no copy) --> the unpickler gets
            the mapping as the buffer: a writable array, no copy
    result: the same the other way; the client maps it and unlinks the file

The frames that name a file are listed in the task's options (``shm``) or the
result's meta, so no other frame is ever taken for a name.  A buffer that
cannot be written (the tmpfs is full) simply travels as a frame.  The
directory is the executor's: it removes it at shutdown, and its workers
remove it if the client dies first.  Input files are removed when their
future is done (a retried task maps its input again); result files as soon
as the client has mapped them.
"""

from __future__ import annotations

import mmap
import os
import tempfile

from ..tuning import SHM_MIN_BYTES

_SHM_ROOT = "/dev/shm"
ROOT_VARIABLE = "CORRAL_SHM_DIR"  # where to make the directories instead (a tmpfs); empty: no shared memory


def root() -> str | None:
    """Where executors' shared-memory directories go: ``/dev/shm``, or the directory
    ``$CORRAL_SHM_DIR`` names; None where there is none we may write to."""
    where = os.environ.get(ROOT_VARIABLE, _SHM_ROOT)
    if not where or not (os.path.isdir(where) and os.access(where, os.W_OK)):
        return None
    return where


def make_dir(name: str) -> str | None:
    """A private (0700) directory ``NAME-*`` for this executor's buffers, on tmpfs if there is one
    (``root()``)."""
    root_dir = root()
    if root_dir is None:
        return None
    try:
        return tempfile.mkdtemp(prefix=f"{name}-", dir=root_dir)
    except OSError:
        return None


class Store:
    """Writes large buffers to files in ``directory`` and maps the files it is sent."""

    def __init__(self, directory: str):
        self.directory = directory

    def offload(self, frames: list, first: int) -> tuple[list, list[int], list[str]]:
        """Replace frames from index ``first`` on that are large by file names.

        Returns the new frames, the indices that are names now, and the files' paths.
        """
        indices, paths = [], []
        out = list(frames)
        for i in range(first, len(frames)):
            view = memoryview(frames[i])
            if view.nbytes < SHM_MIN_BYTES:
                continue
            path = self.write(view)
            if path is None:
                continue  # no room: it travels as a frame
            out[i] = os.path.basename(path).encode()
            indices.append(i)
            paths.append(path)
        return out, indices, paths

    def write(self, view: memoryview) -> str | None:
        """A buffer into a new file of the directory; its name."""
        try:
            fd, path = tempfile.mkstemp(dir=self.directory)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                view = view.cast("B")
                pos = 0
                while pos < view.nbytes:
                    pos += f.write(view[pos:])
            return path
        except OSError:
            remove(path)
            return None

    def resolve(self, frames: list, indices, unlink: bool) -> list:
        """Replace the named frames by their files' mappings (and remove the files if ``unlink``)."""
        if not indices:
            return frames
        out = list(frames)
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(frames):
                raise ValueError(f"bad shared-memory frame index {i!r:.40}")
            name = bytes(frames[i]).decode("ascii", "replace")
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"bad shared-memory file name {name!r:.80}")
            path = os.path.join(self.directory, name)
            out[i] = map_file(path)
            if unlink:
                remove(path)
        return out


def map_file(path: str) -> memoryview:
    """A writable copy-on-write mapping of the whole file: no copy until someone writes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return memoryview(bytearray())
        # No MAP_POPULATE: on a private writable mapping it would copy every page at once.
        mapping = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return memoryview(mapping)


def remove(path: str) -> None:
    """Remove a file, if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass
