"""Launchers: how the executor starts its own workers through a resource manager.

    corral.Executor(launcher=corral.launchers.Slurm(partition="short", walltime="1:00:00"), max_workers=32)

``base.py`` is the interface (launch, status, terminate); one module per resource
manager implements it: ``local.py`` (this machine), ``ssh.py`` (OpenSSH),
``slurm.py`` (sbatch/squeue/scancel), ``sge.py`` (qsub/qstat/qdel).  A third
party's launcher is a ``Launcher`` subclass named in the ``corral.launchers``
entry point group; ``get(name)`` finds it (docs/launchers.md).
"""

from __future__ import annotations

from importlib import import_module

from .base import JobState, JobStatus, Launcher, LaunchFailed, WorkerLaunch

_BUILTIN = {"Local": "local", "SSH": "ssh", "Slurm": "slurm", "SGE": "sge"}
ENTRY_POINTS = "corral.launchers"

__all__ = ["SGE", "SSH", "JobState", "JobStatus", "LaunchFailed", "Launcher", "Local", "Slurm", "WorkerLaunch", "get"]


def __getattr__(name: str):
    # Each launcher is imported on first use: a worker never needs them.
    if name in _BUILTIN:
        return getattr(import_module(f".{_BUILTIN[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get(name: str) -> type[Launcher]:
    """The launcher class called ``name``: a built-in one (``Slurm``, case-insensitive) or one a package
    names in the ``corral.launchers`` entry point group.  ValueError lists those known."""
    from importlib.metadata import entry_points

    for builtin in _BUILTIN:
        if builtin.lower() == name.lower():
            return __getattr__(builtin)
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
    if name in found:
        cls = found[name].load()
        if not (isinstance(cls, type) and issubclass(cls, Launcher)):
            raise TypeError(f"the entry point {name!r} of {ENTRY_POINTS!r} is {cls!r}, not a corral Launcher subclass")
        return cls
    known = ", ".join([*_BUILTIN, *sorted(found)])
    raise ValueError(f"no launcher called {name!r}; known: {known} (a package adds one through the "
                     f"{ENTRY_POINTS!r} entry point group)")
