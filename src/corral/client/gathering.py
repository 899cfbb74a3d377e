"""What pickling a task's call meets besides plain values: this executor's futures and Refs.

A future among a task's arguments is a dependency (``dependencies.py``, ``dependents.py``);
a ``corral.Ref`` anywhere in the call, the function's closure too, names a large object
(``refs.py``, ``objects.py``).  The ordinary task holds neither, and its call is pickled
without a gathering: a future or Ref met then raises ``GatheringNeeded`` at once, and
the executor pickles the call again with ``serialization.call_frames`` making its
``Gathering`` this thread's, to which a future's or a Ref's ``__reduce_ex__`` reports
(``serialization.gathering()``).

One object per executor, reused: an executor's submits pickle one at a time (under its
lock); each collector is made for the first future or Ref met.
"""

from __future__ import annotations

from typing import Any

from .. import dependencies
from .objects import Collector, Objects


class Gathering:
    """The futures and Refs met while one call of an executor's is pickled."""

    __slots__ = ("loop", "objects", "arguments", "futures", "refs")

    def __init__(self, loop: Any, objects: Objects):
        self.loop = loop  # the executor's I/O loop: its futures, and only they, may be arguments
        self.objects = objects
        self.reset()

    def reset(self) -> None:
        """Ready for the next call: nothing met yet."""
        self.arguments = False  # True while the call's arguments are pickled (after its function)
        self.futures: dependencies.Collector | None = None
        self.refs: Collector | None = None

    def take(self) -> tuple[dependencies.Collector | None, Collector | None]:
        """What the call met, futures and Refs (None: none); and ready for the next call, holding
        nothing (a Ref kept here would keep its object at the broker)."""
        met = self.futures, self.refs
        self.arguments, self.futures, self.refs = False, None, None  # (``reset``, inline: every task passes here)
        return met

    def reduce_future(self, fut: Any) -> tuple:
        """What a future among the arguments pickles as (``dependencies.reduce_future``)."""
        if self.futures is None:
            self.futures = dependencies.Collector(self.loop)
        return self.futures.reduce(fut)

    def reference(self, ref: Any) -> tuple:
        """What a Ref pickles as (``Ref.__reduce_ex__``)."""
        if self.refs is None:
            self.refs = Collector(self.objects)
        return self.refs.reference(ref)
