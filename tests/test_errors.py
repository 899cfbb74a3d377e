"""How failures reach the caller: task exceptions, pickling, dead workers, broken pools."""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import threading
import time
import traceback
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

import corral
from helpers import TIMEOUT, HelperError, raise_helper_error, raise_helper_error_from_numpy, start_worker, stop

# -- task functions ------------------------------------------------------------------


class CustomError(Exception):
    pass


def raise_value_error(a, b):
    raise ValueError(a, b)


def raise_custom(message):
    raise CustomError(message, 42)


def identity(x):
    return x


def make_lock():
    return threading.Lock()


class LockHolder:
    def __init__(self):
        self.name = "holder"
        self.lock = threading.Lock()


def _explode_on_load():
    raise RuntimeError("this object refuses to be unpickled")


class LoadBomb:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self):
        return (_explode_on_load, ())


def make_load_bomb():
    return LoadBomb()


def exit_hard(code):
    os._exit(code)


def count_then_exit(path, code):
    with open(path, "a") as f:
        f.write("run\n")
    os._exit(code)


def failing_initializer():
    raise RuntimeError("initializer failed on purpose")


# -- task exceptions -------------------------------------------------------------------


def test_task_exception_keeps_type_args_and_worker_traceback(make_executor):
    ex = make_executor(1)
    fut = ex.submit(raise_value_error, "a", 2)
    with pytest.raises(ValueError) as info:
        fut.result(TIMEOUT)
    exc = info.value
    assert type(exc) is ValueError
    assert exc.args == ("a", 2)
    text = "".join(traceback.format_exception(exc))
    assert "raise_value_error" in text
    assert "raise ValueError(a, b)" in text
    assert isinstance(fut.exception(0), ValueError)


@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_exception_classes_imported_in_the_worker_keep_its_traceback(make_executor, fresh):
    """tblib's install() at import time covered only the classes that existed then: an exception
    of a module the task imported (numpy's LinAlgError, a class of helpers.py) came back without
    a single frame from the worker."""
    numpy = pytest.importorskip("numpy")
    ex = make_executor(2, fresh=fresh)
    with pytest.raises(numpy.linalg.LinAlgError) as info:
        ex.submit(numpy.linalg.inv, numpy.zeros((2, 2))).result(TIMEOUT)
    assert ", in inv\n" in "".join(traceback.format_exception(info.value))
    with pytest.raises(HelperError) as info:
        ex.submit(raise_helper_error, "boom").result(TIMEOUT)
    assert info.value.args == ("boom",)
    assert ", in raise_helper_error\n" in "".join(traceback.format_exception(info.value))
    with pytest.raises(HelperError) as info:
        ex.submit(raise_helper_error_from_numpy).result(TIMEOUT)
    assert isinstance(info.value.__cause__, numpy.linalg.LinAlgError)
    text = "".join(traceback.format_exception(info.value))
    assert ", in raise_helper_error_from_numpy\n" in text and ", in inv\n" in text


def test_custom_exception_class_and_map(make_executor):
    ex = make_executor(2)
    with pytest.raises(CustomError) as info:
        ex.submit(raise_custom, "boom").result(TIMEOUT)
    assert info.value.args == ("boom", 42)
    assert "raise_custom" in "".join(traceback.format_exception(info.value))
    results = ex.map(raise_value_error, [1], [2], timeout=TIMEOUT)
    with pytest.raises(ValueError):
        next(results)
    assert ex.submit(identity, "still usable").result(TIMEOUT) == "still usable"


# -- pickling ----------------------------------------------------------------------------


def test_unpicklable_argument_names_the_attribute(make_executor):
    ex = make_executor(1)
    fut = ex.submit(identity, LockHolder())
    exc = fut.exception(TIMEOUT)
    assert isinstance(exc, corral.SerializationError)
    assert isinstance(exc, pickle.PicklingError)
    assert "args[0].lock" in str(exc)
    assert exc.__cause__ is not None
    assert "lock" in str(exc.__cause__)
    with pytest.raises(corral.SerializationError):
        fut.result(0)
    assert ex.submit(identity, 5).result(TIMEOUT) == 5


