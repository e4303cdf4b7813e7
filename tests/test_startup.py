"""Start-up: what the read-only commands import, and the one-command app they run.

Speed is measured by the bench (`bench/run.py --only startup`), never asserted here; these
tests catch what makes start-up slow again: a module imported at the top of cli.py or of
the engine that only downloads need (httpx and its SSL context, the retry machinery with
asyncio, filelock, rich, the HLS planner), or the store for `--version` and `--help`.
Each command runs in a fresh interpreter, through main() as the console script calls it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

import offline_cli
from offline_cli.cli import PROG, _app_for, app

PROJECT = Path(offline_cli.__file__).parent.parent

# main() as the console script (.venv/bin/offline-cli) runs it: argv from sys.argv. Then the
# exit handlers run (as at exit), and what was imported is printed.
_PROBE = """
import atexit, gc, json, sys
sys.argv = ["offline-cli", *{args!r}]
from offline_cli.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
modules = sorted(name for name, module in sys.modules.items() if module is not None)
atexit._run_exitfuncs()
print(json.dumps({{"code": code, "modules": modules, "frozen": gc.get_freeze_count()}}))
"""

# Only what downloads (or removes, or repairs) need: never imported by a read-only command.
DOWNLOAD_ONLY = {
    "httpx",
    "httpcore",
    "ssl",
    "asyncio",
    "backoff",
    "filelock",
    "m3u8",
    "concurrent.futures",
    "playhouse.migrate",
    "offline_cli.transfer",
    "offline_cli.download",
    "offline_cli.retry",
    "offline_cli.runtime",
    "offline_cli.hls",
    "offline_cli.credentials",
    "offline_cli.maintenance",
}
# Not even the store: --version and --help print what the app definition holds.
STORE = {"peewee", "sqlite3", "offline_cli.engine", "offline_cli.store", "offline_cli.config"}


def _probe(args: list[str], home: Path, config: Path) -> tuple[int, set[str], str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
    env.update(
        {
            "OFFLINE_CLI_HOME": str(home),
            "OFFLINE_CLI_CONFIG": str(config),
            "NO_COLOR": "1",
            "PYTHONPATH": str(PROJECT),
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(args=args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(PROJECT),
    )
    assert "Traceback" not in done.stderr, done.stderr
    *output, last = done.stdout.strip().splitlines()
    result = json.loads(last)
    return int(result["code"] or 0), set(result["modules"]), "\n".join(output), result["frozen"]


def _loaded(modules: set[str], names: set[str]) -> set[str]:
    """Which of ``names`` (a package counts with its submodules) were imported."""
    return {n for n in names for m in modules if m == n or m.startswith(n + ".")}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("")
    return path


@pytest.fixture
def stored_home(tmp_path: Path) -> tuple[Path, str]:
    """A home holding one offlined product (made by the engine), and the product's name."""
    from pytest_httpserver import HTTPServer

    from offline_cli import MediaProduct, OfflineEngine, ProductType

    home = tmp_path / "home"
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/m").respond_with_data(b"x" * 10_000)
    server.start()
    try:
        with OfflineEngine(home) as engine:
            engine.offline(MediaProduct(ProductType.TRACK, "1", url=server.url_for("/m")))
    finally:
        server.clear()
        server.stop()
    return home, "track:1"


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["-h"]])
def test_version_and_help_import_neither_the_store_nor_the_downloads(
    tmp_path: Path, config: Path, args: list[str]
) -> None:
    code, modules, output, _ = _probe(args, tmp_path / "home", config)
    assert code == 0
    assert output.startswith(f"{PROG} {offline_cli.__version__}") or "Usage:" in output
    assert "offline_cli.cli" in modules  # the probe did run the CLI
    assert _loaded(modules, DOWNLOAD_ONLY | STORE | {"rich"}) == set()
    assert not (tmp_path / "home").exists()  # and nothing was created


