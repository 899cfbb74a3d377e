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
import os
import re
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .base import JobState, JobStatus, Launcher, LaunchFailed, WorkerLaunch, example_launch

# Seconds a worker has, once its standard input closed, to hand its tasks back and leave
# (the worker answers the end of its lifeline at once; the rest is the connection's close)
# before its ssh process gets SIGTERM: long enough for a slow link, short enough that a
# shutdown does not seem to hang.
GRACE_S = 5.0
KILL_AFTER_S = 2.0  # seconds between SIGTERM and SIGKILL of a local ssh process
TAIL_LINES = 50  # lines of ssh's output (its errors, the worker's last words) kept per launch
LINE_MAX = 4096  # bytes of one output line kept (a line with no end is cut here)
FEED_S = 60.0  # seconds, beyond ConnectTimeout, that writing the launch document may take
OUTPUT_WAIT_S = 0.2  # seconds status() waits for the last output of an ssh process that has just exited
ENDED_KEPT = 1000  # ended launches whose status (exit code, last output) is kept, the newest; older ones are forgotten

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BAD_HOST = re.compile(r"[\s\x00-\x1f\x7f/]")


class _Tail:
    """The last ``TAIL_LINES`` lines of a process's output, read by a thread of its own until the end
    (a process whose pipe nobody reads blocks once the pipe is full)."""

    def __init__(self, stream, name: str):
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._partial = b""
        self._stream = stream
        self.thread = threading.Thread(target=self._read, name=f"corral-ssh-output-{name}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fd = self._stream.fileno()
        skipping = False  # the rest of a line longer than LINE_MAX, whose start is kept already
        try:
            while chunk := os.read(fd, 65536):
                *whole, self._partial = (self._partial + chunk).split(b"\n")
                for line in whole:
                    if not skipping:
                        self._add(line)
                    skipping = False
                if len(self._partial) > LINE_MAX:
                    if not skipping:
                        self._add(self._partial)
                    skipping, self._partial = True, b""
        except OSError:
            pass
        finally:
            if self._partial and not skipping:
                self._add(self._partial)
            self._partial = b""
            self._stream.close()

    def _add(self, line: bytes) -> None:
        with self._lock:
            self.lines.append(line[:LINE_MAX].decode(errors="replace").rstrip("\r"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


@dataclass
class _Job:
    host: str
    proc: subprocess.Popen
    tail: _Tail
    terminated: bool = False  # terminate() was called for it
    signalled: list[str] = field(default_factory=list)  # the signals terminate() had to send

    def running(self) -> bool:
        return self.proc.poll() is None


class SSH(Launcher):
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
    # The scaler writes ``"lifeline": true`` into the documents of this launcher's workers: they
    # leave when their standard input (the connection) closes.
    lifeline = True

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
        self._jobs: dict[str, _Job] = {}  # in launch order
        self._issued: set[str] = set()  # every job id given out, forgotten ones included: none is given twice
        self._lock = threading.Lock()  # the scaler's thread and close() may meet
        self._closed = False

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

    def script(self, launch: WorkerLaunch | None = None) -> str:
        launch = launch or example_launch()
        with self._lock:
            host = self._pick(check_limit=False)
        return (f"# runs on one of: {' '.join(self.hosts)} (the one with the fewest running workers); the launch\n"
                "# document goes to ssh's standard input, which stays open: the worker leaves when it closes\n"
                + shlex.join(self.command(host, launch)) + " < LAUNCH-DOCUMENT\n")

    # -- launch, status, terminate ----------------------------------------------------

    def _running(self) -> collections.Counter:
        return collections.Counter(job.host for job in self._jobs.values() if job.running())

    def _pick(self, check_limit: bool = True) -> str:
        running = self._running()
        host = min(self.hosts, key=lambda h: running[h])  # the first of the least busy
        if check_limit and self.workers_per_host is not None and running[host] >= self.workers_per_host:
            raise LaunchFailed(f"every host runs workers_per_host={self.workers_per_host} workers of this "
                               f"launcher already ({', '.join(self.hosts)}): give more hosts, raise "
                               "workers_per_host, or lower max_workers")
        return host

    def launch(self, launch: WorkerLaunch) -> str:
        with self._lock:
            if self._closed:
                raise LaunchFailed("this SSH launcher is closed")
            host = self._pick()
            argv = self.command(host, launch)
            try:
                # Its own session: a Ctrl-C at the user's terminal reaches Python (which shuts the
                # executor down, ending the workers in order), not every ssh at once; and ssh has no
                # terminal to prompt on.
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise LaunchFailed(f"cannot run the SSH client {self.ssh!r}: {exc}; install OpenSSH's client "
                                   "(Debian: apt install openssh-client) or give SSH(ssh=its path)") from None
            job_id = f"{host}/{proc.pid}"
            serial = 1
            while job_id in self._issued:  # the pid of an earlier launch's ssh, used again
                serial += 1
                job_id = f"{host}/{proc.pid}~{serial}"
            self._issued.add(job_id)
            self._jobs[job_id] = _Job(host, proc, _Tail(proc.stdout, job_id))
            self._forget_old()
        if not self._feed(proc, launch.stdin):
            self._stop([proc])
            with self._lock:
                self._jobs.pop(job_id, None)
            raise LaunchFailed(f"ssh to {host} did not take the launch document within "
                               f"{self.connect_timeout + FEED_S:g} s; the connection was closed")
        return job_id

    def _forget_old(self) -> None:
        """Forget the oldest ended launches beyond ``ENDED_KEPT`` (each holds up to TAIL_LINES lines)."""
        ended = [job_id for job_id, job in self._jobs.items() if not job.running()]
        for job_id in ended[:max(0, len(ended) - ENDED_KEPT)]:
            del self._jobs[job_id]

    def _feed(self, proc: subprocess.Popen, data: bytes) -> bool:
        """Write the document to ssh's standard input, and leave it open; False if that took too long.
        Bounded: a host that takes the connection but never reads would otherwise hold launch() for
        ever once the pipe is full.  If ssh ends first (refused, unreachable), its status says why."""
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        deadline = time.monotonic() + self.connect_timeout + FEED_S
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                break
            _, ready, _ = select.select([], [fd], [], min(left, 0.5))
            if not ready:
                continue
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return True  # ssh ended: status() tells why
        return not view or proc.poll() is not None

    def status(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self._lock:
            return {job_id: self._status(self._jobs.get(job_id)) for job_id in job_ids}

    def _status(self, job: _Job | None) -> JobStatus:
        if job is None:
            return JobStatus(JobState.ENDED, "not a job of this launcher (or forgotten)")
        code = job.proc.poll()
        if code is None:
            return JobStatus(JobState.RUNNING)
        job.tail.thread.join(OUTPUT_WAIT_S)  # its last words, once the pipe is read to its end
        if job.signalled:  # ssh answers SIGTERM with exit code 255
            said = (f"ended by terminate(): the remote command was still there {GRACE_S:g} s after its standard "
                    f"input closed, so ssh got {' then '.join(job.signalled)} (exit code {code})")
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            said = f"ssh was killed by {name}"
        elif code == 255:
            said = "ssh failed (exit code 255: the connection, the login, or the remote command's own 255)"
        else:
            said = f"exit code {code}"
        if job.terminated and not job.signalled:
            said += " after terminate()"
        output = job.tail.text()
        return JobStatus(JobState.ENDED, f"{said}; its last output:\n{output}" if output else said)

    def terminate(self, job_ids: Sequence[str]) -> None:
        """Close each worker's standard input (it hands back its tasks and leaves), then, after ``GRACE_S``,
        SIGTERM and SIGKILL the ssh processes still there; reaped.  Ids unknown or ended: nothing to do."""
        with self._lock:
            jobs = [self._jobs[job_id] for job_id in job_ids if job_id in self._jobs]
        for job in jobs:
            job.terminated = True
        self._stop([job.proc for job in jobs], jobs)

    def _stop(self, procs: list[subprocess.Popen], jobs: Sequence[_Job] = ()) -> None:
        for proc in procs:
            try:
                proc.stdin.close()  # the lifeline's end
            except OSError:
                pass  # its reader has gone (BrokenPipeError on the flush): ssh has ended
        deadline = time.monotonic() + GRACE_S
        for how, wait in ((None, GRACE_S), (signal.SIGTERM, KILL_AFTER_S), (signal.SIGKILL, KILL_AFTER_S)):
            alive = [proc for proc in procs if proc.poll() is None]
            if not alive:
                break
            if how is not None:
                for proc in alive:
                    proc.send_signal(how)
                for job in jobs:
                    if job.proc in alive:
                        job.signalled.append(how.name)
                deadline = time.monotonic() + wait
            for proc in alive:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for job in jobs:
            job.tail.thread.join(1.0)

    def close(self) -> None:
        """Terminate every worker still running, reap every ssh process; the launcher takes no more launches."""
        with self._lock:
            self._closed = True
            ids = list(self._jobs)
        self.terminate(ids)

    def __repr__(self) -> str:
        return f"SSH({self.hosts!r})"
