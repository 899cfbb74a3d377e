"""corral's own messages: ``logging`` loggers named for their role, quiet by default.

``corral.broker``, ``corral.worker``, ``corral.client`` and ``corral.pool`` write
through ``logging``; the package adds a ``NullHandler`` to ``corral``, so that a
program using corral prints nothing of ours unless it configures logging.  The
``corral`` command and the worker processes it starts configure a stderr handler
(``setup``).

A broker or worker logs every malformed message it drops, so that a bug or an
attack is visible; but one attacker sending a hundred thousand of them would write
a hundred thousand lines.  ``Throttle`` lets ``burst`` lines through per
``window`` seconds and counts the rest, then says how many it held back.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable


def logger(role: str) -> logging.Logger:
    """The logger of one of corral's roles: ``corral.<role>``."""
    return logging.getLogger(f"corral.{role}")


def setup(level: str | int = logging.INFO) -> None:
    """Print corral's messages from ``level`` up on stderr (the ``corral`` command, its workers)."""
    root = logging.getLogger("corral")
    if not any(getattr(h, "corral_stderr", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler.corral_stderr = True
        root.addHandler(handler)
    root.setLevel(level)


class Throttle:
    """A log function that passes at most ``burst`` lines per ``window`` seconds."""

    def __init__(self, log: Callable[[str], None], burst: int = 10, window: float = 10.0):
        self.log = log
        self.burst = burst
        self.window = window
        self.started = time.monotonic()
        self.passed = 0
        self.held = 0

    def __call__(self, message: str) -> None:
        self.tick()
        if self.passed < self.burst:
            self.passed += 1
            self.log(message)
        else:
            self.held += 1

    def tick(self) -> None:
        """Start a new window if this one is over, saying how many lines it held back."""
        now = time.monotonic()
        if now - self.started < self.window:
            return
        if self.held:
            self.log(f"... and {self.held} more like that in the last {now - self.started:.0f} s (not shown)")
        self.started, self.passed, self.held = now, 0, 0
