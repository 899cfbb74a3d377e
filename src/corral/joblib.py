"""A joblib parallel backend that runs ``joblib.Parallel`` (and so scikit-learn's ``n_jobs``) on corral.

    import corral.joblib                      # registers the backend "corral"
    with joblib.parallel_config(backend="corral", n_jobs=8):
        search.fit(X, y)                      # GridSearchCV, cross_val_score, any joblib.Parallel

joblib hands the backend batches of calls (``BatchedCalls``); each batch is one corral
task, its result the batch's list of results, and joblib puts them back in order.  With
no ``executor=`` or ``address=`` the backend starts a local ``corral.Executor`` and keeps
it between ``Parallel`` calls, as loky keeps its workers: starting one costs a good
fraction of a second, and scikit-learn makes many short ``Parallel`` calls.  It is shut
down when a call needs another number of workers, after ``idle_timeout`` seconds without
a call, by ``corral.joblib.shutdown()``, or at exit.  See docs/joblib.md.

This module is ``corral.joblib``; with absolute imports, ``import joblib`` below is
joblib itself.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

try:
    import joblib
    from joblib._parallel_backends import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("corral.joblib needs joblib: pip install 'corral[joblib]'") from exc

import corral

NAME = "corral"
IDLE_TIMEOUT = 300.0  # seconds a cached executor waits for the next Parallel call (loky's default too)
ABORT_WAIT = 30.0  # seconds abort_everything waits for killed tasks to be gone

__all__ = ["CorralBackend", "WorkerTraceback", "register", "shutdown"]


class _Cache:
    """The executor the backend starts when given none, kept for the next ``Parallel`` call.

    One at a time: a call that needs another size (or other executor options) replaces it
    when no call is using it, or gets one of its own for the call while one is.  A timer
    shuts it down after ``idle_timeout`` seconds with no call using it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: corral.Executor | None = None
        self.key: tuple | None = None
        self.users = 0
        self.timer: threading.Timer | None = None

    def acquire(self, key: tuple, start: Callable[[], corral.Executor]) -> tuple[corral.Executor, bool]:
        """An executor for ``key`` and whether it is the cached one (else the caller shuts it down)."""
        old = None
        with self.lock:
            self._stop_timer()
            if self.executor is not None and self.key == key and _usable(self.executor):
                self.users += 1
                return self.executor, True
            busy = self.users > 0  # the kept one is another call's, of another kind: this call gets its own
            if not busy:
                old, self.executor, self.key = self.executor, None, None
        if busy:
            return start(), False
        if old is not None:
            old.shutdown(wait=True)
        executor = start()
        with self.lock:
            if self.executor is None:
                self.executor, self.key, self.users = executor, key, 1
                return executor, True
        return executor, False

    def release(self, executor: corral.Executor, idle_timeout: float) -> None:
        """A call is done with the kept executor; the last one starts the idle timer."""
        with self.lock:
            if executor is not self.executor:
                return
            self.users -= 1
            if self.users:
                return
            if self.key is not None:  # kept, for idle_timeout seconds more
                self._stop_timer()
                self.timer = threading.Timer(idle_timeout, self._expire, args=(executor,))
                self.timer.daemon = True
                self.timer.name = "corral-joblib-idle"
                self.timer.start()
                return
            self.executor = None  # shutdown() came while it was in use
        executor.shutdown(wait=True)

    def _expire(self, executor: corral.Executor) -> None:
        with self.lock:
            if executor is not self.executor or self.users:
                return
            self.executor, self.key, self.timer = None, None, None
        executor.shutdown(wait=True)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def shutdown(self) -> None:
        with self.lock:
            self._stop_timer()
            executor, self.executor, self.key = self.executor, None, None
            if executor is not None and self.users:
                self.executor, self.key = executor, None  # in use: the call's release shuts it down
                executor = None
        if executor is not None:
            executor.shutdown(wait=True)


_cache = _Cache()


def _forget_after_fork() -> None:
    """A forked child (a multiprocessing or loky worker running a Parallel call of its own) cannot use
    its parent's executor, whose I/O thread did not come along: it starts its own when it needs one."""
    global _cache
    _cache = _Cache()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _usable(executor: corral.Executor) -> bool:
    """Can the kept executor take work (not shut down, its broker not lost)?"""
    return not executor._shutdown and executor._io.broken is None


def shutdown() -> None:
    """Shut down the executor the backend keeps between calls, now (it restarts when needed).

    A call still using it keeps it until that call ends.  Executors passed in with
    ``executor=`` are never touched.
    """
    _cache.shutdown()


