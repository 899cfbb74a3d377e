"""Network partitions: the broker, its workers and its clients on separate network namespaces.

The broker runs in the hub namespace (``netns.py``), workers and some clients in spokes
joined to it by veth pairs, and the link of a spoke is cut with nftables (every packet
dropped, or every TCP packet answered with a reset) or by taking its veth end down.  Each
test says which link it breaks, how, and for how long; the guarantees are docs/failures.md's:

- a partition shorter than ``heartbeat x liveness`` changes nothing: no task runs again;
- a longer one loses the worker: its tasks run elsewhere, the result of its run that
  finished during the cut never reaches the client, and the worker joins again by itself
  once the link heals;
- a client cut off from its broker sees ``BrokerLostError`` after ``heartbeat x liveness``,
  and the broker kills the client's running task.

Clients run ``netns_client.py`` in a namespace (every program that uses the namespaces'
addresses runs inside one) and answer the test through their pipes.  Tasks note each run
in a file (``start PID`` and ``end PID``), so the tests count runs.  Needs root, ``ip`` and
``nft`` (``.ci/netns-setup``); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

import netns
from helpers import corral_cmd, gone, read_line, wait_for

pytestmark = pytest.mark.network

PORT = 7700  # the hub's own: no other program listens in a namespace the test made
ADDRESS = f"tcp://{netns.HUB_IP}:{PORT}"
CLIENT = os.path.join(os.path.dirname(__file__), "netns_client.py")


# -- the cluster ----------------------------------------------------------------------


class Client:
    """A ``netns_client.py`` process in a namespace, driven one JSON command at a time."""

    def __init__(self, net: netns.Net, ns, connection: str, log):
        with open(log, "w") as err:
            self.proc = net.run_in(ns, [sys.executable, CLIENT, connection], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=err, text=True)
        self.log = log
        assert "ready" in json.loads(read_line(self.proc.stdout, 30)), self.stderr()

    def call(self, op: str, within: float = 30, **args) -> dict:
        """Send a command; its answer, within ``within`` seconds."""
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return json.loads(read_line(self.proc.stdout, within))

    def submit(self, key: str, path, seconds: float) -> None:
        assert self.call("submit", key=key, path=str(path), seconds=seconds) == {"ok": True}

    def wait(self, keys: list[str], timeout: float) -> dict:
        return self.call("wait", timeout + 10, keys=keys, timeout=timeout)["outcomes"]

    def quit(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError, OSError, ValueError):
                self.call("quit", 10)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stderr(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class Cluster:
    """A broker in the hub of ``net``; workers and clients in spokes (or the hub), started on demand.
    Every program's stderr goes to a file in ``tmp``; ``logs()`` shows them when a test fails."""

    def __init__(self, net: netns.Net, tmp, *broker_args: str):
        self.net, self.tmp = net, tmp
        self.clients: list[Client] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self.broker_log = tmp / "broker.log"
        with open(self.broker_log, "w") as err:
            self.broker = net.run_in(net.hub, corral_cmd("broker", "--listen", ADDRESS, *broker_args), stderr=err)
        said = wait_for(lambda: "connection file " in self.broker_log.read_text() and self.broker_log.read_text(),
                        30, "the broker to listen")
        self.connection = said.split("connection file ", 1)[1].split(" (")[0]

    def worker(self, spoke: netns.Spoke, processes: int = 1) -> subprocess.Popen:
        with open(self.tmp / f"worker-{spoke.ns.rsplit('-', 1)[1]}.log", "w") as err:
            proc = self.net.run_in(spoke, corral_cmd("worker", self.connection, "--processes", str(processes)),
                                   stderr=err)
        self.workers[spoke.ns] = proc
        return proc

    def worker_log(self, spoke: netns.Spoke) -> str:
        return (self.tmp / f"worker-{spoke.ns.rsplit('-', 1)[1]}.log").read_text()

    def client(self, ns=None) -> Client:
        made = Client(self.net, ns or self.net.hub, self.connection, self.tmp / f"client-{len(self.clients)}.log")
        self.clients.append(made)
        return made

    def supervisors(self, spoke: netns.Spoke) -> list[int]:
        """The pids of the worker processes (supervisors) ``corral worker`` runs in ``spoke``."""
        try:
            return [p.pid for p in psutil.Process(self.workers[spoke.ns].pid).children()
                    if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return []

    def alive_in_summary(self, client: Client) -> set[int]:
        reply = client.call("summary", 15)
        return {row["pid"] for row in reply.get("workers", ()) if row["alive"]}

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.tmp.glob("*.log")))

    def close(self) -> None:
        for client in self.clients:
            client.quit()
        # The workers, then the broker, then anything else: netns.Net.close() (by pid).


