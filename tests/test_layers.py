"""Layering: the engine works without the CLI libraries, read commands stay light, and each
third-party library is imported by the one module that owns it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import offline_cli

PACKAGE = Path(offline_cli.__file__).parent
PROJECT = PACKAGE.parent

# A meta path finder that makes the CLI libraries unimportable, as if not installed.
BLOCK_CLI_LIBS = """
import importlib.abc, sys
BLOCKED = {"typer", "rich", "click"}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by test)", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run(code: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
    env.update({"OFFLINE_CLI_HOME": str(home), "NO_COLOR": "1", "PYTHONPATH": str(PROJECT)})
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(PROJECT),
    )


def _last_json(stdout: str) -> object:
    return json.loads(stdout.strip().splitlines()[-1])


# -- the engine without typer and rich ----------------------------------------------------------


def test_blocker_really_blocks(tmp_path: Path) -> None:
    code = BLOCK_CLI_LIBS + textwrap.dedent(
        """
        try:
            import offline_cli.cli
        except ModuleNotFoundError as exc:
            print("blocked", exc.name)
        """
    )
    done = _run(code, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "blocked"


def test_engine_imports_and_works_without_typer_and_rich(tmp_path: Path) -> None:
    code = BLOCK_CLI_LIBS + textwrap.dedent(
        """
        import http.server, json, sys, threading

        import offline_cli
        from offline_cli import (
            MediaProduct, OfflineEngine, OfflineEngineListener, OfflineState, ProductType,
        )

        BODY = b"engine without cli " * 5000

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/m"

        class Listener(OfflineEngineListener):
            events = []
            def offlining_started(self, product):
                self.events.append("started")
            def offlining_completed(self, product):
                self.events.append("completed")

        listener = Listener()
        with OfflineEngine(listener=listener) as engine:
            product = MediaProduct(ProductType.TRACK, "1", url=url)
            before = engine.get_offline_state(product).value
            ok = engine.offline(product)
            after = engine.get_offline_state(product).value
            health = engine.get_download_health().downloads_succeeded
        server.shutdown()
        loaded = sorted(
            m for m in sys.modules if m.split(".")[0] in ("typer", "rich", "click")
        )
        print(json.dumps({
            "before": before, "ok": ok, "after": after, "events": listener.events,
            "health": health, "loaded": loaded,
        }))
        """
    )
    home = tmp_path / "home"
    done = _run(code, home)
    assert done.returncode == 0, done.stderr
    assert _last_json(done.stdout) == {
        "before": "NOT_OFFLINED",
        "ok": True,
        "after": "OFFLINED_AND_VALID",
        "events": ["started", "completed"],
        "health": 1,
        "loaded": [],
    }
    assert (home / "offline.db").is_file()


def test_engine_imports_with_cli_modules_set_to_none(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import json, sys
        sys.modules["typer"] = None
        sys.modules["rich"] = None
        import offline_cli
        from offline_cli import OfflineEngine, MediaProduct, ProductType
        engine = OfflineEngine()
        state = engine.get_offline_state(MediaProduct(ProductType.VIDEO, "7")).value
        engine.close()
        print(json.dumps({"state": state, "version": offline_cli.__version__}))
        """
    )
    done = _run(code, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert _last_json(done.stdout) == {
        "state": "NOT_OFFLINED",
        "version": offline_cli.__version__,
    }


# -- read commands stay light -------------------------------------------------------------------

_RUN_COMMAND = """
import json, sys
from offline_cli.cli import main
try:
    main({args!r})
    code = 0
except SystemExit as exc:
    code = exc.code
mods = sorted(sys.modules)
print(json.dumps({{"code": code, "modules": mods}}))
"""


def _loaded_after(args: list[str], home: Path) -> tuple[int, set[str], str]:
    done = _run(_RUN_COMMAND.format(args=args), home)
    assert "Traceback" not in done.stderr, done.stderr
    result = _last_json(done.stdout)
    assert isinstance(result, dict)
    return int(result["code"] or 0), set(result["modules"]), done.stdout


@pytest.fixture
def filled_home(tmp_path: Path) -> Path:
    """A home with one offlined product and one failed download, made by the engine."""
    from pytest_httpserver import HTTPServer

    from offline_cli import MediaProduct, OfflineEngine, ProductType
    from offline_cli.errors import DownloadError

    home = tmp_path / "home"
    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("/m").respond_with_data(b"x" * 10_000)
    server.expect_request("/gone").respond_with_data("no", status=404)
    server.start()
    try:
        with OfflineEngine(home) as engine:
            engine.offline(MediaProduct(ProductType.TRACK, "1", url=server.url_for("/m")))
            with pytest.raises(DownloadError):
                engine.offline(MediaProduct(ProductType.TRACK, "2", url=server.url_for("/gone")))
    finally:
        server.clear()
        server.stop()
    return home


def test_state_does_not_load_httpx_or_rich_progress(filled_home: Path) -> None:
    code, modules, stdout = _loaded_after(["state"], filled_home)
    assert code == 0
    assert "track:1\tOFFLINED_AND_VALID" in stdout
    assert "track:2\tNOT_OFFLINED" in stdout
    assert "offline_cli.cli" in modules  # the probe did run the CLI
    assert not {m for m in modules if m == "httpx" or m.startswith("httpx.")}
    assert "rich.progress" not in modules


@pytest.mark.parametrize(
    "args",
    [
        ["state", "--json"],
        ["state", "track:1", "track:2"],
        ["health", "--json"],
        ["cleanup", "--dry-run"],
        ["config"],
    ],
)
def test_other_read_commands_do_not_load_httpx(filled_home: Path, args: list[str]) -> None:
    code, modules, _ = _loaded_after(args, filled_home)
    assert code == 0
    assert "httpx" not in modules
    assert "rich.progress" not in modules


def test_state_on_a_new_home_is_light_too(tmp_path: Path) -> None:
    code, modules, _ = _loaded_after(["state"], tmp_path / "new-home")
    assert code == 0
    assert "httpx" not in modules
    assert "rich.progress" not in modules


# -- who imports what -----------------------------------------------------------------------------


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module a source file imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def _sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "cli.py" in files and PACKAGE / "store.py" in files
    return files


def _importers(*roots: str) -> set[str]:
    return {
        str(path.relative_to(PROJECT)) for path in _sources() if _imported_roots(path) & set(roots)
    }


def test_only_store_imports_peewee() -> None:
    assert _importers("peewee", "playhouse") == {"offline_cli/store.py"}


def test_only_cli_imports_typer_and_rich() -> None:
    assert _importers("typer", "rich", "click") == {"offline_cli/cli.py"}


def test_import_scanner_sees_nested_and_conditional_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import rich.progress\n"
        "def f():\n    from peewee import Model\n"
        "import importlib\nimportlib.import_module('typer.core')\n",
        encoding="utf-8",
    )
    assert _imported_roots(sample) >= {"rich", "peewee", "typer", "typing", "importlib"}


def test_package_init_does_not_import_the_cli() -> None:
    assert "typer" not in _imported_roots(PACKAGE / "__init__.py")
    names = {
        node.module
        for node in ast.walk(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "offline_cli.cli" not in names


def test_no_module_imports_the_package_root() -> None:
    """The root imports the engine and the store: a part that imported it (for the version)
    would drag them in, and close an import cycle."""
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "offline_cli"
        ]
        assert roots == [], f"{path.name} imports the package root"
