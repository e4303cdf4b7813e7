"""Layering: the engine works without the CLI libraries, read commands stay light, and each
third-party library is imported by the one module that owns it."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Collection
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
mods = sorted(n for n, m in sys.modules.items() if m is not None)  # None: kept out
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


def _module_name(path: Path, base: Path = PROJECT) -> str:
    """The dotted name of a source file under `base` (a package's __init__.py is the package)."""
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str = "", known: Collection[str] = ()) -> dict[str, bool]:
    """Every module a source file imports, anywhere in the file (at module level, inside
    functions, under `if TYPE_CHECKING:`, through `importlib.import_module("...")`), each mapped
    to whether some import of it runs (False: it is imported for type checkers only).

    `module` is the file's dotted name, to resolve relative imports; `from pkg import name` is an
    import of `pkg.name` when that is one of the `known` modules (a submodule), else of `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, bool] = {}

    def add(name: str, node: ast.AST) -> None:
        if name:
            found[name] = found.get(name, False) or id(node) not in type_only

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                add(submodule if submodule in known else base, node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node)
    return found


def _imported_roots(path: Path, module: str = "") -> set[str]:
    """Top-level names of every module a source file imports, anywhere in the file."""
    return {name.split(".")[0] for name in _imports(path, module)}


def _sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "cli.py" in files and PACKAGE / "store.py" in files
    return files


def _importers(*roots: str, runtime_only: bool = False) -> set[str]:
    """The package's files that import one of `roots` (with `runtime_only`: outside
    `if TYPE_CHECKING:`)."""
    found: set[str] = set()
    for path in _sources():
        imports = _imports(path, _module_name(path))
        if any(
            name.split(".")[0] in roots and (runs or not runtime_only)
            for name, runs in imports.items()
        ):
            found.add(str(path.relative_to(PROJECT)))
    return found


def test_only_store_imports_peewee() -> None:
    assert _importers("peewee", "playhouse") == {"offline_cli/store.py"}


def test_only_cli_imports_typer_and_rich() -> None:
    assert _importers("typer", "rich", "click") == {"offline_cli/cli.py"}


# The transport modules own httpx. engine.py and download.py still import it under
# `if TYPE_CHECKING:`, for annotations only (httpx.Client, httpx.BaseTransport); they should take
# those types from offline_cli.transfer. Listed exactly, so that fixing them (or a new one) shows
# here; pyproject.toml's import contract lists the same two.
TRANSPORT_MODULES = {"offline_cli/transfer.py", "offline_cli/playback.py"}
HTTPX_FOR_TYPES_ONLY: set[str] = set()  # they name transfer.HttpClient instead


def test_only_the_transport_modules_import_httpx() -> None:
    assert _importers("httpx", runtime_only=True) == TRANSPORT_MODULES
    assert _importers("httpx") - TRANSPORT_MODULES == HTTPX_FOR_TYPES_ONLY
    assert "offline_cli/cli.py" not in _importers("httpx")


def test_import_scanner_sees_nested_and_conditional_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import rich.progress\n"
        "else:\n    import json\n"
        "def f():\n    from peewee import Model\n"
        "import importlib\nimportlib.import_module('typer.core')\n",
        encoding="utf-8",
    )
    assert _imported_roots(sample) >= {"rich", "peewee", "typer", "typing", "importlib", "json"}
    imports = _imports(sample)
    assert imports["rich.progress"] is False  # for type checkers only
    assert imports["json"] is imports["peewee"] is imports["typer.core"] is True


def test_import_scanner_resolves_relative_imports_and_submodules(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    source = package / "sub" / "mod.py"
    source.write_text(
        "from . import sibling, CONSTANT\n"
        "from .. import top\n"
        "from ..other import name\n"
        "from pkg import top as again\n",
        encoding="utf-8",
    )
    known = {"pkg", "pkg.top", "pkg.other", "pkg.sub", "pkg.sub.mod", "pkg.sub.sibling"}
    assert _module_name(source, tmp_path) == "pkg.sub.mod"
    assert set(_imports(source, "pkg.sub.mod", known)) == {
        "pkg.sub.sibling",  # a submodule
        "pkg.sub",  # CONSTANT is a name in the package's __init__
        "pkg.top",
        "pkg.other",
    }
    init = package / "sub" / "__init__.py"
    init.write_text("from .mod import f\nfrom . import sibling\n", encoding="utf-8")
    assert set(_imports(init, "pkg.sub", known)) == {"pkg.sub.mod", "pkg.sub.sibling"}


# -- the module graph: no cycle, and the engine facade has two users ----------------------------


def _module_graph(package: Path) -> dict[str, set[str]]:
    """Each module of a package, with the package's modules it imports (any import, see
    _imports); an import of a package's own name is an edge to its __init__.py."""
    modules = {_module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}
    return {
        name: {imported for imported in _imports(path, name, modules) if imported in modules}
        - {name}
        for name, path in modules.items()
    }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its first module repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                return [*path[path.index(imported) :], imported]
            if imported not in done and (cycle := visit(imported)):
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle_in_the_package() -> None:
    graph = _module_graph(PACKAGE)
    assert "offline_cli.engine" in graph["offline_cli.cli"]  # the graph is not empty
    assert "offline_cli.transfer" in graph["offline_cli.engine"]  # imported inside a function
    assert "offline_cli.network" in graph["offline_cli.runtime"]  # under TYPE_CHECKING
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _engine_importers(graph: dict[str, set[str]]) -> set[str]:
    return {module for module, imported in graph.items() if "offline_cli.engine" in imported}


