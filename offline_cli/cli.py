"""The command line: parse, call the engine, draw progress, map errors to exit codes.

The only module that imports typer or rich. Start-up matters (scripts call `state` in loops):
at module level only what defining the app needs is imported. The engine (store, peewee,
settings) is imported by the commands that use it, rich only where something is drawn, and
`--version` and `--help` import neither (tests/test_startup.py checks what each imports).
"""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import json
import logging
import os
import re
import signal
import stat
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import typer.core

from offline_cli._version import __version__
from offline_cli.errors import (
    BusyError,
    ConfigError,
    DownloadError,
    DownloadInterrupted,
    NotStored,
    OfflineError,
    Terminated,
    UsageError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.models import (
    MediaProduct,
    OfflinedEntry,
    OfflineState,
    check_sha256,
    check_url,
    human_bytes,
    looks_like_url,
    parse_duration,
    parse_product_name,
)
from offline_cli.paths import HOME_ENV, PRIVATE_FILE_MODE, default_home
from offline_cli.redaction import escape_controls, has_controls

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from offline_cli.auth import RequestCredentials
    from offline_cli.config import Settings
    from offline_cli.engine import OfflineEngine, ProductResult
    from offline_cli.export import StoredProduct
    from offline_cli.maintenance import CleanupItem

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_STORAGE = 0, 1, 2, 3, 4
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
_PAUSED_NOTE = "the downloads in progress were saved as PAUSED (run `offline-cli resume`)"
PROG = "offline-cli"


# typer may vendor click (typer._click) or use the click package; find its exception
# classes through a public one instead of importing either by name.
_CLICK_MRO = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
_ClickException: type[Exception] = _CLICK_MRO["ClickException"]
_ClickUsageError: type[Exception] = _CLICK_MRO["UsageError"]


class _OneLineErrors(typer.core.TyperGroup):
    """Typer group whose usage errors are one line on stderr with exit 2 (no boxes)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except typer.Exit as exc:  # pragma: no cover - typer returns the code instead
            result = exc.exit_code
        except typer.Abort:
            result = EXIT_SIGINT
        except _ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                # No arguments at all: show the help as help (not flattened into one line).
                sys.stderr.write(exc.format_message().rstrip() + "\n")  # type: ignore[attr-defined]
                sys.exit(EXIT_USAGE)
            message = exc.format_message().strip().replace("\n", " ")  # type: ignore[attr-defined]
            if isinstance(exc, _ClickUsageError):
                _print_error(f"{message} (see '{PROG} --help')")
                sys.exit(EXIT_USAGE)
            _print_error(message)
            sys.exit(getattr(exc, "exit_code", EXIT_FAILED))
        finally:
            _close_engines()
        # Without standalone mode typer returns the exit code (130 for Ctrl-C) or None.
        code = result if isinstance(result, int) else EXIT_OK
        if code == EXIT_SIGINT:
            _print_error(_interrupted_line("interrupted"))
        sys.exit(code)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _format_examples(self, formatter)


# -- help -----------------------------------------------------------------------------------------
# --help is drawn here rather than by typer: typer shows Python types (`<list[str]>`,
# `<int range>`, `INTEGER RANGE`, depending on its version), ignores an argument's metavar and
# rewraps examples. docs/cli.md is written from the same records (docs/generate.py).


@dataclass(frozen=True)
class ParamHelp:
    """One argument or option as `--help` and docs/cli.md show it."""

    argument: bool
    opts: tuple[str, ...]  # every spelling of an option ("-j", "--jobs"); () for an argument
    metavar: str | None  # "N", "DURATION", "PRODUCT..."; None for a flag
    help: str
    default: str | None  # in the user's units ("30s", "best"); None when there is none

    @property
    def term(self) -> str:
        """``-j, --jobs N`` or ``PRODUCT...``."""
        names = ", ".join(self.opts)
        return " ".join(part for part in (names, self.metavar) if part)

    @property
    def text(self) -> str:
        return f"{self.help}  [default: {self.default}]" if self.default else self.help


def _metavar(param: Any) -> str | None:
    """A human name for a parameter's value: its own metavar, else its name in capitals
    (never its Python type); None for a flag."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    name = param.metavar or (param.name or "value").upper()
    return f"{name}..." if param.nargs == -1 else str(name)


def _shown_default(param: Any) -> str | None:
    """The default --help names: an option's ``show_default`` text (a default that comes
    from the settings, written in the user's units), else a plain text or number default
    (not a flag's False, nor the sentinel some click versions use for "none")."""
    if isinstance(param.show_default, str):
        return param.show_default or None
    if param.show_default is False or getattr(param, "is_flag", False):
        return None
    default = param.default
    if isinstance(default, str | int | float) and not isinstance(default, bool) and default != "":
        return str(default)
    return None


def _is_long(opt: str) -> bool:
    return opt.startswith("--")


def help_params(command: Any, ctx: Any) -> list[ParamHelp]:
    """Every visible argument and option of a click ``command``, as --help shows them."""
    rows = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        argument = param.param_type_name == "argument"
        # Short spellings first (-j, --jobs), the same on every run: typer's order varies.
        opts = () if argument else sorted((*param.opts, *param.secondary_opts), key=_is_long)
        rows.append(
            ParamHelp(
                argument, tuple(opts), _metavar(param), param.help or "", _shown_default(param)
            )
        )
    return rows


def usage_pieces(command: Any, ctx: Any) -> list[str]:
    """The usage line after the command's name: ``[OPTIONS] PRODUCT DEST``."""
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.get_params(ctx):
        if param.param_type_name != "argument":
            continue
        name = param.metavar or (param.name or "value").upper()
        shown = name if param.required else f"[{name}]"
        pieces.append(f"{shown}..." if param.nargs == -1 else shown)
    return pieces


def command_examples(command: Any) -> list[str]:
    """The example command lines that end a command's --help (its epilog, one a line)."""
    return [line.strip() for line in (command.epilog or "").splitlines() if line.strip()]


def _format_params(command: Any, ctx: Any, formatter: Any) -> None:
    rows = help_params(command, ctx)
    for title, argument in (("Arguments", True), ("Options", False)):
        records = [(row.term, row.text) for row in rows if row.argument is argument]
        if records:
            with formatter.section(title):
                formatter.write_dl(records)


def _format_examples(command: Any, formatter: Any) -> None:
    """The examples, each on a line of its own as written (help text would be rewrapped)."""
    examples = command_examples(command)
    if not examples:
        return
    formatter.write_paragraph()
    formatter.write_text("Examples:" if len(examples) > 1 else "Example:")
    indent = " " * (formatter.current_indent + 2)
    for line in examples:
        formatter.write(f"{indent}{line}\n")


class _Command(typer.core.TyperCommand):
    """A command whose --help is drawn by the functions above."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return usage_pieces(self, ctx)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        _format_examples(self, formatter)


_F = TypeVar("_F", bound=Callable[..., Any])


def _command(name: str | None = None, *, examples: Sequence[str]) -> Callable[[_F], _F]:
    """``app.command``, with the plain help above and the examples that end its --help."""
    return app.command(name, cls=_Command, epilog="\n".join(examples))


_APP_OPTIONS: dict[str, Any] = {
    "name": PROG,
    "cls": _OneLineErrors,
    "help": "A resilient download manager for media products: offline, resume, validate.",
    "no_args_is_help": True,
    "add_completion": True,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
    "epilog": "offline-cli offline https://cdn.example.com/song.mp3 --id track:42\n"
    "offline-cli state",
}
app = typer.Typer(**_APP_OPTIONS)


# -- output -------------------------------------------------------------------------------------


@dataclass
class _Output:
    quiet: bool = False
    verbose: bool = False
    # Set when Ctrl-C or SIGTERM saved a running download as PAUSED (not for `state`).
    paused_by_signal: bool = False
    # Products of the command that a signal stopped before they started (-j batches).
    not_started: int = 0

    @property
    def err(self) -> Console:
        from rich.console import Console  # only commands that draw pay for rich

        return Console(stderr=True, highlight=False, soft_wrap=True)


_output = _Output()


def _print_error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {escape_controls(message)}\n")
    sys.stderr.flush()


def _print_warning(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {escape_controls(message)}\n")
    sys.stderr.flush()


def _say(message: str) -> None:
    """A human line on stderr, unless -q."""
    if not _output.quiet:
        sys.stderr.write(escape_controls(message) + "\n")
        sys.stderr.flush()


def _data(line: str) -> None:
    # Tabs separate fields and newlines end JSON lines; other controls in a name are escaped.
    if has_controls(line.replace("\t", "").replace("\n", "")):
        line = escape_controls(line, keep="\t\n")
    sys.stdout.write(line + "\n")


_json_string = json.encoder.encode_basestring_ascii  # C, as json.dumps uses it
# Lines of a long listing written (and escaped) at once.
_BLOCK_LINES = 4096


def _json_data(rows: list[Any]) -> None:
    """``_data(json.dumps(rows, indent=2))``, the same text, written item by item: a store
    of 100,000 products makes a listing of tens of MB, and json's indenting encoder is pure
    Python (each item here is indented by _indented, which leaves the strings to json's C
    encoder)."""
    if not rows:
        _data(json.dumps(rows, indent=2))
        return
    for start in range(0, len(rows), _BLOCK_LINES // 16):
        block = rows[start : start + _BLOCK_LINES // 16]
        text = ",\n  ".join(_indented(row, 1) for row in block)
        _data(
            ("[\n  " if start == 0 else "  ")
            + text
            + ("," if start + len(block) < len(rows) else "\n]")
        )


@functools.cache
def _flat_encoder(level: int) -> Callable[[Any], str]:
    return json.JSONEncoder(separators=(",\n" + "  " * level, ": ")).encode


def _indented(value: Any, level: int) -> str:
    """``json.dumps(value, indent=2)`` of a value at nesting ``level`` (as json writes it
    inside a list or object: ensure_ascii, ``", "``-free separators)."""
    if isinstance(value, str):
        return _json_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        if not value:
            return "{}"
        # Runs of plain values are written by json's C encoder, with the newline and indent
        # as its separator; a nested list or object in between, by this function.
        sep = ",\n" + "  " * (level + 1)
        parts: list[str] = []
        run: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, dict | list | tuple):
                if run:
                    parts.append(_flat_encoder(level + 1)(run)[1:-1])
                    run = {}
                parts.append(f"{_json_string(k)}: {_indented(v, level + 1)}")
            else:
                run[k] = v
        if run:
            parts.append(_flat_encoder(level + 1)(run)[1:-1])
        return "{" + sep[1:] + sep.join(parts) + "\n" + "  " * level + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        inner = "\n" + "  " * (level + 1)
        return (
            "["
            + inner
            + ("," + inner).join(_indented(v, level + 1) for v in value)
            + "\n"
            + "  " * level
            + "]"
        )
    # Anything else as json itself writes it (or refuses it), indented for this level.
    return json.dumps(value, indent=2).replace("\n", "\n" + "  " * level)


def _error_line(exc: OfflineError) -> str:
    text = str(exc)
    if exc.hint:
        text += f" (hint: {exc.hint})"
    return text


def _fail(exc: OfflineError) -> NoReturn:
    _print_error(_error_line(exc))
    raise typer.Exit(exc.exit_code)


# -- logging --------------------------------------------------------------------------------------


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.getMessage()),
            "pid": record.process,
        }
        payload.update(getattr(record, "fields", {}))
        return json.dumps(payload, default=str)


class _HumanEvents(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{PROG}: {getattr(record, 'event', record.getMessage())} {detail}".rstrip()
        return escape_controls(line)


class _Warnings(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(f"{PROG}: warning: {record.getMessage()}")


class _QuietStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Events on stderr; when stderr itself fails there is nowhere to complain: stay silent."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _LogFileHandler(logging.FileHandler):
    """JSON lines to the log file; a failing write (a full disk, ``/dev/full``) is reported
    once, in one line, and never as logging's own traceback: the download goes on."""

    reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self.reported:
            return
        self.reported = True
        reason = sys.exc_info()[1]
        detail = getattr(reason, "strerror", None) or reason or "write failed"
        with suppress(Exception):
            _print_warning(
                f"cannot write log file {self.baseFilename}: {detail}; "
                "further log events are dropped"
            )


def _setup_logging(verbose: bool, log_file: str | None, place: str = "--log-file") -> None:
    """Log events to stderr (-v) and to ``log_file``; ``place`` is where the log file was
    named (``--log-file``, ``$OFFLINE_CLI_LOG_FILE``, ``log_file in config file …``), for
    the hint when it cannot be written."""
    logger = logging.getLogger("offline_cli")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if (verbose or log_file) else logging.WARNING)
    if verbose:
        handler = _QuietStderrHandler(sys.stderr)
        handler.setFormatter(_HumanEvents())
        logger.addHandler(handler)
    else:
        # Warnings (a metric the database could not take) still reach stderr, as one
        # prefixed line like every other message, not through logging's bare fallback.
        warnings = _QuietStderrHandler(sys.stderr)
        warnings.setLevel(logging.WARNING)
        warnings.setFormatter(_Warnings())
        logger.addHandler(warnings)
    if log_file:
        # `log_file = "~/offline-cli.jsonl"` in a config file (a shell expands it elsewhere)
        log_file = os.path.expanduser(log_file)
        try:
            # A new log file is owner-only whatever the umask (it names products and hosts).
            # O_NONBLOCK: a FIFO nobody reads fails here (ENXIO) instead of hanging the command;
            # one that is read (`--log-file /dev/stderr` piped in CI) is fine.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
            try:
                fd = os.open(log_file, flags, PRIVATE_FILE_MODE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    raise ConfigError(
                        f"cannot write log file {log_file}: a FIFO nobody reads",
                        hint=f"start its reader first, or set {place} to a file",
                    ) from None
                raise
            try:
                mode = os.fstat(fd).st_mode
            finally:
                os.close(fd)
            if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
                # A block device (a disk) would be overwritten line by line.
                raise ConfigError(
                    f"cannot write log file {log_file}: not a file, a pipe or a terminal",
                    hint=f"set {place} to a file (or /dev/stderr)",
                )
            file_handler = _LogFileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot write log file {log_file}: {exc.strerror or exc}",
                hint=f"set {place} to a writable path",
            ) from None
        file_handler.setFormatter(_JsonLines())
        logger.addHandler(file_handler)


