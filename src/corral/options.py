"""Options: per-task options for ``Executor.options(...)``, seconds and size strings.

Task options travel in each task's SUBMIT entry (docs/protocol.md); the
client checks them here so that a mistake raises at the call that made it.
Every option is documented in docs/options.md.
"""

from __future__ import annotations

import math

VALID_OPTIONS = ("retries", "timeout", "retry_on_timeout")


def check_task_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(VALID_OPTIONS))
    if unknown:
        raise TypeError(f"unknown task option(s) {', '.join(unknown)}; valid options: {', '.join(VALID_OPTIONS)}")
    retries = options.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
    timeout = options.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
                                or timeout == float("inf")):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    flag = options.get("retry_on_timeout")
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"retry_on_timeout must be True or False, not {flag!r}")
    return {k: v for k, v in options.items() if v is not None}


_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "T": 1000**4, "TB": 1000**4, "TIB": 1024**4}


def parse_size(value: int | str | None) -> int | None:
    """``max_memory``: an int of bytes, or a string such as "512MB" or "2GiB"."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        unit = text[len(number):]
        try:
            value = int(float(number) * _UNITS[unit])
        except (ValueError, KeyError, OverflowError):  # OverflowError: "inf"
            raise ValueError(f"max_memory {value!r} is not a size; use bytes or a string like '512MB' or '2GiB'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"max_memory must be a positive number of bytes, not {value!r}")
    return value


def seconds_rule(zero: bool = False) -> str:
    """What ``check_seconds`` asks for, in words, for the messages that refuse a value."""
    return f"a finite number of seconds {'>= 0' if zero else '> 0'}"


def check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as float if it is a finite number of seconds > 0 (>= 0 with ``zero``); else ValueError.

    NaN and infinity are refused too: a NaN compares false with everything, so it would
    slip past ``< 0`` and make a timer that never fires.
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        raise ValueError(f"{name} must be {seconds_rule(zero)}, not {value!r}")
    return float(value)
