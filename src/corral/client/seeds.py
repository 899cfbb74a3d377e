"""Numbering an executor's seeded calls, so that each task's random streams have a place.

A seeded task's streams (``corral/seeds.py``) come from its seed and its key:
the number of the ``submit()`` or ``map()`` call that made it, among this
executor's calls with the same seed (its views' too), and for a map the
element's index.  Running the same program again gives every task the same
key, whatever the workers, the chunksize or the retries; two maps with one seed
get different streams.  The key travels in the task's ``seed`` option
(``[seed, n]``, or ``[seed, n, index]`` with a chunk's first index), not in the
pickled call: the broker forwards it, and a retry carries it again.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future

from ..config import check_seed
from ..serialization import Call


class Numbering:
    """An executor's default seed and one counter of calls per seed, shared with its ``options()`` views."""

    def __init__(self, default: int | None):
        self.default = None if default is None else check_seed(default)
        self._counters: dict[int, itertools.count] = {}
        self._lock = threading.Lock()

    def _seed_and_number(self, options: dict | None) -> tuple[dict | None, int | None, int]:
        """``options`` without the user's ``seed``, the seed that applies (None: unseeded), and the
        number of this call among those with that seed."""
        seed = self.default
        if options and "seed" in options:
            options = dict(options)
            seed = options.pop("seed")
        if seed is None:
            return options, None, 0
        with self._lock:
            counter = self._counters.setdefault(seed, itertools.count())
            return options, seed, next(counter)

    def submit(self, options: dict | None) -> dict | None:
        """The options of one ``submit()`` call's task: its ``seed`` option is ``[seed, n]``."""
        if self.default is None and not (options and "seed" in options):
            return options  # unseeded: the ordinary submit
        options, seed, n = self._seed_and_number(options)
        if seed is None:
            return options
        return {**(options or {}), "seed": [seed, n]}

    def map(self, submit_call: Callable[[Call, dict | None], Future], options: dict | None
            ) -> Callable[[Call], Future]:
        """What submits one task (one element, or a chunk) of a ``map()`` call, in the map's order:
        each gets ``[seed, n, index of its first element]``."""
        options, seed, n = self._seed_and_number(options)
        if seed is None:
            return functools.partial(submit_call, options=options)  # no Python frame of ours per task
        position = 0  # of the next element: the map's tasks are submitted in order, by its one consumer

        def submit(call: Call) -> Future:
            nonlocal position
            first = position
            position += 1 if call.chunk is None else len(call.chunk)
            return submit_call(call, {**(options or {}), "seed": [seed, n, first]})

        return submit
