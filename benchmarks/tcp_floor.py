"""The floor of a TCP path through a broker: raw pyzmq, three processes, CurveZMQ off and on.

    python benchmarks/tcp_floor.py [--quick]

What corral's standalone path (client -> ``corral broker`` -> ``corral worker``)
could at best do on this machine, with none of corral's code: a client DEALER
sends to a broker ROUTER on tcp://127.0.0.1, which relays to a worker DEALER
that echoes, and back the same way.  Three numbers each, plaintext and then
CurveZMQ (every link encrypted, keys made for the run; the broker admits any
key, so only the crypto is measured, not a ZAP handler):

1. a no-op round trip, one message at a time (p50 and p99, µs);
2. small messages with up to ``WINDOW`` in flight (messages per second);
3. a 64 MiB payload there and back (MiB/s: size / round-trip time, median);
   and the same over a single connection, a client DEALER and an echoing
   ROUTER with no broker between (``measure_direct``).

``--shapes`` also times the round trip (CurveZMQ) of two chains shaped as
corral's is, still without its code: a worker that relays each message over a
socket pair to a process of its own that echoes (a supervisor and its task
process: four processes), and a client whose caller hands each message to an
I/O thread (a deque and a byte on a pipe) and waits on a condition for the
answer (``measure_shapes``).  What these cost beyond the floor is what corral's
shape costs; the rest of corral's round trip is its own code.  A fourth chain
has the floor's shape (the one a lane over TCP would give corral) and the least
Python any executor must run per task: the caller pickles the call behind a JSON
head and resolves a future from a table; the broker reads each head, keeps the
task under an id of its own and writes a new head; the worker unpickles, calls,
pickles the result.  What it costs beyond the floor is what no pure-Python
executor of this design can save.

Only pyzmq and the standard library.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import multiprocessing
import os
import pickle
import socket
import statistics
import threading
import time
from concurrent.futures import Future

import zmq

WINDOW = 1000  # messages in flight in the pipelined measure
BIG = 64 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(sock: zmq.Socket, curve: dict | None, role: str) -> None:
    """Make ``sock`` a CurveZMQ server (the broker) or client (the others), if ``curve``."""
    if curve is None:
        return
    if role == "server":
        sock.curve_publickey, sock.curve_secretkey = curve["server"]
        sock.curve_server = True
    else:
        sock.curve_serverkey = curve["server"][0]
        sock.curve_publickey, sock.curve_secretkey = curve[role]


def _unbounded(sock: zmq.Socket) -> None:
    """No high-water marks: a ROUTER drops what it cannot queue, and a dropped echo is a hang."""
    sock.sndhwm = sock.rcvhwm = 0


def _socket(ctx: zmq.Context, kind: int, curve: dict | None, role: str) -> zmq.Socket:
    """A socket of ``kind`` with no high-water marks and, with ``curve``, the keys of ``role``."""
    sock = ctx.socket(kind)
    _unbounded(sock)
    _keys(sock, curve, role)
    return sock


def _dial(ctx: zmq.Context, port: int, curve: dict | None, what: str) -> zmq.Socket:
    """The client's DEALER, once a first message has come back through ``what``."""
    client = _socket(ctx, zmq.DEALER, curve, "client")
    client.rcvtimeo = 60_000  # a lost message raises zmq.Again instead of hanging
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(b"x")
    assert client.poll(30_000), f"{what} did not come up"
    client.recv()
    return client


def _broker(port: int, curve: dict | None, bookkeeping: bool = False) -> None:
    """Relay: a message from the worker goes to the client it names; any other to the worker.  With
    ``bookkeeping``, as an executor's broker at the least: a task's JSON head is read and a new one
    written for the worker, under a broker-wide id kept in a table until its result comes back."""
    relay = _Bookkeeping() if bookkeeping else None
    ctx = zmq.Context()
    router = _socket(ctx, zmq.ROUTER, curve, "server")
    router.bind(f"tcp://127.0.0.1:{port}")
    worker, early = None, []
    while True:
        frames = router.recv_multipart(copy=False)
        sender = frames[0].bytes
        if worker is None:  # what the client sends before the worker says hello waits for it
            if frames[1].bytes != b"worker":
                early.append(frames)
                continue
            worker = sender
            for waiting in early:
                router.send_multipart([worker, *waiting], copy=False)
        elif sender == worker:
            router.send_multipart(relay.result(frames) if relay else frames[1:], copy=False)  # [client, ...]
        elif frames[1].bytes == b"stop":
            router.send_multipart([worker, *frames], copy=False)  # the worker stops too
            break
        else:
            router.send_multipart([worker, *(relay.task(frames) if relay else frames)], copy=False)
    router.close(0)
    ctx.term()


