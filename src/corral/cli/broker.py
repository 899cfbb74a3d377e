"""``corral broker``: a standalone broker, the rendezvous point of clients and workers elsewhere."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings

from .. import addresses
from ..errors import InsecureAddressError
from ..logs import setup
from .argtypes import level


def check_listen_address(address: str, insecure: bool) -> None:
    """Refuse a listener that other machines can reach unless --insecure was given.

    Loopback means what addresses.is_loopback says: an ipc:// path, or a host whose
    every address is a loopback one (``localhost``, ``127.1``, ``[::1]``).
    """
    if addresses.is_loopback(address):
        return
    if not insecure:
        raise InsecureAddressError(
            f"refusing to listen on {address}: anyone who can reach it could run code on your workers. "
            "Listen on 127.0.0.1, or pass --insecure if the network is trusted (encryption is not available yet)."
        )
    warnings.warn(
        f"listening on {address} without encryption or authentication: anyone who can reach this "
        "port can run code on the workers",
        stacklevel=2,
    )


def cmd_broker(args: argparse.Namespace) -> int:
    """``corral broker``: serve until SIGTERM or Ctrl-C."""
    from ..broker.broker import Broker

    check_listen_address(args.listen, args.insecure)
    setup(level(args))
    broker = Broker(args.listen, heartbeat=args.heartbeat, liveness=args.liveness)
    print(f"corral broker listening on {args.listen}", file=sys.stderr, flush=True)

    def stop(signum, frame):
        broker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    broker.serve()
    return 0


# A worker process that fails this soon after it started is failing to start (a module it
# cannot import, a broken environment): starting another at once would fail the same way.
