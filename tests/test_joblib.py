"""The joblib backend ``corral`` (``corral.joblib``): ``joblib.Parallel`` and scikit-learn on corral workers.

Results against joblib's own sequential and loky runs, errors with their type and the task's
traceback, aborts that leave nothing running, nested calls, given executors and brokers, and a
real scikit-learn grid search whose results equal the default backend's.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import pytest

joblib = pytest.importorskip("joblib")

import corral  # noqa: E402
import corral.joblib  # noqa: E402
from helpers import free_port, gone, start_broker, start_worker, stop, wait_for  # noqa: E402

Parallel, delayed = joblib.Parallel, joblib.delayed


class TaskFailed(Exception):
    """An exception class of the test's own: it must come back as itself."""


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise TaskFailed(f"bad input {x}")
    return x


def pid(_=None):
    return os.getpid()


def slow_or_fail(i, pid_dir):
    """Task 0 fails after a moment; the others note their process and sleep long."""
    if i == 0:
        time.sleep(0.5)
        raise TaskFailed("the first one failed")
    with open(os.path.join(pid_dir, f"{i}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    return i


def inner_parallel(n):
    """A Parallel call inside a task: which backend it gets, and its results."""
    backend, _ = joblib.parallel.get_active_backend()
    results = Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))
    return type(backend).__name__, results


def blas_threads(_=None):
    """The thread counts of the native thread pools loaded in the task's process."""
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import threadpool_info

    return sorted({pool["num_threads"] for pool in threadpool_info()})


def mark_process(directory):
    """An initializer: note that it ran in this process."""
    open(os.path.join(directory, str(os.getpid())), "w").close()


def initialized(directory):
    return os.path.exists(os.path.join(directory, str(os.getpid())))


def inner_corral(n):
    """A Parallel call inside a task that names the corral backend: it runs in the task's process."""
    return os.getpid(), Parallel(n_jobs=2, backend="corral")(delayed(pid)(i) for i in range(n))


@pytest.fixture(autouse=True)
def no_kept_executor():
    """The backend keeps its executor between calls: each test ends it (the leak check looks)."""
    yield
    corral.joblib.shutdown()


def test_registered_by_import():
    assert joblib.parallel.BACKENDS["corral"] is corral.joblib.CorralBackend


@pytest.mark.parametrize("batch_size", ["auto", 1, 7])
def test_results_in_order_equal_sequential(batch_size):
    with joblib.parallel_config(backend="corral", n_jobs=2):
        got = Parallel(batch_size=batch_size)(delayed(square)(i) for i in range(200))
    assert got == [square(i) for i in range(200)]


def test_runs_in_worker_processes_kept_between_calls():
    with joblib.parallel_config(backend="corral", n_jobs=2):
        first = set(Parallel(batch_size=1)(delayed(pid)(i) for i in range(20)))
        second = set(Parallel(batch_size=1)(delayed(pid)(i) for i in range(20)))
    assert os.getpid() not in first
    assert second <= first or len(first | second) <= 2  # the same workers: the executor was kept
    again = set(Parallel(n_jobs=2, backend="corral", batch_size=1)(delayed(pid)(i) for i in range(20)))
    assert again & first  # a later call, outside the block, finds it too
    corral.joblib.shutdown()
    assert wait_for(lambda: all(gone(p) for p in first | second | again), 10, "the workers to end")


def test_reuse_false_stops_the_executor_with_the_call():
    with joblib.parallel_config(backend="corral", n_jobs=2, reuse=False):
        pids = set(Parallel(batch_size=1)(delayed(pid)(i) for i in range(10)))
    assert all(gone(p) for p in pids)  # shut down (wait=True) before the call returned


def test_shutdown_during_a_call_waits_for_its_end():
    with joblib.parallel_config(backend="corral", n_jobs=2):
        out = Parallel(return_as="generator", batch_size=1)(delayed(pid)(i) for i in range(20))
        first = next(out)
        corral.joblib.shutdown()  # the call still uses the executor: it keeps it to its end
        pids = {first, *out}
    assert corral.joblib._cache.executor is None
    assert wait_for(lambda: all(gone(p) for p in pids), 10, "the workers to end")


def test_other_n_jobs_replaces_the_kept_executor():
    with joblib.parallel_config(backend="corral", n_jobs=2):
        two = set(Parallel(batch_size=1)(delayed(pid)(i) for i in range(10)))
    with joblib.parallel_config(backend="corral", n_jobs=3):
        three = set(Parallel(batch_size=1)(delayed(pid)(i) for i in range(30)))
    assert all(gone(p) for p in two)
    assert not two & three


