"""Every command through the command line, against loopback servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import __version__
from tests.conftest import sha256
from tests.netsim import Fault, NetSim, Resource

BODY = bytes(range(256)) * 800  # 200 kB
OTHER = b"other media " * 5000
LICENSE = b"\x00LICENSE\xffbytes\r\n exactly as sent"


@pytest.fixture
def netsim() -> Iterator[NetSim]:
    sim = NetSim().start()
    yield sim
    sim.stop()


def _media_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store").rglob("*") if p.is_file())


def _partial_files(home: Path) -> list[Path]:
    return sorted((home / "partial").iterdir())


def _stored_media(home: Path) -> Path:
    files = [p for p in _media_files(home) if p.suffix == ".media"]
    assert len(files) == 1, files
    return files[0]


# -- offline ----------------------------------------------------------------------------------


def test_offline_one_url_then_state_by_url(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(BODY)
    url = httpserver.url_for("/a.bin")

    result = cli("offline", url)

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"{url}: done" in result.stderr
    assert _stored_media(home).read_bytes() == BODY
    state = cli("state", url)
    assert state.exit_code == 0
    assert state.stdout == "OFFLINED_AND_VALID\n"


def test_offline_several_products(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    a, b = httpserver.url_for("/a"), httpserver.url_for("/b")

    result = cli("offline", a, b, a)

    assert result.exit_code == 0, result.output
    assert len(httpserver.log) == 2  # a product named twice is fetched once
    assert sorted(p.read_bytes() for p in _media_files(home)) == sorted([BODY, OTHER])
    assert cli("state", a, b).stdout == "OFFLINED_AND_VALID\nOFFLINED_AND_VALID\n"


def test_offline_reads_products_from_a_file(
    cli, home: Path, tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    a, b = httpserver.url_for("/a"), httpserver.url_for("/b")
    listing = tmp_path / "products.txt"
    listing.write_text(f"# my products\n{a}\n\n  {b}  \n", encoding="utf-8")

    result = cli("offline", "-i", str(listing))

    assert result.exit_code == 0, result.output
    assert len(_media_files(home)) == 2
    assert cli("state", a, b).stdout == "OFFLINED_AND_VALID\nOFFLINED_AND_VALID\n"


def test_offline_reads_products_from_stdin(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    a, b = httpserver.url_for("/a"), httpserver.url_for("/b")

    result = cli("offline", "-i", "-", input=f"{a}\n{b}\n")

    assert result.exit_code == 0, result.output
    assert len(_media_files(home)) == 2
    assert len(httpserver.log) == 2


def test_offline_with_id_and_license(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/l").respond_with_data(LICENSE)

    result = cli(
        "offline",
        httpserver.url_for("/m"),
        "--id",
        "video:7",
        "--license-url",
        httpserver.url_for("/l"),
    )

    assert result.exit_code == 0, result.output
    assert "video:7: done" in result.stderr
    licenses = [p for p in _media_files(home) if p.suffix == ".license"]
    assert len(licenses) == 1
    assert licenses[0].read_bytes() == LICENSE  # stored exactly as the server sent it
    assert _stored_media(home).read_bytes() == BODY
    assert cli("state", "video:7").stdout == "OFFLINED_AND_VALID\n"
    # the URL is not the product's name any more
    assert cli("state", httpserver.url_for("/m")).stdout == "NOT_OFFLINED\n"


def test_offline_with_matching_sha256(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)

    result = cli("offline", httpserver.url_for("/m"), "--id", "track:1", "--sha256", sha256(BODY))

    assert result.exit_code == 0, result.output
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"


def test_offline_with_wrong_sha256_fails_and_keeps_nothing(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    wrong = sha256(b"something else")

    result = cli("offline", httpserver.url_for("/m"), "--id", "track:1", "--sha256", wrong)

    assert result.exit_code == 1
    assert "track:1" in result.stderr and "checksum mismatch" in result.stderr
    assert "Traceback" not in result.output
    assert len(httpserver.log) == 1  # a checksum mismatch is permanent: no retry
    assert _media_files(home) == [] and _partial_files(home) == []
    assert cli("state", "track:1").stdout == "NOT_OFFLINED\n"


def test_offline_already_offline_fetches_nothing(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    url = httpserver.url_for("/m")
    assert cli("offline", url, "--id", "track:9").exit_code == 0
    requests = len(httpserver.log)

    again = cli("offline", url, "--id", "track:9")

    assert again.exit_code == 0
    assert "already offline" in again.stderr
    assert len(httpserver.log) == requests


# -- state ------------------------------------------------------------------------------------


def test_state_one_line_per_product_in_order(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/m"), "--id", "track:2").exit_code == 0

    result = cli("state", "track:1", "track:2", "video:3", "track:2")

    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "NOT_OFFLINED",
        "OFFLINED_AND_VALID",
        "NOT_OFFLINED",
        "OFFLINED_AND_VALID",
    ]


def test_state_without_products_lists_every_known_product(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data("gone", status=503)
    a = httpserver.url_for("/a")
    assert cli("offline", a).exit_code == 0
    assert cli("offline", httpserver.url_for("/b"), "--id", "file:b", "--retries", "0").exit_code
    assert cli("state").stdout == f"{a}\tOFFLINED_AND_VALID\nfile:b\tNOT_OFFLINED\n"


def test_state_on_an_empty_store_prints_nothing(cli, home: Path) -> None:
    result = cli("state")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert cli("state", "--json").stdout.strip() == "[]"


def test_state_json_includes_download_state_and_progress(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data("busy", status=503)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    failed = cli("offline", httpserver.url_for("/b"), "--id", "track:2", "--retries", "0")
    assert failed.exit_code == 1

    result = cli("state", "track:1", "track:2", "track:3", "--json")

    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["product"] for r in rows] == ["track:1", "track:2", "track:3"]
    assert [r["state"] for r in rows] == ["OFFLINED_AND_VALID", "NOT_OFFLINED", "NOT_OFFLINED"]
    assert rows[0]["download"]["state"] == "COMPLETED"
    assert rows[0]["download"]["progress"] == 1.0
    assert rows[0]["download"]["bytes_done"] == len(BODY)
    assert rows[1]["download"]["state"] == "FAILED"
    assert "503" in rows[1]["download"]["last_error"]
    assert "download" not in rows[2]


# -- delete -----------------------------------------------------------------------------------


def test_delete_removes_files_and_entry(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    assert cli("offline", httpserver.url_for("/b"), "--id", "track:2").exit_code == 0

    result = cli("delete", "track:1")

    assert result.exit_code == 0, result.output
    assert "track:1: deleted" in result.stderr
    assert [p.read_bytes() for p in _media_files(home)] == [OTHER]
    assert cli("state").stdout == "track:2\tOFFLINED_AND_VALID\n"


def test_delete_a_product_named_by_its_url(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    url = httpserver.url_for("/a")
    assert cli("offline", url).exit_code == 0
    assert cli("state").stdout == f"{url}\tOFFLINED_AND_VALID\n"

    result = cli("delete", url)

    assert result.exit_code == 0, result.output
    assert _media_files(home) == []
    assert cli("state").stdout == ""


def test_delete_unknown_product_exits_1(cli, home: Path) -> None:
    result = cli("delete", "track:404")
    assert result.exit_code == 1
    assert "track:404: not in the store" in result.stderr


def test_delete_all_refuses_without_yes_when_not_a_terminal(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0

    result = cli("delete-all", input="y\n")

    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(_media_files(home)) == 1
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"


def test_delete_all_with_yes_removes_everything(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    assert cli("offline", httpserver.url_for("/b"), "--id", "video:2").exit_code == 0

    result = cli("delete-all", "--yes")

    assert result.exit_code == 0, result.output
    assert "deleted 2 products" in result.stderr
    assert _media_files(home) == [] and _partial_files(home) == []
    assert cli("state").stdout == ""
    assert cli("state", "track:1", "video:2").stdout == "NOT_OFFLINED\nNOT_OFFLINED\n"


# -- resume -----------------------------------------------------------------------------------


def test_resume_reruns_a_retryable_failed_download(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request("/m").respond_with_data("try later", status=503)
    httpserver.expect_request("/m").respond_with_data(BODY)

    failed = cli("offline", httpserver.url_for("/m"), "--id", "track:5", "--retries", "0")
    assert failed.exit_code == 1
    assert "track:5" in failed.stderr and "503" in failed.stderr
    assert cli("state", "track:5").stdout == "NOT_OFFLINED\n"

    result = cli("resume")

    assert result.exit_code == 0, result.output
    assert "track:5: done" in result.stderr
    assert cli("state", "track:5").stdout == "OFFLINED_AND_VALID\n"
    assert _stored_media(home).read_bytes() == BODY
    assert len(httpserver.log) == 2
    again = cli("resume")
    assert again.exit_code == 0
    assert "nothing to resume" in again.stderr
    assert len(httpserver.log) == 2


def test_resume_named_product_continues_from_the_bytes_on_disk(
    cli, home: Path, netsim: NetSim
) -> None:
    netsim.add("/m", Resource(BODY, faults=[Fault("cut", at=50_000)]))

    failed = cli("offline", netsim.url("/m"), "--id", "track:6", "--retries", "0")
    assert failed.exit_code == 1
    assert sum(p.stat().st_size for p in _partial_files(home)) == 50_000

    result = cli("resume", "track:6")

    assert result.exit_code == 0, result.output
    assert _stored_media(home).read_bytes() == BODY
    assert [r.range for r in netsim.requests("/m")] == [None, "bytes=50000-"]


# -- cleanup ----------------------------------------------------------------------------------


def _failed_with_partial_data(cli, home: Path, netsim: NetSim) -> Path:
    netsim.add("/m", Resource(BODY, faults=[Fault("cut", at=40_000)]))
    result = cli("offline", netsim.url("/m"), "--id", "track:8", "--retries", "0")
    assert result.exit_code == 1
    partials = _partial_files(home)
    assert len(partials) == 1 and partials[0].stat().st_size == 40_000
    return partials[0]


def test_cleanup_dry_run_lists_and_removes_nothing(cli, home: Path, netsim: NetSim) -> None:
    partial = _failed_with_partial_data(cli, home, netsim)

    result = cli("cleanup", "--older-than", "0", "--dry-run")

    assert result.exit_code == 0, result.output
    assert f"would remove: {partial} (partial data of track:8, 40.0 kB" in result.stdout
    assert partial.exists()
    rows = json.loads(cli("state", "track:8", "--json").stdout)
    assert rows[0]["download"]["state"] == "FAILED"


def test_cleanup_older_than_zero_removes_partial_data(cli, home: Path, netsim: NetSim) -> None:
    partial = _failed_with_partial_data(cli, home, netsim)

    result = cli("cleanup", "--older-than", "0")

    assert result.exit_code == 0, result.output
    assert f"removed: {partial} (partial data of track:8, 40.0 kB" in result.stdout
    assert not partial.exists()
    assert _partial_files(home) == []
    assert "download" not in json.loads(cli("state", "track:8", "--json").stdout)[0]
    assert "nothing to resume" in cli("resume").stderr


def test_cleanup_default_age_keeps_recent_partial_data(cli, home: Path, netsim: NetSim) -> None:
    partial = _failed_with_partial_data(cli, home, netsim)
    result = cli("cleanup", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["items"] == [] and report["older_than_s"] == 7 * 86400
    assert partial.exists()


def test_cleanup_json(cli, home: Path, netsim: NetSim) -> None:
    partial = _failed_with_partial_data(cli, home, netsim)

    result = cli("cleanup", "--older-than", "0", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] is False
    assert report["bytes_reclaimed"] == 40_000
    assert report["entries_removed"] == 1
    assert {"kind": "partial", "path": str(partial), "product": "track:8"}.items() <= (
        report["items"][0].items()
    )
    assert not partial.exists()


# -- validate ---------------------------------------------------------------------------------


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))


def test_validate_valid_store_exits_0(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/m"), "--id", "track:1").exit_code == 0

    result = cli("validate")

    assert result.exit_code == 0, result.output
    assert result.stdout == "track:1\tVALID\n"


def test_validate_tampered_media_then_repair(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/m"), "--id", "track:1").exit_code == 0
    media = _stored_media(home)
    before = media.stat()
    _tamper(media)
    # same size and mtime: the cheap check of `state` cannot see it, only `validate` can
    os.utime(media, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"

    invalid = cli("validate", "track:1")

    assert invalid.exit_code == 1
    assert invalid.stdout.startswith("track:1\tINVALID\t")
    assert "SHA-256" in invalid.stdout
    assert cli("state", "track:1").stdout == "OFFLINED_BUT_NOT_VALID\n"
    # offline does not trust an invalid copy: it fetches again
    requests = len(httpserver.log)

    repaired = cli("validate", "--repair")

    assert repaired.exit_code == 0, repaired.output
    assert repaired.stdout == "track:1\tVALID\t(repaired)\n"
    assert len(httpserver.log) == requests + 1
    assert _stored_media(home).read_bytes() == BODY
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"
    assert cli("validate").exit_code == 0


def test_offline_fetches_again_when_the_stored_copy_is_not_valid(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/m"), "--id", "track:1").exit_code == 0
    _tamper(_stored_media(home))  # new mtime: the cheap check of `state` notices
    assert cli("state", "track:1").stdout == "OFFLINED_BUT_NOT_VALID\n"

    result = cli("offline", httpserver.url_for("/m"), "--id", "track:1")

    assert result.exit_code == 0, result.output
    assert "already offline" not in result.stderr
    assert len(httpserver.log) == 2
    assert _stored_media(home).read_bytes() == BODY
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"


def test_validate_repair_that_fails_exits_1(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/m").respond_with_data("gone", status=404)
    assert cli("offline", httpserver.url_for("/m"), "--id", "track:1").exit_code == 0
    media = _stored_media(home)
    media.write_bytes(b"short")

    result = cli("validate", "--repair", "track:1")

    assert result.exit_code == 1
    assert result.stdout.startswith("track:1\tINVALID\t")
    assert "repair failed" in result.stdout and "404" in result.stdout
    assert "Traceback" not in result.output
    assert cli("state", "track:1").stdout == "OFFLINED_BUT_NOT_VALID\n"
    assert _partial_files(home) == []


def test_validate_json(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    assert cli("offline", httpserver.url_for("/b"), "--id", "track:2").exit_code == 0
    track2 = next(p for p in _media_files(home) if p.read_bytes() == OTHER)
    track2.unlink()

    result = cli("validate", "--json")

    assert result.exit_code == 1
    rows = {r["product"]: r for r in json.loads(result.stdout)}
    assert rows["track:1"]["valid"] is True and rows["track:1"]["reason"] is None
    assert rows["track:2"]["valid"] is False and "missing" in rows["track:2"]["reason"]
    assert cli("state", "track:2").stdout == "OFFLINED_BUT_NOT_VALID\n"


def test_validate_unknown_product_is_invalid(cli, home: Path) -> None:
    result = cli("validate", "track:77")
    assert result.exit_code == 1
    assert result.stdout == "track:77\tINVALID\tnot offlined\n"


# -- health, config, version, help ------------------------------------------------------------


def test_health_json_counts_successes_and_failures(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER)
    httpserver.expect_request("/gone").respond_with_data("no", status=404)
    assert cli("offline", httpserver.url_for("/a"), "--id", "track:1").exit_code == 0
    assert cli("offline", httpserver.url_for("/b"), "--id", "track:2").exit_code == 0
    assert cli("offline", httpserver.url_for("/gone"), "--id", "track:3").exit_code == 1

    result = cli("health", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["downloads_started"] == 3
    assert report["downloads_succeeded"] == 2
    assert report["downloads_failed"] == 1
    assert report["failures_by_kind"] == {"permanent": 1}
    assert report["success_rate"] == pytest.approx(2 / 3)
    assert report["bytes_downloaded"] == len(BODY) + len(OTHER)
    assert report["offlined_products"] == 2
    assert report["active_downloads"] == 0


def test_health_table(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    assert cli("offline", httpserver.url_for("/a")).exit_code == 0
    result = cli("health", "--since", "1d")
    assert result.exit_code == 0, result.output
    assert "downloads succeeded" in result.stdout
    assert "100.0%" in result.stdout


def test_config_shows_home_and_settings(cli, home: Path) -> None:
    text = cli("config")
    assert text.exit_code == 0
    assert f"home\t{home}\n" in text.stdout
    assert "retries\t5\t(default)" in text.stdout

    as_json = cli("config", "--json", env={"OFFLINE_CLI_RETRIES": "2"})
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert data["home"] == str(home)
    assert data["settings"]["retries"] == {"value": 2, "origin": "$OFFLINE_CLI_RETRIES"}
    assert data["settings"]["stall_timeout"]["value"] <= 30


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout == f"offline-cli {__version__}\n"


def test_no_arguments_shows_the_help(cli, home: Path) -> None:
    result = cli()
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: ")
    assert any(line.split()[:1] == ["offline"] for line in lines)  # one command a line
    assert not home.exists()


def test_python_dash_m_help(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "offline_cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OFFLINE_CLI_HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr
    for command in ("offline", "state", "delete-all", "resume", "cleanup", "validate", "health"):
        assert command in done.stdout
    assert "\x1b[" not in done.stdout + done.stderr
    assert not home.exists()  # --help touches nothing


# -- output -----------------------------------------------------------------------------------


def test_piped_output_has_no_ansi_escapes(
    cli, home: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even with color allowed by the environment, output that is not a terminal is plain.
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "xterm-256color")
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/bad").respond_with_data("no", status=404)
    results = [
        cli("offline", httpserver.url_for("/a"), "--id", "track:1"),
        cli("offline", httpserver.url_for("/bad"), "--id", "track:2"),
        cli("state"),
        cli("state", "--json"),
        cli("validate"),
        cli("health"),
        cli("cleanup", "--dry-run"),
        cli("offline", "song:1"),
        cli("--help"),
    ]
    assert results[0].exit_code == 0 and "track:1: done" in results[0].stderr
    for result in results:
        assert "\x1b[" not in result.output


def test_quiet_silences_progress_lines(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/bad").respond_with_data("no", status=404)

    result = cli("offline", "-q", httpserver.url_for("/a"), "--id", "track:1")

    assert result.exit_code == 0
    assert result.output == ""
    assert cli("-q", "offline", httpserver.url_for("/a"), "--id", "track:1").output == ""
    # errors still get through
    failed = cli("offline", "-q", httpserver.url_for("/bad"), "--id", "track:2")
    assert failed.exit_code == 1
    assert failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "404" in failed.stderr


def test_verbose_adds_log_events(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    result = cli("offline", "-v", httpserver.url_for("/a"), "--id", "track:1")
    assert result.exit_code == 0
    assert "offline-cli: state_changed product=track:1 to=COMPLETED" in result.stderr
    assert "\x1b[" not in result.output


def test_progress_lines_when_piped(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    result = cli("offline", httpserver.url_for("/a"), "--id", "track:1")
    lines = result.stderr.splitlines()
    assert lines[0] == "track:1: downloading"
    assert lines[-1].startswith("track:1: done (204.8 kB in ")
    assert len(lines) <= 4


def test_resume_takes_the_transfer_options(cli, home) -> None:
    bad = cli("resume", "--stall-timeout", "soon")
    assert bad.exit_code == 2
    assert "--stall-timeout" in bad.stderr and "malformed duration" in bad.stderr
    ok = cli("resume", "--retries", "2", "--stall-timeout", "5s", "--network-timeout", "1m")
    assert ok.exit_code == 0, ok.output
    assert "nothing to resume" in ok.stderr