def test_state_of_a_stored_product_imports_only_the_store(
    stored_home: tuple[Path, str], config: Path
) -> None:
    home, name = stored_home
    code, modules, output, _ = _probe(["state", name], home, config)
    assert (code, output) == (0, "OFFLINED_AND_VALID")
    assert {"offline_cli.engine", "offline_cli.store", "peewee"} <= modules
    assert _loaded(modules, DOWNLOAD_ONLY | {"rich", "tomllib"}) == set()


@pytest.mark.parametrize("args", [["state"], ["--home", "{home}", "-q", "state", "--json"]])
def test_state_of_every_product_imports_no_download_machinery(
    stored_home: tuple[Path, str], config: Path, args: list[str]
) -> None:
    home, name = stored_home
    code, modules, output, _ = _probe([a.format(home=home) for a in args], home, config)
    assert code == 0
    assert name in output
    assert _loaded(modules, DOWNLOAD_ONLY | {"rich"}) == set()


def test_a_download_does_not_import_the_command_line_of_httpx(
    tmp_path: Path, config: Path, httpserver: Any
) -> None:
    """httpx imports its own CLI (click, rich, pygments) unless offline_cli stops it."""
    httpserver.expect_request("/m").respond_with_data(b"x" * 1000)
    url = httpserver.url_for("/m")
    code, modules, _, _ = _probe(["-q", "offline", url], tmp_path / "h", config)
    assert code == 0
    assert "httpx" in modules
    assert _loaded(modules, {"httpx._main", "pygments"}) == set()


def test_a_command_line_freezes_its_objects_at_exit(tmp_path: Path, config: Path) -> None:
    """The shutdown's garbage collection over every live object is skipped (see main())."""
    code, _, _, frozen = _probe(["--version"], tmp_path / "home", config)
    assert code == 0
    assert frozen > 1000


# -- the one-command app ----------------------------------------------------------------------


def _names(one: typer.Typer) -> list[str]:
    group = typer.main.get_command(one)
    assert isinstance(group, typer.core.TyperGroup)
    return sorted(group.commands)


def test_each_command_gets_an_app_of_its_own() -> None:
    every = _names(app)
    assert "state" in every and "delete-all" in every and "path" in every
    for name in every:
        one = _app_for([name, "x"])
        assert one is not app
        assert _names(one) == [name]


@pytest.mark.parametrize(
    "args",
    [
        ["--home", "H", "state"],
        ["--home=H", "-q", "--verbose", "state", "--json"],
        ["--db-timeout", "state", "state"],  # the option's value is not the command
        ["--log-file", "L", "-v", "state", "--help"],
    ],
)
def test_global_options_before_the_command_are_skipped(args: list[str]) -> None:
    assert _names(_app_for(args)) == ["state"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["--version", "state"],
        ["-qv", "state"],  # combined flags: not worth parsing here
        ["stat"],  # not a command: the whole app suggests one
        ["--home"],
        ["--", "state"],
    ],
)
def test_the_whole_app_when_the_command_is_not_certain(args: list[str]) -> None:
    assert _app_for(args) is app


def test_completion_always_gets_the_whole_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_OFFLINE_CLI_COMPLETE", "complete_bash")
    assert _app_for(["state"]) is app


@pytest.mark.parametrize(
    "args",
    [
        ["state", "--help"],
        ["state", "--bogus"],
        ["state", "nonsense"],
        ["-q", "state", "--json", "track:1"],
        ["offline"],
        ["export", "track:1"],
        ["cleanup", "--older-than", "soon"],
        ["config", "--json"],
        ["delete-all", "--help"],
    ],
)
def test_the_one_command_app_behaves_as_the_whole_app(tmp_path: Path, args: list[str]) -> None:
    env = {"OFFLINE_CLI_HOME": str(tmp_path / "home"), "NO_COLOR": "1", "COLUMNS": "100"}
    runner = CliRunner()
    whole = runner.invoke(app, args, env=env, prog_name=PROG)
    one = runner.invoke(_app_for(args), args, env=env, prog_name=PROG)
    assert _app_for(args) is not app
    assert (one.exit_code, one.stdout, one.stderr) == (whole.exit_code, whole.stdout, whole.stderr)
