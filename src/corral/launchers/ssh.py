"""The SSH launcher: one ``ssh`` connection per worker, the launch document on its standard input.

::

    corral.Executor(launcher=corral.launchers.SSH(["node1", "node2"]), max_workers=16)

For each launch it runs, on this machine, the system's OpenSSH client (so that
``~/.ssh/config``, ``ProxyJump``, agents and certificates work as they do for the user)::

    ssh [ssh_options] -T -o BatchMode=yes -o ConnectTimeout=10 HOST -- \\
        'cd CWD 2>/dev/null; exec env VAR=VALUE ... PYTHON -m corral worker -'

writes the launch document (a secret: the worker's key) to ssh's standard input and keeps
that standard input open.  It is the worker's *lifeline*: the remote command reads it
through the connection, and sees its end when this side closes it (``terminate``), when
the ssh process dies (killed, this machine's Python gone: the pipe closes with it), or when
the connection breaks (sshd closes the session's pipes).  That matters because, without a
terminal, ending the local ssh client sends no signal to the remote command: only the end
of its standard input tells it to leave.  The document never appears on a command line.

The job id is ``HOST/PID``: the host as given and the pid of the local ssh process
(``HOST/PID~N`` in the unlikely case that an earlier launch's ssh had the same pid).
``status`` says RUNNING while that ssh process lives, ENDED once it has exited, with its
exit code and the last lines it printed (ssh's own errors, "Connection refused",
"Permission denied (publickey)", and the worker's output, a Python traceback included).

The remote command runs through the user's login shell on the node, which must be a POSIX
one (sh, bash, zsh: the command is quoted for them).  The nodes need corral installed for
the interpreter that runs there: this one's path by default (nodes that share this
machine's software), or ``python=``.
"""

from __future__ import annotations

import collections
import re
import shlex
from collections.abc import Sequence

from .base import LaunchFailed, WorkerLaunch, example_launch
from .processes import ProcessLauncher

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BAD_HOST = re.compile(r"[\s\x00-\x1f\x7f/]")


