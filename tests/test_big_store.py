"""The bulk paths of the read commands (`state`, `state --json`, `health`, `cleanup`) give what
the row-by-row paths gave: same entries, same order, same skipped rows, same text."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineState, ProductType
from offline_cli.cli import _json_data
from offline_cli.locks import ProductLocks
from offline_cli.maintenance import _walk, build_health_report
from offline_cli.paths import Layout
from offline_cli.store import (
    _DOWNLOAD_COLUMNS,
    _INDEXES,
    _OFFLINED_COLUMNS,
    _SELECT_DOWNLOAD,
    _SELECT_OFFLINED,
    SCHEMA_VERSION,
    Store,
)


def _sql(home: Path, statement: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(home / "offline.db")
    try:
        with conn:
            conn.execute(statement, params)
    finally:
        conn.close()


def _offline_many(make_engine, httpserver: HTTPServer, count: int) -> list[MediaProduct]:
    httpserver.expect_request("/f").respond_with_data(b"x" * 100)
    engine = make_engine()
    products = [
        MediaProduct(ProductType.TRACK, str(i), url=httpserver.url_for("/f")) for i in range(count)
    ]
    for product in products:
        engine.offline(product)
    engine.close()
    return products


def test_bulk_reads_take_usual_rows_as_they_are_and_check_unusual_ones(
    make_engine, httpserver: HTTPServer, home: Path
) -> None:
    products = _offline_many(make_engine, httpserver, 24)
    # Damage some rows (read in full, and skipped), give others unusual but readable values.
    _sql(home, "UPDATE offlined_entries SET size = 'big' WHERE product_key = 'track:1'")
    _sql(home, "UPDATE offlined_entries SET completed_at = '5' WHERE product_key = 'track:2'")
    _sql(home, "UPDATE download_entries SET state = 'BOGUS' WHERE product_key = 'track:3'")
    _sql(home, "UPDATE download_entries SET created_at = 'x' WHERE product_key = 'track:4'")
    _sql(
        home,
        "UPDATE download_entries SET resume_info = '{\"m\": {}}' WHERE product_key = 'track:5'",
    )
    engine = make_engine()
    store = engine.store

    # The row-by-row reading every row takes (the models' conversions, every check).
    slow_offlined = store._offlined(
        store._fetch(f"{_SELECT_OFFLINED} ORDER BY completed_at", (), _OFFLINED_COLUMNS)
    )
    slow_downloads = store._downloads(
        store._fetch(f"{_SELECT_DOWNLOAD} ORDER BY created_at, rowid", (), _DOWNLOAD_COLUMNS)
    )
    slow_bad = dict(store.bad_rows)
    store.bad_rows.clear()
    assert store.list_offlined() == slow_offlined
    assert list(store.latest_download_by_key().values()) == list(
        {d.product_key: d for d in slow_downloads}.values()
    )
    assert store.bad_rows == slow_bad
    assert set(slow_bad) == {"track:1", "track:3", "track:4"}
    assert store.count_offlined() == len(slow_offlined) == 23

    # Damaged times sort first; the text '5' reads as the number 5.
    keys = store.known_product_keys()
    assert keys[:2] == ["track:4", "track:2"]
    assert sorted(keys) == sorted(p.key for p in products)
    assert [key for key, _ in store.product_listing()] == keys

    # A planted link as a product's folder is found by the one read of the store folder.
    media = Path(store.get_offlined("track:7").media_path)  # type: ignore[union-attr]
    moved = media.parent.with_name("elsewhere")
    media.parent.rename(moved)
    media.parent.symlink_to(moved)
    Path(store.get_offlined("track:8").media_path).unlink()  # type: ignore[union-attr]
    states = {s.key: s.state for s in engine.product_statuses()}
    expected = {p.key: engine.get_offline_state(p) for p in products}
    assert states == expected
    assert expected["track:7"] is OfflineState.OFFLINED_BUT_NOT_VALID
    assert expected["track:8"] is OfflineState.OFFLINED_BUT_NOT_VALID
    assert expected["track:1"] is OfflineState.NOT_OFFLINED
    assert expected["track:0"] is OfflineState.OFFLINED_AND_VALID


def test_json_listing_is_the_text_json_dumps_writes(capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[object] = []
    for i in range(700):  # several blocks
        row: dict[str, object] = {
            "product": f"track:{i}",
            "state": "OFFLINED_AND_VALID",
            "name": 'naïve "quoted" \\ \x01 ☃ \U0001f600',
            "size": i * 1000,
            "ratio": i / 7,
            "hls": i % 2 == 0,
            "license_path": None,
        }
        if i % 3 == 0:
            row["download"] = {"state": "FAILED", "progress": 0.5, "last_error": None}
        if i % 5 == 0:
            row["nested"] = {"list": [1, 2.5, "x", [], {}], "empty": {}, "deep": {"a": [None]}}
            row["after"] = float("nan") if i % 10 == 0 else -math.inf
        rows.append(row)
    for case in ([], rows[:1], rows):
        _json_data(case)  # type: ignore[arg-type]
        assert capsys.readouterr().out == json.dumps(case, indent=2) + "\n"


def test_a_store_of_this_version_gets_the_indexes_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "offline.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    for name in _INDEXES:
        conn.execute(f'DROP INDEX "{name}"')
    # An index of the unusual rows under a condition this release no longer uses.
    conn.execute("CREATE INDEX unusual_offlined_entries_0123456789ab ON offlined_entries (size)")
    conn.commit()
    conn.close()

    Store(path).close()

    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert set(_INDEXES) <= names
    assert "unusual_offlined_entries_0123456789ab" not in names
    assert version == SCHEMA_VERSION


def test_health_summed_by_sqlite_equals_the_sum_of_each_event(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "offline.db", clock=lambda: 1_700_000_000.0)
    day = 86400.0
    events = []
    for i in range(60):
        at = 1_700_000_000.0 - (i % 4) * day - i
        kind = ["download_started", "download_succeeded", "download_failed", "retry"][i % 4]
        events.append(
            {
                "at": at,
                "event": kind,
                "product_key": ["track:1", "", None, f"track:{i}"][i % 4],
                "duration_s": [None, 1.5, 0.1 * i][i % 3],
                "bytes": [None, 1000 + i][i % 2],
                "error_kind": ["network", "", None, "server"][(i // 4) % 4],
                "attempts": [None, 0, 2][i % 3],
                "detail": "x",
            }
        )
    events += [
        {"at": 1_699_000_000.0, "event": "cleanup", "bytes": 500, "attempts": 3},
        {"at": 1_699_000_001.0, "event": "download_recovered"},
        {"at": 1_699_000_002.0, "event": "network_pause"},
        {"at": 1_699_000_003.0, "event": "download_failed", "error_kind": "permanent"},
    ]
    store.record_events(events)

    def one_by_one(since_s: float | None) -> dict[str, object]:
        with monkeypatch.context() as m:
            m.setattr(store, "event_summary", lambda since: None)
            return build_health_report(store, store.clock, since_s).to_dict()

    for since_s in (None, 2 * day, 0.5):
        assert build_health_report(store, store.clock, since_s).to_dict() == one_by_one(since_s)
    # A damaged event: the events are read one by one (and it is skipped).
    store.record_event("download_succeeded", bytes=5)
    _sql(tmp_path, "UPDATE metric_events SET at = 'soon' WHERE bytes = 5")
    assert store.event_summary(None) is None
    assert build_health_report(store, store.clock, None).to_dict() == one_by_one(None)
    store.close()


def test_a_lock_probe_creates_no_lock_file_and_sees_a_holder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.ensure()
    locks = ProductLocks(layout, lambda: None)
    assert locks.owner_alive("track:1") is False
    assert not layout.lock_path("track:1").exists()
    held = locks.lock("track:1")
    held.acquire()
    try:
        assert locks.owner_alive("track:1") is True  # another file description of this process
    finally:
        held.release()
    assert locks.owner_alive("track:1") is False
    # Read-only: a missing lock file cannot tell (filelock is asked, and cannot create it).
    read_only = ProductLocks(layout, lambda: "read-only")
    os.chmod(layout.locks_dir, 0o500)
    try:
        if os.access(layout.locks_dir, os.W_OK):
            pytest.skip("running as a user who writes anywhere")
        assert read_only.owner_alive("track:2") is None
    finally:
        os.chmod(layout.locks_dir, 0o700)


@pytest.mark.parametrize("home_name", ["home", "store"])
def test_fast_path_checks_agree_with_the_full_ones(tmp_path: Path, home_name: str) -> None:
    layout = Layout(tmp_path / home_name)
    home = str(layout.home)
    hexid = "0123456789abcdef" * 2
    raws = [
        f"{home}/store/f/{hexid}.media",
        f"{home}/store/f/{hexid}.license",
        f"{home}/store/f/{hexid}.hls",
        f"{home}/store/f/{hexid}.other",
        f"{home}/store//{hexid}.media",
        f"{home}/store/./{hexid}.media",
        f"{home}/store/../{hexid}.media",
        f"{home}/store/f/g/{hexid}.media",
        f"{home}/store/f/{hexid}.media/",
        f"{home}/store/f\0/{hexid}.media",
        f"{home}/partial/{hexid}.media.part",
        f"{home}/partial/x/{hexid}.media.part",
        f"/elsewhere/store/f/{hexid}.media",
        f"/elsewhere/partial/{hexid}.media.part",
        f"{home}/store/../store/f/{hexid}.media",
        "relative/store/f/x",
        "",
    ]

    def rehome_in_full(raw: str) -> str:  # Layout.rehome without its fast path
        if not raw or "\0" in raw:
            return raw
        parts = Path(raw).parts
        for anchor, depth in (("store", 3), ("partial", 2)):
            if len(parts) > depth and parts[-depth] == anchor and ".." not in parts[-depth:]:
                return str(layout.home.joinpath(*parts[-depth:]))
        return raw

    for raw in raws:
        assert layout.rehome(raw) == rehome_in_full(raw), raw
        if raw:
            own = layout.own_file(raw, "k", partial=False, folder_ok=lambda folder: True)
            assert layout.stored_file(raw, "k") == (None if own is None else str(own)), raw
            folder = layout.stored_folder(raw)
            assert folder is None or (own is not None and own.parent.name == folder), raw


def test_the_orphan_walk_is_os_walk_with_the_links_it_lists(tmp_path: Path) -> None:
    top = tmp_path / "store"
    (top / "a" / "deep").mkdir(parents=True)
    (top / "a" / "f").write_text("x")
    (top / "b").mkdir()
    (top / "g").write_text("x")
    (top / "linked").symlink_to(top / "b")
    (top / "file-link").symlink_to(top / "g")
    (top / "broken").symlink_to(top / "nowhere")
    ours = [(root, dirs, files) for root, dirs, files, _ in _walk(str(top))]
    theirs = list(os.walk(str(top), followlinks=False))
    assert [(r, sorted(d), sorted(f)) for r, d, f in ours] == [
        (r, sorted(d), sorted(f)) for r, d, f in theirs
    ]
    for root, dirs, _, linked in _walk(str(top)):
        assert linked == {d for d in dirs if os.path.islink(os.path.join(root, d))}
