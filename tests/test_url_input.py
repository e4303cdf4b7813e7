"""URLs, product names and source templates as input (attack report on issue 7: items 2, 3, 5,
9 and 12): too long, not UTF-8, holding credentials that a refusal message would echo, behind
a BOM, or naming an unknown placeholder. Bad input exits 2 (or, from a playback source, fails
the product with "bad playback info") and changes nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import models, playback
from offline_cli.errors import UsageError
from offline_cli.models import MAX_URL_CHARS, check_url
from offline_cli.redaction import escape_controls, redact_url

SECRET = "SECRETPW"
BODY = b"media " * 500
PROJECT = Path(__file__).resolve().parent.parent


def _one_line_error(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("offline-cli: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _nothing_recorded(home: Path) -> bool:
    """No download entry and nothing stored (the home may not even exist)."""
    db = home / "offline.db"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            if conn.execute("SELECT count(*) FROM download_entries").fetchone() != (0,):
                return False
            if conn.execute("SELECT count(*) FROM offlined_entries").fetchone() != (0,):
                return False
        finally:
            conn.close()
    return not any(p.is_file() for sub in ("store", "partial") for p in (home / sub).rglob("*"))


def _run(home: Path, *args: str | bytes, env: dict[str, Any] | None = None) -> Any:
    """offline-cli as a real process, so that argv and the environment may hold bytes that
    are not UTF-8 (Python turns them into lone surrogates)."""
    return subprocess.run(
        [sys.executable, "-m", "offline_cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        env=env,
        cwd=PROJECT,
    )


# -- item 2: a URL longer than the cap ------------------------------------------------------------


def test_one_url_cap_is_shared_by_the_command_line_and_playback_answers() -> None:
    assert playback.MAX_URL_CHARS is models.MAX_URL_CHARS == 16 * 1024
    at_cap = "http://h/" + "a" * (MAX_URL_CHARS - len("http://h/"))
    assert check_url(at_cap) == at_cap
    with pytest.raises(UsageError, match=f"longer than {MAX_URL_CHARS} characters"):
        check_url(at_cap + "a")


@pytest.mark.parametrize("where", ["argument", "input file", "stdin"])
def test_a_url_over_the_cap_is_refused_before_anything_is_created(
    cli: Callable[..., Any], home: Path, tmp_path: Path, httpserver: HTTPServer, where: str
) -> None:
    httpserver.expect_request("/ok").respond_with_data(BODY)
    long_url = httpserver.url_for("/" + "a" * 70_000)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{httpserver.url_for('/ok')}\n{long_url}\n", encoding="utf-8")
    args = {
        "argument": ("offline", long_url),
        "input file": ("offline", "-i", str(listing)),
        "stdin": ("offline", "-i", "-"),
    }[where]
    result = cli(*args, input=listing.read_text() if where == "stdin" else None)
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.stderr, "malformed URL", f"longer than {MAX_URL_CHARS}")
    assert len(line) < 300  # the URL is not echoed whole
    assert not home.exists()
    assert httpserver.log == []  # not even the good line before it


def test_a_playback_answer_with_a_url_over_the_cap_is_bad_playback_info(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    long_url = httpserver.url_for("/" + "a" * MAX_URL_CHARS)
    info = {"url": long_url, "manifestMimeType": "audio/flac"}
    httpserver.expect_request("/info/track/1").respond_with_json(info)
    source = httpserver.url_for("/info/{type}/{id}")
    result = cli("-q", "offline", "track:1", "--source", source, "--retries", "0")
    assert result.exit_code == 1, result.output
    _one_line_error(result.stderr, "track:1", "bad playback info", f"longer than {MAX_URL_CHARS}")
    assert _nothing_recorded(home)


def test_a_paused_entry_with_an_overlong_url_left_by_the_old_crash_fails_only_itself(
    cli: Callable[..., Any], home: Path
) -> None:
    """The old release created the entry before httpx refused the URL; resume must not crash
    on it for ever."""
    assert cli("offline", "http://127.0.0.1:1/x", "--retries", "0").exit_code == 1
    long_url = "http://127.0.0.1:1/" + "a" * 70_000
    conn = sqlite3.connect(home / "offline.db")
    conn.execute(
        "UPDATE download_entries SET state = 'PAUSED', paused_at = 1, media_url = ?,"
        " product_key = ?, product_id = ?",
        (long_url, long_url, long_url),
    )
    conn.commit()
    conn.close()
    result = cli("resume", "--retries", "0")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    conn = sqlite3.connect(home / "offline.db")
    states = [row[0] for row in conn.execute("SELECT state FROM download_entries")]
    conn.close()
    assert states == ["FAILED"], states
    assert cli("resume", "--retries", "0").exit_code == 0  # nothing left to resume


# -- item 3: bytes that are not UTF-8, lone surrogates --------------------------------------------


@pytest.mark.parametrize(
    "argument",
    [b"http://127.0.0.1:1/m\xff", b"http://127.0.0.1:1/m\xed\xa0\x80", b"track:1\xff"],
    ids=["url-0xff", "url-encoded-surrogate", "product-name"],
)
def test_an_argument_that_is_not_utf8_exits_2(tmp_path: Path, argument: bytes) -> None:
    home = tmp_path / "home"
    result = _run(home, "offline", argument)  # type: ignore[arg-type]
    assert result.returncode == 2, result.stderr
    _one_line_error(result.stderr, "malformed")
    assert "\\udc" in result.stderr  # the byte is shown escaped, not written raw
    assert not home.exists()


def test_a_source_template_from_the_environment_that_is_not_utf8_exits_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environb.items() if not k.startswith(b"OFFLINE_CLI_")}
    env[b"OFFLINE_CLI_SOURCE"] = b"http://127.0.0.1:1/info\xff/{type}/{id}"
    result = _run(home, "offline", "track:1", env=env)
    assert result.returncode == 2, result.stderr
    _one_line_error(result.stderr, "OFFLINE_CLI_SOURCE", "not UTF-8")
    assert not home.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "/media\ud800"),
        ("licenseUrl", "/license\udcff"),
        ("manifestMimeType", "audio/\udfff"),
    ],
)
def test_a_playback_answer_with_a_lone_surrogate_is_bad_playback_info(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer, field: str, value: str
) -> None:
    info = {"url": httpserver.url_for("/media"), "manifestMimeType": "audio/flac"}
    info[field] = httpserver.url_for(value) if value.startswith("/") else value
    # json.dumps writes the surrogate as the escape \ud800, as a hostile source would.
    httpserver.expect_request("/info/track/1").respond_with_data(json.dumps(info))
    httpserver.expect_request("/media").respond_with_data(BODY)
    source = httpserver.url_for("/info/{type}/{id}")
    result = cli("-q", "offline", "track:1", "--source", source, "--retries", "0")
    assert result.exit_code == 1, result.output
    _one_line_error(result.stderr, "track:1", "bad playback info", "not UTF-8")
    assert _nothing_recorded(home)
    assert [e[0].path for e in httpserver.log] == ["/info/track/1"]


def test_lone_surrogates_print_escaped() -> None:
    assert escape_controls("a\udcffb") == "a\\udcffb"


# -- item 5: credentials in refusal messages and in `config` --------------------------------------


@pytest.mark.parametrize(
    "argument",
    [
        f"http://u:{SECRET} PW@127.0.0.1/f",
        f"http:/\\u:{SECRET}@127.0.0.1/f",
        f"u:{SECRET}@127.0.0.1/f",
        f"http:///u:{SECRET}@127.0.0.1/f",
        f"http:\\\\u:{SECRET}@127.0.0.1/f",
        f"ftp://u:{SECRET}@127.0.0.1/f",
        f"http://u:{SECRET}@127.0.0.1:99999/f",
        f"http://u:{SECRET}@127.0.0.1/f\x1b[2J",
        # a password holding "/", "?" or "#" ends the authority before its "@"
        f"http://user:{SECRET}/2@127.0.0.1:1/f",
        f"https://user:{SECRET}?w@127.0.0.1/f",
        f"http://user:{SECRET}#w@127.0.0.1/f",
    ],
)
def test_a_refused_url_is_never_echoed_with_its_credentials(
    cli: Callable[..., Any], home: Path, tmp_path: Path, argument: str
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(argument + "\n", encoding="utf-8")
    for args in (
        ("offline", argument),
        ("offline", "-i", str(listing)),
        ("offline", "http://127.0.0.1:1/ok", "--license-url", argument),
    ):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        _one_line_error(result.stderr)
        assert SECRET not in result.output, (args, result.output)
    assert not home.exists()


def test_config_output_redacts_the_source_template(
    cli: Callable[..., Any], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = "http://u:SRCPW@127.0.0.1:18083/info/{type}/{id}?token=SRCTOK"
    monkeypatch.setenv("OFFLINE_CLI_SOURCE", template)
    text = cli("config")
    assert text.exit_code == 0, text.output
    assert f"source\t{redact_url(template)}\t($OFFLINE_CLI_SOURCE)" in text.stdout
    as_json = cli("config", "--json")
    assert as_json.exit_code == 0, as_json.output
    source = json.loads(as_json.stdout)["settings"]["source"]
    assert source == {"value": redact_url(template), "origin": "$OFFLINE_CLI_SOURCE"}
    for output in (text.output, as_json.output):
        assert "SRCPW" not in output and "SRCTOK" not in output


# -- item 9: a byte order mark before the first line of -i ----------------------------------------


@pytest.mark.parametrize("where", ["input file", "stdin"])
def test_a_leading_bom_in_a_list_is_not_part_of_the_first_name(
    cli: Callable[..., Any], home: Path, tmp_path: Path, httpserver: HTTPServer, where: str
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    url = httpserver.url_for("/a")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + url.encode() + b"\r\n")
    if where == "stdin":
        result = cli("offline", "-i", "-", input=listing.read_text(encoding="utf-8"))
    else:
        result = cli("offline", "-i", str(listing))
    assert result.exit_code == 0, result.output
    assert f"{url}\tOFFLINED_AND_VALID" in cli("state").stdout


# -- item 12: unknown placeholders in a source template -------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["http://127.0.0.1:1/{bogus}/{id}", "http://127.0.0.1:1/{type}/{ID}", "http://h/{}/{id}"],
)
@pytest.mark.parametrize("where", ["option", "environment", "config file"])
def test_a_source_template_with_an_unknown_placeholder_exits_2_naming_it(
    cli: Callable[..., Any],
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    template: str,
    where: str,
) -> None:
    placeholder = next(p for p in ("{bogus}", "{ID}", "{}") if p in template)
    args: tuple[str, ...] = ("offline", "track:1")
    if where == "option":
        args += ("--source", template)
    elif where == "environment":
        monkeypatch.setenv("OFFLINE_CLI_SOURCE", template)
    else:
        config = tmp_path / "config.toml"
        config.write_text(f"source = {json.dumps(template)}\n", encoding="utf-8")
        monkeypatch.setenv("OFFLINE_CLI_CONFIG", str(config))
    result = cli(*args)
    assert result.exit_code == 2, result.output
    _one_line_error(result.stderr, "unknown placeholder", repr(placeholder))
    assert not home.exists()


def test_a_source_template_with_only_type_and_id_is_used(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    info = {"url": httpserver.url_for("/media"), "manifestMimeType": "audio/flac"}
    httpserver.expect_request("/info/track/1").respond_with_json(info)
    httpserver.expect_request("/media").respond_with_data(BODY)
    result = cli("offline", "track:1", "--source", httpserver.url_for("/info/{type}/{id}"))
    assert result.exit_code == 0, result.output
