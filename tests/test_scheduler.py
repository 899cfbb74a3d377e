"""The broker's logic in process, without starting a process or opening a socket.

``scheduler.assign`` is a function of the queue, the tasks and the workers; the broker
itself takes messages as method calls (a client attached in this thread, workers whose
messages are handed to ``receive``), so its task accounting can be driven step by step.
"""

from __future__ import annotations

import pytest

from corral.broker import scheduler
from corral.broker.broker import Broker
from corral.broker.queue import TaskQueue
from corral.broker.records import Task, WorkerState
from corral.errors import ProtocolError
from corral.wire import protocol
from corral.wire.protocol import Kind, Status


def tasks(n: int) -> tuple[TaskQueue, dict]:
    table = {gid: Task(gid, b"client", gid, (b"f", b"a"), {}) for gid in range(1, n + 1)}
    queue = TaskQueue(table)
    for task in table.values():
        queue.append(task)
    return queue, table


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

    def __init__(self, broker: Broker, ident: bytes, credit: int = 1, **hello):
        self.got: list[tuple[Kind, dict, list]] = []
        broker.local[ident] = lambda kind, body, frames: self.got.append((kind, body or {}, list(frames)))
        self.broker, self.ident = broker, ident
        self.send(Kind.HELLO, {"role": "worker", "name": ident.decode(), **hello})
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


# -- priorities, resources, queues (broker/queue.py, demand.py, unplaced.py) ----------------------


def placed_tasks(*options: dict) -> tuple[TaskQueue, dict]:
    """Tasks 1, 2, ... with these options (priority, resources, queue), queued in that order."""
    from corral.broker.demand import of_options

    table = {}
    queue = TaskQueue(table)
    for gid, opts in enumerate(options, 1):
        task = table[gid] = Task(gid, b"client", gid, (b"f", b"a"), opts)
        task.place = of_options(opts)
        queue.append(task)
    return queue, table


def placed_worker(name: str, credit: int, resources: dict | None = None, queues=("default",)) -> WorkerState:
    w = worker(name, credit)
    w.resources, w.free, w.queues = resources, dict(resources or {}), frozenset(queues)
    return w


def gids_given(given) -> dict[str, list[int]]:
    return {w.name: [t.gid for t in got] for w, got in given}


def test_higher_priority_first_and_first_in_first_out_within_a_priority():
    queue, table = placed_tasks({}, {"priority": 5}, {}, {"priority": 5}, {"priority": -1}, {"priority": 9})
    given = scheduler.assign(queue, table, [placed_worker("w", credit=10)], 0, 0.0)
    assert gids_given(given) == {"w": [6, 2, 4, 1, 3, 5]}
    assert not queue


def test_a_task_handed_back_goes_to_the_front_of_its_own_priority():
    from corral.broker.demand import of_options

    queue, table = placed_tasks({"priority": 1}, {}, {})
    table[4] = Task(4, b"client", 4, (b"f", b"a"), {})
    table[5] = Task(5, b"client", 5, (b"f", b"a"), {"priority": 1}, place=of_options({"priority": 1}))
    queue.appendleft(4)  # handed back (a lost worker's): in front of its priority, not of the queue
    queue.appendleft(5)
    assert [queue.popleft() for _ in range(5)] == [5, 1, 4, 2, 3]


def test_a_task_that_fits_no_worker_now_does_not_hold_up_those_behind_it():
    queue, table = placed_tasks({"resources": {"gpu": 1}}, {"resources": {"gpu": 1}}, {}, {"queue": "io"}, {})
    gpu = placed_worker("gpu", credit=10, resources={"gpu": 1})
    given = scheduler.assign(queue, table, [gpu], 0, 0.0)
    assert gids_given(given) == {"gpu": [1, 3, 5]}  # the second gpu task waits for the first one's outcome
    assert gpu.free == {"gpu": 0} and gpu.assigned[1] == (("gpu", 1),) and gpu.assigned[3] is None
    io = placed_worker("io", credit=10, queues=("io",))
    assert gids_given(scheduler.assign(queue, table, [gpu, io], 0, 0.0)) == {"io": [4]}
    assert len(queue) == 1  # task 2


