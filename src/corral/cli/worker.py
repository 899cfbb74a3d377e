"""``corral worker``: worker processes on this machine that serve a broker, replaced as they end."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time

from ..config import WorkerConfig
from ..local.pool import LocalPool
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


DRAIN_SLACK_S = 5.0  # seconds beyond --term-grace that draining processes get before they are killed


def cmd_worker(args: argparse.Namespace) -> int:
    """``corral worker``: keep ``--processes`` worker processes serving the broker until stopped, or
    until every one of them has left for good (its lifetime is over: worker/lifetime.py)."""
    from .. import tempdirs
    from ..errors import AddressError
    from ..local.pool import refusal
    from ..security.credentials import resolve
    from ..wire import shm
    from . import launched

    doc = None
    if args.address == "-":  # a launcher's worker: its keys and setup come on standard input
        if args.keys or args.insecure:
            args.parser.error("argument FILE|ADDRESS: - reads the broker's address and keys on standard input: "
                              "give neither --keys nor --insecure")
        doc = launched.read_document()  # CredentialsError: answered as a bad argument (cli/__init__.py)
        target = launched.target(doc)
    else:
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
                          log_level=level(args), keys=args.keys, insecure=args.insecure, standalone=True,
                          tasks_max=args.tasks_max, ends_at=launched.hard_end(args.wall_time),
                          broker_timeout=args.broker_timeout, term_grace=args.term_grace,
                          resources=args.resources, queues=args.queue,
                          group=secrets.token_hex(8) if args.resources else None,
                          cache_size=args.cache_size, forward_output=args.forward_output)
    # Ours alone (0700): the bootstrap file of a launched worker, and the notes of processes that left;
    # held while we live, so that a later start removes it if we are killed (tempdirs.py).
    tempdirs.sweep_once((shm.root(),))
    private = tempdirs.make()
    try:
        bootstrap = launched.write_bootstrap(doc, private) if doc is not None else None
        pool = LocalPool(target.address if doc is not None else args.address, args.processes, config,
                         bootstrap=bootstrap, env=launched.worker_env(doc) if doc is not None else None,
                         leave_notes=private)
        return _serve(args, config, target, pool, lifeline=doc is not None and doc.lifeline)
    finally:
        tempdirs.remove(private)


def _serve(args: argparse.Namespace, config: WorkerConfig, target, pool, lifeline: bool) -> int:
    """Run ``pool``'s processes: replace those that end, until every one has left for good, we are
    signalled (they drain, then go), or the launcher's lifeline closes (likewise)."""
    from ..local.pool import WorkerStartError
    from ..worker.supervisor import LEAVE_EXIT, REFUSED_EXIT
    from . import launched

    restarts = Restarts()
    stopping: str | None = None  # why we stop: our processes drain, then we exit
    signalled: list[str] = []
    code = 0
    started = pool.size
    left: list[str] = []  # why each process that left for good did

    def stop(signum, frame):
        signalled.append("terminated")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pool.fill()
    restarts.note_started(pool.procs, time.monotonic())
    # Nothing is known yet about the broker: each worker process says when it has joined it.
    ends = "" if config.ends_at is None else f", leaving within {max(0.0, config.ends_at - time.time()):.0f} s"
    print(f"corral worker: {args.processes} {'fresh' if args.fresh else 'persistent'} "
          f"process(es) waiting for the broker at {target.address}"
          f"{'' if target.curve is None else f' (CurveZMQ, worker key {target.name})'}{ends}",
          file=sys.stderr, flush=True)
    drain_until = None
    try:
        while pool.procs or (pool.size and not stopping):
            if lifeline and not stopping and launched.closed():
                signalled.append("lifeline")
            elif not lifeline or stopping:
                time.sleep(0.2)
            now = time.monotonic()
            if signalled and not stopping:
                # Our processes drain (worker/lifetime.py): their running tasks get --term-grace seconds.
                stopping = signalled[0]
                pool.signal_all(signal.SIGUSR1 if stopping == "lifeline" else signal.SIGTERM)
                drain_until = now + config.term_grace + DRAIN_SLACK_S
            if drain_until is not None and now >= drain_until:
                break  # what is left is killed below
            for gone in pool.reap():
                if gone.returncode == LEAVE_EXIT:  # its lifetime is over: not replaced
                    pool.size -= 1
                    left.append(_note(pool.leave_notes, gone.pid))
                    restarts.started.pop(gone.pid, None)
                    continue
                if gone.returncode == REFUSED_EXIT and not stopping:  # it said why on stderr
                    print("corral worker: the broker refused this worker's key; stopping (another process "
                          "would be refused too)", file=sys.stderr, flush=True)
                    stopping, code = "refused", 1
                    pool.signal_all(signal.SIGTERM)  # the others hold nothing: they go at once
                    drain_until = now + DRAIN_SLACK_S
                    continue
                line = restarts.ended(gone.pid, gone.returncode, now)
                if line and not stopping:
                    print(line, file=sys.stderr, flush=True)
            if not stopping and pool.size and restarts.due(now):
                try:
                    pool.fill()  # replace processes that ended (crash, recycling)
                except WorkerStartError as exc:  # none left, and the system refuses more: try again later
                    print(f"corral worker: {exc}; trying again", file=sys.stderr, flush=True)
                restarts.note_started(pool.procs, now)
    finally:
        for proc in pool.procs.values():
            proc.terminate()
        pool.stop(grace=DRAIN_SLACK_S)  # a second SIGTERM: a draining process goes at once
    if left and code == 0 and not pool.size:
        print(f"corral worker: all {started} processes left ({_reasons(left, config)})", file=sys.stderr, flush=True)
    return code


def _note(directory: str | None, pid: int) -> str:
    """Why the process ``pid`` left for good, as it wrote in ``directory`` (worker/main.py)."""
    try:
        with open(os.path.join(directory, str(pid))) as f:
            return f.read().strip() or "unknown"
    except (OSError, TypeError):
        return "unknown"


def _reasons(left: list[str], config: WorkerConfig) -> str:
    """Why processes left, in words: "wall time 60 s reached", or "2 idle timeout, 1 terminated"."""
    from collections import Counter

    from ..worker.lifetime import words

    counts = Counter(left)
    said = [words(reason, config) for reason in counts]
    if len(counts) == 1:
        return said[0]
    return ", ".join(f"{n} {text}" for n, text in zip(counts.values(), said))
