"""The scale of one corral broker: many simulated workers, and memory per queued task.

    python benchmarks/broker_scale.py workers --counts 10,100,1000 --tasks 50000 [--curve]
    python benchmarks/broker_scale.py queued --tasks 1000000

``bench.py`` runs both as its metrics ``scale`` and ``queued`` (plain TCP);
``tcp_path.py`` runs ``workers --curve``.  The broker is ``corral broker`` in a
process of its own on a free ``tcp://127.0.0.1`` port: ``--insecure``, or with
``--curve`` CurveZMQ with a key directory made for the run (``--keys DIR``), in
which every simulated worker gets a key of its own (``KeyDir.add``).  A
simulated worker is one DEALER socket that speaks the worker's side of the
protocol as ``corral/worker.py`` does (HELLO with role "worker", READY with
credit, STARTED and then RESULT, with ``credit: 1``, for every TASKS entry,
HEARTBEAT when it has sent nothing for an interval, BYE on SHUTDOWN) but runs
nothing: a RESULT's payload is the task's own frames echoed back.  A few
processes each drive a few hundred such sockets from one poll loop.  The
client is a plain ``corral.Executor(address=...)``.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import resource
import signal
import socket
import time

HEARTBEAT = 1.0  # seconds: the broker's default, so the simulated workers'
SOCKETS_PER_PROCESS = 250
CREDIT = 2  # what a `corral worker` process asks for (--prefetch 2)


def noop():
    return None


def raise_fd_limit() -> None:
    """Every simulated worker is a connection, so a file descriptor at both ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def deadline_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the broker scale measurement ran past its time limit")
    return left


# -- the broker, in its own process -------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def corral_env(**extra) -> dict:
    """The environment for a ``python -m corral.cli`` child: this process's corral first on its path."""
    import corral

    src = os.path.dirname(os.path.dirname(os.path.abspath(corral.__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else ""), **extra}


class BrokerProcess:
    """``corral broker`` on a free tcp://127.0.0.1 port, CurveZMQ (keys in ``key_dir``) or plain.

    ``address`` is what a client passes to ``Executor(address=...)``: the connection file the broker
    wrote (CurveZMQ) or its tcp:// address (plain, ``insecure=True``); ``tcp`` is the address itself.
    ``profile``: run it under cProfile, which writes its stats to that file when it stops.
    """

    def __init__(self, curve: bool, key_dir: str, started: float = 30.0, profile: str | None = None):
        import subprocess
        import sys
        import tempfile

        raise_fd_limit()  # inherited by the child
        self.curve = curve
        self.tcp = f"tcp://127.0.0.1:{free_port()}"
        profiled = [] if profile is None else ["-m", "cProfile", "-o", profile]  # written when it stops
        cmd = [sys.executable, *profiled, "-m", "corral.cli", "broker", "--listen", self.tcp]
        cmd += ["--keys", key_dir] if curve else ["--insecure"]
        self.stderr = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     env=corral_env(CORRAL_HOME=os.path.dirname(key_dir)))
        self.pid = self.proc.pid
        self.address = self.tcp
        end = time.monotonic() + started
        want = "connection file " if curve else "listening on "
        while True:
            self.stderr.seek(0)
            text = self.stderr.read()
            if want in text:
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"corral broker did not start: {text[-500:]!r}")
            time.sleep(0.02)
        if curve:
            self.address = text.split("connection file ", 1)[1].split(" (", 1)[0]

    def stop(self, grace: float = 5.0) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def executor(address: str, curve: bool):
    """A client of a broker started by ``BrokerProcess``."""
    import warnings

    import corral

    if curve:
        return corral.Executor(address=address)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", corral.SecurityWarning)
        return corral.Executor(address=address, insecure=True)


@contextlib.contextmanager
def broker_process(curve: bool = False, key_dir: str | None = None, profile: str | None = None):
    """Yield a ``BrokerProcess`` (``corral broker``); stop it (SIGTERM) on the way out.

    CurveZMQ uses the keys in ``key_dir`` (made if missing); without ``key_dir``, a temporary one.
    """
    import tempfile

    with contextlib.ExitStack() as stack:
        if key_dir is None:
            key_dir = os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="cbench-keys-")), "keys")
        broker = BrokerProcess(curve, key_dir, profile=profile)
        try:
            yield broker
        finally:
            broker.stop()


