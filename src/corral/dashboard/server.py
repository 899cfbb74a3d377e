"""The dashboard's HTTP server (tornado), on a thread of its own, and the sampler that feeds it.

One sampler thread asks the broker how things stand once a period (``source.snapshot``)
and keeps the answer and a bounded history of its counts; the page polls ``/api/status``
and is answered from that, so that any number of open pages cost the broker one request
a second.  The server runs tornado's event loop on a daemon thread: ``stop()`` ends both
threads and closes the listening socket.

Beyond loopback the page asks for a password (HTTP basic authentication), the token
``token_for`` derives from the client's secret key; on loopback it checks that the Host
header names loopback, so that a web page elsewhere cannot read it through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from .listen import is_loopback

STATIC = os.path.join(os.path.dirname(__file__), "static")
HISTORY = 600  # samples kept for "throughput over time": ten minutes at one a second
REALM = "corral dashboard"
USER = "corral"  # the name the browser asks for; any name is accepted, the password is what counts
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


class Sampler:
    """Asks ``read`` for the status every ``period`` seconds; keeps the last answer and a history."""

    def __init__(self, read: Callable[[], dict], maps: Any = None, period: float = 1.0):
        self._read, self._maps, self.period = read, maps, period
        self._lock = threading.Lock()
        self._history: deque[dict] = deque(maxlen=HISTORY)
        self._latest: dict[str, Any] = {}
        self._error: str | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="corral-dashboard-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.sample()
            self._stop.wait(max(0.05, self.period - (time.monotonic() - began)))

    def sample(self) -> None:
        """One status request, kept with a row of the history; a failure is kept as the page's error."""
        try:
            status = self._read()
        except Exception as exc:  # the broker is away, the executor shut down: the page says so, and waits
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"
            return
        if self._maps is not None:
            status.setdefault("maps", self._maps.maps())
            events = self._maps.events()
            if not status.get("events"):
                status["events"] = events
        with self._lock:
            self._latest, self._error = status, None
            self._history.append(_row(status, self._history[-1] if self._history else None))

    def state(self) -> dict[str, Any]:
        """What ``/api/status`` answers: the status, the history, and the last error (None: it answered)."""
        with self._lock:
            return {"status": self._latest, "history": list(self._history), "error": self._error,
                    "period": self.period, "now": time.time()}

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(10)


def _row(status: dict, last: dict | None) -> dict[str, Any]:
    """One row of the history: the counts, and the rates since the row before (or the broker's)."""
    counts = status.get("counts") or {}
    t = status.get("time") or time.time()
    row = {"t": t, **{k: counts.get(k) for k in ("done", "failed", "running", "queued", "connected")}}
    rate = status.get("rate")
    if isinstance(rate, dict) and "done_per_s" in rate:
        row["done_per_s"], row["failed_per_s"] = rate.get("done_per_s"), rate.get("failed_per_s")
    elif last is not None and t > last["t"] and row["done"] is not None and last.get("done") is not None:
        span = t - last["t"]
        row["done_per_s"] = max(0.0, (row["done"] - last["done"]) / span)
        row["failed_per_s"] = max(0.0, ((row["failed"] or 0) - (last.get("failed") or 0)) / span)
    return row


class _Page(tornado.web.RequestHandler):
    """What every handler checks first: the password beyond loopback, the Host header on it."""

    def initialize(self, token: str | None, host_check: bool, sampler: Sampler | None = None) -> None:
        self.token, self.host_check, self.sampler = token, host_check, sampler

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if self.token is not None and not self._authorized():
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
            self.set_status(401)
            self.finish("the corral dashboard asks for a password: see docs/observability.md\n")
            return
        if self.host_check and self.request.host_name not in LOOPBACK_NAMES:
            self.set_status(403)
            self.finish("this dashboard answers only pages of localhost\n")

    def _authorized(self) -> bool:
        scheme, _, encoded = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), self.token.encode())


class _Index(_Page):
    def get(self) -> None:
        with open(os.path.join(STATIC, "index.html"), "rb") as f:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(f.read())


class _NoIcon(_Page):
    def get(self) -> None:
        self.set_status(204)


class _Status(_Page):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.sampler.state(), default=str))


class _Static(_Page, tornado.web.StaticFileHandler):
    def initialize(self, token: str | None, host_check: bool, path: str) -> None:  # type: ignore[override]
        _Page.initialize(self, token, host_check)
        tornado.web.StaticFileHandler.initialize(self, path)


class Server:
    """The dashboard on ``host:port``: tornado's loop on a daemon thread, fed by a ``Sampler``."""

    def __init__(self, read: Callable[[], dict], host: str, port: int, token: str | None = None,
                 maps: Any = None, period: float = 1.0):
        self.sampler = Sampler(read, maps, period)
        self.maps = maps  # an executor's maps (maps.py), or None
        loopback = is_loopback(host)
        args = {"token": token, "host_check": loopback and token is None}
        self._app = tornado.web.Application([
            (r"/", _Index, args),
            (r"/api/status", _Status, {**args, "sampler": self.sampler}),
            (r"/static/(.*)", _Static, {**args, "path": STATIC}),
            (r"/favicon.ico", _NoIcon, args),
        ], log_function=lambda handler: None)  # no access log on the stderr of the executor's user
        # Bound here, in the caller's thread: an address in use fails the caller at once.
        self._sockets = tornado.netutil.bind_sockets(port, host)
        self.port = self._sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="corral-dashboard", daemon=True)

    def start(self) -> Server:
        self.sampler.thread.start()
        self.thread.start()
        self._ready.wait(10)
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        server = tornado.httpserver.HTTPServer(self._app)
        server.add_sockets(self._sockets)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            loop.run_until_complete(server.close_all_connections())
            loop.close()

    def stop(self) -> None:
        """Stop serving and sampling; the listening socket is closed when this returns."""
        self.sampler.stop()
        loop = self._loop
        if loop is not None and self.thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            if self.thread is not threading.current_thread():
                self.thread.join(10)
        else:
            for sock in self._sockets:
                sock.close()
