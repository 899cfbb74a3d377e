"""joblib's backends timed: loky (joblib's default) beside corral's, on scikit-learn and on tiny calls.

    python benchmarks/joblib_sklearn.py [--n-jobs 2] [--rounds 5] [--tiny 10000] [--tiny-rounds 11] [--json]

Two workloads, each run by both backends with the same ``n_jobs``, the backends taking
turns round after round (which one goes first alternates), in one process:

- a grid search: ``GridSearchCV(SVC(), {C: 3 values, gamma: 3 values}, cv=5)`` on the
  digits data set (45 fits of about a tenth of a second, and the refit), as scikit-learn runs it under
  ``joblib.parallel_config(backend=...)``; the results of the two backends are checked equal;
- tiny calls: ``joblib.Parallel()(delayed(noop)(i) for i in range(tiny))`` with joblib's
  automatic batching.

Each backend's first round includes starting its workers (loky's reusable executor,
corral's kept executor) and is reported on its own; the other rounds are warm, and the
table gives their median and best.  One process running the same work without a backend
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


def compare(name: str, work, n_jobs: int, rounds: int, backends=("loky", "corral")) -> dict:
    """Rounds of ``work`` by each backend, taking turns; seconds per backend and round."""
    times: dict[str, list[float]] = {b: [] for b in backends}
    results = {}
    for r in range(rounds):
        order = backends if r % 2 == 0 else tuple(reversed(backends))
        for backend in order:
            seconds, results[backend] = timed(backend, n_jobs, work)
            times[backend].append(seconds)
            print(f"  {name:5} round {r + 1}  {backend:6} {seconds:7.3f} s", flush=True)
    equal = len({json.dumps(v, sort_keys=True, default=str) for v in results.values()}) == 1
    return {"times": times, "equal_results": equal}


def row(name: str, cell: dict, one: float) -> str:
    t = cell["times"]
    loky_warm, ours_warm = t["loky"][1:] or t["loky"], t["corral"][1:] or t["corral"]
    lm, cm = statistics.median(loky_warm), statistics.median(ours_warm)
    return (f"| {name} | {one:.2f} | {t['loky'][0]:.2f} | {t['corral'][0]:.2f} | {lm:.3f} ({min(loky_warm):.3f}) | "
            f"{cm:.3f} ({min(ours_warm):.3f}) | {cm / lm:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="rounds per backend, the first one cold (default 5)")
    ap.add_argument("--tiny", type=int, default=10_000, help="calls in the tiny-calls workload (default 10,000)")
    ap.add_argument("--tiny-rounds", type=int, default=11, help="rounds of the tiny calls (default 11)")
    ap.add_argument("--no-sklearn", action="store_true", help="the tiny calls only")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON at the end")
    args = ap.parse_args()
    if min(args.rounds, args.tiny_rounds, args.tiny) < 1 or args.n_jobs < 2:
        ap.error("--rounds, --tiny-rounds and --tiny must be >= 1, and --n-jobs >= 2")

    out: dict = {"n_jobs": args.n_jobs, "rounds": args.rounds}
    rows = []
    try:
        if not args.no_sklearn:
            one, _ = timed(None, 1, lambda: grid_search(None))
            print(f"  grid  one process          {one:7.3f} s", flush=True)
            out["grid"] = compare("grid", lambda: grid_search(None), args.n_jobs, args.rounds)
            out["grid"]["one_process"] = one
            rows.append(row("GridSearchCV, SVC on digits, 9 candidates x cv=5", out["grid"], one))
        one, _ = timed(None, 1, lambda: tiny(args.tiny))
        print(f"  tiny  one process          {one:7.3f} s", flush=True)
        out["tiny"] = compare("tiny", lambda: tiny(args.tiny), args.n_jobs, args.tiny_rounds)
        out["tiny"]["one_process"] = one
        rows.append(row(f"{args.tiny:,} no-op calls, auto batching", out["tiny"], one))
    finally:
        corral.joblib.shutdown()
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)

    print(f"\nn_jobs={args.n_jobs}, {args.rounds} rounds of the grid search and {args.tiny_rounds} of the tiny calls "
          "per backend (the first cold), seconds:\n")
    print("| workload | one process | loky cold | corral cold | loky warm, median (best) | "
          "corral warm, median (best) | corral / loky, warm median |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for line in rows:
        print(line)
    for name in ("grid", "tiny"):
        if name in out and not out[name]["equal_results"]:
            print(f"\nWARNING: the backends' results differ in the {name} workload")
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
