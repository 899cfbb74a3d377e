"""Benchmark corral against the stdlib process pools and loky, side by side in one run.

    python benchmarks/bench.py --quick      # under 2 minutes
    python benchmarks/bench.py              # full counts, under ~8 minutes

Every (executor, metric) pair runs in its own child interpreter (this file with
``--child``), in its own process group, under a wall-clock limit: a hang or a
crash costs that one cell ("timeout" / "error") and the run goes on.  After
each child the whole process group is checked, and anything left in it (a
leaked worker) is killed and reported.  Results go to ``docs/benchmarks.md``
and, when matplotlib is importable, ``docs/benchmarks.png``.

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
    import corral

    return lambda: ExecutorAdapter(corral.Executor(WORKERS, fresh=fresh))


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


# name -> (column label, module that must be importable, factory-of-factory, kind)
# kind "persistent": workers are reused; "fresh": a new process per task.
PEERS = {
    "corral": ("corral", "corral", lambda: _make_corral(False), "persistent"),
    "corral-fresh": ("corral fresh", "corral", lambda: _make_corral(True), "fresh"),
    "ppe-fork": ("PPE fork", None, lambda: _make_ppe("fork"), "persistent"),
    "ppe-spawn": ("PPE spawn", None, lambda: _make_ppe("spawn"), "persistent"),
    "ppe-spawn-mtpc1": ("PPE spawn mtpc=1", None, lambda: _make_ppe("spawn", 1), "fresh"),
    "pool": ("Pool fork", None, lambda: _make_pool(), "persistent"),
    "pool-mtpc1": ("Pool fork mtpc=1", None, lambda: _make_pool(1), "fresh"),
    "loky": ("loky", "loky", lambda: _make_loky(), "persistent"),
}
BASELINE = "ppe-fork"
FRESH_BASELINE = "ppe-spawn-mtpc1"  # the stdlib's own process-per-task executor


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
    """Submit p["n"] no-ops at once, then wait for all of them."""
    for _ in range(warmup):
        ex.submit(T.noop).result(dl.left())
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


def m_array(ex, p, dl):
    import statistics

    import numpy as np

    arr = np.arange(p["mib"] * MIB // 8, dtype=np.float64)
    ex.submit(T.ident, arr[:1000]).result(dl.left())
    ex.submit(T.ident, arr).result(dl.left())  # warm-up at full size
    times = []
    for _ in range(p["reps"]):
        t0 = time.perf_counter()
        back = ex.submit(T.ident, arr).result(dl.left())
        times.append(time.perf_counter() - t0)
        if back.nbytes != arr.nbytes or back[-1] != arr[-1]:
            raise AssertionError("array came back changed")
        del back
    return {"mib_per_s": p["mib"] / statistics.median(times)}


def m_fresh(ex, p, dl):
    return _submit_all(ex, p, dl, warmup=1)


def m_cpu(ex, p, dl):
    ex.submit(T.noop).result(dl.left())
    t0 = time.perf_counter()
    handles = [ex.submit(T.busy, p["secs"]) for _ in range(p["n"])]
    for h in handles:
        h.result(dl.left())
    return {"wall_s": time.perf_counter() - t0, "ideal_s": p["n"] * p["secs"] / WORKERS}


# name -> (function, peer kinds it runs for, parameters quick, parameters full, limit quick, limit full)
# The "startup" metric is handled by the child itself (it times construction).
METRICS = {
    "latency": (m_latency, {"persistent"}, {"warmup": 30, "reps": 300}, {"warmup": 50, "reps": 500}, 20, 40),
    "submit": (m_submit, {"persistent"}, {"n": 5000}, {"n": 20000}, 30, 60),
    "map1": (m_map1, {"persistent"}, {"n": 3000}, {"n": 10000}, 30, 60),
    "map1000": (m_map1000, {"persistent"}, {"n": 100_000}, {"n": 100_000}, 20, 40),
    "array": (m_array, {"persistent"}, {"mib": 64, "reps": 2}, {"mib": 64, "reps": 5}, 30, 60),
    "fresh": (m_fresh, {"fresh"}, {"n": 20}, {"n": 100}, 30, 90),
    "startup": (None, {"persistent", "fresh"}, {"reps": 1}, {"reps": 3}, 20, 45),
    "cpu": (m_cpu, {"persistent", "fresh"}, {"n": 8, "secs": 0.25}, {"n": 16, "secs": 0.25}, 20, 30),
}
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
    try:
        make = PEERS[peer][2]()  # imports the peer's module, outside any timing
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
        result = METRICS[metric][0](ex, params, dl)
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

# row key -> (label template, metric, result field, higher is better, unit format)
ROWS = [
    ("lat50", "1. No-op round trip, p50 (µs)", "latency", "p50_us", False),
    ("lat99", "1b. No-op round trip, p99 (µs)", "latency", "p99_us", False),
    ("submit", "2. Submit {n:,} no-ops, then wait all (tasks/s)", "submit", "per_s", True),
    ("map1", "3. map chunksize=1 over {n:,} (items/s)", "map1", "per_s", True),
    ("map1000", "4. map chunksize=1000 over {n:,} (items/s)", "map1000", "per_s", True),
    ("array", "5. {mib} MiB numpy array round trip (MiB/s)", "array", "mib_per_s", True),
    ("fresh", "6. Fresh process per task, {n} no-ops (tasks/s)", "fresh", "per_s", True),
    ("first", "7. Construction to first result (s)", "startup", "first_s", False),
    ("shut", "7b. Shutdown right after that (s)", "startup", "shutdown_s", False),
    ("cpu", "8. {n} × {secs} s CPU tasks on 2 workers (wall s; ideal {ideal})", "cpu", "wall_s", False),
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
    if not value or not base:
        return None
    return value / base if higher_better else base / value


def build_rows(results, peers, params):
    """[(label, metric, {peer: (value, ratio) | "error" | None}), ...]"""
    rows = []
    for _key, label, metric, field, higher in ROWS:
        p = dict(params[metric])
        if metric == "cpu":
            p["ideal"] = f"{p['n'] * p['secs'] / WORKERS:g} s"
        base_peer = FRESH_BASELINE if metric == "fresh" else BASELINE
        base_cell = results.get((base_peer, metric), {})
        base = base_cell.get("result", {}).get(field)
        cells = {}
        for peer in peers:
            cell = results.get((peer, metric))
            if cell is None:
                cells[peer] = None
            elif "result" in cell and field in cell["result"]:
                v = cell["result"][field]
                cells[peer] = (v, ratio(v, base, higher), peer == base_peer)
            else:
                cells[peer] = "error"
        if any(c is not None for c in cells.values()):
            rows.append((label.format(**p), metric, cells))
    return rows


def write_markdown(path, results, peers, params, args, wall_s, skipped, load):
    import datetime
    import platform

    rows = build_rows(results, peers, params)
    labels = [PEERS[p][0] for p in peers]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        import corral

        corral_version = corral.__version__
    except ImportError:
        corral_version = "not installed"
    lines = [
        "# corral benchmarks",
        "",
        f"- Date: {now}",
        f"- Machine: `nproc` = {os.cpu_count()} ({platform.machine()}, {platform.system()} {platform.release()})",
        f"- Load average when the run started: {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); corral {corral_version}",
        (f"- Mode: {'--quick' if args.quick else 'full'}; {WORKERS} workers for every executor; "
         f"whole run took {wall_s:.0f} s"),
        "- Reproduce: `python benchmarks/bench.py --quick` (or without `--quick` for the full counts)",
        ("- Task functions: " + ("imported from the module `bench` (`--by-reference`): every executor pickles "
                                 "them by reference" if args.by_reference else
                                 "defined in the script's `__main__`, as in a user's script: corral and loky "
                                 "pickle them by value (cloudpickle), the stdlib pools by reference")),
        "",
        ("Numbers come from **one run** on a shared machine; absolute values move from run to run "
         "and machine to machine, so only the ratios within one run are worth comparing."),
        "",
        (f"Each cell is the measured value and, in parentheses, the speed relative to "
         f"**{PEERS[BASELINE][0]}** (row 6: relative to **{PEERS[FRESH_BASELINE][0]}**, the stdlib's "
         "process-per-task executor): above 1× is faster than the baseline, below 1× slower, "
         "whether the row is a rate or a time. Empty: not applicable to that executor."),
        "",
        "| Metric | " + " | ".join(labels) + " |",
        "|---" + "|---:" * len(labels) + "|",
    ]
    footnotes = []
    for label, metric, cells in rows:
        out = []
        for peer in peers:
            c = cells[peer]
            if c is None:
                out.append("")
            elif c == "error":
                cell = results[(peer, metric)]
                text = cell.get("error", "error")
                notes = "; ".join(cell.get("notes", []))
                if (peer, metric) not in [f[0] for f in footnotes]:
                    footnotes.append(((peer, metric), text + (f" ({notes})" if notes else "")))
                n = [f[0] for f in footnotes].index((peer, metric)) + 1
                short = "timeout" if text == "timeout" else "error"
                out.append(f"{short} [{n}]")
            else:
                v, r, is_base = c
                out.append(f"{fmt(v)} (base)" if is_base else f"{fmt(v)} ({fmt_ratio(r)}×)" if r else fmt(v))
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    lines.append("")
    notes = []
    for (peer, metric), cell in sorted(results.items()):
        if "result" in cell and cell.get("notes"):
            notes.append(f"- {PEERS[peer][0]}, {metric}: " + "; ".join(cell["notes"]))
    if footnotes:
        lines.append("Errors:")
        lines.append("")
        for i, ((peer, metric), text) in enumerate(footnotes, 1):
            lines.append(f"{i}. {PEERS[peer][0]}, {metric}: {text}")
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
         "all no-ops first and then waits for each; 3–4 use `Executor.map` / `Pool.map`; 5 sends a "
         "float64 array to a function that returns it (MiB/s = array size / round-trip time, median "
         "of the repetitions); 6 runs no-ops on executors that start a new process for every task; "
         "7 times the constructor plus the first no-op in a fresh interpreter (imports done "
         "beforehand); 8 submits busy-loops that each burn the given CPU time. PPE = "
         "`concurrent.futures.ProcessPoolExecutor`, mtpc = max_tasks_per_child / maxtasksperchild, "
         "Pool = `multiprocessing.Pool`, loky = `loky.ProcessPoolExecutor`."),
        "",
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))
    return rows


def write_chart(path, rows, peers):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [label.split(" (")[0] for label, _, _ in rows]
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(rows) + 2))
    height = 0.8 / max(1, len(peers))
    drawn = False
    for i, peer in enumerate(peers):
        ys, xs = [], []
        for j, (_, _, cells) in enumerate(rows):
            c = cells[peer]
            if isinstance(c, tuple) and c[1]:
                ys.append(j + (i - (len(peers) - 1) / 2) * height)
                xs.append(c[1])
        if xs:
            ax.barh(ys, xs, height=height, label=PEERS[peer][0])
            drawn = True
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed relative to {PEERS[BASELINE][0]} (row 6: {PEERS[FRESH_BASELINE][0]}); > 1 is faster")
    ax.set_title("corral vs process pools: one run, 2 workers")
    if drawn:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts; finishes in under 2 minutes")
    ap.add_argument("--peers", help="comma-separated subset of: " + ",".join(PEERS))
    ap.add_argument("--metrics", help="comma-separated subset of: " + ",".join(METRICS))
    ap.add_argument("--budget", type=float, help="seconds for the whole run (default 112 quick, 470 full)")
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

    t_start = time.monotonic()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)" if hasattr(os, "getloadavg") else "?"
    budget = args.budget or (112 if args.quick else 470)
    peers = args.peers.split(",") if args.peers else list(PEERS)
    metrics = args.metrics.split(",") if args.metrics else list(METRICS)
    for name in peers + metrics:
        if name not in PEERS and name not in METRICS:
            ap.error(f"unknown peer or metric {name!r}")
    skipped = []
    available = []
    for peer in peers:
        module = PEERS[peer][1]
        if module and importlib.util.find_spec(module) is None:
            skipped.append(f"{PEERS[peer][0]} ({module} is not installed)")
        else:
            available.append(peer)
    if "array" in metrics and importlib.util.find_spec("numpy") is None:
        metrics.remove("array")
        skipped.append("metric 5 (numpy is not installed)")
    params = {m: METRICS[m][2 if args.quick else 3] for m in METRICS}

    results = {}
    print(f"{'quick' if args.quick else 'full'} run, budget {budget:.0f} s, peers: {', '.join(available)}",
          flush=True)
    for metric in metrics:
        kinds, limit = METRICS[metric][1], METRICS[metric][4 if args.quick else 5]
        for peer in available:
            if PEERS[peer][3] not in kinds:
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
            shown = cell.get("result") or cell.get("error")
            extra = ("  [" + "; ".join(cell["notes"]) + "]") if cell["notes"] else ""
            print(f"  {metric:8} {peer:16} {cell['elapsed_s']:5.1f} s  {shown}{extra}", flush=True)

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
