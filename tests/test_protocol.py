"""The wire protocol: header encoding, malformed input, and a broker facing garbage."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
import zmq

import corral
from corral.broker.broker import Broker
from corral.wire import protocol, stream
from corral.wire.protocol import Kind
from helpers import TIMEOUT

# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_encode_decode_round_trip(kind):
    body = {"tasks": [[1, 2, {"retries": 1}]], "text": "é ✓", "n": 3.5, "flag": None}
    assert protocol.decode(protocol.encode(kind, body)) == (kind, body)
    assert protocol.decode(protocol.encode(kind)) == (kind, {})
    assert protocol.decode(protocol.encode(kind, {})) == (kind, {})


def test_header_layout():
    frame = protocol.encode(Kind.HELLO, {"role": "client"})
    assert frame[0] == protocol.VERSION
    assert frame[1] == Kind.HELLO
    assert json.loads(frame[2:]) == {"role": "client"}
    assert protocol.decode(memoryview(frame)) == (Kind.HELLO, {"role": "client"})


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes([protocol.VERSION]),
        bytes([protocol.VERSION + 1, Kind.HELLO]),
        bytes([0, Kind.HELLO]) + b"{}",
        bytes([protocol.VERSION, 0]),
        bytes([protocol.VERSION, 200]),
        bytes([protocol.VERSION, Kind.HELLO]) + b"not json",
        bytes([protocol.VERSION, Kind.HELLO]) + b"{\"unterminated\": ",
        bytes([protocol.VERSION, Kind.HELLO]) + b"[1, 2, 3]",
        bytes([protocol.VERSION, Kind.HELLO]) + b"\"a string\"",
        bytes([protocol.VERSION, Kind.HELLO]) + b"42",
        bytes([protocol.VERSION, Kind.HELLO]) + b"null",
        bytes([protocol.VERSION, Kind.HELLO]) + b"\xff\xfe\xfd",
        bytes([protocol.VERSION, Kind.HELLO]) + b"[" * 100_000,
        bytes([protocol.VERSION, Kind.HELLO]) + b"{\"a\": \"" + b"x" * protocol.MAX_HEADER_BYTES + b"\"}",
    ],
    ids=[
        "empty", "one-byte", "newer-version", "version-0", "kind-0", "unknown-kind", "not-json",
        "truncated-json", "json-list", "json-string", "json-number", "json-null", "bad-utf8",
        "deeply-nested", "too-large",
    ],
)
def test_malformed_headers_raise_protocol_error(frame):
    with pytest.raises(corral.ProtocolError):
        protocol.decode(frame)


def test_protocol_error_is_a_corral_error():
    assert issubclass(corral.ProtocolError, corral.CorralError)


def test_split_entries():
    frames = [b"a", b"b", b"c"]
    body = {"tasks": [protocol.task_entry(1, 2), protocol.task_entry(2, 1, {"retries": 0})]}
    pairs = protocol.split_entries(body, "tasks", frames, 3)
    assert pairs == [([1, 2, {}], [b"a", b"b"]), ([2, 1, {"retries": 0}], [b"c"])]
    results = {"results": [protocol.result_entry(7, protocol.Status.OK, 1, {"busy": 0.5})]}
    assert protocol.split_entries(results, "results", [b"x"], 4) == [([7, 0, 1, {"busy": 0.5}], [b"x"])]


@pytest.mark.parametrize(
    ("body", "nframes"),
    [
        ({}, 0),
        ({"tasks": "nope"}, 0),
        ({"tasks": [[1, 2, {}]]}, 1),
        ({"tasks": [[1, 1, {}]]}, 2),
        ({"tasks": [[1, -1, {}]]}, 0),
        ({"tasks": [["1", 0, {}]]}, 0),
        ({"tasks": [[1, 0]]}, 0),
        ({"tasks": [{"id": 1}]}, 0),
    ],
    ids=["missing", "not-a-list", "too-few-frames", "too-many-frames", "negative", "id-not-int",
         "short-entry", "entry-not-list"],
)
def test_split_entries_rejects_mismatches(body, nframes):
    with pytest.raises(corral.ProtocolError):
        protocol.split_entries(body, "tasks", [b"f"] * nframes, 3)


def test_pack_puts_small_frames_together_and_leaves_large_ones_alone():
    large = bytearray(protocol.PACK_BELOW)
    body: dict = {}
    packed = protocol.pack(body, [b"ab", large, b"", b"cde"])
    assert body["packed"] == [2, -1, 0, 3]
    assert packed[0] == b"abcde" and packed[1] is large and len(packed) == 2
    assert [bytes(f) for f in protocol.unpack(body, packed)] == [b"ab", bytes(large), b"", b"cde"]
    single: dict = {}
    assert protocol.pack(single, [b"x"]) == [b"x"] and "packed" not in single  # nothing to gain
    assert protocol.unpack({}, [b"x", b"y"]) == [b"x", b"y"]


@pytest.mark.parametrize(
    ("sizes", "frames"),
    [
        ("nope", [b"ab"]),
        ([1, 1], []),
        ([1, 2], [b"ab"]),
        ([1], [b"ab"]),
        ([2, -1], [b"ab"]),
        ([2], [b"ab", b"extra"]),
        ([-2, 4], [b"abcd"]),
        ([True, 1], [b"ab"]),
    ],
    ids=["not-a-list", "no-frames", "sizes-too-large", "sizes-too-small", "missing-large", "extra-large",
         "negative", "bool"],
)
def test_unpack_rejects_sizes_that_do_not_match(sizes, frames):
    with pytest.raises(corral.ProtocolError):
        protocol.unpack({"packed": sizes}, frames)


# -- the local transport: stream.Stream over a socket pair ------------------------------


def _receive_all(stream: stream.Stream, count: int, timeout: float = TIMEOUT, sender=None) -> list:
    """``count`` messages from ``stream`` (flushing ``sender``'s queue meanwhile); bounded."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} messages within {timeout} s"
        if sender is not None:
            sender.flush()
        got += stream.receive()
        assert len(got) >= count or not stream.eof, "the peer closed first"
    return got


@pytest.fixture
def stream_pair():
    a, b = socket.socketpair()
    sender, receiver = stream.Stream(a), stream.Stream(b)
    yield sender, receiver
    sender.close()
    receiver.close()


def test_stream_round_trip_small_and_large_messages(stream_pair):
    sender, receiver = stream_pair
    big = bytes(range(256)) * (12 << 12)  # 12 MiB: read into a buffer of its own
    messages = [
        [protocol.encode(Kind.HEARTBEAT)],
        [protocol.encode(Kind.TASKS, {"tasks": [[1, 2, {}]]}), b"fn", memoryview(b"args")],
        [b"x", b"", big, b"tail"],
    ] + [[protocol.encode(Kind.READY, {"credit": i})] for i in range(1000)]
    for frames in messages:
        sender.send(frames)
    got = _receive_all(receiver, len(messages), sender=sender)  # 12 MiB outgrows the socket buffer
    assert not sender.pending
    assert [[bytes(f) for f in m] for m in got] == [[bytes(f) for f in m] for m in messages]
    assert all(isinstance(f, memoryview) for m in got for f in m)


def test_stream_send_never_blocks_and_queues_what_the_socket_does_not_take(stream_pair):
    sender, receiver = stream_pair
    blob = b"z" * (1 << 20)
    for _ in range(64):  # 64 MiB, far more than the socket buffers hold
        sender.send([blob])
    assert sender.pending, "everything fit in the socket buffer: the test proves nothing"
    got = _receive_all(receiver, 64, sender=sender)
    assert not sender.pending and all(bytes(m[0]) == blob for m in got)


def test_stream_reports_the_peer_closing():
    a, b = socket.socketpair()
    sender, receiver = stream.Stream(a), stream.Stream(b)
    sender.send([b"last words"])
    sender.close()
    assert [bytes(f) for f in _receive_all(receiver, 1)[0]] == [b"last words"]
    assert receiver.receive() == [] and receiver.eof  # (if the first receive() had not seen it already)
    receiver.send([b"to nobody"])  # a peer that is gone costs nothing
    assert not receiver.pending
    receiver.close()


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack("!I", 0),  # a message of no frames
        struct.pack("!I", stream.MAX_FRAMES + 1),
        struct.pack("!IQ", 1, stream.MAX_MESSAGE + 1),
    ],
    ids=["no_frames", "too_many_frames", "too_large"],
)
def test_stream_rejects_garbage_framing(garbage):
    a, b = socket.socketpair()
    receiver = stream.Stream(b)
    try:
        a.sendall(garbage)
        deadline = time.monotonic() + TIMEOUT
        with pytest.raises(corral.ProtocolError):
            while time.monotonic() < deadline:
                receiver.receive()
    finally:
        a.close()
        receiver.close()


