"""The SSH launcher against a real sshd: on 127.0.0.1 (``sshd``), and on a second "host", a network
namespace reached from a client namespace (``sshd_netns``); see sshd.py.

In place of a worker, each launch runs ``ssh_remote.py``: it records the first line of its
standard input (the launch document), its ``CORRAL_TEST_*`` environment, working directory and
pid, then reads its standard input to the end (the worker's lifeline) and notes that end.  The
tests check that the document arrives whole and on no command line, that the environment and the
directory arrive, that ``terminate`` (and a killed ssh, and a dead connection) ends the remote
program through its standard input, and that ssh's failures reach ``status``'s detail in
bounded time.  Needs root and OpenSSH (``.ci/sshd-setup``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest

import corral
import sshd as server
from corral.launchers import SSH, JobState, LaunchFailed, WorkerLaunch
from corral.launchers import processes as ssh_module
from helpers import gone, read_line, wait_for
from sshd import sshd, sshd_netns  # noqa: F401 - fixtures

pytestmark = pytest.mark.ssh

HERE = os.path.dirname(os.path.abspath(__file__))
REMOTE = os.path.join(HERE, "ssh_remote.py")
LAUNCHER_CLIENT = os.path.join(HERE, "ssh_launcher_client.py")
EOF_S = 10.0  # seconds a remote program may take to see its standard input's end and exit
CONNECT_TIMEOUT = 3  # ssh's ConnectTimeout in these tests


def document() -> tuple[bytes, str]:
    """A launch document stand-in, one line, holding a fresh secret; (the document, the secret)."""
    secret = secrets.token_hex(16)
    return json.dumps({"corral": 1, "worker": {"secret": f"SECRET-{secret}"}}).encode() + b"\n", secret


def remote_launch(record, name: str = "ssh-1", env: dict | None = None, cwd: str | None = None,
                  stdin: bytes | None = None, extra: tuple[str, ...] = ()) -> WorkerLaunch:
    return WorkerLaunch(name=name, command=("python-on-the-node", REMOTE, str(record), *extra),
                        stdin=stdin if stdin is not None else document()[0], env=env or {}, cwd=cwd)


def read_record(path, timeout: float = 30) -> dict:
    wait_for(lambda: os.path.exists(path), timeout, f"the remote program to write {path}")
    with open(path) as f:
        return json.load(f)


def ssh_pid(job_id: str) -> int:
    return int(job_id.rsplit("/", 1)[1].split("~")[0])


def ended(launcher: SSH, job_id: str, timeout: float = 30):
    """The job's status once ENDED (AssertionError after ``timeout``)."""
    return wait_for(lambda: (st := launcher.status([job_id])[job_id]).state is JobState.ENDED and st,
                    timeout, f"{job_id} to end")


