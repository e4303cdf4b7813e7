"""Write what is generated from the app: docs/cli.md and the shell completion scripts.

    python docs/generate.py docs [--check] [--out PATH]
    python docs/generate.py completions [--check] [--out DIR]

`make docs` and `make completions` write them; `make docs-check` and `make completions-check`
(run by `make test`, so by CI) exit 1 naming what differs when a committed file is not what
the app generates now. The output depends on nothing but the code: no terminal width, no
colours, no home folder.

A script beside the package rather than a module of it: it walks the app's click objects,
and only cli.py may import typer (the import contracts in pyproject.toml).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

# Before typer and rich are imported: what they read from the environment must not depend on
# the terminal the generator runs in.
os.environ.update({"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"})
os.environ.pop("FORCE_COLOR", None)

import typer
import typer.main

from offline_cli.auth import TOKEN_ENV
from offline_cli.cli import (
    PROG,
    ParamHelp,
    app,
    command_examples,
    help_params,
    usage_pieces,
)
from offline_cli.config import (
    CONFIG_ENV,
    Settings,
    format_seconds,
    setting_env_var,
    setting_option,
)
from offline_cli.paths import HOME_ENV

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "cli.md"
COMPLETIONS = ROOT / "completions"
SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_OFFLINE_CLI_COMPLETE"

# Options whose default is a setting they do not share a name with.
DEFAULT_FROM = {"--older-than": "retention"}


# -- docs/cli.md ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _settings_by_option() -> dict[str, str]:
    names = {setting_option(f.name): f.name for f in fields(Settings) if f.name != "origins"}
    return names | DEFAULT_FROM


def _env_of(row: ParamHelp, by_option: dict[str, str]) -> str:
    if "--home" in row.opts:
        return HOME_ENV
    setting = next((by_option[o] for o in row.opts if o in by_option), None)
    return setting_env_var(setting) if setting else ""


def _table(rows: list[ParamHelp], by_option: dict[str, str]) -> list[str]:
    lines: list[str] = []
    arguments = [r for r in rows if r.argument]
    options = [r for r in rows if not r.argument]
    if arguments:
        lines += ["| Argument | Description |", "| --- | --- |"]
        lines += [f"| {_code(r.term)} | {_cell(r.help)} |" for r in arguments]
        lines.append("")
    if options:
        lines += ["| Option | Description | Default | Environment |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {_code(r.term)} | {_cell(r.help)} | {_code(r.default or '')} "
            f"| {_code(_env_of(r, by_option))} |"
            for r in options
        ]
        lines.append("")
    return lines


def _examples(command: Any) -> list[str]:
    examples = command_examples(command)
    if not examples:
        return []
    return ["Examples:" if len(examples) > 1 else "Example:", "", "```sh", *examples, "```", ""]


def _shown_setting(value: Any) -> str:
    """A setting's default as a user writes it: ``7d``, ``on``, ``unset``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "unset"
    if isinstance(value, float):  # every float setting is a duration in seconds
        return format_seconds(value)
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return str(value)


def _environment(by_option: dict[str, str]) -> list[str]:
    """Every variable: the home, the config file, the token, and one per setting, with the
    options that set it (or take their default from it). A setting's default is written as
    its options' --help writes it, so the page says one thing (``120s``, not also ``2m``)."""
    options: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for row in _all_rows():
        for opt in row.opts:
            setting = by_option.get(opt)
            if setting is None:
                continue
            if opt not in options.setdefault(setting, []):
                options[setting].append(opt)
            if row.default:
                shown.setdefault(setting, row.default)
    lines = [
        "## Environment",
        "",
        "Settings come from, in rising priority: defaults, the config file, these variables and "
        f"the command-line options (`{PROG} config` shows each value and its origin).",
        "",
        "| Variable | Meaning | Default | Options |",
        "| --- | --- | --- | --- |",
        f"| `{HOME_ENV}` | the home folder of the store | the user data folder | `--home` |",
        f"| `{CONFIG_ENV}` | the config file | `HOME/config.toml`, else the user config "
        "folder's `config.toml` | |",
        f"| `{TOKEN_ENV}` | a bearer token for the source's origin | `unset` | |",
    ]
    defaults = Settings()
    for f in fields(Settings):
        if f.name == "origins":
            continue
        default = shown.get(f.name) or _shown_setting(getattr(defaults, f.name))
        lines.append(
            f"| `{setting_env_var(f.name)}` | the `{f.name}` setting | {_code(default)} "
            f"| {', '.join(_code(o) for o in options.get(f.name, []))} |"
        )
    lines.append("")
    return lines


def _contexts() -> list[tuple[str, Any, Any]]:
    """(name, click command, context) of the app itself, then of each command in order."""
    group = typer.main.get_command(app)
    root = typer.Context(group, info_name=PROG, **(group.context_settings or {}))
    out = [(PROG, group, root)]
    for name in group.list_commands(root):  # type: ignore[attr-defined]
        command = group.get_command(root, name)  # type: ignore[attr-defined]
        if command is None or command.hidden:
            continue
        ctx = typer.Context(command, info_name=name, parent=root, **command.context_settings)
        out.append((name, command, ctx))
    return out


def _summary(command: Any) -> str:
    """The first paragraph of a command's help."""
    return inspect.cleandoc(command.help or "").split("\n\n")[0]


