"""Cleanup, validation, health metrics, automatic maintenance, feature flags, config, logs."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from filelock import FileLock
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineState, ProductType
from offline_cli.errors import HTTPStatusError, NetworkError, ServerError
from offline_cli.models import DownloadState
from tests.conftest import RecordingListener
from tests.netsim import Fault, NetSim, Resource

BODY = os.urandom(200_000)
DAY = 86400.0


def _failed_with_partial(make_engine, sim: NetSim, path: str = "/f", **settings):
    """A download that failed (retries used up) with partial bytes kept for resume."""
    sim.add(path, Resource(BODY, faults=[Fault("cut", at=50_000)]))
    engine = make_engine(retries=0, **settings)
    product = MediaProduct(ProductType.FILE, path.strip("/"), url=sim.url(path))
    with pytest.raises(NetworkError):
        engine.offline(product)
    entry = engine.store.latest_download(product.key)
    assert entry is not None and entry.state is DownloadState.FAILED
    assert entry.partial_media_path and Path(entry.partial_media_path).stat().st_size > 0
    return engine, product, entry


# -- cleanup ----------------------------------------------------------------------------------


def test_cleanup_keeps_young_partial_data_and_takes_old(make_engine, sim, clock) -> None:
    engine, _, entry = _failed_with_partial(make_engine, sim)
    assert entry.partial_media_path is not None
    partial = Path(entry.partial_media_path)

    young = engine.perform_maintenance_cleanup()  # default retention 7 d
    assert young.items == []
    assert partial.exists()

    clock.now += 8 * DAY
    report = engine.perform_maintenance_cleanup()
    assert not partial.exists()
    assert report.bytes_reclaimed == 50_000
    assert engine.store.latest_download(entry.product_key) is None


def test_cleanup_dry_run_lists_and_removes_nothing(make_engine, sim) -> None:
    engine, _, entry = _failed_with_partial(make_engine, sim)
    report = engine.perform_maintenance_cleanup(0, dry_run=True)
    kinds = sorted(i.kind for i in report.items)
    assert kinds == ["entry", "partial"]
    assert report.bytes_reclaimed == 50_000
    assert entry.partial_media_path and Path(entry.partial_media_path).exists()
    assert engine.store.latest_download(entry.product_key) is not None


def test_cleanup_removes_orphans_but_never_a_valid_product(make_engine, sim, home) -> None:
    sim.add("/ok", Resource(BODY))
    engine = make_engine()
    product = MediaProduct(ProductType.TRACK, "1", url=sim.url("/ok"))
    engine.offline(product)
    orphan = home / "store" / "stray-folder" / "left.media"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 1234)
    stray_partial = home / "partial" / "deadbeef.media.part"
    stray_partial.write_bytes(b"y" * 10)

    report = engine.perform_maintenance_cleanup(0)

    assert {i.path for i in report.items if i.kind == "orphan"} == {str(orphan), str(stray_partial)}
    assert not orphan.exists() and not stray_partial.exists()
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID
    # idempotent: a second pass finds nothing
    assert engine.perform_maintenance_cleanup(0).items == []


def test_cleanup_never_touches_a_download_whose_owner_is_alive(make_engine, sim) -> None:
    engine, product, entry = _failed_with_partial(make_engine, sim)
    assert entry.partial_media_path is not None
    with FileLock(engine.layout.lock_path(product.key), is_singleton=False):
        report = engine.perform_maintenance_cleanup(0)
    assert report.items == []
    assert Path(entry.partial_media_path).exists()


def test_cleanup_cli_json_and_bad_duration(cli, home, make_engine, sim) -> None:
    _failed_with_partial(make_engine, sim)
    bad = cli("cleanup", "--older-than", "7x")
    assert bad.exit_code == 2
    assert "malformed duration" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    result = cli("cleanup", "--older-than", "0", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["bytes_reclaimed"] == 50_000


# -- validation -------------------------------------------------------------------------------


def test_validate_marks_corruption_and_repair_restores(make_engine, sim) -> None:
    sim.add("/v", Resource(BODY))
    engine = make_engine()
    product = MediaProduct(ProductType.VIDEO, "3", url=sim.url("/v"))
    engine.offline(product)
    stored = engine.store.get_offlined(product.key)
    assert stored is not None
    media = Path(stored.media_path)
    # Same size and mtime: only a full hash finds it.
    info = media.stat()
    with media.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    os.utime(media, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID

    [result] = engine.validate_downloads()
    assert not result.valid and "SHA-256" in (result.reason or "")
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_BUT_NOT_VALID

    [repaired] = engine.validate_downloads(repair=True)
    assert repaired.valid and repaired.repaired
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID
    fresh = engine.store.get_offlined(product.key)
    assert fresh is not None and Path(fresh.media_path).read_bytes() == BODY
    assert not media.exists()  # the old copy was replaced, not left behind


def test_validate_repair_with_source_gone_keeps_old_state(cli, make_engine, sim) -> None:
    sim.add("/gone", Resource(BODY))
    engine = make_engine()
    product = MediaProduct(ProductType.TRACK, "9", url=sim.url("/gone"))
    engine.offline(product)
    stored = engine.store.get_offlined(product.key)
    assert stored is not None
    Path(stored.media_path).write_bytes(b"broken")
    del sim.resources["/gone"]

    result = cli("validate", "--repair", "--json")

    assert result.exit_code == 1
    [row] = json.loads(result.stdout)
    assert row["valid"] is False and "404" in row["repair_error"]
    assert engine.store.get_offlined(product.key) == stored.__class__(
        **{**stored.__dict__, "invalid_reason": row["reason"]}
    )
    assert cli("state", "track:9").stdout.strip() == "OFFLINED_BUT_NOT_VALID"


def test_expired_license_reads_not_valid(make_engine, sim, clock) -> None:
    from datetime import UTC, datetime

    sim.add("/m", Resource(BODY))
    sim.add("/l", Resource(b"license"))
    engine = make_engine()
    expires = datetime.fromtimestamp(clock.now + 3600, UTC)
    product = MediaProduct(
        ProductType.TRACK,
        "5",
        url=sim.url("/m"),
        license_url=sim.url("/l"),
        license_expires_at=expires,
    )
    engine.offline(product)
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID
    clock.now += 7200
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_BUT_NOT_VALID
    [result] = engine.validate_downloads()
    assert result.reason == "license expired"


# -- health -------------------------------------------------------------------------------------


def test_health_counts_and_window(make_engine, sim, clock, httpserver: HTTPServer) -> None:
    sim.add("/ok", Resource(BODY, faults=[Fault("status", status=503)]))
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    engine = make_engine()
    engine.offline(MediaProduct(ProductType.TRACK, "1", url=sim.url("/ok")))
    with pytest.raises(HTTPStatusError):
        engine.offline(MediaProduct(ProductType.TRACK, "2", url=httpserver.url_for("/missing")))

    report = engine.get_download_health()
    assert report.downloads_started == 2
    assert report.downloads_succeeded == 1
    assert report.downloads_failed == 1
    assert report.retries == 1
    assert report.retry_success_rate == 1.0
    assert report.success_rate == 0.5
    assert report.bytes_downloaded == len(BODY)
    assert report.failures_by_kind == {"permanent": 1}

    clock.now += 2 * DAY
    assert engine.get_download_health(DAY).downloads_started == 0


def test_health_cli_json_and_table(cli, make_engine, sim) -> None:
    sim.add("/ok", Resource(BODY))
    make_engine().offline(MediaProduct(ProductType.TRACK, "1", url=sim.url("/ok")))
    data = json.loads(cli("health", "--json").stdout)
    for key in (
        "downloads_started",
        "downloads_succeeded",
        "downloads_failed",
        "retries",
        "retry_success_rate",
        "success_rate",
        "recoveries",
        "network_pauses",
        "cleaned_up",
        "bytes_reclaimed",
        "bytes_downloaded",
        "mean_throughput_bytes_per_s",
        "failures_by_kind",
    ):
        assert key in data
    table = cli("health")
    assert table.exit_code == 0
    assert "downloads succeeded" in table.stdout and "per day" in table.stdout
    assert cli("health", "--since", "soon").exit_code == 2


# -- automatic maintenance ----------------------------------------------------------------------


def test_maintenance_runs_once_per_interval(make_engine, sim, clock) -> None:
    engine, _, entry = _failed_with_partial(make_engine, sim)
    # the failing engine ran its own pass already (nothing to clean then)
    assert engine.store.get_setting("last_maintenance_at") is not None
    assert entry.partial_media_path is not None
    clock.now += 8 * DAY

    second = make_engine()
    assert second.maybe_run_maintenance() is True
    assert not Path(entry.partial_media_path).exists()
    third = make_engine()
    assert third.maybe_run_maintenance() is False


def test_maintenance_can_be_switched_off(make_engine, sim, clock) -> None:
    engine, _, entry = _failed_with_partial(make_engine, sim, maintenance_interval=0)
    clock.now += 8 * DAY
    assert make_engine(maintenance_interval=0).maybe_run_maintenance() is False
    assert entry.partial_media_path and Path(entry.partial_media_path).exists()
    assert engine.store.get_setting("last_maintenance_at") is None


def test_state_never_runs_maintenance(cli, make_engine, sim, clock) -> None:
    engine, _, _ = _failed_with_partial(make_engine, sim, maintenance_interval=0)
    assert cli("state").exit_code == 0
    assert engine.store.get_setting("last_maintenance_at") is None


# -- feature flags --------------------------------------------------------------------------------


def test_flag_download_retry_off_fails_at_first_error(make_engine, sim) -> None:
    sim.add("/r", Resource(BODY, faults=[Fault("status", status=503)]))
    engine = make_engine(download_retry=False)
    with pytest.raises(ServerError):
        engine.offline(MediaProduct(ProductType.TRACK, "1", url=sim.url("/r")))
    assert sim.wait_idle()  # the server logs a request once it has finished sending it
    assert len(sim.requests("/r")) == 1


def test_flag_download_recovery_off_starts_over(make_engine, sim) -> None:
    sim.add("/c", Resource(BODY, faults=[Fault("cut", at=50_000)]))
    engine = make_engine(retries=0, download_recovery=False)
    product = MediaProduct(ProductType.TRACK, "1", url=sim.url("/c"))
    with pytest.raises(NetworkError):
        engine.offline(product)
    assert list(engine.layout.partial_dir.iterdir()) == []  # nothing kept to resume
    engine.offline(product)
    assert sim.requests("/c")[-1].range is None  # fetched from zero, not resumed
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID


def test_flag_network_aware_off_does_not_pause(make_engine, clock) -> None:
    sim = NetSim().start()
    sim.add("/n", Resource(BODY, faults=[Fault("cut", at=50_000)]))
    url = sim.url("/n")
    listener = RecordingListener()

    def stop_server(_seconds: float) -> None:
        sim.stop()  # the host goes away before the retry
        clock.now += _seconds

    engine = make_engine(listener, retries=1, network_aware_downloads=False, sleep=stop_server)
    with pytest.raises(NetworkError):
        engine.offline(MediaProduct(ProductType.TRACK, "1", url=url))
    assert "paused" not in listener.names()


def test_flag_enhanced_off_still_downloads_without_metrics(make_engine, sim) -> None:
    sim.add("/e", Resource(BODY))
    engine = make_engine(enhanced_download_management=False)
    product = MediaProduct(ProductType.TRACK, "1", url=sim.url("/e"))
    engine.offline(product)
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID
    assert engine.get_download_health().downloads_started == 0
    assert engine.store.get_setting("last_maintenance_at") is None


# -- config ---------------------------------------------------------------------------------------


def test_config_shows_sources(cli, home, monkeypatch) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("retries = 9\n[flags]\ndownload_retry = false\n")
    monkeypatch.setenv("OFFLINE_CLI_STALL_TIMEOUT", "12s")
    data = json.loads(cli("config", "--json").stdout)["settings"]
    assert data["retries"]["value"] == 9 and "config file" in data["retries"]["origin"]
    assert data["download_retry"]["value"] is False
    assert data["stall_timeout"] == {"value": 12.0, "origin": "$OFFLINE_CLI_STALL_TIMEOUT"}
    assert data["backoff_max"]["origin"] == "default"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("retries = [", "not valid TOML"),
        ("retrys = 3", "unknown key 'retrys'"),
        ('retries = "many"', "'retries'"),
        ('stall_timeout = "soon"', "'stall_timeout'"),
        ("[flags]\ndownload_retry = 3", "'download_retry'"),
    ],
)
def test_bad_config_file_exits_2_naming_the_key(cli, home, text, needle) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(text)
    result = cli("offline", "http://127.0.0.1:9/x")
    assert result.exit_code == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (home / "offline.db").exists()


# -- logs ---------------------------------------------------------------------------------------


def test_log_file_gets_json_lines(cli, home, sim, tmp_path) -> None:
    sim.add(
        "/lg", Resource(BODY, faults=[Fault("status", status=503, headers={"Retry-After": "0"})])
    )
    log = tmp_path / "events.jsonl"
    result = cli("--log-file", str(log), "offline", sim.url("/lg"), "--id", "track:1")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in log.read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "retry_scheduled" in names and "state_changed" in names
    retry = next(e for e in events if e["event"] == "retry_scheduled")
    assert retry["attempt"] == 1 and retry["reason"].startswith("HTTP 503")


def test_verbose_prints_events_on_stderr(cli, home, sim) -> None:
    sim.add("/vb", Resource(BODY))
    result = cli("-v", "offline", sim.url("/vb"))
    assert result.exit_code == 0
    assert "state_changed" in result.stderr


def test_unwritable_log_file_is_usage_error(cli, home, tmp_path) -> None:
    target = tmp_path / "no-such-dir" / "x.jsonl"
    result = cli("--log-file", str(target), "offline", "http://127.0.0.1:9/x")
    assert result.exit_code == 2
    assert "cannot write log file" in result.stderr


def test_validate_pass_after_a_touch_makes_state_agree(make_engine, sim) -> None:
    sim.add("/t", Resource(BODY))
    engine = make_engine()
    product = MediaProduct(ProductType.TRACK, "8", url=sim.url("/t"))
    engine.offline(product)
    stored = engine.store.get_offlined(product.key)
    assert stored is not None
    os.utime(stored.media_path, ns=(1, 1))  # a touch, a copy without -p: same bytes
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_BUT_NOT_VALID
    [result] = engine.validate_downloads()
    assert result.valid
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID


def test_config_shows_global_options(cli, home, tmp_path) -> None:
    log = tmp_path / "x.jsonl"
    data = json.loads(cli("--log-file", str(log), "--db-timeout", "5s", "config", "--json").stdout)
    assert data["settings"]["log_file"] == {"value": str(log), "origin": "command line"}
    assert data["settings"]["db_timeout"]["value"] == 5.0


def _playback(sim: NetSim, expires_at: float) -> None:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(expires_at, UTC).isoformat().replace("+00:00", "Z")
    info = {
        "productType": "TRACK",
        "productId": "42",
        "manifestMimeType": "audio/flac",
        "url": sim.url("/media/42"),
        "licenseUrl": sim.url("/license/42"),
        "licenseExpiresAt": when,
    }
    sim.add("/tracks/42", Resource(json.dumps(info).encode()))


def test_resume_through_the_source_keeps_the_license_expiry(make_engine, sim, clock) -> None:
    sim.add("/media/42", Resource(BODY, faults=[Fault("cut", at=50_000)]))
    sim.add("/license/42", Resource(b"LICENSE"))
    _playback(sim, clock.now + 3600)
    engine = make_engine(retries=0, source=sim.url("/{type}s/{id}"))
    product = MediaProduct(ProductType.TRACK, "42")
    with pytest.raises(NetworkError):
        engine.offline(product)

    _playback(sim, clock.now + 7200)  # the source renews the expiry meanwhile
    [result] = engine.resume()
    assert result.error is None, result.error
    stored = engine.store.get_offlined("track:42")
    assert stored is not None and stored.license_expires_at == clock.now + 7200
    assert sim.requests("/media/42")[-1].range == "bytes=50000-"  # resumed, not restarted
    clock.now += 7300
    assert engine.get_offline_state(product) is OfflineState.OFFLINED_BUT_NOT_VALID


def test_repair_of_an_expired_license_needs_the_source(cli, make_engine, sim, clock) -> None:
    sim.add("/media/42", Resource(BODY))
    sim.add("/license/42", Resource(b"LICENSE"))
    _playback(sim, clock.now + 60)
    source = sim.url("/{type}s/{id}")
    make_engine(source=source).offline(MediaProduct(ProductType.TRACK, "42"))

    # The CLI runs on the real clock: let the license expire for it.
    conn = sqlite3.connect(make_engine().store.path)
    conn.execute("UPDATE offlined_entries SET license_expires_at = 1")
    conn.commit()
    conn.close()
    without = cli("validate", "--repair", "--json")
    assert without.exit_code == 1
    [row] = json.loads(without.stdout)
    assert row["reason"] == "license expired" and "source" in row["repair_error"]

    _playback(sim, time.time() + 3600)
    renewed = cli("validate", "--repair", "--source", source)
    assert renewed.exit_code == 0, renewed.output
    assert cli("state", "track:42").stdout.strip() == "OFFLINED_AND_VALID"


def test_disk_full_fails_at_once_with_the_sizes(cli, make_engine, sim, home) -> None:
    from offline_cli.errors import DiskFull

    sim.add("/big", Resource(BODY))
    engine = make_engine(disk_free=lambda _path: 100_000)
    with pytest.raises(DiskFull) as caught:
        engine.offline(MediaProduct(ProductType.TRACK, "1", url=sim.url("/big")))
    # issue 7 item 18: the message says what is kept free and why
    assert (
        "not enough disk space: need 200.0 kB plus 262.1 kB kept free so the database can "
        "record the download, 100.0 kB free"
    ) in str(caught.value)
    assert sim.wait_idle()
    assert len(sim.requests("/big")) == 1  # permanent: no retry
    assert list((home / "partial").iterdir()) == []
