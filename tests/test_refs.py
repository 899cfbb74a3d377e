"""Large objects sent once: ``Executor.put`` and its ``corral.Ref``, large arguments named by their
content, the workers' bounded caches, releases, and faults, on every kind of worker."""

from __future__ import annotations

import gc
import os
import pickle
import time

import numpy as np
import pytest

import corral
from corral.client.objects import LINGER_OBJECTS
from helpers import free_port, start_broker, start_worker, stop, wait_for

MiB = 1 << 20


def total(a, k=0):
    return float(np.asarray(a).sum()) + k


def nested_total(box, k):
    return float(box["inner"][0].sum()) + k


def writable(a):
    return bool(a.flags.writeable)


def bump(a):
    a += 1  # each task's own copy on write: the next task sees the original
    return float(a.sum())


def kill_supervisor_once(a, marker):
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getppid(), 9)  # the worker's supervisor: its cache goes with it
        time.sleep(30)
    return float(a.sum())


def die_once(a, marker):
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(7)
    return float(a.sum())


@pytest.fixture
def remote():
    """A standalone broker over CurveZMQ and ``corral worker``s with the given options: a factory."""
    started: list = []

    def start(*worker_args: str) -> str:
        broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
        started.append(broker)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                          os.environ.get("PYTHONPATH")]))}
        started.append(start_worker(broker.connection, *worker_args, env=env))
        return broker.connection

    yield start
    for proc in reversed(started):
        stop(proc)


def test_put_as_argument_and_in_a_closure(mode_executor):
    ex = mode_executor(2)
    arr = np.arange(300_000, dtype=np.float64)
    ref = ex.put(arr)
    assert isinstance(ref, corral.Ref) and ref.nbytes > arr.nbytes and len(ref.key) == 64
    want = float(arr.sum())
    assert [f.result(30) for f in [ex.submit(total, ref, i) for i in range(6)]] == [want + i for i in range(6)]
    assert ex.submit(nested_total, {"inner": [ref]}, 1).result(30) == want + 1
    assert list(ex.map(lambda i: float(ref.sum()) + i, range(4))) == [want + i for i in range(4)]
    assert ex.submit(writable, ref).result(30) is False  # shared by a process's tasks: read-only
    assert ex.put(arr.copy()).key == ref.key  # named by content


