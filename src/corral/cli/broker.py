"""``corral broker``: a standalone broker, the rendezvous point of clients and workers elsewhere.

A TCP listener speaks CurveZMQ: the broker makes its keys and a connection file
the first time (``security/provision.py``) and prints the file's path; clients and
workers given that file are let in, no one else.  ``--insecure`` turns that off,
with a warning at every start.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .. import addresses
from ..errors import CredentialsError
from ..logs import logger, setup
from .argtypes import level


def cmd_broker(args: argparse.Namespace) -> int:
    """``corral broker``: serve until SIGTERM or Ctrl-C."""
    from ..broker.broker import Broker
    from ..broker.spill import Spill
    from ..security.credentials import require_curve, warn_insecure
    from ..security.provision import provision

    tcp = addresses.parse(args.listen, listen=True).scheme == "tcp"
    keys = connection = None
    if not tcp or args.insecure:
        for option, value in (("--keys", args.keys), ("--connection-file", args.connection_file),
                              ("--advertise", args.advertise)):
            if value is not None:
                why = "an ipc:// listener needs no keys" if not tcp else "--insecure uses no keys"
                args.parser.error(f"argument {option}: {why}")
    if tcp and args.insecure:
        warn_insecure(f"listening on {args.listen} without encryption or authentication (--insecure): anyone "
                      "who can reach this port can run code on the workers and read every task", stacklevel=2)
    elif tcp:
        require_curve()
        try:
            keys, connection = provision(args.listen, args.keys, args.connection_file, args.advertise)
        except (CredentialsError, OSError) as exc:
            print(f"corral broker: {exc}", file=sys.stderr)
            return 1
    setup(level(args))
    log = logger("broker").warning
    broker = Broker(args.listen, heartbeat=args.heartbeat, liveness=args.liveness, keys=keys,
                    insecure=args.insecure, log=log, spill=Spill(args.max_memory, args.spill_dir, log=log))
    secure = " (CurveZMQ)" if keys is not None else " (plain TCP)" if tcp else ""
    print(f"corral broker listening on {args.listen}{secure}", file=sys.stderr, flush=True)
    if connection is not None:
        print(f"corral broker: connection file {connection} (clients: Executor(address=FILE), "
              f"workers: corral worker FILE; keys in {keys.path})", file=sys.stderr, flush=True)

    def stop(signum, frame):
        broker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    broker.serve()
    return 0
