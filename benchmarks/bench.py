"""Benchmark corral against the stdlib process pools, loky and dask, side by side in one run.

    python benchmarks/bench.py --quick      # under 2 minutes
    python benchmarks/bench.py              # full counts, under ~10 minutes

Every (executor, metric) pair runs in its own child interpreter (this file with
``--child``), in its own process group, under a wall-clock limit: a hang or a
crash costs that one cell ("timeout" / "error") and the run goes on.  After
each child the whole process group is checked, and anything left in it (a
leaked worker) is killed and reported.  Results go to ``docs/benchmarks.md``
and, when matplotlib is importable, ``docs/benchmarks.png``.  Each row that has a
target for corral gets it in the table, with "met?" judged from this run alone.
The broker scale rows come from ``broker_scale.py`` (simulated workers).

Only a few cheap standard-library modules are imported at module level, so
spawn-started workers that re-import this file as ``__mp_main__`` stay cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

# Everything else is imported where it is used, so that spawn-started workers (which
# import this file again) and --by-reference task processes stay cheap.

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
MIB = 1 << 20


# -- task functions (module level so every executor can pickle them) ---------------


def noop():
    return None


def ident(x):
    return x


def busy(seconds):
    """Burn ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds


# The metrics call the task functions through T: by default this module, which in a
# child is ``__main__``, as in a user's script: corral and loky then pickle the functions
# by value (cloudpickle), the stdlib pools by reference.  With --by-reference, T is this
# file imported again as the module ``bench`` (benchmarks/ is sys.path[0]), so every
# executor pickles the functions by reference, as it would those of any importable
# module; corral's fresh mode then imports ``bench`` in every task process.
T = sys.modules[__name__]


# -- executors: one adapter interface over all peers --------------------------------


class Handle:
    """What ``submit`` returns: ``result(timeout)`` for futures and AsyncResults alike."""

    __slots__ = ("get",)

    def __init__(self, get):
        self.get = get

    def result(self, timeout):
        return self.get(timeout)


class ExecutorAdapter:
    def __init__(self, ex):
        self.ex = ex

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def map(self, fn, items, chunksize, timeout):
        return list(self.ex.map(fn, items, chunksize=chunksize, timeout=timeout))

    def shutdown(self):
        self.ex.shutdown(wait=True)

    def abandon(self):
        with contextlib.suppress(Exception):  # best effort: the parent kills the group anyway
            self.ex.shutdown(wait=False, cancel_futures=True)


class PoolAdapter:
    def __init__(self, pool):
        self.pool = pool

    def submit(self, fn, *args):
        return Handle(self.pool.apply_async(fn, args).get)

    def map(self, fn, items, chunksize, timeout):
        return self.pool.map_async(fn, items, chunksize=chunksize).get(timeout)

    def shutdown(self):
        self.pool.close()
        self.pool.join()

    def abandon(self):
        with contextlib.suppress(Exception):
            self.pool.terminate()


def _mp(method):
    import multiprocessing

    return multiprocessing.get_context(method)


def _make_corral(fresh):
    from corral import Executor  # not just "import corral", which loads the executor on first use

    return lambda: ExecutorAdapter(Executor(WORKERS, fresh=fresh))


def _make_ppe(method, max_tasks_per_child=None):
    from concurrent.futures import ProcessPoolExecutor

    kw = {} if max_tasks_per_child is None else {"max_tasks_per_child": max_tasks_per_child}
    ctx = _mp(method)
    return lambda: ExecutorAdapter(ProcessPoolExecutor(WORKERS, mp_context=ctx, **kw))


def _make_pool(maxtasksperchild=None):
    ctx = _mp("fork")
    return lambda: PoolAdapter(ctx.Pool(WORKERS, maxtasksperchild=maxtasksperchild))


def _make_loky():
    import loky

    return lambda: ExecutorAdapter(loky.ProcessPoolExecutor(WORKERS))


class DaskAdapter:
    """dask.distributed: a LocalCluster of WORKERS single-threaded worker processes."""

    def __init__(self):
        import logging
        import warnings

        from distributed import Client, LocalCluster

        warnings.filterwarnings("ignore", message=".*large graph.*")  # the 64 MiB array travels in the graph
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)  # pure=False: no two no-ops share a key

    def map(self, fn, items, chunksize, timeout):
        from distributed import wait

        assert chunksize == 1, "dask has no chunksize"
        futures = self.client.map(fn, items, pure=False)
        wait(futures, timeout)
        return self.client.gather(futures)

    def shutdown(self):
        self.client.close()
        self.cluster.close()

    def abandon(self):
        with contextlib.suppress(Exception):
            self.client.close(timeout=2)
            self.cluster.close(timeout=2)


