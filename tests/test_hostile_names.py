"""What offline-cli prints about names it did not choose: planted product names cannot forge
lines of `state` or `validate`; statuses read in standard words; `~` and counts as users
write them (found by the review of issue 11)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineEngine, ProductType
from tests.procutil import damage

FORGED = "track:1\nfake:2\tOFFLINED_AND_VALID"


def _plant(home: Path, httpserver: HTTPServer, make_engine: Callable[..., OfflineEngine]) -> None:
    httpserver.expect_request("/m").respond_with_data(b"m" * 100)
    with make_engine() as engine:
        engine.offline(MediaProduct(ProductType.TRACK, "1", url=httpserver.url_for("/m")))
    for table in ("offlined_entries", "download_entries"):
        damage(home, f"UPDATE {table} SET product_key = ?", (FORGED,))


def test_state_escapes_a_planted_newline_and_tab_in_a_name(
    cli, home: Path, httpserver: HTTPServer, make_engine: Callable[..., OfflineEngine]
) -> None:
    _plant(home, httpserver, make_engine)

    result = cli("state")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert not any(line.startswith("fake:2") for line in lines), lines
    assert all(line.count("\t") == 1 for line in lines), lines
    assert "track:1\\x0afake:2\\x09OFFLINED_AND_VALID" in result.stdout


def test_validate_escapes_a_planted_newline_in_a_name(
    cli, home: Path, httpserver: HTTPServer, make_engine: Callable[..., OfflineEngine]
) -> None:
    _plant(home, httpserver, make_engine)

    result = cli("validate")

    assert not any(line.startswith("fake:2") for line in result.stdout.splitlines())


def test_a_source_404_shows_the_standard_phrase(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1/videos/7").respond_with_data("no", status=404)
    source = httpserver.url_for("/v1/{type}s/{id}")

    result = cli("offline", "video:7", "--source", source)

    assert result.exit_code == 1, result.output
    assert "product not found: HTTP 404 Not Found from" in result.stderr


def test_a_log_file_in_the_users_home_is_written_from_a_config_file(
    cli, home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('log_file = "~/offline-cli.jsonl"\n')
    user_home = tmp_path / "user"
    user_home.mkdir()

    result = cli("resume", env={"OFFLINE_CLI_CONFIG": str(config), "HOME": str(user_home)})

    assert result.exit_code == 0, result.output
    assert (user_home / "offline-cli.jsonl").is_file()


def test_delete_all_counts_products_in_words(cli, home: Path) -> None:
    result = cli("delete-all", "--yes")

    assert result.exit_code == 0, result.output
    assert "deleted 0 products" in result.stderr
