"""Soak: thousands of short tasks while a killer SIGKILLs a worker process every half second.

The killer alternates between task processes (the forks that run user code)
and supervisors (the ``python -m corral.worker`` processes the executor
starts); it only ever kills our own descendants whose command line says
``corral.worker``.  With ``retries=100`` every task must still complete,
exactly once, with the right value.

Prints one summary line (``pytest -s`` shows it) and, if the environment
variable ``CORRAL_SOAK_REPORT`` names a file, writes the figures there as JSON.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import wait

import psutil
import pytest

KILL_SECONDS = 60.0  # how long the killer runs
KILL_EVERY = 0.5
WORKERS = 4
ROUND = 400  # tasks per round; rounds go on until the killer stops
ROUND_TIMEOUT = 60  # one round must finish within this, kills and restarts included


def soak_square(x):
    time.sleep(0.001 + (x % 5) / 1000)  # 1 to 5 ms
    return x, x * x, os.getpid()


def worker_processes() -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Our descendants running corral.worker: (supervisors, task processes)."""
    me = os.getpid()
    supervisors, task_processes = [], []
    for proc in psutil.Process().children(recursive=True):
        try:
            if not any("corral.worker" in part for part in proc.cmdline()):
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.ppid() == me:
                supervisors.append(proc)
            else:
                task_processes.append(proc)
        except psutil.Error:
            continue
    return supervisors, task_processes


class Killer(threading.Thread):
    """SIGKILLs a random supervisor or task process every KILL_EVERY seconds, alternately."""

    def __init__(self, seconds: float):
        super().__init__(name="soak-killer", daemon=True)
        self.seconds = seconds
        self.stop = threading.Event()
        self.kills = Counter()
        self.rng = random.Random(1234)

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        turn = 0
        while not self.stop.wait(KILL_EVERY) and time.monotonic() < end:
            supervisors, task_processes = worker_processes()
            order = [("task_process", task_processes), ("supervisor", supervisors)]
            if turn % 2:
                order.reverse()
            turn += 1
            for kind, candidates in order:  # the other kind if there is none of this one right now
                if candidates and self.kill_one(kind, candidates):
                    break

    def kill_one(self, kind: str, candidates: list[psutil.Process]) -> bool:
        victim = self.rng.choice(candidates)
        try:
            if not any("corral.worker" in part for part in victim.cmdline()):
                return False
            victim.kill()  # psutil checks that the pid still names the process we found
        except psutil.Error:
            return False
        self.kills[kind] += 1
        return True


@pytest.mark.stress
@pytest.mark.timeout(180)
def test_soak_under_random_sigkills(make_executor):
    import corral

    ex = make_executor(WORKERS)
    view = ex.options(retries=100)
    assert view.submit(soak_square, 3).result(timeout=60)[:2] == (3, 9)  # workers are up

    results: list[tuple[int, tuple]] = []  # (input, what came back), one entry per completed task
    pids: set[int] = set()
    killer = Killer(KILL_SECONDS)
    submitted = 0
    rounds = 0
    start = time.monotonic()
    killer.start()
    try:
        while killer.is_alive():
            inputs = range(submitted, submitted + ROUND)
            submitted += ROUND
            if rounds % 2 == 0:
                futures = []
                for x in inputs:
                    fut = view.submit(soak_square, x)
                    fut.add_done_callback(lambda f, x=x: results.append((x, f.result())))
                    futures.append(fut)
                done, not_done = wait(futures, timeout=ROUND_TIMEOUT)
                assert not not_done, f"round {rounds}: {len(not_done)} tasks still pending after {ROUND_TIMEOUT} s"
                failed = [f.exception() for f in futures if f.exception() is not None]
                assert not failed, f"round {rounds}: {len(failed)} tasks failed, first: {failed[0]!r}"
            else:
                for x, value in zip(inputs, view.map(soak_square, inputs, timeout=ROUND_TIMEOUT)):
                    results.append((x, value))
            rounds += 1
    finally:
        killer.stop.set()
        killer.join(10)
    duration = time.monotonic() - start

    # Callbacks run in the executor's I/O thread, just after the waiters wake: let them land.
    deadline = time.monotonic() + 10
    while len(results) < submitted and time.monotonic() < deadline:
        time.sleep(0.01)

    counts = Counter(x for x, _ in results)
    missing = [x for x in range(submitted) if counts[x] == 0]
    duplicated = [x for x, n in counts.items() if n > 1]
    assert not missing, f"{len(missing)} tasks never completed, e.g. {missing[:10]}"
    assert not duplicated, f"{len(duplicated)} tasks completed more than once, e.g. {duplicated[:10]}"
    assert len(results) == submitted
    wrong = [(x, value) for x, value in results if value[:2] != (x, x * x)]
    assert not wrong, f"{len(wrong)} wrong results, e.g. {wrong[:5]}"
    pids.update(value[2] for _, value in results)

    kills = sum(killer.kills.values())
    assert killer.kills["supervisor"] > 0 and killer.kills["task_process"] > 0, dict(killer.kills)
    assert ex.submit(soak_square, 12).result(timeout=60)[:2] == (12, 144)  # still usable

    report = {
        "kills": kills,
        "supervisor_kills": killer.kills["supervisor"],
        "task_process_kills": killer.kills["task_process"],
        "tasks": submitted,
        "duration_s": round(duration, 2),
        "tasks_per_s": round(submitted / duration, 1),
        "task_processes_seen": len(pids),
        "workers": WORKERS,
        "corral": corral.__version__,
    }
    print(
        f"\nsoak: {kills} kills ({report['supervisor_kills']} supervisors, {report['task_process_kills']} task "
        f"processes), {submitted} tasks in {duration:.1f} s = {report['tasks_per_s']} tasks/s, "
        f"{len(pids)} task processes seen"
    )
    path = os.environ.get("CORRAL_SOAK_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