def test_resources_are_held_until_the_outcome_and_prefetch_counts():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": 1})
    w = Worker(broker, b"w", credit=4, resources={"gpu": 2, "mem": 64e9})
    client.send(Kind.SUBMIT, {"tasks": [[i, 2, {"resources": {"gpu": 1, "mem": 16e9}}] for i in range(3)]},
                [b"fn", b"args"] * 3)
    broker.step({})
    first = w.held()
    assert len(first) == 2 and broker.workers[b"w"].free == {"gpu": 0, "mem": 32e9}
    w.send(Kind.RESULT, {"results": [protocol.result_entry(first[0], Status.OK, 1, {})], "credit": 1}, [b"r"])
    broker.step({})
    assert len(w.held()) == 2 and broker.workers[b"w"].free == {"gpu": 0, "mem": 32e9}
    w.send(Kind.BYE, {"requeue": w.held()})  # handed back: nothing leaks, the tasks wait again
    assert len(broker.queue) == 2 and not broker.workers


def test_a_requeued_task_keeps_its_priority():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": 1})
    w1 = Worker(broker, b"w1", credit=1)
    client.send(Kind.SUBMIT, {"tasks": [[1, 2, {"priority": 3}]]}, [b"fn", b"args"])
    broker.step({})
    assert w1.held()
    client.send(Kind.SUBMIT, {"tasks": [[2, 2, {"priority": 3}], [3, 2, {}], [4, 2, {"priority": 7}]]},
                [b"fn", b"args"] * 3)
    w1.send(Kind.STARTED, {"ids": w1.held()})
    broker.worker_gone(broker.workers[b"w1"], "worker w1 was killed by SIGKILL")
    w2 = Worker(broker, b"w2", credit=4)
    broker.step({})
    cids = {t.gid: t.cid for t in broker.tasks.values()}
    assert [cids[g] for g in w2.held()] == [4, 1, 2, 3]


def test_an_unschedulable_task_is_counted_with_its_reason_and_fails_after_its_timeout():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": 1})
    Worker(broker, b"w", credit=2, resources={"gpu": 1})
    client.send(Kind.SUBMIT, {"tasks": [[1, 2, {"resources": {"gpu": 4}, "timeout": 0.2}],
                                        [2, 2, {"queue": "nowhere"}]]}, [b"fn", b"args"] * 2)
    broker.step({})
    counts, _ = broker.status()
    assert counts["unschedulable"] == 2
    assert any("gpu=4 (the most a worker has: gpu=1)" in r for r in counts["unschedulable_reasons"])
    assert any("serves queue 'nowhere'" in r for r in counts["unschedulable_reasons"])
    broker.unplaced.review(broker, broker.tasks[1].place.stuck_since + 0.25, force=True)
    broker.flush()
    status, meta, _ = client.results()[1]
    assert status == Status.FAILED and meta["error"] == protocol.ERR_TIMEOUT and "gpu=4" in meta["message"]
    assert broker.tasks[2].reason is not None and len(broker.queue.lines) == 2
    Worker(broker, b"io", credit=1, queues=["nowhere"])  # it fits now: no longer unschedulable
    assert broker.status()[0]["unschedulable"] == 0 and broker.tasks[2].reason is None
    assert len(broker.queue.lines) == 1  # the gpu=4 line, empty since its task failed, is forgotten


def test_bad_placement_on_the_wire_is_dropped():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client"})
    for opts in ({"priority": 1.5}, {"priority": True}, {"resources": {"gpu": -1}}, {"resources": [1]},
                 {"queue": ""}, {"queue": 7}):
        client.send(Kind.SUBMIT, {"tasks": [[1, 2, opts]]}, [b"fn", b"args"])
        assert not broker.tasks, opts
    for hello in ({"resources": {"gpu": "1"}}, {"queues": []}, {"queues": "gpu"}, {"group": 5}):
        with pytest.raises(ProtocolError):  # the loop drops it (Broker.drain) and logs it
            from_worker(broker, b"bad", Kind.HELLO, {"role": "worker", **hello})
        assert not broker.workers, hello


def test_the_processes_of_one_worker_group_share_its_resources():
    broker = Broker(None)
    client = Client(broker)
    client.send(Kind.HELLO, {"role": "client", "retries": 1})
    a = Worker(broker, b"a", credit=2, resources={"gpu": 1}, group="g1")
    b = Worker(broker, b"b", credit=2, resources={"gpu": 1}, group="g1")
    client.send(Kind.SUBMIT, {"tasks": [[i, 2, {"resources": {"gpu": 1}}] for i in range(2)]}, [b"fn", b"args"] * 2)
    broker.step({})
    assert len(a.held()) + len(b.held()) == 1  # one GPU between them
    (holder, other) = (a, b) if a.held() else (b, a)
    holder.send(Kind.BYE, {"interrupted": holder.held()})  # handed back: free again, for the other
    broker.step({})
    assert len(other.held()) == 1 and len(broker.queue) == 1
    assert broker.groups.members == {(None, "g1"): 1}
