"""The executor's observing half: what its broker says it is doing (``status()``, ``summary()``),
and where an executor shows it (``dashboard_url``, ``status_file``).

A mixin of ``Executor`` (``executor.py``), as the broker's parts are of ``Broker``: it uses the
executor's I/O loop (``_io``), its broker's address and its shutdown flag, and asks nothing of
the task path.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from ..status import MAX_EVENTS, Summary, assemble


class Observing:
    """``Executor``'s status, summary, dashboard URL and status file."""

    @property
    def dashboard_url(self) -> str | None:
        """Where ``dashboard=`` serves the live dashboard (None without one)."""
        return self._dashboard.url if self._dashboard is not None else None

    @property
    def status_file(self) -> str | None:
        """The status file's path (``Executor(status_file=...)``), for ``corral status PATH``; None without one."""
        return None if self._status_file is None else self._status_file.path

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The broker's view, as one JSON-able dict: counts and rates, queues, every worker (its state,
        what it runs and for how long, its memory), recent task events, this client's fellow
        clients.  Task ids are this client's own (or its key's); another client's show as None.
        The keys are listed in docs/observability.md; ``corral status --json`` prints the same."""
        workers, counts, more = self._request_status("status", timeout, {"events": MAX_EVENTS})
        return assemble(workers, counts, more, self._address)

    def _request_status(self, caller: str, timeout: float, body: dict | None = None) -> tuple[list, dict, dict]:
        """The broker's STATUS_REPLY (to STATUS ``body``): worker records, counts, the rest."""
        if self._shutdown and not self._io.thread.is_alive():
            raise RuntimeError(f"{caller}() needs a running executor; call it before shutdown()")
        try:
            return self._io.request_status(body).result(timeout)
        except FuturesTimeout:
            never = "" if self._io.welcomed else " (it has not answered this executor at all: is it running there?)"
            raise TimeoutError(f"the broker at {self._address} did not answer a status request within "
                               f"{timeout:g} s{never}") from None

    def summary(self, timeout: float = 10.0) -> Summary:
        """Per-worker statistics from the broker: one dict per worker."""
        workers, counts, _ = self._request_status("summary", timeout)
        return Summary(workers, queued=counts.get("queued", 0), running=counts.get("running", 0),
                       launches=counts.get("launches"), waiting=counts.get("waiting", 0),
                       unschedulable=counts.get("unschedulable", 0),
                       unschedulable_reasons=counts.get("unschedulable_reasons", []),
                       objects=counts.get("objects"))


