"""Addresses: what corral takes, what it refuses (and how it says so), what it judges loopback."""

from __future__ import annotations

import socket
import subprocess

import pytest

import corral
from corral import addresses
from helpers import corral_cmd, start_broker, start_worker, stop

BAD = [
    "127.0.0.1:7700",            # no scheme
    "tcp://127.0.0.1:99999",     # ZeroMQ would bind a random port
    "tcp://127.0.0.1:0",
    "tcp://127.0.0.1:abc",
    "tcp://127.0.0.1:",
    "tcp://127.0.0.1: 7700",
    "tcp://127.0.0.1:+7700",
    "tcp://127.0.0.1",
    "tcp://[bad:7711",
    "tcp://[bad]:7711",
    "tcp://[::1]7711",
    "tcp://::1:7711",
    "tcp://:7700",
    "tcp://256.1.2.3:7700",
    "tcp://host name:7700",
    "tcp://a;b:7700",
    "inproc://corral",
    "udp://127.0.0.1:7700",
    "ipc://",
    "ipc://*",
    "ipc:///tmp/" + "x" * 120,
    "",
]


@pytest.mark.parametrize("address", BAD)
def test_a_bad_address_names_itself_and_shows_a_good_one(address):
    with pytest.raises(corral.AddressError) as info:
        addresses.check(address, listen=True)
    message = str(info.value)
    assert repr(address) in message and "for example" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, corral.CorralError)


def test_an_address_without_scheme_is_shown_with_one():
    with pytest.raises(corral.AddressError, match="for example tcp://127.0.0.1:7700$"):
        addresses.check("127.0.0.1:7700")


@pytest.mark.parametrize("address", [
    "tcp://127.0.0.1:7700", "tcp://127.1:7700", "tcp://localhost:1", "tcp://[::1]:65535",
    "tcp://[::ffff:127.0.0.1]:7700", "tcp://broker.example.org:7700", "ipc:///tmp/corral.sock", "ipc://@abstract",
])
def test_good_addresses_pass_unchanged(address):
    assert addresses.check(address) == address
    assert addresses.check(address, listen=True) == address


def test_all_interfaces_is_for_listening_only():
    assert addresses.check("tcp://*:7700", listen=True) == "tcp://*:7700"
    with pytest.raises(corral.AddressError, match="for listening"):
        addresses.check("tcp://*:7700")


def test_a_non_string_address_is_a_type_error():
    with pytest.raises(TypeError, match="tcp://127.0.0.1:7700"):
        addresses.check(7700)


def test_ipv6_literals_need_the_zeromq_option():
    assert addresses.needs_ipv6("tcp://[::1]:7700")
    assert addresses.needs_ipv6("tcp://[::ffff:127.0.0.1]:7700")
    for address in ("tcp://127.0.0.1:7700", "tcp://*:7700", "ipc:///tmp/x", "tcp://localhost:7700", "nonsense"):
        assert not addresses.needs_ipv6(address), address


def test_executor_refuses_a_bad_address_at_construction():
    """Before, the I/O thread died with ZMQError and every future hung."""
    with pytest.raises(corral.AddressError, match="tcp://127.0.0.1:7700"):
        corral.Executor(address="127.0.0.1:7700")
    with pytest.raises(corral.AddressError, match="65535"):
        corral.Executor(address="tcp://127.0.0.1:99999")


@pytest.mark.parametrize("argv, argument", [
    (["worker", "127.0.0.1:7711"], "FILE|ADDRESS"),
    (["worker", "tcp://[bad:7711"], "FILE|ADDRESS"),
    (["broker", "--listen", "tcp://127.0.0.1:99999"], "--listen"),  # listened on a random port before
    (["broker", "--listen", "tcp://127.0.0.1:abc"], "--listen"),
    (["broker", "--listen", "tcp://[bad:7711"], "--listen"),
    (["broker", "--listen", "inproc://x"], "--listen"),
])
def test_the_command_line_answers_a_bad_address_like_argparse(argv, argument):
    out = subprocess.run(corral_cmd(*argv), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("usage: corral ")
    assert f"error: argument {argument}: bad address" in out.stderr
    assert "Traceback" not in out.stderr


def _ipv6_loopback_port() -> int | None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_a_broker_on_ipv6_loopback_serves_clients_and_workers():
    port = _ipv6_loopback_port()
    if port is None:
        pytest.skip("this machine has no IPv6 loopback")
    address = f"tcp://[::1]:{port}"
    broker = start_broker(address)
    worker = None
    try:
        # The address given as such, the keys from the broker's connection file.
        worker = start_worker(address, "--keys", broker.connection, "--processes", "1")
        with corral.Executor(address=address, keys=broker.connection) as ex:
            assert ex.submit(abs, -5).result(timeout=60) == 5
    finally:
        if worker is not None:
            stop(worker)
        stop(broker)