def test_broker_stops_a_pool_worker_that_sends_garbage():
    """A worker's socket pair carrying garbage framing is closed; a malformed header is dropped."""
    logs: list[str] = []
    broker = Broker(None, log=logs.append)
    ours, theirs = socket.socketpair()
    broker.adopt(4242, ours)
    worker = stream.Stream(theirs)
    try:
        worker.send([b"\x01"])  # a malformed header: dropped, the stream stays usable
        worker.send([protocol.encode(Kind.HELLO, {"role": "worker", "name": "w", "pid": 4242})])
        deadline = time.monotonic() + TIMEOUT
        while not broker.workers:
            assert time.monotonic() < deadline, "the HELLO after a malformed message was not served"
            broker.step(dict(broker.poller.poll(100)))
        assert any("dropped malformed message" in line for line in logs)
        kinds = [protocol.decode(m[0])[0] for m in _receive_all(worker, 2)]
        assert Kind.WELCOME in kinds and set(kinds) <= {Kind.WELCOME, Kind.HEARTBEAT}
        theirs.sendall(struct.pack("!I", 0))  # broken framing: the broker hangs up
        while broker.paired:
            assert time.monotonic() < deadline, "the broker kept a stream with broken framing"
            broker.step(dict(broker.poller.poll(100)))
        assert any("sent garbage" in line for line in logs)
        while not worker.eof:
            assert time.monotonic() < deadline
            worker.receive()
    finally:
        worker.close()
        broker.close()


