"""corral's TCP path (standalone broker), CurveZMQ on and off, beside its floor and other frameworks.

    python benchmarks/tcp_path.py [--quick] [--rows corral-curve,ppe,...] [--profile FILE]

Everything in one run, on tcp://127.0.0.1, two worker processes for every peer,
each row in a child process of its own (its own process group, under a time
limit; whatever a row leaves behind is killed after it).  A row starts what it
needs and tears it down before the next one:

- ``floor-plain``, ``floor-curve``: raw pyzmq with the same three processes
  (``tcp_floor.measure``: client DEALER -> broker ROUTER -> worker DEALER that
  echoes), and a 64 MiB payload over one connection with no broker
  (``tcp_floor.measure_direct``).  Their "submit" cell is ``tcp_floor``'s
  pipelined echo rate (1,000 messages in flight), not tasks.
- ``corral-curve``, ``corral-plain``: ``corral broker --listen tcp://...``
  (CurveZMQ with the keys it makes under a temporary ``CORRAL_HOME``, or
  ``--insecure``), ``corral worker ... --processes 2``, and
  ``corral.Executor(address=...)`` (the connection file, or the tcp:// address
  with ``insecure=True``).
- ``ppe``: ``ProcessPoolExecutor(2)`` (fork), the throughput reference.
- ``dask``: ``distributed.Client`` on ``LocalCluster(n_workers=2,
  threads_per_worker=1, processes=True)``.
- ``ray``: ``ray.init(num_cpus=2)``, a ``@ray.remote`` no-op.
- ``ipyparallel``: ``ipp.Cluster(n=2)``, a load-balanced view.
- ``parsl``: a ``HighThroughputExecutor`` on 127.0.0.1 with 2 workers (one
  block of ``LocalProvider``), ``@python_app`` functions.
- ``scale``: one CurveZMQ broker with 10, then 1,000 simulated workers, each
  with a key of its own (``broker_scale.measure_workers(curve=True)``).

Measures: a no-op round trip (``submit(noop).result()`` one at a time, after a
warm-up; p50 and p99); N no-ops submitted at once, then waited for; ``map(ident,
range(N), chunksize=1)`` (dask: ``Client.map``; ipyparallel:
``LoadBalancedView.map(chunksize=1)``; Ray and Parsl have no map); a 64 MiB
float64 array there and back (MiB/s, median).  A peer that cannot be imported
or started gets a row that says why.  Then the targets of corral's TCP path,
each judged from this run as a ratio.  ``--profile FILE`` runs the
``corral-curve`` row's broker under cProfile (its stats go to FILE), measures
only that row's round trip, and prints the broker's top functions; its numbers
are then not comparable.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import MIB, WORKERS, Deadline  # Deadline.left(): seconds left, or TimeoutError
from bench import Handle as Wrap  # an object with .result(timeout), from any callable taking one

HERE = Path(__file__).resolve().parent


# Defined here, in the script run as __main__, so that every peer sends them by value: standalone
# corral workers and the other frameworks' workers cannot import this file.
def noop():
    return None


def ident(x):
    return x


# -- what a row measures, through an adapter with submit(fn, *args) -> .result(timeout) ----------


def m_latency(ex, p, dl):
    import statistics

    for _ in range(p["warmup"]):
        ex.submit(noop).result(dl.left())
    samples = []
    for _ in range(p["reps"]):
        t0 = time.perf_counter()
        ex.submit(noop).result(dl.left())
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {"p50_us": statistics.median(samples) * 1e6, "p99_us": samples[int(len(samples) * 0.99)] * 1e6}


def m_submit(ex, p, dl):
    for f in [ex.submit(noop) for _ in range(20)]:
        f.result(dl.left())
    t0 = time.perf_counter()
    futures = [ex.submit(noop) for _ in range(p["n"])]
    for f in futures:
        f.result(dl.left())
    return {"submit_per_s": p["n"] / (time.perf_counter() - t0)}


def m_map(ex, p, dl):
    if not hasattr(ex, "map1"):
        return {}
    ex.map1(ident, range(100), dl.left())
    t0 = time.perf_counter()
    out = ex.map1(ident, range(p["n"]), dl.left())
    elapsed = time.perf_counter() - t0
    if len(out) != p["n"] or out[-1] != p["n"] - 1:
        raise AssertionError(f"map returned {len(out)} items")
    return {"map_per_s": p["n"] / elapsed}


def m_array(ex, p, dl):
    import statistics

    import numpy as np

    arr = np.arange(64 * MIB // 8, dtype=np.float64)
    ex.submit(ident, arr).result(dl.left())  # warm-up at full size
    times = []
    for _ in range(p["array_reps"]):
        t0 = time.perf_counter()
        back = ex.submit(ident, arr).result(dl.left())
        times.append(time.perf_counter() - t0)
        if back.nbytes != arr.nbytes or back[-1] != arr[-1]:
            raise AssertionError("the array came back changed")
        del back
    return {"mib_s": 64 / statistics.median(times)}


MEASURES = (m_latency, m_submit, m_map, m_array)


# -- peers ------------------------------------------------------------------------------------


class FuturesPeer:
    """A concurrent.futures.Executor."""

    def __init__(self, ex):
        self.ex = ex

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def map1(self, fn, items, timeout):
        return list(self.ex.map(fn, items, chunksize=1, timeout=timeout))

    def close(self):
        self.ex.shutdown(wait=True)


class CorralPeer(FuturesPeer):
    """corral broker + corral worker --processes 2 + Executor(address=...), all on tcp://127.0.0.1."""

    def __init__(self, curve, profile=None):
        import broker_scale

        self.stack = contextlib.ExitStack()
        try:
            home = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="cbench-home-"))
            key_dir = os.path.join(home, f"broker-{os.getpid()}")
            broker = self.stack.enter_context(broker_scale.broker_process(curve, key_dir, profile=profile))
            self.broker = broker
            cmd = [sys.executable, "-m", "corral.cli", "worker", broker.address, "--processes", str(WORKERS)]
            worker = subprocess.Popen(cmd + ([] if curve else ["--insecure"]), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=broker_scale.corral_env(CORRAL_HOME=home))
            self.stack.callback(_stop, worker)
            ex = self.stack.enter_context(broker_scale.executor(broker.address, curve))
            super().__init__(ex)
            end = time.monotonic() + 60
            while len(ex.summary(30)) < WORKERS:
                if time.monotonic() > end or worker.poll() is not None:
                    raise RuntimeError("the corral worker did not join the broker")
                time.sleep(0.05)
        except BaseException:
            self.stack.close()
            raise

    def close(self):
        self.stack.close()  # the executor, then the worker, then the broker


