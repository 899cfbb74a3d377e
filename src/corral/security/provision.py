"""Zero configuration: the key directory and connection file a TCP broker makes for itself.

``corral broker --listen tcp://0.0.0.0:7700`` needs nothing else::

    $CORRAL_HOME (default ~/.corral)/broker-7700/      0700, the broker's KeyDir (keys.py)
        address                the address peers dial (the listener's, or --advertise)
        connection.json        0600: that address, the broker's public key, and the key pairs
                               "default-client" and "default-worker" (Executor(address=FILE),
                               corral worker FILE)

A broker started again finds its keys and its connection file and keeps them, so
the clients and workers given the file reconnect; one whose defaults were revoked,
or whose file is gone or damaged, gets new default pairs in a new file.  Peers of
their own (``corral keys add-worker NAME``) get files of their own (``cli/keys.py``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .. import addresses
from ..errors import CredentialsError
from .keys import ROLES, KeyDir, read_connection, write_connection

DEFAULT_NAMES = {role: f"default-{role}" for role in ROLES}


def home() -> Path:
    """Where corral keeps brokers' keys: ``$CORRAL_HOME``, else ``~/.corral``."""
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def key_dir_for(listen: str) -> Path:
    """The default key directory of a broker listening on ``listen`` (one per port)."""
    return home() / f"broker-{addresses.parse(listen, listen=True).port}"


def advertised(listen: str) -> str:
    """The address peers dial for a listener: its own, with a wildcard host (``*``, 0.0.0.0, ::)
    replaced by this machine's fully qualified name."""
    end = addresses.parse(listen, listen=True)
    if end.host in ("*", "0.0.0.0", "::"):
        return f"tcp://{socket.getfqdn()}:{end.port}"
    return listen


def provision(listen: str, key_dir: str | os.PathLike | None = None,
              connection_file: str | os.PathLike | None = None, advertise: str | None = None) -> tuple[KeyDir, Path]:
    """The broker's KeyDir, and a connection file with its default client and worker keys
    (kept from an earlier start where it still works), for a TCP listener on ``listen``."""
    keys = KeyDir(key_dir if key_dir is not None else key_dir_for(listen))
    address = addresses.check(advertise) if advertise else advertised(listen)
    (keys.path / "address").write_text(address + "\n")
    path = Path(connection_file) if connection_file is not None else keys.path / "connection.json"
    broker_public, _ = keys.broker_keys()
    kept = _still_valid(path, keys, broker_public)
    if kept is not None:
        if kept != address:  # same keys, another address (--advertise, a renamed host): say the new one
            peers = {role: _pair(path, role) for role in ROLES}
            write_connection(path, address, broker_public, peers)
        return keys, path
    peers = {}
    allowed = {peer.name for peer in keys.peers()}
    for role, name in DEFAULT_NAMES.items():
        if name in allowed:
            keys.revoke(name)  # its secret half was in the file that is gone: no one holds it now
        public, secret = keys.add(role, name)
        peers[role] = (name, public, secret)
    write_connection(path, address, broker_public, peers)
    return keys, path


def _still_valid(path: Path, keys: KeyDir, broker_public: bytes) -> str | None:
    """The address in an earlier connection file whose keys this broker still takes, else None."""
    if not path.exists():
        return None
    try:
        found = [read_connection(path, role) for role in ROLES]
    except CredentialsError:
        return None
    for creds in found:
        if creds.broker_key != broker_public or keys.allowed(creds.role).get(creds.public) != creds.name:
            return None
    return found[0].address


def _pair(path: Path, role: str) -> tuple[str, bytes, bytes]:
    """(name, public, secret) of ``role`` in a connection file."""
    creds = read_connection(path, role)
    return creds.name, creds.public, creds.secret


def address_of(keys: KeyDir) -> str:
    """The address a broker with these keys gave its peers when it last started."""
    try:
        return (keys.path / "address").read_text().strip()
    except FileNotFoundError:
        raise CredentialsError(f"no broker has started with the keys in {keys.path} yet: start it first "
                               "(corral broker), or say where peers reach it with --address") from None
