"""A real OpenSSH server for tests: on 127.0.0.1, and inside a network namespace as a second host.

Each server is ``/usr/sbin/sshd -D -f CONFIG -E LOG`` with a throw-away host key and a
throw-away client key, made in a private temporary directory, and a client ``ssh_config``
that reaches it by a host alias, with no prompt and no trust on first use (``BatchMode yes``,
``StrictHostKeyChecking yes``, ``UserKnownHostsFile`` holding the host key already).  A
client passes ``-F CONFIG`` (``Sshd.ssh_options``), so nothing of the user's ``~/.ssh``
takes part, and no agent (``IdentityAgent none``).  sshd is stopped by its pid.

Fixtures (import them into a test module, or use them through conftest):

- ``sshd`` (session): an ``Sshd`` on 127.0.0.1 at a free port.  Its config has the aliases
  ``corral-test-host`` and ``corral-test-host-2`` (both this server: two "hosts" for a
  launcher to spread workers over), ``corral-stranger-host`` (this server, with a client key
  that is not in ``authorized_keys``: "Permission denied (publickey)") and
  ``corral-closed-host`` (a loopback port where nothing listens: "Connection refused").
- ``sshd_netns`` (module): an ``NetnsSshd``: an sshd on port 22 of a namespace ``node``
  (10.77.0.11), and a namespace ``client`` from which it is reached as ``corral-test-node``
  (the config's alias); programs that use it run in the client namespace
  (``NetnsSshd.run_in_client``), never in the test's own (see netns.py).

Both skip, saying why, where sshd or ssh is missing (``.ci/sshd-setup`` installs them) or the
tests do not run as root (sshd must switch users; the namespaces need root too).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import netns
from helpers import free_port

SSHD = "/usr/sbin/sshd"
READY_S = 10.0  # seconds sshd may take to listen (~0.05 s here; a loaded CI machine is slower)
STOP_S = 10.0  # seconds sshd may take to leave after SIGTERM, before SIGKILL

HOST = "corral-test-host"
HOST_2 = "corral-test-host-2"
STRANGER_HOST = "corral-stranger-host"
CLOSED_HOST = "corral-closed-host"
NODE_HOST = "corral-test-node"

_TOOLS = (SSHD, "ssh", "ssh-keygen")


def unavailable() -> str | None:
    """Why a test sshd cannot run here (a reason to skip), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the test sshd needs root (it switches to the logged-in user; run the tests as root)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (.ci/sshd-setup installs openssh-server and openssh-client)"
    return None


