"""A broker's key directory and connection files (corral/security/keys.py): made private,
checked when read, refused with a message that says what to do, and usable by real CurveZMQ
sockets through zmq.auth."""

from __future__ import annotations

import json
import os
import stat

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from corral.errors import CredentialsError
from corral.security.keys import KeyDir, read_connection, write_connection

ADDRESS = "tcp://127.0.0.1:7700"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def connection(tmp_path, keys: KeyDir, role: str, name: str):
    public, secret = keys.add(role, name)
    path = write_connection(tmp_path / f"{name}.json", ADDRESS, keys.broker_keys()[0], {role: (name, public, secret)})
    return path, public


def test_a_key_directory_is_private_and_keeps_the_brokers_pair(tmp_path):
    keys = KeyDir(tmp_path / "keys")
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "clients") == mode(tmp_path / "keys" / "workers") == 0o700
    public, secret = keys.broker_keys()
    assert zmq.curve_public(secret) == public
    assert mode(tmp_path / "keys" / "broker.key_secret") == 0o600
    assert KeyDir(tmp_path / "keys").broker_keys() == (public, secret)  # made once, then read


def test_a_key_directory_open_to_others_is_refused(tmp_path):
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    with pytest.raises(CredentialsError, match="open to other users .* chmod 700"):
        KeyDir(tmp_path / "open")


def test_peers_are_added_listed_and_revoked_by_name(tmp_path):
    keys = KeyDir(tmp_path / "keys")
    client_public, client_secret = keys.add("client", "alice")
    worker_public, _ = keys.add("worker", "node-1")
    assert zmq.curve_public(client_secret) == client_public
    assert keys.allowed("client") == {client_public: "alice"}
    assert keys.allowed("worker") == {worker_public: "node-1"}
    assert [(p.name, p.role) for p in keys.peers()] == [("alice", "client"), ("node-1", "worker")]
    # A peer's secret half is kept nowhere in the key directory.
    assert not [f for f in (tmp_path / "keys").rglob("*") if f.name.endswith("_secret") and "broker" not in f.name]
    with pytest.raises(CredentialsError, match="a client named 'alice' exists already"):
        keys.add("worker", "alice")
    assert keys.revoke("alice").role == "client"
    assert keys.allowed("client") == {}  # at once: the list is read again when it changed
    with pytest.raises(CredentialsError, match="no client or worker is named 'alice'"):
        keys.revoke("alice")


@pytest.mark.parametrize("name", ["", "-x", "../etc", "a/b", "a" * 65, None, 7, "naïve", ".hidden"])
def test_absurd_names_are_refused(tmp_path, name):
    keys = KeyDir(tmp_path / "keys")
    with pytest.raises(CredentialsError, match="bad key name"):
        keys.add("worker", name)
    assert keys.peers() == []


def test_an_unknown_role_is_refused(tmp_path):
    with pytest.raises(CredentialsError, match="unknown role 'admin'"):
        KeyDir(tmp_path / "keys").add("admin", "root")


def test_a_connection_file_is_private_and_read_back_per_role(tmp_path):
    keys = KeyDir(tmp_path / "keys")
    old = os.umask(0)
    try:
        path, public = connection(tmp_path, keys, "worker", "node-1")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    creds = read_connection(path, "worker")
    assert (creds.address, creds.name, creds.public, creds.role) == (ADDRESS, "node-1", public, "worker")
    assert creds.broker_key == keys.broker_keys()[0]
    with pytest.raises(CredentialsError, match="holds no client key: .* corral keys add-client NAME"):
        read_connection(path, "client")


def test_a_connection_file_others_can_read_is_refused(tmp_path):
    path, _ = connection(tmp_path, KeyDir(tmp_path / "keys"), "client", "alice")
    os.chmod(path, 0o644)
    with pytest.raises(CredentialsError, match="readable by other users .* chmod 600"):
        read_connection(path, "client")


def test_a_connection_file_of_another_user_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path, _ = connection(tmp_path, KeyDir(tmp_path / "keys"), "client", "alice")
    os.chown(path, 65534, 65534)
    with pytest.raises(CredentialsError, match="belongs to another user"):
        read_connection(path, "client")


def test_a_symlinked_connection_file_is_refused(tmp_path):
    path, _ = connection(tmp_path, KeyDir(tmp_path / "keys"), "client", "alice")
    (tmp_path / "link.json").symlink_to(path)
    with pytest.raises(CredentialsError, match="cannot read the connection file"):
        read_connection(tmp_path / "link.json", "client")


def _rewrite(path, change) -> None:
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(corral=2), "not a corral connection file"),
    (lambda b: b.update(address="10.0.0.1:7700"), "has a bad address: .*no scheme"),
    (lambda b: b.update(broker_key="short"), "bad broker_key"),
    (lambda b: b["client"].update(secret=b["client"]["public"]), "does not match"),
    (lambda b: b["client"].update(name="../x"), "bad key name"),
    (lambda b: b.pop("address"), "names no address"),
])
def test_a_damaged_connection_file_says_what_is_wrong(tmp_path, change, message):
    path, _ = connection(tmp_path, KeyDir(tmp_path / "keys"), "client", "alice")
    _rewrite(path, change)
    with pytest.raises(CredentialsError, match=message):
        read_connection(path, "client")


def test_a_connection_file_that_is_not_json_or_missing(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    os.chmod(tmp_path / "bad.json", 0o600)
    with pytest.raises(CredentialsError, match="is not JSON"):
        read_connection(tmp_path / "bad.json", "client")
    with pytest.raises(CredentialsError, match="cannot read the connection file .*No such file"):
        read_connection(tmp_path / "absent.json", "client")


def test_the_keys_serve_real_curve_sockets_and_each_role_list_admits_only_its_own(tmp_path):
    """A CURVE ROUTER whose ZAP handler allows the client list: a client's credentials read from
    its connection file get through; a worker's, valid but in the other list, do not."""
    keys = KeyDir(tmp_path / "keys")
    client_file, _ = connection(tmp_path, keys, "client", "alice")
    worker_file, _ = connection(tmp_path, keys, "worker", "node-1")
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    sockets = []
    try:
        auth.configure_curve(domain="*", location=str(keys.path / "clients"))
        router = ctx.socket(zmq.ROUTER)
        sockets.append(router)
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = keys.broker_keys()
        port = router.bind_to_random_port("tcp://127.0.0.1")

        def dealer(path, role):
            creds = read_connection(path, role)
            sock = ctx.socket(zmq.DEALER)
            sockets.append(sock)
            sock.curve_serverkey = creds.broker_key
            sock.curve_publickey, sock.curve_secretkey = creds.public, creds.secret
            sock.connect(f"tcp://127.0.0.1:{port}")
            return sock

        dealer(worker_file, "worker").send(b"from a worker key")
        dealer(client_file, "client").send(b"from a client key")
        assert router.poll(10_000), "the client's message never came"
        ident, payload = router.recv_multipart()
        assert payload == b"from a client key"
        assert not router.poll(500), "a worker key got through the client list"
    finally:
        for sock in sockets:
            sock.close(linger=0)
        auth.stop()
        ctx.term()
