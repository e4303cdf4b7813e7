"""`state` reads in bulk for many products and agrees with the per-product answer."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineState, ProductType


def test_bulk_and_single_lookups_agree(cli, httpserver: HTTPServer, make_engine) -> None:
    httpserver.expect_request("/f").respond_with_data(b"x" * 1000)
    engine = make_engine()
    products = [
        MediaProduct(ProductType.TRACK, str(i), url=httpserver.url_for("/f")) for i in range(25)
    ]
    for product in products:
        engine.offline(product)
    broken = engine.store.get_offlined("track:3")
    assert broken is not None
    Path(broken.media_path).unlink()
    unknown = MediaProduct(ProductType.TRACK, "999")

    bulk = engine.product_statuses(with_downloads=True)  # every known product
    named = engine.product_statuses([*products, unknown], with_downloads=True)  # > 20 named
    few = engine.product_statuses([*products[:3], unknown])  # per-key lookups

    expected = {p.key: engine.get_offline_state(p) for p in [*products, unknown]}
    assert {s.key: s.state for s in bulk} == {p.key: expected[p.key] for p in products}
    assert {s.key: s.state for s in named} == expected
    assert [s.state for s in few] == [expected[p.key] for p in [*products[:3], unknown]]
    assert expected["track:3"] is OfflineState.OFFLINED_BUT_NOT_VALID
    assert all(s.download is not None for s in named if s.key != "track:999")

    lines = cli("state", *[p.key for p in products], "track:999").stdout.splitlines()
    assert lines == [expected[p.key].value for p in products] + ["NOT_OFFLINED"]
    rows = json.loads(cli("state", "--json").stdout)
    assert len(rows) == 25 and rows[0]["download"]["state"] == "COMPLETED"
