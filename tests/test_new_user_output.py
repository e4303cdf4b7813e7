"""Issue 11, what a new user tripped over in the output: `-q` is errors only for every
command, config and environment messages and `config` speak the user's units, one JSON
vocabulary, cleanup's wording, and piped progress lines with a summary line."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.netsim import Fault, NetSim, Resource

BODY = bytes(range(256)) * 800  # 204.8 kB
OTHER = b"other media " * 5000
Cli = Callable[..., Any]


def _one_error_line(result: Any) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("offline-cli: error: "), lines[0]
    return str(lines[0].removeprefix("offline-cli: error: "))


def _failed_with_partial_data(cli: Cli, sim: NetSim, key: str = "track:8") -> None:
    """A FAILED download of ``key`` that left 40,000 bytes of partial data."""
    path = f"/cut-{key.replace(':', '-')}"
    sim.add(path, Resource(BODY, faults=[Fault("cut", at=40_000)]))
    result = cli("offline", sim.url(path), "--id", key, "--retries", "0")
    assert result.exit_code == 1, result.output


def _partial_files(home: Path) -> list[Path]:
    return sorted((home / "partial").iterdir())


def _sql(home: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    with sqlite3.connect(home / "offline.db") as conn:
        conn.execute(statement, params)
    conn.close()


# -- 1. -q is "errors only" for every command ------------------------------------------------


def test_quiet_prints_nothing_on_a_clean_run_but_the_data_asked_for(
    cli: Cli, home: Path, httpserver: HTTPServer, sim: NetSim, tmp_path: Path
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    url_a, url_b = httpserver.url_for("/a"), httpserver.url_for("/b")
    silent = {
        "offline": cli("-q", "offline", url_a, "--id", "track:1"),
        "offline again": cli("-q", "offline", url_a, "--id", "track:1"),
        "offline several": cli("-q", "offline", url_a, url_b),
        "resume nothing": cli("-q", "resume"),
        "validate": cli("-q", "validate"),
    }
    _failed_with_partial_data(cli, sim)
    silent["resume"] = cli("-q", "resume")
    _failed_with_partial_data(cli, sim, "track:9")
    silent["cleanup --dry-run"] = cli("-q", "cleanup", "--older-than", "0", "--dry-run")
    silent["cleanup"] = cli("-q", "cleanup", "--older-than", "0")
    silent["cleanup nothing"] = cli("-q", "cleanup", "--older-than", "0")
    data = {
        "state": cli("-q", "state"),
        "path": cli("-q", "path", "track:1"),
        "export": cli("-q", "export", "track:1", str(tmp_path / "out.bin")),
        "health": cli("-q", "health"),
        "config": cli("-q", "config"),
    }
    as_json = {
        name: cli("-q", *args, "--json")
        for name, args in {
            "state": ["state"],
            "path": ["path", "track:1"],
            "validate": ["validate"],
            "cleanup": ["cleanup", "--dry-run"],
            "health": ["health"],
            "config": ["config"],
        }.items()
    }
    silent["delete"] = cli("-q", "delete", "track:1")
    silent["delete-all"] = cli("-q", "delete-all", "--yes")

    for name, result in silent.items():
        assert result.exit_code == 0, (name, result.output)
        assert result.output == "", (name, result.output)
    for name, result in data.items():
        assert result.exit_code == 0, (name, result.output)
        assert result.stderr == "" and result.stdout != "", (name, result.output)
    for name, result in as_json.items():
        assert result.exit_code == 0 and result.stderr == "", (name, result.output)
        json.loads(result.stdout)


def test_quiet_validate_prints_only_the_invalid_products(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    assert cli("-q", "offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    assert cli("-q", "offline", httpserver.url_for("/b"), "--id", "track:2").exit_code == 0
    media = Path(cli("path", "track:2").stdout.strip())
    media.write_bytes(media.read_bytes()[::-1])  # same size, other bytes

    result = cli("-q", "validate")

    assert result.exit_code == 1
    assert result.stderr == ""
    assert (
        result.stdout
        == "track:2\tINVALID\tmedia SHA-256 differs from the one recorded at download\n"
    )


def test_quiet_still_prints_errors(cli: Cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/bad").respond_with_data("no", status=404)
    httpserver.expect_request("/a").respond_with_data(BODY)

    result = cli("-q", "offline", httpserver.url_for("/a"), httpserver.url_for("/bad"))

    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "404" in result.stderr  # no summary


# -- 2. messages and `config` in the user's units -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("OFFLINE_CLI_RETRIES", "abc", "$OFFLINE_CLI_RETRIES: not a whole number: 'abc'"),
        ("OFFLINE_CLI_JOBS", "4.5", "$OFFLINE_CLI_JOBS: not a whole number: '4.5'"),
        ("OFFLINE_CLI_RETRIES", "500", "$OFFLINE_CLI_RETRIES: 500 is out of range (0 to 100)"),
        (
            "OFFLINE_CLI_STALL_TIMEOUT",
            "soon",
            "$OFFLINE_CLI_STALL_TIMEOUT: malformed duration 'soon'",
        ),
        (
            "OFFLINE_CLI_RETENTION",
            "5000d",
            "$OFFLINE_CLI_RETENTION: 5000d is out of range (0s to 3650d)",
        ),
        ("OFFLINE_CLI_LIMIT_RATE", "fast", "$OFFLINE_CLI_LIMIT_RATE: malformed rate 'fast'"),
        (
            "OFFLINE_CLI_DOWNLOAD_RETRY",
            "maybe",
            "$OFFLINE_CLI_DOWNLOAD_RETRY: not on or off: 'maybe'",
        ),
        ("OFFLINE_CLI_QUALITY", "highest", "$OFFLINE_CLI_QUALITY: malformed quality 'highest'"),
    ],
)
def test_a_bad_environment_value_is_one_line_in_the_users_terms(
    cli: Cli, home: Path, name: str, value: str, expected: str
) -> None:
    result = cli("offline", "http://127.0.0.1:9/x", env={name: value})

    assert result.exit_code == 2
    line = _one_error_line(result)
    assert line.startswith(expected), line
    assert "invalid literal" not in line and "invalid value for" not in line
    assert not home.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('retries = "abc"', "key 'retries': not a whole number: 'abc' (hint: e.g. 5)"),
        ("retries = 2.5", "key 'retries': not a whole number: 2.5"),
        ("stall_timeout = true", "key 'stall_timeout': not a duration: true"),
        ('stall_timeout = "soon"', "key 'stall_timeout': malformed duration 'soon'"),
        ('limit_rate = "fast"', "key 'limit_rate': malformed rate 'fast'"),
        ("log_file = 5", "key 'log_file': not a path: 5 (hint: write it in quotes)"),
        ("token_file = false", "key 'token_file': not a path: false"),
        ('[flags]\ndownload_retry = "maybe"', "key 'download_retry': not on or off: 'maybe'"),
        ("[flags]\ndownload_retry = 1", "key 'download_retry': not on or off: 1"),
    ],
)
def test_a_bad_config_value_names_the_file_and_the_key(
    cli: Cli, home: Path, text: str, expected: str
) -> None:
    home.mkdir(parents=True)
    config = home / "config.toml"
    config.write_text(text + "\n")

    result = cli("config")

    assert result.exit_code == 2
    line = _one_error_line(result)
    assert line.startswith(f"config file {config}, {expected}"), line
    assert not (home / "offline.db").exists()


def test_a_log_file_that_cannot_be_written_names_where_it_was_set(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    log = tmp_path / "missing" / "x.jsonl"

    from_env = cli("resume", env={"OFFLINE_CLI_LOG_FILE": str(log)})
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.toml"
    config.write_text(f'log_file = "{log}"\n')
    from_file = cli("resume")
    from_option = cli("--log-file", str(log), "resume")

    for result, place in (
        (from_env, "$OFFLINE_CLI_LOG_FILE"),
        (from_file, f"log_file in config file {config}"),
        (from_option, "--log-file"),
    ):
        assert result.exit_code == 2
        line = _one_error_line(result)
        assert line == (
            f"cannot write log file {log}: No such file or directory "
            f"(hint: set {place} to a writable path)"
        ), line


def _config_lines(stdout: str) -> dict[str, tuple[str, ...]]:
    return {line.split("\t")[0]: tuple(line.split("\t")[1:]) for line in stdout.splitlines()}


def test_config_prints_values_as_a_user_writes_them(cli: Cli, home: Path) -> None:
    result = cli(
        "config",
        env={
            "OFFLINE_CLI_LIMIT_RATE": "500k",
            "OFFLINE_CLI_DOWNLOAD_RETRY": "false",
            "OFFLINE_CLI_STALL_TIMEOUT": "90",
        },
    )

    assert result.exit_code == 0, result.output
    lines = _config_lines(result.stdout)
    assert lines["retention"] == ("7d", "(default)")
    assert lines["maintenance_interval"] == ("1d", "(default)")
    assert lines["connect_timeout"] == ("10s", "(default)")
    assert lines["network_timeout"] == ("2m", "(default)")
    assert lines["backoff_base"] == ("1s", "(default)")
    assert lines["stall_timeout"] == ("90s", "($OFFLINE_CLI_STALL_TIMEOUT)")
    assert lines["limit_rate"] == ("500k", "($OFFLINE_CLI_LIMIT_RATE)")
    assert lines["download_retry"] == ("off", "($OFFLINE_CLI_DOWNLOAD_RETRY)")
    assert lines["download_recovery"] == ("on", "(default)")
    assert lines["source"] == ("unset", "(default)")
    assert lines["log_file"] == ("unset", "(default)")
    assert lines["retries"] == ("5", "(default)")
    # limits that are off, and empty lists, say so (as --help's defaults do)
    assert lines["max_bandwidth"] == ("none", "(default)")
    assert lines["headers"] == ("none", "(default)")
    for machine in ("None", "True", "False", "604800.0", "30.0", "()", "{}"):
        assert machine not in result.stdout.split(), machine
    assert not home.exists()  # config only reads


def test_config_says_when_the_config_file_does_not_exist(cli: Cli, home: Path) -> None:
    missing = _config_lines(cli("config").stdout)["config_file"]
    assert len(missing) == 2 and missing[1] == "(not found; defaults apply)", missing
    assert json.loads(cli("config", "--json").stdout)["config_file_exists"] is False

    home.mkdir(parents=True)
    (home / "config.toml").write_text('retention = "3d"\n')
    found = cli("config")
    assert _config_lines(found.stdout)["config_file"] == (str(home / "config.toml"),)
    assert _config_lines(found.stdout)["retention"][0] == "3d"
    data = json.loads(cli("config", "--json").stdout)
    assert data["config_file_exists"] is True
    # --json keeps machine values: seconds, null, true
    assert data["settings"]["retention"]["value"] == 3 * 86400
    assert data["settings"]["source"]["value"] is None
    assert data["settings"]["download_retry"]["value"] is True


# -- 3. one JSON vocabulary -----------------------------------------------------------------------


def _keys(value: Any) -> set[str]:
    """Every key of every object in ``value``, however deep."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


