"""CurveZMQ sockets (wire/sockets.py) guarded by the role allow-lists (security/zap.py): real
sockets on loopback, a real ZAP thread.  Who is refused is refused at the handshake, before the
ROUTER receives a byte, and the good client is served all along."""

from __future__ import annotations

import pytest
import zmq

from corral.security.keys import KeyDir
from corral.security.zap import RoleAuthenticator
from corral.wire import sockets

REFUSED_WAIT = 500  # ms a refused peer's message is given to (not) arrive


@pytest.fixture
def curve_router(tmp_path):
    """A CurveZMQ ROUTER on loopback with its ZAP handler; yields (router, address, keys, dial)."""
    keys = KeyDir(tmp_path / "keys")
    ctx = zmq.Context()
    auth = RoleAuthenticator(ctx, keys)
    auth.start()
    made = []
    router = sockets.router(ctx, "tcp://127.0.0.1:*", keys.broker_keys())
    made.append(router)
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)

    def dial(curve=None):
        sock = sockets.dealer(ctx, address, linger=0, curve=curve)
        made.append(sock)
        return sock

    yield router, keys, dial
    for sock in made:
        sock.close(linger=0)
    auth.stop()
    ctx.term()


def receive(router: zmq.Socket, timeout_ms: int = 10_000):
    """(payload, User-Id) of the next message, or None if none comes in time."""
    if not router.poll(timeout_ms):
        return None
    ident, payload = router.recv_multipart(copy=False)
    return payload.bytes, sockets.user_id(payload)


def user_id(role: str, name: str, pair: tuple[bytes, bytes]) -> str:
    """The User-Id the ZAP handler gives a peer's messages: role, name and public key."""
    return f"{role}:{name}:{pair[0].decode()}"


def test_each_allowed_key_is_named_in_its_messages(curve_router):
    router, keys, dial = curve_router
    broker_public = keys.broker_keys()[0]
    for role, name, payload in (("client", "alice", b"hi"), ("worker", "node-1", b"ready")):
        pair = keys.add(role, name)
        dial((broker_public, *pair)).send(payload)
        assert receive(router) == (payload, user_id(role, name, pair))


def test_strangers_are_refused_at_the_handshake(curve_router):
    router, keys, dial = curve_router
    broker_public = keys.broker_keys()[0]
    alice_keys = keys.add("client", "alice")
    alice = dial((broker_public, *alice_keys))
    stranger_public, stranger_secret = zmq.curve_keypair()
    dial((broker_public, stranger_public, stranger_secret)).send(b"unknown key")
    dial().send(b"plaintext")
    wrong_broker = zmq.curve_keypair()[0]
    dial((wrong_broker, *keys.add("client", "bob"))).send(b"wrong broker key")
    assert receive(router, REFUSED_WAIT) is None
    alice.send(b"still served")
    assert receive(router) == (b"still served", user_id("client", "alice", alice_keys))


def test_a_revoked_key_cannot_connect_again(curve_router):
    router, keys, dial = curve_router
    broker_public = keys.broker_keys()[0]
    node = keys.add("worker", "node-1")
    dial((broker_public, *node)).send(b"before")
    assert receive(router) == (b"before", user_id("worker", "node-1", node))
    keys.revoke("node-1")
    dial((broker_public, *node)).send(b"after")
    assert receive(router, REFUSED_WAIT) is None


def test_without_a_zap_handler_nobody_gets_in(tmp_path):
    """CurveZMQ alone lets every key in when no ZAP handler answers: the ROUTER refuses then."""
    keys = KeyDir(tmp_path / "keys")
    ctx = zmq.Context()
    router = sockets.router(ctx, "tcp://127.0.0.1:*", keys.broker_keys())
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    public, secret = zmq.curve_keypair()
    dealer = sockets.dealer(ctx, address, linger=0, curve=(keys.broker_keys()[0], public, secret))
    try:
        dealer.send(b"anyone")
        assert receive(router, REFUSED_WAIT) is None
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        ctx.term()


def test_a_plain_socket_has_no_user_id(tmp_path):
    ctx = zmq.Context()
    router = sockets.router(ctx, f"ipc://{tmp_path}/plain")
    dealer = sockets.dealer(ctx, f"ipc://{tmp_path}/plain", linger=0)
    try:
        dealer.send(b"x")
        assert receive(router) == (b"x", None)
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        ctx.term()


def test_curve_brokers_in_one_process_each_answer_their_own_handshakes(tmp_path):
    """Before, a second CurveZMQ broker in a process failed: one ZAP handler per ZeroMQ context,
    and both took the process's shared context."""
    from corral.broker.broker import Broker
    from helpers import free_port

    first = Broker(f"tcp://127.0.0.1:{free_port()}", keys=KeyDir(tmp_path / "a"))
    second = Broker(f"tcp://127.0.0.1:{free_port()}", keys=KeyDir(tmp_path / "b"))
    ctx = zmq.Context()
    third = Broker(f"tcp://127.0.0.1:{free_port()}", keys=KeyDir(tmp_path / "c"), context=ctx)
    try:
        with pytest.raises(RuntimeError, match="one ZAP handler per context"):
            Broker(f"tcp://127.0.0.1:{free_port()}", keys=KeyDir(tmp_path / "d"), context=ctx)
    finally:
        for broker in (first, second, third):
            broker.close()
        ctx.term()
