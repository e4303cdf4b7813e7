"""Damaged and unwritable stores (issue 7, items 3, 4, 5, 11 and 17).

A full disk and a read-only home are real: a small tmpfs, filled up or remounted read-only
(this needs root; elsewhere the read-only home is a folder without write permission and the
full-disk tests are skipped). Damaged rows are written with plain sqlite3, the way a crash,
a hand edit or a future release would leave them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from offline_cli import MediaProduct, OfflineEngine, ProductType
from offline_cli.config import Settings
from offline_cli.errors import DownloadError, StorageError, StoreUnwritable
from offline_cli.models import DownloadState
from offline_cli.store import Store
from tests.netsim import Fault, NetSim, Resource, wait_for
from tests.procutil import Procs, partial_bytes
from tests.procutil import damage as _sql

BODY = os.urandom(100_000)
HOUR = 3600.0


def _no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, text


def _offline(make_engine, sim: NetSim, *names: str, home: Path | None = None) -> list[MediaProduct]:
    engine = make_engine() if home is None else OfflineEngine(home, settings=Settings())
    products = []
    for name in names:
        sim.add(f"/{name}", Resource(BODY))
        product = MediaProduct.from_url(sim.url(f"/{name}"))
        engine.offline(product)
        products.append(product)
    engine.close()
    return products


# -- a small disk of our own: full, or read-only -------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (root only): room for a few products and the disk-space reserve."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def disk_home(disk: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = disk / "home"
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(home))
    return home


def _fill(disk: Path) -> None:
    """Write until the file system refuses even one more page."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free == 0


def _stored_files(home: Path) -> set[str]:
    return {str(p) for p in (home / "store").rglob("*") if p.is_file()}


def test_full_disk_read_commands_work_and_delete_frees_the_space(
    cli, make_engine, sim, disk: Path, disk_home: Path
) -> None:
    first, second = _offline(make_engine, sim, "a", "b", home=disk_home)
    _fill(disk)

    state = cli("state")
    assert state.exit_code == 0, state.output
    assert state.stdout.splitlines() == [
        f"{first.key}\tOFFLINED_AND_VALID",
        f"{second.key}\tOFFLINED_AND_VALID",
    ]
    rows = json.loads(cli("state", "--json").stdout)
    assert [r["download"]["state"] for r in rows] == ["COMPLETED", "COMPLETED"]
    health = cli("health", "--json")
    assert health.exit_code == 0 and json.loads(health.stdout)["offlined_products"] == 2
    validate = cli("validate")
    assert validate.exit_code == 0, validate.output
    assert validate.stdout.count("\tVALID") == 2

    # What the user on a full disk needs most: delete works, and records itself.
    deleted = cli("delete", first.key)
    assert deleted.exit_code == 0, deleted.output
    assert cli("state").stdout.splitlines() == [f"{second.key}\tOFFLINED_AND_VALID"]
    assert len(_stored_files(disk_home)) == 1
    _no_traceback(state.output, health.output, validate.output, deleted.output)


def test_full_disk_errors_say_full_disk_and_never_suggest_moving_the_database(
    cli, make_engine, sim, disk: Path, disk_home: Path
) -> None:
    (product,) = _offline(make_engine, sim, "a", home=disk_home)
    sim.add("/new", Resource(BODY))
    _fill(disk)
    before = (disk_home / "offline.db").read_bytes()

    result = cli("offline", sim.url("/new"))

    assert result.exit_code in (1, 4), result.output
    assert "mv " not in result.stderr and "move it aside" not in result.stderr
    assert "full" in result.stderr or "space" in result.stderr
    assert (disk_home / "offline.db").read_bytes() == before
    assert cli("state", product.key).stdout.strip() == "OFFLINED_AND_VALID"
    _no_traceback(result.output)
    # Every line is the tool's own (a metric it could not record is a prefixed warning).
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith(("offline-cli:", sim.url("/new"))) for line in lines), lines