def _make_dask():
    import distributed  # noqa: F401 - imported here, outside any timing

    return DaskAdapter


class Peer(NamedTuple):
    label: str  # the table's column
    module: str | None  # must be importable, or the peer is skipped
    factory: object  # () -> (() -> adapter); the outer call does the imports, outside any timing
    kind: str  # "persistent": workers are reused; "fresh": a new process per task
    cannot: tuple = ()  # metrics it has no way to do


PEERS = {
    "corral": Peer("corral", "corral", lambda: _make_corral(False), "persistent"),
    "corral-fresh": Peer("corral fresh", "corral", lambda: _make_corral(True), "fresh"),
    "ppe-fork": Peer("PPE fork", None, lambda: _make_ppe("fork"), "persistent"),
    "ppe-spawn": Peer("PPE spawn", None, lambda: _make_ppe("spawn"), "persistent"),
    "ppe-spawn-mtpc1": Peer("PPE spawn mtpc=1", None, lambda: _make_ppe("spawn", 1), "fresh"),
    "pool": Peer("Pool fork", None, lambda: _make_pool(), "persistent"),
    "pool-mtpc1": Peer("Pool fork mtpc=1", None, lambda: _make_pool(1), "fresh"),
    "loky": Peer("loky", "loky", lambda: _make_loky(), "persistent"),
    "dask": Peer("dask", "distributed", _make_dask, "persistent", cannot=("map1000",)),
}
BASELINE = "ppe-fork"
FRESH_BASELINE = "pool-mtpc1"  # what corral's fresh mode is held against (its target)


# -- metrics -----------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("metric ran past its time limit")
        return remaining


def m_latency(ex, p, dl):
    import statistics

    for _ in range(p["warmup"]):
        ex.submit(T.noop).result(dl.left())
    samples = []
    for _ in range(p["reps"]):
        t0 = time.perf_counter()
        ex.submit(T.noop).result(dl.left())
        samples.append(time.perf_counter() - t0)
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_us": statistics.median(samples) * 1e6, "p99_us": q[98] * 1e6}


def _submit_all(ex, p, dl, warmup):
    """Submit p["n"] no-ops at once, then wait for all of them, after ``warmup`` no-ops
    submitted at once (so that every worker has run the function once)."""
    for h in [ex.submit(T.noop) for _ in range(warmup)]:
        h.result(dl.left())
    t0 = time.perf_counter()
    handles = [ex.submit(T.noop) for _ in range(p["n"])]
    for h in handles:
        h.result(dl.left())
    return {"per_s": p["n"] / (time.perf_counter() - t0)}


def m_submit(ex, p, dl):
    return _submit_all(ex, p, dl, warmup=20)


def _m_map(ex, p, dl, chunksize):
    ex.map(T.ident, range(100), chunksize, dl.left())
    t0 = time.perf_counter()
    out = ex.map(T.ident, range(p["n"]), chunksize, dl.left())
    elapsed = time.perf_counter() - t0
    if len(out) != p["n"] or out[-1] != p["n"] - 1:
        raise AssertionError(f"map returned {len(out)} items")
    return {"per_s": p["n"] / elapsed}


def m_map1(ex, p, dl):
    return _m_map(ex, p, dl, 1)


def m_map1000(ex, p, dl):
    return _m_map(ex, p, dl, 1000)


