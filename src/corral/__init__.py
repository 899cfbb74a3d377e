"""corral: a concurrent.futures Executor over a ZeroMQ broker.

    with corral.Executor(max_workers=8) as ex:       # was: ProcessPoolExecutor(8)
        results = list(ex.map(pow, range(100), [2] * 100, chunksize=16))
"""

import logging

from . import errors
from .errors import (
    AddressError,
    CorralError,
    CredentialsError,
    CurveUnavailableError,
    DependencyError,
    InsecureAddressError,
    LaunchError,
    ObjectError,
    ProtocolError,
    SecurityWarning,
    SerializationError,
    TaskTimeoutError,
)
from .refs import Ref
from .reporting import report
from .seeds import rng

__version__ = "0.1.0"

# corral's own messages (logs.py) are quiet unless the program configures logging.
logging.getLogger("corral").addHandler(logging.NullHandler())


def __getattr__(name: str):
    # The executor is imported on first use: a worker process (``python -m corral.worker``)
    # imports this package too, and every process it forks is smaller without the client
    # (or the stdlib exceptions that some of the errors subclass, see errors.py).
    if name in ("Executor", "CorralFuture"):
        from .client import executor as client

        return getattr(client, name)
    if name == "progress":  # (client/progress.py: imports tqdm only when a bar is drawn)
        from .client.progress import progress

        return progress
    if name == "TaskInfo":
        from .client.info import TaskInfo

        return TaskInfo
    if name in errors._LAZY:
        return getattr(errors, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "AddressError",
    "BrokerLostError",
    "CorralError",
    "CredentialsError",
    "CurveUnavailableError",
    "DependencyError",
    "DeserializationError",
    "CorralFuture",
    "Executor",
    "InsecureAddressError",
    "LaunchError",
    "ObjectError",
    "ProtocolError",
    "Ref",
    "SecurityWarning",
    "SerializationError",
    "TaskInfo",
    "TaskTimeoutError",
    "WorkerLostError",
    "__version__",
    "progress",
    "report",
    "rng",
]
