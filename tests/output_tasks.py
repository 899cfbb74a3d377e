"""Tasks for tests/test_output.py, in a module of their own: workers elsewhere import it (the
test adds this directory to their PYTHONPATH), and so does the client, for the warning class."""

from __future__ import annotations

import os
import signal
import sys
import warnings


class TaskWarning(UserWarning):
    """A warning category of this module: the client can import it."""


def chatty(x):
    """A line on stdout, a line on stderr."""
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def echo(x):
    """Say which element this is."""
    print(f"element {x}")
    return x


def last_words():
    """Print, then die by SIGSEGV, with a line that has no newline still in Python's hands."""
    print("last words")
    sys.stdout.write("no newline yet")
    os.kill(os.getpid(), signal.SIGSEGV)


def lines(n: int, width: int = 100):
    """``n`` numbered lines of ``width`` characters on stdout."""
    for i in range(n):
        sys.stdout.write(f"{i:08d}" + "x" * (width - 9) + "\n")
    return n


def warns(times: int):
    """The same warning ``times`` times (once per task in the client), and another one once."""
    for _ in range(times):
        warnings.warn("careful", RuntimeWarning, stacklevel=1)
    warnings.warn("custom", TaskWarning, stacklevel=1)
    return times


def ghost_warning():
    """A warning whose category lives in a module the client cannot import."""
    ghost = type("GhostWarning", (UserWarning,), {"__module__": "no_such_module_for_corral"})
    warnings.warn("boo", ghost, stacklevel=1)
    return 1
