"""A fresh worker's template imports each task's function ahead, so task processes start warm.

Each test writes a module of its own into a temporary directory on ``sys.path``
(the workers adopt the client's ``sys.path``), whose import leaves a trace or
misbehaves only outside the client process.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
import uuid

import pytest

import corral
from helpers import TIMEOUT


@pytest.fixture
def module_factory(tmp_path, monkeypatch):
    """Write ``source`` as a new module and import it here, in the client."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def make(source: str):
        name = f"tmod_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        return importlib.import_module(name)

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_task_processes_start_with_the_module_imported_and_share_nothing(make_executor, module_factory, tmp_path):
    log = tmp_path / "imports"
    mod = module_factory(f"""
        import os
        with open({str(log)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        COUNTER = [0]

        def bump():
            COUNTER[0] += 1
            return COUNTER[0], os.getpid()
    """)
    ex = make_executor(1, fresh=True)
    results = [ex.submit(mod.bump).result(TIMEOUT) for _ in range(8)]
    counts, pids = zip(*results)
    assert counts == (1,) * 8, "a task saw what an earlier task did to the module"
    assert len(set(pids)) == 8, "not a new process per task"
    importers = [int(line) for line in log.read_text().split()]
    in_workers = [pid for pid in importers if pid != os.getpid()]
    # The template imports it once; the first task's process may have been forked before that.
    assert 1 <= len(in_workers) <= 2, f"the module was imported in {len(in_workers)} worker processes"
    assert set(in_workers) - set(pids), "the template never imported it"


def test_a_module_that_fails_to_import_in_the_workers_fails_its_tasks_only(make_executor, module_factory):
    mod = module_factory(f"""
        import os
        if os.getpid() != {os.getpid()}:
            raise ImportError("this module imports only in the client")

        def f():
            return 1
    """)
    ex = make_executor(1, fresh=True, retries=0)
    for _ in range(2):
        with pytest.raises(corral.DeserializationError, match="imports only in the client"):
            ex.submit(mod.f).result(TIMEOUT)
    assert [ex.submit(abs, -i).result(TIMEOUT) for i in range(3)] == [0, 1, 2]


def test_a_module_whose_import_kills_the_template(make_executor, module_factory):
    """Breaks: importing the function's module ends the process (as a crashing extension would),
    first in the template. The worker starts a new template, imports nothing ahead any more, the
    task fails as its own process dies, and other tasks still run."""
    mod = module_factory(f"""
        import os
        if os.getpid() != {os.getpid()}:
            os._exit(9)

        def f():
            return 1
    """)
    ex = make_executor(1, fresh=True, retries=0)
    with pytest.raises(corral.WorkerLostError, match="exited with code 9"):
        ex.submit(mod.f).result(TIMEOUT)
    assert [ex.submit(abs, -i).result(TIMEOUT) for i in range(3)] == [0, 1, 2]


def test_a_slow_import_does_not_silence_the_worker(make_executor, module_factory):
    """The template takes 1.5 s to import the module; with heartbeats every 0.2 s (lost after
    0.6 s of silence) the supervisor keeps answering the broker meanwhile."""
    mod = module_factory(f"""
        import os, time
        if os.getpid() != {os.getpid()}:
            time.sleep(1.5)

        def f(x):
            return x * 2, os.getpid()
    """)
    ex = make_executor(1, fresh=True, retries=0, heartbeat=0.2)
    start = time.monotonic()
    assert ex.submit(mod.f, 1).result(TIMEOUT)[0] == 2
    assert time.monotonic() - start >= 1.4, "the task did not wait for the import"
    start = time.monotonic()
    assert [r[0] for r in ex.map(mod.f, range(4), timeout=TIMEOUT)] == [0, 2, 4, 6]
    assert time.monotonic() - start < 1.4, "later task processes imported it again"


def set_flavour():
    os.environ["TMOD_FLAVOUR"] = "set by the initializer"