class _Bookkeeping:
    """The least an executor's broker does per message: read a JSON head, keep the task in a table under
    an id of its own, and write a new head; the payload is passed on unread.  What has no JSON head (the
    client's first message, which only finds out that the chain is up) is relayed as it is."""

    def __init__(self):
        self.tasks: dict[int, tuple[bytes, int]] = {}
        self.ids = itertools.count()

    def task(self, frames: list) -> list:
        """[client, head, payload] from a client -> [head, payload] for the worker."""
        if not frames[1].bytes.startswith(b"{"):
            return frames
        head = json.loads(frames[1].bytes)
        gid = next(self.ids)
        self.tasks[gid] = (frames[0].bytes, head["id"])
        return [json.dumps({"kind": "task", "id": gid}).encode(), frames[2]]

    def result(self, frames: list) -> list:
        """[worker, head, payload] from the worker -> [client, head, payload] for the task's client."""
        if not frames[1].bytes.startswith(b"{"):
            return frames[1:]
        client, cid = self.tasks.pop(json.loads(frames[1].bytes)["id"])
        return [client, json.dumps({"kind": "result", "id": cid}).encode(), frames[2]]


def _bookkeeping_broker(port: int, curve: dict | None) -> None:
    _broker(port, curve, bookkeeping=True)


def _executing_worker(port: int, curve: dict | None) -> None:
    """The least an executor's worker does per task, in the process that holds the socket (as a lane
    over TCP would): read the JSON head, unpickle the call, call it, pickle its result, answer."""
    ctx = zmq.Context()
    dealer = _socket(ctx, zmq.DEALER, curve, "worker")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"worker")
    while True:
        frames = dealer.recv_multipart()
        if frames[-1] == b"stop":
            break
        if not frames[0].startswith(b"{"):  # [client, probe]: echoed
            dealer.send_multipart(frames)
            continue
        gid = json.loads(frames[0])["id"]
        fn, args, kwargs = pickle.loads(frames[1])
        result = pickle.dumps(fn(*args, **kwargs), pickle.HIGHEST_PROTOCOL)
        dealer.send_multipart([json.dumps({"kind": "result", "id": gid}).encode(), result])
    dealer.close(0)
    ctx.term()


def _worker(port: int, curve: dict | None) -> None:
    """Echo: answer each [client, payload] with itself."""
    ctx = zmq.Context()
    dealer = _socket(ctx, zmq.DEALER, curve, "worker")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"worker")
    _echo(dealer)
    ctx.term()


def _echo(sock: zmq.Socket) -> None:
    """Answer each message on ``sock`` with itself until one ends with "stop"; then close it."""
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[-1].bytes == b"stop":
            break
        sock.send_multipart(frames, copy=False)
    sock.close(0)


def _direct_echo(port: int, curve: dict | None) -> None:
    """One hop: a ROUTER (the CurveZMQ server) that answers each message with itself, until "stop"."""
    ctx = zmq.Context()
    router = _socket(ctx, zmq.ROUTER, curve, "server")
    router.bind(f"tcp://127.0.0.1:{port}")
    _echo(router)
    ctx.term()


def measure_direct(curve: dict | None, big_trips: int) -> dict:
    """A 64 MiB payload there and back over one connection (client DEALER <-> echo ROUTER, two
    processes, no broker): the most one CurveZMQ (or plain) connection carries.  {"mib_s": ...}"""
    port = _free_port()
    proc = multiprocessing.get_context("fork").Process(target=_direct_echo, args=(port, curve))
    proc.start()
    ctx = zmq.Context()
    client = _dial(ctx, port, curve, "the echo process")
    try:
        big = _big_round_trips(client, big_trips)
        client.send(b"stop")
    finally:
        client.close(0)
        ctx.term()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return {"mib_s": (BIG >> 20) / statistics.median(big)}


