"""The SQLite store: WAL, schema version and migration, the download state machine."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineState, ProductType
from offline_cli.errors import StorageError
from offline_cli.models import ALLOWED_TRANSITIONS, DownloadState, ErrorKind
from offline_cli.store import SCHEMA_VERSION, DownloadStateManager, IllegalTransition, Store
from tests.conftest import new_download


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store_clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, store_clock: Clock) -> Iterator[Store]:
    s = Store(tmp_path / "offline.db", busy_timeout_s=2.0, clock=store_clock)
    yield s
    s.close()


def _create(store: Store, key: str = "track:1", license_url: str | None = None) -> str:
    return new_download(store, key, license_url=license_url, media_url="http://127.0.0.1:9/m").id


def _state(store: Store, download_id: str) -> DownloadState:
    entry = store.get_download(download_id)
    assert entry is not None
    return entry.state


def _raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- pragmas and schema -----------------------------------------------------------------------


def test_wal_mode_is_on(store: Store) -> None:
    # persisted in the file: a plain sqlite3 connection sees it
    assert _raw(store.path, "PRAGMA journal_mode") == [("wal",)]


def test_schema_version_is_recorded(store: Store) -> None:
    assert SCHEMA_VERSION >= 2
    assert _raw(store.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in _raw(store.path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"download_entries", "offlined_entries", "metric_events", "settings"} <= tables


def test_reopening_keeps_the_version_and_rows(tmp_path: Path, store_clock: Clock) -> None:
    first = Store(tmp_path / "offline.db", clock=store_clock)
    download_id = _create(first)
    first.close()
    second = Store(tmp_path / "offline.db", clock=store_clock)
    try:
        assert second.get_download(download_id) is not None
        assert _raw(second.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    finally:
        second.close()


def test_v1_database_is_migrated_and_keeps_its_rows(tmp_path: Path, store_clock: Clock) -> None:
    path = tmp_path / "offline.db"
    Store.create_v1_schema(path)
    assert _raw(path, "PRAGMA user_version") == [(1,)]
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO download_entries (id, product_key, product_type, product_id, state,"
        " progress, attempt_count, last_error, error_kind, created_at, updated_at, paused_at,"
        " owner_pid, partial_media_path, partial_license_path, media_url, license_url,"
        " expected_sha256) VALUES ('d1', 'track:42', 'track', '42', 'PAUSED', 0.25, 2,"
        " 'connection reset', 'network', 1700000000.0, 1700000100.0, 1700000100.0, NULL,"
        " '/h/partial/d1.media.part', NULL, 'http://127.0.0.1:9/m', NULL, NULL)"
    )
    conn.execute(
        "INSERT INTO offlined_entries VALUES ('video:7', 'video', '7', '/h/store/x/d0.media',"
        " NULL, 123, 'ab' , NULL, NULL, '\"etag\"', NULL, NULL, 'http://127.0.0.1:9/v', NULL,"
        " 99, 1700000000.0)"
    )
    conn.commit()
    conn.close()

    store = Store(path, clock=store_clock)
    try:
        assert _raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        columns = {r[1] for r in _raw(path, "PRAGMA table_info(download_entries)")}
        assert {"bytes_done", "bytes_total", "cancel_requested", "resume_info"} <= columns
        entry = store.get_download("d1")
        assert entry is not None
        assert entry.product_key == "track:42"
        assert entry.state is DownloadState.PAUSED
        assert entry.progress == 0.25
        assert entry.attempt_count == 2
        assert entry.last_error == "connection reset"
        assert entry.error_kind is ErrorKind.NETWORK
        assert entry.paused_at == 1700000100.0
        # read under the home the database lives in now (it was written under /h)
        assert entry.partial_media_path == str(tmp_path / "partial" / "d1.media.part")
        assert entry.bytes_done == 0 and entry.bytes_total is None
        assert entry.cancel_requested is False and entry.resume_info == {}
        offlined = store.get_offlined("video:7")
        assert offlined is not None
        assert offlined.size == 123 and offlined.etag == '"etag"'
        assert offlined.invalid_reason is None
        assert store.known_product_keys() == ["track:42", "video:7"]
        # the migrated database is fully usable: metrics, settings, new entries
        store.record_event("download_started", product_key="track:42")
        assert [e.event for e in store.events_since(None)] == ["download_started"]
        store.set_setting("k", "v")
        assert store.get_setting("k") == "v"
        store.downloads.transition("d1", DownloadState.IN_PROGRESS)
        assert _state(store, "d1") is DownloadState.IN_PROGRESS
        assert store.integrity_check() == "ok"
    finally:
        store.close()
    # and a second open does not migrate again
    again = Store(path, clock=store_clock)
    try:
        assert again.get_download("d1") is not None
    finally:
        again.close()


def test_v1_database_migrates_through_the_engine(tmp_path: Path, make_engine, home: Path) -> None:
    home.mkdir()
    Store.create_v1_schema(home / "offline.db")
    conn = sqlite3.connect(home / "offline.db")
    conn.execute(
        "INSERT INTO download_entries (id, product_key, product_type, product_id, state,"
        " progress, attempt_count, created_at, updated_at) VALUES"
        " ('d1', 'track:42', 'track', '42', 'FAILED', 0.0, 1, 1.0, 1.0)"
    )
    conn.commit()
    conn.close()
    engine = make_engine()
    assert [p.key for p in engine.known_products()] == ["track:42"]
    assert engine.get_offline_state(MediaProduct(ProductType.TRACK, "42")) is (
        OfflineState.NOT_OFFLINED
    )


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "offline.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match="newer than this offline-cli") as info:
        Store(path)
    assert info.value.hint == "upgrade offline-cli"


def test_garbage_file_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "offline.db"
    path.write_bytes(b"garbage " * 1000)
    with pytest.raises(StorageError) as info:
        Store(path)
    assert info.value.exit_code == 4
    assert info.value.hint is not None and "mv" in info.value.hint


# -- the download state machine ---------------------------------------------------------------


def _completed(store: Store) -> str:
    download_id = _create(store)
    store.downloads.transition(download_id, DownloadState.IN_PROGRESS)
    store.downloads.transition(download_id, DownloadState.COMPLETED, owner_pid=None)
    return download_id


def test_completed_to_in_progress_is_refused(store: Store) -> None:
    download_id = _completed(store)
    before = store.get_download(download_id)

    with pytest.raises(IllegalTransition, match="COMPLETED -> IN_PROGRESS"):
        store.downloads.transition(download_id, DownloadState.IN_PROGRESS, progress=0.5)

    after = store.get_download(download_id)
    assert after == before
    assert _raw(store.path, f"SELECT state FROM download_entries WHERE id='{download_id}'") == [
        ("COMPLETED",)
    ]


def test_every_illegal_transition_is_refused_and_changes_nothing(store: Store) -> None:
    manager: DownloadStateManager = store.downloads
    paths = {
        DownloadState.PENDING: [],
        DownloadState.IN_PROGRESS: [DownloadState.IN_PROGRESS],
        DownloadState.PAUSED: [DownloadState.IN_PROGRESS, DownloadState.PAUSED],
        DownloadState.FAILED: [DownloadState.FAILED],
        DownloadState.COMPLETED: [DownloadState.IN_PROGRESS, DownloadState.COMPLETED],
        DownloadState.CANCELLED: [DownloadState.CANCELLED],
    }
    refused = 0
    for start, route in paths.items():
        for target in DownloadState:
            if target is start or target in ALLOWED_TRANSITIONS[start]:
                continue
            download_id = _create(store, key=f"track:{start.value}-{target.value}")
            for step in route:
                manager.transition(download_id, step)
            assert _state(store, download_id) is start
            before = store.get_download(download_id)
            with pytest.raises(IllegalTransition):
                manager.transition(download_id, target, last_error="nope")
            assert store.get_download(download_id) == before
            refused += 1
    assert refused >= 10


def test_transition_of_a_missing_entry_is_refused(store: Store) -> None:
    with pytest.raises(IllegalTransition, match="does not exist"):
        store.downloads.transition("nope", DownloadState.IN_PROGRESS)


def test_new_entry_is_pending_and_owned_by_this_process(store: Store, store_clock: Clock) -> None:
    download_id = _create(store, license_url="http://127.0.0.1:9/l")
    entry = store.get_download(download_id)
    assert entry is not None
    assert entry.state is DownloadState.PENDING
    assert entry.owner_pid == os.getpid()
    assert entry.created_at == entry.updated_at == store_clock.now
    assert entry.paused_at is None
    assert entry.partial_media_path == str(
        store.path.parent / "partial" / f"{download_id}.media.part"
    )
    assert entry.partial_license_path is not None
    assert entry.attempt_count == 0 and entry.progress == 0.0


def test_pause_sets_paused_at_and_resume_clears_it(store: Store, store_clock: Clock) -> None:
    download_id = _create(store)
    store_clock.now += 10
    store.downloads.transition(download_id, DownloadState.IN_PROGRESS, owner_pid=4242)
    entry = store.get_download(download_id)
    assert entry is not None and entry.owner_pid == 4242 and entry.paused_at is None
    assert entry.updated_at == store_clock.now

    store_clock.now += 10
    paused_time = store_clock.now
    store.downloads.transition(download_id, DownloadState.PAUSED, owner_pid=None)
    entry = store.get_download(download_id)
    assert entry is not None
    assert entry.state is DownloadState.PAUSED
    assert entry.paused_at == paused_time
    assert entry.owner_pid is None

    store_clock.now += 10  # pausing again keeps the first pause time
    store.downloads.transition(download_id, DownloadState.PAUSED)
    entry = store.get_download(download_id)
    assert entry is not None and entry.paused_at == paused_time

    store_clock.now += 10
    store.downloads.transition(download_id, DownloadState.IN_PROGRESS)
    entry = store.get_download(download_id)
    assert entry is not None
    assert entry.state is DownloadState.IN_PROGRESS
    assert entry.paused_at is None
    assert entry.owner_pid == os.getpid()  # default owner: the process that moves it
    assert entry.updated_at == store_clock.now


def test_failed_then_retried_then_completed(store: Store) -> None:
    download_id = _create(store)
    manager = store.downloads
    manager.transition(download_id, DownloadState.IN_PROGRESS)
    manager.mark_failed(download_id, "HTTP 503", ErrorKind.SERVER)
    entry = store.get_download(download_id)
    assert entry is not None
    assert entry.state is DownloadState.FAILED
    assert entry.owner_pid is None
    assert entry.last_error == "HTTP 503" and entry.error_kind is ErrorKind.SERVER
    manager.transition(download_id, DownloadState.IN_PROGRESS, last_error=None, error_kind=None)
    manager.transition(download_id, DownloadState.COMPLETED, owner_pid=None, progress=1.0)
    entry = store.get_download(download_id)
    assert entry is not None and entry.state is DownloadState.COMPLETED
    assert entry.state.is_terminal


def test_progress_and_cancel_request(store: Store) -> None:
    download_id = _create(store)
    manager = store.downloads
    manager.transition(download_id, DownloadState.IN_PROGRESS)
    assert manager.update_progress(download_id, bytes_done=25, bytes_total=100) is False
    entry = store.get_download(download_id)
    assert entry is not None and entry.progress == 0.25 and entry.bytes_done == 25
    assert manager.request_cancel("track:1") == 1
    assert manager.is_cancel_requested(download_id) is True
    assert manager.update_progress(download_id, bytes_done=50, bytes_total=100) is True
    assert [e.id for e in manager.active_downloads()] == [download_id]


def test_two_stores_in_one_process_keep_their_own_rows(tmp_path: Path, store_clock: Clock) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Store(tmp_path / "a" / "offline.db", clock=store_clock)
    b = Store(tmp_path / "b" / "offline.db", clock=store_clock)
    try:
        download_id = _create(a, key="track:a")
        _create(b, key="track:b")
        a.downloads.transition(download_id, DownloadState.IN_PROGRESS)
        a.set_setting("who", "a")
        assert a.known_product_keys() == ["track:a"]
        assert b.known_product_keys() == ["track:b"]
        assert a.get_setting("who") == "a" and b.get_setting("who") is None
        assert _raw(a.path, "SELECT product_key, state FROM download_entries") == [
            ("track:a", "IN_PROGRESS")
        ]
        assert _raw(b.path, "SELECT product_key, state FROM download_entries") == [
            ("track:b", "PENDING")
        ]
    finally:
        a.close()
        b.close()


# -- after a real download ---------------------------------------------------------------------


def test_integrity_check_after_a_download(make_engine, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data(b"x" * 300_000)
    httpserver.expect_request("/l").respond_with_data(b"license")
    engine = make_engine()
    product = MediaProduct(
        ProductType.VIDEO, "7", url=httpserver.url_for("/m"), license_url=httpserver.url_for("/l")
    )
    assert engine.offline(product) is True

    assert engine.store.integrity_check() == "ok"
    engine.close()
    db = home / "offline.db"
    assert _raw(db, "PRAGMA integrity_check") == [("ok",)]
    assert _raw(db, "PRAGMA journal_mode") == [("wal",)]
    rows = _raw(db, "SELECT state, progress, owner_pid FROM download_entries")
    assert rows == [("COMPLETED", 1.0, None)]
    assert _raw(db, "SELECT product_key, size FROM offlined_entries") == [("video:7", 300_000)]


def test_two_engines_on_two_homes_do_not_mix(tmp_path: Path, httpserver: HTTPServer) -> None:
    from offline_cli import OfflineEngine

    httpserver.expect_request("/m").respond_with_data(b"m" * 1000)
    first = OfflineEngine(tmp_path / "one")
    second = OfflineEngine(tmp_path / "two")
    try:
        assert second.known_products() == []
        product = MediaProduct(ProductType.TRACK, "1", url=httpserver.url_for("/m"))
        assert first.offline(product) is True
        assert first.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID
        assert second.get_offline_state(product) is OfflineState.NOT_OFFLINED
        assert second.known_products() == []
        assert _raw(tmp_path / "two" / "offline.db", "SELECT COUNT(*) FROM offlined_entries") == [
            (0,)
        ]
    finally:
        first.close()
        second.close()
