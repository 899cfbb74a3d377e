"""A corral client that a test runs inside a network namespace, and drives through its pipes.

``python netns_client.py CONNECTION_FILE`` opens ``corral.Executor(address=CONNECTION_FILE)``,
then answers one JSON line on stdout for each JSON line (a command) on stdin:

- ``{"op": "submit", "key": K, "path": P, "seconds": S}``: submit ``record_run(P, S)`` as K;
- ``{"op": "wait", "keys": [...], "timeout": T}``: wait (at most T s) for those futures; the
  outcome of each: ``{"result": R}``, ``{"error": TYPE, "message": M}`` or ``{"pending": true}``;
- ``{"op": "summary"}``: ``Executor.summary()``'s rows;
- ``{"op": "results"}``: the task ids for which more than one RESULT entry reached this
  client (``duplicates``), and how many entries came in all;
- ``{"op": "soak", "seconds": D, "window": W, "retries": R, "drain": T}``: submit tasks for D
  seconds, at most W unfinished at once, each with R retries; wait at most T s more for the last;
  say how many were submitted, right, wrong, failed (by type) and left unfinished;
- ``{"op": "quit"}``: shut the executor down (not waiting) and exit.

Its functions are defined here, in ``__main__``: they travel by value to workers elsewhere.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, wait


def record_run(path: str, seconds: float) -> int:
    """Note this run's start in ``path``, sleep, note its end; the task process's pid."""
    with open(path, "a") as f:
        f.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"end {os.getpid()}\n")
    return os.getpid()


def square(x: int, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return x, x * x


def outcome(fut) -> dict:
    if not fut.done():
        return {"pending": True}
    exc = fut.exception()
    if exc is None:
        return {"result": fut.result()}
    return {"error": type(exc).__name__, "message": str(exc)[:500]}


def soak(ex, seconds: float, window: int, retries: int, drain: float) -> dict:
    """Tasks for ``seconds``, at most ``window`` unfinished at once; every outcome checked."""
    view = ex.options(retries=retries)
    pending: dict = {}
    submitted = right = 0
    wrong, failed = [], Counter()
    messages: list[str] = []

    def settle(done) -> None:
        nonlocal right
        for fut in done:
            x = pending.pop(fut)
            exc = fut.exception()
            if exc is not None:
                failed[type(exc).__name__] += 1
                if len(messages) < 5:
                    messages.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            elif fut.result() == (x, x * x):
                right += 1
            else:
                wrong.append([x, repr(fut.result())[:100]])

    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        while len(pending) < window:
            x = submitted
            pending[view.submit(square, x, (x % 7) / 1000)] = x  # 0 to 6 ms
            submitted += 1
        done, _ = wait(list(pending), timeout=max(0.0, min(0.5, end - time.monotonic())),
                       return_when=FIRST_COMPLETED)
        settle(done)
    load_s = time.monotonic() - started
    done, _ = wait(list(pending), timeout=drain)
    settle(done)
    return {"submitted": submitted, "right": right, "wrong": wrong[:20], "failed": dict(failed),
            "messages": messages, "unfinished": len(pending), "load_s": round(load_s, 2),
            "drain_s": round(time.monotonic() - started - load_s, 2)}


def main() -> int:
    import corral
    from corral.client import outcomes

    # Every RESULT entry that reaches this client, by task id: a task must complete once.
    received: Counter = Counter()
    resolve = outcomes.resolve

    def counting_resolve(io, entry, frames):
        received[entry[0]] += 1
        return resolve(io, entry, frames)

    outcomes.resolve = counting_resolve
    record_run.__module__ = square.__module__ = "__main__"
    ex = corral.Executor(address=sys.argv[1])
    futures: dict = {}
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "submit":
            futures[command["key"]] = ex.submit(record_run, command["path"], command["seconds"])
            reply = {"ok": True}
        elif op == "wait":
            chosen = [futures[key] for key in command["keys"]]
            wait(chosen, timeout=command["timeout"])
            reply = {"outcomes": {key: outcome(futures[key]) for key in command["keys"]}}
        elif op == "summary":
            try:
                reply = {"workers": list(ex.summary(timeout=command.get("timeout", 5)))}
            except Exception as exc:  # noqa: BLE001 - no answer (TimeoutError), or the broker lost (BrokerLostError)
                reply = {"error": f"{type(exc).__name__}: {exc}"}
        elif op == "results":
            reply = {"duplicates": {str(cid): n for cid, n in received.items() if n > 1},
                     "entries": sum(received.values())}
        elif op == "soak":
            reply = soak(ex, command["seconds"], command["window"], command["retries"], command["drain"])
            reply["duplicates"] = {str(cid): n for cid, n in received.items() if n > 1}
            reply["entries"] = sum(received.values())
        elif op == "quit":
            ex.shutdown(wait=False, cancel_futures=True)
            print(json.dumps({"ok": True}), flush=True)
            return 0
        else:
            reply = {"error": f"unknown op {op!r}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