# -- progress -----------------------------------------------------------------------------------


_VALIDATE_TASK = "\0validate"


class _Reporter(OfflineEngineListener):
    """Turns listener callbacks into rich bars on a terminal, a few plain lines otherwise.

    Callbacks come from the worker threads of ``-j`` (several at once): one lock keeps the
    bars and the counts consistent and every printed line whole.
    """

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.started_at: dict[str, float] = {}
        self.bytes: dict[str, int] = {}
        self.totals: dict[str, int | None] = {}
        # Products this process waited for: when the other process finished them, the
        # command says "downloaded by another process" instead of a "done (0 B)" line.
        self.waited: set[str] = set()
        self._lock = threading.RLock()
        # The overall row (terminal only, with more than one product): done of expected.
        self._overall: TaskID | None = None
        self._expected = 0
        self._finished = 0
        self._failed = 0
        # Piped: when each product's last progress line was printed, and its 10 % step then;
        # and the first byte report (time, bytes), which its speed is measured from.
        self._line_at: dict[str, float] = {}
        self._line_step: dict[str, int] = {}
        self._first_report: dict[str, tuple[float, int]] = {}

    def expect(self, count: int) -> None:
        """How many products this command will report on: the overall row counts them."""
        with self._lock:
            self._expected = count
            if self.progress is not None and count > 1 and self._overall is None:
                self._overall = self.progress.add_task(self._overall_text(), total=None)

    def not_started(self) -> int:
        with self._lock:
            # A product waited for (another process downloads it) was not left behind.
            return max(0, self._expected - len(self.started_at.keys() | self.waited))

    def _overall_text(self) -> str:
        failed = f", {self._failed} failed" if self._failed else ""
        return f"all: {self._finished - self._failed} of {self._expected} done{failed}"

    def _update_overall(self) -> None:
        if self.progress is None or self._overall is None:
            return
        totals = list(self.totals.values())
        # A total (and so an ETA) only once every product has told its size: the sizes of
        # those not started yet are unknown, and a total without them would mislead.
        complete = len(totals) >= self._expected and None not in totals
        known = sum(t or 0 for t in totals) if complete else None
        self.progress.update(
            self._overall,
            description=self._overall_text(),
            completed=sum(self.bytes.values()),
            total=known,
        )

    def offlining_started(self, product: MediaProduct) -> None:
        with self._lock:
            self.started_at[product.key] = time.monotonic()
            if self.progress is not None:
                self.tasks[product.key] = self.progress.add_task(_row_name(product.key), total=None)
            else:
                _say(f"{product.key}: downloading")

    def offlining_bytes(self, product: MediaProduct, done: int, total: int | None) -> None:
        with self._lock:
            self.bytes[product.key] = done
            self.totals[product.key] = total
            if self.progress is not None and product.key in self.tasks:
                self.progress.update(self.tasks[product.key], completed=done, total=total)
                self._update_overall()
            elif self.progress is None and not _output.quiet:
                self._piped_progress(product.key, done, total)

    def _piped_progress(self, key: str, done: int, total: int | None) -> None:
        """A plain progress line when piped (a long download in CI must not look hung): at
        each new 10 % step, or after PIPED_PROGRESS_INTERVAL_S without a line, never more
        often; not at 100 % (the "done" line follows)."""
        now = time.monotonic()
        step = done * 10 // total if total else -1
        first = self._first_report.setdefault(key, (now, done))
        last_at = self._line_at.setdefault(key, self.started_at.get(key, first[0]))
        last_step = self._line_step.setdefault(key, step)
        if total is not None and done >= total:
            return
        if step <= last_step and now - last_at < PIPED_PROGRESS_INTERVAL_S:
            return
        self._line_at[key], self._line_step[key] = now, max(step, last_step)
        shown = human_bytes(done)
        if total:
            shown = f"{done * 100 // total}% {shown} of {human_bytes(total)}"
        elapsed = now - first[0]
        if elapsed > 0 and done > first[1]:
            shown += f", {human_bytes((done - first[1]) / elapsed)}/s"
        _say(f"{key}: {shown}")

    def offlining_paused(self, product: MediaProduct, reason: str) -> None:
        self._note(product, f"paused, {reason}")

    def offlining_unpaused(self, product: MediaProduct) -> None:
        self._note(product, "network is back, continuing")

    def offlining_retrying(
        self, product: MediaProduct, attempt: int, delay: float, reason: str
    ) -> None:
        self._note(product, f"retry {attempt} in {delay:.1f}s ({reason})")

    def offlining_waiting_for_other(self, product: MediaProduct, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        with self._lock:
            self.waited.add(product.key)
            _say(f"{product.key}: {who} is downloading it; waiting for its outcome")

    def offlining_completed(self, product: MediaProduct) -> None:
        with self._lock:
            if product.key in self.waited and product.key not in self.bytes:
                self._finish(product, None)
                return
            elapsed = time.monotonic() - self.started_at.get(product.key, time.monotonic())
            size = human_bytes(self.bytes.get(product.key, 0))
            self._finish(product, f"{product.key}: done ({size} in {elapsed:.1f}s)")

    def offlining_failed(self, product: MediaProduct, error: OfflineError) -> None:
        with self._lock:
            if isinstance(error, DownloadInterrupted):
                _output.paused_by_signal = True
            else:
                self._failed += 1
            self._finish(product, None)

    def validation_progress(self, checked: int, total: int) -> None:
        """A bar over the products being hashed (terminal only: piped output stays quiet)."""
        if self.progress is None:
            return
        task = self.tasks.get(_VALIDATE_TASK)
        if task is None:
            task = self.progress.add_task("validating", total=total)
            self.tasks[_VALIDATE_TASK] = task
        self.progress.update(task, completed=checked, total=total)
        if checked >= total:
            self.progress.remove_task(self.tasks.pop(_VALIDATE_TASK))

    def _note(self, product: MediaProduct, text: str) -> None:
        with self._lock:
            if self.progress is not None and product.key in self.tasks:
                description = _row_name(product.key, f" ({text})")
                self.progress.update(self.tasks[product.key], description=description)
            else:
                _say(f"{product.key}: {text}")

    def _finish(self, product: MediaProduct, line: str | None) -> None:
        task = self.tasks.pop(product.key, None)
        self._finished += 1
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)
        self._update_overall()
        if line:
            if self.progress is not None:
                self.progress.console.print(escape_controls(line), highlight=False, markup=False)
            else:
                _say(line)


# Piped, a download prints a progress line at each 10 % step or after this long without one.
PIPED_PROGRESS_INTERVAL_S = 10.0


class _Summary:
    """What a run of several products did, for its last line: ``3 done, 1 failed, 2
    skipped, 1.2 GB in 1m04s`` (the bytes are the sizes of the products it downloaded)."""

    def __init__(self, reporter: _Reporter) -> None:
        self.reporter = reporter
        self.started = time.monotonic()
        self.done = self.failed = self.skipped = self.bytes = 0

    def add(self, result: ProductResult) -> None:
        from offline_cli.engine import Outcome

        if isinstance(result.error, BusyError):
            self.skipped += 1  # --no-wait: left to the process that has it
        elif result.error is not None:
            if not isinstance(result.error, DownloadInterrupted):
                self.failed += 1
        elif result.outcome is Outcome.DOWNLOADED:
            self.done += 1
            self.bytes += self.reporter.bytes.get(result.product.key, 0)
        else:  # already offline, or downloaded by another process: nothing fetched here
            self.skipped += 1

    def say(self) -> None:
        took = _duration_text(time.monotonic() - self.started)
        _say(
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped, "
            f"{human_bytes(self.bytes)} in {took}"
        )


def _duration_text(seconds: float) -> str:
    """``4.2s``, ``1m04s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


# A progress row's name is cut to this many characters (a signed URL can be hundreds): a
# long name would push the bar, size, speed and ETA of every row off the screen.
ROW_NAME_CHARS = 40


def _row_name(name: str, note: str = "") -> str:
    """``name`` escaped and shortened in the middle (``https://cdn.ex…/file.mp4``), then
    ``note`` (a retry, a pause), also capped."""
    shown = escape_controls(name)
    if len(shown) > ROW_NAME_CHARS:
        keep = ROW_NAME_CHARS - 1
        shown = shown[: keep // 2] + "…" + shown[-(keep - keep // 2) :]
    note = escape_controls(note)
    return shown + (note if len(note) <= ROW_NAME_CHARS else note[: ROW_NAME_CHARS - 2] + "…)")


@contextmanager
def _reporting(expected: int = 0) -> Iterator[_Reporter]:
    """A reporter with rich bars when stderr is a terminal and -q was not given."""
    console = _output.err
    if _output.quiet or not console.is_terminal:
        reporter = _Reporter(None)
        reporter.expect(expected)
        with _noting_unstarted(reporter):
            yield reporter
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.table import Column

    with Progress(
        # names are not rich markup, and a row never wraps (a narrow terminal cuts it)
        TextColumn(
            "{task.description}",
            markup=False,
            table_column=Column(no_wrap=True, overflow="ellipsis"),
        ),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        reporter = _Reporter(progress)
        reporter.expect(expected)
        with _noting_unstarted(reporter):
            yield reporter


@contextmanager
def _noting_unstarted(reporter: _Reporter) -> Iterator[None]:
    """On Ctrl-C or SIGTERM: remember how many products of the batch never started."""
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        _output.not_started = reporter.not_started()
        raise


# -- common plumbing ------------------------------------------------------------------------------


@dataclass
class _Globals:
    home: Path | None = None
    log_file: str | None = None
    db_timeout: float | None = None


_globals = _Globals()


def _settings(**overrides: Any) -> Settings:
    """The effective settings: config file, environment, global and command options."""
    overrides.setdefault("log_file", _globals.log_file)
    overrides.setdefault("db_timeout", _globals.db_timeout)
    from offline_cli.config import load_settings

    return load_settings(_globals.home or default_home(), overrides)


def _tls_overrides(ca_bundle: str | None, insecure: bool) -> dict[str, Any]:
    # A flag left off sets nothing: the config file and the environment may turn it on.
    return {"ca_bundle": ca_bundle, "insecure": True if insecure else None}


def _check_tls(settings: Settings) -> None:
    """Before the store is opened: a CA bundle that cannot be used is exit 2, one line naming
    where it was given, not a traceback and a PAUSED entry at the first https request.
    Insecure mode warns on every run, -q or not: it is never meant to go unnoticed."""
    from offline_cli.network import ca_source, tls_context

    if settings.insecure:
        where = settings.origin("insecure")
        _print_warning(
            "TLS certificates are not verified"
            f" ({'--insecure' if where == 'command line' else where}): anyone on the network "
            "path can read and change what is downloaded"
        )
        return
    if ca_source(settings.ca_bundle) is not None:
        origin = settings.origin("ca_bundle")
        tls_context(
            settings.ca_bundle, origin="--ca-bundle" if origin == "command line" else origin
        )


def _store_exists() -> bool:
    """Whether the home holds a database (a link there counts: opening it refuses it)."""
    from offline_cli.paths import Layout

    return os.path.lexists(Layout(_globals.home or default_home()).database)


def _engine(
    listener: OfflineEngineListener | None = None,
    settings: Settings | None = None,
    credentials: RequestCredentials | None = None,
    *,
    create: bool = True,
    **overrides: Any,
) -> OfflineEngine:
    """The engine of the home; ``create`` False (read commands): a home with no store yet
    reads as an empty one, and nothing is created."""
    from offline_cli.engine import OfflineEngine

    settings = settings or _settings(**overrides)
    engine = OfflineEngine(
        _globals.home or default_home(),
        listener,
        settings=settings,
        credentials=credentials,
        create=create,
    )
    _open_engines.append(engine)
    engine.store  # noqa: B018 - open now, so an unusable store fails before any work
    # After the store: a log file inside a new home folder can be created now.
    origin = settings.origin("log_file")
    place = {"command line": "--log-file", "default": "--log-file"}.get(origin, origin)
    if origin.startswith("config file"):
        place = f"log_file in {origin}"
    _setup_logging(_output.verbose, settings.log_file, place)
    return engine


_open_engines: list[OfflineEngine] = []


def _close_engines() -> None:
    """Close the database connections a command opened (also when run in-process)."""
    while _open_engines:
        engine = _open_engines.pop()
        # One line per product whose database row could not be read (and was skipped).
        # Both name what a damaged database holds: _print_warning escapes it.
        for key, reason in engine.skipped_entries.items():
            _print_warning(
                f"{key}: unreadable database entry skipped ({reason}); `{PROG} delete` removes it"
            )
        for key, refused in engine.foreign_paths.items():
            _print_warning(f"{key}: its database entry named {refused}")
        engine.close()


def _set_output(quiet: bool, verbose: bool) -> None:
    _output.quiet = _output.quiet or quiet
    _output.verbose = _output.verbose or verbose


def _product_from_name(name: str) -> MediaProduct:
    """A product named on the command line: a URL or TYPE:ID."""
    if looks_like_url(name):
        return MediaProduct.from_url(check_url(name))
    product_type, product_id = parse_product_name(name)
    return MediaProduct(product_type, product_id)


def _complete_products(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the names of the products in the store that start with
    ``incomplete`` (and are not on the command line already).

    Read-only and light: the database is opened read-only through the store alone (no engine,
    no settings, no httpx), and a home or database that does not exist completes nothing and
    is not created. Completion prints nothing of its own: a store it cannot read completes
    nothing rather than writing an error into the user's command line.
    """
    root = ctx.find_root().params.get("home")
    home = Path(root).expanduser() if root else default_home()
    from offline_cli.paths import Layout

    database = Layout(home).database
    if not database.is_file():
        return []
    from offline_cli.store import Store

    try:
        store = Store(database, busy_timeout_s=1.0, read_only_reason="shell completion")
        try:
            keys = store.known_product_keys()
        finally:
            store.close()
    except (OfflineError, OSError):
        return []
    given = ctx.params.get("products") or ctx.params.get("product") or []
    given = {given} if isinstance(given, str) else set(given)
    found = [
        key
        for key in keys
        if key.startswith(incomplete) and key not in given and _SHELL_SAFE_RE.fullmatch(key)
    ]
    return found[:MAX_COMPLETIONS]


# The shell inserts a completion into the command line as it is, unquoted: a stored name
# with `$(...)`, a quote, a space, `&`, `;`, a newline or a terminal escape (a URL from a
# hostile list) would run or mangle something at Enter. Such names are not completed; they
# are still named in full by `state` (escaped) and typed by hand (quoted). (`?` and `#` stay:
# a query string is common, and neither runs anything; `?` globs only if such a path exists.)
_SHELL_SAFE_RE = re.compile(r"[A-Za-z0-9._~:/%+,@=?#-]+")
# One Tab on a store of 200,000 products would otherwise print every name.
MAX_COMPLETIONS = 1000


# A list of products is text, one a line: 64 MiB is hundreds of thousands of long URLs, and
# far from what an accidental `-i /dev/zero` or a huge log would otherwise read into memory.
MAX_INPUT_BYTES = 64 << 20


def _read_stdin_capped(limit: int) -> bytes:
    if sys.stdin is None:  # started with standard input closed
        return b""
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read(limit + 1) if stream is not None else sys.stdin.read(limit + 1).encode()
    if len(data) > limit:
        raise ValueError(f"larger than {limit >> 20} MiB")
    return bytes(data)


def _read_product_lines(source: str) -> tuple[list[str], array[int]]:
    """The entries of an `-i` list (one a line; blank lines, `#` lines and comments after
    whitespace skipped) and the line number of each (4 bytes each: a list may be long)."""
    from offline_cli.config import read_capped

    try:
        if source == "-":
            data = _read_stdin_capped(MAX_INPUT_BYTES)
        else:
            # A pipe is fine (`-i <(make-list)`); a device or a folder is a mistake.
            data = read_capped(Path(source), MAX_INPUT_BYTES, allow_pipe=True)
        # utf-8-sig: editors on Windows start a file with a BOM, which is not part of a name.
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read -i {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read -i {source}: not UTF-8 text") from None
    except ValueError as exc:
        raise UsageError(f"cannot read -i {source}: {exc}") from None
    lines = []
    numbers = array("I")
    # Only "\n" ends a line: splitlines() and strip() would also split at or drop controls
    # such as U+0085 and U+001E, and a URL holding one must be refused, not cut in two.
    # Matched one at a time: a list of every (blank) line of a 64 MiB file would take GBs.
    number, counted_to = 1, 0
    for match in _LINE_RE.finditer(text):
        number += text.count("\n", counted_to, match.start())
        counted_to = match.start()
        line = match.group()
        # A comment after whitespace ends the entry (`URL   # note`); a `#` inside a URL
        # (its fragment) is not preceded by whitespace and stays.
        comment = _TRAILING_COMMENT_RE.search(line) if "#" in line else None
        if comment is not None:
            line = line[: comment.start()]
        line = line.strip(" \t\r")
        if line and not line.startswith("#"):
            lines.append(line)
            numbers.append(number)
    return lines, numbers


_LINE_RE = re.compile(r"[^\n]+")
_TRAILING_COMMENT_RE = re.compile(r"[ \t]#")


def _duration(text: str | None, option: str, within: str | None = None) -> float | None:
    """Parse a duration option; ``within`` names the setting whose range it shares (options
    that feed a setting are range-checked with the setting itself)."""
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc.message}", hint=exc.hint) from None
    if within is None:
        return seconds
    from offline_cli.config import check_in_range

    return check_in_range(within, seconds, option)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Also print log events.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
Retries = Annotated[
    int | None,
    typer.Option(
        "--retries", metavar="N", show_default="5", help="Retries without progress (0 to 100)."
    ),
]
StallTimeout = Annotated[
    str | None,
    typer.Option(
        "--stall-timeout",
        metavar="DURATION",
        show_default="30s",
        help="No bytes for this long is an error.",
    ),
]
NetworkTimeout = Annotated[
    str | None,
    typer.Option(
        "--network-timeout",
        metavar="DURATION",
        show_default="2m",
        help="How long a paused download waits for its host.",
    ),
]
Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        metavar="N",
        show_default="4",
        help="Download up to N products at once (1 to 64).",
    ),
]
Header = Annotated[
    list[str] | None,
    typer.Option(
        "--header",
        "-H",
        metavar="HEADER",
        help="Send 'Name: value' to the source's (or the URL's) origin only; may be repeated.",
    ),
]
LimitRate = Annotated[
    str | None,
    typer.Option(
        "--limit-rate",
        metavar="RATE",
        show_default="none",
        help="Bytes a second for all downloads together: 500k, 2M (K = 1024).",
    ),
]

ProxyOption = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        metavar="URL",
        show_default=False,
        help="Send every request through this proxy: http://[USER:PASS@]HOST:PORT, https://, "
        "socks5://; 'none' or '' for no proxy (default: $HTTP_PROXY, $HTTPS_PROXY, $NO_PROXY).",
    ),
]
CaBundle = Annotated[
    str | None,
    typer.Option(
        "--ca-bundle",
        metavar="PATH",
        show_default=False,
        help="Trust the CA certificates in this PEM file (default: $SSL_CERT_FILE, "
        "$SSL_CERT_DIR, else the certifi bundle).",
    ),
]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Do not verify TLS certificates (a warning on every run).",
    ),
]
Refresh = Annotated[
    bool,
    typer.Option(
        "--refresh",
        help="Ask the server whether a stored product changed (ETag, Last-Modified) and "
        "download the new version if so.",
    ),
]


StreamQuality = Annotated[
    str | None,
    typer.Option(
        "--quality",
        metavar="QUALITY",
        show_default="best",
        help="HLS variant to take: best (highest BANDWIDTH), worst, or a BANDWIDTH.",
    ),
]
MaxBandwidth = Annotated[
    int | None,
    typer.Option(
        "--max-bandwidth",
        metavar="N",
        show_default="none",
        help="HLS: the best variant of at most N bits a second (else the lowest).",
    ),
]


def _stream_overrides(quality: str | None, max_bandwidth: int | None) -> dict[str, Any]:
    """The HLS variant choice (checked with the settings: best, worst or a number)."""
    return {"quality": quality, "max_bandwidth": max_bandwidth}


def _transfer_overrides(
    retries: int | None,
    stall_timeout: str | None,
    network_timeout: str | None,
    jobs: int | None,
    limit_rate: str | None,
) -> dict[str, Any]:
    """The settings both downloading commands take from their options."""
    return {
        "retries": retries,
        "stall_timeout": _duration(stall_timeout, "--stall-timeout"),
        "network_timeout": _duration(network_timeout, "--network-timeout"),
        "jobs": jobs,
        "limit_rate": limit_rate,  # checked and parsed with the setting (500k, 2M)
    }


def _version(value: bool) -> None:
    if value:
        _data(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    home: Annotated[
        str | None,
        typer.Option(
            "--home",
            metavar="PATH",
            help=f"Home folder of the store (default ${HOME_ENV} or the user data folder).",
        ),
    ] = None,
    log_file: Annotated[
        str | None,
        typer.Option(
            "--log-file", metavar="FILE", help="Append JSON-lines log events to this file."
        ),
    ] = None,
    db_timeout: Annotated[
        str | None,
        typer.Option(
            "--db-timeout",
            metavar="DURATION",
            show_default="30s",
            help="How long to wait for a locked database.",
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """A resilient download manager for media products."""
    _globals.home = None
    _globals.log_file = log_file
    _globals.db_timeout = None
    _output.quiet, _output.verbose = quiet, verbose
    try:
        if home is not None and not home.strip():
            # An empty path would quietly mean the current folder.
            raise UsageError("--home: empty path", hint="name the home folder, e.g. --home ~/media")
        _globals.home = Path(home).expanduser() if home is not None else None
        _globals.db_timeout = _duration(db_timeout, "--db-timeout")
    except UsageError as exc:
        _fail(exc)


# -- commands --------------------------------------------------------------------------------------


@_command(
    examples=[
        "offline-cli offline https://cdn.example.com/song.mp3 --id track:42",
        "offline-cli offline -j 8 -i urls.txt",
    ]
)
def offline(
    products: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PRODUCT",
            help="URLs or TYPE:ID names (track:42, video:7).",
        ),
    ] = None,
    input_files: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="FILE",
            help="Read one product a line ('-' is stdin); may be repeated.",
        ),
    ] = None,
    product_id: Annotated[
        str | None, typer.Option("--id", metavar="TYPE:ID", help="Name a single URL as TYPE:ID.")
    ] = None,
    license_url: Annotated[
        str | None,
        typer.Option("--license-url", metavar="URL", help="Download this license with the media."),
    ] = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", metavar="HEX", help="Expected SHA-256 of the media.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="TEMPLATE",
            help="Playback-info URL template with {type} and {id}.",
        ),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Exit 3 if another process downloads it.")
    ] = False,
    refresh: Refresh = False,
    jobs: Jobs = None,
    limit_rate: LimitRate = None,
    quality: StreamQuality = None,
    max_bandwidth: MaxBandwidth = None,
    retries: Retries = None,
    stall_timeout: StallTimeout = None,
    network_timeout: NetworkTimeout = None,
    header: Header = None,
    proxy: ProxyOption = None,
    ca_bundle: CaBundle = None,
    insecure: Insecure = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Download products (media and license) into the offline store."""
    _set_output(quiet, verbose)
    try:
        names = list(products or [])
        # Each -i list: where its names start in ``names``, its name, their line numbers.
        lists: list[tuple[int, str, array[int]]] = []
        for input_file in input_files or []:
            lines, numbers = _read_product_lines(input_file)
            lists.append((len(names), "<stdin>" if input_file == "-" else input_file, numbers))
            names += lines
        if not names:
            raise UsageError("no product given", hint="offline URL... or offline -i FILE")

        def place_of(index: int) -> str | None:
            """Where ``names[index]`` was read ("list.txt:3"); None: on the command line."""
            for start, shown, numbers in reversed(lists):
                if index >= start:
                    return f"{shown}:{numbers[index - start]}"
            return None

        parsed = _parse_offline_products(names, product_id, license_url, sha256, place_of)
        overrides = _transfer_overrides(retries, stall_timeout, network_timeout, jobs, limit_rate)
        overrides |= _stream_overrides(quality, max_bandwidth)
        overrides |= _tls_overrides(ca_bundle, insecure)
        settings = _settings(source=source, headers=header, proxy=proxy, **overrides)
        # Checked before the store is opened: bad input changes nothing.
        from offline_cli.config import load_credentials
        from offline_cli.engine import OfflineEngine
        from offline_cli.network import ProxyRoutes

        if not _store_exists():
            # A product named without a URL can only be one the store knows: with no store
            # yet, refuse it before one is created (the engine asks the store otherwise).
            OfflineEngine.check_resolvable_with(settings, parsed)
        ProxyRoutes(settings.proxy)  # a bad $HTTP_PROXY (and the like) is exit 2 here
        _check_tls(settings)
        credentials = load_credentials(settings)
        with _reporting(len(parsed)) as reporter:
            engine = _engine(reporter, settings, credentials)
            summary = _Summary(reporter)
            failures = _offline_all(
                engine, parsed, wait=not no_wait, summary=summary, refresh=refresh
            )
        if len(parsed) > 1:
            summary.say()
    except OfflineError as exc:
        _fail(exc)
    if failures:
        raise typer.Exit(max(failures))


def _parse_offline_products(
    names: Sequence[str],
    product_id: str | None,
    license_url: str | None,
    sha256: str | None,
    place_of: Callable[[int], str | None] = lambda index: None,
) -> list[MediaProduct]:
    """Check every name before anything is downloaded: bad input changes nothing.
    ``place_of(i)``: where the i-th name was read (``list.txt:3``), named by its error."""
    single_only = (product_id, license_url, sha256)
    if any(v is not None for v in single_only) and len(names) != 1:
        raise UsageError("--id, --license-url and --sha256 apply to exactly one product")
    parsed: list[MediaProduct] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        try:
            product = _product_from_name(name)
        except UsageError as exc:
            place = place_of(index)
            if place is None:
                raise
            raise UsageError(f"{place}: {exc.message}", hint=exc.hint) from None
        if product_id is not None:
            if product.url is None:
                raise UsageError("--id names a URL; give a URL with it")
            product_type, pid = parse_product_name(product_id)
            product = MediaProduct(product_type, pid, url=product.url)
        if license_url is not None:
            product = MediaProduct(
                product.product_type,
                product.product_id,
                url=product.url,
                license_url=check_url(license_url),
            )
        if sha256 is not None:
            product = MediaProduct(
                product.product_type,
                product.product_id,
                url=product.url,
                license_url=product.license_url,
                sha256=check_sha256(sha256),
            )
        if product.key not in seen:
            seen.add(product.key)
            parsed.append(product)
    return parsed


def _offline_all(
    engine: OfflineEngine,
    products: Sequence[MediaProduct],
    *,
    wait: bool,
    summary: _Summary | None = None,
    refresh: bool = False,
) -> list[int]:
    """Download ``products`` (up to ``jobs`` at once); the exit codes of those that failed."""
    failures: list[int] = []
    engine.offline_products(
        products, wait=wait, on_result=_result_printer(failures, summary), refresh=refresh
    )
    return failures


def _result_printer(
    failures: list[int], summary: _Summary | None = None
) -> Callable[[ProductResult], None]:
    """Print each product's outcome as it comes; collect the exit codes of failures (and
    count the outcomes in ``summary``)."""

    from offline_cli.engine import Outcome

    def report(result: ProductResult) -> None:
        key = result.product.key
        if summary is not None:
            summary.add(result)
        if result.error is not None:
            if isinstance(result.error, DownloadInterrupted):
                return  # the command itself ends 130/143 with the PAUSED note
            _print_error(_error_line(result.error.with_product(key)))
            failures.append(result.error.exit_code)
        elif result.outcome is Outcome.ALREADY_OFFLINE:
            _say(f"{key}: already offline and valid, nothing fetched")
        elif result.outcome is Outcome.DOWNLOADED_BY_OTHER:
            _say(f"{key}: downloaded by another process")
        elif result.outcome is Outcome.NOT_MODIFIED:
            _say(f"{key}: not modified")

    return report


@_command(examples=["offline-cli state", "offline-cli state --json track:42"])
def state(
    products: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PRODUCT", help="Products (default: all).", autocompletion=_complete_products
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Print each product's OfflineState, one line per product."""
    try:
        wanted = [_product_from_name(n) for n in products] if products else None
        engine = _engine(create=False)
        reader = engine.reader()
        rows = []
        statuses = engine.product_statuses(wanted, with_downloads=json_out)
        if not json_out:
            # Written in blocks: one line per product, and a store may hold 100,000.
            for start in range(0, len(statuses), _BLOCK_LINES):
                block = statuses[start : start + _BLOCK_LINES]
                if wanted is not None:
                    _data("\n".join(s.state.value for s in block))
                else:
                    text = "\n".join(f"{s.key}\t{s.state.value}" for s in block)
                    if text.count("\n") != len(block) - 1 or text.count("\t") != len(block):
                        # A name's own tab or newline could forge a line: escape each name
                        # (only then: a regex per name would cost a 100,000-line `state`).
                        text = "\n".join(
                            f"{escape_controls(s.key)}\t{s.state.value}" for s in block
                        )
                    _data(text)
            return
        stored_files = reader.stored_files() if statuses else {}
        for status in statuses:
            row: dict[str, Any] = {"product": status.key, "state": status.state.value}
            if status.state is not OfflineState.NOT_OFFLINED:
                files = stored_files.get(status.key)
                if files is not None:
                    row.update(_file_fields(*files))
            download = status.download
            if download is not None:
                row["download"] = {
                    "state": download.state.value,
                    "progress": round(download.progress, 4),
                    "bytes_done": download.bytes_done,
                    "bytes_total": download.bytes_total,
                    "attempts": download.attempt_count,
                    "last_error": download.last_error,
                }
            rows.append(row)
        _json_data(rows)
    except OfflineError as exc:
        _fail(exc)


def _stored_fields(stored: StoredProduct) -> dict[str, Any]:
    """What `path --json` and `state --json` say of a committed product's files."""
    license_path = str(stored.license) if stored.license else None
    return _file_fields(stored.entry, str(stored.media), license_path)


def _file_fields(entry: OfflinedEntry, media: str, license_path: str | None) -> dict[str, Any]:
    return {
        "media_path": media,
        "license_path": license_path,
        "size": entry.size,
        "sha256": entry.sha256,
        "license_size": entry.license_size,
        "license_sha256": entry.license_sha256,
        "hls": entry.is_hls,
    }


@_command("path", examples=['mpv "$(offline-cli path video:7)"'])
def path_command(
    products: Annotated[
        list[str],
        typer.Argument(
            metavar="PRODUCT",
            help="Products whose stored media to print.",
            autocompletion=_complete_products,
        ),
    ],
    json_out: Json = False,
) -> None:
    """Print each product's stored media file (an HLS product: its local playlist)."""
    code = EXIT_OK
    rows: list[dict[str, Any]] = []
    try:
        parsed = [_product_from_name(n) for n in products]
        engine = _engine(create=False)
        for product in parsed:
            try:
                stored = engine.stored_product(product)
            except NotStored as exc:
                _print_error(_error_line(exc))
                code = max(code, exc.exit_code)
                continue
            if json_out:
                rows.append({"product": product.key, **_stored_fields(stored)})
            else:
                _data(str(stored.media))
    except OfflineError as exc:
        _fail(exc)
    if json_out:
        _data(json.dumps(rows, indent=2))
    if code:
        raise typer.Exit(code)


@_command("export", examples=["offline-cli export track:42 ~/Music/"])
def export_command(
    product: Annotated[
        str,
        typer.Argument(
            metavar="PRODUCT",
            help="The product to copy out of the store.",
            autocompletion=_complete_products,
        ),
    ],
    dest: Annotated[
        str,
        typer.Argument(
            metavar="DEST", help="A file, or a folder to put it in (HLS: the folder to create)."
        ),
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Copy a stored product's media to DEST, verified against its recorded SHA-256."""
    _set_output(quiet, verbose)
    try:
        wanted = _product_from_name(product)
        if not dest.strip():
            raise UsageError("DEST: empty path", hint="name a file or a folder")
        engine = _engine(create=False)
        from offline_cli.export import check_dest

        checked = check_dest(dest, engine.layout.home, wanted.key)
        target, how = engine.export_product(wanted, checked, force=force)
    except OfflineError as exc:
        _fail(exc)
    _data(escape_controls(str(target)))
    _say(f"{wanted.key}: exported to {target} ({how}, verified)")


@_command(examples=["offline-cli delete track:42 video:7"])
def delete(
    products: Annotated[
        list[str],
        typer.Argument(
            metavar="PRODUCT", help="Products to remove.", autocompletion=_complete_products
        ),
    ],
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Remove products, their files and their entries (cancels a running download)."""
    _set_output(quiet, verbose)
    code = EXIT_OK
    try:
        parsed = [_product_from_name(n) for n in products]
        engine = _engine()
        for product in parsed:
            try:
                removed = engine.delete_offline(product)
            except (BusyError, DownloadError) as exc:
                # One product whose download would not stop does not keep the others.
                _print_error(_error_line(exc.with_product(product.key)))
                code = max(code, exc.exit_code)
                continue
            if removed:
                _say(f"{product.key}: deleted")
            else:
                _print_error(f"{product.key}: not in the store")
                code = max(code, EXIT_FAILED)
    except OfflineError as exc:
        _fail(exc)
    raise typer.Exit(code)


@_command("delete-all", examples=["offline-cli delete-all --yes"])
def delete_all(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    quiet: Quiet = False,
) -> None:
    """Remove everything in the store."""
    _set_output(quiet, False)
    if not yes:
        if not sys.stdin.isatty():
            _fail(
                UsageError("refusing to delete everything without --yes (stdin is not a terminal)")
            )
        try:
            confirmed = typer.confirm("Delete every offlined product and all partial data?")
        except typer.Abort:  # end of input at the prompt: a no, not an interrupt
            confirmed = False
        if not confirmed:
            # Declining is an answer, not a mistake: not an error line, not bad usage.
            _say("nothing deleted")
            raise typer.Exit(EXIT_FAILED)
    try:
        engine = _engine()
        count = len(engine.store.known_product_keys())
        engine.delete_all_offlined_media_products()
    except OfflineError as exc:
        _fail(exc)
    _say(f"deleted {_count(count, 'product')}")


@_command(examples=["offline-cli resume", "offline-cli resume -j 2 --limit-rate 1M track:42"])
def resume(
    products: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PRODUCT", help="Products (default: all).", autocompletion=_complete_products
        ),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Skip downloads another process runs (exit 3).")
    ] = False,
    jobs: Jobs = None,
    limit_rate: LimitRate = None,
    quality: StreamQuality = None,
    max_bandwidth: MaxBandwidth = None,
    retries: Retries = None,
    stall_timeout: StallTimeout = None,
    network_timeout: NetworkTimeout = None,
    header: Header = None,
    proxy: ProxyOption = None,
    ca_bundle: CaBundle = None,
    insecure: Insecure = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Continue interrupted, paused and retryable failed downloads."""
    _set_output(quiet, verbose)
    codes: list[int] = []
    try:
        wanted = [_product_from_name(n) for n in products] if products else None
        overrides = _transfer_overrides(retries, stall_timeout, network_timeout, jobs, limit_rate)
        overrides |= _stream_overrides(quality, max_bandwidth)
        overrides |= _tls_overrides(ca_bundle, insecure)
        settings = _settings(headers=header, proxy=proxy, **overrides)
        from offline_cli.config import load_credentials
        from offline_cli.network import ProxyRoutes

        ProxyRoutes(settings.proxy)  # a bad $HTTP_PROXY (and the like) is exit 2 here
        _check_tls(settings)
        credentials = load_credentials(settings)
        with _reporting() as reporter:
            engine = _engine(reporter, settings, credentials)
            todo = engine.resumable_products(wanted)
            if not todo:
                # A damaged index can hide every entry without an error: say so, not "nothing".
                engine.check_store()
                _say("nothing to resume")
                return
            reporter.expect(len(todo))
            summary = _Summary(reporter)
            engine.resume(wanted, wait=not no_wait, on_result=_result_printer(codes, summary))
        summary.say()
    except OfflineError as exc:
        _fail(exc)
    if codes:
        raise typer.Exit(max(codes))


@_command(examples=["offline-cli cleanup --dry-run", "offline-cli cleanup --older-than 30d"])
def cleanup(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            show_default="7d",
            help="Minimum age, e.g. 90s, 30m, 12h, 0 (the retention setting by default).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Remove partial data, orphaned files and old failed/cancelled entries."""
    _set_output(quiet, verbose)
    try:
        age = _duration(older_than, "--older-than", within="retention")
        engine = _engine(create=not dry_run)
        report = engine.perform_maintenance_cleanup(age, dry_run=dry_run)
    except OfflineError as exc:
        _fail(exc)
    if json_out:
        _data(json.dumps(report.to_dict(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    if not _output.quiet:  # -q: errors only, so a cron job mails only when cleanup fails
        now = time.time()
        for item in report.items:
            _data(f"{verb}: {_cleanup_line(item, now)}")
    if not report.items:
        _say(f"{verb} nothing")
        return
    parts = [
        _count(n, word)
        for n, word in ((report.files_removed, "file"), (report.entries_removed, "entry"))
        if n
    ]
    _say(f"{verb} {' and '.join(parts)}, {human_bytes(report.bytes_reclaimed)}")


def _count(n: int, word: str) -> str:
    """``1 file``, ``2 files``, ``1 entry``, ``3 entries``."""
    if n == 1:
        return f"1 {word}"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "o", "u"):
        return f"{n} {word[:-1]}ies"  # entries, but days
    return f"{n} {word}s"


def _age(seconds: float) -> str:
    """How old something is, in the largest unit that fits: ``12 days old``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return f"{_count(int(seconds // size), unit)} old"
    return "less than a minute old"


# How cleanup names an entry by its download state.
_ENTRY_STATES = {
    "PENDING": "pending",
    "IN_PROGRESS": "interrupted",
    "PAUSED": "paused",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
}


def _cleanup_line(item: CleanupItem, now: float) -> str:
    """What a cleanup line says after its verb: the product (an entry) or the path (a
    file), then what it is, its size and age."""
    age = [] if item.modified_at is None else [_age(max(0.0, now - item.modified_at))]
    if item.kind == "entry":
        what = f"{_ENTRY_STATES.get(item.state or '', 'unreadable')} entry"
        return f"{item.product_key} ({', '.join([what, *age])})"
    if item.kind == "partial":
        what = f"partial data of {item.product_key}"
    else:
        what = "orphaned folder" if item.folder else "orphaned file"
    return f"{item.path} ({', '.join([what, human_bytes(item.bytes), *age])})"


@_command(examples=["offline-cli -q validate", "offline-cli validate --repair track:42"])
def validate(
    products: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PRODUCT", help="Products (default: all).", autocompletion=_complete_products
        ),
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Download invalid products again.")
    ] = False,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="TEMPLATE",
            help="Playback-info URL template, to renew expired licenses.",
        ),
    ] = None,
    quality: StreamQuality = None,
    max_bandwidth: MaxBandwidth = None,
    header: Header = None,
    ca_bundle: CaBundle = None,
    insecure: Insecure = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Check stored products in full (files, size, SHA-256, license); exit 1 if any is invalid."""
    _set_output(quiet, verbose)
    try:
        wanted = [_product_from_name(n) for n in products] if products else None
        settings = _settings(
            source=source,
            headers=header,
            **_stream_overrides(quality, max_bandwidth),
            **_tls_overrides(ca_bundle, insecure),
        )
        # Only a repair downloads: a token that cannot be read does not stop a check.
        from offline_cli.config import load_credentials
        from offline_cli.maintenance import ValidationResult

        if repair:
            _check_tls(settings)
        credentials = load_credentials(settings) if repair else None
        with _reporting() as reporter:
            # A home with no store has nothing to check, nor to repair: nothing is created.
            engine = _engine(reporter, settings, credentials, create=False)
            results = engine.validate_downloads(
                wanted, repair=repair, on_progress=reporter.validation_progress
            )
        # A row that could not be read is damage validate must report: never a silent pass.
        checked = {r.product_key for r in results}
        results += [
            ValidationResult(key, False, f"unreadable database entry ({reason})")
            for key, reason in engine.skipped_entries.items()
            if key not in checked
        ]
    except OfflineError as exc:
        _fail(exc)
    if json_out:
        _data(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.valid and _output.quiet:
                continue  # -q: only what needs attention, so cron mails only on damage
            if r.valid:
                name = escape_controls(r.product_key)
                _data(f"{name}\tVALID" + ("\t(repaired)" if r.repaired else ""))
            else:
                extra = f" (repair failed: {r.repair_error})" if r.repair_error else ""
                _data(f"{escape_controls(r.product_key)}\tINVALID\t{r.reason}{extra}")
        if not results:
            _say("nothing to validate")
    if any(not r.valid for r in results):
        raise typer.Exit(EXIT_FAILED)


@_command(examples=["offline-cli health --since 7d"])
def health(
    json_out: Json = False,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DURATION", help="Only events in this window, e.g. 7d."),
    ] = None,
) -> None:
    """Report recorded download metrics."""
    try:
        window = _duration(since, "--since", within="retention")
        engine = _engine(create=False)
        report = engine.get_download_health(window)
    except OfflineError as exc:
        _fail(exc)
    if json_out:
        _data(json.dumps(report.to_dict(), indent=2))
        return
    from rich.table import Table

    table = Table(title="offline-cli health", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.1f}%"

    rows = [
        ("downloads started", str(report.downloads_started)),
        ("downloads succeeded", str(report.downloads_succeeded)),
        ("downloads failed", str(report.downloads_failed)),
        ("success rate", pct(report.success_rate)),
        ("retries", str(report.retries)),
        ("retry success rate", pct(report.retry_success_rate)),
        ("recoveries after a crash", str(report.recoveries)),
        ("network pauses", str(report.network_pauses)),
        ("bytes downloaded", human_bytes(report.bytes_downloaded)),
        (
            "mean throughput",
            "-"
            if report.mean_throughput_bytes_per_s is None
            else human_bytes(report.mean_throughput_bytes_per_s) + "/s",
        ),
        ("entries cleaned up", str(report.cleaned_up)),
        ("bytes reclaimed", human_bytes(report.bytes_reclaimed)),
        ("offlined products", str(report.offlined_products)),
        ("active downloads", str(report.active_downloads)),
    ]
    for kind, count in sorted(report.failures_by_kind.items()):
        rows.append((f"failures: {kind}", str(count)))
    for name, value in rows:
        table.add_row(name, value)
    from rich.console import Console

    console = Console(highlight=False)
    console.print(table)
    if report.per_day:
        console.print("per day (+ succeeded, x failed):")
        for day, counts in report.per_day.items():
            ok, bad = counts.get("succeeded", 0), counts.get("failed", 0)
            console.print(f"  {day} {'+' * min(ok, 50)}{'x' * min(bad, 50)} {ok}/{ok + bad}")


@_command("config", examples=["OFFLINE_CLI_RETRIES=8 offline-cli config"])
def show_config(json_out: Json = False) -> None:
    """Show the effective settings and where each came from."""
    from offline_cli.config import config_file_path, format_setting, load_settings

    try:
        home = _globals.home or default_home()
        overrides = {"log_file": _globals.log_file, "db_timeout": _globals.db_timeout}
        settings: Settings = load_settings(home, overrides)
    except OfflineError as exc:
        _fail(exc)
    items = settings.public_items()
    config_file = config_file_path(home)
    found = config_file.exists()
    if json_out:
        # Machine values: durations in seconds, rates in bytes a second, null when unset.
        _data(
            json.dumps(
                {
                    "home": str(home),
                    "config_file": str(config_file),
                    "config_file_exists": found,
                    "settings": {n: {"value": v, "origin": o} for n, v, o in items},
                },
                indent=2,
            )
        )
        return
    _data(f"home\t{home}")
    _data(f"config_file\t{config_file}" + ("" if found else "\t(not found; defaults apply)"))
    for name, value, origin in items:
        _data(f"{name}\t{format_setting(name, value)}\t({origin})")


# -- entry point ---------------------------------------------------------------------------------


def _interrupted_line(what: str) -> str:
    """What a signal did: the PAUSED note only when a download was actually saved as PAUSED,
    and how many products of the batch never started (`resume` does not know those)."""
    line = f"{what}; {_PAUSED_NOTE}" if _output.paused_by_signal else what
    if _output.not_started:
        line += (
            f"; {_output.not_started} product(s) not started: run the same command again "
            "to finish the batch"
        )
    return line


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


# The global options (those of _main) that come before the command's name: the ones that
# take a value, and the flags. Anything else there (--help, --version, -qv) means the whole app.
_GLOBAL_VALUE_OPTIONS = ("--home", "--log-file", "--db-timeout")
_GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")
# Set by the shell completion scripts (completions/): completion sees every command.
_COMPLETE_VAR = "_OFFLINE_CLI_COMPLETE"


def _command_name(info: typer.models.CommandInfo) -> str:
    """The name typer gives a registered command (its own rule: `delete_all` is delete-all)."""
    callback = info.callback
    assert callback is not None
    return info.name or typer.main.get_command_name(callback.__name__)


def _app_for(args: Sequence[str]) -> typer.Typer:
    """The app that runs ``args``: one holding only the command they name, when that is
    certain, else the whole app.

    typer builds every registered command (their signatures and annotations) each time the
    app runs, which cost `state` more than its own work. The one-command app has the same
    callback (global options), settings and group class, and its command is the very same
    CommandInfo, so the command parses, helps and fails exactly as in the whole app; what
    lists or suggests commands (no command, `--help`, a name that is not a command,
    completion) runs the whole app.
    """
    if _COMPLETE_VAR in os.environ:
        return app
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg in _GLOBAL_FLAGS or arg.startswith(tuple(f"{o}=" for o in _GLOBAL_VALUE_OPTIONS)):
            i += 1
        else:
            break
    if i >= len(args):
        return app
    for info in app.registered_commands:
        if _command_name(info) == args[i]:
            one = typer.Typer(**_APP_OPTIONS)
            one.registered_callback = app.registered_callback
            one.registered_commands = [info]
            return one
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: runs the app, mapping signals to exit codes."""
    # As the interpreter exits, CPython runs full garbage collections over every object still
    # alive (some 34,000 after `state`: typer, pydantic, the engine) before it frees them
    # anyway: about an eighth of a `state` run (bench/README.md, "Start-up"). Frozen at exit,
    # they are skipped. Files and the database are closed by then (with blocks,
    # _close_engines, logging's own atexit handler), so nothing waits for those passes.
    atexit.unregister(gc.freeze)  # once per process, however often main() runs
    atexit.register(gc.freeze)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    args = list(argv) if argv is not None else None
    try:
        _app_for(sys.argv[1:] if args is None else args)(args=args, prog_name=PROG)
    except KeyboardInterrupt:
        _print_error(_interrupted_line("interrupted"))
        sys.exit(EXIT_SIGINT)
    except Terminated:
        _print_error(_interrupted_line("terminated"))
        sys.exit(EXIT_SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
