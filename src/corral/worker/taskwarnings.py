"""Warnings a task raises, carried to its client in its RESULT's meta (``"warnings"``).

A task process shows no warning itself: ``install`` replaces ``warnings.showwarning``
with one that notes each warning (its category by module and name, its message,
file and line), and sets the filters to "always", so that every warning reaches
it; the client raises each distinct one again once per task
(``client/output.py``), where the user's own filters decide what is shown
(``-W``, ``filterwarnings``, ``pytest.warns``).  Why not print them here too:
the client would show them twice, and on a worker elsewhere nobody reads its
stderr.  A filter the task sets itself still applies in the task.

A task that warns nothing pays one test of an empty list; one that warns in a
loop sends each distinct warning once (at most ``MAX_WARNINGS``, messages cut
at ``MAX_MESSAGE`` characters), with how many times it was raised.
"""

from __future__ import annotations

import warnings

MAX_WARNINGS = 50  # distinct warnings carried per task
MAX_MESSAGE = 4000  # characters of a warning's message carried
MAX_PATH = 500  # characters of its file name

caught: dict = {}  # the warnings noted since the last task ended: (category, message, file, line) -> times


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` in a task process: note, do not print (a loop's thousand warnings: one)."""
    key = (category, str(message)[:MAX_MESSAGE], str(filename)[:MAX_PATH], lineno if type(lineno) is int else 0)
    if key in caught:
        caught[key] += 1
    elif len(caught) < MAX_WARNINGS:
        caught[key] = 1


def install() -> None:
    """In a task process (or a template), before any user code runs."""
    warnings.simplefilter("always")
    warnings.showwarning = _note


def attach(meta: dict) -> None:
    """Move the warnings noted during a task into its outcome's ``meta``."""
    meta["warnings"] = [[f"{getattr(category, '__module__', 'builtins')}:{getattr(category, '__qualname__', '?')}",
                         message, filename, lineno, times]
                        for (category, message, filename, lineno), times in caught.items()]
    caught.clear()
