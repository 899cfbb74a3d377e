"""argparse ``type=`` functions shared by ``corral`` and ``python -m corral.worker``.

Each turns one command-line string into a value or raises ``ArgumentTypeError``
saying what it expected, so that argparse answers a bad value the way it answers
any bad argument: the usage line, ``error: argument --x: ...`` and exit code 2,
never a traceback.  The rules themselves live with the library's own checks
(addresses.py, options.py), so the command line and the Python API agree.
"""

from __future__ import annotations

import argparse
from argparse import ArgumentTypeError
from collections.abc import Callable

from .. import addresses
from ..config import check_seconds, parse_size, seconds_rule
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


def integer(minimum: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ArgumentTypeError(f"expected an integer >= {minimum}, not {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def seconds(*, zero: bool = False) -> Callable[[str], float]:
    """A ``type=`` for a finite number of seconds > 0 (>= 0 with ``zero``): options.check_seconds's rule."""

    def parse(text: str) -> float:
        try:
            return check_seconds("seconds", float(text), zero=zero)
        except ValueError:
            raise ArgumentTypeError(f"expected {seconds_rule(zero)}, not {text!r}") from None

    parse.__name__ = "seconds"
    return parse


def size(text: str) -> int:
    """A ``type=`` for a memory size: bytes, or a string such as 512MB or 2GiB (options.parse_size)."""
    try:
        return parse_size(text)
    except ValueError:
        raise ArgumentTypeError(f"expected a size in bytes or like 512MB or 2GiB, not {text!r}") from None


def level(args: argparse.Namespace) -> str:
    """The level of corral's messages a command prints on stderr: INFO, or DEBUG with -v."""
    return "DEBUG" if args.verbose else "INFO"
