"""Where a TCP round trip's CPU goes: each process's threads, corral beside its raw pyzmq floor.

    python benchmarks/tcp_threads.py [--trips 3000] [--plain]

A no-op round trip's p50 moves 5-10 % between runs on a small machine; the CPU
each thread spends per round trip moves a few percent, and says where the time
goes, so it is how a change to the TCP path is judged before the p50 is.  For
each chain (``tcp_floor``'s three raw pyzmq processes, client DEALER -> broker
ROUTER -> worker DEALER that echoes; and corral's ``corral broker`` + ``corral
worker --processes 2`` + ``Executor(address=...)``, as ``tcp_path.py`` starts
them), this sends ``--trips`` round trips one at a time after a tenth as many to
warm up, reads every thread's user and system time (``psutil``) before and
after, and prints microseconds per round trip by process and thread: the
process's main thread, ZeroMQ's I/O thread (``ZMQbg/IO``), and any other
(corral's I/O thread in the client, which stands aside while the caller leads).
corral's "worker" is its supervisor, with the task process below it.  CurveZMQ
by default; ``--plain`` measures both without it.  No profiler runs: what is
measured is what the benchmark rows pay.

``--plain --lane-bound`` adds a third column, the bound a lane over TCP (the task
process dialling the broker itself) would approach: the client over TCP to
corral's broker, whose two workers are local and laned, so that their task
processes read tasks and write results on socket pairs to the broker and no
supervisor is on the path.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
import warnings

import psutil
import zmq

import tcp_floor


def noop():
    return None


def _role(proc: psutil.Process, me: int) -> str:
    """Which part of the chain ``proc`` is, from its command line and its parent's."""
    if proc.pid == me:
        return "client"
    try:
        cmd = " ".join(proc.cmdline())
        parent = " ".join(proc.parent().cmdline()) if proc.parent() else ""
    except psutil.Error:
        return "gone"
    if "corral.worker" in cmd:
        return "task process" if "corral.worker" in parent else "worker"
    if "corral.cli worker" in cmd:
        return "corral worker (parent)"
    if "broker" in cmd:
        return "broker"
    return "process"


def _thread_kind(pid: int, tid: int) -> str:
    if tid == pid:
        return "main"
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            name = f.read().strip()
    except OSError:
        return "other"
    return "ZeroMQ I/O" if name.startswith("ZMQbg/IO") else "ZeroMQ reaper" if "Reaper" in name else "other"


def _snapshot(procs: list[psutil.Process]) -> dict:
    times = {}
    for proc in procs:
        try:
            for t in proc.threads():
                times[(proc.pid, t.id)] = t.user_time + t.system_time
        except psutil.Error:
            pass
    return times


