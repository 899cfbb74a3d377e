"""Mutated protocol messages, for the fuzz tests: every kind, and every way to get one wrong.

``messages(rng, count, role)`` yields multipart messages (lists of bytes) as a peer in
``role`` ("client", "worker" or "broker") might send them if it were broken or hostile:
valid ones, then damaged ones (truncated, oversized, wrong types, unknown kinds, huge id
lists, deep JSON, no frames, frame counts that do not add up, packed sizes that lie).

Task ids are drawn from far above any id the broker or a worker gives out, so that no
message here can complete a real task; a hostile peer that owns tasks can always corrupt
those (it is trusted like a client, docs/protocol.md), which is not what this tests.
"""

from __future__ import annotations

import json
import random

from corral.wire import protocol
from corral.wire.protocol import Kind

FAR = 10**12  # task ids from here up are never given out in a test


def _id(rng: random.Random):
    return rng.choice([FAR + rng.randrange(10**6), -rng.randrange(1, 10**6), 2**70, 0, "7", None, 1.5, [1], True])


def _ids(rng: random.Random, big: bool = False):
    shape = rng.randrange(6)
    if shape == 0:
        return [FAR + i for i in range(rng.choice([20_000, 20_001, 60_000] if big else [1, 10, 100]))]
    if shape == 1:
        return [_id(rng) for _ in range(rng.randrange(5))]
    if shape == 2:
        return rng.choice(["all", 5, {"a": 1}, None, [[1, 2]], [True]])
    return [FAR + rng.randrange(10**6) for _ in range(rng.randrange(1, 50))]


def _options(rng: random.Random):
    return rng.choice([
        {}, {"retries": rng.choice([0, 3, 1000, 1001, 10**9, -1, "x", True, 2.5])},
        {"timeout": rng.choice([0.5, 0, -1, 1e300, "inf", float("inf"), None, [1]])},
        {"retry_on_timeout": rng.choice([True, "yes", 1])}, {"shm": rng.choice([[2], [0], [99], "x", [[1]]])},
        "not a dict", None, [1, 2], {"priority": 10**30, "tags": ["x"] * 100},
    ])


def _body(rng: random.Random, kind: Kind, role: str, big: bool = False) -> tuple[dict | None, int]:
    """A header body for ``kind`` and how many payload frames it names."""
    if kind == Kind.HELLO:
        body = {"role": rng.choice(["client", "worker", "broker", "", None, 7]),
                "retries": rng.choice([0, 2, -1, 10**6, "two", None]),
                "name": rng.choice(["w", "x" * 100_000, 5, None, ["n"]]), "host": rng.choice(["h", "h" * 5000, {}]),
                "pid": rng.choice([1, -5, 2**80, "9", None]), "fresh": rng.choice([True, "yes", 0]),
                "lane": rng.choice([None, 0, "x"])}
        if rng.random() < 0.3:
            body["broken"] = rng.choice(["Traceback: boom" * 1000, True, 1])
        return body, 0
    if kind in (Kind.SUBMIT, Kind.TASKS):
        entries, frames = [], 0
        for _ in range(rng.choice([2000, 2001] if big else [0, 1, 3, 20])):
            n = rng.choice([0, 1, 2, 2, 3, -1, 10**6])
            entries.append([_id(rng), n, _options(rng)])
            frames += max(0, n) if isinstance(n, int) and n < 100 else 0
        if rng.random() < 0.2:
            entries = rng.choice(["all", None, [["bad"]], [[1, 2]], {"x": 1}])
        body = {"tasks": entries}
        if kind == Kind.TASKS and rng.random() < 0.5:
            body["lane"] = rng.choice([0, 1, "x"])
        return body, frames
    if kind == Kind.RESULT:
        entries, frames = [], 0
        for _ in range(rng.choice([2001] if big else [0, 1, 5])):
            n = rng.choice([0, 1, 2, -1])
            entries.append([_id(rng), rng.choice([0, 1, 2, 3, -1, "ok"]), n,
                            rng.choice([{}, {"error": "broken", "message": "x"}, {"error": "worker_lost"},
                                        {"shm": [0]}, "meta", None])])
            frames += max(0, n)
        return {"results": entries, "credit": rng.choice([0, 1, 10**6, 10**7, -1, "x"]),
                "busy": rng.choice([0.1, -1, "x", 1e308]), "started": _ids(rng, big)}, frames
    if kind in (Kind.CANCEL, Kind.STARTED, Kind.CANCELLED):
        return {"ids": _ids(rng, big), "running": _ids(rng, big), "credit": rng.choice([0, 5, -1])}, 0
    if kind == Kind.KILL:
        body = {"ids": _ids(rng, big), "grace": rng.choice([0, 1.5, -5, 1e300, "x", None]),
                "signal": rng.choice(["SIGTERM", "SIGKILL", "SIGSTOP", 9, None])}
        if rng.random() < 0.3:
            body["all"] = rng.choice([True, 1, "yes"])
        if rng.random() < 0.3:
            body.update({"lane": rng.choice([0, 1, "x"]), "id": _id(rng)})
        return body, 0
    if kind == Kind.READY:
        return {"credit": rng.choice([0, 1, 512, 10**6, 10**7, -1, 2.5, "many", None])}, 0
    if kind == Kind.WELCOME:
        return {"heartbeat": rng.choice([1.0, 0, -1, 1e9, "1", None, float("nan")]),
                "liveness": rng.choice([3, 0, -1, 10**9, 2.5, "3"])}, 0
    if kind == Kind.BYE:
        return {"requeue": _ids(rng, big)}, 0
    if kind == Kind.HEARTBEAT:
        return rng.choice([None, {"preparing": True}, {"preparing": "yes"}]), 0
    if kind == Kind.ERROR:
        return {"code": rng.choice([protocol.UNKNOWN_PEER, protocol.REFUSED, "x", 5]),
                "message": rng.choice(["m", "m" * 100_000, None])}, 0
    if kind == Kind.ENDED:
        return {"lane": rng.choice([0, 1, "x"]), "pid": _id(rng), "how": "x", "begun": rng.choice([0, 5, -1, "x"])}, 0
    if kind == Kind.LANE:
        return {"lane": rng.choice([0, 1, "x", None]), "broken": rng.choice([None, "tb"])}, 0
    if kind == Kind.PROGRESS:
        entries = [[_id(rng), rng.choice([0.5, 0, 1, None, -0.1, 1.5, "half", True, float("nan")]),
                    rng.choice(["m", "m" * 300, None, 5, ["m"]])] for _ in range(rng.choice([0, 1, 3, 101]))]
        if rng.random() < 0.2:
            entries = rng.choice(["all", None, [["bad"]], [[1, 2]], {"x": 1}])
        return {"progress": entries}, 0
    return rng.choice([None, {"x": 1}, {"workers": [1] * 10}]), 0


