"""A standalone broker holds N queued tasks of 1 MiB each with a small memory budget: how it fares.

    python benchmarks/spill.py [--tasks 10000] [--budget 256MiB] [--spill-dir DIR] [--workers 2]

Starts ``corral broker --max-memory BUDGET --spill-dir DIR`` on loopback (CurveZMQ, keys under a
temporary ``CORRAL_HOME``), submits N tasks of 1 MiB each, every one different, with no worker
connected, and waits until the broker has spilled all but the budget to disk; then starts
``corral worker --processes W`` and checks every result (a CRC-32 of the task's bytes).  Prints
the broker's resident memory (sampled every 50 ms, and its peak ``VmHWM``), the disk the spill
used, the times, and whether the spill directory was empty at the end.  It needs about N MiB of
free disk in DIR (check ``df`` first).  It does not touch docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

MiB = 1 << 20


def payload(i: int) -> bytes:
    return i.to_bytes(4, "little") * (MiB // 4)


def status(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def disk_used(path: str) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--budget", default="256MiB")
    p.add_argument("--spill-dir", default=None)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the broker and the files go with us

    os.environ["CORRAL_HOME"] = home = tempfile.mkdtemp(prefix="spill-bench-home-")
    spill_dir = tempfile.mkdtemp(prefix="spill-bench-", dir=args.spill_dir)
    import corral
    from corral.config import parse_size
    from helpers import free_port, start_broker, start_worker, stop

    broker = start_broker(f"tcp://127.0.0.1:{free_port()}", "--max-memory", args.budget, "--spill-dir", spill_dir)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(status(broker.pid, "VmRSS"))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    worker = None
    try:
        ex = corral.Executor(address=broker.connection)
        n = args.tasks
        t0 = time.monotonic()
        futures = [ex.submit(zlib.crc32, payload(i)) for i in range(n)]
        submitted = time.monotonic() - t0
        deadline = time.monotonic() + 3600
        budget_tasks = parse_size(args.budget) // MiB
        while disk_used(spill_dir)[0] < n - budget_tasks - 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        spilled = time.monotonic() - t0
        files, size = disk_used(spill_dir)
        rss_queued = status(broker.pid, "VmRSS")
        intake_peak = status(broker.pid, "VmHWM")
        t1 = time.monotonic()
        worker = start_worker(broker.connection, "--processes", str(args.workers))
        wrong = sum(f.result(timeout=3600) != zlib.crc32(payload(i)) for i, f in enumerate(futures))
        ran = time.monotonic() - t1
        time.sleep(0.5)
        left = disk_used(spill_dir)
        ex.shutdown()
        print(f"tasks {n} x 1 MiB, budget {args.budget}, {args.workers} worker processes, spill dir {spill_dir}")
        print(f"submitted in {submitted:.1f} s; all but the budget on disk after {spilled:.1f} s "
              f"({n / spilled:.0f} MiB/s through the broker to disk)")
        print(f"on disk while queued: {files} files, {size / MiB:.0f} MiB")
        print(f"broker RSS with everything queued: {rss_queued / MiB:.0f} MiB; peak (VmHWM) during the intake: "
              f"{intake_peak / MiB:.0f} MiB; highest sample over the run: {max(samples) / MiB:.0f} MiB; "
              f"peak over the run: {status(broker.pid, 'VmHWM') / MiB:.0f} MiB")
        print(f"ran all {n} (read back from disk) in {ran:.1f} s; wrong results: {wrong}; "
              f"files left afterwards: {left[0]}")
    finally:
        done.set()
        if worker is not None:
            stop(worker)
        stop(broker)
        shutil.rmtree(spill_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
