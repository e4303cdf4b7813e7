"""What a person at a shell reads and types: each command's --help (examples, human metavars,
defaults in the user's units), docs/cli.md generated from the app, and shell completion
(commands, options and the products in the store, completed by a real bash).

The drift checks run docs/generate.py as `make docs-check` and `make completions-check` do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
import typer.main
from pytest_httpserver import HTTPServer
from typer.testing import CliRunner

from offline_cli.cli import PROG, app
from offline_cli.config import Settings, format_setting, setting_env_var, setting_option
from offline_cli.engine import OfflineEngine
from offline_cli.models import MediaProduct, ProductType, parse_duration

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT / "docs" / "generate.py"
DOCS = ROOT / "docs" / "cli.md"
COMPLETIONS = ROOT / "completions"
COMMANDS = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
# What typer and click print for a parameter's Python type, in the versions we support.
PYTHON_TYPES = ("list[", "<int", "<str", "range>", "INTEGER", "TEXT", "<float", "<bool")
# The commands that complete product names from the store (export: its first argument).
PRODUCT_COMMANDS = ("state", "delete", "validate", "path", "export", "resume")


def _help(*args: str, columns: int = 100) -> str:
    env = {"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"}
    result = CliRunner().invoke(app, [*args, "--help"], env=env, prog_name=PROG)
    assert result.exit_code == 0, result.output
    return result.stdout


def _flat(text: str) -> str:
    """Help text with its wrapping undone (a `[default: 5]` may be cut across lines)."""
    return " ".join(text.split())


# -- --help -------------------------------------------------------------------------------------


def test_the_app_has_the_commands_the_issue_names() -> None:
    assert set(PRODUCT_COMMANDS) | {"offline", "cleanup", "health", "config"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_ends_with_examples_and_shows_no_python_types(command: str) -> None:
    text = _help(*([command] if command else []))
    lines = text.rstrip().splitlines()
    heading = max(i for i, line in enumerate(lines) if line.strip() in ("Example:", "Examples:"))
    examples = [line.strip() for line in lines[heading + 1 :]]
    assert 1 <= len(examples) <= 2, text
    assert all(PROG in example for example in examples), examples
    for python_type in PYTHON_TYPES:
        assert python_type not in text, (python_type, text)


@pytest.mark.parametrize("command", COMMANDS)
def test_examples_keep_their_lines_on_a_narrow_terminal(command: str) -> None:
    wide = _help(command).rstrip().splitlines()
    heading = max(i for i, line in enumerate(wide) if line.strip().startswith("Example"))
    narrow = _help(command, columns=30)
    for example in wide[heading + 1 :]:
        assert example in narrow.splitlines(), (example, narrow)


def test_options_and_arguments_have_human_metavars() -> None:
    offline = _flat(_help("offline"))
    for term in (
        "Usage: offline-cli offline [OPTIONS] [PRODUCT]...",
        "PRODUCT... URLs or TYPE:ID",
        "-i, --input FILE",
        "--id TYPE:ID",
        "--license-url URL",
        "--source TEMPLATE",
        "-j, --jobs N",
        "--limit-rate RATE",
        "--retries N",
        "--stall-timeout DURATION",
        "--network-timeout DURATION",
        "-H, --header HEADER",
    ):
        assert term in offline, term
    assert "Usage: offline-cli export [OPTIONS] PRODUCT DEST" in _help("export")
    assert "Usage: offline-cli delete [OPTIONS] PRODUCT..." in _help("delete")
    top = _flat(_help())
    for term in ("--home PATH", "--log-file FILE", "--db-timeout DURATION"):
        assert term in top, term
    assert "--older-than DURATION" in _help("cleanup")


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("offline", "--network-timeout", "2m"),
        ("offline", "--stall-timeout", "30s"),
        ("offline", "--jobs", "4"),
        ("offline", "--retries", "5"),
        ("offline", "--quality", "best"),
        ("offline", "--limit-rate", "none"),
        ("resume", "--network-timeout", "2m"),
        ("cleanup", "--older-than", "7d"),
        ("", "--db-timeout", "30s"),
    ],
)
def test_named_defaults_are_shown_in_the_users_units(
    command: str, option: str, default: str
) -> None:
    row = _flat(_rows(command)[option])
    assert row.endswith(f"[default: {default}]"), row


def _rows(command: str) -> dict[str, str]:
    """Each option of a command's --help (by every spelling) -> its help text, unwrapped."""
    rows: dict[str, str] = {}
    current: list[str] = []
    text = _help(*([command] if command else []))
    section = text.split("Options:\n", 1)[1].split("\n\n", 1)[0]
    for line in section.splitlines():
        if line.startswith("  -"):
            term = re.split(r"\s{2,}", line.strip())[0]  # "-j, --jobs N"
            current = [o.rstrip(",") for o in term.split() if o.startswith("-")]
            for opt in current:
                rows[opt] = line
        else:
            for opt in current:
                rows[opt] += " " + line.strip()
    return rows


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_option_set_by_a_setting_shows_that_settings_default(command: str) -> None:
    """The defaults in --help are written by hand (the settings are not imported to draw
    it, for start-up speed): each must say the setting's real default."""
    defaults = Settings()
    rows = _rows(command)
    for f in fields(Settings):
        option = setting_option(f.name)
        value = getattr(defaults, f.name)
        if option not in rows or value is None or isinstance(value, bool) or f.name == "headers":
            continue
        shown = _flat(rows[option]).split("[default: ", 1)[1].split("]")[0]
        if isinstance(value, float):
            assert parse_duration(shown) == value, (option, shown)
        # ... and in the very words `config` prints (a user compares the two)
        assert shown == format_setting(f.name, value), (option, shown)