# -- a live broker ------------------------------------------------------------------------


def _receive(sock: zmq.Socket, kind: Kind, timeout: float = TIMEOUT) -> dict:
    """The body of the next message of ``kind``, skipping heartbeats; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(left * 1000):
            raise AssertionError(f"no {kind.name} within {timeout} s")
        got, body = protocol.decode(sock.recv_multipart()[0])
        if got == kind:
            return body
        assert got == Kind.HEARTBEAT, f"expected {kind.name}, got {got.name} {body}"


def _dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def test_broker_survives_garbage(tmp_path):
    ctx = zmq.Context()
    address = f"ipc://{tmp_path}/broker"
    logs: list[str] = []
    broker = Broker(address, context=ctx, log=logs.append)
    thread = threading.Thread(target=broker.serve, name="test-broker", daemon=True)
    sockets = []
    thread.start()
    try:
        rogue = _dealer(ctx, address)
        sockets.append(rogue)
        v = protocol.VERSION
        garbage = [
            [b""],  # no header at all
            [b"\x01"],  # too short
            [bytes([v + 7, Kind.HELLO]) + b'{"role":"client"}'],  # a protocol version we do not speak
            [bytes([v, 99])],  # unknown kind
            [bytes([v, Kind.HELLO]) + b"{bad json"],
            [bytes([v, Kind.HELLO]) + b"[1,2]"],
            [bytes([v, Kind.HELLO]) + b"[" * 100_000],  # nesting deep enough to blow the JSON parser's stack
            [protocol.encode(Kind.HELLO, {"role": "nobody"})],
            [protocol.encode(Kind.HELLO, {"role": "client", "retries": "many"})],
        ]
        for frames in garbage:
            rogue.send_multipart(frames)
        # A request before HELLO is refused with ERROR, not acted upon.
        rogue.send_multipart([protocol.encode(Kind.SUBMIT, {"tasks": [[1, 1, {}]]}), b"payload"])
        assert "HELLO" in _receive(rogue, Kind.ERROR)["message"]

        # Now a proper HELLO, then batches whose entries do not match the frames.
        rogue.send(protocol.encode(Kind.HELLO, {"role": "client", "retries": 0}))
        assert _receive(rogue, Kind.WELCOME)["heartbeat"] > 0
        bad_batches = [
            [protocol.encode(Kind.SUBMIT, {"tasks": [[1, 2, {}]]}), b"only one frame"],
            [protocol.encode(Kind.SUBMIT, {"tasks": [[2, 0, {}]]}), b"an extra frame"],
            [protocol.encode(Kind.SUBMIT, {"tasks": [[3, -1, {}]]})],
            [protocol.encode(Kind.SUBMIT, {"tasks": "all of them"})],
            [protocol.encode(Kind.SUBMIT, {})],
            [protocol.encode(Kind.CANCEL, {"ids": 5})],
            [protocol.encode(Kind.CANCEL, {"ids": [[1]]})],
            [protocol.encode(Kind.TASKS, {"tasks": []})],  # a broker-to-worker kind
            [protocol.encode(Kind.WELCOME)],
        ]
        for frames in bad_batches:
            rogue.send_multipart(frames)
        rogue.send(protocol.encode(Kind.STATUS))
        status = _receive(rogue, Kind.STATUS_REPLY)
        assert status["queued"] == 0 and status["running"] == 0, "a malformed SUBMIT was half-accepted"
        assert thread.is_alive()

        # The broker still serves a well-behaved peer.
        client = _dealer(ctx, address)
        sockets.append(client)
        client.send(protocol.encode(Kind.HELLO, {"role": "client"}))
        welcome = _receive(client, Kind.WELCOME)
        assert welcome["heartbeat"] == broker.heartbeat and welcome["liveness"] == broker.liveness
        assert thread.is_alive()
        dropped = [line for line in logs if "dropped malformed message" in line]
        # Logged, but throttled: a burst of lines, the rest counted (Throttle).
        assert len(dropped) == broker.complain.burst
        assert broker.complain.held >= len(garbage) - 1 + len(bad_batches) - 1 - broker.complain.burst
    finally:
        broker.running = False
        thread.join(TIMEOUT)
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
    assert not thread.is_alive()


def _receive_tasks(sock: zmq.Socket, count: int) -> list[int]:
    """The broker's ids of the next ``count`` tasks sent to this worker (one TASKS or several)."""
    gids: list[int] = []
    deadline = time.monotonic() + TIMEOUT
    while len(gids) < count:
        assert sock.poll(max(0.0, deadline - time.monotonic()) * 1000), "no TASKS"
        msg = sock.recv_multipart()
        kind, body = protocol.decode(msg[0])
        if kind == Kind.TASKS:
            gids += [entry[0] for entry in body["tasks"]]
    return gids