def test_with_an_initializer_modules_import_after_it(make_executor, module_factory):
    """An initializer runs in each fresh task process and may prepare what an import reads
    (environment variables such as thread counts): nothing is imported ahead of it."""
    mod = module_factory("""
        import os
        FLAVOUR = os.environ.get("TMOD_FLAVOUR", "imported before the initializer")

        def flavour():
            return FLAVOUR
    """)
    ex = make_executor(1, fresh=True, initializer=set_flavour)
    assert {ex.submit(mod.flavour).result(TIMEOUT) for _ in range(4)} == {"set by the initializer"}


# The template forks with libc's fork(), skipping Python's at-fork hooks, while it has one
# thread and no module it imported registered hooks of its own; each test below checks what
# the task processes would see if that went wrong.


def test_fresh_task_processes_draw_their_own_random_numbers(make_executor, module_factory):
    mod = module_factory("""
        import os, random, threading

        def draw():
            return random.random(), threading.current_thread() is threading.main_thread(), os.getpid()
    """)
    ex = make_executor(1, fresh=True)
    draws, main, pids = zip(*(ex.submit(mod.draw).result(TIMEOUT) for _ in range(6)))
    assert len(set(pids)) == 6
    assert len(set(draws)) == 6, "task processes share the template's random state"
    assert all(main)


def test_at_fork_hooks_of_a_module_imported_ahead_run_in_every_task_process(make_executor, module_factory):
    mod = module_factory(f"""
        import os
        IMPORTED_IN = os.getpid()
        HOOK_RAN_IN = []
        if os.getpid() != {os.getpid()}:
            os.register_at_fork(after_in_child=lambda: HOOK_RAN_IN.append(os.getpid()))

        def report():
            return IMPORTED_IN != os.getpid(), HOOK_RAN_IN == [os.getpid()]
    """)
    ex = make_executor(1, fresh=True)
    results = [ex.submit(mod.report).result(TIMEOUT) for _ in range(6)]
    warm = [hook_ran for imported_ahead, hook_ran in results if imported_ahead]
    assert warm, "the template never imported the module"
    assert all(warm), "a task process forked after the import did not run the module's at-fork hook"


def test_a_thread_started_by_a_module_imported_ahead_is_not_in_the_task_processes(make_executor, module_factory):
    mod = module_factory(f"""
        import os, threading, time
        IMPORTED_IN = os.getpid()
        if os.getpid() != {os.getpid()}:
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()

        def report():
            return IMPORTED_IN != os.getpid(), threading.active_count()
    """)
    ex = make_executor(1, fresh=True)
    results = [ex.submit(mod.report).result(TIMEOUT) for _ in range(6)]
    warm = [threads for imported_ahead, threads in results if imported_ahead]
    assert warm, "the template never imported the module"
    assert set(warm) == {1}, "task processes believe the template's thread is theirs"


needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")


@needs_affinity
@pytest.mark.parametrize("cpus", ["all", "fewer"])
def test_task_processes_and_imports_ahead_see_the_cpus_the_client_has(make_executor, module_factory, cpus):
    """The template holds itself on one CPU while it forks (forkperf.Pin): neither a task nor a
    module it imports ahead may see another set of CPUs than the executor's process had."""
    mine = os.sched_getaffinity(0)
    if cpus == "fewer":
        if len(mine) < 2:
            pytest.skip("needs 2 CPUs")
        given = set(sorted(mine)[: max(2, len(mine) - 1)] if len(mine) > 2 else sorted(mine)[:1])
        os.sched_setaffinity(0, given)
    else:
        given = mine
    try:
        mod = module_factory("""
            import os
            AT_IMPORT = sorted(os.sched_getaffinity(0))

            def cpus():
                return os.getpid(), AT_IMPORT, sorted(os.sched_getaffinity(0))
        """)
        ex = make_executor(2, fresh=True)
        results = [ex.submit(mod.cpus).result(TIMEOUT) for _ in range(8)]
    finally:
        os.sched_setaffinity(0, mine)
    assert len({pid for pid, _, _ in results}) == 8
    assert all(now == sorted(given) for _, _, now in results), results
    assert all(at_import == sorted(given) for _, at_import, _ in results), results


def test_finished_task_processes_are_collected(make_executor):
    """A finished task process's pid rides on the next FORK request: the template reaps them in
    batches while tasks keep coming, and all of them once the worker is idle."""
    import psutil

    from corral import tuning

    ex = make_executor(1, fresh=True)
    assert list(ex.map(abs, range(-60, 0), timeout=TIMEOUT)) == list(range(60, 0, -1))
    (supervisor,) = psutil.Process().children()
    (tpl,) = supervisor.children()

    def zombies() -> int:
        count = 0
        for p in tpl.children():
            try:
                count += p.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:  # reaped between the listing and the look: collected
                pass
        return count

    assert zombies() <= tuning.COLLECT_BATCH + 2
    deadline = time.monotonic() + 10
    while zombies() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert zombies() == 0, "exited task processes were never collected"
    assert len(tpl.children()) == 1, "not one spare task process waiting for the next task"


def _collapse_works() -> bool:
    """Can this kernel back memory with transparent huge pages on request (MADV_COLLAPSE)?"""
    import ctypes
    import mmap

    from corral.worker import forkperf

    huge = forkperf.HugePages.here()
    if huge is None:
        return False
    region = mmap.mmap(-1, 2 * huge.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.write(b"x" * (2 * huge.size))
        start = -(-ctypes.addressof(ctypes.c_char.from_buffer(region)) // huge.size) * huge.size
        return huge.madvise(start, huge.size, forkperf.MADV_COLLAPSE) == 0
    finally:
        region.close()


def test_the_template_backs_its_heap_with_huge_pages_and_tasks_still_copy_on_write(make_executor, module_factory):
    """The template collapses what it can of its memory into huge pages (forkperf.HugePages),
    after an import ahead too; a task process that writes to it changes its own copy only."""
    import psutil

    if not _collapse_works():
        pytest.skip("this kernel cannot collapse memory into transparent huge pages")
    mod = module_factory("""
        import os
        BALLAST = bytearray(b"x") * (8 << 20)  # in the template: three or more whole huge pages

        def scribble(i):
            before = BALLAST[i << 12]
            BALLAST[i << 12] = 0x79
            return os.getpid(), before
    """)
    ex = make_executor(1, fresh=True)
    results = [ex.submit(mod.scribble, i).result(TIMEOUT) for i in range(12)]
    assert len({pid for pid, _ in results}) == 12
    assert all(before == ord("x") for _, before in results), "a task saw another task's write"
    (supervisor,) = psutil.Process().children()
    (tpl,) = supervisor.children()
    with open(f"/proc/{tpl.pid}/smaps_rollup") as f:
        huge_kib = int(f.read().split("AnonHugePages:")[1].split()[0])
    assert huge_kib >= 4096, f"the template has {huge_kib} KiB in huge pages"


def test_a_task_process_leaves_through_libc_exit_with_its_code():
    """Fresh task processes leave with libc's _exit() looked up in the template
    (forkperf.libc_exit), not os._exit(): the code and what was printed still get out."""
    from corral.worker import forkperf
    from corral.worker import task_process as runner

    leave = forkperf.libc_exit()
    if leave is None:
        pytest.skip("os._exit() is used here")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        sys.stdout = open(write, "w")  # block-buffered: only run_child's flush gets it out
        runner.run_child(lambda: print("bye", end="") or 7, [], leave=leave)
    os.close(write)
    try:
        _, status = os.waitpid(pid, 0)
        said = os.read(read, 100)
    finally:
        os.close(read)
    assert os.waitstatus_to_exitcode(status) == 7
    assert said == b"bye", "what the task process printed was lost"
