"""``corral dashboard ADDRESS|FILE``: the live dashboard of a broker, served until Ctrl-C.

It connects as a client does (a connection file, or an address with ``--keys``) and
asks the broker for its status once a second.  On loopback (the default, 127.0.0.1:8787)
the page is open to this machine's users; beyond it, the page asks for a password, the
token made from the client key of the connection file (printed at start, and by
``--print-token``), and without a client key it starts only with ``--insecure``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..dashboard import listen
from ..errors import CredentialsError
from ..security.credentials import resolve

SAMPLE_TIMEOUT = 5.0  # seconds a status request may take before the page says the broker is not answering


def add_parser(sub) -> argparse.ArgumentParser:
    from .argtypes import add_broker_arguments

    p = sub.add_parser("dashboard", help="serve a live web page of a broker's workers and tasks",
                       description="Serve the live dashboard of the broker FILE|ADDRESS names, until Ctrl-C.")
    add_broker_arguments(p, "client", "the client connection file (corral broker or corral keys add-client "
                                      "wrote it)", insecure="--insecure-broker")
    p.add_argument("--listen", type=listen_argument, default=listen.DEFAULT, metavar="HOST:PORT",
                   help="where the page is served (default %(default)s; port 0: any free port)")
    p.add_argument("--auth", action="store_true",
                   help="ask for the password on loopback too (beyond loopback it is always asked for)")
    p.add_argument("--insecure", action="store_true",
                   help="beyond loopback, serve the page without a password to anyone who reaches the port")
    p.add_argument("--print-token", action="store_true",
                   help="print the page's password for this connection file, and exit")
    return p


def listen_argument(text: str) -> str:
    try:
        listen.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ..client.executor import Executor
    from ..dashboard import DashboardUnavailableError, serve, token_for
    from ..dashboard.source import snapshot

    try:
        target = resolve(args.address, "client", keys=args.keys, insecure=args.insecure_broker)
    except CredentialsError as exc:  # its advice names the broker's flag: ours is --insecure-broker
        args.parser.error(str(exc).replace("(--insecure)", "(here: --insecure-broker)"))
    secret = target.curve[2] if target.curve else None
    host, _ = listen.parse(args.listen)
    loopback = listen.is_loopback(host)
    if args.print_token:
        if secret is None:
            args.parser.error(f"{args.address} holds no client key, from which the password is made")
        print(token_for(secret))
        return 0
    token = None
    if args.auth or not loopback:
        if args.auth and args.insecure:
            args.parser.error("--auth and --insecure contradict each other: give one of them")
        if secret is not None and not args.insecure:
            token = token_for(secret)
        elif not args.insecure:
            args.parser.error(f"--listen {args.listen} reaches beyond this machine, where the page asks for a "
                              "password made from a client key: give a connection file (or --keys FILE); or "
                              "--insecure to serve it to anyone who reaches the port")
        else:
            print(f"corral dashboard: warning: {args.listen} serves the page without a password to anyone who "
                  "reaches it", file=sys.stderr)
    try:
        executor = Executor(address=args.address, keys=args.keys, insecure=args.insecure_broker)
    except DashboardUnavailableError as exc:
        args.parser.error(str(exc))
    stop = threading.Event()
    try:
        try:
            server = serve(lambda: snapshot(executor, SAMPLE_TIMEOUT), args.listen, token)
        except DashboardUnavailableError as exc:
            args.parser.error(str(exc))
        print(f"corral dashboard: {server.url}", flush=True)
        if token is not None:
            print(f"corral dashboard: the page asks for a password: user corral, password {token}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:  # Ctrl-C: the way to stop it, not an error
            pass
        server.stop()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return 0
