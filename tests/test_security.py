"""Attacks on a CurveZMQ broker: each is refused before it runs anything, logged, and the broker
goes on serving a normal client.

The broker runs in a thread of the test (its log lines are kept), on a loopback TCP port with
its own key directory; the normal client is a real Executor and the worker a real ``corral
worker``, each with a connection file of its own; the attackers are raw pyzmq sockets that
speak docs/protocol.md by hand, with no key, a stranger's key, the wrong broker's key, a
revoked key, or a key of the other role.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time

import pytest
import zmq

import corral
from corral import serialization
from corral.broker.broker import Broker
from corral.security.keys import KeyDir, write_connection
from corral.wire import chunks, protocol
from corral.wire.protocol import Kind
from helpers import TIMEOUT, corral_cmd, free_port, start_worker, stop, wait_for

REFUSED_WAIT = 1.5  # seconds in which a refused peer must hear nothing


def _mark(path: str) -> str:
    """A task an attacker would like to run: it leaves a file behind."""
    with open(path, "w") as f:
        f.write("ran")
    return "ran"


mark = type(_mark)(_mark.__code__, {"open": open}, "mark")  # by value: the worker cannot import this module


def _sleep_then(seconds: float, value):
    import time

    time.sleep(seconds)
    return value


sleep_then = type(_sleep_then)(_sleep_then.__code__, {}, "sleep_then")


class SecureBroker:
    """A CurveZMQ broker in a thread, its keys, what it logged, and ways to reach it."""

    def __init__(self, tmp_path, heartbeat: float = 0.5, liveness: int = 3):
        self.tmp = tmp_path
        self.keys = KeyDir(tmp_path / "keys")
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.ctx = zmq.Context()
        self.logs: list[str] = []
        self.broker = Broker(self.address, context=self.ctx, keys=self.keys, heartbeat=heartbeat,
                             liveness=liveness, log=self.logs.append)
        self.thread = threading.Thread(target=self.broker.serve, name="test-broker", daemon=True)
        self.thread.start()
        self.peers: list = []
        self.procs: list = []
        self.pairs: dict[str, tuple[bytes, bytes]] = {}  # (public, secret) of the raw peers' keys

    def connection(self, role: str, name: str) -> str:
        """A new peer's connection file (0600), as ``corral keys add-ROLE NAME`` writes it."""
        public, secret = self.keys.add(role, name)
        return str(write_connection(self.tmp / f"{name}.json", self.address, self.keys.broker_keys()[0],
                                    {role: (name, public, secret)}))

    def raw(self, curve: tuple | None, routing_id: bytes | None = None) -> Raw:
        """A raw DEALER, with these CurveZMQ keys (or none)."""
        peer = Raw(self.ctx, self.address, curve, routing_id)
        self.peers.append(peer)
        return peer

    def raw_as(self, role: str, name: str, routing_id: bytes | None = None) -> Raw:
        """A raw DEALER holding a new allowed key of ``role``."""
        self.pairs[name] = self.keys.add(role, name)
        return self.raw((self.keys.broker_keys()[0], *self.pairs[name]), routing_id)

    def worker(self, name: str = "node-1") -> subprocess.Popen:
        proc = start_worker(self.connection("worker", name), "--processes", "1")
        self.procs.append(proc)
        return proc

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.logs))

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        for peer in self.peers:
            peer.close()
        self.broker.running = False
        self.thread.join(TIMEOUT)
        self.ctx.term()
        assert not self.thread.is_alive()


