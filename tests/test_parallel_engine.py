"""Many downloads at once in one engine: workers, one cancel signal per run, interrupts,
and transfers that share the HTTP client's connections without cutting each other's."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from offline_cli.errors import DownloadCancelled, DownloadInterrupted, HTTPStatusError
from offline_cli.models import DownloadState, MediaProduct, ProductType
from offline_cli.store import Store
from tests.conftest import RecordingListener, new_download
from tests.netsim import Fault, NetSim, Resource, wait_for

SIZE = 400_000


class ThreadsListener(RecordingListener):
    """Records which thread each callback came from, and the bytes each product has."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def offlining_bytes(self, product: MediaProduct, done: int, total: int | None) -> None:
        with self._lock:
            self.bytes[product.key] = done
            self.threads.add(threading.current_thread().name)

    def offlining_retrying(self, product: MediaProduct, *args: Any) -> None:
        with self._lock:
            self.events.append(("retrying", product.key))


# Tests that watch progress while it happens use the real monotonic clock: the listener hears
# bytes at most every 0.1 s of it (the fake clock of make_engine never moves on its own).


def _product(sim: NetSim, name: str) -> MediaProduct:
    return MediaProduct(ProductType.FILE, name, url=sim.url(f"/{name}"))


def _run_in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["results"] = target()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_failing_product_never_stops_the_others_and_results_keep_the_order(
    make_engine, sim: NetSim
) -> None:
    bodies = {name: bytes([i]) * 50_000 for i, name in enumerate(["a", "b", "c", "d"])}
    for name, body in bodies.items():
        if name != "b":
            sim.add(f"/{name}", Resource(body))
    listener = ThreadsListener()
    engine = make_engine(listener, jobs=3, monotonic=time.monotonic)
    products = [_product(sim, name) for name in bodies]

    results = engine.offline_products(products)

    assert [r.product.key for r in results] == [p.key for p in products]
    assert isinstance(results[1].error, HTTPStatusError)
    assert [r.error for r in results if r.product.key != "file:b"] == [None, None, None]
    for name in ("a", "c", "d"):
        assert engine.get_offline_state(_product(sim, name)).name == "OFFLINED_AND_VALID"
    # callbacks came from the workers, not from the calling thread
    assert listener.threads and all(t.startswith("offline-cli-download") for t in listener.threads)


def test_cancelling_one_download_never_cuts_another_on_the_same_host(
    make_engine, sim: NetSim, home: Path
) -> None:
    """Downloads share the client's connections to a host: the cancel of one (a delete
    from another process) shuts down only its own connection, even while it is still
    waiting for its response headers."""
    sim.add("/held", Resource(b"h" * SIZE, faults=[Fault("hold", stall_s=4)]))
    sim.add("/busy", Resource(b"b" * SIZE, rate=400_000))
    listener = ThreadsListener()
    engine = make_engine(listener, jobs=2, monotonic=time.monotonic)
    held, busy = _product(sim, "held"), _product(sim, "busy")
    thread, out = _run_in_thread(lambda: engine.offline_products([held, busy]))
    assert wait_for(lambda: listener.bytes.get(busy.key, 0) > 50_000, 10)
    assert wait_for(lambda: len(sim.requests("/held")) == 0 and sim.active == 2, 10)

    other_process = Store(home / "offline.db")
    try:
        assert other_process.downloads.request_cancel(held.key) == 1
    finally:
        other_process.close()
    thread.join(30)
    assert not thread.is_alive()
    held_result, busy_result = out["results"]
    assert isinstance(held_result.error, DownloadCancelled)
    assert busy_result.error is None
    assert ("retrying", busy.key) not in listener.events  # its connection was never cut
    assert wait_for(lambda: len(sim.requests("/busy")) >= 1, 10)
    assert [s.range for s in sim.requests("/busy")] == [None]  # one request, never resumed


