"""The launch document: what a launched worker reads on its standard input, and nothing else secret.

::

    {"corral": 1, "address": "tcp://HOST:PORT", "broker_key": Z85,
     "worker": {"name": "slurm-3", "public": Z85, "secret": Z85},   a key pair made for this worker alone
     "setup": {"sys_path": [...],                                   the client's import path
               "initializer": BASE64 | null},                       pickled (initializer, initargs)
     "lifeline": false}                                             true: leave when standard input closes

It has a connection file's shape (``security/keys.py``) plus ``setup`` and
``lifeline``, on one line, so ``corral worker -`` reads it with one readline and
checks it as it checks a file.  The launcher carries it to the node through its
launch channel (``base.py``); the worker keeps the secret in memory and hands it to
its worker processes through their environment, never argv.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from ..errors import CredentialsError
from ..security.keys import FORMAT, Credentials, parse_connection

MAX_DOCUMENT = 16 << 20  # bytes of standard input a worker reads for its document, at most
SOURCE = "on standard input"  # where the document came from, in messages


@dataclass(frozen=True)
class LaunchDocument:
    """A launched worker's credentials and setup, as read from its standard input."""

    credentials: Credentials = field(repr=False)
    sys_path: list[str] = field(default_factory=list)
    initializer: bytes | None = None  # pickled (initializer, initargs), or None
    lifeline: bool = False


def make(address: str, broker_key: bytes, name: str, public: bytes, secret: bytes, *,
         sys_path: list[str] | None = None, initializer: bytes | None = None, lifeline: bool = False) -> bytes:
    """The document for one launched worker: one line of JSON, newline-terminated."""
    body = {
        "corral": FORMAT,
        "address": address,
        "broker_key": broker_key.decode(),
        "worker": {"name": name, "public": public.decode(), "secret": secret.decode()},
        "setup": {"sys_path": list(sys_path or []),
                  "initializer": base64.b64encode(initializer).decode() if initializer is not None else None},
        "lifeline": lifeline,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse(raw: bytes) -> LaunchDocument:
    """A document read from standard input, checked; CredentialsError says what is wrong with it."""
    if not raw.strip():
        raise CredentialsError("no launch document on standard input: `corral worker -` reads the one line "
                               "a launcher writes there (a connection file's JSON); give a file's path instead "
                               "to start a worker by hand")
    if len(raw) > MAX_DOCUMENT:
        raise CredentialsError(f"the launch document on standard input is larger than {MAX_DOCUMENT} bytes")
    creds = parse_connection(raw, SOURCE, "worker")
    body = json.loads(raw)
    setup = body.get("setup") or {}
    if not isinstance(setup, dict):
        raise CredentialsError("the launch document's setup is not a JSON object")
    sys_path = setup.get("sys_path") or []
    if not isinstance(sys_path, list) or not all(isinstance(p, str) for p in sys_path):
        raise CredentialsError("the launch document's setup.sys_path is not a list of strings")
    init = setup.get("initializer")
    try:
        initializer = base64.b64decode(init, validate=True) if init is not None else None
    except (binascii.Error, TypeError, ValueError):
        raise CredentialsError("the launch document's setup.initializer is not base64") from None
    lifeline = body.get("lifeline", False)
    if not isinstance(lifeline, bool):
        raise CredentialsError("the launch document's lifeline is not true or false")
    return LaunchDocument(creds, sys_path, initializer, lifeline)
