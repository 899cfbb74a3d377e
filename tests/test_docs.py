"""The documentation's examples run as written.

Every ```python block of README.md and docs/*.md runs in a fresh interpreter; every ``corral``
command of a ```sh block parses with the real argument parser.  Blocks that are not meant to
run (diagrams, signatures, output) say so with ```text.  The README's example that submits to
``tcp://127.0.0.1:7700`` runs against the broker and worker its own commands start.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli import build_parser
from helpers import start_broker, start_worker, stop

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "text"}
README_ADDRESS = "tcp://127.0.0.1:7700"
README_FILE = "~/.corral/broker-7700/connection.json"  # in the session's $CORRAL_HOME while testing
README_BROKER = f"corral broker --listen {README_ADDRESS}"
README_WORKER = f"corral worker {README_FILE}"


def blocks(page: Path) -> list[tuple[str, int, str]]:
    """(language, line number, text) of each fenced block of ``page``."""
    found, language, start, body = [], None, 0, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if language is None and line.startswith("```"):
            language, start, body = line[3:].strip(), number, []
        elif language is not None and line.strip() == "```":
            found.append((language, start, "\n".join(body) + "\n"))
            language = None
        elif language is not None:
            body.append(line)
    assert language is None, f"{page.name}:{start}: a code block is never closed"
    return found


def _all(language: str) -> list:
    return [pytest.param(text, id=f"{page.name}:{line}") for page in PAGES
            for lang, line, text in blocks(page) if lang == language]


def test_every_block_names_its_language():
    for page in PAGES:
        for language, line, _ in blocks(page):
            assert language in LANGUAGES, f"{page.name}:{line}: fence language {language!r}, not one of {LANGUAGES}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("code", _all("python"))
def test_python_block_runs(code, tmp_path):
    started = []
    try:
        if README_FILE in code:  # needs the broker and worker of the README's commands
            readme = (ROOT / "README.md").read_text()
            assert README_BROKER in readme and README_WORKER in readme
            if not _port_free(7700):
                pytest.skip("port 7700 is taken")
            started.append(start_broker(README_ADDRESS))
            code = code.replace(README_FILE, started[0].connection)
            started.append(start_worker(started[0].connection))
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"the example failed:\n{code}\n{out.stderr}"
    finally:
        for proc in reversed(started):
            stop(proc)


def _commands(script: str):
    """Each ``corral ...`` command of a shell block, as its argument list (comments dropped)."""
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                if command[:1] == ["corral"]:
                    yield command[1:]
                command = []
            else:
                command.append(word)


@pytest.mark.parametrize("script", _all("sh"))
def test_corral_commands_in_shell_blocks_parse(script):
    for argv in _commands(script):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"`corral {' '.join(argv)}` does not parse (exit {exc.code})")


def test_shell_blocks_are_searched():
    """The parse test sees the README's commands, the first one included (after `&&`)."""
    commands = [argv for page in PAGES for lang, _, text in blocks(page) if lang == "sh" for argv in _commands(text)]
    assert ["demo"] in commands
    assert shlex.split(README_BROKER)[1:] in commands
    assert any(argv[:2] == shlex.split(README_WORKER)[1:] for argv in commands)
