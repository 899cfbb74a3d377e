"""Zero configuration and key management from the command line: what a new user types, and
the mistakes they make."""

from __future__ import annotations

import json
import os
import subprocess

import psutil
import pytest
import zmq

import corral
from corral.security import credentials
from corral.security.keys import KeyDir, read_connection
from corral.security.provision import provision
from helpers import TIMEOUT, corral_cmd, free_port, start_broker, start_worker, stop


def corral_run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(corral_cmd(*args), capture_output=True, text=True, timeout=60, cwd=cwd)


def test_a_broker_started_again_keeps_its_keys_and_connection_file(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    keys, path = provision(address, tmp_path / "keys")
    first = path.read_text()
    assert provision(address, tmp_path / "keys")[1].read_text() == first  # kept as it was
    assert json.loads(first)["address"] == address
    # Another advertised address: the same keys, the new address.
    provision(address, tmp_path / "keys", advertise="tcp://node-7.example:7700")
    again = json.loads(path.read_text())
    assert again["address"] == "tcp://node-7.example:7700"
    assert again["client"] == json.loads(first)["client"]


@pytest.mark.parametrize("damage", ["remove", "garble", "open to others", "revoke default"])
def test_a_lost_or_exposed_connection_file_is_replaced_and_its_keys_revoked(tmp_path, damage):
    address = f"tcp://127.0.0.1:{free_port()}"
    keys, path = provision(address, tmp_path / "keys")
    old = read_connection(path, "worker").public
    if damage == "remove":
        path.unlink()
    elif damage == "garble":
        path.write_text("{")
    elif damage == "open to others":
        os.chmod(path, 0o644)
    else:
        keys.revoke("default-worker")
    provision(address, tmp_path / "keys")
    new = read_connection(path, "worker")
    assert new.public != old and old not in keys.allowed("worker")
    assert keys.allowed("worker")[new.public] == "default-worker"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_wildcard_listener_advertises_this_machines_name(tmp_path):
    import socket

    _, path = provision("tcp://0.0.0.0:7799", tmp_path / "keys")  # nothing listens: only the file is made
    assert json.loads(path.read_text())["address"] == f"tcp://{socket.getfqdn()}:7799"


def test_keys_commands_add_list_revoke(tmp_path):
    home = tmp_path / "keys"
    address = f"tcp://127.0.0.1:{free_port()}"
    broker = start_broker(address, "--keys", str(home))
    try:
        added = corral_run("keys", "--keys", str(home), "add-worker", "node-1", cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        assert "corral worker node-1.json" in added.stderr
        worker_file = tmp_path / "node-1.json"
        assert os.stat(worker_file).st_mode & 0o777 == 0o600
        body = json.loads(worker_file.read_text())
        assert body["address"] == address and "client" not in body
        added = corral_run("keys", "--keys", str(home), "add-client", "alice", "-o", str(tmp_path / "a.json"))
        assert added.returncode == 0, added.stderr
        listed = corral_run("keys", "--keys", str(home), "list").stdout
        assert "worker  node-1" in listed and "client  alice" in listed and "default-worker" in listed
        worker = start_worker(str(worker_file), "--processes", "1")
        try:
            with corral.Executor(address=str(tmp_path / "a.json")) as ex:
                assert ex.submit(abs, -3).result(TIMEOUT) == 3
                assert [w["worker"] for w in ex.summary() if w["alive"]]
            # `ps` shows every user the command lines: no secret key is on any of them.
            secret = body["worker"]["secret"]
            family = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
            assert len(family) >= 2 and not any(secret in " ".join(p.cmdline()) for p in family)
        finally:
            stop(worker)
        revoked = corral_run("keys", "--keys", str(home), "revoke", "alice")
        assert revoked.returncode == 0 and "revoked client alice" in revoked.stderr
        assert "alice" not in corral_run("keys", "--keys", str(home), "list").stdout
    finally:
        stop(broker)


@pytest.mark.parametrize("argv, message", [
    (["add-worker", "bad name!"], "bad key name"),
    (["add-worker", "default-worker"], "exists already"),
    (["revoke", "nobody"], "no client or worker is named"),
    (["add-client", "x"], None),  # written: the next line checks the name clash with it
])
def test_keys_mistakes_are_answered_like_argparse(tmp_path, argv, message):
    home = tmp_path / "keys"
    provision(f"tcp://127.0.0.1:{free_port()}", home)
    out = corral_run("keys", "--keys", str(home), *argv, cwd=tmp_path)
    if message is None:
        assert out.returncode == 0
        out = corral_run("keys", "--keys", str(home), *argv, cwd=tmp_path)  # its file exists now
        message = "exists already"
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("usage: corral keys") and message in out.stderr
    assert "Traceback" not in out.stderr


def test_keys_without_a_broker_say_to_start_it_first(tmp_path):
    out = corral_run("keys", "--keys", str(tmp_path / "fresh"), "add-worker", "n1", cwd=tmp_path)
    assert out.returncode == 2 and "start it first" in out.stderr
    assert not (tmp_path / "n1.json").exists()
    listed = corral_run("keys", "--keys", str(tmp_path / "fresh"), "list").stdout
    assert "n1" not in listed.replace(str(tmp_path), "")  # (the path is random: it may hold "n1" itself)


@pytest.mark.parametrize("problem", ["no keys", "mode 644", "other role only", "not json", "missing"])
def test_a_worker_with_a_bad_connection_file_says_what_to_do(tmp_path, problem):
    home = tmp_path / "keys"
    address = f"tcp://127.0.0.1:{free_port()}"
    _, path = provision(address, home)
    argv = [str(path)]
    expected = {"no keys": "encrypted and authenticated", "mode 644": "chmod 600",
                "other role only": "holds no worker key", "not json": "not JSON", "missing": "nor is there"}[problem]
    if problem == "no keys":
        argv = [address]
    elif problem == "mode 644":
        os.chmod(path, 0o644)
    elif problem == "other role only":
        body = json.loads(path.read_text())
        del body["worker"]
        path.write_text(json.dumps(body))
    elif problem == "not json":
        path.write_text("address: x")
    else:
        argv = [str(tmp_path / "nothing.json")]
    out = corral_run("worker", *argv, "--processes", "1")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("usage: corral worker") and expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_keys_from_the_environment(tmp_path, monkeypatch):
    address = f"tcp://127.0.0.1:{free_port()}"
    _, path = provision(address, tmp_path / "keys")
    creds = read_connection(path, "client")
    monkeypatch.setenv("CORRAL_CONNECTION_FILE", str(path))
    assert credentials.resolve(address, "client").curve == (creds.broker_key, creds.public, creds.secret)
    monkeypatch.delenv("CORRAL_CONNECTION_FILE")
    monkeypatch.setenv("CORRAL_BROKER_KEY", creds.broker_key.decode())
    monkeypatch.setenv("CORRAL_PUBLIC_KEY", creds.public.decode())
    with pytest.raises(corral.CredentialsError, match="but not CORRAL_SECRET_KEY"):
        credentials.resolve(address, "client")
    monkeypatch.setenv("CORRAL_SECRET_KEY", zmq.curve_keypair()[1].decode())
    with pytest.raises(corral.CredentialsError, match="not the public half"):
        credentials.resolve(address, "client")
    monkeypatch.setenv("CORRAL_SECRET_KEY", creds.secret.decode())
    target = credentials.resolve(address, "client")
    assert target.curve == (creds.broker_key, creds.public, creds.secret)
    assert creds.secret.decode() not in repr(target)  # a secret is never printed


def test_executor_arguments_that_contradict(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    _, path = provision(address, tmp_path / "keys")
    with pytest.raises(ValueError, match="for a broker elsewhere"):
        corral.Executor(insecure=True)
    with pytest.raises(corral.CredentialsError, match="insecure=True is for a tcp"):
        corral.Executor(address=str(path), insecure=True)
    with pytest.raises(corral.CredentialsError, match="contradict"):
        corral.Executor(address=address, keys=str(path), insecure=True)
    with pytest.raises(corral.CredentialsError, match="connection file the broker wrote"):
        corral.Executor(address=address)


def test_a_broker_refuses_options_that_make_no_sense(tmp_path):
    out = corral_run("broker", "--listen", f"ipc://{tmp_path}/b", "--keys", str(tmp_path / "k"))
    assert out.returncode == 2 and "an ipc:// listener needs no keys" in out.stderr
    out = corral_run("broker", "--listen", f"tcp://127.0.0.1:{free_port()}", "--insecure", "--keys", "x")
    assert out.returncode == 2 and "--insecure uses no keys" in out.stderr


def test_a_key_directory_open_to_others_is_refused(tmp_path):
    home = tmp_path / "keys"
    KeyDir(home)
    os.chmod(home, 0o755)
    out = corral_run("broker", "--listen", f"tcp://127.0.0.1:{free_port()}", "--keys", str(home))
    assert out.returncode != 0 and "chmod 700" in out.stderr and "Traceback" not in out.stderr


def test_insecure_links_work_and_warn_at_every_start():
    address = f"tcp://127.0.0.1:{free_port()}"
    broker = start_broker(address, "--insecure")
    worker = subprocess.Popen(corral_cmd("worker", address, "--insecure", "--processes", "1"),
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # each executor says so, not only the first of the program
            with pytest.warns(corral.SecurityWarning, match="without encryption or authentication"):
                ex = corral.Executor(address=address, insecure=True)
            with ex:
                assert ex.submit(abs, -6).result(TIMEOUT) == 6
    finally:
        stop(worker)
        stop(broker)
    said = worker.stderr.read()
    worker.stderr.close()
    assert said.count("corral: SecurityWarning: connecting to") == 1, said  # the command, not each process