def test_read_only_home_read_commands_work_and_writers_change_nothing(
    cli, make_engine, sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        if shutil.which("mount") is None:
            pytest.skip("no mount command")
        base = tmp_path / "disk"
        base.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
    else:
        base = tmp_path / "disk"
        base.mkdir()
    home = base / "home"
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(home))
    folders = [home, *(p for p in home.rglob("*") if p.is_dir())]
    try:
        (product,) = _offline(make_engine, sim, "a", home=home)
        orphan = home / "store" / "planted-orphan"
        orphan.write_bytes(b"no entry owns this")
        files_before = _stored_files(home)
        db_before = (home / "offline.db").read_bytes()
        if os.geteuid() == 0:
            subprocess.run(["mount", "-o", "remount,ro", str(base)], check=True)
        else:
            folders = [home, *(p for p in home.rglob("*") if p.is_dir())]
            for folder in folders:
                folder.chmod(0o555)

        state = cli("state", "--json")
        assert state.exit_code == 0, state.output
        assert json.loads(state.stdout)[0]["state"] == "OFFLINED_AND_VALID"
        assert cli("health").exit_code == 0
        validate = cli("validate")
        assert validate.exit_code == 0 and "\tVALID" in validate.stdout, validate.output

        deleted = cli("delete", product.key)
        assert deleted.exit_code == 4, deleted.output
        assert "mv " not in deleted.stderr
        assert len(deleted.stderr.strip().splitlines()) == 1
        assert _stored_files(home) == files_before
        assert (home / "offline.db").read_bytes() == db_before

        cleaned = cli("cleanup", "--older-than", "0")
        assert cleaned.exit_code == 4, cleaned.output
        assert len(cleaned.stderr.strip().splitlines()) == 1, cleaned.stderr
        assert orphan.exists() and _stored_files(home) == files_before
        dry = cli("cleanup", "--older-than", "0", "--dry-run")
        assert dry.exit_code == 0 and str(orphan) in dry.stdout, dry.output
        _no_traceback(state.output, validate.output, deleted.output, cleaned.output)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(base)], capture_output=True)
        else:
            for folder in folders:
                folder.chmod(0o755)


def test_an_unopenable_database_is_not_called_damaged(tmp_path: Path) -> None:
    with pytest.raises(StoreUnwritable) as info:
        Store(tmp_path / "no-such-folder" / "offline.db")
    assert info.value.exit_code == 4
    assert "cannot open" in str(info.value)
    assert info.value.hint is not None and "mv" not in info.value.hint


def test_move_aside_is_suggested_only_when_integrity_check_fails(tmp_path: Path) -> None:
    path = tmp_path / "offline.db"
    path.write_bytes(b"garbage " * 1000)
    with pytest.raises(StorageError) as info:
        Store(path)
    assert "integrity_check fails" in str(info.value)
    assert info.value.hint is not None and "mv" in info.value.hint


# -- a replaced database does not make stored media orphans ------------------------------------


def test_a_replaced_database_never_makes_stored_media_orphans(
    cli, make_engine, sim, home: Path
) -> None:
    (product,) = _offline(make_engine, sim, "a")
    media = _stored_files(home)
    assert len(media) == 1
    # The product was stored an hour ago; then its database was moved aside, as the old
    # hint said, and an empty one started.
    hour_ago = time.time() - HOUR
    recorded = {path: os.stat(path).st_mtime_ns for path in media}
    for path in media:
        os.utime(path, (hour_ago, hour_ago))
    aside = home / "offline.db.broken"
    (home / "offline.db").rename(aside)

    sim.add("/other", Resource(BODY))
    offline = cli("offline", sim.url("/other"))  # runs the automatic maintenance pass
    assert offline.exit_code == 0, offline.output
    cleanup = cli("cleanup", "--older-than", "0")
    assert cleanup.exit_code == 0, cleanup.output

    assert media <= _stored_files(home)
    assert "orphan" not in cleanup.stdout
    # Moving the database back brings the product back, intact.
    for path, mtime_ns in recorded.items():
        os.utime(path, ns=(mtime_ns, mtime_ns))
    (home / "offline.db").unlink()
    aside.rename(home / "offline.db")
    assert cli("state", product.key).stdout.strip() == "OFFLINED_AND_VALID"


def test_files_orphaned_under_the_current_database_still_go(make_engine, sim, home) -> None:
    _offline(make_engine, sim, "a")
    stray = home / "store" / "stray" / "left.media"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x" * 100)
    engine = make_engine()
    report = engine.perform_maintenance_cleanup(0)
    assert [i.path for i in report.items if i.kind == "orphan"] == [str(stray)]


