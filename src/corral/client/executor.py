"""The client role: ``corral.Executor``, a concurrent.futures Executor.

Data flow::

    user threads                         I/O thread (owns the broker link)          broker
    submit(fn, *args)                    _IOLoop.run()
      pickle Call in the caller's thread   |
      futures[cid] = CorralFuture          |
      outq.append(...) + wake pipe ------> SUBMIT batch  ---------------------->  queue
                                           STARTED  <----------------------------  worker began
                                             future.set_running_or_notify_cancel()
                                           RESULT   <----------------------------  outcome
                                             unpickle, set_result/set_exception

Pickling happens in the caller's thread so a pickling error points at the
caller's code; only the I/O thread touches the socket, because ZeroMQ sockets
are not thread-safe.  User threads hand it work through a deque and wake it
with one byte on a pipe, written only when it is not already awake, so a
burst of submits costs one wake-up and leaves as one batch.

A caller that waits for a result (``result()``, ``exception()``) runs the loop
itself meanwhile, while the I/O thread stands aside (``_IOLoop.lead``): the
result then wakes the thread that wants it, not the I/O thread that would
wake it in turn.  The I/O thread takes the loop back when no caller has run
it for LINGER (done-callbacks, ``wait()``, ``as_completed()`` and idle time).

With no ``address`` the executor starts an embedded broker, served by the
I/O thread itself: client and broker call each other's message handlers
directly (``_DirectLink``), with no socket, no thread switch and no frames
to build or parse in between.  Its worker processes reach it over socket
pairs made when they start (nothing listens), and exchange large buffers
with it through files in a private tmpfs directory (``shm.py``); that and
a private 0700 temporary directory are removed at shutdown.
"""

from __future__ import annotations

import _signal
import contextlib
import functools
import itertools
import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _StdExecutor
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import zmq

from .. import addresses, serialization, tuning
from ..broker.broker import DEFAULT_RETRIES, Broker
from ..errors import BrokerLostError, DeserializationError, SerializationError, TaskTimeoutError, WorkerLostError
from ..local import shm
from ..local.pool import LocalPool, refusal
from ..options import check_seconds, check_task_options, parse_size
from ..serialization import Call, call_frames, restore_builtin_state
from ..status import Summary
from ..throttle import Throttle
from ..wire import poller, protocol, sockets
from ..wire.poller import POLLIN
from ..wire.protocol import Kind, Status

# I/O loops still running, including those of executors shut down with wait=False.
_live_loops: set = set()
_interpreter_exiting = False


def _python_exit() -> None:
    """Before the interpreter joins threads: let every open executor finish its work."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for io in list(_live_loops):
        io.close_when_done()
    for io in list(_live_loops):
        io.thread.join()


threading._register_atexit(_python_exit)


MANY_WORKERS = 256  # local workers beyond this are checked against what the system lets us start


def _usable_cpus() -> int:
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


# The objects each pending future keeps alive are scanned by every collection of the
# garbage collector; with 20,000 futures pending, collections took a third of a submit
# burst's time.  So a future holds as few as it can: _Condition and CorralFuture make
# their containers only when something is put in them.
_NO_WAITERS: tuple = ()


class _Condition(threading.Condition):
    """A ``threading.Condition`` over an RLock, for a future: two objects for the collector
    to scan instead of eight.

    ``Condition.__init__`` stores five bound methods of its lock on itself; these methods
    look them up when called instead.  Its deque of waiting threads is made by the first
    ``wait()``: until then ``notify()`` finds an empty tuple (most futures are done before
    anyone waits for them).
    """

    _waiters: deque | tuple = _NO_WAITERS

    def __init__(self) -> None:  # as Condition's, with an RLock
        self._lock = threading.RLock()

    def wait(self, timeout: float | None = None) -> bool:
        if self._waiters is _NO_WAITERS:  # we hold the lock: no other thread is in here
            self._waiters = deque()
        return super().wait(timeout)

    def acquire(self, *args, **kwargs) -> bool:
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self):
        return self._lock._release_save()

    def _acquire_restore(self, state) -> None:
        self._lock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return self._lock._is_owned()


class _EmptyUntilAppend:
    """An empty list, as far as a ``Future`` and the ``concurrent.futures`` functions use its
    waiters and callbacks lists, that puts a real list in the future at the first append.

    Every append happens under the future's condition: ``add_done_callback()``, and
    ``wait()``/``as_completed()`` installing their waiter.
    """

    __slots__ = ("future", "name")

    def __init__(self, future: Future, name: str):
        self.future = future
        self.name = name

    def __iter__(self) -> Iterator:
        return iter(())

    def __len__(self) -> int:
        return 0

    def append(self, item: Any) -> None:
        self.future.__dict__[self.name] = [item]

    def remove(self, item: Any) -> None:
        raise ValueError(f"{item!r} is not in list")


class _MadeOnAppend:
    """A future's list attribute that does not exist until something is appended to it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, future: Future | None, owner: type | None = None) -> Any:
        return self if future is None else _EmptyUntilAppend(future, self.name)


class CorralFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also reaches the broker, plus ``kill()``."""

    _waiters = _MadeOnAppend()
    _done_callbacks = _MadeOnAppend()

    def __init__(self, io: _IOLoop, cid: int):
        # Future.__init__'s fields (a test checks that none is missing), with a leaner condition;
        # its two lists are made when something is first put in them (_MadeOnAppend).
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._io = io
        self._cid = cid
        self._kill_requested = False

    def result(self, timeout: float | None = None) -> Any:
        return Future.result(self, self._wait(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return Future.exception(self, self._wait(timeout))

    def _wait(self, timeout: float | None) -> float | None:
        """Run the executor's loop while waiting for this future (see _IOLoop.lead); the timeout left."""
        if self._state in _DONE:
            return timeout
        started = time.monotonic()
        self._io.lead(self, timeout)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

    def cancel(self) -> bool:
        """Cancel the task if it has not started; False once it runs (as in the stdlib).

        The broker, or the worker holding the task, has the final word, so a
        task that a worker has begun is never reported cancelled.
        """
        return self._io.cancel([self])[0]

    def kill(self, grace: float | None = None) -> bool:
        """Stop the task even if it is running.

        A queued task is cancelled at once.  A running task's process gets
        SIGTERM, then SIGKILL if it is still alive ``grace`` seconds later
        (default: the executor's ``kill_grace``); the future then ends
        cancelled (``result()`` raises ``CancelledError``).  A persistent
        worker replaces the killed process.  Returns False if the future is
        already done.  ``grace`` must be a finite number of seconds >= 0:
        anything else raises ValueError, and nothing is sent.
        """
        if grace is not None:
            grace = check_seconds("grace", grace, zero=True)  # the broker would drop the KILL
        with self._condition:
            if self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
                return False
            if self._kill_requested:
                return True
            self._kill_requested = True
        self._io.request_kill(self._cid, self._io.kill_grace if grace is None else grace)
        _cancel_now(self)  # a task still pending here ends now; a running one when its process is gone
        return True

    def _set_killed(self) -> None:
        """End the future as cancelled even though it was running: its process was killed."""
        with self._condition:
            if self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
                return
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()


