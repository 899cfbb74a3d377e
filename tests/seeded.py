"""Tasks for test_seeds.py, in a module of their own: a worker imports it quickly (no pytest).

numpy is imported here, at module level, as a program that uses numpy's global state must:
a seeded task seeds that state only if numpy is imported before the task runs.
"""

from __future__ import annotations

import os
import random
import signal

import numpy

import corral

SAMPLES = 64


def monte_carlo(x: int) -> tuple:
    """Estimates of pi's quarter from ``random``, ``corral.rng()`` and numpy's global state,
    and a raw draw from each: what a seeded task's streams gave it."""
    hits = sum(random.random() ** 2 + random.random() ** 2 < 1.0 for _ in range(SAMPLES))
    points = corral.rng().random((SAMPLES, 2))
    rng_hits = int(((points**2).sum(axis=1) < 1.0).sum())
    legacy = int(numpy.random.randint(0, 2**31))
    return x, hits, rng_hits, legacy, random.getrandbits(64), int(corral.rng().integers(2**62))


def dies_once(x: int, marker: str, victim: int) -> tuple:
    """``monte_carlo``, except that element ``victim``, the first time it runs, SIGKILLs its own
    process after drawing its numbers (the marker file says it has)."""
    value = monte_carlo(x)
    if x == victim and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def same_generator(_=None) -> bool:
    """Within one task, corral.rng() is one Generator."""
    return corral.rng() is corral.rng()
