"""Autoscaling of launched workers: the policy's arithmetic, and whole executors with the Local launcher.

The Local launcher starts ``corral worker -`` processes that reach the executor's broker
over TCP with CurveZMQ and keys of their own, exactly as SSH hosts and batch jobs do, so
these tests follow the same path as the cluster launchers' (test_slurm.py, test_sge.py,
test_ssh.py), without their daemons.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import corral
from corral.launchers import Local
from corral.scaling import policy

HEARTBEAT = 0.5  # launched workers leave a silent broker after HEARTBEAT x liveness (3)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


# -- the policy ----------------------------------------------------------------------


def test_wanted_is_demand_within_min_and_max():
    assert policy.wanted(0, 0, 8) == 0
    assert policy.wanted(0, 2, 8) == 2
    assert policy.wanted(5, 2, 8) == 5
    assert policy.wanted(100, 2, 8) == 8


def test_launch_only_the_difference_and_never_past_max():
    assert policy.to_launch(want=8, supply=3, total=3, max_workers=8) == 5
    assert policy.to_launch(want=8, supply=3, total=7, max_workers=8) == 1  # 4 leave soon: counted in total
    assert policy.to_launch(want=2, supply=3, total=3, max_workers=8) == 0


def test_retire_only_the_longest_idle_beyond_want():
    idle = [(b"a", 5.0), (b"b", 0.5), (b"c", 9.0), (b"d", 3.0)]
    assert policy.to_retire(idle, active=4, want=2, idle_timeout=2.0) == [b"c", b"a"]
    assert policy.to_retire(idle, active=4, want=4, idle_timeout=2.0) == []
    assert policy.to_retire(idle, active=4, want=0, idle_timeout=2.0) == [b"c", b"a", b"d"]  # b not idle long


def test_backoff_doubles_and_resets():
    b = policy.Backoff()
    assert [b.failed(0.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert not b.ready(10.0) and b.ready(30.0)
    b.succeeded()
    assert b.failures == 0 and b.ready(0.0)


# -- arguments -----------------------------------------------------------------------


def test_bad_launcher_arguments_are_refused_at_once():
    with pytest.raises(TypeError, match="not the class"):
        corral.Executor(launcher=Local)
    with pytest.raises(TypeError, match="corral.launchers.Launcher"):
        corral.Executor(launcher="slurm")
    with pytest.raises(ValueError, match="must not exceed max_workers"):
        corral.Executor(launcher=Local(), max_workers=2, min_workers=3)
    with pytest.raises(ValueError, match="give launcher= too"):
        corral.Executor(max_workers=1, min_workers=1)
    with pytest.raises(ValueError, match="one or the other"):
        corral.Executor(launcher=Local(), address="tcp://127.0.0.1:7700")
    with pytest.raises(corral.AddressError, match="no network interface called"):
        corral.Executor(launcher=Local(), interface="no-such-if0")
    with pytest.raises(ValueError, match="not both"):
        corral.Executor(launcher=Local(), interface="lo", advertise="127.0.0.1")


# -- whole executors -------------------------------------------------------------------


def test_scales_from_zero_to_max_and_back_to_zero(make_executor):
    ex = make_executor(launcher=Local(), max_workers=3, idle_timeout=1.0, heartbeat=HEARTBEAT)
    assert ex.summary().launches["launched"] == 0  # no work, no workers
    pids = set(ex.map(nap_pid, [0.6] * 9))
    assert len(pids) == 3  # three workers shared the work
    s = ex.summary()
    assert s.launches["launched"] == 3 and s.launches["launch_failures"] == 0
    wait_for(lambda: ex.summary().launches["workers"] == 0, 20, "idle workers retired")
    assert ex.summary().launches["retired"] == 3
    # Work again: workers come back.
    assert ex.submit(pow, 2, 5).result(timeout=60) == 32


def nap_pid(seconds):
    import os
    import time

    time.sleep(seconds)
    return os.getpid()


def test_min_workers_stay_when_idle(make_executor):
    ex = make_executor(launcher=Local(), max_workers=2, min_workers=1, idle_timeout=0.5, heartbeat=HEARTBEAT)
    wait_for(lambda: ex.summary().launches["workers"] == 1, 30, "min_workers launched with no work")
    list(ex.map(nap, [0.5] * 4))
    wait_for(lambda: ex.summary().launches["retired"] >= 1, 20, "the extra worker retired")
    time.sleep(1.5)
    assert ex.summary().launches["workers"] == 1


def test_bursts_with_short_gaps_do_not_churn_workers(make_executor):
    """Work that comes in bursts, with gaps shorter than idle_timeout, keeps its workers."""
    ex = make_executor(launcher=Local(), max_workers=2, idle_timeout=3.0, heartbeat=HEARTBEAT)
    for _ in range(5):
        list(ex.map(nap, [0.2] * 4))
        time.sleep(1.0)
    s = ex.summary().launches
    assert s["launched"] == 2 and s["retired"] == 0, s


def test_initializer_runs_in_launched_workers(make_executor, tmp_path):
    ex = make_executor(launcher=Local(), max_workers=1, initializer=_set_flag, initargs=("ready",),
                       heartbeat=HEARTBEAT)
    assert ex.submit(_get_flag).result(timeout=60) == "ready"


_FLAG = None


def _set_flag(value):
    global _FLAG
    _FLAG = value


def _get_flag():
    return _FLAG


def test_a_launcher_that_cannot_start_anything_fails_the_futures_with_launch_error(make_executor, tmp_path):
    ex = make_executor(launcher=Local(python=str(tmp_path / "no-such-python")), max_workers=2, heartbeat=HEARTBEAT)
    fut = ex.submit(pow, 2, 2)
    with pytest.raises(corral.LaunchError, match="could not run .*no-such-python"):
        fut.result(timeout=60)
    s = ex.summary()
    assert s.launches["launch_failures"] >= 3
    assert "launch failure" in str(s)


def test_a_worker_that_never_connects_times_out_and_says_where_it_was_to_dial(make_executor, tmp_path):
    """A launched job that runs but never reaches the broker is a failed launch after launch_timeout."""
    silent = tmp_path / "silent-python"
    silent.write_text("#!/bin/sh\necho 'stuck before dialling' >&2\nexec sleep 60\n")
    silent.chmod(silent.stat().st_mode | stat.S_IXUSR)
    ex = make_executor(launcher=Local(python=str(silent)), max_workers=1, launch_timeout=1.0, heartbeat=HEARTBEAT)
    fut = ex.submit(pow, 2, 2)
    with pytest.raises(corral.LaunchError) as info:
        fut.result(timeout=90)
    message = str(info.value)
    assert "did not reach the broker at tcp://127.0.0.1:" in message and "within 1 s" in message


def test_tasks_max_and_wall_time_replace_workers_and_lose_nothing(make_executor):
    ex = make_executor(launcher=Local(), max_workers=2, tasks_max=2, heartbeat=HEARTBEAT).options(retries=0)
    assert list(ex.map(nap, [0.1] * 8)) == [0.1] * 8
    assert ex._executor.summary().launches["launched"] >= 4


def test_wall_time_shorter_than_the_work_loses_no_task(make_executor):
    """Each worker lives 4 s (it stops taking tasks after 2); tasks of 0.7 s with retries=0 all complete."""
    ex = make_executor(launcher=Local(), max_workers=2, wall_time=4.0, heartbeat=HEARTBEAT)
    results = list(ex.options(retries=0).map(nap, [0.7] * 12))
    assert results == [0.7] * 12
    s = ex.summary()
    assert s.launches["launched"] > 2
    left = {w.get("left") for w in s}
    assert "wall_time" in left, s


def test_shutdown_stops_every_launched_worker(make_executor):
    ex = make_executor(launcher=Local(), max_workers=2, min_workers=2, heartbeat=HEARTBEAT)
    pids = {w["pid"] for w in wait_for(lambda: len(ex.summary()) == 2 and ex.summary(), 30, "two workers")}
    ex.shutdown()
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in pids), 15, "launched workers gone after shutdown")


CLIENT = textwrap.dedent("""
    import sys, time, corral
    from corral.launchers import Local
    ex = corral.Executor(launcher=Local(), max_workers=2, min_workers=2, heartbeat=0.5)
    while len(ex.summary()) < 2:
        time.sleep(0.1)
    print(" ".join(str(w["pid"]) for w in ex.summary()), flush=True)
    time.sleep(600)
