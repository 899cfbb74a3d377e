"""The ``corral`` command: a thin layer over the library.

    corral demo                                  Monte Carlo pi on local workers
    corral broker --listen tcp://127.0.0.1:7700  a standalone broker
    corral worker tcp://127.0.0.1:7700 [--fresh] [--processes N]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings

from .. import __version__, addresses
from ..config import HEARTBEAT, LIVENESS, WorkerConfig
from ..errors import InsecureAddressError
from ..logs import setup
from .argtypes import connect_address, integer, listen_address, seconds, size


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
    setup(_level(args))
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
QUICK_EXIT_S = 5.0
FIRST_RESTART_DELAY_S = 0.5  # after the first such failure; doubled after each further one
MAX_RESTART_DELAY_S = 30.0


class Restarts:
    """When ``corral worker`` may replace the worker processes that ended, and what to say.

    A process that ended after a long life (or cleanly: idle_timeout) is replaced at once.
    One that failed within QUICK_EXIT_S of its start is replaced after a delay that doubles
    with each such failure in a row, up to MAX_RESTART_DELAY_S, so a worker that cannot
    start costs a few interpreter starts a minute, not five a second forever.  The count
    starts again once a process started after the last failure has lived QUICK_EXIT_S.
    """

    def __init__(self) -> None:
        self.started: dict[int, float] = {}  # pid -> when we started it
        self.failures = 0  # quick failures in a row
        self.last_failure = 0.0
        self.not_before = 0.0  # no restart before this time

    def note_started(self, pids, now: float) -> None:
        """Note when each of ``pids`` started."""
        for pid in pids:
            self.started.setdefault(pid, now)

    def ended(self, pid: int, returncode: int, now: float) -> str | None:
        """Account for a process that ended; the line to print, if it failed."""
        from ..local.pool import exit_words

        lived = now - self.started.pop(pid, now)
        if returncode == 0:
            return None  # it left as asked (idle_timeout): replace it, nothing to report
        if lived >= QUICK_EXIT_S:
            return f"corral worker: worker process {pid} {exit_words(returncode)} after {lived:.0f} s; starting another"
        self.failures += 1
        self.last_failure = now
        delay = min(MAX_RESTART_DELAY_S, FIRST_RESTART_DELAY_S * 2 ** (self.failures - 1))
        self.not_before = max(self.not_before, now + delay)
        times = "once" if self.failures == 1 else f"{self.failures} times in a row"
        return (f"corral worker: worker process {pid} {exit_words(returncode)} {lived:.1f} s after it started "
                f"({times}); starting another in {delay:g} s")

    def due(self, now: float) -> bool:
        """May ended processes be replaced now?"""
        if self.failures and any(t >= self.last_failure and now - t >= QUICK_EXIT_S for t in self.started.values()):
            self.failures = 0  # one started since the last failure lives: the trouble is over
        return now >= self.not_before


def cmd_worker(args: argparse.Namespace) -> int:
    """``corral worker``: keep ``--processes`` worker processes serving the broker until stopped."""
    from ..local.pool import LocalPool, WorkerStartError, refusal

    problem = refusal(args.processes, args.fresh)
    if problem:
        print(f"corral worker: --processes {args.processes:,}: {problem}", file=sys.stderr)
        return 2
    setup(_level(args))
    config = WorkerConfig(fresh=args.fresh, prefetch=args.prefetch, max_tasks=args.max_tasks_per_child,
                          idle_timeout=args.idle_timeout, max_memory=args.max_memory, reconnect=True,
                          log_level=_level(args))
    pool = LocalPool(args.address, args.processes, config)
    restarts = Restarts()
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pool.fill()
    restarts.note_started(pool.procs, time.monotonic())
    # Nothing is known yet about the broker: each worker process says when it has joined it.
    print(f"corral worker: {args.processes} {'fresh' if args.fresh else 'persistent'} "
          f"process(es) waiting for the broker at {args.address}", file=sys.stderr, flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for gone in pool.reap():
                line = restarts.ended(gone.pid, gone.returncode, now)
                if line and not stopping:
                    print(line, file=sys.stderr, flush=True)
            if not stopping and restarts.due(now):
                try:
                    pool.fill()  # replace processes that ended (crash, recycling, idle_timeout)
                except WorkerStartError as exc:  # none left, and the system refuses more: try again later
                    print(f"corral worker: {exc}; trying again", file=sys.stderr, flush=True)
                restarts.note_started(pool.procs, now)
    finally:
        for proc in pool.procs.values():
            proc.terminate()
        pool.stop(grace=5)
    return 0


def _level(args: argparse.Namespace) -> str:
    """The level of corral's messages a command prints on stderr: INFO, or DEBUG with -v."""
    return "DEBUG" if args.verbose else "INFO"


def cmd_demo(args: argparse.Namespace) -> int:
    """``corral demo``."""
    from .demo import run_demo

    run_demo(tasks=args.tasks, samples=args.samples, workers=args.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``corral`` command's argument parser."""
    p = argparse.ArgumentParser(prog="corral", description="A concurrent.futures Executor over a ZeroMQ broker.")
    p.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="estimate pi by Monte Carlo on local workers")
    demo.add_argument("--tasks", type=integer(1), default=200, help="number of tasks (default 200)")
    demo.add_argument("--samples", type=integer(1), default=20000, help="random points per task (default 20000)")
    demo.add_argument("--workers", type=integer(1), default=None, help="worker processes (default: usable CPUs)")
    demo.set_defaults(func=cmd_demo)

    broker = sub.add_parser("broker", help="run a standalone broker")
    broker.add_argument("--listen", type=listen_address, default="tcp://127.0.0.1:7700",
                        help="address to bind (default %(default)s)")
    broker.add_argument("--insecure", action="store_true", help="allow a non-loopback TCP address without encryption")
    broker.add_argument("-v", "--verbose", action="store_true", help="print corral's debugging messages too")
    broker.add_argument("--heartbeat", type=seconds(), default=HEARTBEAT,
                        help="heartbeat interval in seconds (default %(default)s)")
    broker.add_argument("--liveness", type=integer(1), default=LIVENESS,
                        help="heartbeats missed before a peer is lost (default %(default)s)")
    broker.set_defaults(func=cmd_broker)

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
    worker.set_defaults(func=cmd_worker)
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