# -- docs/cli.md --------------------------------------------------------------------------------


def _generate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(ROOT),
        env=env if env is not None else dict(os.environ),
    )


def test_committed_cli_docs_are_what_the_app_generates() -> None:
    done = _generate("docs", "--check")
    assert done.returncode == 0, done.stderr


def test_docs_check_fails_when_the_docs_drift(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text(DOCS.read_text().replace("[default: 30s]", "").replace("`30s`", "`31s`"))
    before = stale.read_bytes()
    done = _generate("docs", "--check", "--out", str(stale))
    assert done.returncode == 1
    assert "differs from what the app generates" in done.stderr
    assert "make docs" in done.stderr
    assert stale.read_bytes() == before  # a check writes nothing


def test_generated_docs_do_not_depend_on_the_terminal_or_the_home(tmp_path: Path) -> None:
    outputs = []
    for i, extra in enumerate(
        [
            {"COLUMNS": "40", "TERM": "xterm-256color", "FORCE_COLOR": "1", "HOME": "/nowhere"},
            {"COLUMNS": "250", "TERM": "dumb", "HOME": str(tmp_path), "OFFLINE_CLI_JOBS": "9"},
        ]
    ):
        out = tmp_path / f"cli{i}.md"
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "TERM")}
        done = _generate("docs", "--out", str(out), env=env | extra)
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == DOCS.read_text()
    assert str(Path.home()) not in outputs[0] and "/nowhere" not in outputs[0]
    assert "\x1b[" not in outputs[0]


def _section(text: str, command: str) -> str:
    return text.split(f"\n## {command}\n", 1)[1].split("\n## ", 1)[0]