def test_interrupt_pauses_every_running_download_and_starts_no_other(
    make_engine, sim: NetSim, home: Path
) -> None:
    names = ["p1", "p2", "p3", "p4", "p5"]
    for name in names:
        sim.add(f"/{name}", Resource(name.encode() * (SIZE // 2), rate=200_000))
    listener = ThreadsListener()
    engine = make_engine(listener, jobs=3, monotonic=time.monotonic)
    products = [_product(sim, name) for name in names]
    thread, out = _run_in_thread(lambda: engine.offline_products(products))
    assert wait_for(lambda: sum(1 for v in listener.bytes.values() if v > 20_000) == 3, 10)

    engine.interrupt()
    thread.join(30)
    assert not thread.is_alive()

    results = out["results"]
    assert [type(r.error).__name__ for r in results] == ["DownloadInterrupted"] * 5, results
    states = {p.key: engine.store.latest_download(p.key) for p in products}
    running = [k for k, e in states.items() if e is not None]
    assert len(running) == 3  # the two queued ones never started
    for key in running:
        entry = states[key]
        assert entry is not None and entry.state is DownloadState.PAUSED
    partials = list((home / "partial").iterdir())
    assert len(partials) == 3 and all(p.stat().st_size > 0 for p in partials)

    resumed = make_engine(jobs=3).resume()
    assert sorted(r.product.key for r in resumed) == sorted(running)
    assert all(r.error is None for r in resumed)


@pytest.mark.parametrize("jobs", [1, 4])
def test_rate_limit_is_shared_not_per_download(make_engine, sim: NetSim, jobs: int) -> None:
    """Each download's share of a small budget is never mistaken for a stall (the speed
    floor is lowered under a limit), whatever the number of jobs."""
    names = ["r1", "r2", "r3", "r4"]
    for name in names:
        sim.add(f"/{name}", Resource(name.encode() * 8_000))
    engine = make_engine(jobs=jobs, limit_rate=4096, min_speed=1024)
    effective = engine.runtime.settings
    assert effective.min_speed <= 4096 // (2 * jobs)
    assert engine.runtime.limiter is not None and engine.runtime.limiter.rate == 4096


def test_progress_of_all_running_downloads_is_written_in_one_flush(home: Path) -> None:
    from offline_cli.paths import Layout
    from offline_cli.runtime import Cancel, ProgressBoard, Watchdog

    layout = Layout(home)
    layout.ensure()
    store = Store(layout.database)
    watchdog = Watchdog()
    try:
        board = ProgressBoard(store, watchdog)
        entries = [
            new_download(store, f"file:{n}", state=DownloadState.IN_PROGRESS) for n in range(3)
        ]
        cancels = [Cancel() for _ in entries]
        ticks: list[str] = []
        removers = [
            board.add(e.id, c, lambda e=e: ticks.append(e.id))
            for e, c in zip(entries, cancels, strict=True)
        ]
        for n, entry in enumerate(entries):
            board.report(entry.id, 100 * (n + 1), 1000)
        store.downloads.request_cancel("file:1")  # what `delete` in another process does

        board.flush()  # what the watchdog does every half second

        assert [store.get_download(e.id).bytes_done for e in entries] == [100, 200, 300]  # type: ignore[union-attr]
        assert [c.reason for c in cancels] == [None, Cancel.CANCELLED, None]
        assert sorted(ticks) == sorted(e.id for e in entries)
        for remove in removers:
            remove()
        board.report(entries[0].id, 999, 1000)  # no longer running: never written
        board.flush()
        assert store.get_download(entries[0].id).bytes_done == 100  # type: ignore[union-attr]
    finally:
        watchdog.close()
        store.close()


@pytest.mark.parametrize("jobs", [1, 3])
def test_connections_are_reused_per_host(make_engine, sim: NetSim, jobs: int) -> None:
    """A body read to its end leaves its connection in the pool: one connection per job
    (a new TCP, and over https a new TLS handshake, for every product otherwise)."""
    names = [f"k{n}" for n in range(9)]
    for name in names:
        sim.add(f"/{name}", Resource(name.encode() * 5_000))
    engine = make_engine(jobs=jobs)

    results = engine.offline_products([_product(sim, name) for name in names])

    assert [r.error for r in results] == [None] * len(names)
    assert 1 <= sim.connections <= jobs


def test_interrupt_stops_one_call_and_the_next_starts_afresh(make_engine, sim: NetSim) -> None:
    sim.add("/slow", Resource(b"s" * SIZE, rate=200_000))
    sim.add("/next", Resource(b"n" * 10_000))
    listener = ThreadsListener()
    engine = make_engine(listener, jobs=2, monotonic=time.monotonic)
    slow = _product(sim, "slow")
    thread, out = _run_in_thread(lambda: engine.offline(slow))
    assert wait_for(lambda: listener.bytes.get(slow.key, 0) > 20_000, 10)

    engine.interrupt()
    thread.join(30)
    # the single-product API raises an OfflineError, not an internal signal
    assert isinstance(out.get("error"), DownloadInterrupted), out

    results = engine.offline_products([_product(sim, "next")])
    assert [r.error for r in results] == [None]
    assert engine.offline(slow) is True  # resumed from its bytes, not refused


def test_bytes_past_one_answer_never_fail_the_next_product_on_the_connection(
    make_engine, sim: NetSim
) -> None:
    """A server that sends more than its Content-Length (a file that grew while served)
    leaves those bytes on the kept-alive connection: the next product's request, which
    reuses it, reads them as its status line. That product is retried on a new connection,
    never failed for good (curl drops such a connection too: "Excess found")."""
    sim.add("/grew", Resource(b"g" * 20_000, faults=[Fault("extra")]))
    sim.add("/next", Resource(b"n" * 20_000))
    listener = ThreadsListener()
    engine = make_engine(listener, jobs=1)

    results = engine.offline_products([_product(sim, "grew"), _product(sim, "next")])

    assert [r.error for r in results] == [None, None]
    assert engine.store.get_offlined("file:next").size == 20_000  # type: ignore[union-attr]


def test_a_sweep_keeps_the_files_of_downloads_the_database_says_are_not_over(
    make_engine, sim: NetSim, home: Path
) -> None:
    """cleanup and delete-all ask again, file by file, just before removing: a download
    that started (or a commit that landed) after their first read keeps its files."""
    from offline_cli.ownership import StoreFiles
    from offline_cli.paths import Layout

    sim.add("/done", Resource(b"d" * 10_000))
    engine = make_engine()
    engine.offline(_product(sim, "done"))
    layout = Layout(home)
    files = StoreFiles(layout, engine.store)
    stored = engine.store.get_offlined("file:done")
    assert stored is not None
    running = new_download(engine.store, "file:running", state=DownloadState.IN_PROGRESS)
    partial = Path(running.partial_media_path or "")
    committed_elsewhere = layout.final_media_path("file:done", running.id)

    assert files.in_use(Path(stored.media_path))  # committed and named by its product
    assert files.in_use(partial)  # a download that is not over
    assert files.in_use(committed_elsewhere)  # its commit may be in flight
    engine.store.downloads.transition(running.id, DownloadState.CANCELLED)
    assert not files.in_use(partial)  # cancelled: an orphan
    assert not files.in_use(layout.partial_dir / "not-a-download.part")


def test_downloads_at_once_count_each_others_space(make_engine, sim: NetSim) -> None:
    """Three 300 kB downloads at once on a disk with room for about two: the third is
    refused before it writes (not all three failing half-way when the disk fills)."""
    from offline_cli.errors import DiskFull

    for name in ("s1", "s2", "s3"):
        sim.add(f"/{name}", Resource(name.encode() * 150_000, rate=600_000))
    free = 2 * 300_000 + 262_144 + 100_000  # two files, the database's reserve, and a bit
    engine = make_engine(jobs=3, disk_free=lambda _path: free)

    results = engine.offline_products([_product(sim, n) for n in ("s1", "s2", "s3")])

    failed = [r for r in results if r.error is not None]
    assert len(failed) == 1 and isinstance(failed[0].error, DiskFull), results
    assert "not enough disk space" in str(failed[0].error)