def stop_processes(procs, grace: float = 5.0) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    end = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.1, end - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


# -- simulated workers -----------------------------------------------------------------


def simulate_workers(address: str, count: int, first: int, curve: tuple | None = None) -> None:
    """Drive ``count`` simulated workers from one loop until the broker says SHUTDOWN.

    ``curve``: (the broker's public key, [(public, secret) of each worker]): every socket is a
    CurveZMQ client with a worker key of its own, named ``sim-N`` in the broker's allow-list.
    """
    raise_fd_limit()
    import zmq

    from corral.wire import protocol
    from corral.wire.protocol import Kind, Status

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, count + 64)
    poller = zmq.Poller()
    last_sent = {}
    parent = os.getppid()

    def send(sock, kind, body=None, frames=()):
        sock.send_multipart([protocol.encode(kind, body), *frames], copy=False)
        last_sent[sock] = time.monotonic()

    def handle(sock, msg) -> bool:
        """One message from the broker; False when this worker is done."""
        kind, body = protocol.decode(msg[0].bytes)
        if kind == Kind.TASKS:
            for entry, frames in protocol.split_entries(body, "tasks", protocol.unpack(body, msg[1:]), 3):
                send(sock, Kind.STARTED, {"ids": [entry[0]]})
                result = protocol.result_entry(entry[0], Status.OK, len(frames))
                send(sock, Kind.RESULT, {"results": [result], "credit": 1, "busy": 0.0}, frames)
        elif kind == Kind.CANCEL:  # it holds nothing: every task has already run
            send(sock, Kind.CANCELLED, {"ids": [], "running": body.get("ids", []), "credit": 0})
        elif kind == Kind.SHUTDOWN:
            send(sock, Kind.BYE, {"requeue": []})
            return False
        return True

    host = socket.gethostname()
    for i in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        if curve is not None:
            sock.curve_serverkey = curve[0]
            sock.curve_publickey, sock.curve_secretkey = curve[1][i]
        sock.connect(address)
        hello = {"role": "worker", "name": f"sim-{first + i}", "host": host, "pid": os.getpid(), "fresh": False}
        send(sock, Kind.HELLO, hello)
        send(sock, Kind.READY, {"credit": CREDIT})
        poller.register(sock, zmq.POLLIN)
    live = count
    try:
        while live and os.getppid() == parent:
            for sock, _ in poller.poll(HEARTBEAT * 500):
                while True:
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if not handle(sock, msg):
                        poller.unregister(sock)
                        del last_sent[sock]
                        live -= 1
                        break
            quiet = time.monotonic() - HEARTBEAT
            for sock in [s for s, t in last_sent.items() if t < quiet]:
                send(sock, Kind.HEARTBEAT)
    finally:
        ctx.destroy(linger=1000)


def start_workers(address: str, count: int, first: int, curve: tuple | None = None) -> list:
    """Processes driving simulated workers ``sim-first`` to ``sim-(first+count-1)``; ``curve``:
    (the broker's public key, [(public, secret) of every worker, by number])."""
    ctx = multiprocessing.get_context("spawn")
    nproc = max(1, math.ceil(count / SOCKETS_PER_PROCESS))
    procs = []
    for i in range(nproc):
        share = count // nproc + (i < count % nproc)
        keys = None if curve is None else (curve[0], curve[1][first:first + share])
        proc = ctx.Process(target=simulate_workers, args=(address, share, first, keys), name="corral-sim-workers")
        proc.start()
        procs.append(proc)
        first += share
    return procs


def wait_for_workers(ex, count: int, deadline: float) -> None:
    while True:
        alive = sum(1 for w in ex.summary(deadline_left(deadline)) if w.get("alive", True))
        if alive >= count:
            return
        time.sleep(0.1)


def submit_and_wait(ex, fn, n: int, deadline: float) -> float:
    """Submit ``n`` calls of ``fn`` at once, wait for all; return tasks per second."""
    t0 = time.perf_counter()
    futures = [ex.submit(fn) for _ in range(n)]
    for f in futures:
        f.result(deadline_left(deadline))
    return n / (time.perf_counter() - t0)


def worker_keys(key_dir: str, count: int) -> list[tuple[bytes, bytes]]:
    """(public, secret) of ``count`` worker keys ``sim-0``... added to the allow-list in ``key_dir``."""
    from corral.security.keys import KeyDir

    keys = KeyDir(key_dir)
    return [keys.add("worker", f"sim-{i}") for i in range(count)]


