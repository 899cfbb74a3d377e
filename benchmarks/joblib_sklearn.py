"""joblib's backends timed: loky (joblib's default) beside corral's, on scikit-learn and on tiny calls.

    python benchmarks/joblib_sklearn.py [--n-jobs 2] [--cold 2] [--rounds 5] [--tiny 10000] [--tiny-rounds 11] [--json]

Two workloads, each run by both backends with the same ``n_jobs``, the backends taking
turns round after round (which one goes first alternates), in one process:

- a grid search: ``GridSearchCV(SVC(), {C: 3 values, gamma: 3 values}, cv=5)`` on the
  digits data set (45 fits of about a tenth of a second, and the refit), as scikit-learn runs it under
  ``joblib.parallel_config(backend=...)``; the results of the two backends are checked equal;
- tiny calls: ``joblib.Parallel()(delayed(noop)(i) for i in range(tiny))`` with joblib's
  automatic batching.

Cold rounds start each backend's workers anew (loky's reusable executor and corral's kept
executor are shut down before each): the time of a program's first call.  Warm rounds
run on the workers kept from the call before.  The table gives medians, and the best warm
time.  One process running the same work without a backend
(``n_jobs=1``) is timed once for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import joblib
from joblib import Parallel, delayed

import corral.joblib

GRID = {"C": [1, 10, 100], "gamma": [5e-4, 1e-3, "scale"]}


def noop(i):
    return i


def grid_search(n_jobs: int | None):
    """One grid search; its scores, to compare backends."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    search = GridSearchCV(SVC(), GRID, cv=5, n_jobs=n_jobs).fit(X, y)
    return search.best_params_, search.cv_results_["mean_test_score"].tolist()


def tiny(n: int) -> list:
    return Parallel()(delayed(noop)(i) for i in range(n))


def timed(backend: str | None, n_jobs: int, work):
    started = time.perf_counter()
    if backend is None:
        with joblib.parallel_config(n_jobs=1):
            result = work()
    else:
        with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
            result = work()
    return time.perf_counter() - started, result


def stop_pools() -> None:
    """Stop both backends' kept workers: the next call of each starts cold."""
    corral.joblib.shutdown()
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def compare(name: str, work, n_jobs: int, cold: int, warm: int, backends=("loky", "corral")) -> dict:
    """``cold`` rounds of ``work`` by each backend with its workers stopped before each, then
    ``warm`` rounds on the workers kept, the backends taking turns; seconds per backend and round."""
    times: dict[str, dict[str, list[float]]] = {b: {"cold": [], "warm": []} for b in backends}
    results = {}
    for r in range(cold + warm):
        kind = "cold" if r < cold else "warm"
        order = backends if r % 2 == 0 else tuple(reversed(backends))
        for backend in order:
            if kind == "cold":
                stop_pools()
            seconds, results[backend] = timed(backend, n_jobs, work)
            times[backend][kind].append(seconds)
            print(f"  {name:5} {kind} {r + 1:2}  {backend:6} {seconds:7.3f} s", flush=True)
    equal = len({json.dumps(v, sort_keys=True, default=str) for v in results.values()}) == 1
    return {"times": times, "equal_results": equal}


def row(name: str, cell: dict, one: float) -> str:
    loky, ours = cell["times"]["loky"], cell["times"]["corral"]
    med = {k: (statistics.median(loky[k]), statistics.median(ours[k])) for k in ("cold", "warm")}
    return (f"| {name} | {one:.3f} | {med['cold'][0]:.3f} | {med['cold'][1]:.3f} | "
            f"{med['cold'][1] / med['cold'][0]:.2f} | "
            f"{med['warm'][0]:.3f} ({min(loky['warm']):.3f}) | {med['warm'][1]:.3f} ({min(ours['warm']):.3f}) | "
            f"{med['warm'][1] / med['warm'][0]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--cold", type=int, default=2, help="rounds per backend with its workers started anew (default 2)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per backend on kept workers (default 5)")
    ap.add_argument("--tiny", type=int, default=10_000, help="calls in the tiny-calls workload (default 10,000)")
    ap.add_argument("--tiny-rounds", type=int, default=11, help="rounds of the tiny calls (default 11)")
    ap.add_argument("--no-sklearn", action="store_true", help="the tiny calls only")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON at the end")
    args = ap.parse_args()
    if min(args.cold, args.rounds, args.tiny_rounds, args.tiny) < 1 or args.n_jobs < 2:
        ap.error("--cold, --rounds, --tiny-rounds and --tiny must be >= 1, and --n-jobs >= 2")

    out: dict = {"n_jobs": args.n_jobs, "cold": args.cold, "rounds": args.rounds, "tiny_rounds": args.tiny_rounds}
    rows = []
    try:
        if not args.no_sklearn:
            one, _ = timed(None, 1, lambda: grid_search(None))
            print(f"  grid  one process          {one:7.3f} s", flush=True)
            out["grid"] = compare("grid", lambda: grid_search(None), args.n_jobs, args.cold, args.rounds)
            out["grid"]["one_process"] = one
            rows.append(row("GridSearchCV, SVC on digits, 9 candidates x cv=5", out["grid"], one))
        one, _ = timed(None, 1, lambda: tiny(args.tiny))
        print(f"  tiny  one process          {one:7.3f} s", flush=True)
        out["tiny"] = compare("tiny", lambda: tiny(args.tiny), args.n_jobs, args.cold, args.tiny_rounds)
        out["tiny"]["one_process"] = one
        rows.append(row(f"{args.tiny:,} no-op calls, auto batching", out["tiny"], one))
    finally:
        stop_pools()

    print(f"\nn_jobs={args.n_jobs}; per backend {args.cold} cold rounds, then {args.rounds} warm rounds of the grid "
          f"search and {args.tiny_rounds} of the tiny calls; seconds, medians:\n")
    print("| workload | one process | loky cold | corral cold | corral / loky cold | loky warm (best) | "
          "corral warm (best) | corral / loky warm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for line in rows:
        print(line)
    for name in ("grid", "tiny"):
        if name in out and not out[name]["equal_results"]:
            print(f"\nWARNING: the backends' results differ in the {name} workload")
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
