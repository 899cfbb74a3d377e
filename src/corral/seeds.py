"""Reproducible random numbers: each seeded task's own streams, and ``corral.rng()``.

A Monte Carlo program must give the same answer however its tasks were spread:
over one worker or many, in chunks of any size, with a worker lost and the
task run again.  So a task's random numbers come only from the seed the user
gave and the task's place in the program (which seeded ``submit()`` or ``map()``
call, which element of a map: its key), never from the worker, the chunk or the
attempt.  The client numbers its seeded calls (``client/seeds.py``) and the
seed and key travel in the task's ``seed`` option; the task process calls
``begin`` right before each call of the user's function (each element of a
chunk), after anything a fork did to ``random``, and ``end`` after it.

Every stream is BLAKE2b of the seed and the key, personalised per consumer, so
``random``'s, numpy's global and ``rng()``'s streams are independent of each
other, and ``random``'s does not depend on whether numpy is installed.  This
module imports nothing heavy: an unseeded task never calls into it.
"""

from __future__ import annotations

import sys
from typing import Any

Key = tuple[int, ...]

_task: bytes | None = None  # the running seeded task's identity (``_identity``); None: not in one
_generator: Any = None  # its ``rng()`` Generator, made on first use


def _identity(seed: int, key: Key) -> bytes:
    """The bytes every stream of the task with ``key`` under ``seed`` is derived from."""
    return f"{seed}/{'.'.join(map(str, key))}".encode()


def _stream(identity: bytes, consumer: bytes) -> bytes:
    """32 bytes for one consumer (``random``, numpy's global state, ``rng()``) of a task."""
    import hashlib

    return hashlib.blake2b(identity, digest_size=32, person=consumer).digest()


def keys(option: list, chunk: int | None) -> list[Key]:
    """The keys of a task's calls, from its ``seed`` option ``[seed, n]`` or ``[seed, n, first]``:
    ``(n,)`` or ``(n, first)`` for a single call, ``(n, first + j)`` for element j of a chunk."""
    if chunk is None:
        return [tuple(option[1:])]
    n, first = option[1], option[2] if len(option) > 2 else 0
    return [(n, first + j) for j in range(chunk)]


def begin(seed: int, key: Key) -> None:
    """Seed ``random`` and (if it is imported) numpy's global state for the task with ``key``."""
    global _task, _generator
    import random

    _task, _generator = _identity(seed, key), None
    random.seed(int.from_bytes(_stream(_task, b"corral.random"), "big"))
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # its legacy global state (MT19937), from 8 words of 32 bits; numpy 2 may
        words = _stream(_task, b"corral.numpy")  # import numpy.random only now, on first use
        numpy.random.seed([int.from_bytes(words[i : i + 4], "little") for i in range(0, 32, 4)])


def end() -> None:
    """The seeded call is over: ``rng()`` no longer answers for it."""
    global _task, _generator
    _task = _generator = None


def rng() -> Any:
    """A ``numpy.random.Generator`` on the running task's own stream.

    In a task submitted with a seed (``Executor(seed=...)`` or
    ``options(seed=...)``) the first call makes the task's Generator (PCG64,
    from the seed and the task's place in the program) and later calls within
    the same task return that same Generator, so every draw is reproducible.
    Anywhere else (an unseeded task, the client) it returns a new Generator
    seeded from the operating system's entropy, as ``numpy.random.default_rng()``.
    Raises ModuleNotFoundError if numpy is not installed.
    """
    global _generator
    try:
        import numpy
    except ImportError as exc:
        raise ModuleNotFoundError("corral.rng() needs numpy (pip install numpy); without it, use the random "
                                  "module, which seeded tasks have seeded too", name="numpy") from exc
    if _task is None:
        return numpy.random.default_rng()
    if _generator is None:
        entropy = int.from_bytes(_stream(_task, b"corral.rng"), "big")
        _generator = numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence(entropy)))
    return _generator