def measure_workers(counts: list[int], tasks: int, fn=noop, seconds: float = 120.0, curve: bool = False) -> dict:
    """Throughput of ``tasks`` no-ops through one broker with each number of simulated workers.

    The workers are added between the steps: first ``counts[0]``, then more up to ``counts[1]``...
    ``curve``: the broker (``corral broker --keys DIR``), the client and every simulated worker
    speak CurveZMQ, each worker with a key of its own; otherwise plain TCP (``--insecure``).
    Returns {"workers": counts, "per_s_w0": ..., "per_s_w1": ..., "keys_s": ...}.
    """
    import tempfile

    raise_fd_limit()
    deadline = time.monotonic() + seconds
    result = {"workers": counts, "tasks": tasks, "curve": curve}
    sims = []
    try:
        with tempfile.TemporaryDirectory(prefix="cbench-keys-") as home:
            key_dir, curve_keys = os.path.join(home, "keys"), None
            if curve:
                from corral.security.keys import KeyDir

                t0 = time.perf_counter()
                pairs = worker_keys(key_dir, max(counts))
                result["keys_s"] = time.perf_counter() - t0
                curve_keys = (KeyDir(key_dir).broker_keys()[0], pairs)
            with broker_process(curve, key_dir) as broker, executor(broker.address, curve) as ex:
                for i, count in enumerate(counts):
                    have = counts[i - 1] if i else 0
                    sims += start_workers(broker.tcp, count - have, have, curve_keys)
                    wait_for_workers(ex, count, deadline)
                    submit_and_wait(ex, fn, min(500, tasks), deadline)  # warm-up
                    result[f"per_s_w{i}"] = submit_and_wait(ex, fn, tasks, deadline)
            # leaving broker_process: SIGTERM, the broker sends SHUTDOWN, the simulated workers leave
        stop_processes(sims)
    finally:
        stop_processes(sims, grace=0)
    return result


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def payload_bytes(fn) -> int | None:
    """Bytes of one task's payload as the client sends it (corral internals; None if they moved)."""
    try:
        from corral import serialization
        from corral.serialization import Call, call_frames

        return sum(len(f) for f in call_frames(Call(fn, ()), serialization.FunctionPickles()))
    except Exception:  # noqa: BLE001 - informative only
        return None


def measure_queued(tasks: int, batch: int = 10_000, fn=noop, seconds: float = 120.0) -> dict:
    """Broker RSS growth per queued no-op, with ``tasks`` queued and no worker to run them."""
    deadline = time.monotonic() + seconds
    with broker_process() as broker:
        pid = broker.pid
        ex = executor(broker.address, False)
        ex.summary(deadline_left(deadline))  # connected and known to the broker
        before = rss(pid)
        futures = []
        t0 = time.perf_counter()
        while len(futures) < tasks:
            futures.extend(ex.submit(fn) for _ in range(min(batch, tasks - len(futures))))
            while ex.summary(deadline_left(deadline)).queued < len(futures):
                time.sleep(0.05)  # (summary() may answer with an earlier reply: ask until it is current)
        submit_s = time.perf_counter() - t0
        grown = rss(pid) - before
        ex.shutdown(wait=False)
    # The broker has gone: within heartbeat × liveness (3 s) every future fails (BrokerLostError)
    # and the client's I/O thread ends.
    for f in futures[-1:]:
        with contextlib.suppress(Exception):
            f.exception(deadline_left(deadline))
    return {"tasks": tasks, "bytes_per_task": grown / tasks, "payload_bytes": payload_bytes(fn),
            "submit_per_s": tasks / submit_s}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("workers", help="throughput with more and more simulated workers")
    w.add_argument("--counts", default="10,100,1000")
    w.add_argument("--tasks", type=int, default=50_000)
    w.add_argument("--curve", action="store_true", help="CurveZMQ on every link, a key per simulated worker")
    q = sub.add_parser("queued", help="broker memory per queued task")
    q.add_argument("--tasks", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if args.what == "workers":
        print(measure_workers([int(c) for c in args.counts.split(",")], args.tasks, seconds=600, curve=args.curve))
    else:
        print(measure_queued(args.tasks, seconds=600))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