class _IOLoop:
    """Owns the client socket; runs in its own thread until the executor closes."""

    def __init__(self, ctx: zmq.Context, address: str, retries: int, cleanup: Callable[[], None],
                 heartbeat: float, liveness: int, kill_grace: float, spin: float):
        self.ctx = ctx
        self.address = address
        self.retries = retries
        self.cleanup = cleanup
        self.kill_grace = kill_grace
        self.futures: dict[int, CorralFuture] = {}
        self.outq: deque = deque()
        self.cancels: deque = deque()
        self.cancel_verdicts: dict[int, Future] = {}
        self.status_asked: deque[Future] = deque()  # summary() calls whose STATUS is not sent yet
        self.status_waiters: deque[Future] = deque()  # STATUS sent: the answers come in this order
        self.ids = itertools.count(1)
        self.wake_r, self.wake_w = os.pipe()
        self.awake = False
        self.closing = False
        self.broken: BaseException | None = None
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.welcomed = False  # the broker answered our last HELLO
        self.complain = Throttle(lambda line: print(line, file=sys.stderr))
        self.broker: Broker | None = None  # an embedded broker, served by this loop's thread
        self.store: shm.Store | None = None  # large buffers to and from an embedded broker's workers
        self.thread = threading.Thread(target=self.run, name="corral-io", daemon=True)
        # A caller waiting for a result runs the loop itself meanwhile (lead()): whoever runs
        # it holds loop_lock, and the I/O thread stands aside while callers lead.
        self.loop_lock = threading.RLock()  # a done-callback run by a leader may lead again
        self.aside = threading.Condition(threading.Lock())
        self.leaders = 0  # callers leading, or waiting to (under aside)
        self.led_at = 0.0  # when the last one stopped
        self.deferring = False  # a leader handles messages: outcomes wait in `later`
        self.later: deque = deque()
        self.spin = poller.Spin(spin)  # leaders poll for a while before they sleep
        self.link: _SocketLink | _DirectLink | None = None

    # -- called from user threads ---------------------------------------------

    def wake(self) -> None:
        if not self.awake:
            self.awake = True
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                pass  # the loop has finished and closed the pipe

    def submit_frames(self, frames: list, options: dict | None = None) -> CorralFuture:
        cid = next(self.ids)
        fut = CorralFuture(self, cid)
        self.futures[cid] = fut
        self.outq.append(protocol.task_entry(cid, len(frames), options) + [frames])
        self.wake()
        return fut

    def cancel(self, futures: list[CorralFuture]) -> list[bool]:
        """Cancel futures whose tasks have not started; one round trip for all of them."""
        verdicts: list[bool | None] = []
        asked = []
        local = threading.current_thread() is self.thread or not self.thread.is_alive()
        for fut in futures:
            with fut._condition:
                pending = fut._state == PENDING
            if not pending:
                verdicts.append(Future.cancel(fut))  # True if cancelled before, False if running or done
            elif local:
                # The I/O thread cannot wait for its own answer (a done-callback cancelling a
                # future): cancel here and tell the broker. If a worker had begun the task after
                # all, it runs to its end and its result is dropped.
                verdicts.append(_cancel_now(fut))
                self.cancels.append((Kind.CANCEL, fut._cid, None))
            else:
                verdict: Future = Future()
                self.cancel_verdicts[fut._cid] = verdict
                self.cancels.append((Kind.CANCEL, fut._cid, verdict))
                asked.append((len(verdicts), fut, verdict))
                verdicts.append(None)
        if asked or local:
            self.wake()
        deadline = time.monotonic() + self.heartbeat * (self.liveness + 1) + 5
        for i, fut, verdict in asked:
            try:
                dropped = verdict.result(max(0.0, deadline - time.monotonic()))
            except FuturesTimeout:
                dropped = False  # no answer: the broker is gone, and the future fails with BrokerLostError
            verdicts[i] = dropped and _cancel_now(fut)
        return verdicts  # type: ignore[return-value]

    def request_kill(self, cid: int, grace: float) -> None:
        self.cancels.append((Kind.KILL, cid, grace))
        self.wake()

    def request_terminate(self, hard: bool) -> None:
        self.cancels.append((Kind.KILL, None, "SIGKILL" if hard else "SIGTERM"))
        self.wake()

    def request_status(self) -> Future:
        fut: Future = Future()
        self.status_asked.append(fut)
        self.wake()
        return fut

    def close_when_done(self) -> None:
        self.closing = True
        self.wake()

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        self.last_heard = self.last_beat = self.last_turn = time.monotonic()
        link = None
        try:
            link = _SocketLink(self.ctx, self.address) if self.broker is None else _DirectLink(self.broker)
            self.poller = link.poller
            self.poller.register(self.wake_r, POLLIN)
            self.hello(link)
            self.link = link
            while True:
                if self.broker is not None:
                    self.stand_aside()
                with self.loop_lock:
                    if self.turn():
                        break
            link.post(Kind.BYE)
        except BaseException as exc:  # noqa: BLE001 - a bug, or the embedded broker could not go on
            # Nothing may be left waiting on a loop that is gone: every future fails, and so
            # does every later submit, saying why.
            self.broken = BrokenProcessPool(f"corral's I/O thread stopped: {type(exc).__name__}: {exc}")
            self.broken.__cause__ = exc
            self.fail_all(self.broken)
            if not isinstance(exc, Exception):
                raise
        finally:
            if link is not None:
                link.close()
            self.awake = True  # wake() must not write any more: the pipe's fd numbers may be reused
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.cleanup()
            _live_loops.discard(self)

    def turn(self, limit: float | None = None, guard: _SigintDeferred | None = None,
             spin: poller.Spin | None = None) -> bool:
        """One turn of the loop: wait for messages (at most ``limit`` seconds; polling for
        a while first with ``spin``), handle them, send what waits.  True: the loop is over
        (closed, or the broker is lost)."""
        link = self.link
        timeout = self.heartbeat if self.broker is None else min(self.heartbeat, self.broker.poll_timeout())
        timeout = (timeout if limit is None else max(0.0, min(timeout, limit))) * 1000
        if spin is None:
            events = dict(self.poller.poll(timeout))
        else:
            waiting = time.perf_counter()
            events = dict(self.poller.poll(timeout, spin.budget()))
            spin.waited(time.perf_counter() - waiting)
        with guard or _UNGUARDED:
            if time.monotonic() - self.last_turn > 2 * self.heartbeat:
                # This loop did not run for a while (another thread held the GIL):
                # that silence is ours, not the broker's.
                self.last_heard = time.monotonic()
            if self.wake_r in events:
                os.read(self.wake_r, 4096)
            self.awake = False
            self.send_pending(link)
            for kind, body, frames in link.receive(events):
                if kind != Kind.ERROR:  # a broker that does not know us is no sign that ours lives
                    self.last_heard = time.monotonic()
                self.on_message(kind, body, frames)
            now = time.monotonic()
            if now - self.last_beat >= self.heartbeat:
                link.post(Kind.HEARTBEAT)
                self.last_beat = now
            self.last_turn = now
            silence = now - self.last_heard
            if self.lost(silence):
                if self.welcomed:
                    why = (f"the broker at {self.address} has not answered for {silence:.1f} s; the tasks it "
                           "held are lost.")
                else:
                    why = (f"no broker answered at {self.address} within {silence:.1f} s (is `corral broker` "
                           "running there, and reachable from here?).")
                self.start_over(BrokerLostError(f"{why} Later tasks go to the broker once it answers."))
            return self.closing and not self.futures and not self.outq

    def hello(self, link: _SocketLink | _DirectLink) -> None:
        link.post(Kind.HELLO, {"role": "client", "retries": self.retries, "pid": os.getpid()})

    def start_over(self, exc: BaseException) -> None:
        """The broker lost our tasks (it went silent, or restarted and does not know us): fail
        them all, and say HELLO again, so that later tasks go to whichever broker answers there."""
        self.welcomed = False
        self.fail_all(exc)
        self.last_heard = time.monotonic()  # later tasks get a whole liveness period of their own
        self.hello(self.link)

    def stand_aside(self) -> None:
        """The I/O thread waits while callers lead, and LINGER after the last one (the next
        result() is usually that close behind), unless the executor is closing."""
        with self.aside:
            while not self.closing and (self.leaders or time.monotonic() - self.led_at < LINGER):
                self.aside.wait(LINGER)

    def lead(self, fut: CorralFuture, timeout: float | None) -> None:
        """Run the loop in this thread until ``fut`` is done or ``timeout`` passes.

        A caller that waits for its result would otherwise sleep while the I/O thread wakes
        to read that result and then wakes it: two thread hand-offs per round trip.  The
        embedded broker's loop only (it has no ZeroMQ socket that must stay in one thread).
        In the main thread, Ctrl-C is held back while messages are handled, so that none is
        half-handled, and the loop is left to the I/O thread while a Python handler of another
        signal is installed (it could raise anywhere).  Outcomes are set once the messages
        are handled, outside the part of the loop that must not be interrupted (unpickling
        and done-callbacks run user code).
        """
        if self.link is None or self.broker is None or self.closing or threading.current_thread() is self.thread:
            return
        guard = None
        if threading.current_thread() is threading.main_thread():
            if not _main_thread_may_lead():
                return
            guard = _SigintDeferred()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.aside:
            self.leaders += 1
        try:
            if guard is not None:
                guard.install()
            if not self.loop_lock.acquire(blocking=False):
                self.wake()  # the I/O thread is in the loop: it stands aside after this turn
                wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                if not self.loop_lock.acquire(timeout=wait):
                    return
            try:
                while fut._state not in _DONE and not self.closing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    outer, self.deferring = self.deferring, True
                    try:
                        self.turn(left, guard, self.spin)
                    finally:
                        self.deferring = outer
                        self.resolve_later()
            finally:
                self.loop_lock.release()
        finally:
            if guard is not None:
                guard.uninstall()
            with self.aside:
                self.leaders -= 1
                self.led_at = time.monotonic()

    def resolve_later(self) -> None:
        """Set the outcomes a leader's turn read (unpickling and callbacks run user code)."""
        while self.later:
            self.resolve(*self.later.popleft())

    def lost(self, silence: float) -> bool:
        """Is the broker gone?  Never an embedded one: it lives in this very thread."""
        if not (self.futures or self.status_asked or self.status_waiters) or self.broker is not None:
            return False
        return silence > self.heartbeat * self.liveness

    def send_pending(self, link: _SocketLink | _DirectLink) -> None:
        # Take the cancels before the submits: a task cancelled by now was put in
        # outq before that, so its SUBMIT leaves below, ahead of its CANCEL. (Taken
        # after, a task submitted and cancelled meanwhile would be cancelled at the
        # broker before it arrived there, and then run.)
        requests = []
        while self.cancels:
            requests.append(self.cancels.popleft())
        if self.outq:
            entries, frames = [], []
            while self.outq:
                *entry, task_frames = self.outq.popleft()
                entries.append(entry)
                frames.extend(task_frames)
            for chunk, chunk_frames in protocol.batches(entries, frames, 1):
                link.post(Kind.SUBMIT, {"tasks": chunk}, chunk_frames)
        cancels, kills = [], {}
        for kind, cid, extra in requests:
            if kind == Kind.CANCEL:
                cancels.append(cid)
                if extra is None:  # cancelled already, no verdict awaited
                    self.futures.pop(cid, None)
            elif cid is None:  # terminate_workers() / kill_workers()
                link.post(Kind.KILL, {"all": True, "signal": extra})
            else:
                kills.setdefault(extra, []).append(cid)
                fut = self.futures.get(cid)
                if fut is not None and fut.cancelled():  # killed before it ran: nothing to wait for
                    self.futures.pop(cid)
        if cancels:
            for chunk in protocol.id_chunks(cancels):
                link.post(Kind.CANCEL, {"ids": chunk})
        for grace, cids in kills.items():
            for chunk in protocol.id_chunks(cids):
                link.post(Kind.KILL, {"ids": chunk, "grace": grace})
        while self.status_asked:  # one STATUS per call, so that each call gets its own answer
            self.status_waiters.append(self.status_asked.popleft())
            link.post(Kind.STATUS)

    def on_message(self, kind: Kind, body: dict, frames: list) -> None:
        try:
            if kind == Kind.RESULT:
                for entry, payload in protocol.split_entries(body, "results", frames, 4):
                    payload = [f.buffer if isinstance(f, zmq.Frame) else f for f in payload]
                    if self.deferring:
                        self.later.append((entry, payload))
                    else:
                        self.resolve(entry, payload)
            elif kind == Kind.STARTED:
                for cid in body.get("ids", ()):
                    fut = self.futures.get(cid)
                    # A retried task starts again: only the first start counts.
                    if fut is not None and not fut.running() and not fut.set_running_or_notify_cancel():
                        self.futures.pop(cid, None)
            elif kind == Kind.CANCELLED:
                for cid in body.get("ids", ()):
                    self.futures.pop(cid, None)  # dropped: no RESULT will come
                    self.answer_cancel(cid, True)
                for cid in body.get("running", ()):
                    self.answer_cancel(cid, False)
            elif kind == Kind.WELCOME:
                self.heartbeat, self.liveness = protocol.timing(body, self.heartbeat, self.liveness)
                self.welcomed = True
            elif kind == Kind.STATUS_REPLY:
                if self.status_waiters:
                    workers = json.loads(bytes(frames[0])) if frames else []
                    self.status_waiters.popleft().set_result((workers, body))
            elif kind == Kind.ERROR:
                self.refused(body)
        except (protocol.ProtocolError, KeyError, TypeError, ValueError, IndexError) as exc:
            self.complain(f"corral client: dropped a malformed message: {type(exc).__name__}: {exc}")

    def refused(self, body: dict) -> None:
        """The broker refused a message: it does not know us (it restarted), or will not serve us."""
        message = protocol.text(body.get("message"), 500)
        if body.get("code") == protocol.UNKNOWN_PEER:
            # Only a broker that welcomed our last HELLO can have lost us; until one does, the
            # refusals are of what we sent before that HELLO (whose tasks failed already).
            if self.welcomed:
                self.welcomed = False
                self.start_over(BrokerLostError(
                    f"the broker at {self.address} no longer knows this client (it restarted, or lost "
                    "touch with it): the tasks it held are lost. Later tasks go to it as usual."))
            return
        self.complain(f"corral client: the broker at {self.address} refused a request: {message}")

    def resolve(self, entry: list, frames: list) -> None:
        cid, status, _, meta = entry
        if isinstance(meta, dict) and meta.get("shm") and self.store is not None:
            try:  # the result's large buffers, in files: map them, and remove the files at once
                frames = self.store.resolve(frames, meta["shm"], unlink=True)
            except (ValueError, OSError) as exc:
                status, frames, meta = Status.FAILED, [], {"error": protocol.ERR_DESERIALIZATION,
                                                           "message": f"cannot read the result: {exc}"}
        fut = self.futures.pop(cid, None)
        if fut is None or fut.cancelled():
            return
        if fut._kill_requested or (status == Status.FAILED and meta.get("error") == protocol.ERR_KILLED):
            fut._set_killed()  # after kill(), whatever finished first, the future ends cancelled
            return
        try:
            if status == Status.OK:
                _settle(fut, serialization.loads(frames, "the result"), None)
            elif status == Status.RAISED:
                exc = serialization.loads(frames, "the exception raised by the task")
                _settle(fut, None, restore_builtin_state(exc) if isinstance(exc, BaseException) else exc)
            else:
                if meta.get("error") == protocol.ERR_BROKEN and self.broken is None:
                    self.broken = _failure(meta)  # later submits raise, as ProcessPoolExecutor's do
                _settle(fut, None, _failure(meta))
        except SerializationError as exc:
            _settle(fut, None, exc)

    def answer_cancel(self, cid: int, dropped: bool) -> None:
        verdict = self.cancel_verdicts.pop(cid, None)
        if verdict is not None:
            verdict.set_result(dropped)

    def fail_all(self, exc: BaseException) -> None:
        for cid in list(self.cancel_verdicts):
            self.answer_cancel(cid, False)
        for fut in list(self.futures.values()):
            _settle(fut, None, exc)
        self.futures.clear()
        for waiters in (self.status_waiters, self.status_asked):
            while waiters:
                waiters.popleft().set_exception(exc)


class _SocketLink:
    """The I/O loop's connection to a broker elsewhere: a ZeroMQ DEALER socket."""

    def __init__(self, ctx: zmq.Context, address: str):
        self.sock = sockets.dealer(ctx, address, linger=1000)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, POLLIN)

    def post(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.sock.send_multipart(protocol.message(kind, body, frames), copy=False)

    def receive(self, events: dict) -> Iterator[tuple[Kind, dict, list]]:
        if self.sock not in events:
            return
        for msg in sockets.waiting(self.sock):
            try:
                kind, body = protocol.decode(msg[0].bytes)
                frames = protocol.unpack(body, msg[1:])
            except protocol.ProtocolError as exc:
                print(f"corral client: dropped a malformed message: {exc}", file=sys.stderr)
                continue
            yield kind, body, frames

    def close(self) -> None:
        self.sock.close()


class _DirectLink:
    """The I/O loop's connection to the embedded broker, which this same thread serves.

    Messages are method calls both ways: no socket, no frames to build or
    parse, no copy.  The broker's answers wait in ``inbox`` until its turn ends.
    """

    def __init__(self, broker: Broker):
        self.broker = broker
        self.inbox: deque = deque()
        self.client = broker.attach(self.deliver)
        self.poller = broker.poller  # the loop waits on the broker's sockets, and its own wake pipe
        broker.start()

    def deliver(self, kind: Kind, body: dict | None, frames: list) -> None:
        self.inbox.append((kind, body or {}, frames))

    def post(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.broker.from_client(self.client, kind, body or {}, list(frames))

    def receive(self, events: dict) -> Iterator[tuple[Kind, dict, list]]:
        self.broker.step(events)
        while self.inbox:
            yield self.inbox.popleft()

    def close(self) -> None:
        self.broker.close()


_DONE = (FINISHED, CANCELLED_AND_NOTIFIED)
MAX_SPIN = 0.1  # seconds: polling longer than this before sleeping is surely a mistake
# map's default read-ahead grows with max_workers up to these, so that it stays lazy however many
# workers are claimed (max_workers=1_000_000 with address= would otherwise read 32 million items).
MAP_WINDOW = 4096  # tasks
MAP_CHUNK_WINDOW = 1024  # chunks
LINGER = 0.002  # seconds the I/O thread leaves the loop to callers after the last one left it
# Signals whose Python handlers could raise while the main thread handles the executor's
# messages: with one installed, the main thread waits for results instead of leading.
_WATCHED_SIGNALS = tuple(int(getattr(signal, name)) for name in ("SIGTERM", "SIGALRM", "SIGHUP", "SIGUSR1",
                                                                 "SIGUSR2", "SIGQUIT") if hasattr(signal, name))
# _signal, signal's C half, is called directly: signal.signal() and signal.getsignal() convert
# their arguments and results to and from enums at every call, ~3 us each, and a result() made
# nine such calls.
_SIGINT = int(signal.SIGINT)


def _main_thread_may_lead() -> bool:
    if _signal.getsignal(_SIGINT) not in (_signal.default_int_handler, 0, 1):  # or SIG_DFL, SIG_IGN
        return False
    return not any(callable(_signal.getsignal(sig)) for sig in _WATCHED_SIGNALS)


_UNGUARDED = contextlib.nullcontext()


class _SigintDeferred:
    """Ctrl-C while the main thread leads the loop: raised at once while it waits, and once
    they are handled while it handles messages (inside ``with``)."""

    def install(self) -> None:
        self.held = self.noted = False
        self.installed = _signal.getsignal(_SIGINT) is _signal.default_int_handler
        if self.installed:
            _signal.signal(_SIGINT, self.handler)

    def uninstall(self) -> None:
        if self.installed:
            _signal.signal(_SIGINT, _signal.default_int_handler)

    def handler(self, signum: int, frame: Any) -> None:
        if not self.held:
            raise KeyboardInterrupt
        self.noted = True

    def __enter__(self) -> None:
        self.held = True

    def __exit__(self, *exc_info: Any) -> None:
        self.held = False
        if self.noted:
            self.noted = False
            raise KeyboardInterrupt


def _cancel_now(fut: Future) -> bool:
    """Cancel a pending future and wake its waiters at once (the broker dropped its task).

    ``Future.cancel()`` alone leaves the future CANCELLED until its executor
    calls ``set_running_or_notify_cancel()``, which ``wait()`` and
    ``as_completed()`` wait for; no worker will ever take this task, so do it now.
    """
    if not Future.cancel(fut):
        return False
    with fut._condition:
        notify = fut._state == CANCELLED
    if notify:
        fut.set_running_or_notify_cancel()
    return True


def _settle(fut: Future, value: Any, exc: BaseException | None) -> None:
    """Complete a future; a done-callback that raises must not stop the I/O thread."""
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except BaseException:  # noqa: BLE001 - e.g. sys.exit() in a done-callback
        import traceback

        traceback.print_exc()


def _failure(meta: dict) -> BaseException:
    error, message = meta.get("error"), str(meta.get("message", ""))
    if error == protocol.ERR_SERIALIZATION:
        return SerializationError(message)
    if error == protocol.ERR_DESERIALIZATION:
        return DeserializationError(message)
    if error == protocol.ERR_WORKER_LOST:
        return WorkerLostError(message)
    if error == protocol.ERR_TIMEOUT:
        return TaskTimeoutError(message)
    if error == protocol.ERR_BROKEN:
        return BrokenProcessPool(
            f"A worker's initializer failed; the executor is broken and takes no more work.\n{message}"
        )
    return RuntimeError(f"task failed: {error}: {message}")


class Executor(_StdExecutor):
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
        address: a broker to use instead of the embedded one: "tcp://HOST:PORT"
            or "ipc://PATH"; anything else raises AddressError.
        retries: how often a task whose worker died is run again (default 2).
        task_timeout: default per-task time limit in seconds; a task that
            runs longer has its process killed and raises TaskTimeoutError.
        prefetch: tasks a local worker holds beyond the one it runs; by
            default it holds about 10 ms of work (at least one task more).
        idle_timeout: a local worker idle this many seconds exits; workers
            start again when work arrives.
        max_memory: a local worker whose task process uses more than this
            resident memory after a task (bytes, or a string like "2GB")
            gets a new task process.
        heartbeat, liveness: seconds between heartbeats, and how many may be
            missed before a peer counts as lost (default 1.0 and 3).
        kill_grace: seconds between SIGTERM and SIGKILL for ``Future.kill()``.
        spin: seconds a caller waiting in ``result()`` and a local worker's
            task process waiting for its next task poll before they sleep,
            while their recent waits were that short (default 200e-6; 0:
            sleep at once).  Waking a sleeping process costs tens of
            microseconds, most of a short task's round trip; the polling
            yields the CPU to any other process that wants it.
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
        address: str | None = None,
        retries: int = DEFAULT_RETRIES,
        task_timeout: float | None = None,
        prefetch: int | None = None,
        idle_timeout: float | None = None,
        max_memory: int | str | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        kill_grace: float = 2.0,
        spin: float = tuning.SPIN,
    ):
        if address is not None:
            addresses.check(address)  # AddressError now, not a ZMQError in the I/O thread and futures that hang
        if max_workers is None:
            max_workers = _usable_cpus()
        elif not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError("max_workers must be an integer")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context is not None and not hasattr(mp_context, "get_start_method"):
            raise TypeError("mp_context must be a multiprocessing context or None")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an integer >= 0")
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch < 0):
            raise ValueError("prefetch must be an integer >= 0")
        if idle_timeout is not None:
            check_seconds("idle_timeout", idle_timeout)
        check_seconds("heartbeat", heartbeat)
        kill_grace = check_seconds("kill_grace", kill_grace, zero=True)
        if isinstance(spin, bool) or not isinstance(spin, (int, float)) or not 0 <= spin <= MAX_SPIN:
            raise ValueError(f"spin must be a number of seconds from 0 to {MAX_SPIN:g}, not {spin!r}")
        spin = float(spin)
        if not isinstance(liveness, int) or isinstance(liveness, bool) or liveness < 1:
            raise ValueError(f"liveness must be an integer >= 1, not {liveness!r}")
        self._defaults = check_task_options({"timeout": task_timeout}) if task_timeout is not None else {}
        max_memory = parse_size(max_memory)
        if address is not None and (idle_timeout or max_memory or prefetch is not None):
            raise ValueError(
                "idle_timeout, max_memory and prefetch configure the workers an Executor starts itself; "
                "with address= give them to `corral worker` instead."
            )
        if address is not None and initializer is not None:
            raise ValueError(
                "initializer runs in the workers an Executor starts itself; with address= the "
                "workers belong to the broker. Run your setup inside the task instead."
            )
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._max_tasks_per_child = max_tasks_per_child
        self._fresh = fresh or max_tasks_per_child == 1
        if address is None and max_workers > MANY_WORKERS:  # refused before anything starts
            problem = refusal(max_workers, self._fresh)
            if problem:
                raise ValueError(f"max_workers={max_workers:,}: {problem}; ask for fewer workers")
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._functions = serialization.FunctionPickles()
        self._ctx = zmq.Context()
        self._tmpdir: str | None = None
        self._shm_dir: str | None = None  # large buffers to and from our own workers (shm.py)
        self._broker: Broker | None = None
        self._spawn = mp_context is not None and mp_context.get_start_method() == "spawn"
        if address is None:
            address = self._start_embedded(initializer, initargs, prefetch, idle_timeout, max_memory, heartbeat,
                                           liveness, spin)
        self._address = address
        self._io = _IOLoop(self._ctx, address, retries, self._cleanup, heartbeat, liveness, kill_grace, spin)
        self._io.store = shm.Store(self._shm_dir) if self._shm_dir else None
        self._io.broker = self._broker
        _live_loops.add(self._io)
        self._io.thread.start()
        weakref.finalize(self, self._io.close_when_done)

    def _start_embedded(self, initializer, initargs, prefetch: int | None, idle_timeout: float | None,
                        max_memory: int | None, heartbeat: float, liveness: int, spin: float) -> str:
        init = None
        if initializer is not None:  # before mkdtemp, so that a pickling error leaves no directory behind
            init = serialization.dumps((initializer, tuple(initargs)), "the initializer")[0]
        # mkdtemp makes the directory 0700: only this user can reach the sockets.
        self._tmpdir = tempfile.mkdtemp(prefix="corral-")
        self._shm_dir = shm.make_dir(os.path.basename(self._tmpdir))
        bootstrap = os.path.join(self._tmpdir, "bootstrap.pkl")
        with open(bootstrap, "wb") as f:
            pickle.dump((list(sys.path), init), f)
        max_tasks = None if self._fresh else self._max_tasks_per_child
        pool = LocalPool(
            None, self._max_workers, fresh=self._fresh, max_tasks=max_tasks,
            prefetch=None if prefetch is None else prefetch + 1,
            bootstrap=bootstrap, spawn=self._spawn, idle_timeout=idle_timeout, max_memory=max_memory,
            shm=self._shm_dir, spin=spin,
        )
        self._broker = Broker(None, context=self._ctx, pool=pool, embedded=True,
                              heartbeat=heartbeat, liveness=liveness)
        return "embedded"

    def _cleanup(self) -> None:
        """Runs in the I/O thread once it is done (and has closed the broker): remove files."""
        for path in (self._tmpdir, self._shm_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
        self._ctx.term()

    # -- the Executor API -------------------------------------------------------

    def _check_open(self) -> None:
        if self._io.broken is not None:
            raise self._io.broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        return self._submit_call(Call(fn, args, kwargs or None))

    def options(self, **options: Any) -> TaskOptions:
        """A view of this executor whose ``submit``/``map`` give every task ``options``.

        It shares this executor's connection and workers.  Valid options:
        ``retries`` (int >= 0: runs after the first one if the task's worker dies),
        ``timeout`` (seconds: the task's process is killed after this long and
        the future raises TaskTimeoutError), ``retry_on_timeout`` (bool: a
        timed-out task counts an attempt and runs again within ``retries``).
        """
        return TaskOptions(self, check_task_options(options))

    def _submit_call(self, call: Call, options: dict | None = None) -> Future:
        if self._defaults:
            options = {**self._defaults, **(options or {})}
        with self._shutdown_lock:
            self._check_open()
            try:
                frames = call_frames(call, self._functions)
            except SerializationError as exc:
                fut: Future = Future()  # only this future fails; the executor stays usable
                fut.set_exception(exc)
                return fut
            store = self._io.store
            if store is None or len(frames) < 3:
                return self._io.submit_frames(frames, options)
            frames, offloaded, paths = store.offload(frames, 2)  # the arguments' large buffers
            if not offloaded:
                return self._io.submit_frames(frames, options)
            fut = self._io.submit_frames(frames, {**(options or {}), "shm": offloaded})
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

    def _map(self, fn, iterables, timeout, chunksize, buffersize, options: dict | None) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0")
        if buffersize is None:  # chunks are larger units: fewer keep the workers busy
            if chunksize == 1:
                buffersize = min(MAP_WINDOW, max(256, 32 * self._max_workers))
            else:
                buffersize = min(MAP_CHUNK_WINDOW, max(64, 16 * self._max_workers))
        window = buffersize
        deadline = None if timeout is None else time.monotonic() + timeout
        argtuples = zip(*iterables)
        if chunksize == 1:
            calls = (Call(fn, args) for args in argtuples)
        else:
            calls = (Call(fn, chunk=chunk) for chunk in _chunks(argtuples, chunksize))
        inflight: deque[Future] = deque()
        for call in itertools.islice(calls, window):
            inflight.append(self._submit_call(call, options))
        submit = functools.partial(self._submit_call, options=options)
        return self._map_results(inflight, calls, deadline, chunksize > 1, submit, window)

    def _map_results(self, inflight: deque, calls: Iterator[Call], deadline, chunked: bool, submit, window: int):
        try:
            while inflight:
                # Yield straight from the call: no local keeps a yielded result alive (bpo-14406).
                if chunked:
                    yield from _next_result(inflight, calls, deadline, submit, window)
                else:
                    yield _next_result(inflight, calls, deadline, submit, window)
        finally:
            _cancel_all(inflight)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; finish (or cancel) what is pending; stop the workers."""
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            # Like ProcessPoolExecutor, which has already handed up to max_workers
            # calls to its processes, the oldest max_workers tasks are left to run
            # even if no worker has reported starting them yet.
            pending = [f for f in list(self._io.futures.values()) if not f.running()]
            _cancel_all(pending[self._max_workers:])
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
        with self._shutdown_lock:
            self._shutdown = True
        if self._io.thread.is_alive():
            self._io.request_terminate(hard)
        self.shutdown(wait=False)

    def summary(self, timeout: float = 10.0) -> Summary:
        """Per-worker statistics from the broker: one dict per worker."""
        if self._shutdown and not self._io.thread.is_alive():
            raise RuntimeError("summary() needs a running executor; call it before shutdown()")
        try:
            workers, counts = self._io.request_status().result(timeout)
        except FuturesTimeout:
            never = "" if self._io.welcomed else " (it has not answered this executor at all: is it running there?)"
            raise TimeoutError(f"the broker at {self._address} did not answer a status request within "
                               f"{timeout:g} s{never}") from None
        return Summary(workers, queued=counts.get("queued", 0), running=counts.get("running", 0))


class TaskOptions:
    """``Executor.options(...)``: the executor's ``submit`` and ``map`` with per-task options."""

    def __init__(self, executor: Executor, options: dict):
        self._executor = executor
        self._options = options

    def options(self, **more: Any) -> TaskOptions:
        return TaskOptions(self._executor, {**self._options, **check_task_options(more)})

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._executor._submit_call(Call(fn, args, kwargs or None), self._options)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        return self._executor._map(fn, iterables, timeout, chunksize, buffersize, self._options)


def _next_result(inflight: deque, calls: Iterator[Call], deadline, submit, window: int) -> Any:
    """Wait for the oldest task of a map; top the window up once half of it is consumed.

    Refilling by halves sends the next tasks as one batch, instead of one
    task, and one wake-up of the I/O thread, per result.
    """
    remaining = None if deadline is None else deadline - time.monotonic()
    try:
        value = inflight[0].result(remaining)
    except FuturesTimeout:
        raise FuturesTimeout() from None  # the builtin TimeoutError from Python 3.11; not before
    inflight.popleft()
    if len(inflight) <= window // 2:
        for call in itertools.islice(calls, window - len(inflight)):
            inflight.append(submit(call))
    return value


def _cancel_all(futures) -> None:
    """Cancel many futures with one round trip to the broker."""
    ours = [f for f in futures if isinstance(f, CorralFuture)]
    if ours:
        ours[0]._io.cancel(ours)
    for fut in futures:
        if not isinstance(fut, CorralFuture):
            fut.cancel()


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk
