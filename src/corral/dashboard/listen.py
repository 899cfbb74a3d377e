"""Where the dashboard listens: ``HOST:PORT`` checked, and whether that is loopback only."""

from __future__ import annotations

import ipaddress

DEFAULT = "127.0.0.1:8787"


def parse(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``; port 0: any free one) as (host, port); ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"the dashboard's address must be HOST:PORT, e.g. {DEFAULT}, not {text!r}")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the dashboard's address must be HOST:PORT with a port from 0 to 65535, e.g. {DEFAULT}, "
                         f"not {text!r}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8787") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Does ``host`` reach this machine only (127.0.0.0/8, ::1, localhost)?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