def _damage(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """Break a message in one of the ways a broken peer would."""
    how = rng.randrange(12)
    header = frames[0]
    if how == 0:
        return [header[: rng.randrange(len(header) + 1)], *frames[1:]]  # truncated header
    if how == 1:
        return [bytes([protocol.VERSION, rng.randrange(19, 256)]) + header[2:], *frames[1:]]  # unknown kind
    if how == 2:
        return [bytes([rng.randrange(256), header[1]]) + header[2:], *frames[1:]]  # wrong version
    if how == 3:
        return [header[:2] + b"[" * rng.choice([1000, 100_000]) + b"]" * 10, *frames[1:]]  # deep JSON
    if how == 4:
        return [header[:2] + b"{" + b'"x":' * 1000 + b"}", *frames[1:]]  # invalid JSON
    if how == 5:
        return [header[:2] + b'"x' + b"a" * (protocol.MAX_HEADER_BYTES + 10) + b'"']  # oversized
    if how == 6:
        return [header, *frames[1:], *[b"extra"] * rng.randrange(1, 5)]  # frames that do not add up
    if how == 7:
        return frames[:1]  # payload dropped
    if how == 8:
        return []  # no frames at all (the identity alone reaches the broker)
    if how == 9:
        body = json.loads(header[2:] or b"{}") if header[2:] else {}
        if isinstance(body, dict):
            body["packed"] = rng.choice([[-1, -1], [5, 5], "x", [10**15], [-2]])
            return [header[:2] + json.dumps(body).encode(), rng.randbytes(rng.randrange(20)), *frames[1:]]
        return frames
    if how == 10:
        return [header[:2] + rng.randbytes(rng.randrange(1, 200)), *frames[1:]]  # random body bytes
    return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 4))]  # noise


BIG_POOL = 40  # huge messages (batches over the limit, id lists of 20,000 and more), made once each
BIG_SHARE = 0.02  # the share of the messages sent that are one of them


def _one(rng: random.Random, role: str, big: bool) -> list[bytes]:
    kind = rng.choice(list(Kind))
    try:
        body, nframes = _body(rng, kind, role, big)
        header = protocol.encode(kind, body) if body is not None else protocol.encode(kind)
    except (ValueError, TypeError):  # a body JSON cannot carry (nan is fine; this is for safety)
        header = protocol.encode(kind)
        nframes = 0
    frames = [header] + [rng.randbytes(rng.randrange(0, 16)) for _ in range(min(nframes, 64))]
    return _damage(rng, frames) if rng.random() < 0.5 else frames


def messages(rng: random.Random, count: int, role: str):
    """``count`` messages a broken or hostile peer in ``role`` might send.  The huge ones cost
    a lot to build, and their shapes are few: a pool of them is made once and sent again."""
    pool = [_one(rng, role, big=True) for _ in range(BIG_POOL)]
    for _ in range(count):
        yield rng.choice(pool) if rng.random() < BIG_SHARE else _one(rng, role, big=False)
