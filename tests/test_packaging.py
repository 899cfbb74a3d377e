"""The sdist and the wheel, built as a packager builds them, hold what they should.

Both are built with ``python -m build`` (the sdist, then the wheel from the
sdist) from a copy of the working tree in a temporary directory, so that the
repository stays clean.  What they must hold is worked out from the working
tree at test time (git's tracked and untracked-but-not-ignored files), so a
module or a test file added or moved later is checked too.

The build needs the ``build`` package (in the ``test`` extra) and fetches its
build requirements (setuptools) from the configured package index.  Outside a
git checkout (in an unpacked sdist, say) these tests are skipped.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_FILES = ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml")
SDIST_DIRS = ("src/corral", "tests", "docs", "benchmarks")
CLASSIFIERS = {
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Developers",
    "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Topic :: System :: Distributed Computing",
    "Typing :: Typed",
}
URLS = {"Homepage", "Documentation", "Changelog", "Issues"}

pytestmark = pytest.mark.timeout(300)  # a cold build downloads setuptools into its isolated environment


def _working_tree() -> list[str]:
    """The repository's files as they stand: tracked ones still present, plus untracked ones git does not ignore."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    proc = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to build a distribution from")
    return sorted({name for name in proc.stdout.split("\0") if name and (REPO / name).is_file()})


def _under(files: list[str], *dirs: str) -> set[str]:
    return {f for f in files if any(f.startswith(d.rstrip("/") + "/") for d in dirs)}


@pytest.fixture(scope="module")
def tree() -> list[str]:
    return _working_tree()


@pytest.fixture(scope="module")
def dists(tree, tmp_path_factory) -> tuple[Path, Path]:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install -e '.[test]')")
    base = tmp_path_factory.mktemp("packaging")
    source, out = base / "source", base / "dist"
    for name in tree:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=280,
    )
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return sdists[0], wheels[0]


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def _dist_info(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name}-{version}.dist-info"


def _read_wheel(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(name).decode()


def test_the_wheel_holds_the_package_and_its_metadata_only(tree, dists):
    _, wheel = dists
    names = _wheel_names(wheel)
    dist_info = _dist_info(wheel)
    stray = [n for n in names if not (n.startswith("corral/") or n.startswith(dist_info + "/"))]
    assert not stray, f"the wheel holds files outside corral/ and its dist-info: {stray}"
    package = {n for n in names if n.startswith("corral/")}
    expected = {str(PurePosixPath(f).relative_to("src")) for f in _under(tree, "src/corral")}
    assert package == expected, (
        f"missing from the wheel: {sorted(expected - package)}; not in the source tree: {sorted(package - expected)}"
    )
    assert "corral/py.typed" in package
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]


def test_the_wheel_declares_the_corral_command(dists):
    _, wheel = dists
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_read_wheel(wheel, f"{_dist_info(wheel)}/entry_points.txt"))
    assert entry_points.has_option("console_scripts", "corral"), entry_points.sections()
    module, _, attr = entry_points.get("console_scripts", "corral").partition(":")
    assert attr, "the entry point names no function"
    path = module.strip().replace(".", "/")
    names = set(_wheel_names(wheel))
    assert f"{path}.py" in names or f"{path}/__init__.py" in names, f"the entry point's module {module} is not there"


def test_the_wheel_metadata_has_license_classifiers_and_urls(dists):
    _, wheel = dists
    dist_info = _dist_info(wheel)
    meta = email.parser.Parser().parsestr(_read_wheel(wheel, f"{dist_info}/METADATA"))
    assert meta["Name"] == "corral"
    assert meta["License-Expression"] == "MIT", meta["License-Expression"]
    assert meta["License"] is None, "the old free-text License field is deprecated next to License-Expression"
    assert "LICENSE" in meta.get_all("License-File", [])
    assert _read_wheel(wheel, f"{dist_info}/licenses/LICENSE") == (REPO / "LICENSE").read_text()
    assert meta["Author"] or meta["Author-email"]
    assert meta["Requires-Python"], "no Requires-Python"
    missing = CLASSIFIERS - set(meta.get_all("Classifier", []))
    assert not missing, f"classifiers missing: {sorted(missing)}"
    urls = {entry.split(",", 1)[0].strip(): entry.split(",", 1)[1].strip() for entry in meta.get_all("Project-URL", [])}
    assert URLS <= set(urls), f"project URLs missing: {sorted(URLS - set(urls))}"
    assert all(url.startswith("https://") for url in urls.values()), urls
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip().startswith("# corral"), "the long description is not the README"


def _sdist_names(sdist: Path) -> tuple[str, set[str]]:
    with tarfile.open(sdist) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
    top = {m.name.split("/", 1)[0] for m in members}
    assert len(top) == 1, f"the sdist has more than one top-level directory: {top}"
    return top.pop(), {m.name.split("/", 1)[1] for m in members}


def test_the_sdist_holds_sources_tests_docs_and_license(tree, dists):
    sdist, _ = dists
    _, names = _sdist_names(sdist)
    expected = set(TOP_FILES) | _under(tree, *SDIST_DIRS)
    assert {"tests/conftest.py", "tests/helpers.py", "src/corral/py.typed"} <= expected
    assert {f for f in expected if f.startswith("tests/test_")} >= {"tests/test_packaging.py"}
    missing = expected - names
    assert not missing, f"missing from the sdist: {sorted(missing)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]


def test_the_sdists_tests_can_be_collected(tree, dists, tmp_path):
    sdist, _ = dists
    top, _ = _sdist_names(sdist)
    with tarfile.open(sdist) as tf:
        if sys.version_info >= (3, 12):
            tf.extractall(tmp_path, filter="data")
        else:
            tf.extractall(tmp_path)  # our own archive, just built
    root = tmp_path / top
    env = dict(os.environ, PYTHONPATH=str(root / "src"))

    def python(*args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True,
                              check=False, timeout=timeout)

    where = python("-c", "import corral; print(corral.__file__)", timeout=60).stdout.strip()
    assert Path(where).resolve().is_relative_to(root.resolve()), f"corral was imported from {where}, not the sdist"
    proc = python("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"collection in the unpacked sdist failed:\n{output[-6000:]}"
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert "collected" in summary and "error" not in summary, output[-6000:]
    collected_files = {line.split("::", 1)[0] for line in proc.stdout.splitlines() if "::" in line}
    test_files = {f for f in tree if f.startswith("tests/test_") and f.endswith(".py")}
    assert collected_files and collected_files <= test_files, sorted(collected_files ^ test_files)
