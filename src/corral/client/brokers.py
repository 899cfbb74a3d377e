"""The executor's own broker, made one of two ways: with a pool of local workers, or with a fleet.

::

    Executor()                       Executor(launcher=L)
      embedded(): Broker, no socket    launched(): Broker with a ROUTER on TCP (CurveZMQ),
        LocalPool: workers on socket     MemoryKeys: one key pair per launch, in memory
        pairs, a bootstrap file and      Fleet: launches through L, scales with the work
        a shared-memory directory        (scaling/), at the address workers dial (listen.py)

Either way the broker is served by the executor's I/O thread (``ioloop.py``).
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass

import zmq

from .. import serialization, tempdirs
from ..broker.broker import Broker
from ..broker.spill import Spill
from ..config import ExecutorConfig
from ..local.pool import LocalPool
from ..scaling.options import FleetOptions
from ..scaling.options import cwd as client_cwd
from ..wire import shm


@dataclass
class OwnBroker:
    """An executor's own broker, and what it made for it."""

    broker: Broker
    tmpdir: str | None = None  # private (0700): the local workers' bootstrap file
    shm_dir: str | None = None  # large buffers to and from local workers (shm.py)
    worker_address: str | None = None  # where launched workers dial it


def _initializer(config: ExecutorConfig) -> bytes | None:
    """The pickled (initializer, initargs), or None: pickled first, so that an error leaves nothing behind."""
    if config.initializer is None:
        return None
    return serialization.dumps((config.initializer, tuple(config.initargs)), "the initializer")[0]


def embedded(config: ExecutorConfig, ctx: zmq.Context) -> OwnBroker:
    """The embedded broker and its pool of local workers; their private directories."""
    init = _initializer(config)
    tempdirs.sweep_once((shm.root(),))  # what clients killed with their workers left (tempdirs.py)
    # Private (0700): only this user can read the bootstrap file; held while we live (tempdirs.py).
    tmpdir = tempdirs.make()
    shm_dir = None
    try:
        shm_dir = shm.make_dir(os.path.basename(tmpdir))
        if shm_dir is not None:
            tempdirs.note_twin(tmpdir, shm_dir)
        bootstrap = os.path.join(tmpdir, "bootstrap.pkl")
        with open(bootstrap, "wb") as f:
            pickle.dump((list(sys.path), init), f)
        pool = LocalPool(None, config.max_workers, config.worker_config(), bootstrap=bootstrap, shm=shm_dir,
                         spin=config.spin)
        broker = Broker(None, context=ctx, pool=pool, embedded=True, heartbeat=config.heartbeat,
                        liveness=config.liveness, spill=Spill(config.broker_memory, tmpdir, private=True))
    except BaseException:  # (a full disk, a descriptor limit) nothing of ours may stay: the twin goes with it
        tempdirs.remove(tmpdir)
        raise
    return OwnBroker(broker, tmpdir, shm_dir)


def launched(config: ExecutorConfig, options: FleetOptions) -> OwnBroker:
    """The embedded broker listening on TCP (CurveZMQ) for the workers its fleet launches."""
    from ..scaling import listen
    from ..scaling.fleet import Fleet
    from ..security.keys import MemoryKeys

    init = _initializer(config)
    launcher = options.launcher
    bind_host, dial_host, port = listen.choose(launcher.default_host(), options.advertise, options.interface)
    keys = MemoryKeys()  # each launch's key is added as it is made; nothing on disk
    broker, port = listen.bind_router(
        lambda address: Broker(None, address, keys=keys, embedded=True, heartbeat=config.heartbeat,
                               liveness=config.liveness, spill=Spill(config.broker_memory)), bind_host, port)
    try:
        address = listen.dial_address(dial_host, port)
        command = options.worker_command(config.heartbeat, config.liveness, worker_arguments(config))
        broker.fleet = Fleet(launcher, keys, address, command, min_workers=options.min_workers,
                             max_workers=options.max_workers, idle_timeout=options.idle_timeout,
                             launch_timeout=options.launch_timeout, sys_path=list(sys.path), initializer=init,
                             cwd=client_cwd(), wall_time=options.wall_time)
    except BaseException:
        broker.close()
        raise
    return OwnBroker(broker, worker_address=address)


def worker_arguments(config: ExecutorConfig) -> list[str]:
    """The ``corral worker`` options that make a launched worker what the executor's arguments say."""
    args = []
    if config.fresh:
        args.append("--fresh")
    if config.prefetch is not None:
        args += ["--prefetch", str(config.prefetch)]
    if config.max_tasks_per_child and not config.fresh:
        args += ["--max-tasks-per-child", str(config.max_tasks_per_child)]
    if config.max_memory:
        args += ["--max-memory", str(config.max_memory)]
    return args