def _all_rows() -> list[ParamHelp]:
    return [row for _, command, ctx in _contexts() for row in help_params(command, ctx)]


def render_docs() -> str:
    by_option = _settings_by_option()
    (_, group, root), *commands = _contexts()
    lines = [
        f"# {PROG} command reference",
        "",
        "<!-- Generated from the app by `make docs` (docs/generate.py): do not edit by hand. "
        "CI fails when this file differs from what the app generates. -->",
        "",
        inspect.cleandoc(group.help or ""),
        "",
        "Every command prints this page's part with `-h` or `--help`. Global options come "
        f"before the command's name (`{PROG} --home ~/media state`); an option's default in "
        "the user's units, and the environment variable that sets it, are in its row. "
        "[Exit codes](../README.md#exit-codes) and the [configuration file]"
        "(../README.md#configuration) are described in the README.",
        "",
        "```text",
        f"{PROG} {' '.join(group.collect_usage_pieces(root))}",
        "```",
        "",
        "## Global options",
        "",
        *_table(help_params(group, root), by_option),
        *_examples(group),
        "## Commands",
        "",
        "| Command | What it does |",
        "| --- | --- |",
        *[f"| [`{name}`](#{name}) | {_cell(_summary(command))} |" for name, command, _ in commands],
        "",
    ]
    for name, command, ctx in commands:
        lines += [
            f"## {name}",
            "",
            "```text",
            f"{PROG} {name} {' '.join(usage_pieces(command, ctx))}",
            "```",
            "",
            inspect.cleandoc(command.help or ""),
            "",
            *_table(help_params(command, ctx), by_option),
            *_examples(command),
        ]
    lines += _environment(by_option)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- completions/ ----------------------------------------------------------------------------------


# typer's bash script, but for the words bash cuts at ':' (COMP_WORDBREAKS): every product
# name has one (track:42, and URLs), and `offline-cli delete track:4<Tab>` would ask to
# complete "4" after two arguments "track" and ":". The words are put back together before
# offline-cli is asked, and the part before the last ':' is taken off the replies, since bash
# replaces only what follows it (what bash-completion's __ltrim_colon_completions does).
BASH = r"""# bash completion for offline-cli: source this file (README.md, "Shell completion").
# Written by `make completions` (docs/generate.py); offline-cli answers each Tab itself.
_offline_cli_completion() {
    local IFS=$'\n' i word cur prefix
    local -a words=("${COMP_WORDS[0]}")
    for ((i = 1; i <= COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $COMP_WORDBREAKS == *:* && ${#words[@]} -gt 1 && -n $word ]] &&
            [[ $word == ":" || ${COMP_WORDS[i - 1]} == ":" ]]; then
            words[${#words[@]} - 1]+=$word
        else
            words+=("$word")
        fi
    done
    COMPREPLY=($(env COMP_WORDS="${words[*]}" COMP_CWORD=$((${#words[@]} - 1)) \
        _OFFLINE_CLI_COMPLETE=complete_bash "$1"))
    cur=${words[${#words[@]} - 1]}
    if [[ $COMP_WORDBREAKS == *:* && $cur == *:* ]]; then
        prefix=${cur%"${cur##*:}"}
        for i in "${!COMPREPLY[@]}"; do
            COMPREPLY[i]=${COMPREPLY[i]#"$prefix"}
        done
    fi
    return 0
}

complete -o default -F _offline_cli_completion offline-cli
"""


def render_completions() -> dict[str, str]:
    """The completion script of each shell. They call `offline-cli` back for each
    completion (as typer's scripts do; zsh's and fish's are typer's own), so they hold no
    command, option or product name and change only with the completion protocol."""
    from typer._completion_shared import get_completion_script

    scripts = {f"{PROG}.bash": BASH}
    for shell in SHELLS[1:]:
        script = get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell)
        scripts[f"{PROG}.{shell}"] = script + "\n"
    return scripts


# -- writing and checking ------------------------------------------------------------------------


def _differs(path: Path, text: str) -> list[str]:
    """The unified diff of ``path`` against ``text`` (all of it when ``path`` is missing)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old == text:
        return []
    return list(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            text.splitlines(keepends=True),
            f"{path} (committed)",
            f"{path} (generated)",
        )
    )


def _write_or_check(files: dict[Path, str], check: bool, make_target: str) -> int:
    if not check:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return 0
    stale = {path: diff for path, text in files.items() if (diff := _differs(path, text))}
    for path, diff in stale.items():
        sys.stderr.write(f"{path} differs from what the app generates:\n")
        sys.stderr.writelines(diff[:60])
        if len(diff) > 60:
            sys.stderr.write(f"... ({len(diff) - 60} more lines)\n")
    if stale:
        sys.stderr.write(f"run `make {make_target}` and commit the result\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["docs", "completions"])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, help="docs: the file; completions: the folder")
    args = parser.parse_args(argv)
    if args.what == "docs":
        return _write_or_check({args.out or DOCS: render_docs()}, args.check, "docs")
    folder = args.out or COMPLETIONS
    scripts = {folder / name: text for name, text in render_completions().items()}
    return _write_or_check(scripts, args.check, "completions")


if __name__ == "__main__":
    sys.exit(main())