def test_n_jobs_minus_one_and_one():
    with joblib.parallel_config(backend="corral", n_jobs=-1):
        assert joblib.effective_n_jobs(None) == joblib.cpu_count()
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    with joblib.parallel_config(backend="corral"):  # the backend's default: every CPU
        assert joblib.effective_n_jobs(None) == joblib.cpu_count()
    with joblib.parallel_config(backend="corral", n_jobs=-2):
        assert joblib.effective_n_jobs(None) == max(joblib.cpu_count() - 1, 1)
    corral.joblib.shutdown()
    with joblib.parallel_config(backend="corral", n_jobs=1):  # joblib's loop, here: nothing starts
        assert set(Parallel()(delayed(pid)(i) for i in range(4))) == {os.getpid()}
    assert corral.joblib._cache.executor is None
    with pytest.raises(ValueError, match="n_jobs == 0"), joblib.parallel_config(backend="corral", n_jobs=0):
        Parallel()(delayed(square)(i) for i in range(2))


def test_exception_keeps_its_type_and_the_tasks_traceback():
    with joblib.parallel_config(backend="corral", n_jobs=2):
        with pytest.raises(TaskFailed, match="bad input 13") as info:
            Parallel(batch_size=1)(delayed(fail_on)(i, 13) for i in range(40))
        cause = info.value.__cause__
        assert isinstance(cause, corral.joblib.WorkerTraceback)
        assert "in fail_on" in cause.text and "TaskFailed: bad input 13" in cause.text
        # The backend is still usable afterwards, on the same executor.
        assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_abort_kills_the_rest(tmp_path):
    started = time.monotonic()
    with joblib.parallel_config(backend="corral", n_jobs=2):
        with pytest.raises(TaskFailed, match="the first one failed"):
            Parallel(batch_size=1)(delayed(slow_or_fail)(i, str(tmp_path)) for i in range(8))
        assert time.monotonic() - started < 30
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert pids, "no other task started"
        assert all(gone(p) for p in pids)  # killed before Parallel raised: no straggler
        assert Parallel()(delayed(square)(i) for i in range(6)) == [i * i for i in range(6)]


def test_timeout_raises_and_kills(tmp_path):
    with joblib.parallel_config(backend="corral", n_jobs=2):
        assert Parallel()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]  # the workers are up
        with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises
            Parallel(batch_size=1, timeout=3.0)(delayed(slow_or_fail)(i, str(tmp_path)) for i in range(1, 4))
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert pids and all(gone(p) for p in pids)


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_return_as_generators(return_as):
    if return_as == "generator_unordered" and tuple(int(p) for p in joblib.__version__.split(".")[:2]) < (1, 4):
        pytest.skip("joblib before 1.4 has no return_as='generator_unordered'")
    with joblib.parallel_config(backend="corral", n_jobs=2):
        out = Parallel(return_as=return_as)(delayed(square)(i) for i in range(100))
        assert not isinstance(out, list)
        got = list(out)
    if return_as == "generator":
        assert got == [i * i for i in range(100)]
    else:
        assert sorted(got) == [i * i for i in range(100)]


def test_generator_left_early_cancels_the_rest(tmp_path):
    with joblib.parallel_config(backend="corral", n_jobs=2):
        out = Parallel(return_as="generator", batch_size=1)(delayed(square)(i) for i in range(1000))
        assert next(out) == 0
        with pytest.warns(UserWarning, match="tasks"):
            del out  # joblib aborts the call
        assert Parallel()(delayed(square)(i) for i in range(5)) == [i * i for i in range(5)]


def test_nested_parallel_uses_threads_in_the_task():
    with joblib.parallel_config(backend="corral", n_jobs=2):
        got = Parallel()(delayed(inner_parallel)(n) for n in (3, 5))
    assert got == [("ThreadingBackend", [0, 1, 4]), ("ThreadingBackend", [0, 1, 4, 9, 16])]


def test_nested_corral_backend_runs_in_the_task():
    with joblib.parallel_config(backend="corral", n_jobs=2):
        got = Parallel(batch_size=1)(delayed(inner_corral)(n) for n in (2, 3))
    for task_pid, inner in got:
        assert task_pid != os.getpid() and set(inner) == {task_pid}  # no pool of its own in the task


def test_inner_max_num_threads_limits_native_pools():
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("numpy")
    with joblib.parallel_config(backend="corral", n_jobs=2, inner_max_num_threads=1):
        got = Parallel(batch_size=1)(delayed(blas_threads)(i) for i in range(4))
    assert all(threads == [1] for threads in got), got


