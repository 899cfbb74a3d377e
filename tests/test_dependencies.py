"""Task dependencies: futures as arguments, ``options(after=)``, failures passed on, results held
by the broker only while a dependent needs them, and a DAG that loses a task process on the way."""

from __future__ import annotations

import operator
import os
import pickle
import signal
import time
from concurrent.futures import CancelledError

import pytest

import corral
from corral.client.gathering import Gathering
from corral.serialization import Call, call_frames
from helpers import wait_for

TIMEOUT = 30


def add(a, b):
    return a + b


def total(values):
    return sum(values)


def describe(mapping):
    return sorted(mapping["set"]), mapping["list"], mapping["tuple"], mapping["plain"]


def slow(value, seconds=0.3):
    time.sleep(seconds)
    return value


def fail(message):
    raise ValueError(message)


def stamp(path, value=None):
    """Append the time to ``path``: when a task ran."""
    with open(path, "a") as f:
        f.write(f"{time.time()!r}\n")
    return value


def die_once(marker, value):
    """Kill our own task process the first time (``marker`` not there yet); return ``value`` then."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def blob(size):
    import numpy

    return numpy.arange(size, dtype=numpy.uint8)


def checksum(array, extra):
    return int(array.sum()) + int(array.size) + extra


def held(ex) -> int:
    """Results the broker holds for dependents (its STATUS counts)."""
    return ex._io.request_status().result(TIMEOUT)[1]["held"]


def counts(ex) -> dict:
    return ex._io.request_status().result(TIMEOUT)[1]


def test_futures_as_arguments_on_every_worker_kind(mode_executor):
    """Top level, nested in lists, tuples, dicts and sets, and across several levels: each
    future stands for its result, and the broker keeps none of them afterwards."""
    ex = mode_executor(2)
    a, b = ex.submit(slow, 1, 0.2), ex.submit(slow, 2, 0.2)
    c = ex.submit(add, a, b)
    d = ex.submit(total, [a, b, c])
    e = ex.submit(describe, {"set": {a, b}, "list": [c, [d]], "tuple": (a,), "plain": 7})
    f = ex.submit(add, d, a)  # d is still waiting for c, which waits for a and b
    assert ex.summary().waiting in (3, 4)  # c (unless a and b are done already), d, e, f: not demand yet
    assert c.result(TIMEOUT) == 3
    assert d.result(TIMEOUT) == 6
    assert e.result(TIMEOUT) == ([1, 2], [3, [6]], (1,), 7)
    assert f.result(TIMEOUT) == 7
    assert list(ex.map(add, [a, b, c], [10, 20, 30], chunksize=2)) == [11, 22, 33]
    assert ex.submit(add, a, 100).result(TIMEOUT) == 101  # a is done: its value travels in place
    wait_for(lambda: held(ex) == 0, what="the broker to release the held results")


def test_after_orders_without_passing_data(make_executor, tmp_path):
    ex = make_executor(2)
    first, then = tmp_path / "first", tmp_path / "then"
    a = ex.submit(slow, "a", 0.5)
    b = ex.submit(stamp, str(first))
    c = ex.options(after=[a, b]).submit(stamp, str(then), "c")
    assert c.result(TIMEOUT) == "c"
    assert a.done() and b.done()
    assert float(then.read_text()) >= float(first.read_text())
    assert ex.options(after=a).submit(operator.neg, 5).result(TIMEOUT) == -5  # one future, done already


def test_a_failure_passes_down_the_graph_with_its_cause(make_executor):
    ex = make_executor(2)
    bad = ex.submit(fail, "boom")
    child = ex.submit(add, bad, 1)
    grandchild = ex.submit(add, child, 1)
    ordered = ex.options(after=[bad]).submit(operator.neg, 1)
    with pytest.raises(corral.DependencyError, match="raised ValueError: boom") as info:
        child.result(TIMEOUT)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "boom"
    assert cause.__traceback__ is not None  # the worker's traceback came along
    assert any(frame.name == "fail" for frame in __import__("traceback").extract_tb(cause.__traceback__))
    with pytest.raises(corral.DependencyError, match="1 step before it raised ValueError: boom") as deeper:
        grandchild.result(TIMEOUT)
    assert deeper.value.__cause__ is child.exception()
    with pytest.raises(corral.DependencyError):
        ordered.result(TIMEOUT)
    # Submitted after the failure is known: it fails at once, without going to the broker.
    late = ex.submit(add, bad, 1)
    assert isinstance(late.exception(TIMEOUT), corral.DependencyError)
    assert isinstance(late.exception().__cause__, ValueError)
    assert ex.submit(add, 1, 1).result(TIMEOUT) == 2  # the executor goes on


def test_a_long_chain_fails_without_recursion(make_executor):
    ex = make_executor(1)
    head = ex.submit(slow, 0, 0.3)
    chain = [head]
    for _ in range(3000):  # deeper than Python's recursion limit
        chain.append(ex.submit(add, chain[-1], 1))
    head.cancel() or head.kill()
    assert isinstance(chain[-1].exception(TIMEOUT), corral.DependencyError)
    assert all(isinstance(f.exception(TIMEOUT), corral.DependencyError) for f in chain[1:])


def test_cancelling_a_task_fails_what_waits_for_it(make_executor):
    ex = make_executor(1, prefetch=0)
    busy = ex.submit(slow, "busy", 1.0)
    queued = ex.submit(slow, 1, 0)
    waiting = ex.submit(add, queued, 1)
    after = ex.options(after=[waiting]).submit(operator.neg, 1)
    wait_for(busy.running, what="the first task to start")
    assert queued.cancel()
    for fut in (waiting, after):
        exc = fut.exception(TIMEOUT)
        assert isinstance(exc, corral.DependencyError)
    assert isinstance(waiting.exception().__cause__, CancelledError)
    assert "was cancelled" in str(waiting.exception())
    assert busy.result(TIMEOUT) == "busy"


def test_a_waiting_task_can_be_cancelled_and_killed(make_executor):
    ex = make_executor(1)
    a = ex.submit(slow, 1, 0.5)
    waiting = ex.submit(add, a, 1)
    assert waiting.cancel()
    killed = ex.submit(add, a, 2)
    assert killed.kill()
    child = ex.submit(add, killed, 1)
    assert killed.cancelled()
    assert isinstance(child.exception(TIMEOUT), corral.DependencyError)
    assert a.result(TIMEOUT) == 1
    wait_for(lambda: held(ex) == 0, what="no result held for cancelled dependents")
    assert counts(ex)["waiting"] == 0


def test_a_lost_task_inside_a_graph_gives_every_result_once(mode_executor, tmp_path):
    """A dependency whose process dies is run again; so is a dependent; each downstream task
    runs once its inputs exist, and every result comes once."""
    ex = mode_executor(2, retries=2)
    leaves = [ex.submit(slow, i, 0.05) for i in range(8)]
    middle = [ex.submit(die_once, str(tmp_path / f"m{i}"), ex_add) for i, ex_add in enumerate([0] * 2)]
    sums = [ex.submit(add, leaves[i], leaves[i + 1]) for i in range(0, 8, 2)]
    lost = ex.submit(die_once, str(tmp_path / "dependent"), sums[0])  # dies while holding a dependency's result
    top = ex.submit(total, [*sums, lost, *middle])
    assert top.result(TIMEOUT) == sum(range(8)) + 1
    assert (tmp_path / "dependent").exists()
    wait_for(lambda: held(ex) == 0, what="the held results to go")


def test_large_results_go_from_worker_to_worker(mode_executor):
    """A dependency's large result (out-of-band buffers; in shared memory on the embedded pool)
    reaches its dependent, and stays valid after the client has its own copy."""
    pytest.importorskip("numpy")
    ex = mode_executor(2)
    size = 8 << 20
    big = ex.submit(blob, size)
    one = ex.submit(checksum, big, 1)
    two = ex.submit(checksum, big, 2)
    expected = sum(i % 256 for i in range(256)) * (size // 256) + size
    assert one.result(TIMEOUT) == expected + 1
    assert two.result(TIMEOUT) == expected + 2
    assert int(big.result(TIMEOUT).sum()) + size == expected
    later = ex.submit(checksum, big, 3)  # done: travels inline from the client
    assert later.result(TIMEOUT) == expected + 3


def test_a_dependency_finished_before_its_dependent_arrived(make_executor):
    """The race between pickling a dependent and its dependency finishing: the broker no longer
    knows the dependency; the client sends the task again with the result inline."""
    ex = make_executor(1)
    a = ex.submit(slow, 5, 0.2)
    met = Gathering(ex._io, ex._objects)
    frames = call_frames(Call(add, (a, 1)), ex._functions, met)
    assert met.take()[0].pending == [a]
    assert a.result(TIMEOUT) == 5  # finished and forgotten by the broker before the dependent arrives
    late = ex._io.submit_frames(frames, {"deps": [a._cid]}, ([a], []))
    assert late.result(TIMEOUT) == 6
    failed = ex.submit(fail, "gone")
    failed.exception(TIMEOUT)
    # Sent as if it had been pickled while the dependency was still pending:
    late_fail = ex._io.submit_frames(frames, {"deps": [failed._cid]}, ([failed], []))
    assert isinstance(late_fail.exception(TIMEOUT), corral.DependencyError)


def test_what_cannot_be_a_dependency(make_executor):
    ex, other = make_executor(1), make_executor(1)
    mine = ex.submit(slow, 1, 0.1)
    with pytest.raises(ValueError, match="another executor"):
        other.submit(add, mine, 1)
    with pytest.raises(ValueError, match="another executor"):
        other.options(after=[mine]).submit(operator.neg, 1)
    with pytest.raises(TypeError, match="list of futures"):
        ex.options(after=[1, 2])
    with pytest.raises(TypeError, match="list of futures"):
        ex.options(after="f")
    with pytest.raises(TypeError, match="only as an argument"):
        pickle.dumps(mine)

    def closure():
        return mine

    in_function = ex.submit(closure)  # the function is pickled apart from the arguments
    assert isinstance(in_function.exception(TIMEOUT), corral.SerializationError)
    assert mine.result(TIMEOUT) == 1


def test_the_standalone_broker_refuses_malformed_dependencies(broker_address):
    """A client that lies about dependencies gets its SUBMIT dropped, and the broker serves on."""
    import zmq

    from corral.security.credentials import resolve
    from corral.wire import protocol, sockets

    target = resolve(broker_address, "client")
    ctx = zmq.Context()
    sock = sockets.dealer(ctx, target.address, linger=0, curve=target.curve)
    try:
        sock.send_multipart(protocol.message(protocol.Kind.HELLO, {"role": "client"}))
        assert sock.poll(TIMEOUT * 1000)
        assert protocol.decode(sock.recv_multipart()[0])[0] == protocol.Kind.WELCOME
        fn, args = b"x", b"y"
        for bad in ({"deps": "1"}, {"deps": [-1]}, {"deps": [[5]]}, {"after": [1.5]}, {"deps": [[0]]},
                    {"deps": list(range(protocol.MAX_DEPENDENCIES + 1))}):
            sock.send_multipart(protocol.message(protocol.Kind.SUBMIT, {"tasks": [[1, 2, bad]]}, [fn, args]))
        sock.send_multipart(protocol.message(protocol.Kind.STATUS))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and sock.poll(1000):
            kind, body = protocol.decode(sock.recv_multipart()[0])
            if kind == protocol.Kind.STATUS_REPLY:
                assert body["queued"] == 0 and body["waiting"] == 0
                break
        else:
            pytest.fail("no STATUS_REPLY")
    finally:
        sock.close(0)
        ctx.term()