""")


def test_launched_workers_leave_when_their_client_is_killed(tmp_path):
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        family = [psutil.Process(p) for p in pids]
        family += [parent for p in family for parent in [p.parent()] if parent and parent.pid != client.pid]
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    # heartbeat 0.5 x liveness 3: the workers hear nothing for 1.5 s and leave, and their `corral worker`.
    gone, alive = psutil.wait_procs(family, timeout=20)
    for proc in alive:
        proc.kill()
    assert not alive, [p.pid for p in alive]


def test_a_launched_worker_that_cannot_reach_its_broker_says_why(tmp_path):
    """It gives up after --broker-timeout, saying the address it dialled and why (here: refused)."""
    import zmq

    from corral.launchers import document
    from helpers import corral_cmd, free_port

    broker_public, _ = zmq.curve_keypair()
    public, secret = zmq.curve_keypair()
    address = f"tcp://127.0.0.1:{free_port()}"
    doc = document.make(address, broker_public, "local-1", public, secret)
    done = subprocess.run(corral_cmd("worker", "-", "--processes", "1", "--broker-timeout", "1"), input=doc,
                          capture_output=True, timeout=60)
    said = done.stderr.decode()
    assert done.returncode == 0, said
    assert f"never reached the broker at {address}: connection refused" in said, said
    assert secret.decode() not in said


def test_interface_and_advertise_choose_the_address_workers_dial(make_executor):
    from helpers import free_port

    ex = make_executor(launcher=Local(), max_workers=1, interface="lo", heartbeat=HEARTBEAT)
    assert ex.worker_address.startswith("tcp://127.0.0.1:")
    assert ex.submit(pow, 2, 3).result(timeout=60) == 8
    port = free_port()
    ex2 = make_executor(launcher=Local(), max_workers=1, advertise=f"127.0.0.1:{port}", heartbeat=HEARTBEAT)
    assert ex2.worker_address == f"tcp://127.0.0.1:{port}"
    assert ex2.submit(pow, 2, 4).result(timeout=60) == 16


def test_a_third_party_launcher_is_found_through_its_entry_point(tmp_path):
    """``corral.launchers.get`` finds a launcher a package names in the ``corral.launchers`` group."""
    from corral.launchers import get

    assert get("slurm").__name__ == "Slurm" and get("SSH").__name__ == "SSH"
    with pytest.raises(ValueError, match="no launcher called 'pbs'; known: Local, SSH, Slurm, SGE"):
        get("pbs")
    (tmp_path / "corral_pbs.py").write_text(textwrap.dedent("""
        from corral.launchers import Launcher

        class PBS(Launcher):
            kind = "pbs"
            def launch(self, launch): raise NotImplementedError
            def status(self, job_ids): return {}
            def terminate(self, job_ids): pass
    """))
    info = tmp_path / "corral_pbs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: corral-pbs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[corral.launchers]\npbs = corral_pbs:PBS\n")
    probe = "import corral.launchers as l; cls = l.get('pbs'); print(cls.__name__, cls().kind)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.stdout.split() == ["PBS", "pbs"], done.stderr