def test_initializer_runs_in_every_worker(tmp_path):
    with joblib.parallel_config(backend="corral", n_jobs=2, initializer=mark_process, initargs=(str(tmp_path),)):
        assert all(Parallel(batch_size=1)(delayed(initialized)(str(tmp_path)) for _ in range(10)))
    other = tmp_path / "other"
    other.mkdir()
    got = Parallel(backend="corral", n_jobs=2, batch_size=1, initializer=mark_process, initargs=(str(other),))(
        delayed(initialized)(str(other)) for _ in range(10))
    assert all(got)  # given to Parallel itself: a new executor, with that initializer


def test_given_executor_is_used_and_not_shut_down():
    with corral.Executor(max_workers=2) as ex:
        with joblib.parallel_config(backend="corral", executor=ex, n_jobs=-1):
            assert joblib.effective_n_jobs(None) == 2  # its max_workers
            got = Parallel(batch_size=1)(delayed(pid)(i) for i in range(10))
        assert ex.submit(square, 7).result(30) == 49  # still open
        assert os.getpid() not in got
    assert corral.joblib._cache.executor is None  # nothing of its own was started


def test_bad_arguments():
    with corral.Executor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="not both"):
            joblib.parallel_config(backend="corral", executor=ex, address="tcp://127.0.0.1:1")
        with pytest.raises(ValueError, match="executor_options"):
            joblib.parallel_config(backend="corral", executor=ex, executor_options={"retries": 1})
        with pytest.raises(ValueError, match="initializer"):
            joblib.parallel_config(backend="corral", executor=ex, initializer=print)
        with pytest.raises(ValueError, match="initializer"):
            Parallel(backend=corral.joblib.CorralBackend(executor=ex), n_jobs=2, initializer=print)(
                delayed(abs)(i) for i in range(2))
    with pytest.raises(TypeError, match="corral.Executor"):
        joblib.parallel_config(backend="corral", executor=object())
    with pytest.raises(ValueError, match="idle_timeout"):
        joblib.parallel_config(backend="corral", idle_timeout=0)
    with pytest.raises(TypeError, match="no 'adress'"):
        joblib.parallel_config(backend="corral", adress="tcp://127.0.0.1:1")


def test_executor_options_and_idle_timeout():
    with joblib.parallel_config(backend="corral", n_jobs=2, idle_timeout=0.5, executor_options={"retries": 0}):
        pids = set(Parallel(batch_size=1)(delayed(pid)(i) for i in range(6)))
    assert corral.joblib._cache.executor._config.retries == 0
    wait_for(lambda: corral.joblib._cache.executor is None, 10, "the idle executor to go")
    assert wait_for(lambda: all(gone(p) for p in pids), 10, "its workers to end")


def test_on_a_broker_elsewhere():
    broker = start_broker(f"tcp://127.0.0.1:{free_port()}")
    # A standalone worker imports the tasks' functions from this module, as it would from an installed package.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                      os.environ.get("PYTHONPATH")]))}
    worker = start_worker(broker.connection, "--processes", "2", env=env)
    try:
        with joblib.parallel_config(backend="corral", address=broker.connection, n_jobs=-1):
            # joblib counts the connected worker processes at each call; wait for both to join.
            with corral.Executor(address=broker.connection) as probe:
                wait_for(lambda: len([w for w in probe.summary() if w.get("left") is None]) == 2, 30, "two workers")
            assert joblib.effective_n_jobs(None) == 2  # what scikit-learn asks, outside a call
            got = Parallel(batch_size=1)(delayed(square)(i) for i in range(30))
            assert got == [i * i for i in range(30)]
            backend = joblib.parallel.get_active_backend()[0]
            assert backend._executor is None  # given back at the end of the call
            with Parallel() as parallel:  # configured once for the block
                assert parallel._effective_n_jobs() == 2
                assert parallel(delayed(abs)(-i) for i in range(5)) == list(range(5))
            with pytest.raises(ZeroDivisionError):
                Parallel()(delayed(divmod)(1, i) for i in range(-3, 3))
            if sklearn_installed():  # scikit-learn on the broker's workers: the scores of one process
                from sklearn.datasets import load_iris
                from sklearn.model_selection import cross_val_score
                from sklearn.svm import SVC

                X, y = load_iris(return_X_y=True)
                remote_scores = cross_val_score(SVC(), X, y, cv=3).tolist()
        if sklearn_installed():
            assert remote_scores == cross_val_score(SVC(), X, y, cv=3).tolist()
    finally:
        corral.joblib.shutdown()
        stop(worker)
        stop(broker)


