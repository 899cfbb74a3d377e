"""ZeroMQ endpoints: which ones corral takes, and what it judges about them.

corral's broker, clients and workers are separate processes, so only ``tcp://HOST:PORT``
and ``ipc://PATH`` can join them.  ZeroMQ itself takes much that is a mistake: it binds
``tcp://127.0.0.1:99999`` to some free port (we would print one no one listens on),
"connects" to ``tcp://[bad:7711`` and then waits forever, and answers an address with no
scheme with a bare "Invalid argument" from the client's I/O thread.  Checking here turns
each such mistake into an ``AddressError`` at the call or the command line that made it,
naming the address and showing one that works.

Judging an address (does ZeroMQ need IPv6 for it?) resolves a host name the way ZeroMQ
will, with ``getaddrinfo``, so the judgement matches what the socket really does.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass

from .errors import AddressError

EXAMPLE = "tcp://127.0.0.1:7700"
SCHEMES = ("tcp", "ipc")
IPC_PATH_MAX = 107  # bytes: sockaddr_un.sun_path holds 108, with the terminating NUL

# A DNS name (or an interface name, which ZeroMQ also binds to): dot-separated labels.
_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?")


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: ``tcp`` with ``host`` (IPv6 without its brackets) and ``port``, or ``ipc`` with ``path``."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""
    bracketed: bool = False  # the host was written as [IPv6]


def _fail(address: str, reason: str, example: str = EXAMPLE) -> AddressError:
    """The AddressError for ``address``, saying why and showing one that works."""
    return AddressError(f"bad address {address!r}: {reason}; for example {example}")


def parse(address: str, *, listen: bool = False) -> Endpoint:
    """Check ``address`` for a connect (or, with ``listen``, a bind); AddressError says what is wrong."""
    if not isinstance(address, str):
        raise TypeError(f"an address must be a string such as {EXAMPLE!r}, not {address!r}")
    scheme, sep, rest = address.partition("://")
    if not sep:
        guess = f"tcp://{address}"
        try:
            parse(guess, listen=listen)
        except AddressError:
            guess = EXAMPLE
        raise _fail(address, "it has no scheme (corral takes tcp://HOST:PORT or ipc://PATH)", guess)
    if scheme == "inproc":
        raise _fail(address, "inproc:// reaches only sockets in the same process, and corral's broker, "
                             "workers and clients are separate processes")
    if scheme not in SCHEMES:
        raise _fail(address, f"corral takes tcp://HOST:PORT or ipc://PATH, not {scheme}://")
    if scheme == "ipc":
        return _parse_ipc(address, rest)
    return _parse_tcp(address, rest, listen)


def _parse_ipc(address: str, path: str) -> Endpoint:
    """An ``ipc://`` endpoint."""
    example = "ipc:///tmp/corral.sock"
    if not path:
        raise _fail(address, "the path is empty", example)
    if path == "*":
        raise _fail(address, "corral must know the path to tell clients and workers: give one", example)
    if len(path.encode()) > IPC_PATH_MAX:
        raise _fail(address, f"the path is longer than the {IPC_PATH_MAX} bytes a Unix socket's name can hold", example)
    return Endpoint("ipc", path=path)


def _parse_tcp(address: str, rest: str, listen: bool) -> Endpoint:
    """A ``tcp://`` endpoint."""
    bracketed = rest.startswith("[")
    if bracketed:
        close = rest.find("]")
        if close < 0:
            raise _fail(address, "the IPv6 address has no closing bracket", "tcp://[::1]:7700")
        host, after = rest[1:close], rest[close + 1:]
        if not after.startswith(":"):
            raise _fail(address, "it has no port after the host", "tcp://[::1]:7700")
        port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail(address, f"{host!r} in brackets is not an IPv6 address", "tcp://[::1]:7700") from None
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise _fail(address, "it has no port after the host")
        if ":" in host:
            raise _fail(address, "an IPv6 address must be in brackets", "tcp://[::1]:7700")
        if not host:
            raise _fail(address, "the host is empty")
        if host == "*":
            if not listen:
                raise _fail(address, "'*' (all interfaces) is for listening; to connect, name the broker's host")
        elif re.fullmatch(r"[0-9.]+", host):
            try:
                socket.inet_aton(host)
            except OSError:
                raise _fail(address, f"{host!r} is not an IPv4 address") from None
        elif not _NAME.fullmatch(host):
            raise _fail(address, f"{host!r} is not a host name or an IP address")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        why = ("corral must know the port to tell clients and workers" if port_text == "0" and listen
               else "the port must be a number from 1 to 65535")
        raise _fail(address, f"{why}, not {port_text!r}")
    return Endpoint("tcp", host=host, port=int(port_text), bracketed=bracketed)


def check(address: str, *, listen: bool = False) -> str:
    """``address`` itself if corral can use it (see ``parse``); else AddressError."""
    parse(address, listen=listen)
    return address


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` stands for, as ZeroMQ's own getaddrinfo call finds them; [] if none."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def needs_ipv6(address: str) -> bool:
    """Must a ZeroMQ socket for ``address`` have ``zmq.IPV6`` set?  Without it ZeroMQ cannot bind
    or reach an IPv6 address ("No such device"): true for a bracketed IPv6 host, or a name that
    resolves to IPv6 addresses only.  False for an address ``parse`` rejects."""
    try:
        end = parse(address, listen=True)
    except (AddressError, TypeError):
        return False
    if end.scheme != "tcp" or end.host == "*":
        return False
    if end.bracketed:
        return True
    if re.fullmatch(r"[0-9.]+", end.host):
        return False  # an IPv4 address: no need to ask the resolver
    found = _resolve(end.host)
    return bool(found) and all(ip.version == 6 for ip in found)


def why_unreachable(address: str, timeout: float = 2.0) -> str:
    """Why a peer that dialled ``address`` heard nothing from a broker there, as far as one plain
    TCP connection can tell (a launched worker says it before it gives up, so that its launch's
    failure names the cause: the wrong address, a firewall, or a broker with other keys)."""
    try:
        end = parse(address)
    except AddressError as exc:
        return str(exc)
    if end.scheme != "tcp":
        return "no broker answered on that socket" + ("" if os.path.exists(end.path) else " (no such file)")
    try:
        with socket.create_connection((end.host, end.port), timeout=timeout):
            pass
    except socket.gaierror as exc:
        return f"the host name {end.host!r} does not resolve here ({exc.strerror})"
    except ConnectionRefusedError:
        return (f"connection refused: nothing listens on port {end.port} of {end.host} (the executor or broker "
                "has stopped, or the address is not its own)")
    except TimeoutError:
        return (f"no answer from {end.host} within {timeout:g} s (a firewall drops the packets, the host is down, "
                "or the address is one this machine cannot reach: advertise= or interface= chooses another)")
    except OSError as exc:
        return f"{exc.strerror or exc} (an address this machine cannot reach: advertise= or interface= chooses another)"
    return ("a TCP connection to it succeeds, but no broker answered with the keys this worker holds (another "
            "program on that port, or a broker that does not know this worker's key)")
