"""The batch job script that the SLURM and Grid Engine launchers submit, and what they share.

::

    #!/bin/bash
    #SBATCH --job-name=corral-slurm-3          directives: generated, then the user's own
    #SBATCH --time=01:00:00                    (a generated line with a directives_skip word is left out)
    module load python                         prologue: the user's lines, as given
    if [ -d /home/me/project ]; then cd /home/me/project; fi     the client's working directory
    export OMP_NUM_THREADS=1                   the launch's non-secret environment
    exec /usr/bin/python3 -m corral worker - <<'CORRAL_LAUNCH_DOCUMENT'
    {"corral":1,"address":...,"worker":{...,"secret":...}}      the launch document
    CORRAL_LAUNCH_DOCUMENT

The document travels inside the script, as a here-document the worker reads on its
standard input.  The launcher gives the script to ``sbatch``/``qsub`` on *their*
standard input, never as a file: the secret key never touches the client's disk nor
a shared filesystem.  The resource manager keeps the script in its own spool
(slurmctld's StateSaveLocation, sge_qmaster's and sge_execd's spool directories),
readable by it and root; the job's owner can read it back too (``scontrol write
batch_script``), as they can read anything else of theirs.  It never appears on a
command line (``ps``, ``scontrol show job``'s Command, ``qstat -j``'s job_args) nor
in the job's environment.

Also here: checking the launchers' arguments (walltime, memory, directive lists) and
running a resource manager's command with a time limit.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
from collections.abc import Sequence

from .base import JobState, JobStatus, Launcher, LaunchFailed, WorkerLaunch, example_launch

SHELL = "/bin/bash"  # the job's shell: prologue lines such as `source venv/bin/activate` need bash
HEREDOC = "CORRAL_LAUNCH_DOCUMENT"
PLACEHOLDER = "<the launch document: the broker's address and key, the worker's key pair; never shown>"
COMMAND_TIMEOUT = 60.0  # seconds an sbatch/squeue/scancel/qsub/qstat/qdel call may take
DISCARD = "/dev/null"

# Variables of the client's own environment that the submitted job must not inherit (sbatch
# passes the whole environment by default, qsub -V too): the client's credentials.
ENV_LEFT_OUT = ("CORRAL_SECRET_KEY", "CORRAL_PUBLIC_KEY", "CORRAL_BROKER_KEY", "CORRAL_CONNECTION_FILE")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def script(prefix: str, directives: Sequence[str], user_directives: Sequence[str], skip: Sequence[str],
           prologue: Sequence[str], launch: WorkerLaunch, python: str, secret: bool) -> str:
    """The job script for ``launch``: ``prefix`` (``#SBATCH``, ``#$``) before each directive.
    With ``secret`` False the document is replaced by ``PLACEHOLDER`` (for ``script()``)."""
    lines = [f"#!{SHELL}"]
    lines += [f"{prefix} {d}" for d in directives if not any(word in d for word in skip)]
    lines += [d if d.startswith(prefix) else f"{prefix} {d}" for d in user_directives]
    lines += list(prologue)
    if launch.cwd:
        cwd = shlex.quote(launch.cwd)
        lines.append(f"if [ -d {cwd} ]; then cd {cwd}; fi")
    for name, value in launch.env.items():
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(f"exec {launch.shell_command(python)} <<'{HEREDOC}'")
    lines.append(document_line(launch.stdin) if secret else PLACEHOLDER)
    lines.append(HEREDOC)
    return "\n".join(lines) + "\n"


def document_line(stdin: bytes) -> str:
    """The launch document as the one line a here-document can carry."""
    text = stdin.decode()
    line = text[:-1] if text.endswith("\n") else text
    if "\n" in line or "\r" in line or line.strip() == HEREDOC:
        raise ValueError("a launch document for a job script must be one line (the launch document's JSON)")
    return line


def check_launch(launch: WorkerLaunch) -> None:
    """What a job script cannot carry: environment names a shell would not take."""
    for name in launch.env:
        if not _ENV_NAME.match(name):
            raise LaunchFailed(f"the environment variable name {name!r} cannot be exported by a job script")


def submit_environment() -> dict[str, str]:
    """The environment to run sbatch/qsub in: ours, without the client's credentials."""
    return {k: v for k, v in os.environ.items() if k not in ENV_LEFT_OUT}


def run(argv: list[str], what: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a resource manager's command, bounded by COMMAND_TIMEOUT; LaunchFailed if it cannot be run
    (not installed, timed out).  Its exit status is the caller's to judge."""
    try:
        feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                              env=submit_environment(), **feed)
    except FileNotFoundError:
        raise LaunchFailed(f"{argv[0]} was not found on PATH: {what} needs the resource manager's commands "
                           f"on this machine (a login node)") from None
    except subprocess.TimeoutExpired:
        raise LaunchFailed(f"{argv[0]} did not answer within {COMMAND_TIMEOUT:g} s") from None
    except OSError as exc:
        raise LaunchFailed(f"{argv[0]} could not be run: {exc}") from None


def words(done: subprocess.CompletedProcess) -> str:
    """What a command said (standard error, else output), on one line, for messages."""
    text = (done.stderr or "").strip() or (done.stdout or "").strip() or f"exit status {done.returncode}"
    return " ".join(text.split())


def check_lines(name: str, value: Sequence[str]) -> tuple[str, ...]:
    """A tuple of one-line strings from ``value``, or TypeError/ValueError naming the argument."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not one string: {name}=[{value!r}]")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of strings, not {type(value).__name__}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must be a list of strings; it holds {item!r}")
        if "\n" in item or "\r" in item:
            raise ValueError(f"each of {name} must be one line; {item!r} holds a line break (give one item per line)")
    return items


def check_text(name: str, value: str | None) -> str | None:
    """None, or a non-empty one-line string without spaces (a partition, queue, account...)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value or value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{name} must be a name without spaces, not {value!r}")
    return value


def check_count(name: str, value: int) -> int:
    """A positive int (cpus_per_task, slots)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be 1 or more, not {value}")
    return value


def walltime_seconds(value: float | str | None) -> int | None:
    """Seconds of a walltime given as seconds (int/float) or ``[D-]HH:MM:SS`` / ``MM:SS``; None for None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"walltime must be seconds or \"[D-]HH:MM:SS\", not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"walltime must be more than 0 seconds, not {value!r}")
        return max(1, math.ceil(value))
    if not isinstance(value, str):
        raise TypeError(f"walltime must be seconds or \"[D-]HH:MM:SS\", not {type(value).__name__}")
    from .joblimits import parse_duration

    seconds = parse_duration(value)
    if seconds is None or ":" not in value:
        raise ValueError(f"walltime {value!r} is not \"[D-]HH:MM:SS\" (e.g. \"1:00:00\", \"2-00:00:00\") "
                         f"nor a number of seconds")
    if seconds <= 0:
        raise ValueError(f"walltime must be more than 0 seconds, not {value!r}")
    return int(seconds)


def hms(seconds: int) -> str:
    """``HH:MM:SS`` (hours may pass 24), which sbatch --time and qsub -l h_rt both take."""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def memory_mib(value: int | str | None) -> int | None:
    """MiB (rounded up) of a memory size: bytes (int) or a string such as "4G", "512MB", "1.5GiB"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"memory must be bytes or a size such as \"4G\", not {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _MEMORY.match(value.strip())):
        size = float(m.group(1)) * _UNITS[m.group(2).upper()]
    elif isinstance(value, str):
        raise ValueError(f"memory {value!r} is not a size such as \"4G\", \"512M\", \"1.5GB\"")
    else:
        raise TypeError(f"memory must be bytes or a size such as \"4G\", not {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"memory must be more than 0, not {value!r}")
    return max(1, math.ceil(size / (1 << 20)))


def output_path(value: str | None) -> str:
    """Where a job's output goes: DISCARD by default, else an absolute path (the job does not start
    in the client's directory)."""
    if value is None:
        return DISCARD
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"output must be a file's path, not {type(value).__name__}")
    path = os.fspath(value)
    if not path or any(c.isspace() for c in path):
        raise ValueError(f"output must be a file's path without spaces (a job directive cannot quote it), "
                         f"not {value!r}")
    return os.path.abspath(path)


