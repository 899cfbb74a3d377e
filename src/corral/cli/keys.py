"""``corral keys``: who may connect to a broker, one key pair per client or worker.

    corral keys add-worker NAME [-o FILE]   allow a worker; write its connection file (0600)
    corral keys add-client NAME [-o FILE]   allow a client; the same
    corral keys list                        the allowed peers: name, role, public key
    corral keys revoke NAME                 allow it no more: a connected peer is dropped within
                                            a heartbeat, a new connection refused at once

The broker is the one whose key directory ``--keys DIR`` names, or by default the
one listening on ``--port`` (7700) of this user (``security/provision.py``).
A new peer's secret key is written to its connection file only: copy that file to
the peer's machine (scp), keep it 0600, and give its path to ``corral worker`` or
``Executor(address=...)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import CredentialsError


def cmd_keys(args: argparse.Namespace) -> int:
    """``corral keys ...``: one of the actions above."""
    from ..security.keys import KeyDir, check_name, write_connection
    from ..security.provision import address_of, home

    keys = KeyDir(args.keys if args.keys else home() / f"broker-{args.port}")
    if args.action == "list":
        peers = keys.peers()
        if not peers:
            print(f"no clients or workers are allowed by the broker whose keys are in {keys.path}")
        for peer in peers:
            print(f"{peer.role:6}  {peer.name:24}  {peer.public}")
        return 0
    if args.action == "revoke":
        peer = keys.revoke(args.name)
        print(f"revoked {peer.role} {peer.name}: the broker drops it within a heartbeat and lets it in no more",
              file=sys.stderr)
        return 0
    role = args.action.removeprefix("add-")
    check_name(args.name)
    address = args.address or address_of(keys)
    out = Path(args.output) if args.output else Path(f"{args.name}.json")
    if out.exists():
        raise CredentialsError(f"{out} exists already: choose another file with -o, or remove it")
    broker_public, _ = keys.broker_keys()
    public, secret = keys.add(role, args.name)
    try:
        write_connection(out, address, broker_public, {role: (args.name, public, secret)})
    except BaseException:
        keys.revoke(args.name)  # no file holds its secret: the key is of no use to anyone
        raise
    how = f"corral worker {out}" if role == "worker" else f"corral.Executor(address={str(out)!r})"
    print(f"added {role} {args.name}; its connection file is {out} (mode 0600): copy it to the {role}'s machine "
          f"and run {how}", file=sys.stderr)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """``corral keys``'s parser, under the ``corral`` command's subparsers ``sub``."""
    from .argtypes import connect_address, port

    keys = sub.add_parser("keys", help="allow, list and revoke the clients and workers of a broker",
                          description=__doc__.split("\n\n")[0])
    keys.add_argument("--keys", metavar="DIR", default=None,
                      help="the broker's key directory (default: ~/.corral/broker-PORT, or $CORRAL_HOME/broker-PORT)")
    keys.add_argument("--port", type=port, default=7700,
                      help="with no --keys: the port of the broker whose keys these are (default %(default)s)")
    actions = keys.add_subparsers(dest="action", required=True)
    for role in ("worker", "client"):
        add = actions.add_parser(f"add-{role}", help=f"allow a new {role}; write its connection file")
        add.add_argument("name", help="its name: letters, digits, '_', '.', '-' (e.g. gpu-node-1)")
        add.add_argument("-o", "--output", metavar="FILE", default=None, help="the connection file (default NAME.json)")
        add.add_argument("--address", type=connect_address, default=None,
                         help="the address it dials (default: the one the broker gave when it last started)")
    actions.add_parser("list", help="the allowed clients and workers")
    revoke = actions.add_parser("revoke", help="allow a client or a worker no more (no restart needed)")
    revoke.add_argument("name")
    return keys
