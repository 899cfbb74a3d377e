"""How a client or a worker reaches a broker: its address, and the CurveZMQ keys for a TCP one.

What a user gives is one of::

    a connection file            written by `corral broker` or `corral keys add-ROLE NAME`:
      "~/.corral/broker-7700/connection.json"   its address, the broker's key, this role's pair
    tcp://HOST:PORT + keys       keys=FILE (a connection file whose address is not used), or the
                                 environment: CORRAL_CONNECTION_FILE=FILE, or CORRAL_BROKER_KEY,
                                 CORRAL_PUBLIC_KEY and CORRAL_SECRET_KEY (Z85 text)
    tcp://HOST:PORT, insecure    plain TCP, for a broker started with --insecure (a warning says so)
    ipc://PATH                   a Unix socket: the directory's permissions guard it, no keys

Secrets travel in files (mode 0600) and the environment, never on a command line,
where ``ps`` shows them to every user of the machine: a worker process is handed the
file's path, or inherits the environment.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import zmq

from .. import addresses
from ..errors import AddressError, CredentialsError, CurveUnavailableError, SecurityWarning
from .keys import Z85_KEY, read_connection

ENV_FILE = "CORRAL_CONNECTION_FILE"
ENV_KEYS = ("CORRAL_BROKER_KEY", "CORRAL_PUBLIC_KEY", "CORRAL_SECRET_KEY")


@dataclass(frozen=True)
class Target:
    """A broker to dial: its ZeroMQ address, and (broker public, own public, own secret) for CurveZMQ."""

    address: str
    curve: tuple[bytes, bytes, bytes] | None = None
    name: str | None = None  # the key's name, for messages

    def __repr__(self) -> str:  # never print a secret key
        return f"Target({self.address!r}, curve={'on' if self.curve else 'off'}, name={self.name!r})"


def is_connection_file(where: str) -> bool:
    """Is ``where`` a connection file's path rather than a ZeroMQ address?"""
    return isinstance(where, str) and "://" not in where


def check_file_or_address(where: str) -> None:
    """An existing file passes; anything else with no ``scheme://`` was meant as an address: the
    AddressError that says so (``127.0.0.1:7700`` lacks ``tcp://``), noting no file has that name."""
    if os.path.exists(os.path.expanduser(where)):
        return
    try:
        addresses.parse(where)
    except AddressError as exc:
        raise AddressError(f"{exc} (nor is there a connection file of that name)") from None


def require_curve() -> None:
    """Fail at once, saying why and what to do, where this pyzmq's libzmq has no CurveZMQ."""
    if not zmq.has("curve"):
        raise CurveUnavailableError(
            f"this pyzmq (libzmq {zmq.zmq_version()}) was built without CurveZMQ, which corral needs to "
            "encrypt and authenticate TCP links: install pyzmq's wheel from PyPI (pip install --force-reinstall "
            "pyzmq), which bundles libsodium, or a libzmq built with libsodium; or use ipc:// on one machine"
        )


def resolve(where: str, role: str, *, keys: str | os.PathLike | None = None, insecure: bool = False) -> Target:
    """The broker ``where`` names, for a peer in ``role`` (see the module's docstring).

    Raises AddressError for a bad address, CredentialsError when a TCP address comes
    without keys (and without ``insecure``) or a file cannot be used.
    """
    if is_connection_file(where):
        check_file_or_address(where)
        if insecure:
            raise CredentialsError(f"{where!r} is a connection file, which holds CurveZMQ keys: "
                                   "insecure=True is for a tcp:// address of a broker started with --insecure")
        require_curve()
        creds = read_connection(os.path.expanduser(where), role)
        return Target(creds.address, (creds.broker_key, creds.public, creds.secret), creds.name)
    end = addresses.parse(where)
    if end.scheme != "tcp":
        return Target(where)
    if keys is None and os.environ.get(ENV_FILE):
        keys = os.environ[ENV_FILE]
    if keys is not None:
        if insecure:
            raise CredentialsError("keys and insecure=True contradict each other: give one of them")
        require_curve()
        creds = read_connection(os.path.expanduser(os.fspath(keys)), role)
        return Target(where, (creds.broker_key, creds.public, creds.secret), creds.name)
    given = [name for name in ENV_KEYS if os.environ.get(name)]
    if given and not insecure:
        if len(given) != len(ENV_KEYS):
            missing = ", ".join(name for name in ENV_KEYS if name not in given)
            raise CredentialsError(f"{', '.join(given)} set in the environment but not {missing}: "
                                   "set all three, or none")
        require_curve()
        broker, public, secret = (_env_key(name) for name in ENV_KEYS)
        if zmq.curve_public(secret) != public:
            raise CredentialsError("CORRAL_PUBLIC_KEY is not the public half of CORRAL_SECRET_KEY")
        return Target(where, (broker, public, secret), "environment")
    if insecure:
        warn_insecure(f"connecting to {where} without encryption or authentication: anyone on the "
                      "network path can read the tasks and results, and pose as the broker")
        return Target(where)
    raise CredentialsError(
        f"{where} is a TCP address, and corral's TCP links are encrypted and authenticated: give the "
        f"connection file the broker wrote (address='~/.corral/broker-{end.port}/connection.json', or "
        f"`corral worker FILE`), or keys=FILE / ${ENV_FILE}; or insecure=True (--insecure) for a broker "
        "started with --insecure"
    )


def _env_key(name: str) -> bytes:
    """A CurveZMQ key from the environment variable ``name``, checked."""
    value = os.environ[name].strip()
    if not Z85_KEY.fullmatch(value):
        raise CredentialsError(f"${name} is not a CurveZMQ key: a key is 40 Z85 characters")
    return value.encode()


def warn_insecure(message: str, stacklevel: int = 3) -> None:
    """Say that a link is plain TCP: a SecurityWarning on every start, not once per place in the
    code as warnings.warn would (a filter that ignores SecurityWarning still silences it)."""
    frame = sys._getframe(stacklevel - 1)
    warnings.warn_explicit(message, SecurityWarning, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry={})