def test_only_the_cli_and_the_package_root_import_the_engine() -> None:
    assert _engine_importers(_module_graph(PACKAGE)) == {"offline_cli", "offline_cli.cli"}


@pytest.mark.parametrize(
    ("module", "added", "cycle"),
    [
        # what the commit before `jobs` had: the downloader typed its engine argument
        (
            "download",
            "if TYPE_CHECKING:\n    from offline_cli.engine import OfflineEngine\n",
            {"offline_cli.download", "offline_cli.engine"},
        ),
        (
            "models",
            "def _late():\n    from offline_cli import store\n",
            {"offline_cli.models", "offline_cli.store"},
        ),
        (
            "redaction",
            "def _late():\n    from .errors import OfflineError\n",
            {"offline_cli.errors", "offline_cli.redaction"},
        ),
    ],
)
def test_the_layer_checks_catch_an_added_import(
    tmp_path: Path, module: str, added: str, cycle: set[str]
) -> None:
    copy = tmp_path / "offline_cli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = copy / f"{module}.py"
    text = source.read_text(encoding="utf-8")
    if "TYPE_CHECKING" in added and "import TYPE_CHECKING" not in text:
        added = "from typing import TYPE_CHECKING\n" + added
    source.write_text(text + "\n" + added, encoding="utf-8")
    graph = _module_graph(copy)
    found = _find_cycle(graph)
    assert found is not None and found[0] == found[-1]
    assert set(found) == cycle
    if "engine" in added:
        assert _engine_importers(graph) == {
            "offline_cli",
            "offline_cli.cli",
            "offline_cli.download",
        }


def test_package_init_does_not_import_the_cli() -> None:
    assert "typer" not in _imported_roots(PACKAGE / "__init__.py", "offline_cli")
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


# -- the package root is lazy -------------------------------------------------------------------

_LOADED_AFTER_IMPORT = """
import json, sys
import {module}
print(json.dumps(sorted(n for n, m in sys.modules.items() if m is not None)))
"""


def _loaded_by_import(module: str, home: Path) -> set[str]:
    done = _run(_LOADED_AFTER_IMPORT.format(module=module), home)
    assert done.returncode == 0, done.stderr
    loaded = _last_json(done.stdout)
    assert isinstance(loaded, list)
    return set(loaded)


@pytest.mark.parametrize("module", ["offline_cli.transfer", "offline_cli.playback"])
def test_importing_a_part_does_not_load_the_engine_or_the_store(
    tmp_path: Path, module: str
) -> None:
    """Importing a part runs offline_cli/__init__.py first; the root must load its public names
    on first use, not then."""
    loaded = _loaded_by_import(module, tmp_path / "home")
    assert module in loaded and "offline_cli" in loaded
    heavy = loaded & {"offline_cli.engine", "offline_cli.store", "offline_cli.download"}
    heavy |= {m for m in loaded if m.split(".")[0] in ("peewee", "playhouse")}
    assert heavy == set()


def test_importing_the_root_loads_only_the_version(tmp_path: Path) -> None:
    loaded = _loaded_by_import("offline_cli", tmp_path / "home")
    assert {m for m in loaded if m.startswith("offline_cli")} == {
        "offline_cli",
        "offline_cli._version",
    }


def test_the_lazy_root_exports_the_same_names() -> None:
    import importlib

    from offline_cli import _LAZY

    assert set(offline_cli.__all__) == {*_LAZY, "__version__"}
    assert set(offline_cli.__all__) <= set(dir(offline_cli))
    for name, module in _LAZY.items():
        assert getattr(offline_cli, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = offline_cli.Nope  # type: ignore[attr-defined]
    # what type checkers are shown is what the root loads
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for_type_checkers = {
        alias.name: node.module
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert for_type_checkers == _LAZY
