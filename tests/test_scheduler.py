"""The broker's logic in process, without starting a process or opening a socket.

``scheduler.assign`` is a function of the queue, the tasks and the workers; the broker
itself takes messages as method calls (a client attached in this thread, workers whose
messages are handed to ``receive``), so its task accounting can be driven step by step.
"""

from __future__ import annotations

from collections import deque

from corral.broker import scheduler
from corral.broker.broker import Broker
from corral.broker.records import Task, WorkerState
from corral.wire import protocol
from corral.wire.protocol import Kind, Status


def tasks(n: int) -> tuple[deque, dict]:
    table = {gid: Task(gid, b"client", gid, (b"f", b"a"), {}) for gid in range(1, n + 1)}
    return deque(table), table


def worker(name: str, credit: int, holding: int = 0) -> WorkerState:
    w = WorkerState(name.encode(), name=name, credit=credit)
    w.assigned = {-i: None for i in range(1, holding + 1)}
    return w


def test_tasks_are_spread_one_per_worker_per_round_least_loaded_first():
    queue, table = tasks(5)
    busy, idle = worker("busy", credit=10, holding=1), worker("idle", credit=10)
    given = dict((w.name, [t.gid for t in got]) for w, got in scheduler.assign(queue, table, [busy, idle], 0, 0.0))
    assert given == {"idle": [1, 3, 5], "busy": [2, 4]}
    assert not queue and all(table[g].worker == b"idle" for g in (1, 3, 5))
    assert idle.credit == 7 and list(idle.assigned) == [1, 3, 5]


def test_no_worker_takes_more_than_its_fair_share():
    """A worker asking for 100 tasks gets its share of the 8 there are among 4 workers, counting
    those of the pool that have not connected yet."""
    queue, table = tasks(8)
    eager = worker("eager", credit=100)
    given = scheduler.assign(queue, table, [eager], pool_size=4, now=0.0)
    assert [t.gid for t in given[0][1]] == [1, 2]
    assert list(queue) == [3, 4, 5, 6, 7, 8]


def test_entries_of_tasks_gone_or_taken_are_skipped():
    queue, table = tasks(4)
    del table[1]  # cancelled while queued
    table[2].worker = b"someone"  # assigned already (requeued twice)
    given = scheduler.assign(queue, table, [worker("w", credit=5)], 0, 0.0)
    assert [t.gid for t in given[0][1]] == [3, 4]


def test_workers_without_credit_get_nothing():
    queue, table = tasks(3)
    assert scheduler.assign(queue, table, [worker("full", credit=0)], 0, 0.0) == []
    assert list(queue) == [1, 2, 3]


class Client:
    """A client attached to a broker in this thread: what the broker sends it, decoded."""

    def __init__(self, broker: Broker):
        self.got: list[tuple[Kind, dict, list]] = []
        self.state = broker.attach(lambda kind, body, frames: self.got.append((kind, body or {}, list(frames))))
        self.broker = broker

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        self.broker.from_client(self.state, kind, body or {}, list(frames))

    def results(self) -> dict[int, tuple[int, dict, list]]:
        """Each outcome the client was sent: (status, meta, payload frames), by task id."""
        out = {}
        for kind, body, frames in self.got:
            if kind == Kind.RESULT:
                for entry, payload in protocol.split_entries(body, "results", frames, 4):
                    out[entry[0]] = (entry[1], entry[3], [bytes(f) for f in payload])
        return out


