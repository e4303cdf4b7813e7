"""Absurd input and hostile playback sources: exit 2 (or 1) naming the problem, nothing changed.

Covers issue 7, items 6 (playback-info answers are capped and checked), 14 (every number has a
range) and 16 (log file, config file and -i limits, misplaced config keys, an empty --home).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from offline_cli.config import (
    MAX_CONFIG_BYTES,
    SETTING_RANGES,
    Settings,
    describe_range,
    load_settings,
)
from offline_cli.errors import ConfigError, PermanentError
from offline_cli.models import MediaProduct, ProductType
from offline_cli.playback import MAX_PLAYBACK_INFO_BYTES
from tests.conftest import CliResult

BODY = b"media bytes " * 1000
PROJECT = Path(__file__).resolve().parent.parent
README = (PROJECT / "README.md").read_text(encoding="utf-8")


def _one_line_error(result: CliResult, *needles: str) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("offline-cli: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _rows(home: Path, sql: str) -> list[tuple[object, ...]]:
    db = home / "offline.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _assert_no_download_recorded(home: Path) -> None:
    """No download entry, nothing stored, no `download_started` metric."""
    assert _rows(home, "SELECT product_key, state FROM download_entries") == []
    assert _rows(home, "SELECT product_key FROM offlined_entries") == []
    assert _rows(home, "SELECT event FROM metric_events WHERE event = 'download_started'") == []
    for sub in ("store", "partial"):
        folder = home / sub
        if folder.exists():
            assert [p for p in folder.rglob("*") if p.is_file()] == []


# -- item 6: playback-info answers ----------------------------------------------------------------

GOOD_INFO = {"manifestMimeType": "audio/flac", "size": len(BODY)}


def _serve_info(httpserver: HTTPServer, info: object | bytes, **response: object) -> str:
    """Serve media at /m and ``info`` at /info/track/1; return the --source template."""
    httpserver.expect_request("/m").respond_with_data(BODY)
    if isinstance(info, dict):
        info = {"url": httpserver.url_for("/m"), **info}
    body = info if isinstance(info, bytes) else json.dumps(info).encode()
    httpserver.expect_request("/info/track/1").respond_with_data(body, **response)  # type: ignore[arg-type]
    return httpserver.url_for("/info/{type}/{id}")


def test_metric_table_name_is_what_this_file_queries(cli, home: Path) -> None:
    """Guards the SQL below: an empty query result must mean "nothing recorded"."""
    assert cli("cleanup").exit_code == 0  # creates the store (`state` only reads)
    tables = {row[0] for row in _rows(home, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"download_entries", "offlined_entries", "metric_events"} <= tables


@pytest.mark.parametrize(
    ("info", "needle"),
    [
        ({**GOOD_INFO, "size": 10**30}, "'size'"),
        ({**GOOD_INFO, "size": -1}, "'size'"),
        ({**GOOD_INFO, "size": 1.5}, "'size'"),
        ({**GOOD_INFO, "licenseExpiresAt": "0001-01-01T00:00:00+14:00"}, "'licenseExpiresAt'"),
        ({**GOOD_INFO, "licenseExpiresAt": "9999-12-31T23:59:59-14:00"}, "'licenseExpiresAt'"),
        ({**GOOD_INFO, "licenseExpiresAt": 1e300}, "'licenseExpiresAt'"),
        ({**GOOD_INFO, "manifestMimeType": "a/" + "b" * 100_000}, "'manifestMimeType'"),
        ({**GOOD_INFO, "licenseUrl": "http://h/" + "x" * 100_000}, "'licenseUrl'"),
        ({**GOOD_INFO, "extra": json.loads("[" * 33 + "1" + "]" * 33)}, "nested"),
        (b"[" * 500_000 + b"]" * 500_000, "nested"),
        (b'{"size": ' + b"9" * 5000 + b"}", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=[
        "size-10e30",
        "size-negative",
        "size-float",
        "expiry-year-1",
        "expiry-year-9999",
        "expiry-number",
        "mime-100k",
        "license-url-100k",
        "depth-33",
        "depth-500k",
        "int-5000-digits",
        "not-utf8",
    ],
)
def test_bad_playback_info_fails_clearly_and_records_no_download(
    cli, home: Path, httpserver: HTTPServer, info: object, needle: str
) -> None:
    source = _serve_info(httpserver, info)
    result = cli("-q", "offline", "track:1", "--source", source, "--retries", "0")
    assert result.exit_code == 1, result.output
    line = _one_line_error(result, "track:1", "bad playback info", needle)
    assert len(line) < 400  # huge values are not echoed whole
    _assert_no_download_recorded(home)
    assert not any(entry[0].path == "/m" for entry in httpserver.log)
    state = json.loads(cli("state", "--json").stdout)
    assert state == []


def test_good_playback_info_still_counts_as_a_started_download(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    source = _serve_info(httpserver, GOOD_INFO)
    assert cli("offline", "track:1", "--source", source).exit_code == 0
    health = json.loads(cli("health", "--json").stdout)
    assert health["downloads_started"] == 1 and health["downloads_succeeded"] == 1


def _gzip_bomb(prefix: bytes, decoded_total: int) -> Iterator[bytes]:
    """A gzip stream of ``prefix`` and zeros, compressed as it is sent (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield packer.compress(prefix)
    zeros = b"0" * (1 << 20)
    for _ in range(decoded_total >> 20):
        yield packer.compress(zeros) + packer.flush(zlib.Z_SYNC_FLUSH)
    yield packer.flush()


def test_gzip_bomb_is_refused_at_the_cap_without_inflating_it(
    make_engine, home: Path, httpserver: HTTPServer
) -> None:
    sent: list[int] = []

    def bomb(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            for chunk in _gzip_bomb(b'{"url": "', 256 << 20):
                sent.append(len(chunk))
                yield chunk

        return Response(body(), headers={"Content-Encoding": "gzip"})

    httpserver.expect_request("/info/track/1").respond_with_handler(bomb)
    engine = make_engine(source=httpserver.url_for("/info/{type}/{id}"), retries=0)
    tracemalloc.start()
    try:
        with pytest.raises(PermanentError, match=r"bad playback info.*larger than 1 MiB"):
            engine.offline(MediaProduct(ProductType.TRACK, "1"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 256 MiB decoded was on offer; the cap is 1 MiB and no chunk inflates past it.
    assert peak < 8 * MAX_PLAYBACK_INFO_BYTES, peak
    _assert_no_download_recorded(home)


def test_endless_playback_body_is_cut_at_the_cap(
    make_engine, home: Path, httpserver: HTTPServer
) -> None:
    sent: list[int] = []

    def endless(request: Request) -> Response:
        def body() -> Iterator[bytes]:
            chunk = b" " * 65536
            for _ in range(4096):  # 256 MiB at most: bounded even if the client never stops
                sent.append(len(chunk))
                yield chunk

        return Response(body(), content_type="application/json")

    httpserver.expect_request("/info/track/1").respond_with_handler(endless)
    engine = make_engine(source=httpserver.url_for("/info/{type}/{id}"), retries=0)
    with pytest.raises(PermanentError, match=r"bad playback info.*larger than 1 MiB"):
        engine.offline(MediaProduct(ProductType.TRACK, "1"))
    assert sum(sent) < 64 * MAX_PLAYBACK_INFO_BYTES
    _assert_no_download_recorded(home)


def test_gzip_playback_info_within_the_cap_is_read(cli, home: Path, httpserver: HTTPServer) -> None:
    info = json.dumps({"url": httpserver.url_for("/m"), **GOOD_INFO}).encode()
    httpserver.expect_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/info/track/1").respond_with_data(
        gzip.compress(info), headers={"Content-Encoding": "gzip"}
    )
    result = cli("offline", "track:1", "--source", httpserver.url_for("/info/{type}/{id}"))
    assert result.exit_code == 0, result.output
    assert cli("state", "track:1").stdout.strip() == "OFFLINED_AND_VALID"


def test_unknown_content_encoding_of_playback_info_is_bad_playback_info(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    source = _serve_info(httpserver, GOOD_INFO, headers={"Content-Encoding": "br"})
    result = cli("-q", "offline", "track:1", "--source", source, "--retries", "0")
    assert result.exit_code == 1
    _one_line_error(result, "bad playback info", "Content-Encoding")
    _assert_no_download_recorded(home)


# -- item 14: every number has a range ------------------------------------------------------

NINES_400 = "9" * 400


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["offline", "URL", "--stall-timeout", "99999999999999999999999"], ["--stall-timeout"]),
        (["offline", "URL", "--stall-timeout", "0"], ["--stall-timeout", "0.1s to 1d"]),
        (["offline", "URL", "--stall-timeout", "inf"], ["--stall-timeout"]),
        (["offline", "URL", "--stall-timeout", "nan"], ["--stall-timeout"]),
        (["offline", "URL", "--network-timeout", "8w"], ["--network-timeout", "0s to 1w"]),
        (["offline", "URL", "--retries", "101"], ["--retries", "0 to 100"]),
        (["offline", "URL", "--retries", "99999999999999999999999"], ["--retries"]),
        (["resume", "--stall-timeout", "0"], ["--stall-timeout"]),
        (["--db-timeout", NINES_400, "state"], ["--db-timeout", "too large"]),
        (["--db-timeout", "2d", "state"], ["--db-timeout", "0s to 1d"]),
        (["cleanup", "--older-than", "99999999999w"], ["--older-than", "out of range"]),
        (["health", "--since", NINES_400], ["--since", "too large"]),
        (["offline", "URL", "--stall-timeout", "١٢"], ["--stall-timeout", "malformed"]),
    ],
    ids=lambda v: " ".join(a[:12] for a in v) if isinstance(v, list) else None,
)
def test_numeric_option_out_of_range_exits_2_naming_it(
    cli, home: Path, httpserver: HTTPServer, args: list[str], needles: list[str]
) -> None:
    args = [httpserver.url_for("/m") if a == "URL" else a for a in args]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    line = _one_line_error(result, *needles)
    assert len(line) < 300
    assert len(httpserver.log) == 0
    assert not home.exists()


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("OFFLINE_CLI_BACKOFF_BASE", "100000000", "out of range (0s to 5m)"),
        ("OFFLINE_CLI_BACKOFF_MAX", NINES_400, "too large"),
        ("OFFLINE_CLI_RETRIES", NINES_400, "too large"),
        ("OFFLINE_CLI_RETRIES", "1e3", "not a whole number: '1e3'"),
        ("OFFLINE_CLI_STALL_TIMEOUT", "0", "out of range (0.1s to 1d)"),
        ("OFFLINE_CLI_RETENTION", "nan", "'nan'"),
        ("OFFLINE_CLI_CONNECT_TIMEOUT", "0.01", "out of range (0.1s to 1h)"),
    ],
)
def test_environment_value_out_of_range_exits_2_naming_it(
    cli, home: Path, name: str, value: str, needle: str
) -> None:
    result = cli("offline", "http://127.0.0.1:9/x", env={name: value})
    assert result.exit_code == 2, result.output
    _one_line_error(result, name, needle)
    assert not home.exists()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("stall_timeout = inf", ["'stall_timeout'", "finite"]),
        ("stall_timeout = 0", ["'stall_timeout'", "0.1s to 1d"]),
        ("retention = nan", ["'retention'", "finite"]),
        ("retention = -1", ["'retention'", "out of range"]),
        ("db_timeout = 1e300", ["'db_timeout'", "out of range"]),
        ("retries = 9223372036854775807", ["'retries'", "out of range"]),
        ("backoff_base = 1e10", ["'backoff_base'", "out of range"]),
        ('maintenance_interval = "999999999w"', ["'maintenance_interval'", "out of range"]),
    ],
)
def test_config_value_out_of_range_exits_2_naming_it(
    cli, home: Path, text: str, needles: list[str]
) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(text + "\n")
    result = cli("offline", "http://127.0.0.1:9/x")
    assert result.exit_code == 2, result.output
    _one_line_error(result, "config file", *needles)
    assert not (home / "offline.db").exists()


