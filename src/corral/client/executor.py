"""``corral.Executor``: a ``concurrent.futures.Executor`` whose tasks run on corral workers.

Calls are pickled in the caller's thread, so a pickling error points at the
caller's code, and handed to the I/O loop (``ioloop.py``), which owns the link to
the broker.  With no ``address`` the executor starts an embedded broker, served by
the I/O loop itself, and a pool of local workers that reach it over socket pairs
made when they start (nothing listens), exchanging large buffers with it through
files in a private tmpfs directory (``wire/shm.py``); that and a private 0700
temporary directory are removed at shutdown.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future
from typing import Any

import zmq

from .. import dependencies, refs, serialization, tempdirs, tuning
from ..broker.broker import Broker
from ..config import HEARTBEAT, KILL_GRACE, LIVENESS, RETRIES, ExecutorConfig, check_task_options
from ..errors import DependencyError, SerializationError
from ..launchers.base import Launcher
from ..local.pool import refusal
from ..scaling.options import LAUNCH_TIMEOUT, FleetOptions
from ..security.credentials import Target, resolve
from ..serialization import Call, GatheringNeeded, call_frames
from ..wire import shm
from . import brokers, dependents, ioloop, mapping, objects, progress, seeds, statusfile
from .future import CorralFuture
from .gathering import Gathering
from .ioloop import IOLoop
from .observing import Observing
from .taskoptions import TaskOptions

MANY_WORKERS = 256  # local workers beyond this are checked against what the system lets us start




class Executor(Observing, _StdExecutor):
    """A ``concurrent.futures.Executor`` whose tasks run on corral workers.

    Takes ``ProcessPoolExecutor``'s arguments with the same meaning.  With no
    ``address`` it starts an embedded broker and ``max_workers`` local worker
    processes; with ``address="tcp://host:port"`` it submits to a broker
    started by ``corral broker`` and to whatever workers joined it.

    ``mp_context`` picks how local task processes start: a ``spawn``
    context spawns a new interpreter for each one; otherwise they are forked
    from a clean supervisor process that has imported nothing of yours.

    Extra keyword arguments (see docs/options.md):
        fresh: run every task in a brand-new process forked from a clean
            template (also implied by ``max_tasks_per_child=1``).
        address: a broker to use instead of the embedded one: the path of the
            connection file ``corral broker`` or ``corral keys add-client`` wrote
            (its address and CurveZMQ keys), "tcp://HOST:PORT" with ``keys``,
            or "ipc://PATH"; anything else raises AddressError.
        keys: with a "tcp://" address, a connection file to take the keys
            from (its address is not used); or set CORRAL_CONNECTION_FILE, or
            CORRAL_BROKER_KEY, CORRAL_PUBLIC_KEY and CORRAL_SECRET_KEY.
        insecure: with a "tcp://" address, talk plain TCP to a broker started
            with --insecure (warns each time; see docs/security.md).
        launcher: start the workers through a resource manager instead of as
            local processes: ``corral.launchers.Local()``, ``SSH(hosts)``,
            ``Slurm(...)``, ``SGE(...)`` or a third party's (docs/launchers.md).
            The executor's broker then listens on TCP with CurveZMQ, gives each
            launched worker a key of its own, and scales them between
            ``min_workers`` and ``max_workers`` with the work (docs/clusters.md).
        min_workers: launched workers kept even when there is no work (default 0).
        launch_timeout: seconds a launched worker whose job runs has to reach
            the broker before the launch counts as failed (default 60; a job
            still pending in its queue is waited for).
        advertise, interface: the address launched workers dial: a host name
            or address (optionally ":PORT"), or the name of the network
            interface whose address to use; default: the launcher's (Local:
            127.0.0.1), else this machine's address on its default route.
        wall_time: seconds a launched worker serves before it leaves (it
            finishes or hands back its tasks first; default: the job's own time
            limit under SLURM or Grid Engine, else none).
        tasks_max: a launched worker leaves after this many tasks.
        seed: an int >= 0: every task gets its own random streams, derived
            from the seed and its place in the program, and runs with
            ``random`` (and numpy's global state) seeded from them; see
            ``corral.rng()`` and docs/tasks.md.  ``options(seed=)`` overrides it.
        retries: how often a task whose worker died is run again (default 2).
        task_timeout: default per-task time limit in seconds; a task that
            runs longer has its process killed and raises TaskTimeoutError.
        prefetch: tasks a local worker holds beyond the one it runs; by
            default it holds about 10 ms of work (at least one task more).
        idle_timeout: a local worker idle this many seconds exits; workers
            start again when work arrives.  With a launcher: an idle launched
            worker is retired after this long (default 60), never below
            ``min_workers``.
        max_memory: a local worker whose task process uses more than this
            resident memory after a task (bytes, or a string like "2GB")
            gets a new task process.
        resources: what each local worker has for tasks that ask for it with
            ``options(resources=)``, e.g. ``{"gpu": 1, "mem": "64GB"}``
            (docs/tasks.md).
        broker_memory: the executor's own broker keeps queued tasks' payload
            in memory up to this (bytes, or a string like "2GB"; default: a
            quarter of the machine's memory) and writes the newest beyond it
            to files in its private temporary directory (docs/tasks.md).
        status_file: True, or a file's path: the executor's own broker also
            answers status requests (only those) on an ipc:// socket in a
            private 0700 directory, and a status file (mode 0600) says where,
            in that directory (True) or at the path; ``ex.status_file`` is its
            path, for ``corral status PATH``.  Both go at shutdown.
        heartbeat, liveness: seconds between heartbeats, and how many may be
            missed before a peer counts as lost (default 1.0 and 3).
        kill_grace: seconds between SIGTERM and SIGKILL for ``Future.kill()``.
        spin: seconds a caller waiting in ``result()`` and a local worker's
            task process waiting for its next task poll before they sleep,
            while their recent waits were that short (default 200e-6; 0:
            sleep at once).  Waking a sleeping process costs tens of
            microseconds, most of a short task's round trip; the polling
            yields the CPU to any other process that wants it.
        dashboard: serve the live dashboard (docs/observability.md) on
            "HOST:PORT", or True for 127.0.0.1:8787, from a thread of this
            process until shutdown; ``dashboard_url`` says where.  Beyond
            loopback it needs address= a connection file, whose client key
            makes its password.  Needs ``pip install 'corral[dashboard]'``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        fresh: bool = False,
        address: str | os.PathLike | None = None,
        retries: int = RETRIES,
        task_timeout: float | None = None,
        prefetch: int | None = None,
        idle_timeout: float | None = None,
        max_memory: int | str | None = None,
        heartbeat: float = HEARTBEAT,
        liveness: int = LIVENESS,
        kill_grace: float = KILL_GRACE,
        spin: float = tuning.SPIN,
        keys: str | os.PathLike | None = None,
        insecure: bool = False,
        launcher: Launcher | None = None,
        min_workers: int = 0,
        launch_timeout: float = LAUNCH_TIMEOUT,
        advertise: str | None = None,
        interface: str | None = None,
        wall_time: float | None = None,
        tasks_max: int | None = None,
        seed: int | None = None,
        resources: dict[str, int | float | str] | None = None,
        broker_memory: int | str | None = None,
        dashboard: bool | str = False,
        status_file: bool | str | os.PathLike | None = None,
    ):
        config = ExecutorConfig(
            max_workers, mp_context, initializer, initargs, max_tasks_per_child, fresh, address, retries, task_timeout,
            prefetch, idle_timeout, max_memory, heartbeat, liveness, kill_grace, spin, resources,
            broker_memory=broker_memory,
        )
        self._config = config
        self._max_workers = config.max_workers
        self._mp_context = mp_context
        self._max_tasks_per_child = max_tasks_per_child
        self._fresh = config.fresh
        self._defaults = {"timeout": task_timeout} if task_timeout is not None else {}
        self._seeds = seeds.Numbering(seed)
        self._seed = self._seeds.default
        if address is None and config.max_workers > MANY_WORKERS:  # refused before anything starts
            problem = refusal(config.max_workers, config.fresh)
            if problem:
                raise ValueError(f"max_workers={config.max_workers:,}: {problem}; ask for fewer workers")
        fleet = None
        if launcher is not None:
            if config.resources:
                raise ValueError("resources= is what the executor's local workers have; launched workers have none "
                                 "here: run `corral worker --resources` against a broker instead")
            if config.address is not None or keys is not None or insecure:
                raise ValueError("launcher= starts workers for the executor's own broker; address=, keys= and "
                                 "insecure= are for a broker elsewhere: give one or the other")
            fleet = FleetOptions(launcher, config.max_workers, min_workers, idle_timeout, launch_timeout, advertise,
                                 interface, wall_time, tasks_max)
        elif (min_workers, launch_timeout, advertise, interface, wall_time, tasks_max) != (
                0, LAUNCH_TIMEOUT, None, None, None, None):
            raise ValueError("min_workers, launch_timeout, advertise, interface, wall_time and tasks_max are for "
                             "launched workers: give launcher= too (corral.launchers.Local(), SSH(...), Slurm(...))")
        if config.address is not None:  # its keys are read now: a bad file fails here, not in the I/O thread
            target: Target | None = resolve(config.address, "client", keys=keys, insecure=insecure)
        elif keys is not None or insecure:
            raise ValueError("keys and insecure are for a broker elsewhere (address=); "
                             "the executor's own broker needs neither")
        else:
            target = None
        if ioloop.interpreter_exiting:  # (an atexit handler, a finalizer) nothing would close it: its files would stay
            raise RuntimeError("cannot start an executor after interpreter shutdown")
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._dashboard = None  # the dashboard's server (dashboard/server.py), with dashboard=
        self._functions = serialization.FunctionPickles()
        self._ctx = zmq.Context()
        self._tmpdir: str | None = None
        self._shm_dir: str | None = None  # large buffers to and from our own workers (shm.py)
        self._broker: Broker | None = None
        self._status_file: statusfile.StatusFile | None = None
        status_where = statusfile.check_option(status_file)
        if status_where is not None and target is not None:
            raise ValueError("status_file= exposes the executor's own broker; a broker elsewhere (address=) answers "
                             "`corral status` at its own address")
        if target is None:
            own = brokers.embedded(config, self._ctx) if fleet is None else brokers.launched(config, fleet)
            self._broker, self._tmpdir, self._shm_dir = own.broker, own.tmpdir, own.shm_dir
            self.worker_address = own.worker_address  # where launched workers dial it
            if status_where is not None:
                try:
                    self._status_file = statusfile.expose(own.broker, status_where, own.tmpdir)
                except BaseException:
                    self._undo_start()
                    raise
            target = Target("embedded")
        self._address = target.address
        try:
            self._io = IOLoop(self._ctx, target.address, config.retries, self._cleanup, config.heartbeat,
                              config.liveness, config.kill_grace, config.spin, target.curve)
        except BaseException:  # (no descriptor left for its wake-up pipe)
            self._undo_start()
            raise
        self._io.store = shm.Store(self._shm_dir) if self._shm_dir else None
        self._io.broker = self._broker
        self._objects = objects.Objects(self._io, self._io.store)  # put(), and large arguments sent once
        self._gathering = Gathering(self._io, self._objects)
        ioloop.live_loops.add(self._io)
        try:
            self._io.thread.start()
        except RuntimeError as exc:  # the system refused a thread: nothing of this executor may stay
            self._io.never_ran()
            raise RuntimeError(f"corral could not start its I/O thread ({exc}): this process may start no more "
                               "threads; raise its limit (ulimit -u, a pids cgroup's pids.max)") from exc
        weakref.finalize(self, self._io.close_when_done)
        # Handed over once the I/O thread has made its link, and so spawned our own workers: a program
        # that ends at once (os._exit, a signal) leaves its files to workers that exist, which remove them.
        self._io.started.wait()
        if dashboard:  # the live dashboard (dashboard/__init__.py): it shuts us down if it cannot start
            from ..dashboard import for_executor

            self._dashboard = for_executor(self, dashboard, target.curve[2] if target.curve else None)

    def _undo_start(self) -> None:
        """A start that failed before its I/O thread ran: nothing of this executor may stay."""
        if self._broker is not None:
            self._broker.close()
        self._cleanup()

    def _cleanup(self) -> None:
        """Runs in the I/O thread once it is done (and has closed the broker): remove files."""
        if self._tmpdir is not None:
            tempdirs.remove(self._tmpdir)  # its shared-memory twin (self._shm_dir) with it
        if self._status_file is not None:
            self._status_file.remove()
        self._ctx.term()

    # -- the Executor API -------------------------------------------------------

    def _check_open(self) -> None:
        """Raise what a submit must raise now: the executor is broken, shut down, or the interpreter exits."""
        if self._io.broken is not None:
            raise self._io.broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if ioloop.interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        if self._seed is None:  # the ordinary submit: no call for its options
            return self._submit_call(Call(fn, args, kwargs or None))
        return self._submit_call(Call(fn, args, kwargs or None), self._seeds.submit(None))

    def put(self, obj: Any) -> refs.Ref:
        """Store ``obj`` once; a ``corral.Ref`` that stands for it in any task of this executor.

        ``obj`` is pickled now and sent to the broker once; each worker gets it once,
        with the first task there that uses it, and keeps it in a bounded cache.  In a
        task, the Ref (an argument, or anywhere inside one or in a closure) is the object,
        unpickled once per task process and shared by its tasks: its buffers (a numpy
        array's data) are read-only.  The broker drops it when the Refs are gone and no
        task needs it.  With a broker elsewhere, arguments' buffers of 1 MiB or more are
        sent once like this without asking (docs/tasks.md, "Large objects sent once").
        """
        self._check_open()
        return self._objects.put(obj)

    def options(self, **options: Any) -> TaskOptions:
        """A view of this executor whose ``submit``/``map`` give every task ``options``.

        It shares this executor's connection and workers.  Valid options:
        ``retries`` (int >= 0: runs after the first one if the task's worker dies),
        ``timeout`` (seconds: the task's process is killed after this long and
        the future raises TaskTimeoutError), ``retry_on_timeout`` (bool: a
        timed-out task counts an attempt and runs again within ``retries``),
        ``seed`` (int >= 0: reproducible random streams per task, as ``Executor(seed=)``),
        ``after`` (futures of this executor: the task runs once they have all
        succeeded, and fails with DependencyError if one does not; futures
        given as arguments are waited for too, and replaced by their results),
        ``priority`` (int: higher is dispatched first), ``resources`` (dict:
        runs only where they are free, held while it runs), ``queue`` (str: runs
        only on workers serving that named queue); see docs/tasks.md.  And one for
        the client alone: ``progress`` (True, or a dict of tqdm keyword arguments:
        ``map`` draws a progress bar; docs/observability.md).
        """
        options, bar = progress.take_option(options)  # the client's own: never sent (client/progress.py)
        return TaskOptions(self, check_task_options(options), bar)

    def _submit_call(self, call: Call, options: dict | None = None) -> Future:
        """Pickle a call here, in the caller's thread, and hand it to the I/O loop; its future."""
        if self._defaults:
            options = {**self._defaults, **(options or {})}
        with self._shutdown_lock:
            self._check_open()
            try:
                frames = call_frames(call, self._functions)
            except GatheringNeeded:  # it holds futures or Refs: pickled again below, noting them (gathering.py)
                frames = None
            except SerializationError as exc:
                return self._failed(exc)
            if frames is not None and not options and len(frames) < 3:
                return self._io.submit_frames(frames)  # the ordinary task: no options, futures, Refs or large buffers
            return self._submit_frames(call, frames, options)

    def _failed(self, exc: BaseException) -> Future:
        """A future failed with ``exc`` at submit: only it fails, the executor stays usable."""
        fut = CorralFuture(self._io, 0)
        fut.set_exception(exc)
        return fut

    def _submit_frames(self, call: Call, frames: list | None, options: dict | None) -> Future:
        """``_submit_call``'s general way (its lock held): a call with options, futures (dependencies.py),
        Refs or large buffers (objects.py); ``frames``: its pickle, None if it must be pickled gathering."""
        after = options.get("after") if options else None
        try:
            found = used = None
            if frames is None:
                met = self._gathering
                try:
                    frames = call_frames(call, self._functions, met)
                finally:
                    found, used = met.take()
            handles: list = []
            if used is not None or (self._objects.store is None and len(frames) > 2):
                frames, options, handles = self._objects.prepare(frames, options, used)
            waits = None
            if found is not None or after:
                collector = found or dependencies.Collector(self._io)
                options, waits = _with_dependencies(options, collector, after, self._io)
        except (SerializationError, DependencyError) as exc:
            return self._failed(exc)
        store = self._io.store
        if store is None or len(frames) < 3:
            fut = self._io.submit_frames(frames, options, waits)
            return objects.hold(fut, handles) if handles else fut
        frames, offloaded, paths = store.offload(frames, 2)  # the arguments' large buffers
        if not offloaded:
            return objects.hold(self._io.submit_frames(frames, options, waits), handles)
        fut = objects.hold(self._io.submit_frames(frames, {**(options or {}), "shm": offloaded}, waits), handles)
        # A retried task maps its input again: the files go when the future is done.
        fut.add_done_callback(lambda _, paths=paths: [shm.remove(p) for p in paths])
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``, but reads its input lazily through a bounded window.

        At most ``buffersize`` tasks (chunks) are in flight at once (default:
        32 tasks per worker, at least 256 and at most 4,096; with a
        ``chunksize`` above 1, 16 chunks per worker, at least 64 and at most
        1,024); when half of them have been
        consumed, the next half are submitted together, so an endless
        generator works.  Work still queued is cancelled if the consumer stops
        early.
        """
        return self._map(fn, iterables, timeout, chunksize, buffersize, None)

    def _map(self, fn, iterables, timeout, chunksize, buffersize, options: dict | None,
             bar: dict | None = None) -> Iterator[Any]:
        """map's work, with per-task ``options`` (``TaskOptions.map``): ``mapping.py``; ``bar``: tqdm's
        keyword arguments for a progress bar over it (``progress.py``)."""
        submit = self._seeds.map(self._submit_call, options)
        if self._dashboard is not None:  # each map's progress on the page (dashboard/maps.py)
            submit = self._dashboard.maps.track(fn, iterables, chunksize, submit)
        if bar is not None:
            return progress.bar_map(bar, iterables, submit, lambda submit: mapping.run(
                fn, iterables, timeout, chunksize, buffersize, self._max_workers, submit))
        return mapping.run(fn, iterables, timeout, chunksize, buffersize, self._max_workers, submit)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish (or cancel) what is pending; stop the workers."""
        with self._shutdown_lock:
            self._shutdown = True
        if self._dashboard is not None:
            self._dashboard.stop()
        if cancel_futures:
            # Like ProcessPoolExecutor, which has already handed up to max_workers
            # calls to its processes, the oldest max_workers tasks are left to run
            # even if no worker has reported starting them yet.
            pending = [f for f in list(self._io.futures.values()) if not f.running()]
            mapping.cancel_all(pending[self._max_workers:])
        self._io.close_when_done()
        if wait and self._io.thread is not threading.current_thread():
            self._io.thread.join()

    def terminate_workers(self) -> None:
        """Shut down at once and SIGTERM the workers (Python 3.14's ProcessPoolExecutor API).

        Queued tasks are cancelled; running ones fail with WorkerLostError (a
        BrokenProcessPool).  With ``address=`` only this executor's running
        tasks are stopped; the broker's workers stay for other clients.
        Submitting afterwards raises RuntimeError.
        """
        self._force_shutdown(hard=False)

    def kill_workers(self) -> None:
        """Like ``terminate_workers()``, with SIGKILL."""
        self._force_shutdown(hard=True)

    def _force_shutdown(self, hard: bool) -> None:
        """Shut down at once and signal the workers (``terminate_workers``/``kill_workers``)."""
        with self._shutdown_lock:
            self._shutdown = True
        if self._io.thread.is_alive():
            self._io.request_terminate(hard)
        self.shutdown(wait=False)


def _with_dependencies(options: dict | None, collector, after, loop) -> tuple[dict | None, tuple | None]:
    """A task's options, with what it waits for (``dependents.prepare``), and the futures it
    waits for; DependencyError if one has failed already, ValueError for another executor's."""
    added, waits = dependents.prepare(collector, after, loop)
    if isinstance(waits, DependencyError):
        raise waits
    rest = {k: v for k, v in (options or {}).items() if k != "after"}
    return ({**rest, **added} if added else rest or None), waits
