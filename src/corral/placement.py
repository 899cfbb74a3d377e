"""The user's words for where and when a task runs: ``priority``, ``resources``, ``queue``, checked.

One set of rules for every way they come in: ``Executor.options(priority=, resources=,
queue=)``, ``Executor(resources=)`` and ``corral worker --resources gpu=1,mem=64GB
--queue NAME``.  A bad value raises TypeError or ValueError that names it and says
what it may be; on a command line, argparse's answer (``resources_arg``, ``queue_arg``).
The broker checks again what arrives on the wire (``broker/demand.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from .wire.protocol import MAX_AMOUNT, MAX_PRIORITY, MAX_QUEUE_NAME, MAX_QUEUES, MAX_RESOURCE_NAME, MAX_RESOURCES

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")
NAME_RULE = "letters, digits, '_', '.', ':' and '-' (not first)"


def check_priority(value: object) -> int:
    """A task's priority: an integer (higher runs first; default 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from {-MAX_PRIORITY:,} to {MAX_PRIORITY:,} "
                         f"(higher runs first), not {value!r}")
    return value


def check_name(what: str, value: object, longest: int) -> str:
    """A resource's or a queue's name."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if not 0 < len(value) <= longest or not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not a name: use 1 to {longest} {NAME_RULE}")
    return value


def check_queue(value: object) -> str:
    """A queue's name, as ``options(queue=)`` or ``corral worker --queue`` gives it."""
    return check_name("queue", value, MAX_QUEUE_NAME)


def amount(name: str, value: object) -> int | float:
    """An amount of a resource: a number > 0, or a size string such as "64GB" (in bytes)."""
    if isinstance(value, str):
        from .config import parse_size

        text = value.strip()
        try:
            value = float(text) if not text[-1:].isalpha() else parse_size(text)
        except ValueError:
            raise ValueError(f"resource {name}={value!r} is not an amount: use a number > 0, or a size such "
                             "as 64GB or 2GiB") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= MAX_AMOUNT):
        raise ValueError(f"resource {name} must be a number > 0 (at most {MAX_AMOUNT:g}), or a size such as "
                         f"64GB, not {value!r}")
    return value


def check_resources(what: str, value: object) -> dict[str, int | float]:
    """A map of resource names to amounts, e.g. ``{"gpu": 1, "mem": "64GB"}``; amounts in numbers."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict of resource names to amounts, e.g. {{'gpu': 1}}, "
                        f"not {type(value).__name__}")
    if len(value) > MAX_RESOURCES:
        raise ValueError(f"{what} names {len(value)} resources; at most {MAX_RESOURCES}")
    return {check_name("a resource's name", name, MAX_RESOURCE_NAME): amount(name, n) for name, n in value.items()}


def parse_resources(text: str) -> dict[str, int | float]:
    """``gpu=1,mem=64GB``: resources as a command line says them."""
    out: dict[str, Any] = {}
    for item in text.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq or not name.strip():
            raise ValueError(f"{item.strip()!r} is not NAME=AMOUNT")
        if name.strip() in out:
            raise ValueError(f"{name.strip()} is named twice")
        out[name.strip()] = value.strip()
    return check_resources("resources", out)


def _argtype(check: Callable[[str], Any], name: str, rule: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        from argparse import ArgumentTypeError

        try:
            return check(text)
        except (TypeError, ValueError) as exc:
            raise ArgumentTypeError(f"{exc}; expected {rule}") from None

    parse.__name__ = name
    return parse


resources_arg = _argtype(parse_resources, "resources", "NAME=AMOUNT[,NAME=AMOUNT...], e.g. gpu=1,mem=64GB")
queue_arg = _argtype(check_queue, "queue", "a queue's name, e.g. gpu")


def check_queues(values: object) -> tuple[str, ...]:
    """The queues a worker serves: one name or more."""
    names = tuple(dict.fromkeys(check_queue(v) for v in values))  # type: ignore[union-attr]
    if not 0 < len(names) <= MAX_QUEUES:
        raise ValueError(f"a worker serves 1 to {MAX_QUEUES} queues, not {len(names)}")
    return names


def check_placement(options: dict) -> dict:
    """``options(priority=, resources=, queue=)`` checked; the values to send (amounts as numbers)."""
    out: dict[str, Any] = {}
    if "priority" in options:
        out["priority"] = check_priority(options["priority"])
    if "resources" in options:
        out["resources"] = check_resources("resources", options["resources"])
    if "queue" in options:
        out["queue"] = check_queue(options["queue"])
    return out


def check_worker(resources: object, queues: object) -> tuple[tuple | None, tuple | None]:
    """A worker's resources (a dict or (name, amount) pairs) and queues, checked: as sorted pairs and names."""
    if resources is not None:
        pairs = resources.items() if isinstance(resources, dict) else resources
        try:
            resources = dict(pairs)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError("resources must be a dict of resource names to amounts, e.g. {'gpu': 1}") from None
        resources = tuple(sorted(check_resources("resources", resources).items())) or None
    if queues is not None:
        if isinstance(queues, str):
            queues = (queues,)
        queues = check_queues(queues)
    return resources, queues