class _Batch:
    """A joblib batch (``BatchedCalls``) as the corral task: unpickling it in the task process
    imports this module, so that ``backend="corral"`` means something there too, and while it runs a
    Parallel call in it that names the backend runs in the task process, not on a pool of its own."""

    __slots__ = ("calls", "threads")
    running = 0  # batches running in this process (a task process; threads of a nested call see it too)

    def __init__(self, calls: Callable[[], Any], threads: int | None = None):
        self.calls = calls
        self.threads = threads  # inner_max_num_threads: the native thread pools' limit, through threadpoolctl

    def __call__(self) -> Any:
        _Batch.running += 1
        try:
            if self.threads is None:
                return self.calls()
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=self.threads):
                return self.calls()
        finally:
            _Batch.running -= 1

    def __reduce__(self) -> tuple:
        return (_Batch, (self.calls, self.threads))


class WorkerTraceback(Exception):
    """The traceback of a task's exception, as text: shown as that exception's cause."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _keep_traceback(exc: BaseException) -> None:
    """Keep the task's traceback of ``exc`` as text, before joblib drops it."""
    if exc.__traceback__ is None or isinstance(exc.__cause__, WorkerTraceback):
        return
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if exc.__cause__ is None:
        exc.__cause__ = WorkerTraceback(text)
    elif hasattr(exc, "add_note"):
        exc.add_note(f"The task's traceback:\n{text}")


class CorralBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` on corral: each batch of calls is one corral task.

    Keyword arguments (``parallel_config(backend="corral", ...)`` passes them on):
        executor: a ``corral.Executor`` to run on; never shut down by the backend.
        address: a broker's connection file or address (as ``corral.Executor(address=)``):
            the backend opens a client executor there, kept like a local one.
        reuse: keep the executor the backend starts between ``Parallel`` calls (default
            True); False starts one for each call and shuts it down when the call ends.
        idle_timeout: seconds a kept executor waits for the next call (default 300).
        executor_options: further keyword arguments for the ``corral.Executor`` the
            backend starts, e.g. ``{"task_timeout": 60}`` or ``{"keys": ...}``.
        initializer, initargs: as joblib's loky backend takes them (and ``Parallel`` too):
            run in each worker process the backend's executor starts, before its tasks.

    ``n_jobs=-1`` means every CPU for a local executor, and every worker process of an
    ``executor=`` or ``address=`` one (at least 2: joblib runs a call sized 1 in the caller).
    """

    default_n_jobs = -1  # under parallel_config(backend="corral"), scikit-learn's n_jobs=None uses every worker
    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    supports_inner_max_num_threads = True  # applied in the task with threadpoolctl (scikit-learn brings it)
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None, *,
                 executor: corral.Executor | None = None, address: str | os.PathLike | None = None,
                 reuse: bool = True, idle_timeout: float = IDLE_TIMEOUT,
                 executor_options: dict[str, Any] | None = None, initializer: Callable[..., Any] | None = None,
                 initargs: tuple = (), **unknown: Any):
        if unknown:  # a misspelt option would otherwise be ignored, and the work go elsewhere than meant
            raise TypeError(f"the corral joblib backend takes no {', '.join(map(repr, sorted(unknown)))}: it takes "
                            "executor=, address=, reuse=, idle_timeout=, initializer=, initargs= and "
                            "executor_options= (corral.Executor's arguments, for an executor the backend starts)")
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        if executor is not None and address is not None:
            raise ValueError("give the corral backend executor= or address=, not both")
        if executor is not None and not isinstance(executor, corral.Executor):
            raise TypeError(f"executor= must be a corral.Executor, not {type(executor).__name__}")
        if executor is not None and (executor_options or initializer is not None):
            raise ValueError("executor_options= and initializer= configure an executor the backend starts; "
                             "with executor= configure that executor instead")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be a number of seconds > 0, not {idle_timeout!r}")
        self._given = executor
        self._address = os.fspath(address) if address is not None else None
        self._reuse = bool(reuse)
        self._idle_timeout = float(idle_timeout)
        self._options = dict(executor_options or {})
        if initializer is not None:  # joblib's own backend arguments: each worker process runs it first
            self._options.update(initializer=initializer, initargs=tuple(initargs))
        self._call_options: dict[str, Any] = {}  # initializer=, initargs= given to Parallel itself
        self._executor: corral.Executor | None = None
        self._cached = False  # is self._executor the cache's (release it), or ours alone (shut it down)?
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self._workers: int | None = None  # worker processes of a remote or given executor, at configure

    # -- how many ----------------------------------------------------------------------

    def _local(self) -> bool:
        """Does the backend start local workers itself (rather than use an executor or a broker)?"""
        return self._given is None and self._address is None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches can run at once: ``n_jobs``, or with ``n_jobs < 0`` all but
        ``-n_jobs - 1`` of the CPUs (local) or of the executor's or broker's worker processes
        (then at least 2, so that joblib does not run the call in the caller)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        n_jobs = int(n_jobs)
        if self._local() and _Batch.running:  # a Parallel call inside a corral task: no pool in the task
            return 1
        if n_jobs > 0:
            return n_jobs
        if self._local():
            return max(joblib.cpu_count() + 1 + n_jobs, 1)
        # At least 2: joblib runs a call whose backend says 1 in the caller, and these workers are
        # where the user asked the work to go (a broker with one worker, or none yet, still runs it).
        return max(self._count_workers() + 1 + n_jobs, 2)

    def _count_workers(self) -> int:
        """Worker processes the executor can run tasks on (asked once per configure)."""
        if self._workers is None:
            executor = self._executor or self._given
            if executor is None:  # address= outside a call (scikit-learn asks how many to split work into)
                self._open()
                try:
                    return self._count_workers()
                finally:
                    self._close()
            if executor._broker is not None:  # its own workers, local or launched: as many as it may have
                self._workers = executor._max_workers
            else:  # a broker elsewhere: the worker processes it has now
                self._workers = len([w for w in executor.summary() if w.get("left") is None])
        return self._workers

    # -- a Parallel call -----------------------------------------------------------------

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **parallel_kwargs: Any) -> int:
        """Find or start the executor for this call; the number of batches to run at once.

        ``Parallel(initializer=, initargs=)`` reach here among joblib's ``parallel_kwargs``
        (loky's memmapping arguments, which corral has no use for, come along too).
        """
        self.parallel = parallel
        self._workers = None
        self._call_options = {}
        if parallel_kwargs.get("initializer") is not None:
            if self._given is not None:
                raise ValueError("Parallel(initializer=) configures an executor the backend starts; "
                                 "with executor= give that executor its initializer instead")
            self._call_options = {"initializer": parallel_kwargs["initializer"],
                                  "initargs": tuple(parallel_kwargs.get("initargs") or ())}
        if self._local():
            n = self.effective_n_jobs(n_jobs)
            if n == 1:  # one process: joblib's loop in this process beats one worker
                raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
            self._open(max_workers=n)
            return n
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._open()
        return self.effective_n_jobs(n_jobs)

    def _open(self, max_workers: int | None = None) -> None:
        """Have ``self._executor`` for this call: the given one, the cached one, or a new one."""
        if self._executor is not None:  # configured twice with no terminate between: give the first back
            self._close()
        if self._given is not None:
            self._given._check_open()
            self._executor = self._given
            return
        kwargs = {**self._options, **self._call_options}
        if self._address is not None:
            kwargs["address"] = self._address
        else:
            kwargs["max_workers"] = max_workers

        def start() -> corral.Executor:
            return corral.Executor(**kwargs)

        if self._reuse:
            key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
            self._executor, self._cached = _cache.acquire(key, start)
        else:
            self._executor, self._cached = start(), False

    def _close(self) -> None:
        """This call is done with ``self._executor``."""
        executor, self._executor = self._executor, None
        if executor is None or executor is self._given:
            return
        if self._cached:
            _cache.release(executor, self._idle_timeout)
        else:
            executor.shutdown(wait=True)

    def submit(self, func: Callable[[], Any], callback: Callable[[Future], Any] | None = None) -> Future:
        """Run one batch as one corral task; joblib's ``callback`` gets its future when it is done."""
        executor = self._executor
        if executor is None:
            raise RuntimeError("the corral backend has no executor: Parallel did not configure it, "
                               "or it was terminated")
        future = executor.submit(_Batch(func, self.inner_max_num_threads))
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit  # the name joblib before 1.5 calls

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def retrieve_result_callback(self, future: Future) -> Any:
        """The batch's list of results, or its exception, as the task raised it.

        joblib drops the traceback of an exception it carries from this callback to the
        caller, so the task's own traceback is kept as text: as the exception's
        ``__cause__`` (as loky and ``ProcessPoolExecutor`` do) or, where the task set a
        cause itself, as a note (Python 3.11+).
        """
        exc = future.exception()  # before raising it here adds this process's frames to its traceback
        if exc is None:
            return future.result()
        _keep_traceback(exc)
        raise exc

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed (or the caller stopped): kill this backend's queued and running tasks.

        Waits until they are gone, so that nothing of the aborted call still runs when
        ``Parallel`` raises.  Other calls' tasks on the same executor are left alone.
        """
        with self._lock:
            pending, self._pending = list(self._pending), set()
        for future in pending:
            if not future.done():
                if hasattr(future, "kill"):
                    future.kill()
                else:
                    future.cancel()
        wait_futures(pending, timeout=ABORT_WAIT)
        self.reset_batch_stats()
        if not ensure_ready:
            self._close()

    def terminate(self) -> None:
        """The ``Parallel`` call is over: give back (or shut down) the executor."""
        with self._lock:
            self._pending = set()
        self._close()
        self.reset_batch_stats()


def register() -> None:
    """Register the backend with joblib as ``"corral"`` (``import corral.joblib`` does this)."""
    joblib.register_parallel_backend(NAME, CorralBackend)


register()
