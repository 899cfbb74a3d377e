"""Making forks cheap: how the fresh worker's template forks, and what it holds when it does.

Every page a fresh task process writes is a page the kernel copies from the
template, and every page table entry the template holds is one a fork copies
and an exit clears: for a no-op task, most of its cost.  So the template:

- forks with libc's ``fork()``, skipping Python's at-fork hooks while that is
  safe (``libc_fork``, ``after_libc_fork``), and leaves with libc's ``_exit()``
  (``libc_exit``), each saving pages in every task process;
- forks held on the CPU it runs on, where the page tables it just copied are
  cached (``Pin``);
- gives its C heap's free pages back (``trim``) and backs what it can of its heap
  with transparent huge pages (``HugePages``) after its warm-up and each import
  (``make_shareable``).

docs/performance.md has the measurements behind each of these.
"""

from __future__ import annotations

import _random
import ctypes
import errno
import gc
import os
import sys
import threading

from ..tuning import HUGE_PAGE_FILL


class Forker:
    """How the template forks: libc's ``fork()`` while that is safe, ``os.fork()`` otherwise,
    with the template held on the CPU it runs on for the length of the call (``Pin``)."""

    def __init__(self):
        self.libc_fork = libc_fork()
        self.pin = Pin.here()
        self.pinned = False  # the last fork was made held on one CPU (the child still is)
        self.hooks_added = False
        register = os.register_at_fork

        def watched(**hooks):  # an imported module adds at-fork hooks: os.fork() must run them
            """Register at-fork hooks, noting that a module did."""
            self.hooks_added = True
            register(**hooks)

        os.register_at_fork = watched

    def imported(self) -> None:
        """Something was imported: it may have started a thread or added at-fork hooks."""
        if self.hooks_added or threading.active_count() > 1 or len(sys._current_frames()) > 1:
            self.libc_fork = None

    def __call__(self) -> int:
        self.pinned = self.pin is not None and self.pin.hold()
        pid = -1
        try:
            pid = self.libc_fork() if self.libc_fork is not None else os.fork()
        finally:
            if self.pinned and pid != 0:
                self.pin.release()  # the child's own are released before its task runs (task_process.serve)
        if pid < 0:
            raise OSError(ctypes.get_errno(), "fork() failed")
        if pid == 0 and self.libc_fork is not None:
            after_libc_fork()
        return pid


class Pin:
    """Holds the calling process on the CPU it runs on, then gives it back its CPUs.

    Linux starts a new process on the least busy CPU it may use, which is rarely
    the one its parent just built its page tables on, and wakes it later
    wherever it seems best; a fresh task process then copies its hundreds of
    pages, and tears all of them down at exit, away from the caches that hold
    them.  Forked while the template may run on one CPU only, a task process
    starts there and stays there until its task arrives; it is given all its
    CPUs back before any user code runs (the initializer, or the task's
    unpickling), so the task sees the CPUs the worker was given.  On the
    2-core test VM, about a sixth more fresh tasks per second (A/B in one run).
    """

    def __init__(self, cpus: set, getcpu):
        self.cpus = cpus  # the CPUs the template was given: every task process gets them back
        self.getcpu = getcpu

    @classmethod
    def here(cls) -> Pin | None:
        """A pin for this process; None where there is nothing to gain (one CPU, no Linux)."""
        if not hasattr(os, "sched_setaffinity") or not sys.platform.startswith("linux"):
            return None
        try:
            cpus = os.sched_getaffinity(0)
            getcpu = ctypes.CDLL(None).sched_getcpu
        except (OSError, AttributeError):
            return None
        return cls(cpus, getcpu) if len(cpus) > 1 else None

    def hold(self) -> bool:
        """Keep this process on its current CPU; False if that could not be done."""
        try:
            os.sched_setaffinity(0, (self.getcpu(),))
        except OSError:  # a CPU taken away from us meanwhile (a cpuset changed): fork unpinned
            return False
        return True

    def release(self) -> None:
        """Give the process all its CPUs back."""
        try:
            os.sched_setaffinity(0, self.cpus)
        except OSError:  # all of them were taken away meanwhile (a cpuset changed): whatever is left
            os.sched_setaffinity(0, range(os.cpu_count() or 1))


def after_libc_fork() -> None:
    """What the skipped hooks do that matters with one thread: random's new seed.

    (threading's hook renews locks no other thread can hold, and even it leaves the
    main thread's ``native_id`` as the parent's.)  Each page written here costs.
    """
    module = sys.modules.get("random")
    if module is not None:  # a new seed from os.urandom, by the C method itself
        generator = module._inst
        _random.Random.seed(generator, None)  # random.Random.seed's checks, skipped
        if generator.gauss_next is not None:
            generator.gauss_next = None


