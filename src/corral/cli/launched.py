"""``corral worker -``: a worker a launcher started, which reads what it needs on standard input.

A launcher (``launchers/``) runs ``corral worker - ...`` on a node and writes the launch
document (``launchers/document.py``) to its standard input: the broker's address and key,
this worker's own key pair, the client's import path and initializer.  The secret key
stays off every command line, where ``ps`` shows it to every user of the node: the
worker processes inherit it in their environment (``CORRAL_BROKER_KEY``,
``CORRAL_PUBLIC_KEY``, ``CORRAL_SECRET_KEY``, which ``security/credentials.py`` reads
for a ``tcp://`` address), and the import path and initializer reach them in a
bootstrap file, the executor's format, in ``corral worker``'s private directory.

With ``lifeline`` the launcher keeps the standard input open for as long as it wants
the worker (an SSH connection): its end means leave.
"""

from __future__ import annotations

import os
import pickle
import select
import sys
import time

from ..launchers import document
from ..security.credentials import ENV_FILE, ENV_KEYS, Target


def read_document(fd: int = 0) -> document.LaunchDocument:
    """The launch document: the first line on ``fd``.  Read with os.read, never a buffered file,
    whose buffer could hold the lifeline's end out of ``closed``'s sight; what follows the line
    on the lifeline means nothing.  CredentialsError says what is wrong."""
    raw = bytearray()
    while b"\n" not in raw and len(raw) <= document.MAX_DOCUMENT:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        raw += chunk
    return document.parse(bytes(raw).split(b"\n", 1)[0] + b"\n" if b"\n" in raw else bytes(raw))


def target(doc: document.LaunchDocument) -> Target:
    """The broker the document names, as ``security/credentials.resolve`` would give it."""
    creds = doc.credentials
    if not creds.address.startswith("tcp://"):
        return Target(creds.address, None, creds.name)
    return Target(creds.address, (creds.broker_key, creds.public, creds.secret), creds.name)


def worker_env(doc: document.LaunchDocument) -> dict[str, str]:
    """The environment our worker processes start with: ours, with the document's keys (and no
    connection file of ours, which would take precedence over them)."""
    env = {name: value for name, value in os.environ.items() if name != ENV_FILE}
    creds = doc.credentials
    for name, key in zip(ENV_KEYS, (creds.broker_key, creds.public, creds.secret)):
        env[name] = key.decode()
    return env


def write_bootstrap(doc: document.LaunchDocument, directory: str) -> str | None:
    """The bootstrap file for the document's import path and initializer, in ``directory`` (ours,
    0700); None if it gives neither.  The client's path comes first, then ours: a node's Python
    may keep its own packages elsewhere than the client's."""
    if not doc.sys_path and doc.initializer is None:
        return None
    path = [*doc.sys_path, *(p for p in sys.path if p not in doc.sys_path)]
    bootstrap = os.path.join(directory, "bootstrap.pkl")
    with open(bootstrap, "wb") as f:
        pickle.dump((path, doc.initializer), f)
    return bootstrap


def closed(fd: int = 0, timeout: float = 0.2) -> bool:
    """Wait up to ``timeout`` seconds on the lifeline ``fd``; has it closed (end of file)?  What
    the launcher writes on it is read and ignored."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return False
    try:
        return not os.read(fd, 65536)
    except OSError:
        return True


def hard_end(value: float | str | None) -> float | None:
    """The hard end of our workers' lives, in seconds since the epoch, for ``--wall-time`` ``value``:
    ``auto`` asks the batch job we run in (none outside one).  A number of seconds inside a batch job
    is bounded by the job's own limit too: an executor's ``wall_time`` becomes its jobs' limit, which
    started before we did (the job's shell, its prologue, our interpreter's start)."""
    if value is not None:
        from ..launchers.joblimits import time_left

        left = time_left()
        value = left if value == "auto" else value if left is None else min(value, left)
    return None if value is None else time.time() + value
