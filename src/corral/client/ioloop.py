"""The executor's I/O loop: the one thread that talks to the broker.

Data flow::

    user threads                         I/O thread (owns the broker link)          broker
    submit(fn, *args)                    IOLoop.run()
      pickle Call in the caller's thread   |
      futures[cid] = CorralFuture          |
      outq.append(...) + wake pipe ------> SUBMIT batch  ---------------------->  queue
                                           STARTED  <----------------------------  worker began
                                             mark_started(future): it runs now
                                           RESULT   <----------------------------  outcome
                                             unpickle, set_result/set_exception

Only this loop touches the link (ZeroMQ sockets are not thread-safe).  User
threads hand it work through a deque and wake it with one byte on a pipe,
written only when it is not already awake, so a burst of submits costs one
wake-up and leaves as one batch.  A caller waiting for a result may run the loop
itself meanwhile (``leading.py``).  With no address, the loop serves the
embedded broker too (``links.DirectLink``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures._base import PENDING
from concurrent.futures.process import BrokenProcessPool

import zmq

from ..broker.broker import Broker
from ..errors import BrokerLostError
from ..logs import Throttle, logger
from ..wire import protocol, shm
from ..wire.poller import POLLIN, Spin
from ..wire.protocol import Kind
from . import dependents, outcomes, output, reports
from .future import CorralFuture, cancel_now, mark_started, settle
from .leading import Leading, SigintDeferred
from .links import DirectLink, Link, SocketLink
from .standing import Standing

_UNGUARDED = contextlib.nullcontext()  # a turn of the I/O thread: nothing to hold back

# I/O loops still running, including those of executors shut down with wait=False.
live_loops: set = set()
interpreter_exiting = False


def _python_exit() -> None:
    """Before the interpreter joins threads: let every open executor finish its work."""
    global interpreter_exiting
    interpreter_exiting = True
    for io in list(live_loops):
        io.close_when_done()
    for io in list(live_loops):
        io.thread.join()


threading._register_atexit(_python_exit)


class IOLoop(Standing):
    """Owns the executor's link to its broker; runs in its own thread until the executor closes
    (or, while they wait for a result, in the threads of callers: ``leading.py``)."""

    def __init__(self, ctx: zmq.Context, address: str, retries: int, cleanup: Callable[[], None],
                 heartbeat: float, liveness: int, kill_grace: float, spin: float,
                 curve: tuple[bytes, bytes, bytes] | None = None):
        self.ctx = ctx
        self.address = address
        self.curve = curve  # CurveZMQ keys: (the broker's public, ours public, ours secret)
        self.retries = retries
        self.cleanup = cleanup
        self.kill_grace = kill_grace
        self.futures: dict[int, CorralFuture] = {}
        self.outq: deque = deque()
        self.objects_out: deque = deque()  # PUT and RELEASE, in order, ahead of the SUBMITs after them (objects.py)
        self.cancels: deque = deque()
        self.cancel_verdicts: dict[int, Future] = {}
        self.status_asked: deque[Future] = deque()  # summary() calls whose STATUS is not sent yet
        self.status_waiters: deque[Future] = deque()  # STATUS sent: the answers come in this order
        self.ids = itertools.count(1)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.awake = False
        self.closing = False
        self.broken: BaseException | None = None
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.welcomed = False  # the broker answered our last HELLO
        self.session: str | None = None  # a broker elsewhere's token for us, to resume on a new connection
        self.resuming = False  # we said HELLO with it, and wait for the answer (broker/sessions.py)
        self.complain = Throttle(logger("client").warning)
        self.broker: Broker | None = None  # an embedded broker, served by this loop's thread
        self.store: shm.Store | None = None  # large buffers to and from an embedded broker's workers
        self.thread = threading.Thread(target=self.run, name="corral-io", daemon=True)
        # Set once the link is made (an embedded broker's workers spawned), or the thread failed.
        self.started = threading.Event()
        self.leading = Leading(self, spin)  # callers waiting for a result run the loop meanwhile
        self.holding_outcomes = False  # a leader handles messages: outcomes wait in held_outcomes
        self.held_outcomes: deque = deque()
        self.link: Link | None = None
        self.output: output.Writer | None = None  # writes forwarded task output (output.py), from the first

    # -- called from user threads ---------------------------------------------

    def wake(self) -> None:
        """Wake the loop (one byte on its pipe, unless it is awake already)."""
        if not self.awake:
            self.awake = True
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                pass  # the loop has finished and closed the pipe

    def submit_frames(self, frames: list, options: dict | None = None, waits: tuple | None = None) -> CorralFuture:
        """A new future for a task of these frames; the task leaves with the loop's next SUBMIT.
        ``waits``: the futures it waits for, (arguments, after) (``dependents.py``)."""
        cid = next(self.ids)
        fut = CorralFuture(self, cid)
        if waits is not None:
            fut._waits = dependents.Waits(*waits, frames, options)
        self.futures[cid] = fut
        self.outq.append(protocol.task_entry(cid, len(frames), options) + [frames])
        self.wake()
        return fut

    def post_object(self, kind: Kind, body: dict, frames: list = ()) -> None:
        """Have the loop send a PUT or a RELEASE (``objects.py``), from any thread."""
        self.objects_out.append((kind, body, frames))
        self.wake()

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
                verdicts.append(cancel_now(fut))
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
            verdicts[i] = dropped and cancel_now(fut)
        return verdicts  # type: ignore[return-value]

    def request_kill(self, cid: int, grace: float) -> None:
        """Have the loop send KILL for a task."""
        self.cancels.append((Kind.KILL, cid, grace))
        self.wake()

    def request_terminate(self, hard: bool) -> None:
        """Have the loop send KILL for every task of this client (SIGKILL if ``hard``)."""
        self.cancels.append((Kind.KILL, None, "SIGKILL" if hard else "SIGTERM"))
        self.wake()

    def request_status(self, body: dict | None = None) -> Future:
        """Have the loop send STATUS (with ``body``); a future for (worker records, counts, the rest of the status)."""
        fut: Future = Future()
        fut.status_body = body  # (sent with it, and again if it must be asked again)
        self.status_asked.append(fut)
        self.wake()
        return fut

    def never_ran(self) -> None:
        """The thread could not be started: end as ``run`` would have (the embedded broker, the wake-up
        pipe, the executor's files), and forget this loop."""
        if self.broker is not None:
            self.broker.close()
        self._close_wake_pipe()
        self.cleanup()
        live_loops.discard(self)

    def _close_wake_pipe(self) -> None:
        self.awake = True  # wake() must not write any more: the pipe's fd numbers may be reused
        os.close(self.wake_r)
        os.close(self.wake_w)

    def close_when_done(self) -> None:
        """Let the loop end once every future is done."""
        self.closing = True
        self.wake()

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        """The I/O thread: say HELLO, run turns until closed, say BYE; on any failure, fail every future."""
        self.last_heard = self.last_beat = self.last_turn = time.monotonic()
        link = None
        try:
            link = SocketLink(self.ctx, self.address, self.curve) if self.broker is None else DirectLink(self.broker)
            self.started.set()
            self.poller = link.poller
            self.poller.register(self.wake_r, POLLIN)
            self.hello(link)
            self.link = link
            while True:
                self.leading.stand_aside()
                with self.leading.loop_lock:
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
            self.started.set()
            if link is not None:
                link.close()
            self._close_wake_pipe()
            if self.output is not None:
                self.output.close()
            self.cleanup()
            live_loops.discard(self)

    def turn(self, limit: float | None = None, guard: SigintDeferred | None = None,
             spin: Spin | None = None) -> bool:
        """One turn of the loop: wait for messages (at most ``limit`` seconds; polling for
        a while first with ``spin``), handle them, send what waits.  True: the loop is over
        (closed, or the broker is lost)."""
        link = self.link
        if self.awake and self.broker is None:
            # Work was queued (its byte written, or about to be): it leaves for the broker elsewhere
            # before we wait, so that a caller leading after its submit waits once, for its answer.
            # (Not to an embedded broker: what it is given is dispatched in its step, after the poll.)
            with guard or _UNGUARDED:
                self.take_wake()
                self.send_pending(link)
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
                self.take_wake()
            if self.send_pending(link):  # a broker busy spilling did not read for a while:
                events.update(self.poller.poll(0))  # what it said meanwhile shows it lives
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
                    keys = (" If it runs, its key may not be the one in the connection file, or it refused "
                            "this client's key (its log says so)." if self.curve else "")
                    note = getattr(self.link, "handshake_note", lambda: "")()
                    why = (f"no broker answered at {self.address} within {silence:.1f} s (is `corral broker` "
                           f"running there, and reachable from here?).{note or keys}")
                self.start_over(BrokerLostError(f"{why} Later tasks go to the broker once it answers."))
            return self.closing and not self.futures and not self.outq

    def take_wake(self) -> None:
        """Read the wake pipe's bytes: later work writes one again (``wake``)."""
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:  # (its writer set ``awake`` and has not written yet)
            pass
        self.awake = False

    def settle_held_outcomes(self) -> None:
        """Set the outcomes a leader's turn read (unpickling and callbacks run user code)."""
        while self.held_outcomes:
            outcomes.resolve(self, *self.held_outcomes.popleft())

    def send_pending(self, link: Link) -> bool:
        # Take the cancels before the submits: a task cancelled by now was put in
        # outq before that, so its SUBMIT leaves below, ahead of its CANCEL. (Taken
        # after, a task submitted and cancelled meanwhile would be cancelled at the
        # broker before it arrived there, and then run.)
        """Send what user threads queued: cancels and kills, SUBMIT batches, STATUS requests.  True: the
        SUBMITs took long (half a heartbeat) to leave."""
        if not (self.cancels or self.outq or self.objects_out or self.status_asked):
            return False  # (most turns: a leader's work went before it waited)
        requests = []
        while self.cancels:
            requests.append(self.cancels.popleft())
        entries, frames = [], []
        while self.outq:
            *entry, task_frames = self.outq.popleft()
            entries.append(entry)
            frames.extend(task_frames)
        while self.objects_out:  # taken after the tasks: those that use an object were queued after its PUT
            link.post(*self.objects_out.popleft())
        slow = False
        if entries:
            sending = time.monotonic()
            for chunk, chunk_frames in protocol.batches(entries, frames, 1):
                link.post(Kind.SUBMIT, {"tasks": chunk}, chunk_frames)
            slow = time.monotonic() - sending > self.heartbeat / 2
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
            fut = self.status_asked.popleft()
            self.status_waiters.append(fut)
            link.post(Kind.STATUS, fut.status_body)
        return slow

    def on_message(self, kind: Kind, body: dict, frames: list) -> None:
        """One message from the broker."""
        try:
            if kind == Kind.RESULT:
                entries = (protocol.pair_entries(body["results"], frames, 2) if self.broker is not None  # (ours)
                           else protocol.split_entries(body, "results", frames, 4))
                for entry, payload in entries:
                    payload = [f.buffer if isinstance(f, zmq.Frame) else f for f in payload]
                    if self.holding_outcomes:
                        self.held_outcomes.append((entry, payload))
                    else:
                        outcomes.resolve(self, entry, payload)
            elif kind == Kind.UNPLACED:
                reason = body.get("reason")
                reason = protocol.text(reason, 1000) if reason is not None else None
                for cid in body.get("ids", ()):
                    fut = self.futures.get(cid)
                    if fut is not None:
                        fut._unplaced = reason
            elif kind == Kind.STARTED:
                now = time.time()
                for cid in body.get("ids", ()):
                    fut = self.futures.get(cid)
                    if fut is not None:
                        fut._heard_started = now
                        mark_started(fut)
            elif kind == Kind.CANCELLED:
                for cid in body.get("ids", ()):
                    self.futures.pop(cid, None)  # dropped: no RESULT will come
                    self.answer_cancel(cid, True)
                for cid in body.get("running", ()):
                    self.answer_cancel(cid, False)
            elif kind == Kind.WELCOME:
                self.heartbeat, self.liveness = protocol.timing(body, self.heartbeat, self.liveness)
                if self.resuming:
                    self.resumed(body)
                session = body.get("session")
                self.session = session if isinstance(session, str) and len(session) <= 64 else None
                self.welcomed = True
            elif kind == Kind.STATUS_REPLY:
                if self.status_waiters:  # (worker records, counts, the rest: status.assemble)
                    workers = json.loads(bytes(frames[0])) if frames else []
                    more = json.loads(bytes(frames[1])) if len(frames) > 1 else {}
                    self.status_waiters.popleft().set_result((workers, body, more))
            elif kind == Kind.ERROR:
                self.refused(body)
            elif kind == Kind.PROGRESS:
                reports.receive(self.futures, body)  # corral.report() in a running task
            elif kind == Kind.OUTPUT:
                output.received(self, body)
        except (protocol.ProtocolError, KeyError, TypeError, ValueError, IndexError) as exc:
            self.complain(f"dropped a malformed message: {type(exc).__name__}: {exc}")

    def answer_cancel(self, cid: int, dropped: bool) -> None:
        """Answer a ``cancel()`` waiting for the broker's verdict."""
        verdict = self.cancel_verdicts.pop(cid, None)
        if verdict is not None:
            verdict.set_result(dropped)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending future and status request with ``exc``."""
        for cid in list(self.cancel_verdicts):
            self.answer_cancel(cid, False)
        for fut in list(self.futures.values()):
            settle(fut, None, exc)
        self.futures.clear()
        for waiters in (self.status_waiters, self.status_asked):
            while waiters:
                waiters.popleft().set_exception(exc)
