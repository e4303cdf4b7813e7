"""The media/license state machine: both or nothing, and exactly one offlining_failed."""

from __future__ import annotations

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineState, ProductType
from offline_cli.errors import HTTPStatusError
from offline_cli.productrun import CoordinatedDownload, CoordinationState
from tests.conftest import RecordingListener

BODY = b"m" * 100_000


def test_machine_goes_license_then_media_then_done() -> None:
    machine = CoordinatedDownload(has_license=True)
    assert machine.state is CoordinationState.WAITING_FOR_LICENSE
    machine.advance(CoordinationState.WAITING_FOR_MEDIA)
    machine.advance(CoordinationState.BOTH_COMPLETED)
    with pytest.raises(RuntimeError):
        machine.advance(CoordinationState.WAITING_FOR_MEDIA)
    machine.fail()  # the commit can still fail
    assert machine.state is CoordinationState.FAILED
    machine.fail()  # idempotent
    with pytest.raises(RuntimeError):
        machine.advance(CoordinationState.BOTH_COMPLETED)


def test_machine_without_license_waits_for_media_only() -> None:
    machine = CoordinatedDownload(has_license=False)
    assert machine.state is CoordinationState.WAITING_FOR_MEDIA
    with pytest.raises(RuntimeError):
        machine.advance(CoordinationState.WAITING_FOR_LICENSE)


def test_media_failure_after_license_removes_the_license(
    httpserver: HTTPServer, make_engine, home
) -> None:
    httpserver.expect_request("/l").respond_with_data(b"LICENSE")
    httpserver.expect_request("/m").respond_with_data("gone", status=410)
    listener = RecordingListener()
    engine = make_engine(listener)
    product = MediaProduct(
        ProductType.TRACK, "1", url=httpserver.url_for("/m"), license_url=httpserver.url_for("/l")
    )
    with pytest.raises(HTTPStatusError):
        engine.offline(product)
    assert listener.names() == ["started", "failed"]
    assert engine.get_offline_state(product) is OfflineState.NOT_OFFLINED
    assert list((home / "partial").iterdir()) == []
    assert [p for p in (home / "store").rglob("*") if p.is_file()] == []


def test_license_refused_costs_no_media_bandwidth(httpserver: HTTPServer, make_engine) -> None:
    httpserver.expect_request("/l").respond_with_data("no", status=401)
    httpserver.expect_request("/m").respond_with_data(BODY)
    engine = make_engine()
    product = MediaProduct(
        ProductType.TRACK, "2", url=httpserver.url_for("/m"), license_url=httpserver.url_for("/l")
    )
    with pytest.raises(HTTPStatusError):
        engine.offline(product)
    assert [r.path for r, _ in httpserver.log] == ["/l"]