def test_large_arguments_are_sent_once(remote, make_executor):
    ex = make_executor(address=remote("--processes", "2"))
    arr = np.ones(MiB // 4)  # 2 MiB
    results = [f.result(30) for f in [ex.submit(bump, arr) for _ in range(40)]]
    assert results == [2.0 * arr.size] * 40  # each task changed its own copy only
    assert (arr == 1).all()
    sent = ex.summary().objects["sent_bytes"]
    assert arr.nbytes <= sent <= 2 * arr.nbytes + 1000  # once per worker at most, not 40 times
    assert ex.summary().objects["stored"] == 1  # kept a while, for the next task that takes it
    others = [np.full(MiB // 8, float(i)) for i in range(LINGER_OBJECTS)]
    assert [ex.submit(total, a).result(30) for a in others] == [float(a.sum()) for a in others]
    wait_for(lambda: ex.summary().objects["stored"] == LINGER_OBJECTS, what="the broker dropping the first")


def test_cache_bound_evicts_and_sends_again(remote, make_executor):
    ex = make_executor(address=remote("--processes", "1", "--cache-size", "3MiB"))
    arrays = [np.full(MiB // 8 * 3 // 2, float(i)) for i in range(4)]  # 1.5 MiB each: two fit
    refs = [ex.put(a) for a in arrays]
    order = [0, 1, 2, 3, 0, 1, 0, 0, 3]
    futures = [ex.submit(total, refs[i], n) for n, i in enumerate(order)]
    assert [f.result(30) for f in futures] == [float(arrays[i].sum()) + n for n, i in enumerate(order)]
    sent = ex.summary().objects["sent_bytes"]
    assert sent > 4 * arrays[0].nbytes  # some were evicted, and sent again


def test_released_when_the_refs_are_dropped(make_executor):
    ex = make_executor(2)
    refs = [ex.put(np.full(100_000, float(i))) for i in range(3)]
    assert [ex.submit(total, r).result(30) for r in refs] == [0.0, 100_000.0, 200_000.0]
    assert ex.summary().objects["stored"] == 3
    del refs
    gc.collect()
    wait_for(lambda: ex.summary().objects["stored"] == 0, what="the broker dropping the objects")
    assert not [n for n in os.listdir(ex._shm_dir)], "the objects' files are removed"


@pytest.mark.parametrize("options", [{}, {"max_tasks_per_child": 10**9}], ids=["lane", "supervised"])
def test_a_task_process_killed_with_refs_in_use(make_executor, tmp_path, options):
    ex = make_executor(1, **options)
    ref = ex.put(np.ones(300_000))
    marker = str(tmp_path / "died")
    assert ex.submit(die_once, ref, marker).result(30) == 300_000.0  # retried; the new process gets it again
    assert ex.submit(total, ref).result(30) == 300_000.0


def test_a_restarted_worker_gets_its_objects_again(remote, make_executor, tmp_path):
    ex = make_executor(address=remote("--processes", "1"))
    ref = ex.put(np.ones(300_000))
    assert ex.submit(total, ref).result(30) == 300_000.0
    marker = str(tmp_path / "died")
    assert ex.submit(kill_supervisor_once, ref, marker).result(60) == 300_000.0  # on the worker that replaced it
    assert os.path.exists(marker)
    assert ex.summary().objects["sent_bytes"] >= 2 * ref.nbytes


def test_a_ref_of_another_executor_is_refused(make_executor):
    ex, other = make_executor(1), make_executor(1)
    ref = other.put(np.ones(10))
    with pytest.raises(ValueError, match="another executor"):
        ex.submit(total, ref)
    with pytest.raises(ValueError, match="another executor"):
        ex.submit(lambda: ref)


def test_a_ref_pickles_only_into_tasks(make_executor):
    ex = make_executor(1)
    ref = ex.put([1, 2, 3])
    with pytest.raises(TypeError, match="only in a task"):
        pickle.dumps(ref)
    fut = ex.submit(lambda: ref)  # a task may not return it
    assert fut.result(30) == [1, 2, 3]  # in the task, it is the object: that pickles back


def test_the_broker_refuses_what_only_it_may_say():
    from corral.broker.objects import check_refs
    from corral.errors import ProtocolError

    key = "ab" * 32
    check_refs({"refs": [key], "blobs": [[2, key]]}, 3)
    for bad in ({"refs": [key], "forget": [key]}, {"refs": [key], "ref_frames": []}, {"refs": ["xyz"]},
                {"refs": [key], "blobs": [[1, key]]}, {"refs": [key, key]}, {"blobs": [[2, key]]}):
        with pytest.raises(ProtocolError):
            check_refs(bad, 3)


def test_the_broker_keeps_one_copy_and_fails_tasks_without_it():
    from corral.broker.broker import Broker
    from corral.wire.protocol import Kind, Status

    broker = Broker(None)
    try:
        got: list = []
        c = broker.attach(lambda kind, body, frames: got.append((kind, body)))
        key = "cd" * 32
        broker.from_client(c, Kind.SUBMIT, {"tasks": [[1, 2, {"refs": [key]}]]}, [b"f", b"a"])
        broker.from_client(c, Kind.PUT, {"objects": [[key, 1, {}]]}, [b"x" * 100])
        broker.from_client(c, Kind.PUT, {"objects": [[key, 1, {}]]}, [b"x" * 100])  # a second handle
        assert broker.objects_status() == {"stored": 1, "bytes": 100, "sent_bytes": 0}
        broker.from_client(c, Kind.SUBMIT, {"tasks": [[2, 2, {"refs": [key]}]]}, [b"f", b"a"])
        broker.from_client(c, Kind.RELEASE, {"keys": [key, key]}, [])
        assert broker.objects_status()["stored"] == 1  # task 2 still needs it
        broker.cancel(c, [2])
        assert broker.objects_status()["stored"] == 0
        broker.flush()
        (entry,) = [e for kind, body in got if kind == Kind.RESULT for e in body["results"]]
        assert entry[0] == 1 and entry[1] == Status.FAILED and entry[3]["error"] == "object"
    finally:
        broker.close()


def test_an_object_the_broker_lost_raises_object_error(make_executor):
    ex = make_executor(1)
    ref = ex.put(np.ones(10))
    assert ex.submit(total, ref).result(30) == 10.0
    ex._broker.objects.clear()  # as a broker that restarted: it holds nothing
    with pytest.raises(corral.ObjectError, match="put"):
        ex.submit(total, ref).result(30)
    assert ex.submit(total, ex.put(np.ones(11))).result(30) == 11.0


def test_a_large_buffer_is_hashed_in_pieces_to_the_same_key_every_time():
    """Buffers past PIECES_FROM are hashed piece by piece on several threads: the key depends
    on the content alone (not on how it is held, or on the threads), and every byte counts."""
    from corral.client.objects import PIECE_BYTES, PIECES_FROM, digest

    size = PIECES_FROM + PIECE_BYTES // 2 + 5  # a short last piece
    data = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    key = digest(b"secret", b"b", [data])
    assert digest(b"secret", b"b", [data.tobytes()]) == key
    assert digest(b"secret", b"b", [memoryview(data.tobytes())]) == key
    for where in (0, PIECE_BYTES, size - 1):  # the first piece, a boundary, the short last piece
        changed = data.copy()
        changed[where] ^= 1
        assert digest(b"secret", b"b", [changed]) != key, where
    assert digest(b"other", b"b", [data]) != key
    assert digest(b"secret", b"b", [data[:-1]]) != key
