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

caught: list = []  # warnings noted since the last task ended: (category, message, filename, lineno)


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` in a task process: note, do not print."""
    caught.append((category, message, filename, lineno))


def install() -> None:
    """In a task process (or a template), before any user code runs."""
    warnings.simplefilter("always")
    warnings.showwarning = _note


def attach(meta: dict) -> None:
    """Move the warnings noted during a task into its outcome's ``meta``."""
    seen: dict = {}
    for category, message, filename, lineno in caught:
        text = str(message)[:MAX_MESSAGE]
        name = f"{getattr(category, '__module__', 'builtins')}:{getattr(category, '__qualname__', 'UserWarning')}"
        key = (name, text, str(filename)[:MAX_PATH], lineno if type(lineno) is int else 0)
        if key in seen:
            seen[key][4] += 1
        elif len(seen) < MAX_WARNINGS:
            seen[key] = [*key, 1]
    caught.clear()
    meta["warnings"] = list(seen.values())