def _reset_peak_rss():
    """Linux: make this process's peak RSS (VmHWM) its current RSS."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss():
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # no /proc: the lifetime peak, in KiB on Linux and bytes on macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def m_array(ex, p, dl):
    """Round trips of a float64 array; also how far the client's peak RSS rises during one."""
    import statistics

    import numpy as np
    import psutil

    arr = np.arange(p["mib"] * MIB // 8, dtype=np.float64)
    ex.submit(T.ident, arr[:1000]).result(dl.left())
    ex.submit(T.ident, arr).result(dl.left())  # warm-up at full size
    times, growth = [], []
    for _ in range(p["reps"]):
        # A no-op first: an executor's I/O thread may still hold the last result's buffer (it is
        # freed as it reads the next message), and that would count in the baseline.
        ex.submit(T.noop).result(dl.left())
        _reset_peak_rss()
        before = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        back = ex.submit(T.ident, arr).result(dl.left())
        times.append(time.perf_counter() - t0)
        growth.append(_peak_rss() - before)
        if back.nbytes != arr.nbytes or back[-1] != arr[-1]:
            raise AssertionError("array came back changed")
        del back
    return {"mib_per_s": p["mib"] / statistics.median(times), "rss_x": max(growth) / arr.nbytes}


def m_fresh(ex, p, dl):
    return _submit_all(ex, p, dl, warmup=2 * WORKERS)


def m_cpu(ex, p, dl):
    ex.submit(T.noop).result(dl.left())
    t0 = time.perf_counter()
    handles = [ex.submit(T.busy, p["secs"]) for _ in range(p["n"])]
    for h in handles:
        h.result(dl.left())
    return {"wall_s": time.perf_counter() - t0, "ideal_s": p["n"] * p["secs"] / WORKERS}


# Standalone metrics get no executor: they start a broker, workers and a client of their own.


def m_scale(p, dl):
    import broker_scale

    return broker_scale.measure_workers(p["workers"], p["tasks"], T.noop, dl.left())


def m_queued(p, dl):
    import broker_scale

    return broker_scale.measure_queued(p["tasks"], fn=T.noop, seconds=dl.left())


class Metric(NamedTuple):
    fn: object  # (adapter, params, deadline) -> result dict; standalone: (params, deadline)
    runs_on: set  # peer kinds (or peer names) it runs for
    quick: dict  # parameters with --quick
    full: dict  # parameters without
    limit_quick: float  # seconds
    limit_full: float
    standalone: bool = False


# The "startup" metric is handled by the child itself (it times construction).  The dict's order is the
# order of the run: corral's broker scale first, so that a slow run spends its budget on peers' cells instead.
METRICS = {
    "scale": Metric(m_scale, {"corral"}, {"workers": [10, 100, 200], "tasks": 20_000},
                    {"workers": [10, 100, 1000], "tasks": 50_000}, 40, 90, standalone=True),
    "queued": Metric(m_queued, {"corral"}, {"tasks": 200_000}, {"tasks": 1_000_000}, 30, 120, standalone=True),
    "latency": Metric(m_latency, {"persistent"}, {"warmup": 30, "reps": 300}, {"warmup": 50, "reps": 500}, 20, 40),
    "submit": Metric(m_submit, {"persistent"}, {"n": 5000}, {"n": 20000}, 30, 120),  # dask: ~400 tasks/s
    "map1": Metric(m_map1, {"persistent"}, {"n": 3000}, {"n": 10000}, 30, 60),
    "map1000": Metric(m_map1000, {"persistent"}, {"n": 100_000}, {"n": 100_000}, 20, 40),
    "array": Metric(m_array, {"persistent"}, {"mib": 64, "reps": 2}, {"mib": 64, "reps": 5}, 30, 60),
    "fresh": Metric(m_fresh, {"fresh"}, {"n": 100}, {"n": 100}, 30, 90),
    "startup": Metric(None, {"persistent", "fresh"}, {"reps": 1}, {"reps": 3}, 20, 45),
    "cpu": Metric(m_cpu, {"persistent", "fresh"}, {"n": 8, "secs": 0.25}, {"n": 16, "secs": 0.25}, 20, 30),
}


# The fast rows swing most with where the VM puts processes (row 6's 100 fresh processes
# take a fraction of a second): once every metric has run, the budget left goes to
# running these again (each run its own process, peers interleaved), and such a cell
# reports the median of its runs.
REPEATED = ("latency", "submit", "map1", "map1000", "fresh")
EXTRA_RUNS = {"quick": 1, "full": 2}
REPEAT_CELLS_UNDER = 10.0  # seconds: a slower cell (dask's) is not run again
BUDGET_RESERVE = 15.0  # seconds of the budget that extra runs leave for writing the report


def runs(metric, peer):
    m, p = METRICS[metric], PEERS[peer]
    return (p.kind in m.runs_on or peer in m.runs_on) and metric not in p.cannot
SHUTDOWN_GRACE = 10  # seconds a child gets, past its limit, to shut its executor down


# -- the child: one (peer, metric) ----------------------------------------------------


def describe(exc, limit):
    text = str(exc) or f"no result within the {limit:.0f} s limit"
    return f"{type(exc).__name__}: {text}"[:300]


def child(peer, metric, params, limit, out_path):
    import json
    import statistics

    def emit(**record):
        with open(out_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    global T
    if os.environ.get("CBENCH_BY_REFERENCE") == "1":
        import bench as T  # see the comment at T
    dl = Deadline(limit)
    if METRICS[metric].standalone:  # it closes what it started before it returns
        try:
            emit(result=METRICS[metric].fn(params, dl))
        except BaseException as exc:  # noqa: BLE001 - reported as the cell's error
            emit(error=describe(exc, limit))
            os._exit(1)  # the parent cleans the process group
        emit(shutdown_s=0.0)
        return 0
    try:
        make = PEERS[peer].factory()  # imports the peer's module, outside any timing
        if metric == "startup":
            firsts, shutdowns = [], []
            for _ in range(params["reps"]):
                t0 = time.perf_counter()
                ex = make()
                ex.submit(T.noop).result(dl.left())
                firsts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ex.shutdown()
                shutdowns.append(time.perf_counter() - t0)
            emit(result={"first_s": statistics.median(firsts), "shutdown_s": statistics.median(shutdowns)})
            emit(shutdown_s=statistics.median(shutdowns))
            return 0
        ex = make()
    except BaseException as exc:  # noqa: BLE001 - reported as the cell's error
        emit(error=describe(exc, limit))
        os._exit(1)  # an executor may still be open; the parent cleans the process group
    try:
        result = METRICS[metric].fn(ex, params, dl)
    except BaseException as exc:  # noqa: BLE001
        emit(error=describe(exc, limit))
        ex.abandon()
        os._exit(1)  # do not wait for stuck workers; the parent cleans the process group
    emit(result=result)
    t0 = time.perf_counter()
    ex.shutdown()
    emit(shutdown_s=time.perf_counter() - t0)
    return 0


# -- the parent: run every cell, bounded, and clean up after each ------------------------


def _group_members(pgid):
    """PIDs still in process group ``pgid`` (our child's group), best effort."""
    try:
        import psutil
    except ImportError:
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    pids = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                pids.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return pids


def _kill_group(pgid):
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_cell(peer, metric, params, limit, timeout, by_reference=False):
    """Run one child; return a dict with result / error / notes."""
    import json
    import signal
    import subprocess

    # Not "corral-*": the test suite's leak check removes such directories.  The child gets
    # this directory as TMPDIR too, so corral's own corral-* directories live in it.
    with tempfile.TemporaryDirectory(prefix="cbench-") as tmp:
        out_path = os.path.join(tmp, "out.jsonl")
        err_path = os.path.join(tmp, "stderr.txt")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", peer, metric, json.dumps(params),
               str(limit), out_path]
        t0 = time.monotonic()
        with open(err_path, "wb") as err:
            env = {**os.environ, "TMPDIR": tmp, "CBENCH_BY_REFERENCE": "1" if by_reference else "0"}
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True, cwd=str(ROOT), env=env)
        cell = {"notes": []}
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            cell["notes"].append(f"killed after {timeout:.1f} s")
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        cell["elapsed_s"] = time.monotonic() - t0
        # Whatever is left in the child's group is a leak: give it 3 s, then kill it.
        end = time.monotonic() + 3
        left = _group_members(proc.pid)
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = _group_members(proc.pid)
        leaked = len(left)
        if left:
            _kill_group(proc.pid)
        records = []
        if os.path.exists(out_path):
            with open(out_path) as f:
                records = [json.loads(line) for line in f if line.strip()]
        for r in records:
            if "result" in r:
                cell["result"] = r["result"]
            if "error" in r:
                cell["error"] = r["error"]
            if "shutdown_s" in r:
                cell["shutdown_s"] = r["shutdown_s"]
        if leaked and "shutdown_s" in cell:  # after a clean shutdown, nothing should be left
            cell["notes"].append(f"{leaked} process(es) still running 3 s after a clean exit; killed")
        if "result" in cell and "shutdown_s" not in cell:
            cell["notes"].append("shutdown did not finish")
        elif cell.get("shutdown_s", 0) > 1:
            cell["notes"].append(f"shutdown took {cell['shutdown_s']:.1f} s")
        if "result" not in cell and "error" not in cell:
            cell["error"] = "timeout" if proc.returncode in (-signal.SIGKILL,) else f"exit code {proc.returncode}"
            try:
                with open(err_path, "rb") as f:
                    tail = f.read()[-400:].decode(errors="replace").strip()
            except OSError:
                tail = ""
            if tail:
                cell["notes"].append("stderr: " + tail.replace("\n", " | "))
        return cell


# -- the report ------------------------------------------------------------------------


def _median_result(runs):
    """Each numeric field's median over several runs of a cell; ``runs`` says how many."""
    import statistics

    merged = dict(runs[0])
    for field, value in runs[0].items():
        if isinstance(value, (int, float)):
            merged[field] = statistics.median(r[field] for r in runs)
    merged["runs"] = len(runs)
    return merged


def _value(results, peer, metric, field):
    value = results.get((peer, metric), {}).get("result", {}).get(field)
    return value if isinstance(value, (int, float)) else None


class Target(NamedTuple):
    """What corral should reach in a row, judged from one run's results."""

    text: str  # as the table shows it; formatted with the metric's parameters
    peer: str  # whose value is judged
    op: str  # "<=" or ">="
    limit: float
    ref_peer: str | None = None  # the value is taken as a multiple of this peer's, same field...
    ref_field: str | None = None  # ...or of this other field of the same result
    unit: str = "×"

    def judge(self, results, metric, field):
        """(measured, met), or None when a value is missing."""
        value = _value(results, self.peer, metric, field)
        if value is not None and (self.ref_peer or self.ref_field):
            ref = _value(results, self.ref_peer or self.peer, metric, self.ref_field or field)
            value = value / ref if ref else None
        if value is None:
            return None
        return value, value <= self.limit if self.op == "<=" else value >= self.limit


class Row(NamedTuple):
    label: str  # formatted with the metric's parameters
    metric: str
    field: str
    higher_better: bool
    base: str | None = BASELINE  # the row's ratios are relative to this peer's value...
    base_field: str | None = None  # ...of this field (default: the row's own)
    target: Target | None = None


def _times(op, limit, peer=BASELINE):
    """corral's value as a multiple of ``peer``'s, e.g. ``_times(">=", 3)``: at least 3× PPE fork's."""
    return Target(f"{'≤' if op == '<=' else '≥'} {limit:g}× {PEERS[peer].label}", "corral", op, limit, ref_peer=peer)


SCALE = {"base": "corral", "base_field": "per_s_w0"}
ROWS = [
    Row("1. No-op round trip, p50 (µs)", "latency", "p50_us", False, target=_times("<=", 0.8)),
    Row("1b. No-op round trip, p99 (µs)", "latency", "p99_us", False),
    Row("2. Submit {n:,} no-ops, then wait all (tasks/s)", "submit", "per_s", True,
        target=_times(">=", 3)),
    Row("3. map chunksize=1 over {n:,} (items/s)", "map1", "per_s", True, target=_times(">=", 3)),
    Row("4. map chunksize=1000 over {n:,} (items/s)", "map1000", "per_s", True,
        target=_times(">=", 1)),
    Row("5. {mib} MiB numpy array round trip (MiB/s)", "array", "mib_per_s", True,
        target=_times(">=", 5)),
    Row("5b. Client peak RSS growth during that round trip (× the array)", "array", "rss_x", False,
        target=Target("≤ 1.5× the array", "corral", "<=", 1.5)),
    Row("6. Fresh process per task, {n} no-ops (tasks/s)", "fresh", "per_s", True, base=FRESH_BASELINE,
        target=Target("≥ 2× Pool fork mtpc=1", "corral-fresh", ">=", 2, ref_peer=FRESH_BASELINE)),
    Row("7. Construction to first result (s)", "startup", "first_s", False,
        target=Target("≤ 0.25 s", "corral", "<=", 0.25, unit=" s")),
    Row("7b. Shutdown right after that (s)", "startup", "shutdown_s", False),
    Row("8. {n} × {secs} s CPU tasks on 2 workers (wall s; ideal {ideal})", "cpu", "wall_s", False,
        target=Target("≤ 1.15× the ideal", "corral", "<=", 1.15, ref_field="ideal_s")),
    Row("9. One broker, {w0:,} simulated workers: {tasks:,} no-ops (tasks/s)", "scale", "per_s_w0", True, **SCALE),
    Row("9b. One broker, {w1:,} simulated workers: {tasks:,} no-ops (tasks/s)", "scale", "per_s_w1", True, **SCALE),
    Row("9c. One broker, {w2:,} simulated workers: {tasks:,} no-ops (tasks/s)", "scale", "per_s_w2", True, **SCALE,
        target=Target("≥ 0.5× the rate with {w0}", "corral", ">=", 0.5, ref_field="per_s_w0")),
    Row("10. Broker RSS per queued no-op, {tasks:,} queued (bytes/task)", "queued", "bytes_per_task", False,
        base=None, target=Target("≤ 1,024 B", "corral", "<=", 1024, unit=" B")),
    Row("10b. The task's own payload, part of that (bytes/task)", "queued", "payload_bytes", False, base=None),
]


def fmt(v):
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(r):
    return f"{r:.1f}" if r >= 10 else f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def ratio(value, base, higher_better):
    """Speed relative to the baseline: > 1 means faster / better than it."""
    if not value or not base or fmt(value) == fmt(0):
        return None  # nothing, or too little to show (0.000): a ratio to it means nothing
    return value / base if higher_better else base / value


def label_params(params, metric):
    p = dict(params[metric])
    if metric == "cpu":
        p["ideal"] = f"{p['n'] * p['secs'] / WORKERS:g} s"
    p.update({f"w{i}": n for i, n in enumerate(p.get("workers", ()))})
    return p


