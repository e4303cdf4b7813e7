"""offline-cli as real processes: signals, kill -9, two processes on one product, cancel and
cleanup across processes, and crashes inside the commit window.

Every child runs ``python -m offline_cli`` on a temporary home against a loopback NetSim that
serves throttled bodies, so a download is mid-flight when the test acts; a crash at an exact
point is a child whose engine's fault hook SIGKILLs it there (``Procs.spawn_crash``). No test
patches a private name. Tests wait for conditions by polling (``wait_for``), never by fixed
sleeps, and kill every child in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from offline_cli import MediaProduct, OfflineEngine, ProductType
from offline_cli.runtime import FaultHook
from offline_cli.store import Store
from tests.netsim import Fault, NetSim, Resource, wait_for
from tests.procutil import (
    CrashAt,
    Procs,
    download_state,
    downloads,
    integrity,
    offlined,
    partial_bytes,
    partial_files,
    store_files,
    stored_media,
)

MB = 1_000_000
BODY = os.urandom(2 * MB)
RATE = 1 * MB  # bytes per second: a 2 MB body takes about two seconds
LICENSE = b"LICENSE:" + os.urandom(3000)


def _until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    assert wait_for(predicate, timeout=timeout), f"timed out waiting for {what}"


def _state_json(procs: Procs, key: str) -> dict[str, Any]:
    result = procs.run("state", "--json", key)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    return dict(rows[0])


def _assert_complete(procs: Procs, home: Path, key: str, body: bytes) -> None:
    """Byte-exact, OFFLINED_AND_VALID, no partial data, nothing stray, database sound."""
    assert stored_media(home, key) == body
    result = procs.run("state", key)
    assert result.returncode == 0 and result.stdout.strip() == "OFFLINED_AND_VALID", result
    assert partial_files(home) == []
    row = offlined(home, key)
    assert row is not None
    assert store_files(home) == {p for p in (row["media_path"], row["license_path"]) if p}
    assert download_state(home, key) == "COMPLETED"
    assert integrity(home) == "ok"


def _start_mid_flight(
    procs: Procs, home: Path, sim: NetSim, *args: str, at_least: int = 300_000
) -> Any:
    """Start ``offline URL`` and return once ``at_least`` bytes are on disk."""
    child = procs.spawn("offline", sim.url("/media"), *args)
    _until(lambda: partial_bytes(home) >= at_least or not child.running(), "bytes on disk")
    assert child.running(), f"download ended early: {child.stderr()}"
    return child


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_pauses_then_resume_fetches_only_missing_bytes(
    sim: NetSim, procs: Procs, home: Path, signum: int, code: int
) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    child = _start_mid_flight(procs, home, sim)

    child.popen.send_signal(signum)
    assert child.wait(10) == code
    assert "Traceback" not in child.stderr()
    assert "PAUSED" in child.stderr()
    row = _state_json(procs, url)
    assert row["state"] == "NOT_OFFLINED"
    assert row["download"]["state"] == "PAUSED"

    on_disk = partial_bytes(home)
    assert 0 < on_disk < len(BODY)
    assert sim.wait_idle()
    sent_before = sim.bytes_sent("/media")
    result = procs.run("resume")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert sim.wait_idle()
    # only the missing bytes, fetched by range from where the file stopped
    assert sim.bytes_sent("/media") - sent_before == len(BODY) - on_disk
    assert sim.requests("/media")[-1].range == f"bytes={on_disk}-"
    _assert_complete(procs, home, url, BODY)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_no_download_runs_says_nothing_was_paused(
    sim: NetSim, procs: Procs, home: Path, signum: int, code: int
) -> None:
    sim.add("/media", Resource(BODY))
    url = sim.url("/media")
    engine = OfflineEngine(home)
    lock_path = engine.layout.lock_path(MediaProduct.from_url(url).key)
    engine.store  # noqa: B018 - create the home and its folders
    engine.close()

    # Another "process" holds the product: the child only waits, it downloads nothing.
    with FileLock(lock_path):
        child = procs.spawn("offline", url)
        _until(lambda: "waiting for its outcome" in child.stderr(), "the child waits")
        child.popen.send_signal(signum)
        assert child.wait(10) == code
    assert "Traceback" not in child.stderr()
    assert "PAUSED" not in child.stderr()
    assert child.stderr().strip().endswith("interrupted" if code == 130 else "terminated")


# -- kill -9 ----------------------------------------------------------------------------------


def test_kill9_mid_body_then_resume_completes(sim: NetSim, procs: Procs, home: Path) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    child = _start_mid_flight(procs, home, sim)
    _until(lambda: download_state(home, url) == "IN_PROGRESS", "IN_PROGRESS in the database")

    child.popen.kill()
    assert child.wait(10) == -signal.SIGKILL
    # the entry still says IN_PROGRESS: its owner is gone without a word
    row = _state_json(procs, url)
    assert row["state"] == "NOT_OFFLINED"
    assert row["download"]["state"] in ("IN_PROGRESS", "PAUSED")

    on_disk = partial_bytes(home)
    assert 0 < on_disk < len(BODY)
    assert sim.wait_idle()
    sent_before = sim.bytes_sent("/media")
    result = procs.run("resume")
    assert result.returncode == 0, result.stderr
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") - sent_before == len(BODY) - on_disk
    _assert_complete(procs, home, url, BODY)
    assert len(downloads(home, url)) == 1


def test_kill9_then_plain_offline_continues_the_download(
    sim: NetSim, procs: Procs, home: Path
) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    child = _start_mid_flight(procs, home, sim)
    first_id = downloads(home, url)[-1]["id"]
    child.popen.kill()
    child.wait(10)

    on_disk = partial_bytes(home)
    assert sim.wait_idle()
    sent_before = sim.bytes_sent("/media")
    result = procs.run("offline", url)
    assert result.returncode == 0, result.stderr
    assert sim.wait_idle()
    # continued, not restarted: same entry, only the missing bytes
    assert sim.bytes_sent("/media") - sent_before == len(BODY) - on_disk
    assert [d["id"] for d in downloads(home, url)] == [first_id]
    _assert_complete(procs, home, url, BODY)


# -- one download per product across processes ----------------------------------------------------


def test_second_process_waits_and_reports_the_outcome(
    sim: NetSim, procs: Procs, home: Path
) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    first = _start_mid_flight(procs, home, sim, at_least=100_000)
    second = procs.spawn("offline", url)
    _until(lambda: "waiting" in second.stderr(), "the second process to say it waits")
    assert first.running() and second.running()

    assert first.wait() == 0, first.stderr()
    assert second.wait() == 0, second.stderr()
    assert "downloaded by another process" in second.stderr()
    assert "Traceback" not in first.stderr() + second.stderr()
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") == len(BODY)
    assert len(sim.requests("/media")) == 1
    _assert_complete(procs, home, url, BODY)


def test_two_processes_started_together_download_once(
    sim: NetSim, procs: Procs, home: Path
) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    # like two cron jobs: same moment, empty home, no database yet
    pair = [procs.spawn("offline", url), procs.spawn("offline", url)]
    codes = [child.wait() for child in pair]
    errors = [child.stderr() for child in pair]
    assert codes == [0, 0], errors
    assert not any("Traceback" in e for e in errors)
    assert sum("downloaded by another process" in e for e in errors) == 1, errors
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") == len(BODY)
    assert len(downloads(home, url)) == 1
    _assert_complete(procs, home, url, BODY)


def test_interrupting_a_waiting_process_leaves_the_download_alone(
    sim: NetSim, procs: Procs, home: Path
) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    first = _start_mid_flight(procs, home, sim, at_least=100_000)
    second = procs.spawn("offline", url)
    _until(lambda: "waiting" in second.stderr(), "the second process to say it waits")

    second.popen.send_signal(signal.SIGINT)
    assert second.wait(10) == 130
    assert "Traceback" not in second.stderr()
    assert first.running()
    assert download_state(home, url) == "IN_PROGRESS"  # the waiter paused nothing

    assert first.wait() == 0, first.stderr()
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") == len(BODY)
    _assert_complete(procs, home, url, BODY)


def test_no_wait_exits_3_at_once(sim: NetSim, procs: Procs, home: Path) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    first = _start_mid_flight(procs, home, sim, at_least=100_000)
    started = time.monotonic()
    result = procs.run("offline", "--no-wait", url, timeout=20)
    assert result.returncode == 3, result.stderr
    assert "another process" in result.stderr
    assert "Traceback" not in result.stderr
    assert first.running(), "--no-wait must not wait for the other download"
    assert time.monotonic() - started < 5

    resumed = procs.run("resume", "--no-wait", timeout=20)
    assert resumed.returncode == 3, resumed.stderr
    # the same words as offline's, naming the process (a cron job's mail says who has it)
    assert f"another process is downloading it (pid {first.pid})" in resumed.stderr
    assert first.running()

    assert first.wait() == 0, first.stderr()
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") == len(BODY)
    _assert_complete(procs, home, url, BODY)


# -- cancel and cleanup across processes --------------------------------------------------------


def test_delete_from_another_process_cancels_the_download(
    sim: NetSim, procs: Procs, home: Path
) -> None:
    body = os.urandom(4 * MB)  # four seconds: the download cannot finish before the cancel
    sim.add("/media", Resource(body, rate=RATE))
    url = sim.url("/media")
    downloader = _start_mid_flight(procs, home, sim, at_least=200_000)
    assert partial_files(home)

    started = time.monotonic()
    deleted = procs.run("delete", url, timeout=30)
    assert deleted.returncode == 0, deleted.stderr
    assert downloader.wait(10) == 1
    stopped_after = time.monotonic() - started
    assert stopped_after < 5, f"the download took {stopped_after:.1f}s to stop"
    assert "cancel" in downloader.stderr().lower()
    assert "Traceback" not in downloader.stderr() + deleted.stderr

    assert partial_files(home) == []
    assert store_files(home) == set()
    [entry] = downloads(home, url)  # kept as a record: the download ended CANCELLED
    assert entry["state"] == "CANCELLED"
    assert procs.run("state", url).stdout.strip() == "NOT_OFFLINED"
    assert integrity(home) == "ok"
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") < len(body)


@pytest.mark.parametrize("enhanced", ["true", "false"])
def test_delete_cancels_a_stalled_download_at_once(
    sim: NetSim, procs: Procs, home: Path, enhanced: str
) -> None:
    """No byte arrives (a stall), or progress is not persisted (flag off): the cancel watch
    still notices the delete and cuts the read short, well before the stall timeout."""
    body = os.urandom(MB)
    sim.add("/media", Resource(body, faults=[Fault("stall", at=300_000, stall_s=60)]))
    procs.extra_env["OFFLINE_CLI_ENHANCED_DOWNLOAD_MANAGEMENT"] = enhanced
    url = sim.url("/media")
    # below the stall point: the last few KiB may still sit in the writer's buffer
    downloader = _start_mid_flight(procs, home, sim, "--stall-timeout", "50s", at_least=200_000)

    started = time.monotonic()
    deleted = procs.run("delete", url, timeout=30)
    assert deleted.returncode == 0, deleted.stderr
    assert downloader.wait(10) == 1
    stopped_after = time.monotonic() - started
    assert stopped_after < 5, f"the download took {stopped_after:.1f}s to stop"
    assert "cancel" in downloader.stderr().lower()
    assert partial_files(home) == []
    assert store_files(home) == set()


def test_delete_cancels_a_download_waiting_for_headers(procs: Procs, home: Path) -> None:
    """A server that accepts the connection and never answers: the cancel watch still cuts
    the wait for the headers short."""
    import socket as sockets

    listener = sockets.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[sockets.socket] = []
    stop = threading.Event()

    def accept_and_hold() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/never"
    try:
        downloader = procs.spawn("offline", url, "--stall-timeout", "60s")
        _until(lambda: held != [] and download_state(home, url) == "IN_PROGRESS", "a request")
        started = time.monotonic()
        deleted = procs.run("delete", url, timeout=30)
        assert deleted.returncode == 0, deleted.stderr
        assert downloader.wait(10) == 1
        assert time.monotonic() - started < 5
        assert "cancel" in downloader.stderr().lower()
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_cleanup_leaves_a_live_download_alone(sim: NetSim, procs: Procs, home: Path) -> None:
    sim.add("/media", Resource(BODY, rate=RATE))
    url = sim.url("/media")
    downloader = _start_mid_flight(procs, home, sim, at_least=200_000)
    [partial] = partial_files(home)
    before = partial.stat().st_size

    cleaned = procs.run("cleanup", "--older-than", "0")
    assert cleaned.returncode == 0, cleaned.stderr
    assert str(partial) not in cleaned.stdout
    assert downloader.running()
    assert partial.exists() and partial.stat().st_size >= before

    assert downloader.wait() == 0, downloader.stderr()
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") == len(BODY)
    _assert_complete(procs, home, url, BODY)


# -- crashes inside the commit window, made deterministic ------------------------------------------
#
# The engine's public fault hook stops a download at a named point. "interrupt": Ctrl-C in this
# process (the hook raises KeyboardInterrupt; the engine saves the download as PAUSED).
# "kill9": a child process SIGKILLs itself there, so no handler runs and the entry keeps
# saying IN_PROGRESS. Either way, `resume` must finish the download from what is on disk.


def _interrupt_at(at: CrashAt) -> FaultHook:
    def hook(point: str, **info: Any) -> None:
        if at.reached(point, info):
            raise KeyboardInterrupt

    return hook


def _crash(procs: Procs, home: Path, product: MediaProduct, at: CrashAt, how: str) -> None:
    """Stop the download of ``product`` at ``at``, in this process or by a real kill -9."""
    if how == "interrupt":
        engine = OfflineEngine(home, fault_hook=_interrupt_at(at))
        with engine, pytest.raises(KeyboardInterrupt):
            engine.offline(product)
        assert download_state(home, product.key) == "PAUSED"
    else:
        child = procs.spawn_crash(product, at)
        assert child.wait() == -signal.SIGKILL, child.stderr()
        # a killed process runs no handler: its owner is gone without a word
        assert download_state(home, product.key) == "IN_PROGRESS"


def _product(sim: NetSim, with_license: bool) -> MediaProduct:
    return MediaProduct(
        ProductType.VIDEO,
        "7",
        url=sim.url("/media"),
        license_url=sim.url("/license") if with_license else None,
    )


@pytest.mark.parametrize("how", ["interrupt", "kill9"])
@pytest.mark.parametrize("with_license", [False, True])
def test_crash_after_renames_before_database_commit(
    sim: NetSim, procs: Procs, home: Path, how: str, with_license: bool
) -> None:
    body = os.urandom(300_000)
    sim.add("/media", Resource(body))
    sim.add("/license", Resource(LICENSE))
    product = _product(sim, with_license)

    _crash(procs, home, product, CrashAt("files_moved"), how)
    # the files are at their final names, the database never heard of it
    assert partial_files(home) == []
    assert len(store_files(home)) == (2 if with_license else 1)
    assert offlined(home, "video:7") is None

    assert sim.wait_idle()
    sent = sim.bytes_sent("/media") + sim.bytes_sent("/license")
    result = procs.run("resume")
    assert result.returncode == 0, result.stderr
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") + sim.bytes_sent("/license") == sent  # nothing refetched
    _assert_complete(procs, home, "video:7", body)
    row = offlined(home, "video:7")
    assert row is not None
    if with_license:
        assert Path(row["license_path"]).read_bytes() == LICENSE


def test_crash_between_the_two_renames(sim: NetSim, procs: Procs, home: Path) -> None:
    body = os.urandom(300_000)
    sim.add("/media", Resource(body))
    sim.add("/license", Resource(LICENSE))
    product = _product(sim, with_license=True)

    _crash(procs, home, product, CrashAt("license_moved"), "kill9")
    # the license moved, the media did not
    assert [Path(p).name.endswith(".license") for p in store_files(home)] == [True]
    assert [p.name.endswith(".media.part") for p in partial_files(home)] == [True]
    assert offlined(home, "video:7") is None

    assert sim.wait_idle()
    sent = sim.bytes_sent("/media") + sim.bytes_sent("/license")
    result = procs.run("resume")
    assert result.returncode == 0, result.stderr
    assert sim.wait_idle()
    assert sim.bytes_sent("/media") + sim.bytes_sent("/license") == sent
    _assert_complete(procs, home, "video:7", body)
    row = offlined(home, "video:7")
    assert row is not None and Path(row["license_path"]).read_bytes() == LICENSE


@pytest.mark.parametrize("how", ["interrupt", "kill9"])
def test_crash_between_license_and_media(sim: NetSim, procs: Procs, home: Path, how: str) -> None:
    body = os.urandom(600_000)
    sim.add("/media", Resource(body))
    sim.add("/license", Resource(LICENSE))
    product = _product(sim, with_license=True)

    _crash(procs, home, product, CrashAt("progress", part="media", done=200_000), how)
    # license complete, media partial, nothing committed
    parts = {p.name.split(".", 1)[1]: p.stat().st_size for p in partial_files(home)}
    assert parts["license.part"] == len(LICENSE)
    media_on_disk = parts["media.part"]
    assert 200_000 <= media_on_disk < len(body)
    assert offlined(home, "video:7") is None

    assert sim.wait_idle()
    media_sent, license_sent = sim.bytes_sent("/media"), sim.bytes_sent("/license")
    result = procs.run("resume")
    assert result.returncode == 0, result.stderr
    assert sim.wait_idle()
    assert sim.bytes_sent("/license") == license_sent  # the license is not fetched again
    assert sim.bytes_sent("/media") - media_sent == len(body) - media_on_disk
    _assert_complete(procs, home, "video:7", body)
    row = offlined(home, "video:7")
    assert row is not None and Path(row["license_path"]).read_bytes() == LICENSE


def test_crash_right_after_a_restart_is_recorded_never_mixes_versions(
    sim: NetSim, procs: Procs, home: Path
) -> None:
    """The file changed on the server: the retry got the whole new file (200) and recorded
    its validators; a crash before the first new byte must not leave old bytes on disk
    under the new validators, or the resume appends new bytes to old ones."""
    old_body, new_body = os.urandom(400_000), os.urandom(400_000)
    sim.add("/media", Resource(old_body))
    product = _product(sim, with_license=False)

    _crash(procs, home, product, CrashAt("progress", done=150_000), "kill9")
    [partial] = partial_files(home)
    assert partial.stat().st_size >= 150_000

    new = sim.add("/media", Resource(new_body, last_modified="Thu, 22 Oct 2026 07:28:00 GMT"))
    # the new validators are stored, no new byte written yet
    _crash(procs, home, product, CrashAt("checkpoint", part="media", etag=new.etag), "kill9")

    result = procs.run("resume")
    assert result.returncode == 0, result.stderr
    _assert_complete(procs, home, "video:7", new_body)


def test_store_opens_while_another_process_holds_the_new_file(tmp_path: Path) -> None:
    """Two cron jobs creating the store together: switching the new file to WAL while the
    other holds its write lock is answered "locked" at once, without the busy timeout.
    The store retries for up to its timeout instead of exiting 4."""
    path = tmp_path / "offline.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # the other process is creating the schema
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        store = Store(path, busy_timeout_s=10)
        try:
            assert time.monotonic() - started >= 0.25
            assert store.integrity_check() == "ok"
            store.set_setting("probe", "1")
        finally:
            store.close()
        release.join(5)
    finally:
        other.close()