def test_retention_nan_cannot_reach_cleanup(cli, home: Path) -> None:
    """`retention = nan` made cleanup ignore age: now the command refuses to start."""
    home.mkdir(parents=True)
    (home / "config.toml").write_text("retention = nan\n")
    result = cli("cleanup")
    assert result.exit_code == 2
    _one_line_error(result, "'retention'", "finite")


def _numeric_settings() -> list[str]:
    return [f.name for f in fields(Settings) if str(f.type) in ("int", "float")]


def test_every_numeric_setting_has_a_range_that_holds_its_default() -> None:
    defaults = Settings()
    for name in _numeric_settings():
        assert name in SETTING_RANGES, f"add {name!r} to SETTING_RANGES in config.py"
        low, high = SETTING_RANGES[name]
        assert low <= getattr(defaults, name) <= high, name
    assert set(SETTING_RANGES) == set(_numeric_settings())


@pytest.mark.parametrize("name", sorted(SETTING_RANGES))
def test_range_ends_are_accepted_and_just_outside_is_not(name: str) -> None:
    low, high = SETTING_RANGES[name]
    env = f"OFFLINE_CLI_{name.upper()}"
    whole = isinstance(low, int) and isinstance(high, int)

    def written(value: float) -> str:
        return str(int(value)) if whole else f"{value:.10g}"

    for inside in (low, high):
        settings = load_settings(Path("/nonexistent-home"), environ={env: written(inside)})
        assert getattr(settings, name) == inside
    outside = [high + 1] + ([low - (1 if whole else 0.01)] if low > 0 else [])
    for value in outside:
        text = written(value)
        with pytest.raises(ConfigError, match=re.escape(describe_range(name))):
            load_settings(Path("/nonexistent-home"), environ={env: text})


