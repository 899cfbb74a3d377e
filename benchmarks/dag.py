"""Task graphs, timed: corral's dependencies beside dask.distributed's, in one run.

    python benchmarks/dag.py [--workers 2] [--leaves 10000] [--width 1000 --depth 10] [--repeat 3]

Two graphs of tiny tasks, each built by submitting futures as arguments, from the
client, the way a user of either library writes it:

- tree reduction: ``leaves`` leaf tasks, then pairwise sums up to one root
  (2 x leaves - 1 tasks);
- wavefront: a ``width`` x ``depth`` grid where each cell depends on its left,
  upper-left and lower-left neighbours of the previous column.

For each it reports tasks per second (the best of ``--repeat`` runs, from the first
submit to the root's or last column's results) and corral's figure as a ratio of
dask's.  Both get the same number of single-threaded worker processes on this
machine; dask runs a ``LocalCluster(processes=True, threads_per_worker=1)``.
Pass ``--no-dask`` to time corral alone.
"""

from __future__ import annotations

import argparse
import json
import time

import corral


def leaf(i: int) -> int:
    return i


def add(a: int, b: int) -> int:
    return a + b


def cell(*inputs: int) -> int:
    return sum(inputs) % 1_000_003 + 1


def tree(submit, leaves: int):
    """Submit a pairwise tree reduction; the root's future."""
    level = [submit(leaf, i) for i in range(leaves)]
    while len(level) > 1:
        pairs = [submit(add, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            pairs.append(level[-1])
        level = pairs
    return [level[0]]


def wavefront(submit, width: int, depth: int):
    """Submit a width x depth wavefront; the futures of its last column."""
    column = [submit(cell, i) for i in range(width)]
    for _ in range(depth - 1):
        column = [submit(cell, *column[max(0, i - 1): i + 2]) for i in range(width)]
    return column


def timed(run, gather, repeat: int) -> float:
    """The best wall time of ``repeat`` runs of ``gather(run())``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        gather(run())
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=1_000)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    graphs = {
        "tree": (lambda s: tree(s, args.leaves), 2 * args.leaves - 1),
        "wavefront": (lambda s: wavefront(s, args.width, args.depth), args.width * args.depth),
    }
    rows: dict[str, dict[str, float]] = {name: {} for name in graphs}
    with corral.Executor(args.workers) as ex:
        expected = {}
        for name, (build, _) in graphs.items():
            expected[name] = [f.result() for f in build(ex.submit)]  # warm up, and the answer to check
            rows[name]["corral"] = timed(lambda b=build: b(ex.submit), lambda fs: [f.result() for f in fs],
                                         args.repeat)
    if not args.no_dask:
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            for name, (build, _) in graphs.items():
                got = client.gather(build(lambda fn, *a: client.submit(fn, *a, pure=False)))
                assert got == expected[name], f"dask's {name} differs from corral's"
                rows[name]["dask"] = timed(lambda b=build: b(lambda fn, *a: client.submit(fn, *a, pure=False)),
                                           client.gather, args.repeat)
    print(f"{args.workers} workers; tasks per second (best of {args.repeat})")
    print(f"{'graph':<28}{'tasks':>8}{'corral':>12}{'dask':>12}{'corral/dask':>13}")
    figures = {}
    for name, (_, count) in graphs.items():
        label = f"tree, {args.leaves:,} leaves" if name == "tree" else f"wavefront {args.width:,} x {args.depth}"
        rates = {k: count / v for k, v in rows[name].items()}
        ratio = rates["corral"] / rates["dask"] if "dask" in rates else float("nan")
        figures[name] = {**{k: round(v) for k, v in rates.items()}, "tasks": count, "ratio": round(ratio, 2)}
        print(f"{label:<28}{count:>8}{rates['corral']:>12,.0f}{rates.get('dask', float('nan')):>12,.0f}"
              f"{ratio:>12.2f}x")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
