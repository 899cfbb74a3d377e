"""In-task progress as a client receives it: PROGRESS from the broker, kept on each future.

A task's ``corral.report()`` (``reporting.py``) arrives here, in the I/O loop,
as PROGRESS entries under the client's task ids.  Each future keeps the latest
fraction and message (``_progress``; a part left out keeps what was reported
before), read by ``future.info`` (``progress``, ``progress_message``), and tells
the progress bar watching it, if one is (``_progress_watch``, progress.py).
A report the task made in its last moments, which its task process had not
sent yet, comes in the meta of the task's RESULT (``progress``) instead.
"""

from __future__ import annotations

from ..wire import protocol


def receive(futures: dict, body: dict) -> None:
    """A PROGRESS from the broker: each report onto its future (ProtocolError if malformed).

    A report for a task whose future is done, or that this client does not know, is dropped.
    """
    for cid, fraction, text in protocol.progress_entries(body):
        fut = futures.get(cid)
        if fut is None:
            continue
        old = fut._progress
        if old is not None:
            fraction = old[0] if fraction is None else fraction
            text = old[1] if text is None else text
        fut._progress = (fraction, text)
        watch = fut._progress_watch
        if watch is not None:
            try:
                watch(fut)
            except Exception:  # noqa: BLE001 - a bar's trouble must not stop the I/O thread
                pass


def latest(fut, meta: dict) -> tuple:
    """(fraction, message) that ``fut``'s task reported last, each None where it reported none."""
    fraction, text = getattr(fut, "_progress", None) or (None, None)
    last = meta.get("progress")  # the report sent with its RESULT (reporting.py)
    if type(last) is list and len(last) == 2:
        if type(last[0]) in (int, float) and 0 <= last[0] <= 1:
            fraction = float(last[0])
        if type(last[1]) is str:
            text = last[1][: protocol.MAX_PROGRESS_TEXT]
    return fraction, text
