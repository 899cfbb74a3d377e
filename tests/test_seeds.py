"""Reproducible random numbers: a seeded task's streams depend on the seed and its place in the
program only, never on the workers, the chunksize, the kind of worker or a retry.

Every result is compared with what the task gives when run here, in the test's own process, on
the stream its key names (``expected``): the same numbers on every path.
"""

from __future__ import annotations

import random
import sys

import numpy
import pytest

import corral
from corral import seeds
from corral.wire import protocol
from helpers import TIMEOUT
from seeded import dies_once, monte_carlo, same_generator

SEED = 20240613
N = 30  # elements of the map: 5 chunks of 7 with a short last one


def run_here(seed: int, key: tuple, x: int | None = None):
    """``monte_carlo(x)`` (default: the key's last number) here, on the streams of the task with
    ``key`` under ``seed``."""
    state, legacy = random.getstate(), numpy.random.get_state()
    seeds.begin(seed, key)
    try:
        return monte_carlo(key[-1] if x is None else x)
    finally:
        seeds.end()
        random.setstate(state)
        numpy.random.set_state(legacy)


def expected(seed: int, n: int, count: int = N) -> list:
    """The results of the ``n``-th seeded map of ``monte_carlo`` over ``range(count)``."""
    return [run_here(seed, (n, i)) for i in range(count)]


def check_maps(ex: corral.Executor) -> None:
    """Two maps with the executor's seed, chunksize 1 then 7: each as the reference says, and
    every element's draws its own."""
    first = list(ex.map(monte_carlo, range(N), timeout=TIMEOUT))
    second = list(ex.map(monte_carlo, range(N), chunksize=7, timeout=TIMEOUT))
    assert first == expected(SEED, 0)
    assert second == expected(SEED, 1)
    draws = {value[1:] for value in first + second}
    assert len(draws) == 2 * N, "two tasks drew the same numbers"


def test_map_the_same_on_every_kind_of_worker(mode_executor):
    """Lanes, supervised persistent, fresh, spawned task processes, and `corral worker` processes
    of a standalone `corral broker` over CurveZMQ (the remote mode): the same results."""
    check_maps(mode_executor(2, seed=SEED))


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_map_the_same_with_any_number_of_workers(make_executor, workers, fresh):
    check_maps(make_executor(workers, fresh=fresh, seed=SEED))


@pytest.mark.parametrize(("fresh", "chunksize"), [(False, 1), (True, 7)], ids=["persistent", "fresh-chunked"])
def test_map_the_same_after_a_task_process_is_killed(make_executor, tmp_path, fresh, chunksize):
    """Element 11's first run kills its process mid-map; its retry (and, chunked, its chunk's)
    draws what an undisturbed run draws."""
    marker = str(tmp_path / "killed")
    ex = make_executor(2, fresh=fresh, seed=SEED)
    results = list(ex.map(dies_once, range(N), [marker] * N, [11] * N, chunksize=chunksize, timeout=TIMEOUT))
    assert (tmp_path / "killed").exists(), "the task never killed its process"
    assert results == expected(SEED, 0)


def test_submits_are_numbered_in_order_and_views_share_the_count(make_executor):
    ex = make_executor(1, seed=SEED)
    view = ex.options(seed=SEED, retries=1)  # the executor's seed again: the same count
    futures = [ex.submit(monte_carlo, 5), view.submit(monte_carlo, 5), ex.submit(monte_carlo, 5)]
    results = [f.result(TIMEOUT) for f in futures]
    assert results == [run_here(SEED, (n,), 5) for n in range(3)]
    assert results[0] != results[1], "two submits of one call drew the same numbers"
    # A view with another seed counts its own calls, from 0, and its map too.
    other = ex.options(seed=SEED + 1)
    assert other.submit(monte_carlo, 5).result(TIMEOUT) == run_here(SEED + 1, (0,), 5)
    assert list(other.map(monte_carlo, range(4), timeout=TIMEOUT)) == expected(SEED + 1, 1, 4)
    assert run_here(SEED + 1, (0,)) != run_here(SEED, (0,)), "two seeds gave the same stream"


def test_unseeded_tasks_and_rng(make_executor):
    """An unseeded task after a seeded one in the same process is not on that stream; rng() is one
    Generator within a task, and a new unseeded one outside a seeded task."""
    ex = make_executor(1)
    seeded = ex.options(seed=SEED).submit(monte_carlo, 0).result(TIMEOUT)
    unseeded = ex.submit(monte_carlo, 0).result(TIMEOUT)
    assert seeded == run_here(SEED, (0,), 0)
    assert unseeded[2:] != seeded[2:]
    assert ex.options(seed=SEED).submit(same_generator).result(TIMEOUT) is True
    assert ex.submit(same_generator).result(TIMEOUT) is False
    assert isinstance(corral.rng(), numpy.random.Generator) and corral.rng() is not corral.rng()


def test_random_stream_does_not_depend_on_numpy(monkeypatch):
    """With numpy installed or not, the same `random` draws; rng() without numpy says what to do."""
    state = random.getstate()
    try:
        seeds.begin(SEED, (3, 4))
        with_numpy = random.random()
        monkeypatch.setitem(sys.modules, "numpy.random", None)
        monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
        seeds.begin(SEED, (3, 4))
        assert random.random() == with_numpy
        with pytest.raises(ModuleNotFoundError, match="corral.rng\\(\\) needs numpy"):
            corral.rng()
    finally:
        seeds.end()
        random.setstate(state)


def test_bad_seeds_are_refused(make_executor):
    ex = make_executor(1)
    for seed, error in [(-1, ValueError), (2**256, ValueError), (-(10**5000), ValueError), (True, TypeError),
                        (1.0, TypeError), ("7", TypeError)]:
        with pytest.raises(error, match="seed must be an integer from 0 to 2\\*\\*256 - 1"):
            corral.Executor(seed=seed)  # before it starts anything
        with pytest.raises(error, match="seed must be an integer from 0 to 2\\*\\*256 - 1"):
            ex.options(seed=seed)


def test_the_seed_option_on_the_wire():
    assert protocol.valid_seed([0, 0]) and protocol.valid_seed([2**256 - 1, 5, 2**63 - 1])
    for bad in ([1], [1, 2, 3, 4], [1, -2], [True, 1], [1.0, 2], [2**256, 0], "1,2", {"seed": 1}, [1, 2**63]):
        assert not protocol.valid_seed(bad), bad
