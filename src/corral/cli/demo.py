"""``corral demo``: estimate pi by Monte Carlo, on persistent then fresh workers."""

from __future__ import annotations

import argparse
import random
import time

from ..client.executor import Executor


def count_inside(seed: int, samples: int) -> int:
    """Points of the unit square that fall inside the quarter circle."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(samples):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


def run_demo(tasks: int = 200, samples: int = 20000, workers: int | None = None) -> None:
    """Estimate pi on persistent, then fresh workers, and print what each run took."""
    for fresh in (False, True):
        kind = "fresh (a new process per task)" if fresh else "persistent"
        n = tasks if not fresh else max(1, tasks // 4)
        start = time.perf_counter()
        with Executor(workers, fresh=fresh) as ex:
            inside = sum(ex.map(count_inside, range(n), [samples] * n))
            elapsed = time.perf_counter() - start
            summary = ex.summary()
        estimate = 4.0 * inside / (n * samples)
        print(f"== {kind} workers: {n} tasks of {samples} samples")
        print(f"pi ~= {estimate:.6f} (error {abs(estimate - 3.141592653589793):.2e})")
        print(f"{n / elapsed:.1f} tasks/s ({elapsed:.2f} s including start-up)")
        print(summary)
        print()


def cmd_demo(args: argparse.Namespace) -> int:
    """``corral demo``."""
    run_demo(tasks=args.tasks, samples=args.samples, workers=args.workers)
    return 0
