"""A broker's key directory and the connection files it hands out.

::

    KEYDIR/                   0700, made on first use
      broker.key              the broker's public key     (zmq.auth certificate files)
      broker.key_secret       the broker's secret key     0600
      clients/NAME.key        public keys allowed to connect as clients
      workers/NAME.key        public keys allowed to connect as workers

    connection file (JSON, 0600)        what a peer needs, and nothing it does not:
      {"corral": 1, "address": "tcp://HOST:PORT", "broker_key": Z85,
       "client": {"name": NAME, "public": Z85, "secret": Z85},     one role or both
       "worker": {...}}

A peer's secret key exists only in its connection file: the broker keeps the
public half in the allow-list of the peer's role, so a worker key cannot be
used as a client's and the other way round.  Revoking a peer removes its
public key from the allow-list; ``KeyDir.allowed`` reads a list again when it
changed, so a ZAP handler asking it (``zap.py``) needs no restart.  Key files are zmq.auth's
certificates, so ``zmq.auth.load_certificate`` reads every one of them.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from ..addresses import check as check_address
from ..errors import AddressError, CredentialsError

ROLES = ("client", "worker")
FORMAT = 1  # the "corral" field of a connection file
BROKER = "broker"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Z85_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


@dataclass(frozen=True)
class Peer:
    """One allowed peer: its name, role and public key (Z85 text)."""

    name: str
    role: str
    public: str


@dataclass(frozen=True)
class Credentials:
    """What a client or a worker needs to reach a broker over CurveZMQ."""

    address: str
    broker_key: bytes
    role: str
    name: str
    public: bytes
    secret: bytes


def check_name(name: object) -> str:
    """A peer's name: 1 to 64 letters, digits, '_', '.', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CredentialsError(f"bad key name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
                               "starting with a letter or a digit (for example gpu-node-1)")
    return name


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory only its owner may enter, or refuse one others may."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise CredentialsError(f"the key directory {path} belongs to another user (uid {info.st_uid}): "
                               "use a directory of your own")
    if info.st_mode & 0o077:
        raise CredentialsError(f"the key directory {path} is open to other users "
                               f"(mode {stat.filemode(info.st_mode)}): run chmod 700 {path}")


class KeyDir:
    """A broker's keys: its own pair and one allow-list per role."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        _private_dir(self.path)
        for role in ROLES:
            _private_dir(self._role_dir(role))
        self._cache: dict[str, tuple[int, dict[bytes, str]]] = {}

    def _role_dir(self, role: str) -> Path:
        if role not in ROLES:
            raise CredentialsError(f"unknown role {role!r}: a key is a client's or a worker's")
        return self.path / f"{role}s"

    def broker_keys(self) -> tuple[bytes, bytes]:
        """The broker's (public, secret) key pair, made on first use."""
        secret_file = self.path / f"{BROKER}.key_secret"
        if not secret_file.exists():
            self._make_pair(BROKER, self.path)
        public, secret = zmq.auth.load_certificate(secret_file)
        return public, secret

    def _make_pair(self, name: str, into: Path) -> tuple[bytes, bytes]:
        """A new key pair; its certificate files land in ``into`` (the secret one 0600)."""
        with tempfile.TemporaryDirectory(dir=self.path) as scratch:
            public_file, secret_file = zmq.auth.create_certificates(scratch, name)
            os.chmod(secret_file, 0o600)
            public, secret = zmq.auth.load_certificate(secret_file)
            os.replace(public_file, into / f"{name}.key")
            if into == self.path:  # the broker's own pair: a peer's secret half is not kept here
                os.replace(secret_file, into / f"{name}.key_secret")
        return public, secret

    def add(self, role: str, name: str) -> tuple[bytes, bytes]:
        """Allow a new peer ``name`` in ``role``; its (public, secret) pair, whose secret
        half is kept nowhere else: put it in a connection file (``write_connection``)."""
        check_name(name)
        role_dir = self._role_dir(role)
        for other in ROLES:  # a name is one peer's, whatever its role (a file each: no list read)
            if (self._role_dir(other) / f"{name}.key").exists():
                raise CredentialsError(f"a {other} named {name!r} exists already: choose another name, "
                                       f"or revoke it first (corral keys revoke {name})")
        return self._make_pair(name, role_dir)

    def revoke(self, name: str) -> Peer:
        """Remove ``name`` from its allow-list; the peer it was."""
        check_name(name)
        for peer in self.peers():
            if peer.name == name:
                (self._role_dir(peer.role) / f"{name}.key").unlink()
                return peer
        raise CredentialsError(f"no client or worker is named {name!r} (corral keys list shows them)")

    def peers(self) -> list[Peer]:
        """Every allowed peer, clients first, by name."""
        found = []
        for role in ROLES:
            for public, name in sorted(self.allowed(role).items(), key=lambda item: item[1]):
                found.append(Peer(name, role, public.decode()))
        return found

    def allowed(self, role: str) -> dict[bytes, str]:
        """The public keys allowed in ``role``, with their names; read again only when the
        allow-list changed (a revocation takes effect at the next connection)."""
        role_dir = self._role_dir(role)
        stamp = role_dir.stat().st_mtime_ns
        cached = self._cache.get(role)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = {}
        for entry in role_dir.glob("*.key"):
            try:
                public, _ = zmq.auth.load_certificate(entry)
            except (OSError, ValueError):
                continue  # a file being written, or not a certificate: not a key
            keys[public] = entry.name[: -len(".key")]
        self._cache[role] = (stamp, keys)
        return keys


class MemoryKeys:
    """A ``KeyDir`` that lives in memory: the executor's own broker, whose workers it launches itself.

    Its keys exist only for as long as the executor does: nothing is written to disk, so
    nothing (the broker's secret key least of all) is left behind by a client that is
    killed.  The ZAP handler's thread reads the allow-lists while the broker's thread
    changes them: each change replaces a list whole, so a reader sees one or the other.
    """

    def __init__(self) -> None:
        self._broker = zmq.curve_keypair()
        self._lists: dict[str, dict[bytes, str]] = {role: {} for role in ROLES}

    def broker_keys(self) -> tuple[bytes, bytes]:
        return self._broker

    def add(self, role: str, name: str) -> tuple[bytes, bytes]:
        """Allow a new peer ``name`` in ``role``; its (public, secret) pair, kept nowhere here."""
        check_name(name)
        if any(name in names.values() for names in self._lists.values()):
            raise CredentialsError(f"a peer named {name!r} exists already")
        public, secret = zmq.curve_keypair()
        self._lists[role] = {**self._lists[role], public: name}
        return public, secret

    def revoke(self, name: str) -> Peer:
        for role, names in self._lists.items():
            for public, known in names.items():
                if known == name:
                    self._lists[role] = {k: v for k, v in names.items() if k != public}
                    return Peer(name, role, public.decode())
        raise CredentialsError(f"no client or worker is named {name!r}")

    def allowed(self, role: str) -> dict[bytes, str]:
        return self._lists[role]


def write_connection(path: str | os.PathLike, address: str, broker_key: bytes,
                     peers: dict[str, tuple[str, bytes, bytes]]) -> Path:
    """Write a connection file (mode 0600, replaced atomically): the broker's address and
    public key, and for each role in ``peers`` the peer's (name, public, secret)."""
    check_address(address)
    body: dict = {"corral": FORMAT, "address": address, "broker_key": broker_key.decode()}
    for role, (name, public, secret) in peers.items():
        if role not in ROLES:
            raise CredentialsError(f"unknown role {role!r}: a key is a client's or a worker's")
        body[role] = {"name": check_name(name), "public": public.decode(), "secret": secret.decode()}
    path = Path(path)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
            f.write("\n")
        os.replace(scratch, path)
    except BaseException:
        os.unlink(scratch)
        raise
    return path


def read_connection(path: str | os.PathLike, role: str) -> Credentials:
    """A peer's credentials from a connection file, checked: owned by this user and readable
    by nobody else, well formed, and holding a key pair for ``role`` whose halves match."""
    path = Path(path)
    if role not in ROLES:
        raise CredentialsError(f"unknown role {role!r}: a key is a client's or a worker's")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise CredentialsError(f"cannot read the connection file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"the connection file {path} is not a regular file")
        if info.st_uid != os.getuid():
            raise CredentialsError(f"the connection file {path} belongs to another user (uid {info.st_uid}): "
                                   "a key must be its user's alone; copy it and chmod 600 the copy")
        if info.st_mode & 0o077:
            raise CredentialsError(f"the connection file {path} is readable by other users "
                                   f"(mode {stat.filemode(info.st_mode)}): run chmod 600 {path}, "
                                   "and consider its keys seen (corral keys revoke NAME, then add it again)")
        raw = f.read(1 << 16)
    return parse_connection(raw, path, role)


def parse_connection(raw: bytes, path: str | os.PathLike, role: str) -> Credentials:
    """The ``role`` credentials of a connection document ``raw`` (JSON), checked; ``path`` names
    where it came from, in messages (a file, or a launched worker's standard input)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"the connection file {path} is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("corral") != FORMAT:
        raise CredentialsError(f"{path} is not a corral connection file (format {FORMAT})")
    entry = body.get(role)
    if not isinstance(entry, dict):
        raise CredentialsError(f"the connection file {path} holds no {role} key: make one on the broker's "
                               f"machine with corral keys add-{role} NAME")
    address = body.get("address")
    if not isinstance(address, str):
        raise CredentialsError(f"the connection file {path} names no address")
    try:
        check_address(address)
    except (AddressError, TypeError) as exc:
        raise CredentialsError(f"the connection file {path} has a bad address: {exc}") from None
    broker_key, public, secret = (_z85(path, field, value) for field, value in (
        ("broker_key", body.get("broker_key")), (f"{role}.public", entry.get("public")),
        (f"{role}.secret", entry.get("secret"))))
    if zmq.curve_public(secret) != public:
        raise CredentialsError(f"the {role} key pair in {path} does not match: its public key is not its "
                               "secret key's; write the file again with corral keys")
    return Credentials(address, broker_key, role, check_name(entry.get("name")), public, secret)


def _z85(path: str | os.PathLike, field: str, value: object) -> bytes:
    """A CurveZMQ key as Z85 text (40 characters), or a CredentialsError naming the field."""
    if not isinstance(value, str) or not Z85_KEY.fullmatch(value):
        raise CredentialsError(f"the connection file {path} has a bad {field}: a key is 40 Z85 characters")
    return value.encode()