def keygen(path: Path) -> str:
    """A new ed25519 key pair at ``path`` (and ``path``.pub), no passphrase; the public key's line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """One sshd and what a client needs to reach it: ``ssh_options`` (``["-F", config]``) and a
    host alias (``host``; see the module's docstring for the others), ``pid``, ``log``, ``dir``."""

    def __init__(self, directory: Path, address: str, port: int, host: str, proc: subprocess.Popen):
        self.dir, self.address, self.port, self.host, self.proc = directory, address, port, host, proc
        self.pid = proc.pid
        self.config = str(directory / "ssh_config")
        self.ssh_options = ["-F", self.config]
        self.log = directory / "sshd.log"

    def ssh(self, *command: str, host: str | None = None, timeout: float = 30, **run) -> subprocess.CompletedProcess:
        """Run ``command`` through this server with the system's ssh client (from this namespace)."""
        return subprocess.run(["ssh", *self.ssh_options, host or self.host, "--", *command],
                              capture_output=True, text=True, timeout=timeout, **run)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __repr__(self) -> str:
        return f"Sshd({self.host} = {self.address}:{self.port}, pid {self.pid})"


def prepare(directory: Path, address: str, port: int, closed_port: int | None = None,
            aliases: tuple[str, ...] = (HOST, HOST_2)) -> None:
    """Write keys, ``sshd_config`` and the client's ``ssh_config`` into ``directory``."""
    host_pub = keygen(directory / "host_key")
    client_pub = keygen(directory / "client_key")
    keygen(directory / "stranger_key")  # a key sshd does not know
    (directory / "authorized_keys").write_text(client_pub + "\n")
    where = f"[{address}]:{port}" if port != 22 else address
    (directory / "known_hosts").write_text(f"{where} {' '.join(host_pub.split()[:2])}\n")
    (directory / "sshd_config").write_text(f"""\
Port {port}
ListenAddress {address}
HostKey {directory}/host_key
AuthorizedKeysFile {directory}/authorized_keys
PidFile none
# Files under /tmp (group- or world-writable parents) fail StrictModes; root logs in with keys only.
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
PrintMotd no
PrintLastLog no
# Tests launch several connections at once.
MaxStartups 100
MaxSessions 100
LogLevel VERBOSE
# A login shell that runs `pyenv init` (root's, on the CI machines) takes pyenv's rehash lock; a
# session the tests end in that instant leaves the lock behind, and every later login then waits
# 60 s for it.  Sessions of this server give up on the lock at once (rehashing is not their job).
SetEnv PYENV_REHASH_TIMEOUT=0
""")
    hosts = [f"Host {alias}\n    HostName {address}\n    Port {port}\n    IdentityFile {directory}/client_key\n"
             for alias in aliases]
    hosts.append(f"Host {STRANGER_HOST}\n    HostName {address}\n    Port {port}\n"
                 f"    IdentityFile {directory}/stranger_key\n")
    if closed_port is not None:
        hosts.append(f"Host {CLOSED_HOST}\n    HostName {address}\n    Port {closed_port}\n"
                     f"    IdentityFile {directory}/client_key\n")
    # IdentityFile accumulates over matching blocks: it is set per host, never under ``Host *``.
    (directory / "ssh_config").write_text("\n".join(hosts) + f"""
Host *
    User {getpass.getuser()}
    BatchMode yes
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {directory}/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    ControlMaster no
    ControlPath none
""")


def sshd_argv(directory: Path) -> list[str]:
    # -D: stay in the foreground, so that our pid is sshd's; -E: its log to a file, not syslog.
    return [SSHD, "-D", "-f", str(directory / "sshd_config"), "-E", str(directory / "sshd.log")]


def wait_ready(proc: subprocess.Popen, log: Path, timeout: float = READY_S) -> None:
    """Until sshd says it listens (its log; a namespace's port cannot be probed from here)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Server listening on" in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with code {proc.returncode} before listening; its log:\n{text}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not listen within {timeout:g} s; its log:\n{text}")
        time.sleep(0.01)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM by pid, SIGKILL after ``STOP_S``; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _privsep_dir() -> None:
    # sshd will not start without its privilege-separation directory (systemd makes it elsewhere).
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


def start_loopback() -> Sshd:
    """An sshd on 127.0.0.1 at a free port (stop it with ``stop(server.proc)``, then remove ``server.dir``)."""
    _privsep_dir()
    directory = Path(tempfile.mkdtemp(prefix="ctest-sshd-"))
    try:
        port = free_port()
        prepare(directory, "127.0.0.1", port, closed_port=free_port())
        with open(os.devnull, "rb") as null:
            proc = subprocess.Popen(sshd_argv(directory), stdin=null, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        server = Sshd(directory, "127.0.0.1", port, HOST, proc)
        try:
            wait_ready(proc, server.log)
        except BaseException:
            stop(proc)
            raise
        return server
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


@pytest.fixture(scope="module")
def sshd():
    """An sshd on 127.0.0.1 (``Sshd``): ``sshd.ssh_options`` and ``sshd.host`` reach it."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    server = start_loopback()  # (a pyenv lock its sessions leave goes at the session's end: conftest.py)
    try:
        yield server
    finally:
        stop(server.proc)
        shutil.rmtree(server.dir, ignore_errors=True)


class NetnsSshd(Sshd):
    """An sshd on port 22 of namespace ``node_ns`` (a spoke of ``net``), reached as ``corral-test-node``
    from namespace ``client_ns``.  ``run_in_client(argv, **popen)`` starts a program there."""

    def __init__(self, directory: Path, net: netns.Net, node: netns.Spoke, client: netns.Spoke,
                 proc: subprocess.Popen):
        super().__init__(directory, node.ip, 22, NODE_HOST, proc)
        self.net, self.node, self.client = net, node, client
        self.node_ns, self.client_ns = node.ns, client.ns

    def run_in_client(self, argv: list[str], **popen) -> subprocess.Popen:
        return self.net.run_in(self.client, argv, **popen)

    def ssh(self, *command: str, host: str | None = None, timeout: float = 30, **run) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.client_ns, "ssh", *self.ssh_options, host or self.host,
                               "--", *command], capture_output=True, text=True, timeout=timeout, **run)


@pytest.fixture(scope="module")
def sshd_netns():
    """An sshd on a second "host": a network namespace, reached from a client namespace (``NetnsSshd``)."""
    reason = unavailable() or netns.unavailable()
    if reason:
        pytest.skip(reason)
    _privsep_dir()
    directory = Path(tempfile.mkdtemp(prefix="ctest-sshd-"))
    net = netns.Net("ssh")
    proc = None
    try:
        node = net.add("node")
        client = net.add("client")
        prepare(directory, node.ip, 22, aliases=(NODE_HOST,))
        with open(os.devnull, "rb") as null:
            proc = net.run_in(node, sshd_argv(directory), stdin=null, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        wait_ready(proc, directory / "sshd.log")
        yield NetnsSshd(directory, net, node, client, proc)
    finally:
        if proc is not None:
            stop(proc)
        try:
            net.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
