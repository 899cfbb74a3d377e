"""corral's live dashboard: a web page of workers, tasks, failures, progress and throughput.

``corral dashboard ADDRESS`` serves it for a broker; ``Executor(dashboard=...)`` serves it
for the executor's own broker, with each map's progress too.  It reads only status,
never a task's payload (``source.py``).  The server needs tornado, an optional extra:
``pip install 'corral[dashboard]'``; nothing here imports it until a dashboard starts.
"""

from __future__ import annotations

import hmac
import weakref
from typing import Any

from . import listen

EXTRA = "pip install 'corral[dashboard]'"


def token_for(secret: bytes) -> str:
    """The dashboard's password for a client whose CurveZMQ secret key is ``secret``.

    A keyed hash of the key, so that the password shows nothing of the key; the same
    connection file gives the same password every time, and a new key a new one.
    """
    return hmac.new(secret, b"corral dashboard v1", "sha256").hexdigest()[:32]


class DashboardUnavailableError(ImportError):
    """The dashboard's server library (tornado) is not installed."""


def _server_module():
    try:
        from . import server
    except ImportError as exc:
        if getattr(exc, "name", None) != "tornado" and not str(exc).startswith("No module named 'tornado"):
            raise
        raise DashboardUnavailableError(f"the corral dashboard needs tornado, not installed here: {EXTRA}") from None
    return server


def serve(read, where: str, token: str | None = None, maps: Any = None, period: float = 1.0):
    """A started ``server.Server`` on ``where`` (HOST:PORT) showing what ``read()`` returns."""
    host, port = listen.parse(where)
    return _server_module().Server(read, host, port, token, maps, period).start()


def for_executor(executor: Any, where: bool | str, secret: bytes | None):
    """``Executor(dashboard=where)``'s server, reading ``executor``'s status (through a weak
    reference: an executor dropped without shutdown is not kept alive by its dashboard).

    Beyond loopback it asks for the password derived from the client key ``secret``
    (an executor that reached its broker through a connection file); without one it refuses.
    """
    try:
        return _for_executor(executor, where, secret)
    except BaseException:
        executor.shutdown()
        raise


def _for_executor(executor: Any, where: bool | str, secret: bytes | None):
    where = listen.DEFAULT if where is True else where
    host, _ = listen.parse(where)
    token = None
    if not listen.is_loopback(host):
        if secret is None:
            raise ValueError(f"dashboard={where!r} listens beyond loopback, where the page asks for a password made "
                             "from a client key: give address= a connection file, or listen on 127.0.0.1 and reach "
                             "it through an SSH tunnel, or run `corral dashboard FILE --listen ...`")
        token = token_for(secret)
    from .maps import Maps
    from .source import snapshot

    ref = weakref.ref(executor)

    def read() -> dict:
        ex = ref()
        if ex is None:
            raise RuntimeError("the executor is gone")
        return snapshot(ex)

    server = serve(read, where, token, Maps())
    weakref.finalize(executor, server.stop)  # dropped without shutdown(): the page goes with it
    return server
