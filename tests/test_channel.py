"""The socket pair between a supervisor and its task process (runner.Channel), and the
task process's cache of unpickled functions, over real sockets."""

from __future__ import annotations

import pickle
import socket
import threading

import pytest

from corral import serialization
from corral.tuning import CHANNEL_READ_CHUNK
from corral.worker import channel as runner
from helpers import TIMEOUT


@pytest.fixture
def channel_pair():
    ours, theirs = socket.socketpair()
    writer, reader = runner.Channel(ours), runner.Channel(theirs.detach())  # the reader as a bare descriptor
    yield writer, reader
    writer.close()
    reader.close()


def _send_all(writer: runner.Channel, messages: list) -> threading.Thread:
    """Write the messages from a thread: a large one fills the socket buffer before it is read."""
    thread = threading.Thread(target=lambda: [writer.send(h, f) for h, f in messages], daemon=True)
    thread.start()
    return thread


def test_messages_of_every_size_arrive_whole_and_in_order(channel_pair):
    writer, reader = channel_pair
    chunk = CHANNEL_READ_CHUNK
    sizes = [0, 1, 100, chunk - 200, chunk - 12, chunk, chunk + 1, 3 * chunk + 5, 7, 5 << 20, 2, 3]
    messages = [(("m", i), [bytes([i % 251]) * size, b"tail"]) for i, size in enumerate(sizes)]
    thread = _send_all(writer, messages)
    for header, frames in messages:
        got_header, got_frames = reader.recv()
        assert got_header == header
        assert [bytes(f) for f in got_frames] == frames
    thread.join(TIMEOUT)
    assert not reader.buffered()


def test_a_large_message_gets_a_writable_buffer_a_small_one_a_view_without_copy(channel_pair):
    # Only a message of READ_CHUNK or more can carry an out-of-band buffer, which the
    # unpickler hands to user code as it is: it must be writable, as a pickled array is.
    assert CHANNEL_READ_CHUNK <= serialization.OOB_THRESHOLD
    writer, reader = channel_pair
    thread = _send_all(writer, [(("small",), [b"abc"]), (("large",), [b"x" * serialization.OOB_THRESHOLD])])
    _, small = reader.recv()
    _, large = reader.recv()
    thread.join(TIMEOUT)
    assert small[0].readonly
    assert not large[0].readonly
    large[0][0] = ord("y")


def test_the_other_end_closing_mid_message_is_end_of_file(channel_pair):
    writer, reader = channel_pair
    head = pickle.dumps((("cut",), [1000]), protocol=5)
    whole = runner._LENGTHS.pack(4 + len(head) + 1000, len(head)) + head + b"z" * 1000
    writer.sock.sendall(whole[:-10])
    writer.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError):
        reader.recv()


def square(x):
    return x * x


def test_function_cache_looks_up_any_buffer_and_drops_the_oldest():
    cache = serialization.FunctionCache(size=2)
    pickled = pickle.dumps(square)
    fn = cache.loads(memoryview(pickled), "f")  # read-only: looked up as it is
    assert fn(3) == 9
    assert cache.loads(memoryview(bytearray(pickled)), "f") is fn  # writable: looked up by a copy
    assert cache.loads(pickled, "f") is fn
    cache.loads(pickle.dumps(abs), "abs")
    cache.loads(pickle.dumps(len), "len")
    assert list(cache.cache) == [pickle.dumps(abs), pickle.dumps(len)]