class Raw:
    """A raw DEALER that speaks the protocol by hand."""

    def __init__(self, ctx, address: str, curve, routing_id: bytes | None):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if curve is not None:
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = curve
        self.sock.connect(address)

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        """Send, or drop if ZeroMQ will not queue it (a refused handshake leaves no pipe to queue on)."""
        try:
            self.sock.send_multipart(protocol.message(kind, body, frames), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass

    def heard(self, timeout: float = REFUSED_WAIT) -> list[tuple[Kind, dict]]:
        """Every message that comes within ``timeout`` seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(left * 1000):
            msg = self.sock.recv_multipart()
            got.append(protocol.decode(msg[0]))
        return got

    def expect(self, kind: Kind, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(left * 1000):
            got, body = protocol.decode(self.sock.recv_multipart()[0])
            if got == kind:
                return body
        raise AssertionError(f"no {kind.name} within {timeout} s")

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def secure(tmp_path):
    made = []

    def make(**kwargs) -> SecureBroker:
        made.append(SecureBroker(tmp_path, **kwargs))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


def submit_frames(cid: int, fn, *args) -> tuple[dict, list]:
    frames = serialization.call_frames(serialization.Call(fn, args), serialization.FunctionPickles())
    return {"tasks": [protocol.task_entry(cid, len(frames))]}, frames


def still_serves(b: SecureBroker, client_file: str) -> None:
    """The broker serves a normal client, with its real worker."""
    with corral.Executor(address=client_file) as ex:
        assert ex.submit(abs, -4).result(TIMEOUT) == 4


def test_peers_without_a_valid_key_are_refused_at_the_handshake(secure, tmp_path):
    """Before, a raw client with no key submitted a task that ran ``os.system`` on the workers."""
    b = secure()
    b.worker()
    client = b.connection("client", "alice")
    strangers = {
        "plaintext": b.raw(None),
        "unknown key": b.raw((b.keys.broker_keys()[0], *zmq.curve_keypair())),
        "another broker's key": b.raw((zmq.curve_keypair()[0], *b.keys.add("client", "mallory"))),
    }
    target = tmp_path / "ran"
    for n, peer in enumerate(strangers.values(), 1):
        peer.send(Kind.HELLO, {"role": "client"})
        peer.send(Kind.SUBMIT, *submit_frames(n, mark, str(target)))
        peer.send(Kind.HELLO, {"role": "worker", "name": "evil", "host": "x", "pid": 1})
        peer.send(Kind.READY, {"credit": 10})
        peer.send(Kind.STATUS)
    still_serves(b, client)
    for what, peer in strangers.items():
        assert peer.heard() == [], what  # not a WELCOME, an ERROR, a task or a status
    assert not target.exists()
    wait_for(lambda: b.logged("unknown CurveZMQ key"), what="the unknown key to be logged")
    wait_for(lambda: b.logged("did not complete a CurveZMQ handshake"), what="the failed handshakes to be logged")


def test_a_worker_key_cannot_submit_and_a_client_key_cannot_take_tasks(secure, tmp_path):
    b = secure()
    b.worker()
    client = b.connection("client", "alice")
    target = tmp_path / "ran"
    posing_client = b.raw_as("worker", "rogue-worker")
    posing_client.send(Kind.HELLO, {"role": "client"})
    assert posing_client.expect(Kind.ERROR)["code"] == protocol.REFUSED
    posing_client.send(Kind.SUBMIT, *submit_frames(1, mark, str(target)))
    posing_client.send(Kind.STATUS)  # the workers' hosts and pids are for clients only
    posing_worker = b.raw_as("client", "rogue-client")
    posing_worker.send(Kind.HELLO, {"role": "worker", "name": "evil", "host": "x", "pid": 1})
    assert posing_worker.expect(Kind.ERROR)["code"] == protocol.REFUSED
    posing_worker.send(Kind.READY, {"credit": 100})
    with corral.Executor(address=client) as ex:  # its tasks go to the real worker only
        assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    heard = posing_client.heard() + posing_worker.heard()
    assert {kind for kind, _ in heard} <= {Kind.ERROR}, heard  # no STATUS_REPLY, no TASKS, no WELCOME
    assert not target.exists()
    assert b.logged("refused a HELLO as a client from worker key 'rogue-worker'")
    assert b.logged("refused a HELLO as a worker from client key 'rogue-client'")


def test_one_client_cannot_cancel_kill_or_hijack_anothers_tasks(secure, tmp_path):
    """A second client with a key of its own cannot touch the first one's tasks: its cancels and
    kills name its own ids.  Even one that learns the first one's identity and takes it when the
    first one's connection drops has its messages dropped (a replayed HELLO too), and the peer
    whose identity it took is served no more."""
    b = secure(heartbeat=0.5, liveness=20)  # the victim's silence must not end its task during the test
    b.worker()
    victim = b.raw_as("client", "alice")
    victim.send(Kind.HELLO, {"role": "client", "retries": 0})
    victim.expect(Kind.WELCOME)
    victim.send(Kind.SUBMIT, *submit_frames(1, sleep_then, 60.0, "victim's result"))
    victim.expect(Kind.STARTED)
    other = b.raw_as("client", "bob")
    other.send(Kind.HELLO, {"role": "client"})
    other.expect(Kind.WELCOME)
    other.send(Kind.CANCEL, {"ids": [1]})
    other.send(Kind.KILL, {"ids": [1], "signal": "SIGKILL"})
    other.send(Kind.KILL, {"all": True, "signal": "SIGKILL"})
    assert other.expect(Kind.CANCELLED)["running"] == [1]  # "too late": bob has no task 1
    time.sleep(0.5)
    [(ident, alice)] = [(i, c) for i, c in b.broker.clients.items() if c.user.startswith("client:alice:")]
    assert alice.tasks and not any(b.broker.tasks[g].killed for g in alice.tasks.values())
    # The victim's connection drops; before the broker forgets it, carol takes its identity.
    victim.close()
    time.sleep(0.3)
    hijacker = b.raw_as("client", "carol", routing_id=ident)
    hijacker.send(Kind.KILL, {"ids": [1], "signal": "SIGKILL"})
    hijacker.send(Kind.HELLO, {"role": "client"})  # replayed: it would have dropped alice's tasks
    wait_for(lambda: b.logged("came under the identity of a client"), what="the hijack to be logged")
    # It is a client of its own now, with nothing of alice's: no result, no task.
    assert {kind for kind, _ in hijacker.heard()} <= {Kind.HEARTBEAT, Kind.WELCOME}
    assert all(c.user.startswith("client:bob:") or (c.user.startswith("client:carol:") and not c.tasks)
               for c in b.broker.clients.values())


def test_a_key_revoked_mid_run_is_dropped_and_cannot_come_back(secure, tmp_path):
    b = secure(heartbeat=0.2)
    b.worker("node-1")
    keep = b.connection("client", "alice")
    doomed = b.connection("client", "carol")
    with corral.Executor(address=doomed) as ex:
        fut = ex.submit(sleep_then, 30, "never")
        wait_for(fut.running, what="carol's task to start")
        b.keys.revoke("carol")
        with pytest.raises(corral.BrokerLostError, match="revoked"):
            fut.result(TIMEOUT)
        # Its running task was stopped: the worker is free for alice at once.
        still_serves(b, keep)
        later = ex.submit(abs, -1)  # carol's key is refused: it never runs
        with pytest.raises(corral.BrokerLostError):
            later.result(TIMEOUT)
    assert b.logged("its key 'carol' was revoked")


def test_a_worker_whose_key_is_revoked_gives_its_tasks_back(secure, tmp_path):
    b = secure(heartbeat=0.2)
    first = b.worker("node-1")
    client = b.connection("client", "alice")
    with corral.Executor(address=client) as ex:
        assert ex.submit(abs, -1).result(TIMEOUT) == 1
        fut = ex.submit(sleep_then, 3, "done")
        wait_for(fut.running, what="the task to start on node-1")
        b.keys.revoke("node-1")
        wait_for(lambda: b.logged("its key 'node-1' was revoked"), what="node-1 to be dropped")
        b.worker("node-2")
        assert fut.result(TIMEOUT) == "done"  # run again on node-2
    wait_for(lambda: first.poll() is not None or "refused" in "".join(b.logs), what="node-1 to be told")


def test_connection_files_and_key_directories_are_private(tmp_path, secure):
    b = secure()
    path = b.connection("client", "alice")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(b.keys.path).st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # another user of the machine cannot read either
        for target in (path, str(b.keys.path / "broker.key_secret")):
            denied = subprocess.run(["cat", target], user=65534, capture_output=True, timeout=30)
            assert denied.returncode != 0
    os.chmod(path, 0o644)
    with pytest.raises(corral.CredentialsError, match="chmod 600"):
        corral.Executor(address=path)


def test_a_client_or_worker_whose_key_is_refused_is_told_so(secure, tmp_path):
    """Before, a peer whose key the broker refused waited in silence: ZeroMQ turns the handshake
    down inside the socket."""
    b = secure(heartbeat=0.2)
    client = b.connection("client", "alice")
    b.keys.revoke("alice")
    started = time.monotonic()
    with corral.Executor(address=client) as ex:
        with pytest.raises(corral.BrokerLostError, match="refused this client's key: it is on none of its allow"):
            ex.submit(abs, -1).result(TIMEOUT)
    assert time.monotonic() - started < 5  # at the handshake, not after the liveness
    worker_file = b.connection("worker", "node-9")
    b.keys.revoke("node-9")
    worker = subprocess.Popen(corral_cmd("worker", worker_file, "--processes", "2"), stderr=subprocess.PIPE,
                              text=True)
    try:
        assert worker.wait(TIMEOUT) == 1
    finally:
        stop(worker)
    said = worker.stderr.read()
    worker.stderr.close()
    assert "refused this worker's key: it is on none" in said
    assert "corral worker: the broker refused this worker's key; stopping" in said


def test_a_client_holding_another_brokers_key_is_told_why_the_broker_seems_silent(secure, tmp_path):
    b = secure(heartbeat=0.2)
    public, secret = b.keys.add("client", "alice")
    wrong = tmp_path / "wrong.json"
    write_connection(wrong, b.address, zmq.curve_keypair()[0], {"client": ("alice", public, secret)})
    with corral.Executor(address=str(wrong), heartbeat=0.2) as ex:
        with pytest.raises(corral.BrokerLostError, match="broker key in the connection file may not be this"):
            ex.submit(abs, -1).result(TIMEOUT)


def test_a_worker_resumes_its_session_on_a_new_connection_with_its_own_key_only(secure, tmp_path):
    """A TCP reset gives a worker a new connection, which the broker's ROUTER knows by a new
    identity.  The worker resumes its session there (broker/sessions.py): the task it held stays
    its own, the result it sends on the new connection reaches the client once, and nothing
    runs again.  A peer with another key cannot take the session over."""
    b = secure(heartbeat=0.5, liveness=20)
    client = b.raw_as("client", "alice")
    client.send(Kind.HELLO, {"role": "client", "retries": 0})
    client.expect(Kind.WELCOME)
    old = b.raw_as("worker", "node-1")
    old.send(Kind.HELLO, {"role": "worker", "name": "node-1", "host": "h", "pid": 7})
    token = old.expect(Kind.WELCOME)["session"]
    old.send(Kind.READY, {"credit": 2})
    client.send(Kind.SUBMIT, *submit_frames(1, abs, -5))
    client.send(Kind.SUBMIT, *submit_frames(2, abs, -6))
    tasks = old.expect(Kind.TASKS)["tasks"]
    if len(tasks) < 2:
        tasks += old.expect(Kind.TASKS)["tasks"]
    (first, _, _), (second, _, _) = tasks
    old.send(Kind.STARTED, {"ids": [first]})
    client.expect(Kind.STARTED)
    old.close()  # the connection is gone; the broker still counts both tasks as node-1's
    thief = b.raw_as("worker", "node-2")  # another worker key, which learnt the token
    thief.send(Kind.HELLO, {"role": "worker", "name": "x", "host": "h", "pid": 8, "resume": token,
                            "holding": [first, second], "started": [], "sent": [], "credit": 0})
    assert thief.expect(Kind.WELCOME).get("resumed") is not True  # a worker of its own, with none of node-1's
    thief.send(Kind.BYE, {})  # gone, so that node-1's fair share is the whole queue
    new = b.raw((b.keys.broker_keys()[0], *b.pairs["node-1"]))  # the same key, a new connection
    new.send(Kind.HELLO, {"role": "worker", "name": "node-1", "host": "h", "pid": 7, "resume": token,
                          "holding": [first], "started": [first], "sent": [], "credit": 1})
    welcome = new.expect(Kind.WELCOME)
    assert welcome["resumed"] is True and welcome["session"] == token and welcome["resend"] == []
    # The task it no longer holds (its TASKS lost with the connection) went back to the queue,
    # and comes to it again, uncounted; the one it holds stays.
    again = new.expect(Kind.TASKS)["tasks"]
    assert [entry[0] for entry in again] == [second]
    results = [protocol.result_entry(gid, protocol.Status.OK, 1) for gid in (first, second)]
    new.send(Kind.RESULT, {"results": results, "credit": 0}, [serialization.dumps(5)[0], serialization.dumps(6)[0]])
    got = {}
    while len(got) < 2:
        body = client.expect(Kind.RESULT)
        for entry in body["results"]:
            got[entry[0]] = entry[1]
    assert got == {1: protocol.Status.OK, 2: protocol.Status.OK}
    assert {kind for kind, _ in client.heard(1.0)} <= {Kind.HEARTBEAT}  # nothing twice
    assert b.logged("resumed its session on a new connection")


def test_a_client_resumes_its_session_on_a_new_connection_with_its_own_key_only(secure, tmp_path):
    """A client whose connection was reset resumes its session on the new one: a result sent
    into the dead connection is sent again, a task it awaits that the broker never had is named
    (its SUBMIT was lost), and another key cannot take the session over."""
    b = secure(heartbeat=0.5, liveness=20)
    b.worker()
    old = b.raw_as("client", "alice")
    old.send(Kind.HELLO, {"role": "client", "retries": 0})
    token = old.expect(Kind.WELCOME)["session"]
    old.send(Kind.SUBMIT, *submit_frames(1, abs, -5))
    old.close()  # gone before its result comes: the broker sends that into the dead connection
    time.sleep(1.0)
    thief = b.raw_as("client", "mallory")
    thief.send(Kind.HELLO, {"role": "client", "resume": token, "pending": [1]})
    assert thief.expect(Kind.WELCOME).get("resumed") is not True
    new = b.raw((b.keys.broker_keys()[0], *b.pairs["alice"]))
    new.send(Kind.HELLO, {"role": "client", "retries": 0, "resume": token, "pending": [1, 2]})
    welcome = new.expect(Kind.WELCOME)
    assert welcome["resumed"] is True and welcome["unknown"] == [2]
    result = new.expect(Kind.RESULT)["results"]
    assert [entry[0] for entry in result] == [1] and result[0][1] == protocol.Status.OK
    assert {kind for kind, _ in thief.heard(0.5)} <= {Kind.HEARTBEAT}
    assert b.logged("a client resumed its session on a new connection")


def test_a_split_message_that_lies_about_its_chunks_is_dropped(secure, tmp_path):
    """A marker of chunks (wire/chunks.py) that does not fit its message: the broker drops the
    message, logs it, and goes on serving (the client that sent it too)."""
    b = secure()
    b.worker()
    client = b.connection("client", "alice")
    liar = b.raw_as("client", "mallory")
    liar.send(Kind.HELLO, {"role": "client"})
    liar.expect(Kind.WELCOME)
    target = tmp_path / "ran"
    body, frames = submit_frames(1, mark, str(target))
    header = protocol.encode(Kind.SUBMIT, body)
    for runs in ((1, 5), (0, 2), (1, 1)):  # past the end, over the header, a single chunk
        lie = bytes((chunks.MARK,)) + struct.pack("<II", *runs)
        liar.sock.send_multipart([lie, header, *frames, b"extra"], copy=False)
    still_serves(b, client)
    wait_for(lambda: b.logged("a split message names chunks"), what="the lie to be logged")
    assert not target.exists()
    liar.send(Kind.STATUS)
    liar.expect(Kind.STATUS_REPLY)  # the liar's link still works: only its bad messages were dropped
