"""argparse ``type=`` functions shared by ``corral`` and ``python -m corral.worker``.

Each turns one command-line string into a value or raises ``ArgumentTypeError``
saying what it expected, so that argparse answers a bad value the way it answers
any bad argument: the usage line, ``error: argument --x: ...`` and exit code 2,
never a traceback.  The rules themselves live with the library's own checks
(addresses.py, config.py), so the command line and the Python API agree.
"""

from __future__ import annotations

import argparse
import os
from argparse import ArgumentTypeError

from .. import addresses
from ..config import integer, seconds, size  # noqa: F401 - the command line's types, with the rules they apply
from ..errors import AddressError


def connect_address(text: str) -> str:
    """A broker's address to connect to: ``tcp://HOST:PORT`` or ``ipc://PATH``."""
    try:
        return addresses.check(text)
    except AddressError as exc:
        raise ArgumentTypeError(str(exc)) from None


def listen_address(text: str) -> str:
    """An address to bind: as ``connect_address``, and ``*`` for every interface."""
    try:
        return addresses.check(text, listen=True)
    except AddressError as exc:
        raise ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    """A TCP port: 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ArgumentTypeError(f"expected a port from 1 to 65535, not {text!r}")
    return int(text)


def broker(text: str) -> str:
    """What a client or worker dials: a connection file's path, or an address as ``connect_address``."""
    if "://" not in text:
        return text  # a connection file: read, and checked, when the command runs (security/credentials.py)
    return connect_address(text)


def writable_directory(text: str) -> str:
    """A directory that exists and this user may make files in."""
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isdir(path):
        raise ArgumentTypeError(f"no such directory: {text!r}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArgumentTypeError(f"cannot write in the directory {text!r}")
    return path


def wall_time(text: str) -> float | str | None:
    """``--wall-time``: ``auto``, ``none`` (None), or a number of seconds > 0."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return "auto" if word == "auto" else None
    try:
        return seconds()(text)
    except ArgumentTypeError:
        raise ArgumentTypeError(f"expected a number of seconds > 0, auto or none, not {text!r}") from None


def level(args: argparse.Namespace) -> str:
    """The level of corral's messages a command prints on stderr: INFO, or DEBUG with -v."""
    return "DEBUG" if args.verbose else "INFO"


def add_broker_arguments(p: argparse.ArgumentParser, role: str, what: str, insecure: str = "--insecure",
                         optional: bool = False) -> None:
    """The broker a command dials, as ``corral worker``, ``status`` and ``dashboard`` take it: FILE|ADDRESS
    (``what`` says which files), ``--keys`` for a tcp:// address, and ``insecure`` for plain TCP.
    ``optional``: FILE|ADDRESS may be missing (None), for a command that finds it elsewhere."""
    p.add_argument("address", type=broker, metavar="FILE|ADDRESS", **({"nargs": "?"} if optional else {}),
                   help=f"{what}; or an address: tcp://HOST:PORT with --keys or {insecure}, or ipc://PATH")
    p.add_argument("--keys", metavar="FILE", default=None,
                   help=f"with a tcp:// address: the connection file whose {role} key to use")
    p.add_argument(insecure, action="store_true",
                   help="with a tcp:// address: plain TCP, for a broker started with --insecure (warns)")
