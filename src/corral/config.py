"""corral's settings: their defaults, and the rules that check them, once.

Every setting a user gives (an ``Executor`` argument, a task option, a command-line
value) is checked here, by the same rule whichever way it comes in, with an error
that names it and says what it may be.  ``WorkerConfig`` is what a worker is told
to be: it turns into the command line of the process that runs it (``argv``) and
back (``from_args``), so that the executor's pool, ``corral worker`` and anything
else that starts workers say it the same way.  ``ExecutorConfig`` checks an
``Executor``'s arguments as ``ProcessPoolExecutor`` does its own, and the rest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .tuning import SPIN
from .wire.protocol import MAX_RETRIES, MAX_SEED

if TYPE_CHECKING:  # argparse is imported by the command line only: an Executor starts sooner without it
    import argparse

HEARTBEAT = 1.0  # seconds between heartbeats (the broker's; clients and workers adopt it)
LIVENESS = 3  # heartbeats a peer may miss before it counts as lost
RETRIES = 2  # how often a task whose process died runs again
CACHE_SIZE = 1 << 30  # bytes of large objects a worker keeps (refs.py), unless --cache-size says otherwise
KILL_GRACE = 2.0  # seconds from SIGTERM to SIGKILL for Future.kill()
TERM_GRACE = 10.0  # seconds a standalone worker's running task gets to finish after SIGTERM (corral worker)
MAX_SPIN = 0.1  # seconds: polling longer than this before sleeping is surely a mistake
TASK_OPTIONS = ("retries", "timeout", "retry_on_timeout", "priority", "resources", "queue", "seed", "after",
                "capture_output")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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


def check_count(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) from ``minimum`` to ``maximum``; else ValueError."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        most = "" if maximum is None else f" and <= {maximum:,}"
        raise ValueError(f"{name} must be an integer >= {minimum}{most}, not {value!r}")
    return value


def check_retries(value: object) -> int:
    """A number of retries: an integer from 0 to MAX_RETRIES (True is not 1)."""
    return check_count("retries", value, 0, MAX_RETRIES)


def check_seed(value: object) -> int:
    """A seed (``Executor(seed=)``, ``options(seed=)``): an integer from 0 to 2**256 - 1 (True is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"seed must be an integer from 0 to 2**256 - 1, not {type(value).__name__} {value!r:.40}")
    if not 0 <= value <= MAX_SEED:
        sign = "negative " if value < 0 else ""
        shown = repr(value) if value.bit_length() < 300 else f"a {sign}{value.bit_length()}-bit integer"
        raise ValueError(f"seed must be an integer from 0 to 2**256 - 1, not {shown:.80}")
    return value


_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "T": 1000**4, "TB": 1000**4, "TIB": 1024**4}


def parse_size(value: int | str | None, name: str = "max_memory") -> int | None:
    """``max_memory`` (or the size called ``name``): an int of bytes, or a string such as "512MB" or "2GiB"."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        unit = text[len(number):]
        try:
            value = int(float(number) * _UNITS[unit])
        except (ValueError, KeyError, OverflowError):  # OverflowError: "inf"
            raise ValueError(f"{name} {value!r} is not a size; use bytes or a string like '512MB' or '2GiB'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive number of bytes, not {value!r}")
    return value


# The same rules as ``argparse`` types, for command lines (``cli/``, ``WorkerConfig.add_arguments``):
# a bad value is answered the way argparse answers any bad argument.


def _bad(message: str) -> Exception:
    from argparse import ArgumentTypeError

    return ArgumentTypeError(message)


def integer(minimum: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise _bad(f"expected an integer >= {minimum}, not {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def seconds(*, zero: bool = False) -> Callable[[str], float]:
    """A ``type=`` for a finite number of seconds > 0 (>= 0 with ``zero``): check_seconds's rule."""

    def parse(text: str) -> float:
        try:
            return check_seconds("seconds", float(text), zero=zero)
        except ValueError:
            raise _bad(f"expected {seconds_rule(zero)}, not {text!r}") from None

    parse.__name__ = "seconds"
    return parse


def size(text: str) -> int:
    """A ``type=`` for a memory size: bytes, or a string such as 512MB or 2GiB (parse_size)."""
    try:
        return parse_size(text)
    except ValueError:
        raise _bad(f"expected a size in bytes or like 512MB or 2GiB, not {text!r}") from None


def check_task_options(options: dict) -> dict:
    """``Executor.options(...)``: known names, valid values; the ones that are not None."""
    unknown = sorted(set(options) - set(TASK_OPTIONS))
    if unknown:
        raise TypeError(f"unknown task option(s) {', '.join(unknown)}; valid options: {', '.join(TASK_OPTIONS)}, "
                        f"and the client's own: progress")
    if options.get("retries") is not None:
        check_retries(options["retries"])
    if options.get("timeout") is not None:
        check_seconds("timeout", options["timeout"])
    flag = options.get("retry_on_timeout")
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"retry_on_timeout must be True or False, not {flag!r}")
    if options.get("seed") is not None:
        check_seed(options["seed"])
    flag = options.get("capture_output")
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"capture_output must be True or False, not {flag!r}")
    if flag is False:
        options = {k: v for k, v in options.items() if k != "capture_output"}  # the default: no option at all
    if options.get("after") is not None:
        from .client.dependents import check_after

        options = {**options, "after": check_after(options["after"])}
    checked = {k: v for k, v in options.items() if v is not None}
    if "priority" in checked or "resources" in checked or "queue" in checked:
        from .placement import check_placement

        checked.update(check_placement(checked))
    return checked


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker is told to be; checked when made, and carried on its command line.

    ``prefetch``: tasks it holds (running and waiting), None: as many as about
    10 ms of work (CREDIT_HORIZON); ``max_tasks``: tasks a task process runs
    before a new one replaces it; ``idle_timeout``: seconds with nothing to do
    before the worker leaves; ``max_memory``: bytes of resident memory after a
    task above which its task process is replaced; ``spawn``: task processes are
    new interpreters, not forks; ``reconnect``: a worker whose broker goes silent
    dials again (standalone) instead of leaving (its executor's, whose client is gone);
    ``keys``: with a tcp:// address, the connection file whose worker key it uses;
    ``insecure``: with a tcp:// address and no keys, plain TCP (``security/credentials.py``).

    A worker's lifetime (``worker/lifetime.py``): ``standalone``: started by ``corral
    worker``, not by an executor's pool, so it leaves for good (exit code LEAVE_EXIT,
    not replaced) when its lifetime is over, and drains on SIGTERM within ``term_grace``
    seconds; ``tasks_max``: tasks it runs before it leaves; ``ends_at``: the hard end of
    its life, in seconds since the epoch (a job's walltime: every process of a ``corral
    worker``, replacements too, shares one end); ``broker_timeout``: seconds without a
    word from the broker after which it leaves (None: it dials again forever).
    """

    fresh: bool = False
    prefetch: int | None = None
    max_tasks: int | None = None
    idle_timeout: float | None = None
    max_memory: int | None = None
    spawn: bool = False
    reconnect: bool = False
    log_level: str | None = None  # print corral's messages from this level up on stderr (None: none)
    keys: str | None = None
    insecure: bool = False
    standalone: bool = False
    tasks_max: int | None = None
    ends_at: float | None = None
    broker_timeout: float | None = None
    term_grace: float = TERM_GRACE
    resources: tuple | None = None  # ((name, amount), ...): what it has for tasks that ask (placement.py)
    queues: tuple | None = None  # the named queues it serves (None: the default one)
    group: str | None = None  # a token its fellow processes share: they share the resources too (corral worker)
    cache_size: int = CACHE_SIZE  # bytes of large objects it keeps (worker/objects.py)
    forward_output: bool = True  # a worker that dials its broker sends what its tasks print to the client

    def __post_init__(self) -> None:
        parse_size(self.cache_size)
        if self.prefetch is not None:
            check_count("prefetch", self.prefetch, 0)
        if self.max_tasks is not None:
            check_count("max_tasks", self.max_tasks, 1)
        if self.idle_timeout is not None:
            check_seconds("idle_timeout", self.idle_timeout)
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if self.tasks_max is not None:
            check_count("tasks_max", self.tasks_max, 1)
        if self.ends_at is not None:
            check_seconds("ends_at", self.ends_at, zero=True)
        if self.broker_timeout is not None:
            check_seconds("broker_timeout", self.broker_timeout)
        check_seconds("term_grace", self.term_grace, zero=True)
        if self.resources is not None or self.queues is not None:
            from .placement import check_worker

            resources, queues = check_worker(self.resources, self.queues)
            object.__setattr__(self, "resources", resources)  # frozen: set once, as checked
            object.__setattr__(self, "queues", queues)
        if self.log_level is not None and self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")

    @property
    def laned(self) -> bool:
        """May its task process take tasks straight from an embedded broker (a lane)?  Only where
        the supervisor need not see each task: not to count them (max_tasks), weigh the process
        after each (max_memory), time its idleness, or hold a fixed number (prefetch)."""
        return not (self.fresh or self.spawn or self.max_tasks or self.max_memory or self.idle_timeout
                    or self.tasks_max or self.ends_at is not None or self.standalone) and self.prefetch is None

    def argv(self) -> list[str]:
        """The options of ``python -m corral.worker`` that say this."""
        args = []
        if self.fresh:
            args.append("--fresh")
        if self.prefetch is not None:
            args += ["--prefetch", str(self.prefetch)]
        if self.max_tasks:
            args += ["--max-tasks", str(self.max_tasks)]
        if self.idle_timeout:
            args += ["--idle-timeout", repr(self.idle_timeout)]
        if self.max_memory:
            args += ["--max-memory", str(self.max_memory)]
        if self.spawn:
            args.append("--spawn")
        if self.reconnect:
            args.append("--reconnect")
        if self.log_level:
            args += ["--log-level", self.log_level]
        if self.keys:  # a path: the secret stays in the file, off the command line
            args += ["--keys", self.keys]
        if self.insecure:
            args.append("--insecure")
        if self.standalone:
            args += ["--standalone", "--term-grace", repr(self.term_grace)]
        if self.tasks_max:
            args += ["--tasks-max", str(self.tasks_max)]
        if self.ends_at is not None:
            args += ["--ends-at", repr(self.ends_at)]
        if self.broker_timeout is not None:
            args += ["--broker-timeout", repr(self.broker_timeout)]
        if self.resources:
            args += ["--resources", ",".join(f"{name}={amount!r}" for name, amount in self.resources)]
        for queue in self.queues or ():
            args += ["--queue", queue]
        if self.group:
            args += ["--group", self.group]
        if self.cache_size != CACHE_SIZE:
            args += ["--cache-size", str(self.cache_size)]
        if not self.forward_output:
            args.append("--no-forward-output")
        return args

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The options ``argv`` writes, for the worker's own parser (checked as they are parsed)."""
        parser.add_argument("--fresh", action="store_true", help="run every task in a brand-new process")
        parser.add_argument("--prefetch", type=integer(0), default=None, help="tasks held: running and waiting")
        parser.add_argument("--max-tasks", type=integer(1), default=None, help="a new task process after N tasks")
        parser.add_argument("--idle-timeout", type=seconds(), default=None, help="leave after this long idle")
        parser.add_argument("--max-memory", type=size, default=None, help="a new task process above this RSS")
        parser.add_argument("--spawn", action="store_true", help="spawn task processes instead of forking them")
        parser.add_argument("--reconnect", action="store_true", help="if the broker goes silent, dial again")
        parser.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="print corral's messages")
        parser.add_argument("--keys", default=None, help="with a tcp:// address: a connection file with a worker key")
        parser.add_argument("--insecure", action="store_true", help="with a tcp:// address: plain TCP")
        parser.add_argument("--standalone", action="store_true",
                            help="started by corral worker: leave for good (exit 5) at the end of its lifetime")
        parser.add_argument("--term-grace", type=seconds(zero=True), default=TERM_GRACE,
                            help="standalone: seconds a running task gets to finish after SIGTERM")
        parser.add_argument("--tasks-max", type=integer(1), default=None, help="leave after N tasks")
        parser.add_argument("--ends-at", type=seconds(zero=True), default=None,
                            help="the hard end of its life, in seconds since the epoch")
        parser.add_argument("--broker-timeout", type=seconds(), default=None,
                            help="leave after this long without a word from the broker")
        add_placement_arguments(parser)
        parser.add_argument("--group", default=None, help="share --resources with the processes given this token")
        parser.add_argument("--cache-size", type=size, default=CACHE_SIZE, help="bytes of large objects kept")
        parser.add_argument("--no-forward-output", dest="forward_output", action="store_false",
                            help="leave what tasks print on this worker's own stdout and stderr")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerConfig:
        """The configuration ``add_arguments``'s options parsed into."""
        return cls(fresh=args.fresh, prefetch=args.prefetch, max_tasks=args.max_tasks,
                   idle_timeout=args.idle_timeout, max_memory=args.max_memory, spawn=args.spawn,
                   reconnect=args.reconnect, log_level=args.log_level, keys=args.keys, insecure=args.insecure,
                   standalone=args.standalone, tasks_max=args.tasks_max, ends_at=args.ends_at,
                   broker_timeout=args.broker_timeout, term_grace=args.term_grace,
                   resources=args.resources, queues=args.queue, group=args.group, cache_size=args.cache_size,
                   forward_output=args.forward_output)


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--resources`` and ``--queue``: the worker's own parser's and ``corral worker``'s."""
    from .placement import queue_arg, resources_arg

    parser.add_argument("--resources", type=resources_arg, default=None, metavar="NAME=AMOUNT,...",
                        help="what tasks may ask of this worker, e.g. gpu=1,mem=64GB (held while they run)")
    parser.add_argument("--queue", type=queue_arg, action="append", default=None, metavar="NAME",
                        help="serve this named queue (repeatable; default: the queue 'default')")


def usable_cpus() -> int:
    """The CPUs this process may run on: ``max_workers``'s default."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@dataclass
class ExecutorConfig:
    """An ``Executor``'s arguments, checked: ``ProcessPoolExecutor``'s with its errors, then corral's."""

    max_workers: int | None = None
    mp_context: Any = None
    initializer: Any = None
    initargs: tuple = ()
    max_tasks_per_child: int | None = None
    fresh: bool = False
    address: str | None = None
    retries: int = RETRIES
    task_timeout: float | None = None
    prefetch: int | None = None
    idle_timeout: float | None = None
    max_memory: int | str | None = None
    heartbeat: float = HEARTBEAT
    liveness: int = LIVENESS
    kill_grace: float = KILL_GRACE
    spin: float = SPIN
    resources: Any = None  # each local worker's, for tasks that ask (placement.py): sorted (name, amount) pairs
    broker_memory: int | str | None = None  # the embedded broker's budget for queued payloads (broker/spill.py)

    def __post_init__(self) -> None:
        from . import addresses

        if isinstance(self.address, os.PathLike):
            self.address = os.fspath(self.address)
        if self.address is not None and "://" in str(self.address):
            addresses.check(self.address)  # AddressError now, not a ZMQError in the I/O thread
        if self.max_workers is None:
            self.max_workers = usable_cpus()
        elif not isinstance(self.max_workers, int) or isinstance(self.max_workers, bool):
            raise TypeError("max_workers must be an integer")
        elif self.max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError("initializer must be a callable")
        if self.max_tasks_per_child is not None:
            if not isinstance(self.max_tasks_per_child, int) or isinstance(self.max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if self.max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if self.mp_context is not None and not hasattr(self.mp_context, "get_start_method"):
            raise TypeError("mp_context must be a multiprocessing context or None")
        check_retries(self.retries)
        if self.task_timeout is not None:
            check_seconds("task_timeout", self.task_timeout)
        if self.prefetch is not None:
            check_count("prefetch", self.prefetch, 0)
        if self.idle_timeout is not None:
            check_seconds("idle_timeout", self.idle_timeout)
        self.max_memory = parse_size(self.max_memory)
        self.heartbeat = check_seconds("heartbeat", self.heartbeat)
        self.liveness = check_count("liveness", self.liveness, 1)
        self.kill_grace = check_seconds("kill_grace", self.kill_grace, zero=True)
        if isinstance(self.spin, bool) or not isinstance(self.spin, (int, float)) or not 0 <= self.spin <= MAX_SPIN:
            raise ValueError(f"spin must be a number of seconds from 0 to {MAX_SPIN:g}, not {self.spin!r}")
        self.spin = float(self.spin)
        self.fresh = bool(self.fresh) or self.max_tasks_per_child == 1
        if self.resources is not None:
            from .placement import check_worker

            self.resources = check_worker(self.resources, None)[0]
        if self.address is not None and (self.idle_timeout or self.max_memory or self.prefetch is not None
                                         or self.resources):
            raise ValueError(
                "idle_timeout, max_memory, prefetch and resources configure the workers an Executor starts "
                "itself; with address= give them to `corral worker` instead."
            )
        self.broker_memory = parse_size(self.broker_memory, "broker_memory")
        if self.address is not None and self.broker_memory is not None:
            raise ValueError("broker_memory is the executor's own broker's memory budget; with address= the "
                             "broker is elsewhere: start it with `corral broker --max-memory SIZE` instead.")
        if self.address is not None and self.initializer is not None:
            raise ValueError(
                "initializer runs in the workers an Executor starts itself; with address= the "
                "workers belong to the broker. Run your setup inside the task instead."
            )

    @property
    def spawn(self) -> bool:
        """Are local task processes spawned (a ``spawn`` context) rather than forked?"""
        return self.mp_context is not None and self.mp_context.get_start_method() == "spawn"

    def worker_config(self) -> WorkerConfig:
        """What the executor's own workers are (``prefetch`` counts beyond the task that runs)."""
        return WorkerConfig(
            fresh=self.fresh, prefetch=None if self.prefetch is None else self.prefetch + 1,
            max_tasks=None if self.fresh else self.max_tasks_per_child, idle_timeout=self.idle_timeout,
            max_memory=self.max_memory, spawn=self.spawn, resources=self.resources,
        )