def on_argv(text: str) -> list[str]:
    """The command lines, of every process on this machine (zombies aside), that hold ``text``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        line = " ".join(proc.info["cmdline"] or [])
        if text in line:
            found.append(f"{proc.info['pid']}: {line[:200]}")
    return found


@pytest.fixture
def make_launcher():
    """SSH launchers that are closed when the test ends."""
    made: list[SSH] = []

    def make(*args, **kwargs) -> SSH:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
        made.append(SSH(*args, **kwargs))
        return made[-1]

    yield make
    for launcher in made:
        launcher.close()
    wait_for(lambda: not on_argv(REMOTE), EOF_S, "every remote program to leave")


# -- on loopback --------------------------------------------------------------------------------


def test_launch_delivers_document_env_and_cwd_and_terminate_ends_it(sshd, make_launcher, tmp_path):  # noqa: F811
    launcher = make_launcher([sshd.host], ssh_options=sshd.ssh_options)
    work = tmp_path / "work dir 'quoted' $HOME"
    work.mkdir()
    doc, secret = document()
    env = {"CORRAL_TEST_PLAIN": "1", "CORRAL_TEST_TRICKY": "a b 'c' \"d\" $HOME `true` ; exit 3 \\ *"}
    record = tmp_path / "record.json"
    started = time.monotonic()
    job = launcher.launch(remote_launch(record, env=env, cwd=str(work), stdin=doc))
    facts = read_record(record)
    print(f"launch to the remote program running: {time.monotonic() - started:.3f} s")
    assert job == f"{sshd.host}/{ssh_pid(job)}"
    assert facts["document"].encode() == doc
    assert facts["env"] == env
    assert facts["cwd"] == str(work)
    assert not on_argv(secret), "the launch document's secret is on a command line"
    assert launcher.status([job]) == {job: corral.launchers.JobStatus(JobState.RUNNING)}
    assert psutil.Process(facts["pid"]).cmdline()[1:] == [REMOTE, str(record)]  # the shell exec'd it

    started = time.monotonic()
    launcher.terminate([job])
    took = time.monotonic() - started
    assert took < ssh_module.GRACE_S, f"terminate took {took:.2f} s: the remote program missed its EOF"
    assert (tmp_path / "record.json.eof").read_text() == str(facts["pid"])  # it saw its stdin's end
    status = launcher.status([job])[job]
    assert status.state is JobState.ENDED
    assert status.detail.startswith("exit code 0 after terminate()"), status.detail
    assert gone(facts["pid"])
    launcher.terminate([job])  # idempotent
    launcher.terminate([job, "no-such-host/1"])
    assert launcher.status([job])[job] == status


def test_cwd_missing_on_the_node_runs_in_home(sshd, make_launcher, tmp_path):  # noqa: F811
    launcher = make_launcher([sshd.host], ssh_options=sshd.ssh_options)
    record = tmp_path / "record.json"
    job = launcher.launch(remote_launch(record, cwd=str(tmp_path / "not here")))
    assert read_record(record)["cwd"] == os.path.expanduser("~")
    launcher.terminate([job])
    assert launcher.status([job])[job].detail.startswith("exit code 0"), launcher.status([job])[job]


def test_killed_ssh_client_ends_remote_program(sshd, make_launcher, tmp_path):  # noqa: F811
    """SIGKILL of the local ssh: the kernel closes its TCP connection, sshd closes the session's
    pipes, and the remote program reads the end of its standard input."""
    launcher = make_launcher([sshd.host], ssh_options=sshd.ssh_options)
    record = tmp_path / "record.json"
    job = launcher.launch(remote_launch(record))
    remote = read_record(record)["pid"]
    started = time.monotonic()
    os.kill(ssh_pid(job), signal.SIGKILL)
    wait_for(lambda: (tmp_path / "record.json.eof").exists(), EOF_S, "the remote program to see EOF")
    wait_for(lambda: gone(remote), EOF_S, "the remote program to exit")
    print(f"SIGKILL of ssh to the remote program's EOF and exit: {time.monotonic() - started:.3f} s")
    status = ended(launcher, job)
    assert status.detail.startswith("its process was killed by SIGKILL"), status.detail
    launcher.terminate([job])  # an ended job: nothing to do
    assert launcher.status([job])[job].state is JobState.ENDED


def test_refused_connection_reaches_status(sshd, make_launcher, tmp_path):  # noqa: F811
    launcher = make_launcher([server.CLOSED_HOST], ssh_options=sshd.ssh_options)
    started = time.monotonic()
    job = launcher.launch(remote_launch(tmp_path / "record.json"))
    status = ended(launcher, job, CONNECT_TIMEOUT + 5)
    assert time.monotonic() - started < CONNECT_TIMEOUT + 5
    assert "exit code 255" in status.detail and "Connection refused" in status.detail, status.detail
    assert not (tmp_path / "record.json").exists()


def test_refused_key_reaches_status(sshd, make_launcher, tmp_path):  # noqa: F811
    launcher = make_launcher([server.STRANGER_HOST], ssh_options=sshd.ssh_options)
    started = time.monotonic()
    job = launcher.launch(remote_launch(tmp_path / "record.json"))
    status = ended(launcher, job, CONNECT_TIMEOUT + 5)
    assert time.monotonic() - started < CONNECT_TIMEOUT + 5
    assert "Permission denied (publickey)" in status.detail, status.detail


def test_remote_failures_reach_status(sshd, make_launcher, tmp_path):  # noqa: F811
    """A traceback of the remote Python, and an interpreter the node lacks, reach the detail."""
    launcher = make_launcher([sshd.host], ssh_options=sshd.ssh_options)
    broken = WorkerLaunch(name="ssh-1", command=("python", "-c", "import corral_no_such_module"), stdin=b"{}\n")
    status = ended(launcher, launcher.launch(broken))
    assert status.detail.startswith("exit code 1;"), status.detail
    assert "ModuleNotFoundError: No module named 'corral_no_such_module'" in status.detail, status.detail
    assert "Traceback (most recent call last)" in status.detail

    missing = make_launcher([sshd.host], ssh_options=sshd.ssh_options, python="/nonexistent/python3")
    status = ended(missing, missing.launch(broken))
    assert status.detail.startswith("exit code 127;"), status.detail
    assert "/nonexistent/python3" in status.detail and "No such file or directory" in status.detail, status.detail


def test_output_tail_is_bounded(sshd, make_launcher):  # noqa: F811
    launcher = make_launcher([sshd.host], ssh_options=sshd.ssh_options)
    noisy = WorkerLaunch(name="ssh-1", command=("python", "-c", "for i in range(5000): print('line', i)\n"
                                                "print('x' * 100000, end='')"), stdin=b"{}\n")
    status = ended(launcher, launcher.launch(noisy))
    lines = status.detail.split("\n")[1:]
    assert len(lines) == ssh_module.TAIL_LINES, len(lines)
    assert lines[-2] == "line 4999" and lines[-1] == "x" * ssh_module.LINE_MAX


def test_hosts_share_launches_and_workers_per_host_limits(sshd, make_launcher, tmp_path):  # noqa: F811
    launcher = make_launcher([sshd.host, server.HOST_2], ssh_options=sshd.ssh_options, workers_per_host=2)
    jobs = [launcher.launch(remote_launch(tmp_path / f"record-{n}.json", name=f"ssh-{n}")) for n in range(4)]
    assert [job.split("/")[0] for job in jobs] == [sshd.host, server.HOST_2, sshd.host, server.HOST_2]
    with pytest.raises(LaunchFailed, match="every host runs workers_per_host=2 workers"):
        launcher.launch(remote_launch(tmp_path / "record-x.json"))
    for n in range(4):
        read_record(tmp_path / f"record-{n}.json")
    launcher.terminate([jobs[1]])
    job = launcher.launch(remote_launch(tmp_path / "record-5.json", name="ssh-5"))
    assert job.startswith(server.HOST_2 + "/"), job
    read_record(tmp_path / "record-5.json")
    assert all(st.state is JobState.RUNNING for st in launcher.status([*jobs[::2], jobs[3], job]).values())
    remote = [read_record(tmp_path / f"record-{n}.json")["pid"] for n in (0, 2, 3, 5)]
    launcher.close()  # terminates them all at once
    for n in (0, 2, 3, 5):
        assert (tmp_path / f"record-{n}.json.eof").exists()
    assert all(gone(pid) for pid in remote)
    assert all(st.state is JobState.ENDED for st in launcher.status(jobs).values())
    # A closed launcher serves the next executor that is given it.
    again = launcher.launch(remote_launch(tmp_path / "record-y.json", name="ssh-y"))
    read_record(tmp_path / "record-y.json")
    launcher.terminate([again])


def test_script_shows_the_command_without_the_document(sshd, tmp_path):  # noqa: F811
    launcher = SSH([sshd.host, server.HOST_2], ssh_options=sshd.ssh_options, python="/opt/py/bin/python3")
    doc, secret = document()
    launch = remote_launch(tmp_path / "r.json", env={"CORRAL_TEST_X": "a b"}, cwd="/some where", stdin=doc)
    text = launcher.script(launch)
    assert secret not in text
    argv = shlex.split(text.splitlines()[-1])
    assert argv[:4] == ["ssh", *sshd.ssh_options, "-T"]
    assert argv[-5:] == [sshd.host, "--", launcher.remote_command(launch), "<", "LAUNCH-DOCUMENT"]
    assert launcher.remote_command(launch) == ("cd '/some where' 2>/dev/null; exec env 'CORRAL_TEST_X=a b' "
                                               f"/opt/py/bin/python3 {REMOTE} {tmp_path / 'r.json'}")
    assert "exec env" in SSH(["h"]).script() and sys.executable in SSH(["h"]).script()
    launcher.close()


@pytest.mark.parametrize("args, error, words", [
    (("node1",), TypeError, "not one string"),
    (([],), ValueError, "is empty"),
    (([3],), TypeError, "not a host name"),
    ((["-oProxyCommand=x"],), ValueError, "not starting with '-'"),
    ((["node 1"],), ValueError, "not a host name"),
    ((["a", "b", "a"],), ValueError, "lists a more than once"),
    ((None,), TypeError, "list of host names"),
])
def test_constructor_checks_hosts(args, error, words):
    with pytest.raises(error, match=words):
        SSH(*args)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"ssh_options": "-F x"}, TypeError, r"ssh_options=\['-F', 'x'\]"),
    ({"ssh_options": ["-F", 1]}, TypeError, "not a str"),
    ({"workers_per_host": 0}, ValueError, "at least 1"),
    ({"workers_per_host": 1.5}, TypeError, "whole number"),
    ({"workers_per_host": True}, TypeError, "whole number"),
    ({"connect_timeout": 0}, ValueError, "at least 1 second"),
    ({"connect_timeout": "10"}, TypeError, "number of seconds"),
    ({"python": "/a=b/python"}, ValueError, "hold '='"),
    ({"python": 3}, TypeError, "interpreter's path"),
    ({"ssh": ""}, TypeError, "ssh client"),
])
def test_constructor_checks_options(kwargs, error, words):
    with pytest.raises(error, match=words):
        SSH(["node1"], **kwargs)


def test_missing_ssh_client_is_a_launch_failure(tmp_path):
    launcher = SSH(["node1"], ssh=str(tmp_path / "no-ssh-here"))
    with pytest.raises(LaunchFailed, match="cannot run the SSH client"):
        launcher.launch(remote_launch(tmp_path / "r.json"))
    launcher.close()


def test_launcher_is_found_by_name():
    assert corral.launchers.get("ssh") is SSH is corral.launchers.SSH


# -- a second host: a network namespace ---------------------------------------------------------


class LauncherClient:
    """``ssh_launcher_client.py`` in the client namespace, driven one JSON command at a time."""

    def __init__(self, node, settings: dict, log):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(corral.__file__)), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.log = log
        with open(log, "w") as err:
            self.proc = node.run_in_client([sys.executable, LAUNCHER_CLIENT, json.dumps(settings)], env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        assert "ready" in json.loads(read_line(self.proc.stdout, 30)), log.read_text()

    def call(self, op: str, within: float = 30, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return json.loads(read_line(self.proc.stdout, within))

    def quit(self) -> None:
        if self.proc.poll() is None:
            self.call("quit", 30)
            self.proc.wait(10)


def test_second_host_in_a_namespace(sshd_netns, tmp_path):  # noqa: F811
    """The launcher in the client namespace, its worker on the node's sshd: the remote program runs in
    the node's namespace, gets its document, and leaves at terminate."""
    node = sshd_netns
    client = LauncherClient(node, {"hosts": [node.host], "ssh_options": node.ssh_options,
                                   "connect_timeout": CONNECT_TIMEOUT}, tmp_path / "client.log")
    try:
        doc, secret = document()
        record = tmp_path / "record.json"
        started = time.monotonic()
        answer = client.call("launch", name="ssh-1", command=[sys.executable, REMOTE, str(record)],
                             stdin=doc.decode(), env={"CORRAL_TEST_WHERE": "node"}, cwd=str(tmp_path))
        assert "id" in answer, answer
        job = answer["id"]
        facts = read_record(record)
        print(f"namespace: launch to the remote program running: {time.monotonic() - started:.3f} s")
        assert facts["document"].encode() == doc and facts["env"] == {"CORRAL_TEST_WHERE": "node"}
        assert facts["netns"] == os.readlink(f"/proc/{node.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{ssh_pid(job)}/ns/net") == os.readlink(f"/proc/{client.proc.pid}/ns/net")
        assert not on_argv(secret)
        assert client.call("status", ids=[job])["status"][job] == ["running", ""]
        assert client.call("terminate", ids=[job])["seconds"] < ssh_module.GRACE_S
        assert (tmp_path / "record.json.eof").exists()
        state, detail = client.call("status", ids=[job])["status"][job]
        assert state == "ended" and detail.startswith("exit code 0 after terminate()"), detail
        assert gone(facts["pid"])
    finally:
        client.quit()


