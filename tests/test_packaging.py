"""Packaging: the sdist and the wheel build without deprecation warnings, carry the
completions and the docs, take the version from offline_cli/_version.py, and the wheel
installed into a fresh virtual environment gives a working `offline-cli` and
`python -m offline_cli`.

No network: `python -m build --no-isolation` builds with the setuptools of this environment
(the test extras bring it), the wheel is installed with `--no-deps --no-index`, and the new
environment finds the dependencies in this one's site-packages.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from offline_cli import __version__

ROOT = Path(__file__).resolve().parents[1]
# Where the wheel's data files land under an environment's prefix (pyproject.toml,
# [tool.setuptools.data-files]); the README's install section names the same.
COMPLETIONS_DIR = "share/offline-cli/completions"
DOCS_DIR = "share/doc/offline-cli"
STEP_TIMEOUT_S = 300.0  # against a hang only
# What a source checkout has that is no part of the source (built or cached files).
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "results",
)


def _completions() -> list[str]:
    return sorted(p.name for p in (ROOT / "completions").iterdir() if p.is_file())


def _docs() -> list[str]:
    return sorted(p.name for p in (ROOT / "docs").glob("*.md"))


@dataclass
class Built:
    sdist: Path
    wheel: Path
    log: str  # what the build printed, stdout and stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``python -m build``: the sdist from a copy of the checkout, then the wheel from the
    unpacked sdist (so the wheel proves the sdist holds everything it needs)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return Built(sdist, wheel, log)


def test_the_build_prints_no_deprecation_warning(built: Built) -> None:
    assert "deprecat" not in built.log.lower(), built.log


def test_the_version_is_written_in_one_place() -> None:
    """pyproject.toml reads it from offline_cli/_version.py; no other file says it."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.MULTILINE)
    assert 'version = { attr = "offline_cli._version.__version__" }' in pyproject
    literal = re.compile(rf"(?<![\d.]){re.escape(__version__)}(?![\d.])")
    writers = [
        p.relative_to(ROOT).as_posix()
        for p in [ROOT / "pyproject.toml", *sorted((ROOT / "offline_cli").glob("*.py"))]
        if literal.search(p.read_text())
    ]
    assert writers == ["offline_cli/_version.py"]


def test_the_sdist_holds_the_completions_docs_and_tests(built: Built) -> None:
    top = f"offline_cli-{__version__}"
    assert built.sdist.name == f"{top}.tar.gz"
    with tarfile.open(built.sdist) as sdist:
        names = set(sdist.getnames())
        pkg_info = sdist.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    assert f"\nVersion: {__version__}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    for name in _completions():
        assert f"{top}/completions/{name}" in names
    for name in _docs():
        assert f"{top}/docs/{name}" in names
    assert f"{top}/offline_cli/_version.py" in names
    assert f"{top}/tests/conftest.py" in names
    assert f"{top}/Makefile" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_wheel_holds_the_package_completions_and_docs(built: Built) -> None:
    assert built.wheel.name == f"offline_cli-{__version__}-py3-none-any.whl"
    data = f"offline_cli-{__version__}.data/data"
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"offline_cli-{__version__}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"offline_cli-{__version__}.dist-info/entry_points.txt")
    assert f"\nVersion: {__version__}\n" in metadata
    assert b"offline-cli = offline_cli.cli:main" in entry_points
    for module in ("__main__.py", "_version.py", "cli.py", "py.typed"):
        assert f"offline_cli/{module}" in names
    for name in _completions():
        assert f"{data}/{COMPLETIONS_DIR}/{name}" in names
    for name in [*_docs(), "README.md"]:
        assert f"{data}/{DOCS_DIR}/{name}" in names
    # Neither the tests nor the demo are installed.
    assert not [n for n in names if n.startswith(("tests/", "docs/")) or n.endswith("demo.py")]


def test_the_wheel_installed_in_a_fresh_environment_works(built: Built, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=STEP_TIMEOUT_S,
    )
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies (typer, httpx, ...) from this environment, after the venv's own
    # packages; a plain path line, so this environment's editable offline_cli stays out.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install"),
            *("--no-deps", "--no-index", "--disable-pip-version-check", str(built.wheel)),
        ],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert "deprecat" not in (install.stdout + install.stderr).lower()

    # Run from elsewhere than the checkout: `python -m` would import ./offline_cli first.
    def run(*args: str) -> str:
        done = subprocess.run(
            list(args), capture_output=True, text=True, cwd=tmp_path, timeout=STEP_TIMEOUT_S
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = run(str(python), "-c", "import offline_cli; print(offline_cli.__file__)")
    assert Path(where.strip()).is_relative_to(site)
    assert run(str(venv / "bin" / "offline-cli"), "--version") == f"offline-cli {__version__}\n"
    assert run(str(python), "-m", "offline_cli", "--version") == f"offline-cli {__version__}\n"
    for name in _completions():
        installed = venv / COMPLETIONS_DIR / name
        assert installed.read_bytes() == (ROOT / "completions" / name).read_bytes()
    for name in _docs():
        assert (venv / DOCS_DIR / name).read_bytes() == (ROOT / "docs" / name).read_bytes()
    assert (venv / DOCS_DIR / "README.md").is_file()
