"""What the ordinary task costs: this tree beside another (an earlier commit), in one run.

A feature that most tasks do not use must cost them next to nothing.  This measures
the ordinary path (``submit`` of a no-op with no options, on the executor's own pool)
in two ways, each source tree in fresh interpreters, the trees taking turns:

- time: a no-op round trip (median of 3,000, split at the moment the task ran into
  "out" and "back"), 10,000 no-ops submitted then awaited, and a map of 10,000 (the
  best of three in each process);
- work: the Python bytecode instructions a round trip executes, in the client's
  process (its I/O loop and the embedded broker) and in the task process, counted
  with ``sys.settrace``, waiters not spinning (``spin=0``).  Unlike time, the count
  hardly varies from run to run, so a change of a few per cent shows at once.

Usage, against the commit before a change::

    git worktree add /tmp/before COMMIT
    python3 benchmarks/overhead.py --against /tmp/before/src

Timings on a shared two-core machine vary by several per cent from run to run: read
the best and the median of several rounds (``--rounds``), and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")

TIMES = textwrap.dedent("""
    import json, statistics, time, corral
    pc = time.perf_counter
    with corral.Executor(2) as ex:
        list(ex.map(abs, range(3000)))
        out, back, total = [], [], []
        for _ in range(3000):
            a = pc(); ran = ex.submit(pc).result(); b = pc()
            out.append(ran - a); back.append(b - ran); total.append(b - a)
        submit = mapped = 0.0
        for _ in range(3):  # the best of three in each process
            t = pc(); futures = [ex.submit(abs, 1) for _ in range(10000)]
            for f in futures:
                f.result()
            submit = max(submit, 10000 / (pc() - t))
            t = pc(); list(ex.map(abs, range(10000))); mapped = max(mapped, 10000 / (pc() - t))
    print(json.dumps({"out_us": statistics.median(out) * 1e6, "back_us": statistics.median(back) * 1e6,
                      "p50_us": statistics.median(total) * 1e6, "submit_per_s": submit, "map_per_s": mapped}))
""")

# Counting: a tracer in the client's threads (its I/O loop's too) and, switched on by a task,
# in both task processes (each traces the frames it is running in, then all new ones).
WORK = textwrap.dedent("""
    import json, sys, time, corral
    from corral.client import ioloop

    counting = [0, False]

    def tracer(frame, event, arg):
        if counting[1]:
            frame.f_trace_opcodes = True
            if event == "opcode":
                counting[0] += 1
        return tracer

    run = ioloop.IOLoop.run
    def traced_run(self, *args, **kwargs):
        sys.settrace(tracer)
        return run(self, *args, **kwargs)
    ioloop.IOLoop.run = traced_run
    sys.settrace(tracer)

    def task_process_counts(on):
        import builtins, sys, time
        if on:
            builtins._corral_count = count = [0]
            def traced(frame, event, arg):
                frame.f_trace_opcodes = True
                if event == "opcode":
                    count[0] += 1
                return traced
            time.sleep(0.3)  # (so that each of the two task processes gets one of these)
            frame = sys._getframe().f_back
            while frame is not None:
                frame.f_trace, frame.f_trace_opcodes, frame = traced, True, frame.f_back
            sys.settrace(traced)
            return 0
        sys.settrace(None)
        frame = sys._getframe().f_back
        while frame is not None:
            frame.f_trace, frame = None, frame.f_back
        time.sleep(0.3)
        return builtins._corral_count[0]

    N = 2000
    with corral.Executor(2, spin=0) as ex:  # no spinning waiters: what is counted is the work alone
        list(ex.map(abs, range(3000)))
        [f.result() for f in [ex.submit(task_process_counts, True) for _ in range(2)]]
        for _ in range(300):
            ex.submit(abs, 1).result()
        counting[1] = True
        for _ in range(N):
            ex.submit(abs, 1).result()
        counting[1] = False
        for _ in range(300):
            ex.submit(abs, 1).result()
        in_tasks = sum(f.result() for f in [ex.submit(task_process_counts, False) for _ in range(2)])
    print(json.dumps({"client_ops": counting[0] / N, "task_process_ops": in_tasks / (N + 600)}))
""")


def measure(src: str, script: str) -> dict:
    """Run ``script`` with ``src`` first on the path; its JSON line."""
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"measuring {src} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", metavar="SRC", help="another tree's src/ directory (e.g. a worktree of a commit)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds per tree (default 5)")
    args = ap.parse_args(argv)
    trees = {"this": SRC}
    if args.against:
        if not (Path(args.against) / "corral" / "__init__.py").is_file():
            ap.error(f"--against {args.against}: no corral package there (give a tree's src/ directory)")
        trees["against"] = args.against
    times: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            times[name].append(measure(src, TIMES))
    work = {name: measure(src, WORK) for name, src in trees.items()}
    fields = [("p50_us", "round trip p50 (us)", False), ("out_us", "  submit to run (us)", False),
              ("back_us", "  run to result (us)", False), ("submit_per_s", "submit 10,000 (tasks/s)", True),
              ("map_per_s", "map 10,000 (items/s)", True)]
    print(f"{'':34}" + "".join(f"{name + ' best':>16}{name + ' median':>16}" for name in trees))
    for key, label, higher in fields:
        row = f"{label:34}"
        for name in trees:
            values = [t[key] for t in times[name]]
            row += f"{(max if higher else min)(values):16,.1f}{statistics.median(values):16,.1f}"
        print(row)
    for key, label in [("client_ops", "opcodes per round trip, client"), ("task_process_ops",
                                                                           "opcodes per task, task process")]:
        print(f"{label:34}" + "".join(f"{work[name][key]:32,.0f}" for name in trees))
    if args.against:
        print("\nthis / against (time: best; > 1 is slower or more work)")
        for key, label, higher in fields:
            mine, theirs = ((max if higher else min)(t[key] for t in times[name]) for name in ("this", "against"))
            print(f"  {label.strip():32} {(theirs / mine if higher else mine / theirs):.3f}")
        for key in ("client_ops", "task_process_ops"):
            print(f"  {key:32} {work['this'][key] / work['against'][key]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
