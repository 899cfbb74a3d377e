"""Executors that launch their own workers, end to end, through the real SSH server, SLURM and Grid Engine.

One set of tests, run with each launcher (``ssh``: a test sshd on loopback; ``slurm``; ``sge``: the
daemons of .ci/slurm-setup and .ci/sge-setup), each skipped, saying why, where its infrastructure is
missing; each parametrization carries its marker, so that ``-m slurm`` selects the SLURM ones.

Every executor advertises 127.0.0.1 to its workers.  The launchers note every job they start
(launched_support.recording), and each test ends by cancelling those jobs (even on failure) and
checking, within bounds, that squeue/qstat list none of them and that no ssh or worker process of
them is left.  test_scaling.py runs the same paths with the Local launcher.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import corral
import launched_support as support
import sshd as server
from clusters import sge_missing, slurm_missing
from conftest import _shut_down
from helpers import read_line
from sshd import sshd, sshd_netns  # noqa: F401 - fixtures

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
HEARTBEAT = 0.5  # the executors' heartbeat: a worker leaves a silent broker after HEARTBEAT x liveness (3)
BOUND = 60.0  # seconds: every wait for workers, results and the end of jobs
LEAVE_BOUND = 45.0  # seconds for jobs and processes to be gone: KillWait 5 s, qdel, ssh's grace


class Cluster:
    """One launcher kind for a test: its launchers (which note their jobs), its executors, and the
    cleanup and the checks that nothing is left, at the test's end."""

    def __init__(self, kind: str, sshd=None):  # noqa: F811
        self.kind = kind
        self.sshd = sshd
        self.launchers: list = []
        self.executors: list[corral.Executor] = []
        self.extra_ids: list[str] = []  # jobs of other processes (a client the test started)

    def launcher(self, **kwargs):
        if self.kind == "slurm":
            made = support.RecordingSlurm(**kwargs)
        elif self.kind == "sge":
            made = support.RecordingSGE(**kwargs)
        else:
            kwargs.setdefault("hosts", [self.sshd.host])
            made = support.RecordingSSH(ssh_options=self.sshd.ssh_options, connect_timeout=3, **kwargs)
        self.launchers.append(made)
        return made

    def failing_launcher(self):
        """A launcher whose every launch fails, and the words of the failure."""
        if self.kind == "slurm":
            return self.launcher(partition="no-such-partition"), "invalid partition specified"
        if self.kind == "sge":
            return self.launcher(queue="no-such.q"), 'unknown queue "no-such.q"'
        return self.launcher(hosts=[server.CLOSED_HOST]), "Connection refused"

    def executor(self, launcher=None, **kwargs) -> corral.Executor:
        kwargs.setdefault("heartbeat", HEARTBEAT)
        kwargs.setdefault("advertise", "127.0.0.1")
        ex = corral.Executor(launcher=launcher or self.launcher(), **kwargs)
        self.executors.append(ex)
        return ex

    # -- what a test looks at -------------------------------------------------------------

    def ids(self) -> list[str]:
        return [job for launcher in self.launchers for job in launcher.ids] + self.extra_ids

    def listed(self, ids=None) -> set[str]:
        """Those of the jobs that the resource manager still lists (SSH: whose ssh process lives)."""
        ids = self.ids() if ids is None else list(ids)
        if self.kind == "slurm":
            return support.queued_slurm(ids)
        if self.kind == "sge":
            return support.queued_sge(ids)
        return {job for job in ids if support.corral_processes("ssh", [job])}

    def processes(self, ids=None) -> list[str]:
        """The ssh and worker processes of the jobs still there."""
        ids = self.ids() if ids is None else list(ids)
        return support.corral_processes(self.kind, ids, self.sshd.pid if self.sshd else None)

    def assert_all_gone(self, ids=None, bound: float = LEAVE_BOUND) -> None:
        """Within ``bound`` s: no job listed, no ssh or worker process left."""
        wait_for(lambda: not self.listed(ids) and not self.processes(ids), bound,
                 lambda: f"jobs gone: still listed {sorted(self.listed(ids))}, processes {self.processes(ids)}")

    def worker_pids(self, ex: corral.Executor) -> list[int]:
        return [w["pid"] for w in ex.summary() if w["alive"]]

    def job_of_pid(self, ex: corral.Executor, pid: int) -> str | None:
        """The job id of the launched worker that runs the process ``pid`` (a task's process)."""
        broker = ex._broker
        by_pid = {w.pid: ident for ident, w in list(broker.workers.items())}
        try:
            chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
        except psutil.Error:
            return None
        for proc in chain:
            if proc.pid in by_pid:
                launch = broker.fleet.by_ident.get(by_pid[proc.pid])
                return launch.job if launch else None
        return None

    def cancel(self, job: str) -> None:
        """End a job the way its resource manager's user would: scancel (SIGTERM, then SIGKILL after
        KillWait), qdel (SIGKILL), or SIGKILL of the local ssh process."""
        if self.kind == "slurm":
            subprocess.run(["scancel", job], check=True, timeout=20, capture_output=True)
        elif self.kind == "sge":
            subprocess.run(["qdel", job], check=True, timeout=20, capture_output=True)
        else:
            os.kill(support.ssh_pid(job), signal.SIGKILL)

    # -- the end of a test ------------------------------------------------------------------

    def close(self) -> list[str]:
        """Shut the executors down, cancel every job still listed, wait (bounded); what is left."""
        for ex in self.executors:
            _shut_down(ex)
        ids = self.ids()
        left = self.listed(ids)
        if left and self.kind == "slurm":
            subprocess.run(["scancel", *left], timeout=20, capture_output=True)
        elif left and self.kind == "sge":
            subprocess.run(["qdel", *left], timeout=20, capture_output=True)
        elif left:
            for job in left:
                try:
                    os.kill(support.ssh_pid(job), signal.SIGKILL)
                except OSError:
                    pass
        deadline = time.monotonic() + LEAVE_BOUND
        while (self.listed(ids) or self.processes(ids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        problems = [f"job still listed: {job}" for job in sorted(self.listed(ids))]
        problems += [f"process left: {line}" for line in self.processes(ids)]
        for launcher in self.launchers:
            launcher.close()
        return problems


KINDS = [pytest.param("ssh", marks=pytest.mark.ssh), pytest.param("slurm", marks=pytest.mark.slurm),
         pytest.param("sge", marks=pytest.mark.sge)]


@pytest.fixture(scope="module")
def loopback_sshd(request):
    """The module's test sshd, where one can run (else None), started before any test's leak check."""
    return request.getfixturevalue("sshd") if server.unavailable() is None else None


@pytest.fixture(params=KINDS)
def cluster(request, loopback_sshd):
    kind = request.param
    reason = {"slurm": slurm_missing, "sge": sge_missing, "ssh": server.unavailable}[kind]()
    if reason:
        pytest.skip(reason)
    made = Cluster(kind, loopback_sshd)
    yield made
    problems = made.close()
    assert not problems, "left after the test:\n  " + "\n  ".join(problems)


def wait_for(predicate, timeout: float, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.1)


def launches(ex: corral.Executor) -> dict:
    return ex.summary().launches


# -- the tests --------------------------------------------------------------------------------


def test_scales_from_zero_to_n_and_back_to_zero(cluster, tmp_path):
    """No work, no workers; four tasks, four workers; the work done, none again, their jobs gone."""
    ex = cluster.executor(max_workers=4, idle_timeout=1.0)
    time.sleep(1.0)
    assert launches(ex)["launched"] == 0 and launches(ex)["workers"] == 0
    release = str(tmp_path / "release")
    futures = [ex.submit(support.wait_release, release, BOUND) for _ in range(4)]
    wait_for(lambda: launches(ex)["workers"] == 4, BOUND, lambda: f"four workers connected: {launches(ex)}")
    open(release, "w").close()
    pids = [f.result(timeout=BOUND) for f in futures]
    assert len(pids) == 4
    s = launches(ex)
    assert s["launched"] == 4 and s["connected"] == 4 and s["launch_failures"] == 0, s
    wait_for(lambda: launches(ex)["workers"] == 0, BOUND, lambda: f"idle workers retired: {launches(ex)}")
    assert launches(ex)["retired"] == 4
    ids = cluster.ids()
    assert len(ids) == 4, ids
    cluster.assert_all_gone(ids)
    # Work again: workers come back.
    assert ex.submit(pow, 2, 5).result(timeout=BOUND) == 32


def test_cpu_bound_map_uses_the_workers(cluster):
    """A map of 48 CPU-bound tasks (about 0.1-0.2 s each: longer than a launch takes) is shared by the
    workers it makes the executor launch."""
    ex = cluster.executor(max_workers=4)
    sizes = [2_000_000 + i for i in range(48)]
    expected = [(n - 1) * n * (2 * n - 1) // 6 for n in sizes]
    assert list(ex.map(support.squares, sizes)) == expected
    s = ex.summary()
    busy = [w for w in s if w["tasks"] > 0]
    assert len(busy) >= 2, str(s)
    assert sum(w["tasks"] for w in s) == len(sizes), str(s)
    assert s.launches["launch_failures"] == 0, s.launches


@pytest.mark.timeout(300)
def test_wall_time_shorter_than_the_work_loses_no_task(cluster):
    """Each worker lives 4 s (it stops taking tasks after 2); 12 tasks of 0.7 s, retries=0, all complete
    once; the workers are replaced as they go.  Under SLURM the jobs have a time limit of their own too
    (a minute: SLURM's least), longer than the workers' wall time."""
    launcher = cluster.launcher(walltime=60) if cluster.kind == "slurm" else None
    ex = cluster.executor(launcher, max_workers=2, wall_time=4.0)
    results = list(ex.options(retries=0).map(support.nap, [0.7] * 12))
    assert results == [0.7] * 12
    s = ex.summary()
    assert s.launches["launched"] > 2, s.launches
    assert sum(w["tasks"] for w in s) == 12, str(s)
    assert "wall_time" in {w.get("left") for w in s}, [w.get("left") for w in s]


@pytest.mark.parametrize("cluster", [KINDS[1], KINDS[2]], indirect=True)
@pytest.mark.timeout(300)
def test_a_worker_learns_its_jobs_time_limit_and_leaves_before_it(cluster):
    """A worker in a batch job asks its resource manager how long its job has left and tells the
    broker: with no wall_time (``corral worker --wall-time auto``; Grid Engine here), and with a
    wall_time longer than the job's limit, which bounds it (SLURM here).  Under Grid Engine, with a
    limit of 10 s, the work outlasts the workers, which leave before their jobs' end; retries=0,
    nothing is lost."""
    limit = 60 if cluster.kind == "slurm" else 10
    longer = {"wall_time": 600} if cluster.kind == "slurm" else {}
    ex = cluster.executor(cluster.launcher(walltime=limit), max_workers=2, **longer)
    assert ex.submit(pow, 2, 3).result(timeout=BOUND) == 8
    ends = [w["ends_in"] for w in ex.summary() if w["alive"]]
    assert ends and all(ends) and all(limit - 15 < end <= limit for end in ends), ends
    if cluster.kind == "slurm":
        return  # a minute is SLURM's least: the rest is test_wall_time_shorter_than_the_work_loses_no_task's
    results = list(ex.options(retries=0).map(support.nap, [0.5] * 40))
    assert results == [0.5] * 40
    s = ex.summary()
    assert s.launches["launched"] > 2, s.launches
    assert "wall_time" in {w.get("left") for w in s}, [w.get("left") for w in s]
    assert sum(w["tasks"] for w in s) == 41, str(s)


@pytest.mark.timeout(300)
def test_a_job_cancelled_mid_task_loses_nothing(cluster, tmp_path):
    """The job of the worker running a long task is cancelled: the task completes, once, elsewhere.
    scancel (SIGTERM first) and the end of an ssh lifeline make the worker drain: the task is cut off
    and runs again at no attempt's cost, so retries=0; qdel is SIGKILL: the task counts an attempt."""
    ex = cluster.executor(max_workers=2)
    runner = ex.options(retries=0) if cluster.kind != "sge" else ex
    path = str(tmp_path / "runs")
    fut = runner.submit(support.first_run_long, path, 120.0)
    wait_for(lambda: os.path.exists(path), BOUND, "the task to start")
    first = int(open(path).read().split()[0])
    job = wait_for(lambda: cluster.job_of_pid(ex, first), 10, "the job of the task's worker")
    cluster.cancel(job)
    second = fut.result(timeout=BOUND)
    runs = [int(line) for line in open(path).read().split()]
    assert runs == [first, second] and second != first, runs
    assert ex.submit(pow, 3, 2).result(timeout=BOUND) == 9
    wait_for(lambda: job not in cluster.listed([job]), LEAVE_BOUND, f"the cancelled job {job} gone")


def test_a_launch_that_fails_fails_the_future_in_the_resource_managers_words(cluster):
    launcher, words = cluster.failing_launcher()
    ex = cluster.executor(launcher, max_workers=2)
    fut = ex.submit(pow, 2, 2)
    with pytest.raises(corral.LaunchError) as info:
        fut.result(timeout=BOUND)
    assert words in str(info.value), str(info.value)
    s = launches(ex)
    assert s["launch_failures"] >= 3 and s["workers"] == 0, s


def test_shutdown_leaves_nothing(cluster):
    ex = cluster.executor(max_workers=3, min_workers=3)
    wait_for(lambda: launches(ex)["workers"] == 3, BOUND, lambda: f"min_workers connected: {launches(ex)}")
    ids = cluster.ids()
    assert len(ids) == 3 and cluster.listed(ids) == set(ids), ids
    assert len(cluster.processes(ids)) >= 3
    ex.shutdown()
    cluster.assert_all_gone(ids)


CLIENT = textwrap.dedent("""
    import sys, time, corral
    import launched_support as support
    kind, ids_file = sys.argv[1], sys.argv[2]
    if kind == "ssh":
        launcher = support.RecordingSSH([sys.argv[3]], ssh_options=sys.argv[4:], connect_timeout=3,
                                        ids_file=ids_file)
    else:
        launcher = {"slurm": support.RecordingSlurm, "sge": support.RecordingSGE}[kind](ids_file=ids_file)
    ex = corral.Executor(launcher=launcher, max_workers=2, min_workers=2, heartbeat=0.5, advertise="127.0.0.1")
    deadline = time.monotonic() + 60
    while ex.summary().launches["workers"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(" ".join(str(w["pid"]) for w in ex.summary() if w["alive"]), flush=True)
    time.sleep(600)
""")


@pytest.mark.timeout(300)
def test_client_sigkill_leaves_nothing(cluster, tmp_path):
    """A client with two launched workers is SIGKILLed: they hear nothing from its broker for
    heartbeat x liveness (1.5 s) and leave; their jobs end; no worker or ssh process is left."""
    ids_file = tmp_path / "ids"
    argv = [sys.executable, "-c", CLIENT, cluster.kind, str(ids_file)]
    if cluster.kind == "ssh":
        argv += [cluster.sshd.host, *cluster.sshd.ssh_options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, HERE, *filter(None, [os.environ.get("PYTHONPATH")])])}
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = read_line(client.stdout, BOUND + 10)
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        client.stdout.close()
        if ids_file.exists():
            cluster.extra_ids += ids_file.read_text().split()
    ids = list(cluster.extra_ids)
    assert len(ids) == 2, ids
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=LEAVE_BOUND)
    assert not alive, f"workers still there after their client died: {alive}"
    cluster.assert_all_gone(ids)


