"""Launched workers, timed: cold start, scaling up and down, and the launched path's overhead.

    python benchmarks/launchers.py [--launchers local,ssh,slurm,sge] [--workers 8]
                                   [--ssh-host HOST --ssh-option -F --ssh-option FILE]

For each launcher it reports, in one run:

- cold start: from ``Executor(launcher=...)`` to the first result of ``submit``;
- scale-up 0 -> N: from submitting N long tasks to N workers connected;
- scale-down: from the last result to no worker left, and the part of it that is
  the ``idle_timeout`` it must wait by design;
- overhead: the same CPU-bound map on the launched workers (connected in advance,
  ``min_workers = N``) against the executor's own local workers, as a ratio.

A launcher whose resource manager is not there (no ``sbatch`` answering, no
``--ssh-host``) is skipped, saying why.  Workers dial 127.0.0.1: every launcher here
runs its workers on this machine (SLURM and Grid Engine single-node, ssh to a
loopback sshd), so the figures are the launch path's, not a network's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time

import corral
from corral import launchers

IDLE_TIMEOUT = 2.0  # seconds an idle launched worker waits before it is retired


def spin(n: int) -> int:
    """About 12 ms of pure Python here for n = 200_000."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def make(kind: str, args) -> launchers.Launcher | None:
    if kind == "local":
        return launchers.Local()
    if kind == "ssh":
        if not args.ssh_host:
            return None
        return launchers.SSH([args.ssh_host], ssh_options=args.ssh_option)
    if kind == "slurm":
        return launchers.Slurm() if _answers(["sinfo", "-h"]) else None
    if kind == "sge":
        return launchers.SGE() if _answers(["qstat"]) else None
    raise SystemExit(f"unknown launcher {kind!r}")


def _answers(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_until(predicate, timeout: float) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError
        time.sleep(0.02)
    return time.perf_counter() - start


def measure(kind: str, launcher: launchers.Launcher, n: int, items: int, work: int) -> dict:
    row: dict = {"launcher": kind}
    t0 = time.perf_counter()
    with corral.Executor(launcher=launcher, max_workers=n, idle_timeout=IDLE_TIMEOUT, advertise="127.0.0.1") as ex:
        ex.submit(pow, 2, 2).result(timeout=300)
        row["cold_start_s"] = round(time.perf_counter() - t0, 3)
        wait_until(lambda: ex.summary().launches["workers"] == 0, 120)
        futures = [ex.submit(nap, 3.0 + n * 0.5) for _ in range(n)]
        row["scale_up_s"] = round(wait_until(lambda: ex.summary().launches["workers"] == n, 300), 3)
        for f in futures:
            f.result(timeout=300)
        t2 = time.perf_counter()
        wait_until(lambda: ex.summary().launches["workers"] == 0, 300)
        row["scale_down_s"] = round(time.perf_counter() - t2, 3)
        row["idle_timeout_s"] = IDLE_TIMEOUT
        row["launches"] = ex.summary().launches["launched"]
    with corral.Executor(launcher=launcher_again(kind, launcher), max_workers=n, min_workers=n,
                         advertise="127.0.0.1") as ex:
        wait_until(lambda: ex.summary().launches["workers"] == n, 300)
        t3 = time.perf_counter()
        list(ex.map(spin, [work] * items))
        launched = time.perf_counter() - t3
    with corral.Executor(max_workers=n) as ex:
        list(ex.map(spin, [work] * n))  # the workers are up
        t4 = time.perf_counter()
        list(ex.map(spin, [work] * items))
        local = time.perf_counter() - t4
    row["map_launched_s"] = round(launched, 3)
    row["map_local_s"] = round(local, 3)
    row["overhead_ratio"] = round(launched / local, 3)
    return row


def launcher_again(kind: str, used: launchers.Launcher) -> launchers.Launcher:
    """A fresh launcher of the same kind (an executor closes the launcher it was given)."""
    return _REMAKE[kind]()


_REMAKE: dict = {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--launchers", default="local,ssh,slurm,sge")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--items", type=int, default=400, help="tasks of the CPU-bound map")
    p.add_argument("--work", type=int, default=200_000, help="spin() loop count per task (about 12 ms here)")
    p.add_argument("--ssh-host", default=None)
    p.add_argument("--ssh-option", action="append", default=[])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = []
    for kind in args.launchers.split(","):
        launcher = make(kind, args)
        if launcher is None:
            print(f"{kind}: skipped (its resource manager does not answer here)")
            continue
        _REMAKE[kind] = lambda kind=kind: make(kind, args)
        row = measure(kind, launcher, args.workers, args.items, args.work)
        rows.append(row)
        print(json.dumps(row) if args.json else
              f"{kind:6s} cold start {row['cold_start_s']:6.2f} s   0->{args.workers} {row['scale_up_s']:6.2f} s   "
              f"scale-down {row['scale_down_s']:5.2f} s (idle_timeout {IDLE_TIMEOUT:g} s)   "
              f"map launched/local {row['map_launched_s']:.2f}/{row['map_local_s']:.2f} s = "
              f"{row['overhead_ratio']:.2f}x   launches {row['launches']}", flush=True)


if __name__ == "__main__":
    main()
