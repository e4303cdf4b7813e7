"""Product names planted in the store (a hand-edited or hostile database) cannot forge lines
of `state` or `validate` output."""

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
