"""Where the executor's broker listens for launched workers, and the address they are told to dial.

The commonest failure of launched workers elsewhere is a scheduler address the
nodes cannot reach (a name that resolves to 127.0.1.1, the wrong one of several
interfaces).  So the choice is explicit and the same for both sides:

    interface="ib0"        bind that interface's IPv4 address; workers dial it
    advertise="head-1"     bind every interface; workers dial that name (":PORT" fixes the port)
    neither                the launcher's own default (Local: 127.0.0.1), else this machine's
                           address on its default route (no packet is sent to find it)

Every TCP link is CurveZMQ, so listening beyond loopback admits only the keys of
this executor's launches.
"""

from __future__ import annotations

import ipaddress
import socket

import zmq

from ..errors import AddressError

FREE_PORT_TRIES = 5


def choose(default_host: str | None, advertise: str | None, interface: str | None) -> tuple[str, str, int]:
    """(host to bind, host workers dial, port or 0 for any free one)."""
    if interface is not None:
        ip = interface_address(interface)
        return ip, ip, 0
    if advertise is not None:
        host, port = _split(advertise)
        return (host if _is_ip(host) else "*"), host, port
    if default_host is not None:
        return default_host, default_host, 0
    ip = default_route_address()
    if ip is None:
        name = socket.getfqdn()
        return "*", name, 0
    return ip, ip, 0


def interface_address(name: str) -> str:
    """The IPv4 address of the network interface ``name``; AddressError lists those there are."""
    import psutil

    found = psutil.net_if_addrs()
    if name not in found:
        raise AddressError(f"no network interface called {name!r} here; there are: {', '.join(sorted(found))}")
    for addr in found[name]:
        if addr.family == socket.AF_INET:
            return addr.address
    raise AddressError(f"the network interface {name!r} has no IPv4 address: give advertise= instead")


def default_route_address() -> str | None:
    """This machine's address on its default route: a UDP socket 'connected' to a documentation
    address (RFC 5737) learns which source address the kernel would use; nothing is sent."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            return probe.getsockname()[0]
    except OSError:
        return None


def bind_router(make, bind_host: str, port: int):
    """``make(address)`` for a free port (or ``port``): the bound socket's maker's result and the port.
    A port found free may be taken before ZeroMQ binds it: try again a few times."""
    for attempt in range(FREE_PORT_TRIES if port == 0 else 1):
        chosen = port or _free_port(bind_host)
        try:
            return make(f"tcp://{_bracket(bind_host)}:{chosen}"), chosen
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or port or attempt == FREE_PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("" if host == "*" else host, 0))
        return s.getsockname()[1]


def _split(advertise: str) -> tuple[str, int]:
    host, sep, port = advertise.rpartition(":")
    if sep and port.isdigit() and "]" not in port and host.count(":") == 0:
        if not 1 <= int(port) <= 65535:
            raise AddressError(f"advertise={advertise!r}: the port must be from 1 to 65535")
        return host, int(port)
    return advertise.strip("[]"), 0


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def dial_address(host: str, port: int) -> str:
    return f"tcp://{_bracket(host)}:{port}"