def test_program_exits_with_the_executor_kept(tmp_path):
    """A program that leaves the kept executor running ends promptly, and its workers with it."""
    script = textwrap.dedent("""
        import os, joblib, corral.joblib
        with joblib.parallel_config(backend="corral", n_jobs=2):
            pids = set(joblib.Parallel(batch_size=1)(joblib.delayed(os.getpid)() for _ in range(10)))
        print(" ".join(map(str, pids)), flush=True)
    """)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 30
    pids = [int(p) for p in out.stdout.split()]
    assert pids and wait_for(lambda: all(gone(p) for p in pids), 10, "the workers to end")


# Parallel(backend="corral") inside a loky worker, a fresh interpreter that never imported corral.joblib:
# joblib has no entry points for backends, so there the name is unknown (docs/joblib.md says so).
NOT_APPLICABLE = ["test_nested_loop[loky-corral]", "test_nested_loop[back_compat_backend-corral]"]
JOBLIB_SUITE = """
import sys
import corral.joblib  # registered before joblib's tests build their lists of backends
import pytest


class NotApplicable:
    def pytest_collection_modifyitems(self, config, items):
        skipped = [item for item in items if item.name in NOT_APPLICABLE]
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if item.name not in NOT_APPLICABLE]


sys.exit(pytest.main(sys.argv[1:], plugins=[NotApplicable()]))
""".replace("NOT_APPLICABLE", repr(NOT_APPLICABLE))


def test_joblibs_own_backend_tests(tmp_path):
    """joblib's test_parallel.py, the cases it runs for every registered backend, on "corral"."""
    pytest.importorskip("joblib.test.test_parallel")
    args = ["-q", "-p", "no:cacheprovider", "--pyargs", "joblib.test.test_parallel", "-k", "corral",
            "-W", "ignore::pytest.PytestUnknownMarkWarning", "--timeout", "120"]
    out = subprocess.run([sys.executable, "-c", JOBLIB_SUITE, *args], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


# -- scikit-learn ------------------------------------------------------------------------------


def sklearn_installed() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def sklearn():
    return pytest.importorskip("sklearn")


GRID_SEARCH = """
import json, sys
import joblib
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

X, y = load_iris(return_X_y=True)
grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1, 1]}
n_jobs = None if sys.argv[1] == "None" else int(sys.argv[1])
search = GridSearchCV(SVC(random_state=0), grid, cv=5, n_jobs=n_jobs).fit(X, y)
result = {"best_params": search.best_params_, "best_score": search.best_score_,
          "mean_test_score": search.cv_results_["mean_test_score"].tolist(),
          "rank_test_score": search.cv_results_["rank_test_score"].tolist()}
"""


def test_grid_search_equals_the_default_backends(sklearn, tmp_path):
    """GridSearchCV on corral finds what it finds with no backend (one process) and with loky."""
    here: dict = {}
    exec(GRID_SEARCH.replace("sys.argv[1]", "ARG"), {"ARG": "None", "__name__": "grid"}, here)
    sequential = here["result"]
    # loky in a program of its own: its workers and resource trackers end with it.
    script = GRID_SEARCH + "\nprint(json.dumps(result))\n"
    out = subprocess.run([sys.executable, "-c", script, "2"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    loky = json.loads(out.stdout)
    for n_jobs in ("None", "2"):  # None: scikit-learn's default, the active backend's every worker
        with joblib.parallel_config(backend="corral", n_jobs=2):
            here = {}
            exec(GRID_SEARCH.replace("sys.argv[1]", "ARG"), {"ARG": n_jobs, "__name__": "grid"}, here)
        ours = here["result"]
        for other in (ours, loky):
            assert other["best_params"] == sequential["best_params"]
            assert other["best_score"] == sequential["best_score"]
            assert other["mean_test_score"] == sequential["mean_test_score"]
            assert other["rank_test_score"] == sequential["rank_test_score"]


def test_cross_val_score_and_forest_equal(sklearn):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import cross_val_score

    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    forest = RandomForestClassifier(n_estimators=20, random_state=0)
    want = cross_val_score(forest, X, y, cv=4)
    with joblib.parallel_config(backend="corral", n_jobs=2):
        got = cross_val_score(forest, X, y, cv=4)
        # The forest's own n_jobs: its trees built in corral tasks, its predictions equal.
        fitted = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=2).fit(X, y)
        proba = fitted.predict_proba(X[:50])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(proba, RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
                                  .predict_proba(X[:50]))