def measure(round_trip, trips: int, roles: dict | None = None) -> tuple[float, dict]:
    """p50 (µs) of ``trips`` calls of ``round_trip``, and CPU µs per call by (process role, thread kind)."""
    for _ in range(max(1, trips // 10)):
        round_trip()
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    names = roles or {p.pid: _role(p, me.pid) for p in procs}
    before = _snapshot(procs)
    samples = []
    for _ in range(trips):
        started = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - started)
    after = _snapshot(procs)
    spent: dict = collections.defaultdict(float)
    for (pid, tid), t in after.items():
        spent[(names.get(pid, "process"), _thread_kind(pid, tid))] += (t - before.get((pid, tid), 0.0)) / trips * 1e6
    return statistics.median(samples) * 1e6, {k: v for k, v in spent.items() if v >= 1.0}


def floor(curve: bool, trips: int) -> tuple[float, dict]:
    keys = {role: zmq.curve_keypair() for role in ("server", "client", "worker")} if curve else None
    with tcp_floor._chain(keys) as client:
        procs = sorted(psutil.Process().children(), key=lambda proc: proc.create_time())  # the broker first
        roles = {procs[0].pid: "broker", procs[1].pid: "worker", psutil.Process().pid: "client"}
        return measure(tcp_floor._in_this_thread(client), trips, roles)


def corral(curve: bool, trips: int) -> tuple[float, dict]:
    from tcp_path import CorralPeer

    peer = CorralPeer(curve)
    try:
        ex = peer.ex
        return measure(lambda: ex.submit(noop).result(30), trips)
    finally:
        peer.close()


def _laned_broker(port: int) -> None:
    """(A forked child) corral's broker on plain TCP, serving a pool of two local laned workers."""
    import pickle
    import signal
    import tempfile

    from corral.broker.broker import Broker
    from corral.config import ExecutorConfig
    from corral.local.pool import LocalPool

    with tempfile.TemporaryDirectory(prefix="cbench-lane-") as home:
        bootstrap = os.path.join(home, "bootstrap.pkl")
        with open(bootstrap, "wb") as f:
            pickle.dump((list(sys.path), None), f)
        pool = LocalPool(None, 2, ExecutorConfig(2).worker_config(), bootstrap=bootstrap)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (insecure: loopback, this benchmark's own)
            broker = Broker(f"tcp://127.0.0.1:{port}", insecure=True, pool=pool)
        signal.signal(signal.SIGTERM, lambda *_: setattr(broker, "running", False))
        broker.serve()


def lane_bound(trips: int) -> tuple[float, dict]:
    """What a lane over TCP approaches: the client over plain TCP to corral's broker, whose workers are
    local and laned (the task process reads its tasks and writes its results on a socket pair to the
    broker: no supervisor on the path)."""
    import multiprocessing

    import corral

    port = tcp_floor._free_port()
    proc = multiprocessing.get_context("fork").Process(target=_laned_broker, args=(port,))
    proc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = corral.Executor(address=f"tcp://127.0.0.1:{port}", insecure=True)
        with ex:
            end = time.monotonic() + 60
            while len(ex.summary(30)) < 2:
                if time.monotonic() > end:
                    raise RuntimeError("the laned workers did not start")
                time.sleep(0.05)
            roles = {proc.pid: "broker", psutil.Process().pid: "client"}
            roles.update({p.pid: "task process" for p in psutil.Process(proc.pid).children(recursive=True)
                          if "corral.worker" in " ".join(p.cmdline()) and p.parent().pid != proc.pid})
            roles.update({p.pid: "worker" for p in psutil.Process(proc.pid).children()})
            return measure(lambda: ex.submit(noop).result(30), trips, roles)
    finally:
        proc.terminate()
        proc.join(20)


ORDER = ["client", "broker", "corral worker (parent)", "worker", "task process", "process"]


def report(columns: list[tuple[str, float, dict]]) -> str:
    keys = sorted({k for _, _, spent in columns for k in spent},
                  key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else len(ORDER), k[1]))
    lines = ["| process: thread | " + " | ".join(name for name, _, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for key in keys:
        cells = [f"{spent[key]:,.0f}" if key in spent else "" for _, _, spent in columns]
        lines.append(f"| {key[0]}: {key[1]} | " + " | ".join(cells) + " |")
    lines.append("| **all threads** | " + " | ".join(f"**{sum(s.values()):,.0f}**" for _, _, s in columns) + " |")
    lines.append("| p50 round trip (µs) | " + " | ".join(f"{p50:,.0f}" for _, p50, _ in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trips", type=int, default=3000, help="round trips measured (default: 3000)")
    p.add_argument("--plain", action="store_true", help="without CurveZMQ")
    p.add_argument("--lane-bound", action="store_true",
                   help="(with --plain) a third column: corral's broker serving local laned workers, the bound "
                        "a lane over TCP approaches")
    args = p.parse_args(argv)
    if args.trips < 10:
        p.error("--trips: at least 10")
    if args.lane_bound and not args.plain:
        p.error("--lane-bound: only with --plain (its broker's workers are local, on socket pairs)")
    curve = not args.plain
    label = "CurveZMQ" if curve else "plain TCP"
    columns = [(f"floor, {label}", *floor(curve, args.trips)), (f"corral, {label}", *corral(curve, args.trips))]
    if args.lane_bound:
        columns.append(("corral, laned local workers", *lane_bound(args.trips)))
    print(f"CPU per no-op round trip (µs), {args.trips:,} round trips one at a time; Python "
          f"{sys.version.split()[0]}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}\n")
    print(report(columns))


if __name__ == "__main__":
    main()