@pytest.fixture
def net(request):
    """A hub namespace (add spokes with ``net.add``), gone with all it holds when the test ends;
    the test is skipped where namespaces cannot be made (not root, no ``ip`` or ``nft``)."""
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    made = netns.Net(request.node.name.split("[")[0][-6:])
    try:
        yield made
    finally:
        names = list(made.names)
        made.close()  # raises if a namespace stays
        assert not (netns.namespaces() & set(names))


@pytest.fixture
def make_cluster(net, tmp_path):
    made: list[Cluster] = []

    def make(*broker_args: str) -> Cluster:
        made.append(Cluster(net, tmp_path, *broker_args))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def task_pid(path) -> int:
    """The pid of the task process that began the (first) run noted in ``path``."""
    return int(wait_for(lambda: lines(path), 30, f"a run noted in {path.name}")[0].split()[1])


def supervisor_of(pid: int) -> int:
    return psutil.Process(pid).ppid()


# -- a short partition: nothing happens ------------------------------------------------


class Noticed(AssertionError):
    """A partition shorter than the liveness window was noticed: a task ran again, a peer was
    declared lost, or a future failed."""


# A reset ends the TCP connection: ZeroMQ dials again, and the broker's ROUTER gives the new
# connection a new identity, which the broker does not know: the worker or the client resumes
# its session on it (broker/sessions.py).
SHORT_MODES = ["drop", "reset", "down"]


@pytest.mark.parametrize("mode", SHORT_MODES)
def test_a_partition_shorter_than_the_liveness_reruns_and_loses_nothing(net, make_cluster, tmp_path, mode):
    """Breaks: the workers' link for 1 s, with two tasks running and four queued, under a
    liveness window of 4 s (heartbeat 0.5 s x 8).  Every task runs exactly once, on the same
    worker processes, and no one is declared lost."""
    cluster = make_cluster("--heartbeat", "0.5", "--liveness", "8")
    spoke = net.add("w")
    cluster.worker(spoke, processes=2)
    client = cluster.client()
    wait_for(lambda: len(cluster.alive_in_summary(client)) == 2, 30, "two workers to join")
    paths = {f"t{i}": tmp_path / f"t{i}.runs" for i in range(6)}
    for key, path in paths.items():
        client.submit(key, path, 1.0)
    wait_for(lambda: sum(1 for p in paths.values() if lines(p)) == 2, 30, "two tasks to start")
    net.cut(spoke, mode)
    cut_at = time.monotonic()
    time.sleep(1.0)
    net.heal(spoke)
    outcomes = client.wait(list(paths), 30)
    settled = time.monotonic() - cut_at
    print(f"{mode}: all six tasks done {settled:.1f} s after the cut")
    # Nothing lost, nothing twice: each future has the result of a run that ended.
    assert all("result" in o for o in outcomes.values()), (outcomes, cluster.logs())
    for key, path in paths.items():
        assert f"end {outcomes[key]['result']}" in lines(path), (key, lines(path), cluster.logs())
    assert client.call("results")["duplicates"] == {}
    # Nothing happened at all.
    runs = {key: lines(path) for key, path in paths.items()}
    again = {key: noted for key, noted in runs.items() if len(noted) != 2}
    summary = client.call("summary")["workers"]
    said = cluster.worker_log(spoke)
    if again or not all(row["alive"] for row in summary) or "no longer knows" in said or "went silent" in said:
        raise Noticed(f"tasks that ran more than once: {again}; the broker's workers: {summary}; "
                      f"the workers' log:\n{said}")
    assert sum(row["tasks"] for row in summary) == 6 and sum(row["errors"] for row in summary) == 0, summary


@pytest.mark.parametrize("mode", SHORT_MODES)
def test_a_short_partition_of_a_clients_link_changes_nothing(net, make_cluster, tmp_path, mode):
    """Breaks: the link of a client (in a namespace of its own) for 1 s, with two tasks
    running, under a liveness window of 4 s.  Both results arrive; each task ran once."""
    cluster = make_cluster("--heartbeat", "0.5", "--liveness", "8")
    workers, away = net.add("w"), net.add("c")
    cluster.worker(workers, processes=2)
    client = cluster.client(away)
    wait_for(lambda: len(cluster.alive_in_summary(client)) == 2, 30, "two workers to join")
    paths = {f"t{i}": tmp_path / f"t{i}.runs" for i in range(2)}
    for key, path in paths.items():
        client.submit(key, path, 2.0)
    wait_for(lambda: all(lines(p) for p in paths.values()), 30, "the tasks to start")
    net.cut(away, mode)
    time.sleep(1.0)
    net.heal(away)
    healed_at = time.monotonic()
    outcomes = client.wait(list(paths), 30)
    print(f"{mode}: the futures ended {time.monotonic() - healed_at:.1f} s after the link healed")
    assert all("result" in o or o.get("error") == "BrokerLostError" for o in outcomes.values()), outcomes
    assert client.call("results")["duplicates"] == {}
    if not all("result" in o for o in outcomes.values()):
        raise Noticed(f"the client's futures: {outcomes}; its tasks' runs: {[lines(p) for p in paths.values()]}; "
                      f"the broker's log:\n{cluster.broker_log.read_text()}")
    for key, path in paths.items():
        pid = outcomes[key]["result"]
        assert lines(path) == [f"start {pid}", f"end {pid}"], (key, lines(path), cluster.logs())
    assert "went silent" not in cluster.broker_log.read_text(), cluster.logs()