def from_worker(broker: Broker, ident: bytes, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
    broker.receive(None, ident, protocol.encode(kind, body), list(frames))


def test_a_lost_workers_tasks_run_elsewhere_and_a_late_result_is_dropped():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": 1})
    for ident in (b"w1", b"w2"):
        from_worker(broker, ident, Kind.HELLO, {"role": "worker", "name": ident.decode()})
    from_worker(broker, b"w1", Kind.READY, {"credit": 1})
    client.send(Kind.SUBMIT, {"tasks": [[7, 2, {}]]}, [b"fn", b"args"])
    broker.step({})
    [gid] = broker.workers[b"w1"].assigned
    from_worker(broker, b"w1", Kind.STARTED, {"ids": [gid]})
    from_worker(broker, b"w1", Kind.BYE, {"requeue": []})  # it leaves with the task begun: one attempt
    from_worker(broker, b"w2", Kind.READY, {"credit": 1})
    broker.step({})
    assert list(broker.workers[b"w2"].assigned) == [gid]
    result = protocol.result_entry(gid, Status.OK, 1, {})
    from_worker(broker, b"w1", Kind.RESULT, {"results": [result]}, [b"late"])  # not its task any more
    from_worker(broker, b"w2", Kind.RESULT, {"results": [result]}, [b"right"])
    broker.flush()
    # The broker's part of its record: where it ran last, its attempts, why the first one ended.
    record = {"worker": "w2", "host": "?", "attempts": 2, "tries": ["worker w1 left"]}
    assert client.results() == {7: (Status.OK, record, [b"right"])}
    assert not broker.tasks and not broker.queue


def test_a_task_that_kills_every_worker_fails_once_its_retries_are_spent():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": 1})
    client.send(Kind.SUBMIT, {"tasks": [[1, 2, {}]]}, [b"fn", b"args"])
    for attempt in range(2):
        ident = b"w%d" % attempt
        from_worker(broker, ident, Kind.HELLO, {"role": "worker", "name": ident.decode()})
        from_worker(broker, ident, Kind.READY, {"credit": 1})
        broker.step({})
        broker.worker_gone(broker.workers[ident], f"worker {ident.decode()} was killed by SIGKILL")
    broker.flush()
    status, meta, _ = client.results()[1]
    assert status == Status.FAILED and meta["error"] == protocol.ERR_WORKER_LOST
    assert "ran 2 times" in meta["message"]


class Worker:
    """A worker attached to a broker in this thread: what the broker sends it, decoded."""

    def __init__(self, broker: Broker, ident: bytes, credit: int = 1):
        self.got: list[tuple[Kind, dict, list]] = []
        broker.local[ident] = lambda kind, body, frames: self.got.append((kind, body or {}, list(frames)))
        self.broker, self.ident = broker, ident
        self.send(Kind.HELLO, {"role": "worker", "name": ident.decode()})
        self.send(Kind.READY, {"credit": credit})

    def send(self, kind: Kind, body: dict | None = None, frames: list = ()) -> None:
        from_worker(self.broker, self.ident, kind, body, frames)

    def sent(self, kind: Kind) -> list[dict]:
        """The bodies of the messages of ``kind`` the broker sent this worker."""
        return [body for k, body, _ in self.got if k == kind]

    def held(self) -> list[int]:
        return list(self.broker.workers[self.ident].assigned)


def one_task(retries: int = 1) -> tuple[Broker, Client]:
    """A broker with a client that submitted task 7."""
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": retries})
    client.send(Kind.SUBMIT, {"tasks": [[7, 2, {}]]}, [b"fn", b"args"])
    return broker, client


def verdicts(client: Client) -> tuple[list, list]:
    dropped, running = [], []
    for kind, body, _ in client.got:
        if kind == Kind.CANCELLED:
            dropped += body.get("ids", [])
            running += body.get("running", [])
    return dropped, running


def test_a_queued_task_cancelled_is_dropped_and_no_worker_ever_sees_it():
    broker, client = one_task()
    client.send(Kind.CANCEL, {"ids": [7]})
    broker.flush()
    assert verdicts(client) == ([7], [])
    w = Worker(broker, b"w1")
    broker.step({})
    assert not w.sent(Kind.TASKS) and not broker.tasks and not client.results()


def test_a_held_task_is_the_workers_to_cancel_and_one_it_began_still_gives_its_result():
    broker, client = one_task()
    w = Worker(broker, b"w1")
    broker.step({})
    [gid] = w.held()
    client.send(Kind.CANCEL, {"ids": [7]})
    client.send(Kind.CANCEL, {"ids": [7]})  # asked twice: the worker is asked once
    assert w.sent(Kind.CANCEL) == [{"ids": [gid]}]
    w.send(Kind.CANCELLED, {"ids": [], "running": [gid]})  # too late: it had begun
    w.send(Kind.RESULT, {"results": [protocol.result_entry(gid, Status.OK, 1, {})]}, [b"done"])
    broker.flush()
    assert verdicts(client) == ([], [7])
    assert client.results() == {7: (Status.OK, {"worker": "w1", "host": "?", "attempts": 1}, [b"done"])}


def test_a_held_task_the_worker_drops_is_cancelled_and_never_runs_elsewhere():
    broker, client = one_task()
    w1 = Worker(broker, b"w1")
    broker.step({})
    [gid] = w1.held()
    client.send(Kind.CANCEL, {"ids": [7]})
    w1.send(Kind.CANCELLED, {"ids": [gid], "running": []})
    w2 = Worker(broker, b"w2")
    broker.step({})
    broker.flush()
    assert verdicts(client) == ([7], []) and not client.results()
    assert not w2.sent(Kind.TASKS) and not broker.tasks and not broker.queue


def test_a_killed_task_ends_and_is_never_retried():
    """Queued: it fails at once, ``killed``.  Running: its worker is told to stop it, and the
    death of its process, which would otherwise be retried (retries=5), ends it."""
    broker, client = one_task(retries=5)
    client.send(Kind.SUBMIT, {"tasks": [[8, 2, {}]]}, [b"fn", b"args"])
    w = Worker(broker, b"w1")
    broker.step({})
    [gid] = w.held()  # task 7; task 8 waits in the queue
    from_worker(broker, b"w1", Kind.STARTED, {"ids": [gid]})
    client.send(Kind.KILL, {"ids": [7, 8], "grace": 0.5})
    broker.flush()
    assert client.results()[8][0] == Status.FAILED and client.results()[8][1]["error"] == protocol.ERR_KILLED
    assert w.sent(Kind.KILL) == [{"ids": [gid], "signal": "SIGTERM", "grace": 0.5}]
    lost = {"error": protocol.ERR_WORKER_LOST, "message": "its process was killed by SIGTERM"}
    w.send(Kind.RESULT, {"results": [protocol.result_entry(gid, Status.FAILED, 0, lost)]})
    broker.step({})
    broker.flush()
    status, meta, _ = client.results()[7]
    assert status == Status.FAILED and meta["error"] == protocol.ERR_WORKER_LOST
    assert not broker.tasks and len(w.sent(Kind.TASKS)) == 1  # queue entries of gone tasks are skipped later