def test_cli_docs_name_every_command_option_default_variable_and_example() -> None:
    text = DOCS.read_text()
    group = typer.main.get_command(app)
    for command in COMMANDS:
        section = _section(text, command)
        click_command = group.commands[command]  # type: ignore[attr-defined]
        for param in click_command.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert f"{opt}" in section, (command, opt)
        for example in (click_command.epilog or "").splitlines():
            assert f"\n{example.strip()}\n" in section, (command, example)
    offline = _section(text, "offline")
    row = next(line for line in offline.splitlines() if "--stall-timeout" in line)
    assert "`30s`" in row and f"`{setting_env_var('stall_timeout')}`" in row
    row = next(line for line in offline.splitlines() if "--network-timeout" in line)
    assert "`2m`" in row and "`OFFLINE_CLI_NETWORK_TIMEOUT`" in row
    row = next(line for line in offline.splitlines() if "--header" in line)
    assert "`OFFLINE_CLI_HEADERS`" in row
    row = next(line for line in text.splitlines() if line.startswith("| `--home PATH`"))
    assert "`OFFLINE_CLI_HOME`" in row
    row = next(line for line in _section(text, "cleanup").splitlines() if "--older-than" in line)
    assert "`7d`" in row and "`OFFLINE_CLI_RETENTION`" in row
    # Every setting's variable, with its default as a user writes it.
    for f in fields(Settings):
        if f.name != "origins":
            assert f"| `{setting_env_var(f.name)}` |" in text, f.name
    row = next(line for line in text.splitlines() if line.startswith("| `OFFLINE_CLI_RETENTION`"))
    assert "| `7d` | `--older-than` |" in row
    assert "604800" not in text and "None" not in text and "True" not in text


# -- completions/ --------------------------------------------------------------------------------


def test_committed_completions_are_what_make_completions_writes() -> None:
    done = _generate("completions", "--check")
    assert done.returncode == 0, done.stderr


def test_completions_check_fails_when_a_script_drifts(tmp_path: Path) -> None:
    stale = tmp_path / "completions"
    shutil.copytree(COMPLETIONS, stale)
    script = stale / "offline-cli.zsh"
    script.write_text(script.read_text().replace("offline-cli", "offline"))
    done = _generate("completions", "--check", "--out", str(stale))
    assert done.returncode == 1
    assert "offline-cli.zsh differs" in done.stderr and "make completions" in done.stderr
    assert "offline-cli.bash differs" not in done.stderr


@pytest.fixture
def stored(
    home: Path, httpserver: HTTPServer, make_engine: Callable[..., OfflineEngine]
) -> list[str]:
    """The test home holding track:42 and video:7, downloaded from a loopback server; their
    names."""
    httpserver.expect_request("/media").respond_with_data(b"m" * 1000)
    names = []
    with make_engine() as engine:
        for product_type, product_id in ((ProductType.TRACK, "42"), (ProductType.VIDEO, "7")):
            product = MediaProduct(product_type, product_id, url=httpserver.url_for("/media"))
            engine.offline(product)
            names.append(product.key)
    return names


def _bash_complete(home: Path, cases: list[list[str]]) -> list[list[str]]:
    """COMPREPLY of completions/offline-cli.bash's function for each command line (the last
    word is the one being completed), in a real bash with the console script on PATH."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    scripts = Path(sys.executable).parent
    assert (scripts / PROG).exists(), f"no {PROG} console script beside {sys.executable}"
    lines = [f"source {COMPLETIONS / 'offline-cli.bash'}"]
    for words in cases:
        quoted = " ".join(f"'{w}'" for w in words)
        lines += [
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()",
            f"_offline_cli_completion {PROG} '{words[-1]}' '{words[-2]}'",
            'printf "%s\\n" "${COMPREPLY[@]}"; echo "-- end --"',
        ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
    env |= {"PATH": f"{scripts}{os.pathsep}{env.get('PATH', '')}", "OFFLINE_CLI_HOME": str(home)}
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(home.parent),
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    replies = done.stdout.split("-- end --\n")
    assert replies[-1] == ""
    return [[w for w in reply.splitlines() if w] for reply in replies[:-1]]


def test_bash_completes_a_command_an_option_and_a_stored_product(
    home: Path, stored: list[str]
) -> None:
    assert stored == ["track:42", "video:7"]
    replies = _bash_complete(
        home,
        [
            [PROG, "sta"],
            [PROG, "state", "--j"],
            [PROG, "delete", "tra"],
            *([PROG, command, ""] for command in PRODUCT_COMMANDS),
            [PROG, "delete", "track:42", ""],  # a name already given is not offered again
            [PROG, "export", "track:42", "tra"],  # DEST is a file name, not a product
            [PROG, "--home", str(home.parent / "none"), "state", ""],
        ],
    )
    assert replies[0] == ["state"]
    assert replies[1] == ["--json"]
    assert replies[2] == ["track:42"]
    for command, reply in zip(PRODUCT_COMMANDS, replies[3:9], strict=True):
        assert reply == ["track:42", "video:7"], command
    assert replies[9] == ["video:7"]
    assert replies[10] == []
    assert replies[11] == []
    assert not (home.parent / "none").exists()


def test_bash_completes_a_product_name_that_bash_cut_at_its_colon(
    home: Path, stored: list[str]
) -> None:
    """bash splits `track:4` into `track`, `:`, `4` (':' is in COMP_WORDBREAKS) and replaces
    only what follows the colon: the script puts the name together and replies that part."""
    replies = _bash_complete(
        home,
        [
            [PROG, "delete", "track", ":", "4"],
            [PROG, "delete", "track", ":"],
            [PROG, "export", "video", ":"],
            [PROG, "state", "track", ":", "42", ""],
            [PROG, "path", "vid"],
        ],
    )
    assert replies == [["42"], ["42"], ["7"], ["video:7"], ["video:7"]]


# The probe runs the console script's main() as completion calls it, then prints what it
# imported (after the completions it wrote on stdout).
_PROBE = """
import json, sys
from offline_cli.cli import main
try:
    main()
except SystemExit:
    pass
loaded = sorted(n for n, m in sys.modules.items() if m is not None)  # None: kept out
sys.stdout.write("\\n" + json.dumps(loaded) + "\\n")
"""
# Completion reads the store alone: none of what downloads, nor the engine and its settings.
NOT_FOR_COMPLETION = {
    "httpx",
    "httpcore",
    "ssl",
    "backoff",
    "filelock",
    "rich",
    "offline_cli.transfer",
    "offline_cli.engine",
    "offline_cli.config",
}


def _complete_in_process(home: Path, line: str) -> tuple[list[str], set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
    words = line.split(" ")
    env |= {
        "OFFLINE_CLI_HOME": str(home),
        "_OFFLINE_CLI_COMPLETE": "complete_bash",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(words) - 1),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    *completions, modules = done.stdout.strip("\n").split("\n")
    loaded = {
        name
        for name in NOT_FOR_COMPLETION
        for module in json.loads(modules)
        if module == name or module.startswith(name + ".")
    }
    return [c for c in completions if c], loaded


def test_product_completion_reads_the_store_without_httpx(home: Path, stored: list[str]) -> None:
    completions, loaded = _complete_in_process(home, f"{PROG} resume vid")
    assert completions == ["video:7"]
    assert loaded == set()


def test_product_completion_creates_no_home_and_no_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert _complete_in_process(missing, f"{PROG} state ") == ([], set())
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _complete_in_process(empty, f"{PROG} delete tr") == ([], set())
    assert list(empty.iterdir()) == []


def test_names_the_shell_would_run_or_mangle_are_not_completed(
    home: Path, httpserver: HTTPServer, make_engine: Callable[..., OfflineEngine]
) -> None:
    """A URL product from a hostile list, `.../a$(touch x)`, completed unquoted, ran `touch`
    at Enter; names with quotes, spaces, `;`, `&` or escapes are left out."""
    httpserver.expect_request("/media").respond_with_data(b"m" * 100)
    base = httpserver.url_for("/media")
    hostile = [f"{base}?$(touch${{IFS}}pwned)", f"{base}?a=1;b", f"{base}?a=1&b=2", f"{base}?'q'"]
    with make_engine() as engine:
        for url in [*hostile, f"{base}?plain=1"]:
            engine.offline(MediaProduct(ProductType.FILE, url, url=url))
    (reply,) = _bash_complete(home, [[PROG, "path", "http"]])
    assert reply == [f"{base}?plain=1"]
    assert not (home.parent / "pwned").exists()


def test_completion_offers_at_most_a_thousand_names(tmp_path: Path) -> None:
    from offline_cli.cli import MAX_COMPLETIONS

    assert MAX_COMPLETIONS == 1000  # one Tab on 200,000 products printed 12 MB of names
