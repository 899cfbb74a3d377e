"""The ``corral`` command: a thin layer over the library, one module per subcommand.

    corral demo                                  Monte Carlo pi on local workers (demo.py)
    corral broker --listen tcp://127.0.0.1:7700  a standalone broker (broker.py)
    corral worker tcp://127.0.0.1:7700 [--fresh] [--processes N]   worker processes (worker.py)
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..config import HEARTBEAT, LIVENESS
from ..errors import InsecureAddressError
from .argtypes import connect_address, integer, listen_address, seconds, size


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
    broker.add_argument("--insecure", action="store_true", help="allow a non-loopback TCP address without encryption")
    broker.add_argument("-v", "--verbose", action="store_true", help="print corral's debugging messages too")
    broker.add_argument("--heartbeat", type=seconds(), default=HEARTBEAT,
                        help="heartbeat interval in seconds (default %(default)s)")
    broker.add_argument("--liveness", type=integer(1), default=LIVENESS,
                        help="heartbeats missed before a peer is lost (default %(default)s)")
    broker.set_defaults(func=_command("broker", "cmd_broker"))

    worker = sub.add_parser("worker", help="run worker processes that serve a broker")
    worker.add_argument("address", type=connect_address, help="the broker's address, e.g. tcp://127.0.0.1:7700")
    worker.add_argument("-v", "--verbose", action="store_true", help="print corral's debugging messages too")
    worker.add_argument("--fresh", action="store_true", help="run every task in a brand-new process")
    worker.add_argument("--processes", type=integer(1), default=os.cpu_count() or 1,
                        help="worker processes (default: CPUs)")
    worker.add_argument("--prefetch", type=integer(0), default=None,
                        help="tasks each process holds (default: about 10 ms of work, at least 2)")
    worker.add_argument("--max-tasks-per-child", type=integer(1), default=None,
                        help="replace a task process after N tasks")
    worker.add_argument("--idle-timeout", type=seconds(), default=None, help="a process idle this long exits (seconds)")
    worker.add_argument("--max-memory", type=size, default=None, help="replace a task process above this RSS, e.g. 2GB")
    worker.set_defaults(func=_command("worker", "cmd_worker"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``corral`` command; its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InsecureAddressError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused: no worker process could start, an address in use...
        print(f"corral {args.command}: {exc}", file=sys.stderr)
        return 1


def _command(module: str, name: str):
    """A subcommand's function, imported when it runs (``corral --help`` imports none of them)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), name)(args)

    return run
