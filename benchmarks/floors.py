"""What this machine allows, below any executor's own logic: two floors for bench.py's rows 1 and 6.

    python benchmarks/floors.py

1. A no-op round trip through corral's roles with nothing but the hops, in
   Python: the caller's thread wakes an I/O thread (a pipe), which writes to a
   supervisor process over a socket pair, which writes to a task process; the
   reply comes back the same way and completes a ``Future``.  Printed beside
   ``ProcessPoolExecutor(fork)``'s round trip, measured in the same run, and
   beside the same chain without the I/O thread, without the relay, and
   without both: what each hop costs on this machine.  Whatever corral takes
   above the full chain is its own work per message.  Last, the shortest chain
   with both ends polling instead of sleeping (``poller.Spin``): what waking
   a sleeping process costs.
2. ``os.fork()`` of a process that has imported what a fresh worker's template
   imports, whose child exits at once: the CPU every fresh task process costs
   before it does anything, beside the same for a bare interpreter.

Only the standard library; nothing here is corral's code except the imports of 2.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import statistics
import threading
import time

ROUND_TRIPS = 2000
WARMUP = 200
FORKS = 300


def _echo(sock: socket.socket, spin: bool = False) -> None:
    """The task process: answer every message (``spin``: polling for it, never sleeping)."""
    while data := (_polled(sock) if spin else sock.recv(64)):
        sock.send(data)
    os._exit(0)


def _polled(sock: socket.socket) -> bytes:
    """The next message, polled for with sched_yield() between polls, as poller.Spin does."""
    while True:
        try:
            return sock.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            os.sched_yield()


def _relay(up: socket.socket) -> None:
    """The supervisor: forward to a task process it forks, and back."""
    ours, theirs = socket.socketpair()
    if os.fork() == 0:
        up.close()
        ours.close()
        _echo(theirs)
    theirs.close()
    poller = select.poll()
    poller.register(up, select.POLLIN)
    poller.register(ours, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == up.fileno():
                data = up.recv(64)
                if not data:
                    os._exit(0)
                ours.send(data)
            else:
                up.send(ours.recv(64))


def chain_p50(thread: bool, relay: bool, spin: bool = False) -> float:
    """Median microseconds of a bare round trip: caller [-> I/O thread] [-> relay] -> task process and back.

    ``thread``: the caller hands each message to an I/O thread (a pipe), which
    completes a ``Future`` the caller waits on, as corral's client does.
    ``relay``: a supervisor process stands between, as corral's worker does.
    ``spin``: (alone) both ends poll instead of sleeping.
    """
    from concurrent.futures import Future

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _relay(theirs) if relay else _echo(theirs, spin)
    theirs.close()
    samples = []
    if thread:
        wake_r, wake_w = os.pipe()
        outbox: list[bytes] = []
        waiting: dict = {}

        def io_thread() -> None:
            poller = select.poll()
            poller.register(wake_r, select.POLLIN)
            poller.register(ours, select.POLLIN)
            while True:
                for fd, _ in poller.poll():
                    if fd == wake_r:
                        os.read(wake_r, 64)
                        while outbox:
                            ours.send(outbox.pop())
                    else:
                        data = ours.recv(64)
                        if not data:
                            return
                        waiting.pop(data).set_result(None)

        io = threading.Thread(target=io_thread, daemon=True)
        io.start()
        for _ in range(WARMUP + ROUND_TRIPS):
            t0 = time.perf_counter()
            fut = Future()
            waiting[b"t"] = fut
            outbox.append(b"t")
            os.write(wake_w, b"x")
            fut.result(10)
            samples.append(time.perf_counter() - t0)
    else:
        for _ in range(WARMUP + ROUND_TRIPS):
            t0 = time.perf_counter()
            ours.send(b"t")
            _polled(ours) if spin else ours.recv(64)
            samples.append(time.perf_counter() - t0)
    ours.shutdown(socket.SHUT_RDWR)  # the supervisor and its task process see EOF and exit
    if thread:
        io.join(5)
        os.close(wake_r)
        os.close(wake_w)
    ours.close()
    os.waitpid(pid, 0)
    return statistics.median(samples[WARMUP:]) * 1e6


def noop() -> None:
    return None


def ppe_p50() -> float:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        samples = []
        for _ in range(WARMUP + ROUND_TRIPS):
            t0 = time.perf_counter()
            ex.submit(noop).result(10)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples[WARMUP:]) * 1e6


def fork_exit_ms() -> tuple[float, float]:
    """(wall, CPU of parent and child) milliseconds per fork of this process, child exiting at once."""
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(FORKS):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    wall = (time.perf_counter() - t0) / FORKS * 1e3
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    cpu = sum(
        (a.ru_utime + a.ru_stime) - (b.ru_utime + b.ru_stime)
        for a, b in ((after_children, before_children), (after_self, before_self))
    )
    return wall, cpu / FORKS * 1e3


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def main() -> None:
    wall, cpu = fork_exit_ms()
    print(f"fork + immediate exit, bare interpreter ({_rss_mib():.1f} MiB): {wall:.2f} ms wall, {cpu:.2f} ms CPU",
          flush=True)
    import corral.worker  # noqa: F401 - what a fresh worker's template has imported

    wall, cpu = fork_exit_ms()
    print(f"fork + immediate exit, with a template's imports ({_rss_mib():.1f} MiB): {wall:.2f} ms wall, "
          f"{cpu:.2f} ms CPU", flush=True)
    chains = {
        "caller -> task process": (False, False),
        "caller -> I/O thread -> task process": (True, False),
        "caller -> relay process -> task process": (False, True),
        "caller -> I/O thread -> relay process -> task process (corral's hops)": (True, True),
        "caller -> task process, both polling": (False, False, True),
    }
    print("no-op round trip p50, us (ratio to ProcessPoolExecutor(fork) in the same round):", flush=True)
    for _ in range(3):
        ppe = ppe_p50()
        cells = [f"PPE fork {ppe:.0f}"]
        for name, chain in chains.items():
            p50 = chain_p50(*chain)
            cells.append(f"{name}: {p50:.0f} ({p50 / ppe:.2f}x)")
        print("  " + "; ".join(cells), flush=True)

if __name__ == "__main__":
    main()
