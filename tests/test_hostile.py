"""Hostile or broken peers of a standalone broker: each claim affects only the peer that made it.

Every test runs a real broker (in a thread, or as ``corral broker``), real workers where
they matter, and raw ZeroMQ sockets for the peers that lie.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time

import pytest
import zmq

import corral
from corral.broker.broker import MAX_DEPARTED
from corral.logs import Throttle
from corral.security.keys import read_connection
from corral.wire import protocol, sockets
from corral.wire.protocol import Kind
from helpers import TIMEOUT, connection_file, corral_cmd, free_port, read_line, start_worker, stop, wait_for


class Peer:
    """A raw DEALER that speaks the protocol by hand."""

    def __init__(self, ctx: zmq.Context, address: str, curve: tuple | None = None):
        self.sock = sockets.dealer(ctx, address, linger=0, curve=curve)

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.sock.send_multipart([protocol.encode(kind, body), *frames])

    def expect(self, kind: Kind, timeout: float = TIMEOUT) -> tuple[dict, list]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(left * 1000):
                raise AssertionError(f"no {kind.name} within {timeout} s")
            msg = self.sock.recv_multipart()
            got, body = protocol.decode(msg[0])
            if got == kind:
                return body, protocol.unpack(body, msg[1:])

    def close(self) -> None:
        self.sock.close(linger=0)


def client_peer(ctx, address) -> Peer:
    peer = Peer(ctx, address)
    peer.send(Kind.HELLO, {"role": "client", "retries": 0})
    peer.expect(Kind.WELCOME)
    return peer


def status(peer: Peer) -> tuple[dict, list]:
    peer.send(Kind.STATUS)
    body, frames = peer.expect(Kind.STATUS_REPLY)
    import json

    return body, json.loads(bytes(frames[0]))


def test_a_workers_claim_that_its_initializer_failed_breaks_nothing_but_itself(broker_in_thread):
    broker, address, logs = broker_in_thread()
    ctx = zmq.Context()
    liar = Peer(ctx, address)
    worker = start_worker(address, "--processes", "1")
    try:
        liar.send(Kind.HELLO, {"role": "worker", "name": "liar", "broken": "Traceback: I am broken"})
        assert liar.expect(Kind.ERROR)[0]["code"] == protocol.REFUSED
        liar.expect(Kind.SHUTDOWN)
        # A liar that joined properly and then says a task's initializer failed loses the task
        # to another worker, and is dropped; nobody else's task fails.
        liar.send(Kind.HELLO, {"role": "worker", "name": "liar"})
        liar.expect(Kind.WELCOME)
        liar.send(Kind.READY, {"credit": 1})
        with corral.Executor(address=address) as ex:
            fut = ex.submit(abs, -4)
            body, _ = liar.expect(Kind.TASKS)
            gid = body["tasks"][0][0]
            liar.send(Kind.RESULT, {"results": [[gid, 2, 0, {"error": "broken", "message": "no"}]]})
            assert fut.result(TIMEOUT) == 4  # run again, by the real worker
            assert ex.submit(abs, -5).result(TIMEOUT) == 5  # the executor is not broken
        assert liar.expect(Kind.ERROR)[0]["code"] == protocol.REFUSED
    finally:
        liar.close()
        ctx.term()
        stop(worker)


def test_tasks_without_payload_or_with_a_reused_id_are_refused(broker_in_thread):
    """A SUBMIT whose entry has fewer than two payload frames, or reuses a task id, is dropped
    whole, so no fresh worker's supervisor ever sees it and nothing is left queued."""
    broker, address, logs = broker_in_thread()
    ctx = zmq.Context()
    rogue = client_peer(ctx, address)
    worker = start_worker(address, "--processes", "1", "--fresh")
    try:
        rogue.send(Kind.SUBMIT, {"tasks": [[1, 0, {"retries": 1000}]]})
        rogue.send(Kind.SUBMIT, {"tasks": [[2, 1, {}]]}, [b"only a function"])
        rogue.send(Kind.SUBMIT, {"tasks": [[3, 2, {}], [3, 2, {}]]}, [b"f", b"a", b"f", b"a"])
        rogue.send(Kind.SUBMIT, {"tasks": [[4, 2, {"retries": 10**9}]]}, [b"f", b"a"])
        rogue.send(Kind.SUBMIT, {"tasks": [[5, 2, {}]]}, [b"f", b"a"])  # accepted: garbage, but well-formed
        rogue.send(Kind.SUBMIT, {"tasks": [[5, 2, {}]]}, [b"f", b"a"])  # the same id again: refused
        body, _ = rogue.expect(Kind.RESULT)
        assert [entry[0] for entry in body["results"]] == [5]
        assert body["results"][0][3]["error"] == protocol.ERR_DESERIALIZATION
        assert status(rogue)[0]["queued"] == 0
        pid_before = [w["pid"] for w in status(rogue)[1] if w["alive"]]
        with corral.Executor(address=address) as ex:
            assert list(ex.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
        assert [w["pid"] for w in status(rogue)[1] if w["alive"]] == pid_before  # no supervisor crashed
        assert sum("dropped malformed message" in line for line in logs) == 5
        rogue.send(Kind.BYE)
        wait_for(lambda: not broker.tasks and not broker.queue, 10, "nothing left queued")
    finally:
        rogue.close()
        ctx.term()
        stop(worker)


def test_a_batch_may_not_exceed_its_limit(broker_in_thread):
    broker, address, logs = broker_in_thread()
    ctx = zmq.Context()
    rogue = client_peer(ctx, address)
    try:
        entries = [[i, 2, {}] for i in range(protocol.MAX_BATCH + 1)]
        rogue.send(Kind.SUBMIT, {"tasks": entries}, [b"f", b"a"] * len(entries))
        rogue.send(Kind.CANCEL, {"ids": list(range(protocol.MAX_IDS + 1))})
        assert status(rogue)[0]["queued"] == 0
        rogue.send(Kind.SUBMIT, {"tasks": entries[:-1]}, [b"f", b"a"] * (len(entries) - 1))
        assert status(rogue)[0]["queued"] == protocol.MAX_BATCH
        assert any("2001 tasks entries" in line for line in logs)
    finally:
        rogue.close()
        ctx.term()


def test_status_stays_bounded_however_many_workers_come_and_go(broker_in_thread):
    """1,700 workers join and leave: the status keeps the last MAX_DEPARTED of them, and a peer's
    name is cut to a bounded length, so summary() keeps working for every client."""
    broker, address, logs = broker_in_thread()
    ctx = zmq.Context()
    ctx.max_sockets = 2000
    try:
        for i in range(1700):
            peer = Peer(ctx, address)
            peer.send(Kind.HELLO, {"role": "worker", "name": f"w{i}" + "x" * 5000, "host": "h" * 5000, "pid": i})
            peer.expect(Kind.WELCOME)
            peer.send(Kind.BYE)
            peer.close()
        with corral.Executor(address=address) as ex:
            summary = wait_for(lambda: (s := ex.summary()) and all(not w["alive"] for w in s) and s, 10, "the BYEs")
            assert len(summary) == MAX_DEPARTED
            assert all(len(w["worker"]) <= protocol.MAX_NAME and len(w["host"]) <= protocol.MAX_NAME for w in summary)
            assert summary[-1]["pid"] == 1699
    finally:
        ctx.term()


def test_a_worker_that_sits_on_tasks_loses_them(broker_in_thread):
    """A worker that keeps its connection (and heartbeats) but never starts the tasks it took
    holds them for ten heartbeats at most: then they go to a worker that runs them."""
    broker, address, logs = broker_in_thread(heartbeat=0.2, liveness=100)
    ctx = zmq.Context()
    idler = Peer(ctx, address)
    worker = None
    try:
        idler.send(Kind.HELLO, {"role": "worker", "name": "idler"})
        idler.expect(Kind.WELCOME)
        idler.send(Kind.READY, {"credit": 10})
        with corral.Executor(address=address) as ex:
            futures = [ex.submit(abs, -i) for i in range(5)]
            idler.expect(Kind.TASKS)
            worker = start_worker(address, "--processes", "1")
            start = time.monotonic()
            assert [f.result(TIMEOUT) for f in futures] == [0, 1, 2, 3, 4]
            assert time.monotonic() - start < 10
        body, _ = idler.expect(Kind.ERROR)
        assert body["code"] == protocol.REFUSED and "without starting any" in body["message"]
        assert any("without starting any" in line for line in logs)
    finally:
        idler.close()
        ctx.term()
        if worker is not None:
            stop(worker)


def test_a_broker_answers_an_unknown_peer_once_a_heartbeat(broker_in_thread):
    broker, address, logs = broker_in_thread(heartbeat=0.5)
    ctx = zmq.Context()
    stranger = Peer(ctx, address)
    try:
        for _ in range(200):
            stranger.send(Kind.HEARTBEAT)
        assert stranger.expect(Kind.ERROR)[0]["code"] == protocol.UNKNOWN_PEER
        time.sleep(0.3)
        assert not stranger.sock.poll(0), "one ERROR a heartbeat, not one a message"
    finally:
        stranger.close()
        ctx.term()


@pytest.mark.parametrize("asks, liveness", [(3_000, 5), (15_000, 1000)])
def test_a_client_that_never_reads_does_not_stall_the_broker(broker_in_thread, asks, liveness):
    """A client that asks for status again and again and never reads the answers.  Before,
    the broker blocked sending to it once its pipe was full, and served nobody else.  Now what
    it is owed waits in a backlog, and it is dropped when that has not moved for a liveness
    period (3,000 answers) or holds more than MAX_BACKLOG of them (15,000, a long liveness).
    It says it is alive all along: it is deaf, not silent."""
    from corral.broker.backlog import MAX_BACKLOG

    broker, address, logs = broker_in_thread(heartbeat=0.2, liveness=liveness)
    ctx = zmq.Context()
    deaf = Peer(ctx, address)
    deaf.sock.setsockopt(zmq.RCVHWM, 1)
    worker = start_worker(address, "--processes", "1")
    try:
        deaf.send(Kind.HELLO, {"role": "client", "retries": 0})
        for _ in range(asks):
            deaf.send(Kind.STATUS)

        def dropped():  # meanwhile it heartbeats, so that it is deaf but not silent
            deaf.send(Kind.HEARTBEAT)
            return any("stopped reading" in line for line in logs)

        wait_for(lambda: broker.backlogs or dropped(), what="the deaf client's backlog")
        with corral.Executor(address=address) as ex:
            assert sum(ex.map(abs, range(-50, 50))) == 2500
        wait_for(dropped, what="the deaf client to be dropped")
        wait_for(lambda: not broker.clients and not broker.backlogs, what="the broker to forget both clients")
        if asks > MAX_BACKLOG:
            assert any(f"{MAX_BACKLOG} message(s) unread" in line for line in logs)
    finally:
        deaf.close()
        ctx.term()
        stop(worker)


def test_malformed_messages_are_logged_at_a_bounded_rate():
    lines: list[str] = []
    throttle = Throttle(lines.append, burst=3, window=0.2)
    for i in range(1000):
        throttle(f"bad {i}")
    assert lines == ["bad 0", "bad 1", "bad 2"]
    time.sleep(0.25)
    throttle("bad again")
    assert "997 more like that" in lines[3] and lines[4] == "bad again"


def _raise_own_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_quiet_peers_do_not_lock_real_clients_out():
    """2,000 connections that say HELLO and go quiet, against a broker started with the usual
    soft limit of 1,024 descriptors: it raises its own limit, and a real client is served."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip(f"the hard descriptor limit here is {hard}: not enough to show anything")
    _raise_own_limit(8192)
    address = f"tcp://127.0.0.1:{free_port()}"

    def usual_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    connection = connection_file(address)
    creds = read_connection(connection, "client")
    broker = subprocess.Popen(corral_cmd("broker", "--listen", address), stderr=subprocess.PIPE, text=True,
                              preexec_fn=usual_limit)
    assert "listening" in read_line(broker.stderr)
    worker = start_worker(connection, "--processes", "1")
    ctx = zmq.Context()
    ctx.max_sockets = 2100
    quiet = []
    try:
        for _ in range(2000):  # each with a client key: the broker lets them in
            peer = Peer(ctx, address, curve=(creds.broker_key, creds.public, creds.secret))
            peer.send(Kind.HELLO, {"role": "client"})
            quiet.append(peer)
        wait_for(lambda: len(os.listdir(f"/proc/{broker.pid}/fd")) > 1500, 30, "the quiet peers to connect")
        with corral.Executor(address=connection) as ex:
            assert sum(ex.map(abs, range(-50, 50))) == 2500
    finally:
        for peer in quiet:
            peer.close()
        ctx.term()
        stop(worker)
        stop(broker)