# -- a long partition: the worker is lost, then joins again ------------------------------


@pytest.mark.parametrize("mode", netns.MODES)
def test_a_long_partition_moves_the_task_drops_the_late_result_and_the_worker_rejoins(
        net, make_cluster, tmp_path, mode):
    """Breaks: the link of the worker running a 2 s task, 1.5 s into it, for 4.5 s, under a
    liveness window of 2 s (heartbeat 0.2 s x 10).  The task runs again on the other worker;
    the first run ends during the cut, but only the second run's result reaches the client,
    once; the cut-off worker joins again by itself after the link heals, and runs tasks."""
    cluster = make_cluster("--heartbeat", "0.2", "--liveness", "10")
    spokes = [net.add("w1"), net.add("w2")]
    for spoke in spokes:
        cluster.worker(spoke)
    client = cluster.client()
    wait_for(lambda: len(cluster.alive_in_summary(client)) == 2, 30, "two workers to join")
    path = tmp_path / "a.runs"
    client.submit("a", path, 2.0)
    first = task_pid(path)
    began = time.monotonic()
    supervisor = supervisor_of(first)
    cut_off = next(s for s in spokes if supervisor in cluster.supervisors(s))
    other = next(s for s in spokes if s is not cut_off)
    time.sleep(max(0.0, began + 1.5 - time.monotonic()))
    net.cut(cut_off, mode)
    cut_at = time.monotonic()
    try:
        # The other worker takes the task over after the liveness window.
        moved = wait_for(lambda: len(lines(path)) >= 2 and [line for line in lines(path)
                                                           if line.startswith("start")][1:], 15,
                         "the task to start again")
        moved_after = time.monotonic() - cut_at
        second = int(moved[0].split()[1])
        assert supervisor_of(second) in cluster.supervisors(other)
        time.sleep(max(0.0, cut_at + 4.5 - time.monotonic()))
    finally:
        net.heal(cut_off)
    healed_at = time.monotonic()
    outcome = client.wait(["a"], 15)["a"]
    assert outcome == {"result": second}, (outcome, cluster.logs())
    # The first run ended during the cut (its result was sent into it), the second after.
    assert sorted(lines(path)) == sorted([f"start {first}", f"end {first}", f"start {second}", f"end {second}"])
    assert client.call("results")["duplicates"] == {}
    wait_for(lambda: supervisor in cluster.alive_in_summary(client), 20, "the cut-off worker to join again")
    rejoined_after = time.monotonic() - healed_at
    # The broker counts it alive on its HELLO; the worker says it joined once the WELCOME is read.
    wait_for(lambda: cluster.worker_log(cut_off).count("joined the broker") == 2, 10, "the worker to say it joined")
    # With the other worker gone, the next task must run on the one that was cut off.
    cluster.workers[other.ns].send_signal(signal.SIGTERM)
    cluster.workers[other.ns].wait(15)
    again = tmp_path / "b.runs"
    client.submit("b", again, 0.0)
    assert "result" in client.wait(["b"], 20)["b"], cluster.logs()
    assert supervisor_of(task_pid(again)) == supervisor
    print(f"{mode}: the task started again {moved_after:.1f} s after the cut; the worker joined again "
          f"{rejoined_after:.1f} s after the link healed")


# -- a client cut off from its broker ---------------------------------------------------