class SSH(ProcessLauncher):
    """Starts workers on ``hosts`` through the system's OpenSSH client (see the module's docstring).

    ``hosts``: names ssh understands (``node1``, ``user@node1``, an alias of ``~/.ssh/config``);
    each launch goes to the host with the fewest of this launcher's running workers.
    ``python``: the interpreter on the nodes (default: this one's path).  ``ssh_options``:
    more arguments for ssh, before the launcher's own (``["-F", "cluster.conf"]``,
    ``["-J", "gateway"]``); ssh takes the first value it is given for an option, so theirs
    win.  ``ssh``: the client program.  ``workers_per_host``: at most this many running
    workers on one host (``launch`` raises LaunchFailed when every host has that many).
    ``connect_timeout``: seconds ssh waits for a host to answer (ssh's ``ConnectTimeout``).
    """

    kind = "ssh"

    def __init__(self, hosts: Sequence[str], python: str | None = None, ssh_options: Sequence[str] = (),
                 ssh: str = "ssh", workers_per_host: int | None = None, connect_timeout: float = 10):
        if isinstance(hosts, (str, bytes)):
            raise TypeError(f"SSH(hosts=...) takes a list of host names, not one string: SSH([{hosts!r}])")
        try:
            hosts = list(hosts)
        except TypeError:
            raise TypeError(f"SSH(hosts=...) takes a list of host names, not {type(hosts).__name__}") from None
        if not hosts:
            raise ValueError("SSH(hosts=...) is empty: give at least one host name, e.g. SSH(['node1'])")
        for host in hosts:
            if not isinstance(host, str):
                raise TypeError(f"SSH(hosts=...) holds {host!r}, a {type(host).__name__}, not a host name (str)")
            if not host or host.startswith("-") or _BAD_HOST.search(host):
                raise ValueError(f"SSH(hosts=...) holds {host!r}, which is not a host name: no spaces, slashes or "
                                 "control characters, and not starting with '-' (ssh options go in ssh_options)")
        twice = sorted({host for host in hosts if hosts.count(host) > 1})
        if twice:
            raise ValueError(f"SSH(hosts=...) lists {', '.join(twice)} more than once; to run more workers on a "
                             "host, give max_workers (and workers_per_host) instead")
        if isinstance(ssh_options, (str, bytes)):
            suggestion = shlex.split(ssh_options) if isinstance(ssh_options, str) else [ssh_options]
            raise TypeError(f"SSH(ssh_options=...) takes a list of arguments, not one string: "
                            f"ssh_options={suggestion!r}")
        ssh_options = list(ssh_options)
        for option in ssh_options:
            if not isinstance(option, str):
                raise TypeError(f"SSH(ssh_options=...) holds {option!r}, a {type(option).__name__}, not a str")
        if not isinstance(ssh, str) or not ssh:
            raise TypeError(f"SSH(ssh=...) is the ssh client program's name or path (a str), not {ssh!r}")
        if python is not None and (not isinstance(python, str) or not python):
            raise TypeError(f"SSH(python=...) is the interpreter's path on the nodes (a str), not {python!r}")
        if python is not None and ("=" in python or python.startswith("-")):
            raise ValueError(f"SSH(python={python!r}): an interpreter's path must not start with '-' or hold '=' "
                             "(env, which runs it, would take it for an option or a variable)")
        if workers_per_host is not None and (isinstance(workers_per_host, bool)
                                             or not isinstance(workers_per_host, int)):
            raise TypeError(f"SSH(workers_per_host=...) is a whole number or None, not {workers_per_host!r}")
        if workers_per_host is not None and workers_per_host < 1:
            raise ValueError(f"SSH(workers_per_host={workers_per_host}) must be at least 1 (None: no limit)")
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)):
            raise TypeError(f"SSH(connect_timeout=...) is a number of seconds, not {connect_timeout!r}")
        if not connect_timeout >= 1:
            raise ValueError(f"SSH(connect_timeout={connect_timeout}) must be at least 1 second (ssh counts in "
                             "whole seconds)")
        super().__init__(python)
        self.hosts = hosts
        self.ssh_options = ssh_options
        self.ssh = ssh
        self.workers_per_host = workers_per_host
        self.connect_timeout = int(round(connect_timeout))

    # -- the command ------------------------------------------------------------------

    def remote_command(self, launch: WorkerLaunch) -> str:
        """The one shell line the node runs: into the client's directory where the node has it (else the
        home directory), then the worker, with ``launch.env``, replacing the shell."""
        for name in launch.env:
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ValueError(f"the launch's environment variable name {name!r} is not one a shell accepts")
        argv = list(launch.command)
        argv[0] = self.python
        words = ["exec", "env", *(f"{name}={value}" for name, value in launch.env.items()), *argv]
        line = shlex.join(words)
        if launch.cwd:
            line = f"cd {shlex.quote(launch.cwd)} 2>/dev/null; {line}"
        return line

    def command(self, host: str, launch: WorkerLaunch) -> list[str]:
        """The argv run on this machine for ``launch`` on ``host``.

        ``-T``: no terminal, even where ~/.ssh/config asks for one (a terminal would echo
        the document and turn the lifeline's end into a hangup); ``BatchMode``: never
        prompt (there is nobody to answer); ``--``: the remote command is no option."""
        return [self.ssh, *self.ssh_options, "-T", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}", host, "--", self.remote_command(launch)]

    def argv(self, host: str, launch: WorkerLaunch) -> tuple[list[str], dict | None, str | None]:
        return self.command(host, launch), None, None

    def script(self, launch: WorkerLaunch | None = None) -> str:
        launch = launch or example_launch()
        with self._lock:
            running = self.running()
            host = min(self.hosts, key=lambda h: running[h])
        return (f"# runs on one of: {' '.join(self.hosts)} (the one with the fewest running workers); the launch\n"
                "# document goes to ssh's standard input, which stays open: the worker leaves when it closes\n"
                + shlex.join(self.command(host, launch)) + " < LAUNCH-DOCUMENT\n")

    # -- where, and what to say ------------------------------------------------------

    def pick(self, running: collections.Counter) -> str:
        host = min(self.hosts, key=lambda h: running[h])  # the first of the least busy
        if self.workers_per_host is not None and running[host] >= self.workers_per_host:
            raise LaunchFailed(f"every host runs workers_per_host={self.workers_per_host} workers of this "
                               f"launcher already ({', '.join(self.hosts)}): give more hosts, raise "
                               "workers_per_host, or lower max_workers")
        return host

    def cannot_run(self, exc: OSError) -> str:
        return (f"cannot run the SSH client {self.ssh!r}: {exc}; install OpenSSH's client "
                "(Debian: apt install openssh-client) or give SSH(ssh=its path)")

    def ended_words(self, code: int) -> str:
        if code == 255:
            return "ssh failed (exit code 255: the connection, the login, or the remote command's own 255)"
        return f"exit code {code}"

    def __repr__(self) -> str:
        return f"SSH({self.hosts!r})"
