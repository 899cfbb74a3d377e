"""Large frames on CurveZMQ links go in chunks and arrive whole (wire/chunks.py).

The split and the join alone, with frames as ZeroMQ delivers them; markers a lying peer
could send; and large arguments, results and put() objects through a real ``corral broker``
with CurveZMQ and a real ``corral worker``, which must arrive unchanged and writable.
"""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
import zmq

import corral
from corral.errors import ProtocolError
from corral.tuning import CHUNK_BYTES, SPLIT_BYTES
from corral.wire import chunks, largebuf
from helpers import TIMEOUT, start_worker, stop

LARGE = SPLIT_BYTES + CHUNK_BYTES // 2 + 3  # split, and its last chunk is short


def delivered(msg: list) -> list:
    """``msg`` as ZeroMQ hands it to a receiver: zmq.Frames."""
    return [zmq.Frame(bytes(memoryview(f).cast("B"))) for f in msg]


def payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("at", [0, 1])  # a DEALER's message, and a ROUTER's (identity first)
def test_split_then_join_gives_back_every_frame(at):
    big1, big2 = payload(LARGE, 1), np.arange(SPLIT_BYTES // 8, dtype=np.float64)
    msg = [b"ident"] * at + [b"\x02\x03{}", b"small", big1, b"", big2, b"tail"]
    sent = chunks.split(msg, at)
    assert len(sent) == len(msg) + 1 + (-(-LARGE // CHUNK_BYTES) - 1) + (SPLIT_BYTES // CHUNK_BYTES - 1)
    assert sent[at][0] == chunks.MARK and sent[at + 1] == msg[at]
    got = delivered(sent)
    assert chunks.is_split(got, at)
    back = chunks.join(got, at)
    assert [bytes(f.buffer if isinstance(f, zmq.Frame) else f) for f in back] == [
        bytes(memoryview(f).cast("B")) for f in msg]
    assert isinstance(back[at + 2], memoryview) and not back[at + 2].readonly  # writable, as a received frame is
    assert isinstance(back[at], zmq.Frame)  # the header stays the frame ZeroMQ gave (its User-Id)


def test_a_message_without_large_frames_is_sent_as_it_is():
    msg = [b"\x02\x03{}", b"x" * (SPLIT_BYTES - 1)]
    assert chunks.split(msg, 0) is msg
    assert not chunks.is_split(delivered(msg), 0)
    assert not chunks.is_split(delivered([b""]), 0)


def marker(*runs: tuple[int, int]) -> bytes:
    return bytes((chunks.MARK,)) + b"".join(struct.pack("<II", *run) for run in runs)


@pytest.mark.parametrize("mark, frames", [
    (marker(), 4),  # names no run
    (marker((1, 2))[:-1], 4),  # not a whole number of runs
    (marker((1, 1)), 4),  # one chunk is no split
    (marker((0, 2)), 4),  # the header is not a chunk
    (marker((2, 3)), 4),  # past the last frame
    (marker((1, 2), (2, 2)), 6),  # runs overlap
    (marker((3, 2), (1, 2)), 6),  # out of order
    (marker((1, 0xFFFFFFFF)), 4),  # absurd
])
def test_a_marker_that_does_not_fit_its_message_is_refused(mark, frames):
    msg = delivered([b"ident", mark, b"\x02\x03{}"] + [b"c"] * (frames - 1))
    with pytest.raises(ProtocolError):
        chunks.join(msg, 1)


def _echo(x):
    return x


def _grow(a):
    a[0] += 1  # the argument arrives writable
    return a


def _total(ref):
    return int(ref.sum())


def _blob(n):
    return bytes(range(256)) * (n // 256)  # a large pickle frame, not an out-of-band buffer


echo = type(_echo)(_echo.__code__, {}, "echo")  # by value: the worker cannot import this module
grow = type(_grow)(_grow.__code__, {}, "grow")
total = type(_total)(_total.__code__, {"int": int}, "total")
blob = type(_blob)(_blob.__code__, {"bytes": bytes, "range": range}, "blob")


def test_large_arguments_results_and_objects_cross_a_curve_broker_whole(broker_address):
    assert broker_address.endswith(".json")  # a CurveZMQ broker's connection file
    worker = start_worker(broker_address, "--processes", "1")
    try:
        with corral.Executor(address=broker_address) as ex:
            arr = np.random.default_rng(3).random(LARGE // 8)
            back = ex.submit(echo, arr).result(TIMEOUT)
            assert np.array_equal(back, arr) and back.flags.writeable
            grown = ex.submit(grow, arr.copy()).result(TIMEOUT)
            assert grown[0] == arr[0] + 1 and np.array_equal(grown[1:], arr[1:])
            ref = ex.put(np.ones(3 * SPLIT_BYTES // 8, dtype=np.int64))
            assert ex.submit(total, ref).result(TIMEOUT) == 3 * SPLIT_BYTES // 8
            assert ex.submit(blob, 2 * SPLIT_BYTES).result(TIMEOUT) == bytes(range(256)) * (2 * SPLIT_BYTES // 256)
            assert [len(b) for b in ex.map(echo, [b"x" * 10, payload(LARGE, 4), b""])] == [10, LARGE, 0]
    finally:
        stop(worker)


@pytest.mark.parametrize("size", [0, 10, largebuf.HUGE_FROM - 1, largebuf.HUGE_FROM, 3 * largebuf.HUGE_FROM + 7])
def test_large_receive_buffers_are_writable_zeroed_and_outlive_their_maker(size):
    largebuf.trim(float("inf"))  # none kept from earlier tests: this one is new, and zeroed
    view = largebuf.buffer(size)
    assert view.nbytes == size and not view.readonly and view.format == "B"
    assert not any(view[::4096]) and (size == 0 or view[-1] == 0)
    if size:
        view[-1] = 7
        array = np.frombuffer(view, dtype=np.uint8)  # as the unpickler hands an out-of-band buffer on
        del view
        array[0] = 1
        assert array[0] == 1 and array[-1] == 7 and array.flags.writeable


@pytest.fixture
def reusing(monkeypatch):
    """Large buffers reused in this process, as in a supervisor or a broker (``largebuf.reuse``)."""
    largebuf.trim(float("inf"))
    monkeypatch.setattr(largebuf, "_reusing", True)
    yield
    largebuf.trim(float("inf"))


def test_a_large_buffer_whose_views_are_gone_is_used_again_and_shows_nothing_of_its_past(reusing):
    """A mapping is reused once every view of it is gone (not while one lives, whatever holds it),
    for a buffer of the same whole huge pages; what lies past the new buffer's end, which its
    ``obj`` reaches, is zeroed; an unused one is let go after ``KEEP_SECONDS``."""
    size = largebuf.HUGE_FROM + 3 * 4096
    first = largebuf.buffer(size)
    first[:] = b"\xff" * size
    mapping = id(first.obj)  # (not the mapping itself: a reference would keep it in use)
    held = np.frombuffer(first, dtype=np.uint8)  # an array the unpickler would have handed on
    del first
    other = largebuf.buffer(size)
    assert id(other.obj) != mapping, "reused while an array still held it"
    mappings = {mapping, id(other.obj)}
    other[:] = b"\xff" * size
    del other
    del held
    again = largebuf.buffer(size - 5000)  # another size within the same whole huge pages
    assert id(again.obj) in mappings and len(largebuf._mapped) == 2
    assert again[-1] == 0xFF  # not zeroed: every caller writes all of it
    assert not any(bytes(again.obj)[len(again):]), "what lies past its end is zeroed"
    del again
    largebuf.trim(time.monotonic() + largebuf.KEEP_SECONDS)
    assert largebuf._mapped == [], "let go after KEEP_SECONDS"


def test_unused_large_buffers_kept_for_reuse_stay_under_their_bound(reusing, monkeypatch):
    """Buffers of ever new sizes do not pile up: the unused ones kept stay within ``KEEP_BYTES``,
    and one larger than that is never kept."""
    monkeypatch.setattr(largebuf, "KEEP_BYTES", 3 * largebuf.HUGE_FROM)
    for i in range(8):
        view = largebuf.buffer(largebuf.HUGE_FROM + i * (2 << 20))
        del view
        unused = sum(len(entry[0]) for entry in largebuf._mapped if largebuf._unused(entry))
        assert unused <= max(largebuf.KEEP_BYTES, largebuf.HUGE_FROM + i * (2 << 20))
    assert len(largebuf._mapped) <= 2
    largebuf.trim(float("inf"))
    assert largebuf._mapped == []
    big = largebuf.buffer(largebuf.KEEP_BYTES + 1)
    assert len(big) == largebuf.KEEP_BYTES + 1 and largebuf._mapped == []


def test_large_buffers_are_not_kept_where_reuse_was_not_asked_for_nor_in_a_forked_child(reusing):
    """A task process or a remote client, which may idle long after one large message, keeps none;
    a child forked from a process that reuses them does not inherit the habit."""
    view = largebuf.buffer(largebuf.HUGE_FROM)
    assert len(largebuf._mapped) == 1
    del view
    pid = os.fork()
    if pid == 0:
        code = 0 if (largebuf._mapped == [] and not largebuf._reusing) else 1
        largebuf.buffer(largebuf.HUGE_FROM)
        os._exit(code if largebuf._mapped == [] else 2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