def _stop(proc, grace=10):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DaskPeer:
    def __init__(self):
        import logging
        import warnings

        from distributed import Client, LocalCluster

        warnings.filterwarnings("ignore", message=".*large graph.*")
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def map1(self, fn, items, timeout):
        from distributed import wait

        futures = self.client.map(fn, items, pure=False)
        wait(futures, timeout)
        return self.client.gather(futures)

    def close(self):
        self.client.close()
        self.cluster.close()


class RayPeer:
    def __init__(self):
        import logging

        import ray

        self.ray = ray
        ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        self.remote = {fn: ray.remote(fn) for fn in (noop, ident)}

    def submit(self, fn, *args):
        ref = self.remote[fn].remote(*args)
        return Wrap(lambda timeout: self.ray.get(ref, timeout=timeout))

    def close(self):
        self.ray.shutdown()


class IpyparallelPeer:
    def __init__(self):
        import ipyparallel as ipp

        self.cluster = ipp.Cluster(n=WORKERS, log_level=40)
        self.rc = self.cluster.start_and_connect_sync(activate=False)
        self.rc.wait_for_engines(WORKERS, timeout=60)
        self.view = self.rc.load_balanced_view()

    def submit(self, fn, *args):
        return Wrap(self.view.apply_async(fn, *args).get)

    def map1(self, fn, items, timeout):
        return self.view.map_async(fn, items, chunksize=1).get(timeout)

    def close(self):
        self.rc.close()
        self.cluster.stop_cluster_sync()


