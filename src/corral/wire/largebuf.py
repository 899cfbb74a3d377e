"""Writable buffers for large messages that arrive: mapped with huge pages where Linux allows, and
mapped again from one message to the next.

Why huge pages: a large message read or joined into a fresh ``bytearray`` costs one page fault
per 4 KiB page as it is first written: 16,384 faults for 64 MiB, about three quarters of the
time a 64 MiB join takes (54 ms on the 2-core test machine, of which the copy is ~12).  An
anonymous mapping advised ``MADV_HUGEPAGE`` is faulted in 2 MiB at a time (15 ms for the same
join), also where the system's transparent huge pages are set to ``madvise``.  Elsewhere, or
below ``HUGE_FROM``, a ``bytearray``.

Why again: even faulted in 2 MiB at a time, every page of a fresh mapping is zeroed by the
kernel first, and on a virtual machine that hands freed memory back to its host (free page
reporting) a page freed a moment ago may have to come back from the host: a worker relaying
64 MiB results spent 10-30 ms a result zeroing pages, and 150-200 ms when they came from the
host (perf: ``clear_page_erms``), so the same round trip took 140 ms or 350 ms by chance.  So
a mapping whose views are all gone is not unmapped at once: the next large buffer that fits it
reuses it (not zeroed: every caller writes all of it before it reads; the rest of the mapping, up
to the next 2 MiB, is zeroed, since a view's ``obj`` reaches it).  Only in the processes that relay
large messages and keep time (a worker's supervisor, a standalone broker: ``reuse``), whose housekeeping calls ``trim``:
what is kept is bounded (``KEEP_BYTES`` of unused mappings, none larger) and let go
``KEEP_SECONDS`` after its last use.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time

HUGE_FROM = 4 << 20  # smaller buffers gain little, and would round up to a whole huge page
KEEP_BYTES = 256 << 20  # unused mappings kept for reuse, at most
KEEP_SECONDS = 5.0  # an unused mapping is let go this long after it was last handed out
_ROUND = 2 << 20  # mappings are whole huge pages, so that buffers of nearly the same size share them
_HUGE = getattr(mmap, "MADV_HUGEPAGE", None)

_lock = threading.Lock()
_mapped: list[list] = []  # [mapping, when last handed out]: every mapping made and not let go
_reusing = False  # only where ``reuse()`` was called


def reuse() -> None:
    """Keep unused mappings for reuse in this process: one that relays large messages and calls
    ``trim`` on its clock (a worker's supervisor, a standalone broker).  Not a task process or a
    client (an embedded broker's too), whose buffers users hold and which may idle for hours after
    one large message; nor a child forked from this process."""
    global _reusing
    _reusing = True


def _not_in_a_child() -> None:
    global _reusing, _lock
    _reusing, _lock = False, threading.Lock()
    _mapped.clear()


os.register_at_fork(after_in_child=_not_in_a_child)


def buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes (MemoryError if there is no room), zeroed unless it is a
    mapping used before: the caller writes all of it."""
    if _HUGE is None or size < HUGE_FROM:
        return memoryview(bytearray(size))
    length = -(-size // _ROUND) * _ROUND
    if not _reusing or length > KEEP_BYTES:
        return memoryview(_map(size))
    now = time.monotonic()
    with _lock:
        area = _reuse(length, now)
        if area is None:
            area = _map(length)
            _mapped.append([area, now])
        elif length > size:  # reachable through the view's ``obj``: what an earlier message left there goes
            area[size:] = bytes(length - size)
    return memoryview(area)[:size]


def trim(now: float | None = None) -> None:
    """Let go the unused mappings not handed out for ``KEEP_SECONDS``, and the oldest unused ones
    past ``KEEP_BYTES``."""
    now = time.monotonic() if now is None else now
    with _lock:
        _tidy(now)


def _map(size: int) -> mmap.mmap:
    """A new anonymous mapping of ``size`` bytes, advised to use huge pages."""
    try:
        area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:
        raise MemoryError(f"cannot map {size} bytes: {exc}") from None
    try:
        area.madvise(_HUGE)
    except OSError:
        pass  # no transparent huge pages here: ordinary pages
    return area


def _unused(entry: list) -> bool:
    """Has every view of this entry's mapping gone?  Then only ``entry`` and this call refer to it."""
    return sys.getrefcount(entry[0]) <= 2


def _reuse(length: int, now: float) -> mmap.mmap | None:
    """An unused mapping of ``length`` bytes, marked used now; where there is none, room made for
    a new one among the unused ones kept (``KEEP_BYTES``)."""
    _tidy(now)
    for entry in _mapped:
        if len(entry[0]) == length and _unused(entry):
            entry[1] = now
            return entry[0]
    _tidy(now, room=length)
    return None


def _tidy(now: float, room: int = 0) -> None:
    """Drop (and so unmap) the unused mappings not handed out for ``KEEP_SECONDS``, and the oldest
    unused ones beyond ``KEEP_BYTES - room``; those in use stay, whatever their age."""
    kept, keep = 0, []
    for entry in sorted(_mapped, key=lambda entry: entry[1], reverse=True):
        if _unused(entry):
            if now - entry[1] >= KEEP_SECONDS or kept + len(entry[0]) + room > KEEP_BYTES:
                continue
            kept += len(entry[0])
        keep.append(entry)
    _mapped[:] = keep
