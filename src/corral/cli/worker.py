"""``corral worker``: worker processes on this machine that serve a broker, replaced as they end."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ..config import WorkerConfig
from ..logs import setup
from .argtypes import level

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
        from ..worker.containment import exit_words

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
    from ..errors import AddressError
    from ..local.pool import LocalPool, WorkerStartError, refusal
    from ..security.credentials import resolve
    from ..worker.supervisor import REFUSED_EXIT

    # Read and checked here, once: a bad file or a missing key is answered now, not by every process.
    try:
        target = resolve(args.address, "worker", keys=args.keys, insecure=args.insecure)
    except AddressError as exc:  # not a file, nor an address: answered as argparse answers a bad argument
        args.parser.error(f"argument FILE|ADDRESS: {exc}")
    problem = refusal(args.processes, args.fresh)
    if problem:
        print(f"corral worker: --processes {args.processes:,}: {problem}", file=sys.stderr)
        return 2
    setup(level(args))
    config = WorkerConfig(fresh=args.fresh, prefetch=args.prefetch, max_tasks=args.max_tasks_per_child,
                          idle_timeout=args.idle_timeout, max_memory=args.max_memory, reconnect=True,
                          log_level=level(args), keys=args.keys, insecure=args.insecure)
    pool = LocalPool(args.address, args.processes, config)
    restarts = Restarts()
    stopping = False
    code = 0

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pool.fill()
    restarts.note_started(pool.procs, time.monotonic())
    # Nothing is known yet about the broker: each worker process says when it has joined it.
    print(f"corral worker: {args.processes} {'fresh' if args.fresh else 'persistent'} "
          f"process(es) waiting for the broker at {target.address}"
          f"{'' if target.curve is None else f' (CurveZMQ, worker key {target.name})'}", file=sys.stderr, flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for gone in pool.reap():
                if gone.returncode == REFUSED_EXIT and not stopping:  # it said why on stderr
                    print("corral worker: the broker refused this worker's key; stopping (another process "
                          "would be refused too)", file=sys.stderr, flush=True)
                    stopping, code = True, 1
                    break
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
    return code