def test_readme_documents_every_range() -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for name in SETTING_RANGES:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}`")), None)
        assert row is not None, f"README's configuration table lacks {name}"
        assert describe_range(name) in row, row


# -- item 16: log file, config file, -i, misplaced keys, empty --home ------------------------------


def test_log_file_that_cannot_be_written_is_one_line_not_a_traceback(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    result = cli("--log-file", "/dev/full", "offline", httpserver.url_for("/m"))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Logging error" not in result.output
    warnings = [line for line in result.stderr.splitlines() if "log file" in line]
    assert warnings == [
        "offline-cli: warning: cannot write log file /dev/full: No space left on device; "
        "further log events are dropped"
    ]
    assert cli("state", httpserver.url_for("/m")).stdout.strip() == "OFFLINED_AND_VALID"


def _run_limited(
    args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The CLI in a child with a memory limit and a time limit: reading /dev/zero without a
    cap must fail this test, not exhaust the machine."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "offline_cli", *args],
        env={**os.environ, "PYTHONPATH": str(PROJECT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
        check=False,
    )


def test_named_config_that_is_missing_exits_2(cli, home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent.toml"
    result = cli("config", env={"OFFLINE_CLI_CONFIG": str(missing)})
    assert result.exit_code == 2
    _one_line_error(result, str(missing), "does not exist", "OFFLINE_CLI_CONFIG")


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_named_config_that_is_not_a_regular_file_exits_2(
    home: Path, tmp_path: Path, kind: str
) -> None:
    target = {"device": Path("/dev/zero"), "folder": tmp_path}.get(kind, tmp_path / "fifo")
    if kind == "fifo":
        os.mkfifo(target)
    result = _run_limited(["config"], {"OFFLINE_CLI_CONFIG": str(target)}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert str(target) in line and ("not a regular file" in line or "directory" in line), line


def test_config_file_over_the_cap_exits_2(cli, home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("#" * MAX_CONFIG_BYTES + "\nretries = 3\n")
    result = cli("config")
    assert result.exit_code == 2
    _one_line_error(result, "config.toml", "larger than 1 MiB")


def test_input_file_that_is_a_device_exits_2(home: Path, tmp_path: Path) -> None:
    result = _run_limited(["offline", "-i", "/dev/zero"], {"OFFLINE_CLI_HOME": str(home)}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "offline-cli: error: cannot read -i /dev/zero: not a regular file"
    ]
    assert not home.exists()


def test_input_file_over_the_cap_exits_2(cli, home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with big.open("wb") as handle:  # sparse: no disk used
        handle.truncate((64 << 20) + 1)
    result = cli("offline", "-i", str(big))
    assert result.exit_code == 2
    _one_line_error(result, "-i", "larger than 64 MiB")
    assert not home.exists()


def test_input_on_stdin_over_the_cap_exits_2(cli, home: Path) -> None:
    result = cli("offline", "-i", "-", input="#" * ((64 << 20) + 1))
    assert result.exit_code == 2
    _one_line_error(result, "-i -", "larger than 64 MiB")
    assert not home.exists()


def test_input_from_a_pipe_is_read(cli, home: Path, httpserver: HTTPServer, tmp_path: Path) -> None:
    """`-i <(make-list)` hands a pipe: a pipe is not refused like a device."""
    httpserver.expect_request("/m").respond_with_data(BODY)
    fifo = tmp_path / "list"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("w") as handle:
            handle.write(httpserver.url_for("/m") + "\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    result = cli("offline", "-i", str(fifo))
    writer.join(timeout=10)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[flags]\nretries = 3", ["'retries'", "not a flag"]),
        ("[flags]\nretrys = 3", ["unknown flag 'retrys'"]),
        ("download_retry = false", ["'download_retry'", "[flags]"]),
        ("[network]\nretries = 3", ["unknown section [network]"]),
        ("[retries]\nvalue = 3", ["unknown section [retries]"]),
    ],
)
def test_misplaced_or_unknown_config_entries_exit_2(
    cli, home: Path, text: str, needles: list[str]
) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(text + "\n")
    result = cli("offline", "http://127.0.0.1:9/x")
    assert result.exit_code == 2, result.output
    _one_line_error(result, "config file", *needles)
    assert not (home / "offline.db").exists()


def test_empty_home_option_exits_2(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for args in (["--home", "", "state"], ["--home", " ", "config"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        _one_line_error(result, "--home", "empty")
    assert list(workdir.iterdir()) == []