@pytest.mark.parametrize("mode", netns.MODES)
def test_a_client_cut_off_gets_broker_lost_and_the_broker_kills_its_task(net, make_cluster, tmp_path, mode):
    """Breaks: the link of a client (in a namespace of its own) whose task runs, under a
    liveness window of 1 s.  Its future fails with BrokerLostError after that window; the
    broker kills the task; after the link heals, the same executor runs tasks again."""
    cluster = make_cluster("--heartbeat", "0.2", "--liveness", "5")
    workers, away = net.add("w"), net.add("c")
    cluster.worker(workers)
    client = cluster.client(away)
    wait_for(lambda: len(cluster.alive_in_summary(client)) == 1, 30, "the worker to join")
    path = tmp_path / "a.runs"
    client.submit("a", path, 60)
    pid = task_pid(path)
    net.cut(away, mode)
    cut_at = time.monotonic()
    try:
        outcome = client.wait(["a"], 15)["a"]
        failed_after = time.monotonic() - cut_at
        assert outcome.get("error") == "BrokerLostError", (outcome, cluster.logs())
        assert "has not answered" in outcome["message"]
        assert failed_after < 5, f"took {failed_after:.1f} s"
        wait_for(lambda: gone(pid), 15, "the cut-off client's task to be killed")
        killed_after = time.monotonic() - cut_at
        assert "went silent; dropping its tasks" in cluster.broker_log.read_text(), cluster.logs()
    finally:
        net.heal(away)
    assert lines(path) == [f"start {pid}"]  # killed, not finished, and not run again
    # Once the broker answers the executor again (a task submitted before that fails as the first
    # did, if the broker stays silent for what is left of the liveness window since that failure):
    wait_for(lambda: "workers" in client.call("summary", 15, timeout=1), 15, "the client to reach the broker again")
    client.submit("b", tmp_path / "b.runs", 0.0)
    assert "result" in client.wait(["b"], 20)["b"], cluster.logs()
    print(f"{mode}: BrokerLostError {failed_after:.1f} s after the cut, the task killed after {killed_after:.1f} s")


# -- a soak: thousands of tasks, killed workers, cut links ---------------------------------

SOAK_SECONDS = 75  # tasks are submitted for this long, while the chaos goes on
SOAK_DRAIN = 40  # then the last must finish within this, every link healed


@pytest.mark.timeout(SOAK_SECONDS + SOAK_DRAIN + 90)
def test_soak_across_namespaces_with_killed_workers_and_cut_links(net, make_cluster):
    """Breaks, for 75 s, at random every 0.3 to 1.2 s: SIGKILL of a worker process or of a task
    process (``corral worker`` replaces them), or a cut of a worker namespace's link (drop,
    reset or down) for 0.2 to 3 s, under a liveness window of 1 s (heartbeat 0.2 s x 5).  Two
    namespaces of two worker processes each; the client beside the broker submits short tasks
    all along, with 100 retries each.  Every result must be right, none lost, none twice."""
    cluster = make_cluster("--heartbeat", "0.2", "--liveness", "5")
    spokes = [net.add("w1"), net.add("w2")]
    for spoke in spokes:
        cluster.worker(spoke, processes=2)
    client = cluster.client()
    wait_for(lambda: len(cluster.alive_in_summary(client)) == 4, 30, "four workers to join")
    rng = random.Random(os.environ.get("CORRAL_SOAK_SEED") or time.time_ns())
    client.proc.stdin.write(json.dumps({"op": "soak", "seconds": SOAK_SECONDS, "window": 200, "retries": 100,
                                        "drain": SOAK_DRAIN}) + "\n")
    client.proc.stdin.flush()
    heal_at: dict[str, float] = {}
    events = {"supervisor killed": 0, "task process killed": 0, **{f"cut ({m})": 0 for m in netns.MODES}}
    started = time.monotonic()
    try:
        while time.monotonic() - started < SOAK_SECONDS - 3:
            time.sleep(rng.uniform(0.3, 1.2))
            now = time.monotonic()
            for spoke in spokes:
                if spoke.cut and heal_at[spoke.ns] <= now:
                    net.heal(spoke)
            action = rng.random()
            if action < 0.5:
                spoke = rng.choice(spokes)
                supervisors = cluster.supervisors(spoke)
                victims = supervisors if action < 0.25 else [
                    child.pid for pid in supervisors for child in _children(pid)]
                if victims:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(rng.choice(victims), signal.SIGKILL)
                    events["supervisor killed" if action < 0.25 else "task process killed"] += 1
            else:
                uncut = [s for s in spokes if not s.cut]
                if uncut:
                    spoke, mode = rng.choice(uncut), rng.choice(netns.MODES)
                    net.cut(spoke, mode)
                    heal_at[spoke.ns] = now + rng.uniform(0.2, 3.0)
                    events[f"cut ({mode})"] += 1
    finally:
        net.heal()
    report = json.loads(read_line(client.proc.stdout, SOAK_SECONDS + SOAK_DRAIN + 30))
    workers_said = "".join(cluster.worker_log(spoke) for spoke in spokes)
    print(f"soak: {report}; chaos: {events}; worker processes found the broker silent "
          f"{workers_said.count('went silent')} times, unknown to it {workers_said.count('no longer knows')} times, "
          f"and joined it {workers_said.count('joined the broker')} times")
    assert report["unfinished"] == 0, (report, cluster.logs())
    assert report["failed"] == {} and report["wrong"] == [], (report, cluster.logs())
    assert report["right"] == report["submitted"] >= 1000, report
    assert report["duplicates"] == {}, report
    assert report["entries"] == report["submitted"], report
    assert cluster.broker.poll() is None, cluster.logs()


def _children(pid: int) -> list:
    try:
        return [p for p in psutil.Process(pid).children() if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []
