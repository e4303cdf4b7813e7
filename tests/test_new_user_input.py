"""What a new user tripped over, following the README (issue 11): a stored product's name is
enough for every command, a failed license says so, the cron lines work as written, `-i`
lists take comments and name the line of a bad entry, read commands create no home, and
declining `delete-all` is not an error."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from offline_cli import MediaProduct, OfflineEngine, ProductType
from offline_cli.runtime import FaultHook
from tests.netsim import Fault, NetSim, Resource
from tests.procutil import ROOT, CrashAt, download_state, offlined

Cli = Callable[..., Any]
BODY = bytes(range(256)) * 1200  # 307,200 bytes: several progress points before the end
LICENSE = b"license bytes"


def _one_error_line(stderr: str, *needles: str) -> str:
    """The one error line of ``stderr`` (a download also says it started)."""
    lines = [line for line in stderr.splitlines() if line.startswith("offline-cli: error: ")]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _only_one_error_line(stderr: str, *needles: str) -> str:
    """Bad input: one error line and nothing else."""
    assert len(stderr.splitlines()) == 1, stderr
    return _one_error_line(stderr, *needles)


# -- 1: a stored product's name is enough ----------------------------------------------------


def _serve(sim: NetSim) -> tuple[str, str]:
    sim.add("/media", Resource(BODY))
    sim.add("/license", Resource(LICENSE))
    return sim.url("/media"), sim.url("/license")


def _named(kind: str, url: str) -> tuple[list[str], str]:
    """The `offline` arguments naming the product, and the name commands then take."""
    return (["--id", "track:42"], "track:42") if kind == "id" else ([], url)


def _interrupt_at(at: CrashAt) -> FaultHook:
    def hook(point: str, **info: Any) -> None:
        if at.reached(point, info):
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize("kind", ["id", "url"])
def test_offline_of_a_valid_product_by_name_fetches_nothing_without_a_source(
    cli: Cli, home: Path, sim: NetSim, kind: str
) -> None:
    url, license_url = _serve(sim)
    args, name = _named(kind, url)
    assert cli("offline", url, *args, "--license-url", license_url).exit_code == 0
    served = len(sim.log)

    result = cli("offline", name)

    assert result.exit_code == 0, result.output
    assert f"{name}: already offline and valid, nothing fetched" in result.stderr
    assert len(sim.log) == served
    assert cli("state", name).stdout == "OFFLINED_AND_VALID\n"


@pytest.mark.parametrize(
    "command", [["offline", "{name}"], ["resume", "{name}"], ["resume"]], ids=" ".join
)
@pytest.mark.parametrize("kind", ["id", "url"])
def test_a_paused_product_continues_by_name_from_where_it_stopped(
    cli: Cli, home: Path, sim: NetSim, kind: str, command: list[str]
) -> None:
    url, license_url = _serve(sim)
    _, name = _named(kind, url)
    product = (
        MediaProduct(ProductType.TRACK, "42", url=url, license_url=license_url)
        if kind == "id"
        else MediaProduct.from_url(url)
    )
    interrupted = OfflineEngine(home, fault_hook=_interrupt_at(CrashAt("progress", "media", 65536)))
    with interrupted, pytest.raises(KeyboardInterrupt):
        interrupted.offline(product)
    assert download_state(home, name) == "PAUSED"
    sim.wait_idle()
    first = len(sim.requests("/media"))

    result = cli(*[part.format(name=name) for part in command])

    assert result.exit_code == 0, result.output
    assert f"{name}: done" in result.stderr
    [again] = sim.requests("/media")[first:]
    assert again.range is not None and again.range != "bytes=0-", again
    stored = offlined(home, name)
    assert stored is not None
    assert Path(stored["media_path"]).read_bytes() == BODY
    if kind == "id":
        assert Path(stored["license_path"]).read_bytes() == LICENSE
    assert cli("state", name).stdout == "OFFLINED_AND_VALID\n"


def test_a_retryable_failed_download_continues_by_name(cli: Cli, home: Path, sim: NetSim) -> None:
    sim.add("/media", Resource(BODY, faults=[Fault("status", status=503)]))
    url = sim.url("/media")
    failed = cli("offline", url, "--id", "track:42", "--retries", "0")
    assert failed.exit_code == 1, failed.output
    assert download_state(home, "track:42") == "FAILED"

    result = cli("offline", "track:42")

    assert result.exit_code == 0, result.output
    assert cli("state", "track:42").stdout == "OFFLINED_AND_VALID\n"


@pytest.mark.parametrize("kind", ["id", "url"])
def test_every_command_takes_a_stored_products_name(
    cli: Cli, home: Path, sim: NetSim, tmp_path: Path, kind: str
) -> None:
    url, license_url = _serve(sim)
    args, name = _named(kind, url)
    assert cli("offline", url, *args, "--license-url", license_url).exit_code == 0

    assert cli("state", name).stdout == "OFFLINED_AND_VALID\n"
    media = Path(cli("path", name).stdout.strip())
    assert media.read_bytes() == BODY
    exported = cli("export", name, str(tmp_path / "out.bin"))
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out.bin").read_bytes() == BODY
    with media.open("r+b") as f:  # damaged in place: same size, other bytes
        f.write(b"X")
    repaired = cli("validate", "--repair", name)
    assert repaired.exit_code == 0, repaired.output
    assert repaired.stdout == f"{name}\tVALID\t(repaired)\n"
    assert cli("state", name).stdout == "OFFLINED_AND_VALID\n"
    deleted = cli("delete", name)
    assert deleted.exit_code == 0, deleted.output
    assert cli("state", name).stdout == "NOT_OFFLINED\n"


def test_a_product_the_store_does_not_know_still_needs_a_source(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    url, _ = _serve(sim)
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    served = len(sim.log)
    listing = cli("state", "--json").stdout

    result = cli("offline", "track:42", "track:43")

    assert result.exit_code == 2
    _only_one_error_line(
        result.stderr, "no URL and no playback-info source for track:43", "--source"
    )
    assert len(sim.log) == served
    assert cli("state", "--json").stdout == listing


# -- 2: a failed license names the license, its host, and the standard phrase ----------------


class _PhraseHandler(http.server.BaseHTTPRequestHandler):
    """Media at /media; /license answers the status and reason phrase the test set."""

    protocol_version = "HTTP/1.1"
    license_status = (404, "File not found")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        status, phrase = (200, "OK") if self.path == "/media" else self.license_status
        body = BODY if status == 200 else b"no"
        self.send_response(status, phrase)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def phrase_server() -> Iterator[Callable[[int, str], str]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, phrase: str) -> str:
        handler = type("Handler", (_PhraseHandler,), {"license_status": (status, phrase)})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "phrase", "shown"),
    [
        (404, "File not found", "HTTP 404 Not Found"),
        (403, "You shall not pass", "HTTP 403 Forbidden"),
        (404, "", "HTTP 404 Not Found"),
        # No standard phrase: the server's, printable and short.
        (
            499,
            "Client Closed \xe9 Request " + "x" * 100,
            "HTTP 499 Client Closed Request " + "x" * 18,
        ),
        (499, "\xe9 \xe9", "HTTP 499"),
    ],
)
def test_a_failed_license_names_the_license_and_its_host(
    cli: Cli,
    home: Path,
    phrase_server: Callable[[int, str], str],
    status: int,
    phrase: str,
    shown: str,
) -> None:
    origin = phrase_server(status, phrase)

    result = cli(
        "offline", f"{origin}/media", "--id", "track:42", "--license-url", f"{origin}/license"
    )

    assert result.exit_code == 1
    line = _one_error_line(result.stderr)
    assert line == f"offline-cli: error: track:42: license: {shown} from 127.0.0.1", line
    assert cli("state", "track:42").stdout == "NOT_OFFLINED\n"


def test_a_failed_media_download_shows_the_standard_phrase(
    cli: Cli, home: Path, phrase_server: Callable[[int, str], str]
) -> None:
    origin = phrase_server(404, "File not found")

    result = cli("offline", f"{origin}/gone", "--id", "track:42")

    assert result.exit_code == 1
    _one_error_line(result.stderr, "track:42: HTTP 404 Not Found from 127.0.0.1")


# -- 3: the README's cron lines work as written ------------------------------------------------


def _readme_cron() -> tuple[dict[str, str], list[str]]:
    """The variables and the commands of the README's crontab, as cron would run them."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```cron\n(.*?)```", text, re.S)
    assert match, "README.md has no ```cron block"
    variables: dict[str, str] = {}
    commands: list[str] = []
    for line in match.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, line  # five schedule fields, then the command
        commands.append(fields[5])
    return variables, commands


# What the README tells the user to replace by the folder they ran `make install` in.
CLONE_PLACEHOLDER = "/path/to/offline-cli"


def _console_script() -> Path:
    script = Path(sys.executable).parent / "offline-cli"
    if not script.is_file():
        found = shutil.which("offline-cli")
        if found is None:
            pytest.skip("offline-cli is not installed as a console script here")
        script = Path(found)
    return script


def test_the_readme_cron_lines_work_as_written(
    cli: Cli, home: Path, sim: NetSim, tmp_path: Path
) -> None:
    variables, commands = _readme_cron()
    assert len(commands) == 3
    assert "OFFLINE_CLI_HOME" in variables
    script = _console_script()
    user_home = tmp_path / "user"
    user_home.mkdir()
    url, _ = _serve(sim)

    def run_all() -> None:
        for command in commands:
            assert command.startswith(f"{CLONE_PLACEHOLDER}/.venv/bin/offline-cli "), command
            line = command.replace(f"{CLONE_PLACEHOLDER}/.venv/bin/offline-cli", str(script))
            env = {**variables, "OFFLINE_CLI_HOME": str(home)}  # the store the user picked
            ran = subprocess.run(
                ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={user_home}"]
                + [f"{k}={v}" for k, v in env.items()]
                + ["sh", "-c", line],
                capture_output=True,
                text=True,
                timeout=60,
            )
            # cron mails any output: a healthy night says nothing
            assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", ""), line

    run_all()  # a store that does not exist yet
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    run_all()  # and one with a product in it
    assert cli("state", "track:42").stdout == "OFFLINED_AND_VALID\n"
    logs = list(user_home.glob("*.jsonl"))
    assert logs and any("product_validated" in log.read_text() for log in logs)


# -- 4: -i lists: comments, blank lines, and the line of a bad entry ---------------------------


def test_an_input_list_takes_blank_lines_and_comments(
    cli: Cli, home: Path, sim: NetSim, tmp_path: Path
) -> None:
    sim.add("/a", Resource(b"a" * 1000))
    sim.add("/b", Resource(b"b" * 1000))
    sim.add("/c", Resource(b"c" * 1000))
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# my list\n"
        "\n"
        f"{sim.url('/a')}   # the first one\n"
        "   \n"
        f"{sim.url('/b')}\t# tab, then a note\n"
        f"  {sim.url('/c')}#frag\n"  # no whitespace before '#': the URL's fragment
    )

    result = cli("offline", "-i", str(listing))

    assert result.exit_code == 0, result.output
    assert sorted(cli("state").stdout.splitlines()) == sorted(
        [
            f"{sim.url('/a')}\tOFFLINED_AND_VALID",
            f"{sim.url('/b')}\tOFFLINED_AND_VALID",
            f"{sim.url('/c')}#frag\tOFFLINED_AND_VALID",
        ]
    )


@pytest.mark.parametrize("bad", ["htp:/nowhere", "not a product", "track:", "ftp://h/x"])
def test_a_bad_entry_names_the_file_and_line_and_nothing_is_downloaded(
    cli: Cli, home: Path, sim: NetSim, tmp_path: Path, bad: str
) -> None:
    url, _ = _serve(sim)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# header\n{url}\n\n{bad}   # line 4\n{url}?x=1\n")

    result = cli("offline", "-i", str(listing))

    assert result.exit_code == 2
    _only_one_error_line(result.stderr, f"error: {listing}:4: ")
    assert sim.log == []
    assert not home.exists()


def test_a_bad_entry_on_stdin_is_named_stdin(cli: Cli, home: Path, sim: NetSim) -> None:
    url, _ = _serve(sim)

    result = cli("offline", "-i", "-", input=f"{url}\n# two\nbogus entry\n")

    assert result.exit_code == 2
    _only_one_error_line(result.stderr, "error: <stdin>:3: ", "bogus entry")
    assert sim.log == []


# -- 5: read commands create nothing on a missing home ------------------------------------------


def _health_zeros(stdout: str) -> None:
    report = json.loads(stdout)
    numbers = [v for v in report.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    assert numbers and all(v == 0 for v in numbers), report
    assert not any(report.get(k) for k in report if isinstance(report[k], dict | list)), report


READS: list[tuple[list[str], int, Callable[[str], object] | str | None]] = [
    (["state"], 0, ""),
    (["state", "track:1", "video:2"], 0, "NOT_OFFLINED\nNOT_OFFLINED\n"),
    (["state", "--json"], 0, lambda out: json.loads(out) == [] or pytest.fail(out)),
    (
        ["state", "track:1", "--json"],
        0,
        lambda out: [r["state"] for r in json.loads(out)] == ["NOT_OFFLINED"] or pytest.fail(out),
    ),
    (["path", "track:1"], 1, ""),
    (["export", "track:1", "{tmp}/out"], 1, ""),
    (["validate"], 0, ""),
    (["validate", "track:1"], 1, None),
    (["validate", "--repair"], 0, ""),
    (["health"], 0, None),
    (["health", "--json"], 0, _health_zeros),
    (["cleanup", "--dry-run"], 0, None),
    (["cleanup", "--dry-run", "--json"], 0, None),
    (["config"], 0, None),
]


@pytest.mark.parametrize("where", ["missing", "empty folder"])
@pytest.mark.parametrize(("args", "code", "expected"), READS, ids=[" ".join(r[0]) for r in READS])
def test_read_commands_create_nothing(
    cli: Cli,
    home: Path,
    tmp_path: Path,
    where: str,
    args: list[str],
    code: int,
    expected: Callable[[str], object] | str | None,
) -> None:
    if where == "empty folder":
        home.mkdir()

    result = cli(*[a.format(tmp=tmp_path) for a in args])

    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if isinstance(expected, str):
        assert result.stdout == expected
    elif expected is not None:
        expected(result.stdout)
    if where == "missing":
        assert not home.exists()
    else:
        assert list(home.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_state_on_a_home_that_cannot_exist_reads_as_empty(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`state` only reads: a home under a file (never creatable) is still a missing home;
    the commands that make the store say it is not writable (test_bad_input.py)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(blocker / "home"))

    result = cli("state", "track:1")

    assert (result.exit_code, result.stdout, result.stderr) == (0, "NOT_OFFLINED\n", "")
    assert blocker.read_text() == "not a folder"


def test_a_home_with_no_store_yet_reads_as_empty_then_fills(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    url, _ = _serve(sim)
    assert cli("state", "track:42").stdout == "NOT_OFFLINED\n"
    assert not home.exists()
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    assert cli("state").stdout == "track:42\tOFFLINED_AND_VALID\n"


# -- 6: declining delete-all is not an error ---------------------------------------------------


def _delete_all_at_a_terminal(home: Path, answer: bytes) -> subprocess.CompletedProcess[str]:
    controller, terminal = os.openpty()
    os.write(controller, answer)
    try:
        return subprocess.run(
            [sys.executable, "-m", "offline_cli", "delete-all"],
            env={**os.environ, "OFFLINE_CLI_HOME": str(home)},
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.close(terminal)
        os.close(controller)


@pytest.mark.parametrize("answer", [b"n\n", b"\n", b"\x04"], ids=["n", "enter", "ctrl-d"])
def test_declining_delete_all_says_nothing_deleted_and_exits_1(
    cli: Cli, home: Path, sim: NetSim, answer: bytes
) -> None:
    url, _ = _serve(sim)
    assert cli("offline", url, "--id", "track:42").exit_code == 0

    result = _delete_all_at_a_terminal(home, answer)

    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "nothing deleted", result.stderr
    assert "error" not in result.stderr
    assert cli("state", "track:42").stdout == "OFFLINED_AND_VALID\n"


def test_delete_all_without_yes_and_without_a_terminal_is_still_usage(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    url, _ = _serve(sim)
    assert cli("offline", url, "--id", "track:42").exit_code == 0

    result = cli("delete-all", input="y\n")

    assert result.exit_code == 2
    _only_one_error_line(result.stderr, "--yes")
    assert cli("state", "track:42").stdout == "OFFLINED_AND_VALID\n"
