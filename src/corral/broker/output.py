"""OUTPUT: what a worker's tasks wrote, passed on to the clients that own those tasks.

The broker reads only the small header: each entry must name a task that worker
holds now (``assigned``: a late line of a task reassigned since, or a worker's
claim about a task that is not its own, is dropped and logged), a stream, and a
string no longer than an entry may be.  It forwards the entries at once, one
message per client, with the worker's name and each task's id as its client
knows it; a worker sends a task's output before its result, so the client has
it first.  Nothing is kept: output is not part of a task's record here.
"""

from __future__ import annotations

from ..errors import ProtocolError
from ..wire import protocol
from ..wire.protocol import Kind
from .records import WorkerState

STREAMS = ("stdout", "stderr")


def forward(broker, w: WorkerState, body: dict) -> None:
    """Pass on an OUTPUT from worker ``w`` to the owners of its tasks."""
    rows = body.get("output")
    if not isinstance(rows, list) or len(rows) > protocol.MAX_BATCH:
        raise ProtocolError("OUTPUT without a list of entries")
    capture = body.get("capture")
    if capture not in (None, "begin", "more"):
        raise ProtocolError(f"bad OUTPUT capture mark {capture!r:.20}")
    by_client: dict[bytes, list] = {}
    strays = 0
    for row in rows:
        if (type(row) is not list or len(row) != 3 or type(row[0]) is not int or row[1] not in STREAMS
                or type(row[2]) is not str or len(row[2]) > protocol.MAX_OUTPUT_CHARS):
            raise ProtocolError(f"malformed OUTPUT entry {row!r:.80}")
        task = broker.tasks.get(row[0]) if row[0] in w.assigned else None
        if task is None:
            strays += 1
            continue
        by_client.setdefault(task.client, []).append([task.cid, row[1], row[2]])
    if strays:
        broker.complain(f"dropped {strays} OUTPUT entries from worker {w.name} for tasks it does not hold")
    for client, entries in by_client.items():
        out = {"worker": w.name, "output": entries}
        if capture is not None:
            out["capture"] = capture
        broker.send(broker.clients_sock, client, Kind.OUTPUT, out)