def build_rows(results, peers, params):
    """[(row, label, target text, (measured, met) | None, {peer: (value, ratio, is base) | "error" | None})]"""
    rows = []
    for row in ROWS:
        base_field = row.base_field or row.field
        base = _value(results, row.base, row.metric, base_field) if row.base else None
        cells = {}
        for peer in peers:
            cell = results.get((peer, row.metric))
            value = _value(results, peer, row.metric, row.field)
            if cell is None:
                cells[peer] = None
            elif value is not None:
                is_base = peer == row.base and row.field == base_field
                cells[peer] = (value, ratio(value, base, row.higher_better), is_base)
            else:
                cells[peer] = "error"
        if any(c is not None for c in cells.values()):
            p = label_params(params, row.metric)
            target = row.target.text.format(**p) if row.target else ""
            judged = row.target.judge(results, row.metric, row.field) if row.target else None
            rows.append((row, row.label.format(**p), target, judged, cells))
    return rows


def fmt_judged(target, judged):
    if target is None:
        return ""
    if judged is None:
        return "n/a"
    value, met = judged
    shown = f"{fmt_ratio(value)}×" if target.unit == "×" else f"{fmt(value)}{target.unit}"
    return f"yes ({shown})" if met else f"**no** ({shown})"


def write_markdown(path, results, peers, params, args, wall_s, skipped, load):
    import datetime
    import platform

    rows = build_rows(results, peers, params)
    labels = [PEERS[p].label for p in peers]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        import corral

        corral_version = corral.__version__
    except ImportError:
        corral_version = "not installed"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    mem = ""
    with contextlib.suppress(ImportError):
        import psutil

        mem = f", {psutil.virtual_memory().total / (1 << 30):.0f} GiB memory"
    command = "python benchmarks/bench.py " + " ".join(args.argv)
    lines = [
        "# corral benchmarks",
        "",
        f"- Command: `{command.strip()}`",
        f"- Date: {now}",
        f"- Machine: `nproc` = {os.cpu_count()}, {cpu}{mem} ({platform.system()} {platform.release()})",
        f"- Load average when the run started: {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); corral {corral_version}",
        (f"- Mode: {'--quick' if args.quick else 'full'}; {WORKERS} workers for every executor; "
         f"whole run took {wall_s:.0f} s"),
        "- Reproduce: `python benchmarks/bench.py --quick` (or without `--quick` for the full counts)",
        ("- Task functions: " + ("imported from the module `bench` (`--by-reference`): every executor pickles "
                                 "them by reference" if args.by_reference else
                                 "defined in the script's `__main__`, as in a user's script: corral, loky and "
                                 "dask pickle them by value (cloudpickle), the stdlib pools by reference")),
        "",
        ("Numbers come from **one run** on a shared machine; absolute values move from run to run "
         "and machine to machine, so only the ratios within one run are worth comparing. Rows "
         + ", ".join(next(r.label.split(".")[0] for r in ROWS if r.metric == m) for m in REPEATED) +
         " are the median of up to "
         f"{1 + EXTRA_RUNS['quick' if args.quick else 'full']} runs of each cell (each in its own process, "
         "peers interleaved, as the time budget allows; dask's slow cells run once): these rows move most "
         "with where the machine places the processes."),
        "",
        (f"Each cell is the measured value and, in parentheses, the speed relative to "
         f"**{PEERS[BASELINE].label}** (row 6: relative to **{PEERS[FRESH_BASELINE].label}**; rows 9: relative "
         "to the same broker with the fewest workers): above 1× is faster (or smaller) than the baseline, below 1× "
         "slower, whether the row is a rate, a time or a size. Empty: not applicable to that executor. "
         "**Target** is what corral (row 6: corral fresh) should reach; **met?** judges it from this run, "
         "with the measured multiple or value in parentheses."),
        "",
    ]
    if args.quick:
        lines += [("**--quick**: most counts are smaller than in the full run, whose sizes are the ones the "
                   "targets name (the row labels give the counts used), so the met? column is indicative only; "
                   "run without `--quick` for the real check."), ""]
    lines += [
        "| Metric | Target | Met? | " + " | ".join(labels) + " |",
        "|---|---|---" + "|---:" * len(labels) + "|",
    ]
    footnotes = []
    for row, label, target, judged, cells in rows:
        out = []
        for peer in peers:
            c = cells[peer]
            if c is None:
                out.append("")
            elif c == "error":
                cell = results[(peer, row.metric)]
                text = cell.get("error", f"no {row.field} in the result")
                notes = "; ".join(cell.get("notes", []))
                if (peer, row.metric) not in [f[0] for f in footnotes]:
                    footnotes.append(((peer, row.metric), text + (f" ({notes})" if notes else "")))
                n = [f[0] for f in footnotes].index((peer, row.metric)) + 1
                short = "timeout" if text == "timeout" else "error"
                out.append(f"{short} [{n}]")
            else:
                v, r, is_base = c
                out.append(f"{fmt(v)} (base)" if is_base else f"{fmt(v)} ({fmt_ratio(r)}×)" if r else fmt(v))
        lines.append(f"| {label} | {target} | {fmt_judged(row.target, judged)} | " + " | ".join(out) + " |")
    lines.append("")
    notes = []
    for (peer, metric), cell in sorted(results.items()):
        if "result" in cell and cell.get("notes"):
            notes.append(f"- {PEERS[peer].label}, {metric}: " + "; ".join(cell["notes"]))
    if footnotes:
        lines.append("Errors:")
        lines.append("")
        for i, ((peer, metric), text) in enumerate(footnotes, 1):
            lines.append(f"{i}. {PEERS[peer].label}, {metric}: {text}")
        lines.append("")
    if notes:
        lines.append("Notes:")
        lines.append("")
        lines.extend(notes)
        lines.append("")
    if skipped:
        lines.append("Skipped: " + "; ".join(skipped))
        lines.append("")
    lines += [
        ("Metric details: 1 is one no-op submitted and awaited at a time, after a warm-up; 2 submits "
         "all no-ops first and then waits for each; 3–4 use `Executor.map` / `Pool.map` / dask's "
         "`Client.map` (dask has no chunksize, so no row 4); 5 sends a "
         "float64 array to a function that returns it (MiB/s = array size / round-trip time, median "
         "of the repetitions); 5b is the largest rise of the client process's peak RSS (VmHWM, reset before "
         "each round trip) above its RSS just before it, the array itself already allocated, so the returned "
         "copy alone makes 1×; 6 runs no-ops on executors that start a new process for every task; "
         "7 times the constructor plus the first no-op in a fresh interpreter (imports done "
         "beforehand); 8 submits busy-loops that each burn the given CPU time. "
         "9 starts `corral broker --insecure` (plain TCP; `broker_scale.py --curve` for CurveZMQ) on a "
         "tcp://127.0.0.1 port, connects simulated "
         "workers (DEALER sockets, a few hundred per process, that speak the worker protocol and echo each "
         "task's frames back as its result: no task runs), adding workers between the steps, and times a "
         "`corral.Executor(address=...)` submitting the no-ops and waiting for all. 10 starts a broker with no "
         "workers, submits no-ops in batches of 10,000 until `Executor.summary().queued` counts them all, and "
         "divides the broker process's RSS growth by their number; 10b is the pickled call each task carries "
         "(a `__main__` function travels by value). "
         "PPE = `concurrent.futures.ProcessPoolExecutor`, mtpc = max_tasks_per_child / maxtasksperchild, "
         "Pool = `multiprocessing.Pool`, loky = `loky.ProcessPoolExecutor`, dask = `distributed.Client` on a "
         "`LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`, its startup timed in row 7 only."),
        "",
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))
    return rows


def target_speed(row):
    """Where corral's bar must reach on the chart's speed axis, if its target is a multiple of the row's base."""
    t = row.target
    same_base = (t.ref_peer is not None and t.ref_peer == row.base) or (
        t.ref_field is not None and t.ref_field == row.base_field)
    return (t.limit if row.higher_better else 1 / t.limit) if same_base else None


def write_chart(path, rows, peers):
    """Bars of each row's ratios, one color per executor, with corral's target as a black diamond."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colors = {peer: plt.get_cmap("tab10")(i % 10) for i, peer in enumerate(peers)}
    rows = [r for r in rows if any(isinstance(c, tuple) and c[1] for c in r[4].values())]
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(rows) + 2))
    labelled = set()
    for j, (row, _, _, _, cells) in enumerate(rows):
        bars = [(peer, c[1]) for peer, c in cells.items() if isinstance(c, tuple) and c[1]]
        height = min(0.25, 0.8 / len(bars))
        for i, (peer, speed) in enumerate(bars):
            y = j + (i - (len(bars) - 1) / 2) * height
            ax.barh(y, speed, height=height, color=colors[peer],
                    label=None if peer in labelled else PEERS[peer].label)
            labelled.add(peer)
            if row.target and row.target.peer == peer and target_speed(row):
                ax.scatter(target_speed(row), y, marker="D", color="black", s=20, zorder=3,
                           label=None if "target" in labelled else "corral's target")
                labelled.add("target")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label.split(" (")[0] for _, label, _, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed relative to {PEERS[BASELINE].label} (row 6: {PEERS[FRESH_BASELINE].label}; rows 9: "
                  "the fewest workers); > 1 is faster or smaller")
    ax.set_title(f"corral vs process pools: one run, {WORKERS} workers")
    if labelled:
        order = [PEERS[p].label for p in peers] + ["corral's target"]
        handles = sorted(zip(*ax.get_legend_handles_labels()), key=lambda hl: order.index(hl[1]))
        ax.legend(*zip(*handles), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _shown_args(argv: list[str]) -> list[str]:
    """The arguments to print as the command: without where this run wrote its files."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--chart", "--json"):
            skip = True
        elif not arg.startswith(("--out=", "--chart=", "--json=")):
            shown.append(arg)
    return shown


