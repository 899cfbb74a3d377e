"""The ``corral`` command: a thin layer over the library, one module per subcommand.

    corral demo                                  Monte Carlo pi on local workers (demo.py)
    corral broker --listen tcp://127.0.0.1:7700  a standalone broker; prints its connection file (broker.py)
    corral worker FILE [--fresh] [--processes N] worker processes (worker.py)
    corral keys add-worker|add-client|list|revoke   who may connect (keys.py)
    corral status FILE [--json] [--watch [S]]    what a broker is doing: workers, queues, rates (status.py)
    corral dashboard FILE [--listen HOST:PORT]   a live web page of the broker's workers and tasks (dashboard.py)

Errors a user can fix (a bad connection file, a key name in use) are answered as
argparse answers a bad argument: the usage line, the message, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..config import CACHE_SIZE, HEARTBEAT, LIVENESS, TERM_GRACE, add_placement_arguments
from ..errors import CredentialsError, CurveUnavailableError, InsecureAddressError
from .argtypes import (
    add_broker_arguments,
    connect_address,
    integer,
    listen_address,
    seconds,
    size,
    wall_time,
    writable_directory,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``corral`` command's argument parser."""
    p = argparse.ArgumentParser(prog="corral", description="A concurrent.futures Executor over a ZeroMQ broker.")
    p.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="estimate pi by Monte Carlo on local workers")
    demo.add_argument("--tasks", type=integer(1), default=200, help="number of tasks (default 200)")
    demo.add_argument("--samples", type=integer(1), default=20000, help="random points per task (default 20000)")
    demo.add_argument("--workers", type=integer(1), default=None, help="worker processes (default: usable CPUs)")
    demo.set_defaults(func=_command("demo", "cmd_demo"))

    broker = sub.add_parser("broker", help="run a standalone broker")
    broker.add_argument("--listen", type=listen_address, default="tcp://127.0.0.1:7700",
                        help="address to bind (default %(default)s)")
    broker.add_argument("--insecure", action="store_true",
                        help="plain TCP: no encryption, anyone who reaches the port may connect (warns)")
    broker.add_argument("--keys", metavar="DIR", default=None,
                        help="key directory (default: ~/.corral/broker-PORT, or $CORRAL_HOME/broker-PORT)")
    broker.add_argument("--connection-file", metavar="FILE", default=None,
                        help="where to write the connection file (default: DIR/connection.json)")
    broker.add_argument("--advertise", metavar="ADDRESS", type=connect_address, default=None,
                        help="the address the connection file gives peers (default: --listen's, with this "
                             "machine's name for a wildcard host)")
    broker.add_argument("-v", "--verbose", action="store_true", help="print corral's debugging messages too")
    broker.add_argument("--heartbeat", type=seconds(), default=HEARTBEAT,
                        help="heartbeat interval in seconds (default %(default)s)")
    broker.add_argument("--liveness", type=integer(1), default=LIVENESS,
                        help="heartbeats missed before a peer is lost (default %(default)s)")
    broker.add_argument("--max-memory", type=size, default=None, metavar="SIZE",
                        help="queued tasks' payload kept in memory, e.g. 2GB; the newest beyond it are spilled "
                             "to disk (default: a quarter of this machine's memory)")
    broker.add_argument("--spill-dir", type=writable_directory, default=None, metavar="DIR",
                        help="where spilled payloads go, in a private corral-spill-* directory (default: $TMPDIR)")
    broker.set_defaults(func=_command("broker", "cmd_broker"), parser=broker)

    worker = sub.add_parser("worker", help="run worker processes that serve a broker")
    add_broker_arguments(worker, "worker", "the connection file the broker (or corral keys add-worker) wrote; "
                                           "or -: a launcher's launch document on standard input")
    worker.add_argument("-v", "--verbose", action="store_true", help="print corral's debugging messages too")
    worker.add_argument("--fresh", action="store_true", help="run every task in a brand-new process")
    worker.add_argument("--processes", type=integer(1), default=os.cpu_count() or 1,
                        help="worker processes (default: CPUs)")
    worker.add_argument("--prefetch", type=integer(0), default=None,
                        help="tasks each process holds (default: about 10 ms of work, at least 2)")
    worker.add_argument("--max-tasks-per-child", type=integer(1), default=None,
                        help="replace a task process after N tasks")
    worker.add_argument("--idle-timeout", type=seconds(), default=None,
                        help="a process idle this long leaves for good (seconds)")
    worker.add_argument("--tasks-max", type=integer(1), default=None,
                        help="a process leaves for good after running N tasks")
    worker.add_argument("--wall-time", type=wall_time, default="auto", metavar="SECONDS|auto|none",
                        help="the processes leave for good before this many seconds are up, finishing or handing "
                             "back their tasks; auto (default): the time left to the SLURM or Grid Engine job "
                             "we run in, none outside one")
    worker.add_argument("--broker-timeout", type=seconds(), default=None, metavar="SECONDS",
                        help="a process leaves for good after this long without a word from the broker "
                             "(default: it dials again forever)")
    worker.add_argument("--term-grace", type=seconds(zero=True), default=TERM_GRACE, metavar="SECONDS",
                        help="on SIGTERM, seconds a running task gets to finish before it is cut off and handed "
                             "back (default %(default)s)")
    worker.add_argument("--max-memory", type=size, default=None, help="replace a task process above this RSS, e.g. 2GB")
    add_placement_arguments(worker)
    worker.add_argument("--cache-size", type=size, default=CACHE_SIZE,
                        help="bytes of large objects (Executor.put, large arguments) each worker process keeps, "
                             "e.g. 4GiB (default 1 GiB)")
    worker.add_argument("--no-forward-output", dest="forward_output", action="store_false",
                        help="leave what tasks print on this command's stdout and stderr instead of sending it to "
                             "their client")
    worker.set_defaults(func=_command("worker", "cmd_worker"), parser=worker)

    from .keys import add_parser

    keys = add_parser(sub)
    keys.set_defaults(func=_command("keys", "cmd_keys"), parser=keys)

    from .dashboard import add_parser as add_dashboard

    dashboard = add_dashboard(sub)
    dashboard.set_defaults(func=_command("dashboard", "cmd_dashboard"), parser=dashboard)
    from .status import add_parser as add_status_parser

    status = add_status_parser(sub)
    status.set_defaults(func=_command("status", "cmd_status"), parser=status)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``corral`` command; its exit code."""
    import warnings

    # A warning (a plain TCP link: SecurityWarning) is one line, not a line of our source code.
    warnings.formatwarning = lambda message, category, *_, **__: f"corral: {category.__name__}: {message}\n"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CredentialsError, CurveUnavailableError, InsecureAddressError) as exc:
        getattr(args, "parser", parser).error(str(exc))  # the usage line, the message, exit code 2
    except OSError as exc:  # the system refused: no worker process could start, an address in use...
        print(f"corral {args.command}: {exc}", file=sys.stderr)
        return 1


def _command(module: str, name: str):
    """A subcommand's function, imported when it runs (``corral --help`` imports none of them)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), name)(args)

    return run
