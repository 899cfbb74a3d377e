"""An executor's status, reachable from outside it: ``Executor(status_file=True or PATH)``.

The executor's own broker answers STATUS (and nothing else) on an ipc:// socket in a
private 0700 directory (``broker/statusview.py``), and a small status file (mode 0600)
says where: ``corral status FILE`` reads it.  Only this user can reach the socket, as
only this user can reach the directory; nothing listens on TCP.  The socket, the
directory and the file go at shutdown.

The file is JSON: ``{"corral_status": 1, "address": "ipc://...", "pid": PID}``.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..broker.broker import Broker
from ..errors import CredentialsError

FORMAT = 1
KEY = "corral_status"


@dataclass
class StatusFile:
    """Where an executor's status is: the file's ``path``, the socket's ``address``, and what to remove."""

    path: str
    address: str
    own_dir: str | None  # the directory made for the socket (None: the executor's private one, removed with it)

    def remove(self) -> None:
        """Remove the file and the socket's directory (at shutdown)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.own_dir is not None:
            import shutil

            shutil.rmtree(self.own_dir, ignore_errors=True)


def check_option(value: object) -> bool | str | None:
    """``status_file``: None or False (none), True (one in a private directory), or a path."""
    if value is None or value is False or value is True:
        return value or None
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        path = os.path.abspath(os.path.expanduser(os.fspath(value)))
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError(f"status_file={value!r}: no such directory {os.path.dirname(path)!r}")
        if os.path.isdir(path):
            raise ValueError(f"status_file={value!r} is a directory: give a file's path, or True")
        return path
    raise ValueError(f"status_file must be True, a file's path or None, not {value!r}")


def expose(broker: Broker, where: bool | str, private_dir: str | None) -> StatusFile:
    """Have ``broker`` answer STATUS on an ipc:// socket in ``private_dir`` (0700; one is made if None),
    and write the status file at ``where`` (True: in that directory)."""
    own_dir = None
    if private_dir is None:
        private_dir = own_dir = tempfile.mkdtemp(prefix="corral-status-")  # 0700
    address = f"ipc://{os.path.join(private_dir, 'status.sock')}"
    path = os.path.join(private_dir, "status.json") if where is True else str(where)
    try:
        broker.open_status_socket(address)
        _write(path, {KEY: FORMAT, "address": address, "pid": os.getpid()})
    except BaseException:
        broker.close_status_socket()
        if own_dir is not None:
            import shutil

            shutil.rmtree(own_dir, ignore_errors=True)
        raise
    return StatusFile(path, address, own_dir)


def _write(path: str, body: dict) -> None:
    """The file, mode 0600, replaced atomically."""
    fd, scratch = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.write("\n")
        os.replace(scratch, path)
    except BaseException:
        os.unlink(scratch)
        raise


def read(path: str | os.PathLike) -> str | None:
    """The status socket's address if ``path`` is a status file (None if it is some other file, such
    as a connection file); CredentialsError if it cannot be trusted (another user's, or readable by others)."""
    path = Path(os.path.expanduser(os.fspath(path)))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        raw = f.read(1 << 16) if stat.S_ISREG(info.st_mode) else b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get(KEY) != FORMAT:
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise CredentialsError(f"the status file {path} belongs to another user or is readable by others: "
                               "an executor writes its own with mode 0600")
    address = body.get("address")
    if not isinstance(address, str) or not address.startswith("ipc://"):
        raise CredentialsError(f"the status file {path} names no ipc:// address")
    return address