class ParslPeer:
    def __init__(self):
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        # HTEX starts its interchange and worker pool as scripts on PATH: those next to this interpreter.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        self.parsl = parsl
        self.run_dir = tempfile.mkdtemp(prefix="cbench-parsl-")
        htex = HighThroughputExecutor(label="htex", address="127.0.0.1", max_workers_per_node=WORKERS,
                                      provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
        self.dfk = parsl.load(Config(executors=[htex], run_dir=self.run_dir, strategy="none",
                                     initialize_logging=False))
        self.apps = {fn: parsl.python_app(fn, executors=["htex"]) for fn in (noop, ident)}

    def submit(self, fn, *args):
        return self.apps[fn](*args)

    def close(self):
        import shutil

        self.dfk.cleanup()
        self.parsl.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _ppe():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return FuturesPeer(ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork")))


# name: (label, module that must import, factory, seconds allowed (full, quick))
PEERS = {
    "corral-curve": ("corral TCP, CurveZMQ", "corral", lambda: CorralPeer(True), (240, 90)),
    "corral-plain": ("corral TCP, plain", "corral", lambda: CorralPeer(False), (240, 90)),
    "ppe": ("ProcessPoolExecutor(2) fork", None, _ppe, (240, 90)),
    "dask": ("dask.distributed", "distributed", DaskPeer, (400, 150)),
    "ray": ("Ray", "ray", RayPeer, (400, 150)),
    "ipyparallel": ("ipyparallel", "ipyparallel", IpyparallelPeer, (400, 150)),
    "parsl": ("Parsl HTEX", "parsl", ParslPeer, (400, 150)),
}
FLOORS = {
    "floor-plain": ("raw pyzmq floor, plain", False, (120, 60)),
    "floor-curve": ("raw pyzmq floor, CurveZMQ", True, (120, 60)),
}
SCALE = ("scale", (400, 150))
ORDER = ["floor-plain", "floor-curve", "corral-curve", "corral-plain", "ppe", "dask", "ray", "ipyparallel",
         "parsl", "scale"]
PARAMS = {
    "full": {"warmup": 50, "reps": 500, "n": 20_000, "array_reps": 5, "floor": (2_000, 20_000, 5),
             "scale_counts": [10, 1000], "scale_tasks": 50_000},
    "quick": {"warmup": 30, "reps": 300, "n": 5_000, "array_reps": 2, "floor": (500, 5_000, 2),
              "scale_counts": [10, 1000], "scale_tasks": 10_000},
}


# -- the child: one row ----------------------------------------------------------------------


def child(row, params, limit, profile):
    dl = Deadline(limit)
    if row in FLOORS:
        import zmq

        import tcp_floor

        curve = None
        if FLOORS[row][1]:
            curve = {role: zmq.curve_keypair() for role in ("server", "client", "worker")}
        r = tcp_floor.measure(curve, *params["floor"])
        one = tcp_floor.measure_direct(curve, params["floor"][2])
        return {"p50_us": r["p50_us"], "p99_us": r["p99_us"], "pipelined_per_s": r["per_s"],
                "mib_s": r["mib_s"], "mib_s_one": one["mib_s"]}
    if row == "scale":
        import broker_scale

        return broker_scale.measure_workers(params["scale_counts"], params["scale_tasks"], noop, dl.left(),
                                            curve=True)
    label, module, factory, _ = PEERS[row]
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with contextlib.suppress(ImportError):
        import corral

        warnings.filterwarnings("ignore", category=corral.SecurityWarning)
    try:
        if module:
            __import__(module)
    except Exception as exc:  # noqa: BLE001 - the row says why
        return {"skipped": f"cannot import {module}: {type(exc).__name__}: {exc}"[:200]}
    started = time.perf_counter()
    try:
        peer = CorralPeer(True, profile) if (row == "corral-curve" and profile) else factory()
    except Exception as exc:  # noqa: BLE001
        return {"skipped": f"cannot start: {type(exc).__name__}: {exc}"[:300]}
    out = {"start_s": time.perf_counter() - started}
    try:
        for measure in (m_latency,) if (row == "corral-curve" and profile) else MEASURES:
            try:
                out.update(measure(peer, params, dl))
            except Exception as exc:  # noqa: BLE001 - that cell's error; the row goes on
                out.setdefault("errors", []).append(f"{measure.__name__[2:]}: {type(exc).__name__}: {exc}"[:200])
                if isinstance(exc, TimeoutError):
                    break
    finally:
        peer.close()
    return out


# -- the parent ------------------------------------------------------------------------------


def run_row(row, params, limit, profile):
    """One row in a child of its own session; kill whatever is left of its process group."""
    import signal

    with tempfile.TemporaryDirectory(prefix="cbench-") as tmp:
        out = os.path.join(tmp, "out.json")
        err = os.path.join(tmp, "stderr.txt")
        cmd = [sys.executable, __file__, "--child", row, json.dumps(params), str(limit), out, profile or ""]
        with open(err, "wb") as f:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True,
                                    env={**os.environ, "TMPDIR": tmp})
        try:
            proc.wait(limit + 30)
            note = None
        except subprocess.TimeoutExpired:
            note = f"killed after {limit + 30} s"
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the row (or the row itself, if it hung)
        proc.wait()
        try:
            with open(out) as f:
                result = json.load(f)
        except (OSError, ValueError):
            with open(err, errors="replace") as f:
                tail = f.read()[-400:].strip().replace("\n", " / ")
            result = {"skipped": note or f"the row failed (exit {proc.returncode}): {tail}"}
        if note:
            result.setdefault("errors", []).append(note)
        return result


def fmt(value, digits=0):
    return "" if value is None else f"{value:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or not b else a / b


def report(results, params, quick):
    n = params["n"]
    print(f"\n| row | start (s) | round trip p50 (µs) | p99 (µs) | submit {n:,} no-ops (tasks/s) "
          f"| map chunksize=1, {n:,} (items/s) | 64 MiB array there and back (MiB/s) | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    notes = []
    for row in ORDER:
        if row == "scale" or row not in results:
            continue
        r = results[row]
        label = FLOORS[row][0] if row in FLOORS else PEERS[row][0]
        note = "; ".join(([r["skipped"]] if "skipped" in r else []) + r.get("errors", []))
        if row in FLOORS:
            note = (f"submit cell: echo messages/s, {1000:,} in flight; 64 MiB over one connection, no broker: "
                    f"{fmt(r.get('mib_s_one'))} MiB/s")
            cells = [None, r.get("p50_us"), r.get("p99_us"), r.get("pipelined_per_s"), None, r.get("mib_s")]
        else:
            if row in ("ray", "parsl") and "skipped" not in r:
                note = "; ".join(filter(None, [note, "no map"]))
            cells = [r.get("start_s"), r.get("p50_us"), r.get("p99_us"), r.get("submit_per_s"), r.get("map_per_s"),
                     r.get("mib_s")]
        text = [fmt(cells[0], 2)] + [fmt(c) for c in cells[1:]]
        print(f"| {label} | " + " | ".join(text) + f" | {note} |")
        notes.append(note)
    s = results.get("scale")
    if s:
        if "per_s_w1" in s:
            w = s["workers"]
            print(f"\nOne CurveZMQ broker, simulated workers (a key each), {s['tasks']:,} no-ops: "
                  f"{w[0]:,} workers {s['per_s_w0']:,.0f} tasks/s, {w[1]:,} workers {s['per_s_w1']:,.0f} tasks/s "
                  f"({s['keys_s']:.1f} s to add {w[-1]:,} worker keys)")
        else:
            print(f"\nscale: {s.get('skipped') or s}")
    print("\nTargets (corral's TCP path, CurveZMQ unless named; every ratio from this run):")
    g = {row: results.get(row, {}) for row in ORDER}
    cc, cp, fc, fp, ppe = g["corral-curve"], g["corral-plain"], g["floor-curve"], g["floor-plain"], g["ppe"]
    checks = [
        ("no-op round trip p50 <= 1.5x the raw three-process CurveZMQ floor", ratio(cc.get("p50_us"), fc.get("p50_us")),
         lambda x: x <= 1.5, "x the floor's time"),
        ("submit 20,000 no-ops >= 2.5x ProcessPoolExecutor", ratio(cc.get("submit_per_s"), ppe.get("submit_per_s")),
         lambda x: x >= 2.5, "x PPE's rate"),
        ("map(chunksize=1) >= 2.5x ProcessPoolExecutor", ratio(cc.get("map_per_s"), ppe.get("map_per_s")),
         lambda x: x >= 2.5, "x PPE's rate"),
        ("64 MiB array >= 1.5x the raw single-connection CurveZMQ floor", ratio(cc.get("mib_s"), fc.get("mib_s_one")),
         lambda x: x >= 1.5, "x"),
        ("  (the same against the three-process CurveZMQ floor, for reference)",
         ratio(cc.get("mib_s"), fc.get("mib_s")), None, "x"),
        ("64 MiB array, plain >= the raw single-connection plain floor", ratio(cp.get("mib_s"), fp.get("mib_s_one")),
         lambda x: x >= 1.0, "x"),
        ("  (the same against the three-process plain floor, for reference)", ratio(cp.get("mib_s"), fp.get("mib_s")),
         None, "x"),
        ("CurveZMQ costs <= 15% on no-op throughput: submit, CurveZMQ / plain >= 0.85",
         ratio(cc.get("submit_per_s"), cp.get("submit_per_s")), lambda x: x >= 0.85, "x"),
        ("CurveZMQ costs <= 15% on no-op throughput: map, CurveZMQ / plain >= 0.85",
         ratio(cc.get("map_per_s"), cp.get("map_per_s")), lambda x: x >= 0.85, "x"),
        ("1,000 simulated CurveZMQ workers >= 0.5x the rate with 10", ratio(s.get("per_s_w1"), s.get("per_s_w0"))
         if s else None, lambda x: x >= 0.5, "x"),
    ]
    for text, value, test, unit in checks:
        verdict = "" if test is None else ("n/a" if value is None else ("met" if test(value) else "MISSED"))
        shown = "no figure" if value is None else f"{value:.2f}{unit}"
        print(f"- {text}: {shown}{'' if test is None else ' -> ' + verdict}")
    if quick:
        print("(--quick: smaller counts than the targets name; indicative only)")


def print_profile(path, top=25):
    import io
    import pstats

    if not os.path.exists(path):
        print(f"\nno profile at {path}")
        return
    buf = io.StringIO()
    stats = pstats.Stats(path, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    print(f"\nThe corral-curve row's broker under cProfile ({path}), by own time:")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:6000])


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    ap.add_argument("--rows", default=",".join(ORDER), help=f"comma-separated, of {','.join(ORDER)}")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the corral-curve row's broker under cProfile, for its round trip only")
    args = ap.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ORDER)
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    mode = "quick" if args.quick else "full"
    params = PARAMS[mode]
    profile = os.path.abspath(args.profile) if args.profile else None
    import platform

    import zmq

    with open("/proc/loadavg") as f:
        load = " / ".join(f.read().split()[:3])
    print(f"corral TCP path benchmark ({mode}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}; pyzmq {zmq.pyzmq_version()}, "
          f"libzmq {zmq.zmq_version()}; load average {load}")
    results = {}
    t0 = time.monotonic()
    for row in ORDER:
        if row not in rows:
            continue
        limit = (FLOORS[row][2] if row in FLOORS else SCALE[1] if row == "scale" else PEERS[row][3])
        limit = limit[1] if args.quick else limit[0]
        t = time.monotonic()
        results[row] = run_row(row, params, limit, profile)
        print(f"  {row}: {time.monotonic() - t:.0f} s {json.dumps(results[row])}", flush=True)
    print(f"whole run: {time.monotonic() - t0:.0f} s")
    report(results, params, args.quick)
    if profile and "corral-curve" in rows:
        print_profile(profile)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        row, params, limit, out, profile = sys.argv[2:7]
        sys.path.insert(0, str(HERE))
        result = child(row, json.loads(params), float(limit), profile or None)
        with open(out, "w") as f:
            json.dump(result, f)
        sys.exit(0)
    sys.exit(main())