_ISO_UTC = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


def test_every_json_output_names_a_product_product(
    cli: Cli, home: Path, httpserver: HTTPServer, sim: NetSim
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    _failed_with_partial_data(cli, sim)
    outputs = {
        "state": cli("state", "--json"),
        "path": cli("path", "track:1", "--json"),
        "validate": cli("validate", "--json"),
        "cleanup": cli("cleanup", "--older-than", "0", "--dry-run", "--json"),
        "health": cli("health", "--since", "1d", "--json"),
        "config": cli("config", "--json"),
    }
    parsed = {name: json.loads(result.stdout) for name, result in outputs.items()}

    for name, data in parsed.items():
        assert "product_key" not in _keys(data), name
        assert "bytes" not in _keys(data), name
    assert parsed["state"][0]["product"] == "track:1"
    assert parsed["path"][0]["product"] == "track:1"
    assert parsed["validate"] == [
        {
            "product": "track:1",
            "valid": True,
            "reason": None,
            "repaired": False,
            "repair_error": None,
        }
    ]
    items = {item["kind"]: item for item in parsed["cleanup"]["items"]}
    assert items["partial"]["product"] == "track:8"
    assert items["partial"]["size"] == 40_000
    assert items["entry"] == {
        "kind": "entry",
        "product": "track:8",
        "path": None,
        "size": 0,
        "state": "FAILED",
        "modified_at": items["entry"]["modified_at"],
    }
    for item in items.values():
        assert _ISO_UTC.match(item["modified_at"]), item
    # Points in time are ISO 8601 in UTC everywhere; a size is "size" in bytes.
    since = parsed["health"]["since"]
    assert _ISO_UTC.match(since), since
    assert parsed["state"][0]["size"] == len(BODY) == parsed["path"][0]["size"]
    assert json.loads(cli("health", "--json").stdout)["since"] is None


# -- 4. cleanup's wording ---------------------------------------------------------------------


def test_cleanup_lines_name_the_product_and_say_what_each_item_is(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    _failed_with_partial_data(cli, sim)
    [partial] = _partial_files(home)
    twelve_days = 12 * 86400
    _sql(home, "UPDATE download_entries SET updated_at = updated_at - ?", (twelve_days,))
    orphan = home / "store" / "stray.bin"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"abc")

    dry = cli("cleanup", "--older-than", "0", "--dry-run")
    real = cli("cleanup", "--older-than", "0")

    for result, verb in ((dry, "would remove"), (real, "removed")):
        assert result.exit_code == 0, result.output
        assert sorted(result.stdout.splitlines()) == sorted(
            [
                f"{verb}: {partial} (partial data of track:8, 40.0 kB, less than a minute old)",
                f"{verb}: track:8 (failed entry, 12 days old)",
                f"{verb}: {orphan} (orphaned file, 3 B, less than a minute old)",
            ]
        ), result.stdout
        assert result.stderr == f"{verb} 2 files and 1 entry, 40.0 kB\n"
        assert "(s)" not in result.output and "entr(y" not in result.output
    assert not partial.exists() and not orphan.exists()

    again = cli("cleanup", "--older-than", "0")
    assert again.output == "removed nothing\n"
    assert cli("cleanup", "--dry-run").output == "would remove nothing\n"


def test_cleanup_counts_in_the_plural(cli: Cli, home: Path, sim: NetSim) -> None:
    _failed_with_partial_data(cli, sim, "track:8")
    _failed_with_partial_data(cli, sim, "track:9")

    result = cli("cleanup", "--older-than", "0")

    assert result.exit_code == 0, result.output
    assert result.stderr == "removed 2 files and 2 entries, 80.0 kB\n"
    assert "partial data of track:9" in result.stdout


# -- 5. piped progress and the summary line ----------------------------------------------------


_PROGRESS = re.compile(
    r"\Atrack:1: (\d+)% [\d.]+ (?:B|kB) of 655\.4 kB(?:, [\d.]+ (?:B|kB|MB)/s)?\Z"
)


def test_a_slow_piped_download_prints_a_plain_progress_line_per_10_percent(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    body = bytes(range(256)) * 2560  # 655.4 kB, sent in 16 KiB pieces over about 2 s
    sim.add("/slow", Resource(body, rate=320_000))
    started = time.monotonic()

    result = cli("offline", sim.url("/slow"), "--id", "track:1")

    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "track:1: downloading"
    assert lines[-1].startswith("track:1: done (655.4 kB in ")
    progress = lines[1:-1]
    percents = []
    for line in progress:
        match = _PROGRESS.match(line)
        assert match, line
        percents.append(int(match.group(1)))
    # A line per new 10 % step (never at 100 %), plus at most one per 10 s.
    assert 3 <= len(percents) <= 9 + elapsed // 10, progress
    assert percents == sorted(percents) and all(0 < p < 100 for p in percents)


def test_quiet_has_no_progress_lines(cli: Cli, home: Path, sim: NetSim) -> None:
    sim.add("/slow", Resource(BODY, rate=400_000))
    result = cli("-q", "offline", sim.url("/slow"), "--id", "track:1")
    assert result.exit_code == 0 and result.output == ""


_SUMMARY = re.compile(
    r"\A(\d+) done, (\d+) failed, (\d+) skipped, ([\d.]+ (?:B|kB|MB)) in (\d+\.\ds|\dm\d\ds)\Z"
)


def test_a_run_of_several_products_ends_with_a_summary_line(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    httpserver.expect_request("/bad").respond_with_data("no", status=404)
    url_a, url_b, bad = (httpserver.url_for(p) for p in ("/a", "/b", "/bad"))
    single = cli("offline", url_a)
    assert single.exit_code == 0 and not any(
        _SUMMARY.match(line) for line in single.stderr.splitlines()
    ), single.stderr

    result = cli("offline", url_a, url_b, bad)

    assert result.exit_code == 1
    match = _SUMMARY.match(result.stderr.splitlines()[-1])
    assert match, result.stderr
    assert match.groups()[:4] == ("1", "1", "1", "60.0 kB")
    assert result.stdout == ""


def test_resume_ends_with_a_summary_line(cli: Cli, home: Path, sim: NetSim) -> None:
    _failed_with_partial_data(cli, sim, "track:8")
    _failed_with_partial_data(cli, sim, "track:9")

    result = cli("resume")

    assert result.exit_code == 0, result.output
    match = _SUMMARY.match(result.stderr.splitlines()[-1])
    assert match, result.stderr
    assert match.groups()[:4] == ("2", "0", "0", "409.6 kB")
    assert cli("resume").stderr == "nothing to resume\n"
