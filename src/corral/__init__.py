"""corral: a concurrent.futures Executor over a ZeroMQ broker.

    with corral.Executor(max_workers=8) as ex:       # was: ProcessPoolExecutor(8)
        results = list(ex.map(simulate, params, chunksize=16))
"""

from .client import CorralFuture, Executor
from .errors import (
    BrokerLostError,
    CorralError,
    DeserializationError,
    InsecureAddressError,
    ProtocolError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)

__version__ = "0.1.0"

__all__ = [
    "BrokerLostError",
    "CorralError",
    "DeserializationError",
    "CorralFuture",
    "Executor",
    "InsecureAddressError",
    "ProtocolError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "__version__",
]
