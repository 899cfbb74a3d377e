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

Only pyzmq and the standard library.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import time

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


def _broker(port: int, curve: dict | None) -> None:
    """Relay: a message from the worker goes to the client it names; any other to the worker."""
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
            router.send_multipart(frames[1:], copy=False)  # [client, payload]
        elif frames[1].bytes == b"stop":
            router.send_multipart([worker, *frames], copy=False)  # the worker stops too
            break
        else:
            router.send_multipart([worker, *frames], copy=False)  # [worker, client, payload]
    router.close(0)
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


def measure(curve: dict | None, round_trips: int, pipelined: int, big_trips: int) -> dict:
    """The three measures through a fresh broker and worker."""
    port = _free_port()
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_broker, args=(port, curve)), fork.Process(target=_worker, args=(port, curve))]
    for p in procs:
        p.start()
    ctx = zmq.Context()
    client = _dial(ctx, port, curve, "the broker or the worker")
    try:
        for _ in range(round_trips // 10):  # warm-up
            client.send(b"x")
            client.recv()
        times = []
        for _ in range(round_trips):
            started = time.perf_counter()
            client.send(b"x")
            client.recv()
            times.append(time.perf_counter() - started)
        times.sort()
        started, sent, received = time.perf_counter(), 0, 0
        while received < pipelined:
            while sent < pipelined and sent - received < WINDOW:
                client.send(b"x")
                sent += 1
            client.recv()
            received += 1
        rate = pipelined / (time.perf_counter() - started)
        big = _big_round_trips(client, big_trips)
        client.send(b"stop")
    finally:
        client.close(0)
        ctx.term()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    return {
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "per_s": rate,
        "mib_s": (BIG >> 20) / statistics.median(big),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts (a few seconds)")
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


if __name__ == "__main__":
    main()