def libc_fork():
    """libc's ``fork()``, called with the GIL held; None where only ``os.fork()`` will do."""
    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return None
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None  # a free-threaded build has per-object locks to reset after a fork
    try:
        return ctypes.PyDLL(None, use_errno=True).fork
    except (OSError, AttributeError):
        return None


def libc_exit():
    """libc's ``_exit()``, looked up now; None where ``os._exit()`` must do.

    A task process leaves with it instead of ``os._exit()``: the template never calls
    ``os._exit()``, so the first call would be each task process's, and the dynamic linker
    would resolve ``_exit`` for it then (a walk through every loaded library's symbol
    tables, and a write to the interpreter's table of resolved calls): on the 2-core test
    VM, 11-13 more pages copied per fresh task process (of ~240), ~6% of fresh tasks per
    second (A/B in one run).  No ``argtypes``: their converters would touch more pages.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.PyDLL(None)._exit
    except (OSError, AttributeError):
        return None


def trim() -> None:
    """Give the C heap's free pages back to the system: each page the template keeps is
    a page table entry that every fork copies and every task process's exit clears
    (on the 2-core test VM, about 0.7 of the template's 12 MB; glibc only)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


MADV_COLLAPSE = 25  # Linux 6.1: back a range with transparent huge pages, now


def huge_page_size() -> int:
    """The size of a transparent huge page (2 MiB on x86-64), or 0 where there are none."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            size = int(f.read())
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return 0 if "[never]" in f.read() else size
    except (OSError, ValueError):
        return 0


class HugePages:
    """Backs the template's heap with transparent huge pages where it can.

    A fork copies one page table entry per 4 KiB page the template has in memory, and the
    task process's exit clears them all again: for a no-op task, the bulk of the kernel's
    work.  A 2 MiB huge page is one entry in both (a task process that writes to it gets
    its own 4 KiB copy, as ever).  The template's anonymous mappings are collapsed
    (``madvise(MADV_COLLAPSE)``) in every 2 MiB-aligned range that lies wholly inside one
    and is at least ``HUGE_PAGE_FILL`` in memory, so that at most a quarter of each is
    memory the template did not use.  CPython's own allocator maps 1 MiB arenas wherever
    the kernel puts them, so only some ranges qualify (on the 2-core test VM, 4 of the
    template's 11 MB: 4-5% more fresh tasks per second, A/B in one run).  Nothing happens
    where the kernel has no ``MADV_COLLAPSE`` or transparent huge pages are off.
    """

    def __init__(self, size: int, libc):
        self.size = size
        self.madvise = libc.madvise
        self.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        self.mincore = libc.mincore
        self.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
        self.pages = size // os.sysconf("SC_PAGE_SIZE")
        self.resident = ctypes.create_string_buffer(self.pages)

    @classmethod
    def here(cls) -> HugePages | None:
        """The huge pages of this machine; None where there are none."""
        size = huge_page_size()
        if not size:
            return None
        try:
            return cls(size, ctypes.CDLL(None, use_errno=True))
        except (OSError, AttributeError):
            return None

    def collapse(self) -> None:
        """Collapse the ranges that qualify."""
        for start in self._ranges():
            if self.mincore(start, self.size, self.resident) != 0:
                continue
            if sum(b & 1 for b in self.resident.raw) < HUGE_PAGE_FILL * self.pages:
                continue
            if self.madvise(start, self.size, MADV_COLLAPSE) != 0 and ctypes.get_errno() == errno.EINVAL:
                break  # no MADV_COLLAPSE on this kernel: nothing else will work either

    def _ranges(self):
        """The huge-page-aligned ranges inside the anonymous private mappings (the heap's)."""
        try:
            with open("/proc/self/maps") as f:
                lines = f.read().splitlines()
        except OSError:
            return
        for line in lines:
            fields = line.split()
            if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
                continue  # a file's, the stack, or not writable
            low, high = (int(x, 16) for x in fields[0].split("-"))
            start = -(-low // self.size) * self.size
            while start + self.size <= high:
                yield start
                start += self.size


def make_shareable(huge: HugePages | None) -> None:
    """Make what the template holds now cheap for the task processes it forks to share."""
    # Objects that exist now are never collected, so the garbage collector of a
    # task process does not touch (and copy) the pages that hold them.
    gc.freeze()
    trim()
    if huge is not None:
        huge.collapse()