NETNS_CLIENT = textwrap.dedent("""
    import json, sys, corral
    import launched_support as support
    host, options, advertise, ids_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    launcher = support.RecordingSSH([host], ssh_options=options, connect_timeout=3, ids_file=ids_file)
    with corral.Executor(launcher=launcher, max_workers=1, advertise=advertise, heartbeat=0.5) as ex:
        where = ex.submit(support.netns).result(timeout=60)
        print(json.dumps({"netns": where, "workers": [w["host"] for w in ex.summary()],
                          "launches": ex.summary().launches}), flush=True)
""")


@pytest.mark.ssh
def test_ssh_to_a_second_host_in_a_namespace(sshd_netns, tmp_path):  # noqa: F811
    """The client runs in one network namespace and advertises its address there; its worker is
    launched over SSH on the node namespace's sshd, dials back, and runs the task there."""
    node = sshd_netns
    ids_file = tmp_path / "ids"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, HERE, *filter(None, [os.environ.get("PYTHONPATH")])])}
    client = node.run_in_client([sys.executable, "-c", NETNS_CLIENT, node.host, json.dumps(node.ssh_options),
                                 node.client.ip, str(ids_file)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        out, err = client.communicate(timeout=BOUND + 30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate(timeout=10)
    ids = ids_file.read_text().split() if ids_file.exists() else []
    try:
        assert client.returncode == 0, err[-3000:]
        said = json.loads(out.strip().splitlines()[-1])
        assert said["netns"] == os.readlink(f"/proc/{node.pid}/ns/net") != os.readlink("/proc/self/ns/net"), said
        assert said["launches"]["connected"] == 1 and len(ids) == 1, said
    finally:
        wait_for(lambda: not support.corral_processes("ssh", ids, node.pid), LEAVE_BOUND,
                 lambda: f"the worker and its ssh gone: {support.corral_processes('ssh', ids, node.pid)}")
