"""The engine API end to end against a loopback server: offline, state, delete, listener."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineState, ProductType
from offline_cli.errors import ChecksumMismatch, HTTPStatusError
from tests.conftest import RecordingListener, sha256

BODY = bytes(range(256)) * 4000  # ~1 MB


def test_offline_then_state_is_valid(httpserver: HTTPServer, make_engine) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(BODY)
    listener = RecordingListener()
    engine = make_engine(listener)
    product = MediaProduct(ProductType.TRACK, "42", url=httpserver.url_for("/a.bin"))

    assert engine.offline(product) is True

    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID
    stored = engine.store.get_offlined("track:42")
    assert stored is not None
    assert Path(stored.media_path).read_bytes() == BODY
    assert stored.sha256 == sha256(BODY)
    assert listener.names() == ["started", "completed"]
    fractions = [d for n, _, d in listener.events if n == "progressed"]
    assert fractions and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


def test_offline_twice_fetches_nothing(httpserver: HTTPServer, make_engine) -> None:
    httpserver.expect_request("/a.bin").respond_with_data(BODY)
    engine = make_engine()
    product = MediaProduct(ProductType.FILE, "x", url=httpserver.url_for("/a.bin"))
    assert engine.offline(product) is True
    requests_before = len(httpserver.log)
    assert engine.offline(product) is False
    assert len(httpserver.log) == requests_before


def test_media_and_license_committed_together(httpserver: HTTPServer, make_engine) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/l").respond_with_data(b"LICENSE-BYTES")
    engine = make_engine()
    product = MediaProduct(
        ProductType.VIDEO, "7", url=httpserver.url_for("/m"), license_url=httpserver.url_for("/l")
    )
    engine.offline(product)
    stored = engine.store.get_offlined("video:7")
    assert stored is not None and stored.license_path is not None
    assert Path(stored.license_path).read_bytes() == b"LICENSE-BYTES"


def test_license_failure_leaves_nothing(httpserver: HTTPServer, make_engine, home: Path) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/l").respond_with_data("no", status=403)
    listener = RecordingListener()
    engine = make_engine(listener)
    product = MediaProduct(
        ProductType.VIDEO, "7", url=httpserver.url_for("/m"), license_url=httpserver.url_for("/l")
    )
    with pytest.raises(HTTPStatusError):
        engine.offline(product)
    assert engine.get_offline_state(product) is OfflineState.NOT_OFFLINED
    assert listener.names() == ["started", "failed"]
    assert [p for p in (home / "partial").iterdir()] == []
    assert [p for p in (home / "store").rglob("*") if p.is_file()] == []


def test_checksum_mismatch_keeps_nothing(httpserver: HTTPServer, make_engine, home: Path) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    engine = make_engine()
    product = MediaProduct(ProductType.FILE, "f", url=httpserver.url_for("/m"), sha256="0" * 64)
    with pytest.raises(ChecksumMismatch):
        engine.offline(product)
    assert engine.get_offline_state(product) is OfflineState.NOT_OFFLINED
    assert list((home / "partial").iterdir()) == []


def test_delete_removes_files_and_entries(httpserver: HTTPServer, make_engine) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    listener = RecordingListener()
    engine = make_engine(listener)
    product = MediaProduct(ProductType.TRACK, "1", url=httpserver.url_for("/m"))
    engine.offline(product)
    media = Path(engine.store.get_offlined("track:1").media_path)  # type: ignore[union-attr]
    assert engine.delete_offline(product) is True
    assert not media.exists()
    assert engine.get_offline_state(product) is OfflineState.NOT_OFFLINED
    assert engine.store.latest_download("track:1") is None
    assert listener.names()[-1] == "deleted"
    assert engine.delete_offline(product) is False