def test_second_host_unreachable_times_out(sshd_netns, tmp_path):  # noqa: F811
    """The node's link dropped (a blackhole): ssh gives up after ConnectTimeout, and says so."""
    node = sshd_netns
    client = LauncherClient(node, {"hosts": [node.host], "ssh_options": node.ssh_options,
                                   "connect_timeout": 2}, tmp_path / "client.log")
    node.net.cut(node.node, "drop")
    try:
        started = time.monotonic()
        job = client.call("launch", name="ssh-1", command=[sys.executable, REMOTE, str(tmp_path / "r.json")],
                          stdin="{}\n")["id"]
        state, detail = wait_for(lambda: (st := client.call("status", ids=[job])["status"][job])[0] == "ended"
                                 and st, 15, "ssh to give up")
        took = time.monotonic() - started
        print(f"blackholed host: ssh gave up after {took:.2f} s (ConnectTimeout=2)")
        assert 1.5 < took < 10, took
        assert "Connection timed out" in detail and "exit code 255" in detail, detail
    finally:
        node.net.heal(node.node)
        client.quit()


def test_terminate_signals_ssh_when_the_remote_program_ignores_eof(sshd, make_launcher, tmp_path, monkeypatch):  # noqa: F811
    """A remote program that never reads its standard input: after the grace, terminate ends the local ssh
    (SIGTERM).  Without a terminal sshd sends the remote program no signal: it lives on to its own end
    (a worker leaves on its lifeline's end; a hung one is what the broker's liveness is for)."""
    monkeypatch.setattr(ssh_module, "GRACE_S", 0.5)
    launcher = make_launcher([sshd.host], ssh_options=sshd.ssh_options)
    marker = tmp_path / "deaf.txt"
    deaf = WorkerLaunch(name="ssh-1", command=("python", "-c", "import os, sys, time; "
                                               f"open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(3)"),
                        stdin=b"{}\n")
    job = launcher.launch(deaf)
    remote = int(wait_for(lambda: marker.exists() and marker.read_text(), 30, "the remote program to start"))
    started = time.monotonic()
    launcher.terminate([job])
    took = time.monotonic() - started
    assert 0.4 < took < 0.5 + ssh_module.KILL_AFTER_S + 1, took
    status = launcher.status([job])[job]
    assert status.detail.startswith("ended by terminate(): the worker was still there"), status.detail
    assert "its process got SIGTERM (exit code 255)" in status.detail, status.detail
    assert not gone(remote), "the remote program got a signal after all: update the docstrings"
    wait_for(lambda: gone(remote), 10, "the remote program to end by itself")


def test_old_ended_launches_are_forgotten(sshd, make_launcher, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ssh_module, "ENDED_KEPT", 2)
    launcher = make_launcher([server.CLOSED_HOST], ssh_options=sshd.ssh_options)
    jobs = []
    for n in range(4):
        jobs.append(launcher.launch(remote_launch(tmp_path / "r.json", name=f"ssh-{n}")))
        ended(launcher, jobs[-1])
    status = launcher.status(jobs)
    assert [st.detail for st in status.values()][:1] == ["not a job of this launcher (or forgotten)"]
    assert all("Connection refused" in status[job].detail for job in jobs[-2:])
    assert len(set(jobs)) == 4 and all(st.state is JobState.ENDED for st in status.values())
