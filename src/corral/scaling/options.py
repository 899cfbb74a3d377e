"""``Executor(launcher=...)``'s options, checked where they are given."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..config import check_count, check_seconds

LAUNCH_TIMEOUT = 60.0  # seconds a running launch has to reach the broker
IDLE_TIMEOUT = 60.0  # seconds a launched worker may idle before it is retired (never below min_workers)


@dataclass
class FleetOptions:
    """What the executor's launched workers are and how they scale."""

    launcher: Any
    max_workers: int
    min_workers: int = 0
    idle_timeout: float | None = None
    launch_timeout: float = LAUNCH_TIMEOUT
    advertise: str | None = None
    interface: str | None = None
    wall_time: float | None = None
    tasks_max: int | None = None

    def __post_init__(self) -> None:
        from ..launchers.base import Launcher

        if isinstance(self.launcher, type) and issubclass(self.launcher, Launcher):
            raise TypeError(f"launcher must be a launcher object, not the class: launcher={self.launcher.__name__}()")
        if not isinstance(self.launcher, Launcher):
            raise TypeError(f"launcher must be a corral.launchers.Launcher (Local(), SSH(...), Slurm(...), SGE(...)), "
                            f"not {type(self.launcher).__name__}")
        self.min_workers = check_count("min_workers", self.min_workers, 0)
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})")
        self.idle_timeout = IDLE_TIMEOUT if self.idle_timeout is None else check_seconds("idle_timeout",
                                                                                         self.idle_timeout)
        self.launch_timeout = check_seconds("launch_timeout", self.launch_timeout)
        if self.wall_time is not None:
            self.wall_time = check_seconds("wall_time", self.wall_time)
        if self.tasks_max is not None:
            self.tasks_max = check_count("tasks_max", self.tasks_max, 1)
        for name in ("advertise", "interface"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise TypeError(f"{name} must be a non-empty string (a host name or address; an interface's name)")
        if self.advertise is not None and self.interface is not None:
            raise ValueError("give advertise (the address workers dial) or interface (the network interface "
                             "whose address they dial), not both")

    def worker_command(self, heartbeat: float, liveness: int, worker_args: list[str]) -> tuple[str, ...]:
        """``corral worker -`` for one launched worker process: it leaves when the broker is silent
        for ``heartbeat`` x ``liveness`` seconds (a client that died), and after its lifetime."""
        argv = [self.launcher.python, "-m", "corral", "worker", "-", "--processes", "1",
                "--broker-timeout", repr(heartbeat * liveness), *worker_args]
        if self.wall_time is not None:
            argv += ["--wall-time", repr(self.wall_time)]
        if self.tasks_max is not None:
            argv += ["--tasks-max", str(self.tasks_max)]
        return tuple(argv)


def cwd() -> str | None:
    """The client's working directory, which a launched worker enters where the node has it."""
    try:
        return os.getcwd()
    except OSError:
        return None