def test_unpicklable_keyword_argument_and_closure(make_executor):
    ex = make_executor(1)
    exc = ex.submit(identity, x={"inner": threading.Lock()}).exception(TIMEOUT)
    assert isinstance(exc, corral.SerializationError)
    assert "['inner']" in str(exc)
    lock = threading.Lock()

    def uses_lock():
        return lock.locked()

    exc = ex.submit(uses_lock).exception(TIMEOUT)
    assert isinstance(exc, corral.SerializationError)
    assert "lock" in str(exc)
    assert ex.submit(identity, 6).result(TIMEOUT) == 6


def test_unpicklable_result(make_executor):
    ex = make_executor(1)
    with pytest.raises(corral.SerializationError) as info:
        ex.submit(make_lock).result(TIMEOUT)
    assert "make_lock" in str(info.value)
    assert "lock" in str(info.value)
    assert ex.submit(identity, 7).result(TIMEOUT) == 7


def test_result_that_fails_to_unpickle_in_the_client(make_executor):
    ex = make_executor(1)
    with pytest.raises(corral.SerializationError) as info:
        ex.submit(make_load_bomb).result(TIMEOUT)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "refuses to be unpickled" in str(info.value)
    assert ex.submit(identity, 8).result(TIMEOUT) == 8


def test_a_module_only_the_client_has_is_named_with_the_fix(broker_address, tmp_path, monkeypatch):
    """A standalone worker that lacks the task's module says which module and what to do."""
    import cloudpickle

    (tmp_path / "client_only_tasks.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("client_only_tasks")
    monkeypatch.setitem(sys.modules, "client_only_tasks", module)  # removed again after the test
    worker = start_worker(broker_address, "--processes", "1")  # its cwd and sys.path lack tmp_path
    try:
        with corral.Executor(address=broker_address) as ex:
            with pytest.raises(corral.DeserializationError) as info:
                ex.submit(module.double, 21).result(TIMEOUT)
            message = str(info.value)
            assert "No module named 'client_only_tasks'" in message
            assert "install it where the workers run" in message
            assert "cloudpickle.register_pickle_by_value(client_only_tasks)` before submitting" in message
            cloudpickle.register_pickle_by_value(module)  # the advice works, in the same executor too
            try:
                assert ex.submit(module.double, 21).result(TIMEOUT) == 42
            finally:
                cloudpickle.unregister_pickle_by_value(module)
    finally:
        stop(worker)


def test_unpicklable_initializer_fails_cleanly():
    with pytest.raises(corral.SerializationError):
        corral.Executor(1, initializer=threading.Lock().acquire)


# -- lost workers --------------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_worker_exit_raises_worker_lost(make_executor, fresh):
    ex = make_executor(1, retries=0, fresh=fresh)
    fut = ex.submit(exit_hard, 3)
    start = time.monotonic()
    exc = fut.exception(TIMEOUT)
    assert time.monotonic() - start < 10
    assert isinstance(exc, corral.WorkerLostError)
    assert isinstance(exc, BrokenProcessPool)
    assert "code 3" in str(exc)
    # Only that task failed: the executor replaces the worker and goes on.
    assert ex.submit(identity, "alive").result(TIMEOUT) == "alive"
    assert list(ex.map(identity, range(5), timeout=TIMEOUT)) == list(range(5))


@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_task_of_dead_worker_is_retried(make_executor, tmp_path, fresh):
    ex = make_executor(1, retries=1, fresh=fresh)
    runs = tmp_path / "runs"
    exc = ex.submit(count_then_exit, runs, 5).exception(TIMEOUT)
    assert isinstance(exc, corral.WorkerLostError)
    assert "2 times" in str(exc)
    assert runs.read_text().count("run") == 2
    assert ex.submit(identity, 1).result(TIMEOUT) == 1


# -- broken pool ---------------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["persistent", "fresh"])
def test_failing_initializer_breaks_the_executor(make_executor, fresh):
    ex = make_executor(2, initializer=failing_initializer, fresh=fresh)
    futures = [ex.submit(identity, i) for i in range(5)]
    for fut in futures:
        exc = fut.exception(TIMEOUT)
        assert isinstance(exc, BrokenExecutor)
        assert isinstance(exc, BrokenProcessPool)
    assert "initializer failed on purpose" in str(futures[0].exception(0))
    with pytest.raises(BrokenExecutor):
        ex.submit(identity, 1)
    with pytest.raises(BrokenExecutor):
        ex.map(identity, [1, 2])
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < 5