def _big_round_trips(client: zmq.Socket, trips: int) -> list[float]:
    """Seconds each round trip of a BIG-byte payload took, echoed back."""
    payload = os.urandom(1 << 20) * (BIG >> 20)
    times = []
    for _ in range(trips):
        started = time.perf_counter()
        client.send(payload, copy=False)
        client.recv(copy=False)
        times.append(time.perf_counter() - started)
    return times


def _relaying_worker(port: int, curve: dict | None) -> None:
    """A worker shaped as corral's supervisor: each message's payload goes over a socket pair to a
    process of its own, which echoes it; the answer goes back to the broker with the message's head."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the "task process"
        ours.close()
        while (data := theirs.recv(1 << 16)) and not data.endswith(b"stop"):
            theirs.sendall(data)
        os._exit(0)
    theirs.close()
    ctx = zmq.Context()
    dealer = _socket(ctx, zmq.DEALER, curve, "worker")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"worker")
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    poller.register(ours.fileno(), zmq.POLLIN)
    head: list = []
    while True:
        events = dict(poller.poll())
        if dealer in events:
            frames = dealer.recv_multipart()
            if frames[-1] == b"stop":
                ours.sendall(b"stop")
                break
            head = frames[:-1]
            ours.sendall(frames[-1])
        if ours.fileno() in events:
            dealer.send_multipart([*head, ours.recv(1 << 16)])
    dealer.close(0)
    ctx.term()
    os.waitpid(pid, 0)


def _in_this_thread(client: zmq.Socket):
    """A round trip as the floor makes it: the caller sends and receives itself."""

    def round_trip() -> None:
        client.send(b"x")
        client.recv()

    return round_trip


def _as_an_executor(client: zmq.Socket):
    """A round trip as an executor's caller makes it at the least, in its own thread: a future in a
    table, the call pickled behind a JSON head; the answer's head read, its future found and resolved,
    the result unpickled."""
    futures: dict[int, Future] = {}
    ids = itertools.count()

    def round_trip() -> None:
        cid = next(ids)
        future = futures[cid] = Future()
        call = pickle.dumps((int, (), {}), pickle.HIGHEST_PROTOCOL)
        client.send_multipart([json.dumps({"kind": "submit", "id": cid}).encode(), call])
        head, payload = client.recv_multipart()
        futures.pop(json.loads(head)["id"]).set_result(pickle.loads(payload))
        future.result()

    return round_trip


def _through_an_io_thread(client: zmq.Socket):
    """A round trip as corral's client makes it: the caller queues the message and wakes an I/O thread
    with a byte on a pipe, then waits on a condition until that thread has the answer.  (round trip,
    stop): call the second when done."""
    wake_r, wake_w = os.pipe()
    outbox: collections.deque = collections.deque()
    answers: list = []
    answered = threading.Condition()
    stopping = threading.Event()

    def loop() -> None:
        poller = zmq.Poller()
        poller.register(client, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        while not stopping.is_set():
            events = dict(poller.poll(100))
            if wake_r in events:
                os.read(wake_r, 4096)
                while outbox:
                    client.send(outbox.popleft())
            if client in events:
                while True:
                    try:
                        answer = client.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    with answered:
                        answers.append(answer)
                        answered.notify_all()

    thread = threading.Thread(target=loop)
    thread.start()

    def round_trip() -> None:
        outbox.append(b"x")
        os.write(wake_w, b"!")
        with answered:
            while not answers:
                answered.wait()
            answers.pop()

    def stop() -> None:
        stopping.set()
        thread.join()
        os.close(wake_r)
        os.close(wake_w)

    return round_trip, stop


@contextlib.contextmanager
def _chain(curve: dict | None, worker=_worker, broker=_broker):
    """A fresh ``broker`` and ``worker`` (the relaying and echoing ones by default), each in a process of
    its own, and the client's DEALER to them; on leaving, "stop" goes through and everything is closed."""
    port = _free_port()
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=broker, args=(port, curve)),
             fork.Process(target=worker, args=(port, curve))]
    for p in procs:
        p.start()
    ctx = zmq.Context()
    client = _dial(ctx, port, curve, "the broker or the worker")
    try:
        yield client
        client.send(b"stop")
    finally:
        client.close(0)
        ctx.term()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def _round_trip_times(round_trip, count: int) -> list[float]:
    """Seconds each of ``count`` calls of ``round_trip`` took, after ``count // 10`` to warm up; sorted."""
    for _ in range(count // 10):
        round_trip()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        round_trip()
        times.append(time.perf_counter() - started)
    return sorted(times)


def measure_shapes(curve: dict | None, round_trips: int) -> dict:
    """Round-trip p50 (µs) of the floor's chain and of those shaped as corral's (see the module
    docstring), each through a fresh broker and worker: {"floor": ..., "relaying worker": ...,
    "client with an I/O thread": ..., "an executor's least Python": ...}."""
    found = {}
    for name, broker, worker, client_side in (
        ("floor", _broker, _worker, None),
        ("relaying worker", _broker, _relaying_worker, None),
        ("client with an I/O thread", _broker, _worker, _through_an_io_thread),
        ("an executor's least Python", _bookkeeping_broker, _executing_worker, _as_an_executor),
    ):
        with _chain(curve, worker, broker) as client:
            made = client_side(client) if client_side else _in_this_thread(client)
            round_trip, stop = made if isinstance(made, tuple) else (made, None)
            try:
                found[name] = statistics.median(_round_trip_times(round_trip, round_trips)) * 1e6
            finally:
                if stop is not None:
                    stop()
    return found


def measure(curve: dict | None, round_trips: int, pipelined: int, big_trips: int) -> dict:
    """The three measures through a fresh broker and worker."""
    with _chain(curve) as client:
        times = _round_trip_times(_in_this_thread(client), round_trips)
        started, sent, received = time.perf_counter(), 0, 0
        while received < pipelined:
            while sent < pipelined and sent - received < WINDOW:
                client.send(b"x")
                sent += 1
            client.recv()
            received += 1
        rate = pipelined / (time.perf_counter() - started)
        big = _big_round_trips(client, big_trips)
    return {
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "per_s": rate,
        "mib_s": (BIG >> 20) / statistics.median(big),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts (a few seconds)")
    ap.add_argument("--shapes", action="store_true",
                    help="also the round trip of chains shaped as corral's (a relaying worker, a client's I/O thread)")
    args = ap.parse_args(argv)
    if not zmq.has("curve"):
        ap.error("this libzmq has no CurveZMQ: install a pyzmq wheel (it bundles libsodium)")
    counts = (500, 5_000, 2) if args.quick else (2_000, 20_000, 5)
    curve = {role: zmq.curve_keypair() for role in ("server", "client", "worker")}
    print(f"raw pyzmq {zmq.pyzmq_version()} / libzmq {zmq.zmq_version()}, client -> broker -> worker "
          f"over tcp://127.0.0.1, {os.cpu_count()} CPUs")
    print("| link | round trip p50 (µs) | p99 (µs) | pipelined (msgs/s) | 64 MiB there and back (MiB/s) "
          "| 64 MiB, one connection, no broker (MiB/s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, keys in (("plaintext", None), ("CurveZMQ", curve)):
        r = measure(keys, *counts)
        one = measure_direct(keys, counts[2])
        print(f"| {name} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['per_s']:,.0f} | {r['mib_s']:,.0f} "
              f"| {one['mib_s']:,.0f} |")
    if args.shapes:
        shapes = measure_shapes(curve, counts[0])
        print("\n| CurveZMQ chain | round trip p50 (µs) | / floor |\n|---|---:|---:|")
        for name, p50 in shapes.items():
            print(f"| {name} | {p50:,.0f} | {p50 / shapes['floor']:.2f}x |")


if __name__ == "__main__":
    main()