def _progress(metric, peer, cell, suffix=""):
    shown = cell.get("result") or cell.get("error")
    extra = ("  [" + "; ".join(cell["notes"]) + "]") if cell["notes"] else ""
    print(f"  {metric:8} {peer:16} {cell['elapsed_s']:5.1f} s  {shown}{extra}{suffix}", flush=True)


def main(argv=None):
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts; finishes in under 2 minutes")
    ap.add_argument("--peers", help="comma-separated subset of: " + ",".join(PEERS))
    ap.add_argument("--metrics", help="comma-separated subset of: " + ",".join(METRICS))
    ap.add_argument("--budget", type=float, help="seconds for the whole run (default 115 quick, 580 full)")
    ap.add_argument("--by-reference", action="store_true",
                    help="tasks come from the importable module bench instead of __main__ (see T)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--chart", default=str(ROOT / "docs" / "benchmarks.png"))
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--child", nargs=5, metavar=("PEER", "METRIC", "PARAMS", "LIMIT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        peer, metric, params, limit, out = args.child
        return child(peer, metric, json.loads(params), float(limit), out)
    args.argv = _shown_args(sys.argv[1:] if argv is None else list(argv))

    t_start = time.monotonic()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)" if hasattr(os, "getloadavg") else "?"
    budget = args.budget or (115 if args.quick else 580)
    peers = args.peers.split(",") if args.peers else list(PEERS)
    metrics = args.metrics.split(",") if args.metrics else list(METRICS)
    for name in peers + metrics:
        if name not in PEERS and name not in METRICS:
            ap.error(f"unknown peer or metric {name!r}")
    skipped = []
    available = []
    for peer in peers:
        module = PEERS[peer].module
        if module and importlib.util.find_spec(module) is None:
            skipped.append(f"{PEERS[peer].label} ({module} is not installed)")
        else:
            available.append(peer)
    if "array" in metrics and importlib.util.find_spec("numpy") is None:
        metrics.remove("array")
        skipped.append("metric 5 (numpy is not installed)")
    params = {m: METRICS[m].quick if args.quick else METRICS[m].full for m in METRICS}

    results = {}
    print(f"{'quick' if args.quick else 'full'} run, budget {budget:.0f} s, peers: {', '.join(available)}",
          flush=True)
    for metric in metrics:
        limit = METRICS[metric].limit_quick if args.quick else METRICS[metric].limit_full
        for peer in available:
            if not runs(metric, peer):
                continue
            remaining = budget - (time.monotonic() - t_start)
            if remaining < 3:
                results[(peer, metric)] = {"error": "not run: the time budget was spent", "notes": []}
                print(f"  {metric:8} {peer:16} skipped (budget)", flush=True)
                continue
            this_limit = min(limit, max(1.0, remaining - SHUTDOWN_GRACE))
            cell = run_cell(peer, metric, params[metric], this_limit, min(this_limit + SHUTDOWN_GRACE, remaining),
                            args.by_reference)
            results[(peer, metric)] = cell
            _progress(metric, peer, cell)

    for _ in range(EXTRA_RUNS["quick" if args.quick else "full"]):
        for metric in [m for m in REPEATED if m in metrics]:
            limit = METRICS[metric].limit_quick if args.quick else METRICS[metric].limit_full
            for peer in available:
                first = results.get((peer, metric))
                if not first or "result" not in first or first["elapsed_s"] > REPEAT_CELLS_UNDER:
                    continue
                remaining = budget - (time.monotonic() - t_start) - BUDGET_RESERVE
                if remaining < first["elapsed_s"] * 2:
                    continue
                cell = run_cell(peer, metric, params[metric], min(limit, remaining), remaining, args.by_reference)
                if "result" in cell:
                    first.setdefault("runs", [first["result"]]).append(cell["result"])
                    first["notes"].extend(cell["notes"])
                _progress(metric, peer, cell, " (again)")
    for cell in results.values():
        if len(cell.get("runs", ())) > 1:
            cell["result"] = _median_result(cell["runs"])

    wall_s = time.monotonic() - t_start
    shown_peers = [p for p in available if any(k[0] == p for k in results)]
    rows = write_markdown(args.out, results, shown_peers, params, args, wall_s, skipped, load)
    print(f"wrote {args.out}")
    if write_chart(args.chart, rows, shown_peers):
        print(f"wrote {args.chart}")
    else:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
    if args.json:
        raw = [{"peer": p, "metric": m, **c} for (p, m), c in results.items()]
        Path(args.json).write_text(json.dumps({"params": params, "results": raw}, indent=1))
    print(Path(args.out).read_text())
    print(f"total wall time {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