def test_a_result_says_which_task_began_as_it_ended(tmp_path):
    """A worker names, in a RESULT, the task that began as the one it reports ended: the client
    hears STARTED for it without a STARTED message from the worker. A RESULT whose ``started`` is
    not a list of ids is dropped whole, its outcome included."""
    ctx = zmq.Context()
    address = f"ipc://{tmp_path}/broker"
    logs: list[str] = []
    broker = Broker(address, context=ctx, log=logs.append)
    thread = threading.Thread(target=broker.serve, name="test-broker", daemon=True)
    thread.start()
    worker, client = _dealer(ctx, address), _dealer(ctx, address)
    try:
        worker.send(protocol.encode(Kind.HELLO, {"role": "worker", "name": "w", "pid": 1}))
        _receive(worker, Kind.WELCOME)
        worker.send(protocol.encode(Kind.READY, {"credit": 2}))
        client.send(protocol.encode(Kind.HELLO, {"role": "client", "retries": 0}))
        _receive(client, Kind.WELCOME)
        client.send_multipart([protocol.encode(Kind.SUBMIT, {"tasks": [[1, 2, {}], [2, 2, {}]]}),
                               b"fn", b"one", b"fn", b"two"])
        first, second = _receive_tasks(worker, 2)

        def result(gid: int, started) -> list:
            return [protocol.encode(Kind.RESULT, {"results": [[gid, 0, 1, {}]], "started": started}), b"out"]

        worker.send_multipart(result(first, [second]))
        assert _receive(client, Kind.STARTED)["ids"] == [2]
        assert [entry[0] for entry in _receive(client, Kind.RESULT)["results"]] == [1]

        worker.send_multipart(result(second, "all of them"))
        worker.send_multipart(result(second, [[second]]))
        client.send(protocol.encode(Kind.STATUS))
        assert _receive(client, Kind.STATUS_REPLY)["running"] == 1, "a malformed RESULT was half-applied"
        # The worker's messages and the client's come on different connections: in either order.
        deadline = time.monotonic() + TIMEOUT
        while sum("dropped malformed message" in line for line in logs) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum("dropped malformed message" in line for line in logs) == 2
        worker.send_multipart(result(second, []))
        assert [entry[0] for entry in _receive(client, Kind.RESULT)["results"]] == [2]
    finally:
        broker.running = False
        thread.join(TIMEOUT)
        worker.close(linger=0)
        client.close(linger=0)
        ctx.term()
    assert not thread.is_alive()


def test_id_lists_are_cut_to_fit_a_header():
    ids = list(range(10**15, 10**15 + 250_000))  # 16 digits each: 4.3 MB of JSON in one list
    chunks = list(protocol.id_chunks(ids))
    assert [i for chunk in chunks for i in chunk] == ids
    for chunk in chunks:
        assert protocol.decode(protocol.encode(Kind.CANCEL, {"ids": chunk}))[1]["ids"] == chunk
    assert list(protocol.id_chunks([])) == [[]]
