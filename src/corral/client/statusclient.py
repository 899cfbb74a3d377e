"""Asking a broker for its status from outside any executor: ``corral status``, and whatever else
watches one (a dashboard).

A ``StatusClient`` connects as a client (``security/credentials.resolve``: a connection
file, an address with keys, ``--insecure``) or to an executor's status socket (its status
file: ``statusfile.py``), says HELLO, and asks STATUS when ``fetch`` is called; between
fetches ``wait`` keeps it alive with heartbeats, so that the broker does not drop it as
silent.  It submits nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import zmq

from ..errors import ProtocolError
from ..security.credentials import Target, check_file_or_address, is_connection_file, resolve
from ..status import MAX_EVENTS, assemble
from ..wire import protocol, sockets
from ..wire.protocol import Kind
from . import statusfile


class StatusRefused(RuntimeError):
    """The broker refused this client (its key, or a request it would not answer)."""


def target_of(where: str | os.PathLike, keys: str | os.PathLike | None = None, insecure: bool = False) -> Target:
    """Where to ask: an executor's status file, or a broker as ``resolve`` finds it for a client."""
    where = os.fspath(where)
    if is_connection_file(where):
        check_file_or_address(where)  # AddressError: neither a file nor an address
        address = statusfile.read(where)
        if address is not None:
            if keys is not None or insecure:
                raise ValueError(f"{where} is an executor's status file: it needs neither keys nor insecure")
            return Target(address)
    return resolve(where, "client", keys=keys, insecure=insecure)


class StatusClient:
    """A connection to a broker that asks for its status (``fetch``), and nothing else."""

    def __init__(self, where: str | os.PathLike, *, keys: str | os.PathLike | None = None, insecure: bool = False):
        self.target = target_of(where, keys, insecure)
        self.address = self.target.address
        self.heartbeat = 1.0  # until WELCOME says otherwise
        self.ctx = zmq.Context()
        try:
            self.sock = sockets.dealer(self.ctx, self.address, linger=0, curve=self.target.curve)
        except BaseException:
            self.ctx.term()
            raise
        self.welcomed = False
        self.last_sent = 0.0
        self.hello()

    def post(self, kind: Kind, body: dict | None = None) -> None:
        self.sock.send_multipart(protocol.message(kind, body), copy=False)
        self.last_sent = time.monotonic()

    def hello(self) -> None:
        self.post(Kind.HELLO, {"role": "client", "pid": os.getpid()})

    def fetch(self, timeout: float = 10.0, events: int = MAX_EVENTS) -> dict[str, Any]:
        """The broker's status (``status.assemble``'s dict), with up to ``events`` recent task events;
        TimeoutError if no answer comes within ``timeout`` seconds, StatusRefused if the broker refuses us."""
        self.post(Kind.STATUS, {"events": events})
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply is None:
                raise TimeoutError(f"no broker answered at {self.address} within {timeout:g} s (is it running, "
                                   "and reachable from here?)")
            kind, body, frames = reply
            if kind == Kind.STATUS_REPLY:
                workers = json.loads(bytes(frames[0])) if frames else []
                more = json.loads(bytes(frames[1])) if len(frames) > 1 else {}
                return assemble(workers, body, more, self.address)
            if kind == Kind.ERROR and body.get("code") == protocol.UNKNOWN_PEER:
                self.hello()  # it dropped us (a restart, our silence): again
                self.post(Kind.STATUS, {"events": events})
            elif kind == Kind.ERROR:
                raise StatusRefused(f"the broker at {self.address} refused: {protocol.text(body.get('message'))}")

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass, heartbeating (and reading what the broker says meanwhile)."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if now - self.last_sent >= self.heartbeat:
                self.post(Kind.HEARTBEAT)
            self._receive(min(deadline, self.last_sent + self.heartbeat))

    def _receive(self, deadline: float) -> tuple[Kind, dict, list] | None:
        """The next message that matters (WELCOME and HEARTBEAT are taken here), or None at ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(left * 1000, zmq.POLLIN):
                return None
            msg = self.sock.recv_multipart()
            try:
                kind, body = protocol.decode(msg[0])
                frames = protocol.unpack(body, msg[1:])
                if kind == Kind.WELCOME:
                    self.welcomed = True
                    self.heartbeat, _ = protocol.timing(body, self.heartbeat, 3)
            except ProtocolError:
                continue
            if kind not in (Kind.WELCOME, Kind.HEARTBEAT):
                return kind, body, frames

    def close(self) -> None:
        """Say BYE and close."""
        linger = 0
        try:
            if self.welcomed:
                self.post(Kind.BYE)
                linger = 500  # time for the BYE to leave, or the broker waits for our silence to drop us
        finally:
            self.sock.close(linger=linger)
            self.ctx.term()

    def __enter__(self) -> StatusClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