# -- delete: all or nothing, and one stuck product does not keep the others ----------------------


def test_delete_with_the_database_locked_changes_nothing(cli, make_engine, sim, home) -> None:
    (product,) = _offline(make_engine, sim, "a")
    files = _stored_files(home)
    holder = sqlite3.connect(home / "offline.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = cli("--db-timeout", "0.3s", "delete", product.key)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 4, result.output
    assert "locked" in result.stderr
    assert _stored_files(home) == files
    assert cli("state", product.key).stdout.strip() == "OFFLINED_AND_VALID"
    assert cli("delete", product.key).exit_code == 0


def test_delete_of_several_carries_on_after_a_cancel_timeout(
    cli, make_engine, sim, home, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck, free = _offline(make_engine, sim, "stuck", "free")
    monkeypatch.setattr("offline_cli.deletion.CANCEL_WAIT_S", 0.3)
    # A download of `stuck` that never stops: something holds its lock.
    with FileLock(home / "locks" / Path(make_engine().layout.lock_path(stuck.key)).name):
        result = cli("delete", stuck.key, free.key)
    assert result.exit_code == 1, result.output
    assert "did not stop" in result.stderr and stuck.key in result.stderr
    assert f"{free.key}: deleted" in result.stderr
    assert cli("state", free.key).stdout.strip() == "NOT_OFFLINED"
    assert cli("state", stuck.key).stdout.strip() == "OFFLINED_AND_VALID"


def test_delete_all_carries_on_after_a_cancel_timeout_and_keeps_the_running_download(
    cli, make_engine, sim, home, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "a-stuck" sorts first, so a delete-all that stops at it never reaches "b-free".
    stuck, free = _offline(make_engine, sim, "a-stuck", "b-free")
    monkeypatch.setattr("offline_cli.deletion.CANCEL_WAIT_S", 0.3)
    running_partial = home / "partial" / "running.media.part"
    running_partial.write_bytes(b"bytes of a download that has not stopped yet")
    with FileLock(home / "locks" / Path(make_engine().layout.lock_path(stuck.key)).name):
        result = cli("delete-all", "--yes")
    assert result.exit_code == 1, result.output
    assert "did not stop" in result.stderr and stuck.key in result.stderr
    assert "Traceback" not in result.output
    assert cli("state", free.key).stdout.strip() == "NOT_OFFLINED"
    assert cli("state", stuck.key).stdout.strip() == "OFFLINED_AND_VALID"
    assert running_partial.exists()  # the folders were not swept under a running download
    assert cli("delete-all", "--yes").exit_code == 0
    assert cli("state").stdout == ""


# -- unknown values in a readable database ------------------------------------------------------


def _failed_download(make_engine, sim: NetSim) -> MediaProduct:
    sim.add("/cut", Resource(BODY, faults=[Fault("cut", at=50_000)]))
    product = MediaProduct.from_url(sim.url("/cut"))
    engine = make_engine(retries=0)
    with pytest.raises(Exception, match="cut"):
        engine.offline(product)
    engine.close()
    return product


BAD_DOWNLOAD_ROWS = {
    "unknown state": "UPDATE download_entries SET state = 'BOGUS'",
    "bad resume_info": "UPDATE download_entries SET resume_info = '{not json'",
    "progress out of range": "UPDATE download_entries SET progress = 5",
    "unknown product type": "UPDATE download_entries SET product_type = 'widget'",
    "text in a number": "UPDATE download_entries SET bytes_done = 'lots'",
}


@pytest.mark.parametrize("damage", BAD_DOWNLOAD_ROWS.values(), ids=BAD_DOWNLOAD_ROWS.keys())
def test_a_bad_download_row_is_named_skipped_and_deletable(
    cli, make_engine, sim, home, damage: str
) -> None:
    (good,) = _offline(make_engine, sim, "good")
    bad = _failed_download(make_engine, sim)
    _sql(home, damage + " WHERE product_key = ?", (bad.key,))

    outputs = []
    for args in (("state", "--json"), ("health", "--json"), ("validate",), ("resume",)):
        result = cli(*args)
        outputs.append(result.output)
        assert result.exit_code == 0, (args, result.output)
        # One line naming the product, from each command that came across the row.
        warnings = [line for line in result.stderr.splitlines() if "unreadable" in line]
        assert all(bad.key in line for line in warnings) and len(warnings) <= 1
        if args[0] == "state":
            assert len(warnings) == 1, result.stderr
    assert json.loads(cli("state", "--json", good.key).stdout)[0]["state"] == "OFFLINED_AND_VALID"

    deleted = cli("delete", bad.key)
    assert deleted.exit_code == 0, deleted.output
    assert "unreadable" not in cli("state", "--json").stderr
    _no_traceback(*outputs, deleted.output)


def test_a_bad_offlined_row_is_skipped_and_deletable(cli, make_engine, sim, home) -> None:
    good, bad = _offline(make_engine, sim, "good", "bad")
    _sql(home, "UPDATE offlined_entries SET size = 'big' WHERE product_key = ?", (bad.key,))
    state = cli("state")
    assert state.exit_code == 0
    assert f"{good.key}\tOFFLINED_AND_VALID" in state.stdout
    assert bad.key in state.stderr and "unreadable" in state.stderr
    validate = cli("validate")
    # The damage is reported, not passed over: a cron job must notice it.
    assert validate.exit_code == 1, validate.output
    assert f"{good.key}\tVALID" in validate.stdout
    assert f"{bad.key}\tINVALID\tunreadable database entry" in validate.stdout
    deleted = cli("delete", bad.key)
    assert deleted.exit_code == 0, deleted.output
    assert len(_stored_files(home)) == 1
    _no_traceback(state.output, validate.output, deleted.output)


def test_offline_over_bad_rows_downloads_again(cli, make_engine, sim, home) -> None:
    bad = _failed_download(make_engine, sim)
    _sql(home, "UPDATE download_entries SET resume_info = '[' WHERE product_key = ?", (bad.key,))
    sim.add("/cut", Resource(BODY))  # the server is fixed
    first = cli("offline", bad.key)
    assert first.exit_code == 0, first.output
    assert cli("state", bad.key).stdout.strip() == "OFFLINED_AND_VALID"

    _sql(home, "UPDATE offlined_entries SET size = 'big' WHERE product_key = ?", (bad.key,))
    again = cli("offline", bad.key)
    assert again.exit_code == 0, again.output
    assert bad.key in again.stderr and "unreadable" in again.stderr
    assert cli("state", bad.key).stdout.strip() == "OFFLINED_AND_VALID"
    assert cli("delete", bad.key).exit_code == 0
    _no_traceback(first.output, again.output)


def test_cleanup_and_delete_all_remove_bad_rows(cli, make_engine, sim, home) -> None:
    bad = _failed_download(make_engine, sim)
    _sql(home, "UPDATE download_entries SET state = 'BOGUS' WHERE product_key = ?", (bad.key,))
    cleanup = cli("cleanup", "--older-than", "0")
    assert cleanup.exit_code == 0, cleanup.output
    assert f"removed: {bad.key} (unreadable entry" in cleanup.stdout
    assert list((home / "partial").iterdir()) == []

    _offline(make_engine, sim, "good")
    _sql(home, "UPDATE offlined_entries SET product_type = 'widget'")
    result = cli("delete-all", "--yes")
    assert result.exit_code == 0, result.output
    assert _stored_files(home) == set()
    assert cli("state").stdout == ""
    _no_traceback(cleanup.output, result.output)


def test_a_bad_maintenance_time_counts_as_never(cli, make_engine, sim, home) -> None:
    _offline(make_engine, sim, "a")
    _sql(home, "INSERT OR REPLACE INTO settings VALUES ('last_maintenance_at', 'yesterday')")
    sim.add("/b", Resource(BODY))
    result = cli("offline", sim.url("/b"))
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(home / "offline.db")
    query = "SELECT value FROM settings WHERE key = 'last_maintenance_at'"
    (value,) = conn.execute(query).fetchone()
    conn.close()
    assert float(value) > 0
    _no_traceback(result.output)


# -- what a read says of a dead download; waited output; resume on a damaged database ----------


def test_state_reports_a_download_whose_owner_is_gone_as_paused(make_engine, cli, home) -> None:
    engine = make_engine()
    product = MediaProduct(ProductType.FILE, "http://127.0.0.1:9/x", url="http://127.0.0.1:9/x")
    entry = engine.store.downloads.create(
        product_key=product.key,
        product_type=product.product_type,
        product_id=product.product_id,
        media_url=product.url,
        license_url=None,
        expected_sha256=None,
        partial_media_path=engine.layout.partial_media_path,
        partial_license_path=engine.layout.partial_license_path,
    )
    engine.store.downloads.transition(entry.id, DownloadState.IN_PROGRESS)
    engine.close()  # the process that ran it is gone: nobody holds the product's lock

    rows = json.loads(cli("state", "--json").stdout)
    assert rows[0]["download"]["state"] == "PAUSED"
    with FileLock(engine.layout.lock_path(product.key), is_singleton=False):
        alive = json.loads(cli("state", "--json").stdout)
    assert alive[0]["download"]["state"] == "IN_PROGRESS"


def test_a_process_that_waited_prints_only_downloaded_by_another_process(
    sim: NetSim, home: Path, tmp_path: Path
) -> None:
    body = os.urandom(1_000_000)
    sim.add("/media", Resource(body, rate=500_000))
    url = sim.url("/media")
    procs = Procs(home, tmp_path / "procs")
    try:
        first = procs.spawn("offline", url)
        assert wait_for(lambda: partial_bytes(home) > 0, timeout=15), first.stderr()
        second = procs.spawn("offline", url)
        assert wait_for(lambda: "waiting" in second.stderr(), timeout=15), second.stderr()
        assert first.wait() == 0 and second.wait() == 0, second.stderr()
    finally:
        procs.close()
    assert "downloaded by another process" in second.stderr()
    assert "done (" not in second.stderr(), second.stderr()


def _hide_every_download_from_the_state_index(home: Path) -> None:
    """Point the state index at an empty b-tree: rows are there, the index finds none."""
    conn = sqlite3.connect(home / "offline.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE decoy (state TEXT)")
        conn.execute("CREATE INDEX decoy_state ON decoy (state)")
        (empty_root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'decoy_state'"
        ).fetchone()
        (name,) = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            " AND tbl_name = 'download_entries' AND sql LIKE '%(\"state\")%'"
        ).fetchone()
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (empty_root, name))
        conn.execute("PRAGMA writable_schema = OFF")
    finally:
        conn.close()


def test_resume_on_a_damaged_database_exits_4(cli, make_engine, sim, home) -> None:
    _failed_download(make_engine, sim)
    _hide_every_download_from_the_state_index(home)
    result = cli("resume")
    assert result.exit_code == 4, result.output
    assert "nothing to resume" not in result.stderr
    assert "integrity_check fails" in result.stderr
    assert "\\x0a" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    _no_traceback(result.output)


def test_resume_with_nothing_to_do_still_exits_0(cli, home) -> None:
    result = cli("resume")
    assert result.exit_code == 0 and "nothing to resume" in result.stderr


def test_a_large_body_that_meets_a_full_disk_fails_cleanly_and_resumes(
    sim, disk: Path, disk_home: Path
) -> None:
    """A body large enough to be written on the sink's worker thread (more than
    THREADED_SINK_MIN_BYTES) meets ENOSPC half-way (the free-space check was told there is
    room): the worker's error reaches the download as "disk full" (a permanent failure:
    its partial data is removed at once) and nothing is committed."""
    body = os.urandom(24 << 20)  # more than the 16 MB disk holds
    sim.add("/big", Resource(body))
    product = MediaProduct.from_url(sim.url("/big"))
    engine = OfflineEngine(disk_home, settings=Settings(retries=0), disk_free=lambda p: 1 << 40)
    try:
        with pytest.raises(DownloadError, match="disk full after"):
            engine.offline(product)
        assert engine.get_offline_state(product).value == "NOT_OFFLINED"
    finally:
        engine.close()
    assert not list((disk_home / "store").rglob("*.media"))
    assert not list((disk_home / "partial").iterdir())