def tail(path: str, lines: int = 5, limit: int = 4096) -> str:
    """The last lines of a job's output file, if it can be read; "" otherwise."""
    if path == DISCARD:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class BatchLauncher(Launcher):
    """What the SLURM and Grid Engine launchers share: their arguments' checks, the job script, the
    output file's last lines in a status.  A subclass says how to submit, follow and stop jobs, and
    which directives its arguments become (``directives_for``)."""

    prefix = "#"  # before each directive line: "#SBATCH", "#$"

    def __init__(self, *, memory: int | str | None, walltime: float | str | None, directives: Sequence[str],
                 directives_skip: Sequence[str], prologue: Sequence[str], python: str | None,
                 output: str | None):
        if python is not None and (not isinstance(python, str) or not python.strip()):
            raise TypeError(f"python must be the interpreter's path on the nodes (a string), not {python!r}")
        super().__init__(python)
        self.memory = memory_mib(memory)
        self.walltime = walltime_seconds(walltime)
        self.directives = check_lines("directives", directives)
        self.directives_skip = check_lines("directives_skip", directives_skip)
        if any(not word for word in self.directives_skip):
            raise ValueError("directives_skip must not hold an empty string (it would leave out every directive)")
        self.prologue = check_lines("prologue", prologue)
        self.output = output_path(output)
        self._names: dict[str, str] = {}  # job id -> its job name, for output paths with patterns

    def directives_for(self, launch: WorkerLaunch) -> list[str]:
        """The directives this launcher's arguments become for ``launch`` (without the prefix)."""
        raise NotImplementedError

    def job_seconds(self, launch: WorkerLaunch) -> int | None:
        """The job's time limit: ``walltime``, else the launch's own wall time."""
        if self.walltime is not None:
            return self.walltime
        return max(1, math.ceil(launch.wall_time)) if launch.wall_time else None

    def job_script(self, launch: WorkerLaunch, secret: bool) -> str:
        return script(self.prefix, self.directives_for(launch), self.directives, self.directives_skip,
                      self.prologue, launch, self.python, secret)

    def secret_script(self, launch: WorkerLaunch) -> str:
        """The script to submit for ``launch``, its launch document in it: for sbatch's/qsub's standard
        input only."""
        check_launch(launch)
        return self.job_script(launch, secret=True)

    def script(self, launch: WorkerLaunch | None = None) -> str:
        """The job script ``launch`` would be submitted with, its launch document left out."""
        return self.job_script(launch or example_launch(), secret=False)

    def output_file(self, job_id: str) -> str | None:
        """The job's output file, its patterns filled in; None if it cannot be known here."""
        raise NotImplementedError

    # -- submitting and cancelling: the same steps, each resource manager's own commands and words --

    gone: tuple[str, ...] = ()  # what the cancel command says of jobs that ended already: no error

    def submit_argv(self) -> list[str]:
        """The command that reads a job script on its standard input and prints the job's id."""
        raise NotImplementedError

    def job_id(self, printed: str) -> str:
        """The job id in what the submit command printed."""
        raise NotImplementedError

    def cancel_argv(self, ids: list[str]) -> list[str]:
        """The command that ends these jobs."""
        raise NotImplementedError

    def launch(self, launch: WorkerLaunch) -> str:
        argv = self.submit_argv()
        done = run(argv, f"the {type(self).__name__} launcher", stdin=self.secret_script(launch))
        if done.returncode != 0:
            raise LaunchFailed(f"{argv[0]} refused the job of {launch.name}: {words(done)}")
        job = self.job_id(done.stdout.strip())
        if not job.isdigit():
            raise LaunchFailed(f"{argv[0]} did not print a job id for {launch.name}: {words(done)}")
        self._names[job] = job_name(launch)
        return job

    def terminate(self, job_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return
        argv = self.cancel_argv(ids)
        done = run(argv, f"the {type(self).__name__} launcher")
        # Jobs that already ended, are being deleted, or were forgotten are no error.
        said = f"{done.stdout or ''}\n{done.stderr or ''}".splitlines()
        problems = [line for line in said if line.strip() and not any(word in line for word in self.gone)]
        if done.returncode != 0 and problems:
            raise LaunchFailed(f"{argv[0]} failed: {' '.join(' '.join(problems).split())}")

    def ended(self, job_id: str, detail: str) -> JobStatus:
        """An ENDED status, with the last lines of the job's output when it can be read."""
        path = self.output_file(job_id)
        self._names.pop(job_id, None)
        last = tail(path) if path else ""
        return JobStatus(JobState.ENDED, f"{detail}; its output ends: {last}" if last else detail)


def job_name(launch: WorkerLaunch) -> str:
    return f"corral-{launch.name}"
