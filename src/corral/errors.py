"""Exception classes of corral's public API.

Each names one failure the caller can act on; the messages say what to do.
They subclass the stdlib exceptions that code written for
``ProcessPoolExecutor`` already catches.
"""

import pickle


class CorralError(Exception):
    """Base class of corral's own errors that are not stdlib subclasses."""


class SerializationError(pickle.PicklingError):
    """A callable, an argument or a result could not be pickled or unpickled.

    Only the future of that task fails; the executor stays usable.  The
    original exception is chained as ``__cause__``.
    """


class TaskTimeoutError(TimeoutError):
    """A task ran longer than its ``timeout`` option; the process running it was killed.

    A subclass of the builtin ``TimeoutError`` (which is also
    ``concurrent.futures.TimeoutError`` from Python 3.11).  Only that task
    fails; it is not run again unless its options say ``retry_on_timeout=True``.
    """


class ProtocolError(CorralError):
    """A message on the wire does not follow docs/protocol.md."""


class AddressError(CorralError, ValueError):
    """An address is not one corral can use (``tcp://HOST:PORT`` or ``ipc://PATH``).

    Raised where the address is given (``Executor(address=)``, the command
    line), not later by a ZeroMQ socket; the message names the address and
    shows one that works.  A ``ValueError`` too, as a bad argument value.
    """


class CredentialsError(CorralError, ValueError):
    """A key directory, a key name or a connection file cannot be used as it is.

    The message names the file or the name and says what to do (``chmod 600``,
    another name, the command that makes the missing key).
    """


class InsecureAddressError(CorralError):
    """A TCP listener or connection was asked for without CurveZMQ keys and without ``insecure``."""


class CurveUnavailableError(CorralError):
    """This pyzmq's libzmq was built without CurveZMQ (libsodium), which TCP links need."""


class LaunchError(CorralError, RuntimeError):
    """No worker could be started to run a task: the executor's launcher failed again and again.

    The message says how the last launch failed, in the resource manager's words
    (an sbatch error, ssh's "Connection refused", a worker that could not reach the
    broker's address).  Only the tasks that were waiting fail; the executor keeps
    trying to launch workers for later ones.  ``Executor.summary().launches`` lists
    every failure.
    """


class DependencyError(CorralError):
    """A task did not run because a task it depends on failed, or was cancelled or killed.

    Its ``__cause__`` is the dependency's own exception (with the worker's traceback),
    or a ``CancelledError``.  Tasks that depend on this one fail the same way in turn.
    """


class ObjectError(CorralError):
    """A task names a large object (a ``corral.Ref``) that its broker no longer holds for this
    executor: the broker restarted, or the object was released.  ``put()`` it again and submit anew.
    """


class SecurityWarning(UserWarning):
    """A link is plain TCP (``insecure``): anyone on the network path can read or forge its messages."""


# The classes below subclass the stdlib's concurrent.futures exceptions, whose module
# imports multiprocessing, logging and more.  They are made when first asked for, so
# that a worker, which raises them only when something fails, does not import all that
# (every page a worker holds is a page its fork of a task process copies).
_LAZY = ("DeserializationError", "WorkerLostError", "BrokerLostError")


def __getattr__(name: str) -> type:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from concurrent.futures import BrokenExecutor
    from concurrent.futures.process import BrokenProcessPool

    class DeserializationError(SerializationError, BrokenProcessPool):
        """A task or a result could not be unpickled.

        Also a ``BrokenProcessPool``, which is what ``ProcessPoolExecutor``
        raises in this case, so code written for it keeps working; unlike there,
        only this future fails.
        """

    class WorkerLostError(BrokenProcessPool):
        """The worker process running a task died before it could reply.

        A subclass of ``BrokenProcessPool`` so that code written for
        ``ProcessPoolExecutor`` catches it; unlike there, only the tasks of the
        dead worker fail and the executor stays usable.
        """

    class BrokerLostError(BrokenExecutor):
        """The broker stopped answering; the futures it held cannot complete."""

    for cls in (DeserializationError, WorkerLostError, BrokerLostError):
        cls.__qualname__ = cls.__name__  # as if defined at module level: pickled by reference
        globals()[cls.__name__] = cls
    return globals()[name]
