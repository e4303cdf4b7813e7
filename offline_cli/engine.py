"""OfflineEngine: the facade that wires the store, the runtime and the downloads together.

It decides *which* products are downloaded and *when* (locks, a bounded pool of workers,
what to resume); the parts it wires do the work: download.py (one product's download),
maintenance.py (cleanup, validation, health), store.py (the database). httpx is imported
only when something is downloaded, so read commands stay light.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import Timeout

from offline_cli.config import Settings, load_settings
from offline_cli.credentials import CredentialVault
from offline_cli.download import RETRYABLE_KINDS, RUNNABLE_STATES, Downloader
from offline_cli.errors import (
    BusyError,
    ChecksumMismatch,
    DownloadCancelled,
    DownloadError,
    DownloadInterrupted,
    OfflineError,
    PermanentError,
    StorageError,
    StoreUnwritable,
    UsageError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.locks import LOCK_POLL_S, LOCK_PROBE_GRACE_S, ProductLocks
from offline_cli.models import (
    LICENSE_EXPIRED,
    DownloadEntry,
    DownloadState,
    ErrorKind,
    MediaProduct,
    OfflinedEntry,
    OfflineState,
    ProductType,
)
from offline_cli.ownership import StoreFiles
from offline_cli.paths import Layout, default_home, safe_remove, safe_remove_tree
from offline_cli.ratelimit import RateLimiter
from offline_cli.retry import RetryPolicy
from offline_cli.runtime import (
    Cancel,
    FaultHook,
    RunInterrupted,
    Runtime,
    Watchdog,
    no_faults,
)
from offline_cli.store import ProductRows, Store
from offline_cli.telemetry import Telemetry

if TYPE_CHECKING:
    from offline_cli.maintenance import CleanupReport, DownloadHealthReport, ValidationResult
    from offline_cli.network import NetworkMonitor
    from offline_cli.transfer import HttpClient, HttpTransport

log = logging.getLogger("offline_cli")

# How long delete waits for a running download in another process to stop.
CANCEL_WAIT_S = 10.0
LAST_MAINTENANCE_KEY = "last_maintenance_at"
# How often a thread that waits (for another process's lock, for workers) looks up.
PROGRESS_WAIT_S = 0.25


class Outcome(enum.Enum):
    """What ``offline_product`` did."""

    DOWNLOADED = "downloaded"
    ALREADY_OFFLINE = "already offline"
    DOWNLOADED_BY_OTHER = "downloaded by another process"


@dataclass(frozen=True)
class ProductStatus:
    """One line of `state`: a product's OfflineState and its latest download entry."""

    key: str
    state: OfflineState
    download: DownloadEntry | None


@dataclass(frozen=True)
class ProductResult:
    """What became of one product of ``offline_products`` or ``resume``."""

    product: MediaProduct
    outcome: Outcome | None
    error: OfflineError | None


ResumeResult = ProductResult  # the name of earlier releases


class OfflineEngine:
    """The offline store of one home folder, and everything that downloads into it."""

    def __init__(
        self,
        home: str | Path | None = None,
        listener: OfflineEngineListener | None = None,
        *,
        settings: Settings | None = None,
        transport: HttpTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        disk_free: Callable[[Path], int] | None = None,
        network_monitor: NetworkMonitor | None = None,
        fault_hook: FaultHook | None = None,
    ) -> None:
        """``sleep`` None waits on each download's cancel event (so a cancel or Ctrl-C ends
        a backoff at once); tests inject a fake sleep and clock. ``fault_hook`` is a test
        seam: called at named points of a download (see runtime.FaultHook).

        Listener callbacks come from the thread that runs each download: with more than
        one job (``settings.jobs``), from worker threads, several at once.
        """
        self.layout = Layout(Path(home).expanduser() if home is not None else default_home())
        self.settings = settings if settings is not None else load_settings(self.layout.home)
        self.listener = listener or OfflineEngineListener()
        self._transport = transport
        self._sleep = sleep
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self._network_monitor = network_monitor
        self._fault = fault_hook or no_faults
        self._store: Store | None = None
        self._runtime: Runtime | None = None
        self._maintenance_checked = False
        self._http: HttpClient | None = None
        self._setup_lock = threading.RLock()  # the client, runtime and maintenance, once
        # hosts that honour If-Range only with a date (transfer.py): shared by all products
        self.date_if_range_hosts: set[str] = set()
        # Paths a damaged row named that are not files of the store (offline.db, another
        # product's media): left in place and reported, key -> what was refused.
        self.foreign_paths: dict[str, str] = {}
        self._vault: CredentialVault | None = None
        self.locks = ProductLocks(self.layout, self._read_only_reason)
        self._limiter = (
            RateLimiter(self.settings.limit_rate, monotonic=monotonic)
            if self.settings.limit_rate
            else None
        )
        # The downloads running now (their cancel signals), and whether Ctrl-C or SIGTERM
        # stopped this engine: no download starts after that.
        self._running: set[Cancel] = set()
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        # One thread watches every download's cancel requests and header deadlines; its
        # database connection is its own (closed as it ends).
        self._watchdog = Watchdog(on_exit=self._close_thread_connection)

    # -- infrastructure -------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self) -> Store:
        """The store, read-only when the home cannot be written but the database is there.

        A full disk or a read-only home must not stop `state`, `health` or `validate`; a
        command that writes then fails at its first write, naming why.
        """
        try:
            self.layout.ensure()
            return Store(
                self.layout.database, busy_timeout_s=self.settings.db_timeout, clock=self._clock
            )
        except StorageError as exc:
            unwritable = isinstance(exc, StoreUnwritable) or isinstance(exc.__cause__, OSError)
            if not unwritable or not self.layout.database.is_file():
                raise
            try:
                return Store(
                    self.layout.database,
                    busy_timeout_s=self.settings.db_timeout,
                    clock=self._clock,
                    read_only_reason=str(exc),
                )
            except StorageError:
                raise exc from None

    def _read_only_reason(self) -> str | None:
        return self._store.read_only_reason if self._store is not None else None

    @property
    def runtime(self) -> Runtime:
        """What the parts of a download use, wired once (again after the store reopens)."""
        with self._setup_lock:
            store = self.store
            if self._runtime is None or self._runtime.store is not store:
                self._runtime = Runtime(
                    settings=self._effective_settings(),
                    layout=self.layout,
                    store=store,
                    vault=self.vault,
                    files=StoreFiles(self.layout, store, self.foreign_paths),
                    locks=self.locks,
                    telemetry=Telemetry(
                        store,
                        metrics=self.settings.enhanced_download_management,
                        monotonic=self._monotonic,
                    ),
                    listener=self.listener,
                    policy=RetryPolicy(
                        retries=self.settings.retries if self.settings.download_retry else 0,
                        backoff_base=self.settings.backoff_base,
                        backoff_max=self.settings.backoff_max,
                        retry_after_max=self.settings.retry_after_max,
                    ),
                    network_monitor=self._monitor,
                    watchdog=self._watchdog,
                    clock=self._clock,
                    monotonic=self._monotonic,
                    sleep=self._sleep,
                    rand=self._rand,
                    disk_free=self._disk_free,
                    limiter=self._limiter,
                    date_if_range_hosts=self.date_if_range_hosts,
                    fault=self._fault,
                )
            return self._runtime

    def _effective_settings(self) -> Settings:
        """The settings the downloads use: under a rate limit shared by N jobs a download
        may get limit/N, so the speed floor must not call that share a stall."""
        settings = self.settings
        if settings.limit_rate and settings.min_speed:
            share = settings.limit_rate // (2 * settings.jobs)
            if share < settings.min_speed:
                return dataclasses.replace(settings, min_speed=max(1, share))
        return settings

    @property
    def skipped_entries(self) -> dict[str, str]:
        """Products whose database rows could not be read (and were skipped): key -> why."""
        return dict(self._store.bad_rows) if self._store is not None else {}

    def flush_metrics(self) -> None:
        """Write the metric rows still buffered (close does it too)."""
        if self._runtime is not None:
            self._runtime.telemetry.flush()

    def _close_thread_connection(self) -> None:
        if self._store is not None:
            self._store.close()  # this thread's connection only (peewee's are per thread)

    def close(self) -> None:
        self.flush_metrics()
        self._watchdog.close()
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> OfflineEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_running_elsewhere(self, product_key: str) -> bool:
        """True when a live process (or another thread) holds the product's download lock."""
        return self.locks.is_running_elsewhere(product_key)

    def _client(self) -> HttpClient:
        """One HTTP client per engine: connections and the TLS setup are shared by products
        (and by the threads of ``-j``: httpx's pool is thread-safe)."""
        with self._setup_lock:
            if self._http is None:
                self._http = self._new_client()
            return self._http

    def _new_client(self) -> HttpClient:
        from offline_cli.transfer import make_client

        return make_client(
            stall_timeout_s=self.settings.stall_timeout,
            connect_timeout_s=self.settings.connect_timeout,
            transport=self._transport,
            connections=self.settings.jobs,
        )

    def _monitor(self) -> NetworkMonitor:
        """The injected monitor, else a new one for each wait: the observers of one are the
        one download waiting on it, not every download that waits at the same time."""
        if self._network_monitor is not None:
            return self._network_monitor
        from offline_cli.network import NetworkMonitor

        return NetworkMonitor(sleep=self._sleep or time.sleep, clock=self._monotonic)

    @property
    def vault(self) -> CredentialVault:
        """Full URLs with credentials live here (0600), never in the database or logs."""
        with self._setup_lock:
            if self._vault is None:
                self._vault = CredentialVault(self.layout.credentials_file)
            return self._vault

    def _event(self, event: str, **fields: Any) -> None:
        self.runtime.telemetry.event(event, **fields)

    def _record(self, event: str, **fields: Any) -> None:
        self.runtime.telemetry.record(event, **fields)

    # -- state ----------------------------------------------------------------------------

    def get_offline_state(self, product: MediaProduct) -> OfflineState:
        return self._state_of(self.store.get_offlined(product.key))

    def _state_of(self, entry: OfflinedEntry | None) -> OfflineState:
        if entry is None:
            return OfflineState.NOT_OFFLINED
        if self._quick_valid(entry) is None:
            return OfflineState.OFFLINED_AND_VALID
        return OfflineState.OFFLINED_BUT_NOT_VALID

    def product_statuses(
        self, products: Sequence[MediaProduct] | None = None, *, with_downloads: bool = False
    ) -> list[ProductStatus]:
        """The state of ``products`` (else of every known product), in a few queries.

        What `state` prints: scripts call it in loops, so it reads in bulk and touches
        neither the network nor the credential vault.
        """
        store = self.store
        keys = [p.key for p in products] if products is not None else store.known_product_keys()
        if products is None or len(keys) > 20:
            offlined = store.offlined_by_key()
            latest = store.latest_download_by_key() if with_downloads else {}
        else:
            offlined = {k: e for k in keys if (e := store.get_offlined(k)) is not None}
            latest = (
                {k: d for k in keys if (d := store.latest_download(k)) is not None}
                if with_downloads
                else {}
            )
        return [
            ProductStatus(k, self._state_of(offlined.get(k)), self._as_read(latest.get(k)))
            for k in keys
        ]

    def _as_read(self, entry: DownloadEntry | None) -> DownloadEntry | None:
        """A running download whose owner is gone (kill -9, power loss) reads as PAUSED,
        what the next maintenance pass or `resume` makes of it."""
        if entry is None or entry.state not in (DownloadState.PENDING, DownloadState.IN_PROGRESS):
            return entry
        if self.locks.owner_alive(entry.product_key) is not False:
            return entry
        return dataclasses.replace(
            entry, state=DownloadState.PAUSED, last_error=entry.last_error or "owner process died"
        )

    def _quick_valid(self, entry: OfflinedEntry) -> str | None:
        """None when valid by the cheap check (size and mtime), else the reason."""
        if entry.invalid_reason:
            return entry.invalid_reason
        owned: dict[str, Path] = {}
        for name, raw in (("media", entry.media_path), ("license", entry.license_path)):
            if raw is None:
                continue
            # Only the shape here (this check runs for every product `state` lists): the
            # files are looked at, never read; validate proves whose folder it is.
            path = self.layout.own_file(
                raw, entry.product_key, partial=False, folder_ok=lambda folder: True
            )
            if path is None:
                return f"{name} path is not a file of the store (not read)"
            owned[name] = path
        media = owned["media"]
        if media.parent.is_symlink():
            # A folder planted as a link: its files are not ours, whatever their sizes say.
            return "media folder is a symbolic link (not followed)"
        try:
            info = os.stat(media, follow_symlinks=False)
        except OSError:
            return "media file missing"
        if info.st_size != entry.size or info.st_mtime_ns != entry.mtime_ns:
            return "media file changed"
        if "license" in owned:
            try:
                license_info = os.stat(owned["license"], follow_symlinks=False)
            except OSError:
                return "license file missing"
            if license_info.st_size != entry.license_size:
                return "license file changed"
        if entry.license_expires_at is not None and entry.license_expires_at <= self._clock():
            return LICENSE_EXPIRED
        return None

    def known_products(self) -> list[MediaProduct]:
        products: list[MediaProduct] = []
        for key in self.store.known_product_keys():
            products.append(self.product_for_key(key))
        return products

    def product_for_key(self, key: str) -> MediaProduct:
        """The product a stored key names, with the URLs the store remembers."""
        offlined = self.store.get_offlined(key)
        if offlined is not None:
            return MediaProduct(
                offlined.product_type,
                offlined.product_id,
                url=self.vault.reveal(offlined.source_url),
                license_url=self.vault.reveal(offlined.license_url),
            )
        download = self.store.latest_download(key)
        if download is not None:
            return self._product_to_resume(download)
        if "://" in key:
            return MediaProduct(ProductType.FILE, key, url=self.vault.reveal(key))
        type_name, _, product_id = key.partition(":")
        return MediaProduct(ProductType(type_name), product_id)

    # -- offline ---------------------------------------------------------------------------

    def offline(self, product: MediaProduct) -> bool:
        """Download ``product``; False when it was already OFFLINED_AND_VALID.

        Raises a DownloadError subclass when the download fails for good (the listener hears
        ``offlining_failed`` first).
        """
        try:
            return self.offline_product(product) is Outcome.DOWNLOADED
        finally:
            self.flush_metrics()

    def offline_product(self, product: MediaProduct, *, wait: bool = True) -> Outcome:
        """Download one product in this thread (see ``offline_products`` for many)."""
        self.check_resolvable([product])  # bad input changes nothing: check before any work
        self.maybe_run_maintenance()
        try:
            lock = self.locks.lock(product.key)
            # A short grace: cleanup and maintenance probe locks for an instant, and that
            # must not read as another download.
            lock.acquire(timeout=LOCK_PROBE_GRACE_S, poll_interval=LOCK_POLL_S / 5)
            waited = False
        except Timeout:
            if not wait:
                raise self._busy(
                    product.key, "run again without --no-wait to wait for it"
                ) from None
            entry = self.store.latest_download(product.key)
            self.listener.offlining_waiting_for_other(product, entry.owner_pid if entry else None)
            self._event("waiting_for_other_process", product=product.key)
            while True:
                if self._stopping.is_set():
                    raise RunInterrupted() from None
                with suppress(Timeout):
                    lock.acquire(timeout=PROGRESS_WAIT_S, poll_interval=LOCK_POLL_S)
                    break
            waited = True
        except OSError as exc:  # after Timeout, which is an OSError too
            raise self.locks.failed(product.key, exc) from exc
        try:
            if waited:
                outcome = self._outcome_of_other(product)
                if outcome is not None:
                    return outcome
            if self.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID:
                self._check_expected_sha256(product)
                return Outcome.ALREADY_OFFLINE
            self._download(product)
            return Outcome.DOWNLOADED
        finally:
            lock.release()

    def _download(self, product: MediaProduct) -> None:
        """Download one product (we hold its lock), stoppable through its cancel signal."""
        cancel = Cancel()
        with self._running_lock:
            if self._stopping.is_set():
                raise RunInterrupted()
            self._running.add(cancel)
        try:
            Downloader(self.runtime, self._client).download(product, cancel)
        finally:
            with self._running_lock:
                self._running.discard(cancel)

    def interrupt(self) -> None:
        """Stop every download of this engine, keeping its bytes (PAUSED), and start no
        more: what Ctrl-C and SIGTERM do. Safe to call from any thread."""
        with self._running_lock:
            self._stopping.set()
            running = list(self._running)
        for cancel in running:
            cancel.set(Cancel.INTERRUPTED)

    def offline_products(
        self,
        products: Sequence[MediaProduct],
        *,
        wait: bool = True,
        on_result: Callable[[ProductResult], None] | None = None,
    ) -> list[ProductResult]:
        """Download ``products``, up to ``settings.jobs`` at once; one's failure never stops
        the others. ``on_result`` hears each outcome as it comes (in the calling thread).

        Ctrl-C or SIGTERM in the calling thread stops every running download (saved as
        PAUSED), starts no other, and is raised again once they all have stopped.
        """
        self.check_resolvable(products)
        self.maybe_run_maintenance()
        results: dict[int, ProductResult] = {}

        def done(index: int, result: ProductResult) -> None:
            results[index] = result
            if on_result is not None:
                on_result(result)

        try:
            self._offline_all(products, wait, done)
        finally:
            self.flush_metrics()
        return [results[i] for i in sorted(results)]

    def _offline_all(
        self,
        products: Sequence[MediaProduct],
        wait: bool,
        done: Callable[[int, ProductResult], None],
    ) -> None:
        jobs = min(self.settings.jobs, len(products))
        if jobs <= 1:
            for index, product in enumerate(products):
                done(index, self._offline_one(product, wait))
            return
        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="offline-cli-download")
        futures: dict[Future[ProductResult], int] = {}
        try:
            futures = {
                pool.submit(self._offline_in_worker, product, wait): index
                for index, product in enumerate(products)
            }
            pending = set(futures)
            while pending:
                # A timeout, so Ctrl-C reaches this thread even while nothing finishes.
                finished, pending = wait_for(
                    pending, timeout=PROGRESS_WAIT_S, return_when=FIRST_COMPLETED
                )
                for future in finished:
                    done(futures[future], future.result())
        except BaseException:
            self.interrupt()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _offline_in_worker(self, product: MediaProduct, wait: bool) -> ProductResult:
        # This worker's database connection stays open for its next product; it closes
        # when the pool ends and the thread's state (peewee's connection) goes with it.
        return self._offline_one(product, wait)

    def _offline_one(self, product: MediaProduct, wait: bool) -> ProductResult:
        try:
            if self._stopping.is_set():
                raise RunInterrupted()
            return ProductResult(product, self.offline_product(product, wait=wait), None)
        except RunInterrupted:
            interrupted = DownloadInterrupted(
                "interrupted; saved as PAUSED", product=product.key, hint="run `resume`"
            )
            return ProductResult(product, None, interrupted)
        except OfflineError as exc:
            return ProductResult(product, None, exc)

    def _busy(self, product_key: str, hint: str) -> BusyError:
        """--no-wait met a download another live process runs: one message for both commands."""
        entry = self.store.latest_download(product_key)
        pid = f" (pid {entry.owner_pid})" if entry and entry.owner_pid else ""
        return BusyError(f"another process is downloading it{pid}", product=product_key, hint=hint)

    def check_resolvable(self, products: Sequence[MediaProduct]) -> None:
        """UsageError when a product has no URL and there is no playback-info source."""
        self.check_resolvable_with(self.settings, products)

    @staticmethod
    def check_resolvable_with(settings: Settings, products: Sequence[MediaProduct]) -> None:
        for product in products:
            if product.url is None and settings.source is None:
                raise UsageError(
                    f"no URL and no playback-info source for {product.key}",
                    product=product.key,
                    hint="give a URL, --source TEMPLATE, $OFFLINE_CLI_SOURCE or `source` in config",
                )

    def _check_expected_sha256(self, product: MediaProduct) -> None:
        """An already stored product must still match a --sha256 the user gave now."""
        stored = self.store.get_offlined(product.key)
        if product.sha256 and stored is not None and stored.sha256 != product.sha256.lower():
            raise ChecksumMismatch(
                f"checksum mismatch: stored copy has SHA-256 {stored.sha256}, "
                f"expected {product.sha256}",
                product=product.key,
                hint="delete it (or validate --repair) to fetch it again",
            )

    def _outcome_of_other(self, product: MediaProduct) -> Outcome | None:
        """After waiting: report what the other process achieved, or None to carry on."""
        if self.get_offline_state(product) is OfflineState.OFFLINED_AND_VALID:
            self._check_expected_sha256(product)
            self.listener.offlining_started(product)
            self.listener.offlining_completed(product)
            return Outcome.DOWNLOADED_BY_OTHER
        entry = self.store.latest_download(product.key)
        if entry is None:
            # Deleted while we waited: the other download was cancelled.
            error: OfflineError = DownloadCancelled(
                "the download this one waited for was cancelled", product=product.key
            )
        elif entry.state is DownloadState.CANCELLED:
            error = DownloadCancelled("the download was cancelled", product=product.key)
        elif entry.state is DownloadState.FAILED and entry.error_kind is ErrorKind.PERMANENT:
            error = PermanentError(entry.last_error or "failed", product=product.key)
        elif entry.state is DownloadState.FAILED:
            # Its retries were used up just now: report that, rather than start another round.
            error = DownloadError(
                entry.last_error or "failed", product=product.key, hint="run `resume` later"
            )
        else:
            return None  # interrupted (PAUSED) or its owner died: continue it here
        self.listener.offlining_started(product)
        self.listener.offlining_failed(product, error)
        raise error

    def own_final_file(self, raw: str | None, product_key: str) -> Path | None:
        """The committed file ``raw`` names when it is one of ``product_key``'s (StoreFiles)."""
        return self.runtime.files.own_final_file(raw, product_key)

    def report_foreign_path(self, product_key: str, column: str, raw: str) -> None:
        self.runtime.files.report_foreign_path(product_key, column, raw)

    # -- delete ------------------------------------------------------------------------------

    def delete_offline(self, product: MediaProduct) -> bool:
        """Remove ``product``: cancel a running download, then its files and entries."""
        removed = self._delete_key(product.key)
        if removed:
            self.listener.offlined_deleted(product)
        return removed

    def _delete_key(self, key: str) -> bool:
        """Delete one product: its rows first, in one transaction, then its files.

        A locked or unwritable database changes nothing. Only when the disk is full (SQLite
        needs a few free pages to record anything) are the files removed first, to make that
        room; if the record still fails, `state` reads the product as not valid and a second
        `delete` finishes it.
        """
        cancelled_running = False
        try:
            lock = self.locks.lock(key)
            lock.acquire(timeout=LOCK_PROBE_GRACE_S, poll_interval=LOCK_POLL_S / 5)
        except Timeout:
            cancelled_running = True
            self.store.downloads.request_cancel(key)
            self._event("cancel_requested", product=key)
            try:
                lock.acquire(timeout=CANCEL_WAIT_S, poll_interval=LOCK_POLL_S)
            except Timeout:
                # Exit 1, not 3: 3 means --no-wait. The cancel request stays, so the download
                # still stops when it can.
                raise DownloadError(
                    f"the running download did not stop within {CANCEL_WAIT_S:g}s",
                    product=key,
                    hint="it has been asked to cancel; run delete again in a moment",
                ) from None
        except OSError as exc:  # after Timeout, which is an OSError too
            raise self.locks.failed(key, exc) from exc
        try:
            rows = self.store.product_rows(key)
            if rows.empty:
                return False
            # The download this delete cancelled keeps its CANCELLED entry (no files) as a
            # record; cleanup removes it after the retention age.
            keep = rows.cancelled_ids if cancelled_running else set()
            try:
                self.store.forget_product(key, keep=keep)
            except StoreUnwritable as exc:
                if not exc.disk_full:
                    raise
                self._remove_product_files(key, rows)
                self._reopen_store().forget_product(key, keep=keep)
            self._remove_product_files(key, rows)
            try:
                self.vault.forget(list(rows.urls))
            except OSError as exc:  # a full disk: the vault is rewritten whole
                log.warning("%s: credentials not forgotten yet: %s", key, exc)
            self._event("product_deleted", product=key)
            return True
        finally:
            lock.release()

    def _remove_product_files(self, key: str, rows: ProductRows) -> None:
        """Remove a product's files (only files of the store that are this product's); what
        fails is an orphan for cleanup, since no entry owns it any more."""
        try:
            for raw in rows.paths:
                path = self.own_final_file(raw, key)
                if path is None:
                    partial = self.layout.own_file(raw, key, partial=True)
                    owned = partial is not None and partial.name[:32] in rows.download_ids
                    path = partial if owned else None
                if path is None:
                    self.report_foreign_path(key, "path", raw)
                else:
                    safe_remove(self.layout, path)
            safe_remove_tree(self.layout, self.layout.product_dir(key))
        except OSError as exc:
            log.warning("%s: files not removed yet: %s", key, exc)

    def _reopen_store(self) -> Store:
        if self._store is not None:
            self._store.close()
            self._store = None
        return self.store

    def delete_all_offlined_media_products(self) -> bool:
        """Remove every product, its files and entries; never follows a link out of home."""
        keys = self.store.known_product_keys()
        stuck: list[str] = []
        for key in keys:
            try:
                self._delete_key(key)
            except DownloadError:
                stuck.append(key)  # carry on with the others, as `delete` does
        if stuck:
            # A download that has not stopped yet still writes its partial file and reads the
            # vault: sweeping the folders now would pull them from under it.
            raise DownloadError(
                f"{len(stuck)} running download(s) did not stop within {CANCEL_WAIT_S:g}s and "
                f"were not deleted: {', '.join(stuck)}; everything else was",
                hint="they have been asked to cancel; run delete-all again in a moment",
            )
        # Anything else in the store and partial folders is an orphan of nothing.
        for folder in (self.layout.store_dir, self.layout.partial_dir):
            if folder.is_symlink():
                folder.unlink()
                continue
            if folder.exists():
                for child in list(folder.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        safe_remove_tree(self.layout, child)
                    else:
                        safe_remove(self.layout, child)
        safe_remove(self.layout, self.layout.credentials_file)
        self.listener.all_offlined_media_products_deleted()
        self._event("all_deleted", count=len(keys))
        return True

    # -- resume ----------------------------------------------------------------------------------

    def resumable_products(
        self, products: Sequence[MediaProduct] | None = None
    ) -> list[MediaProduct]:
        """Interrupted, paused and retryable failed downloads (of ``products``, else all)."""
        wanted = {p.key for p in products} if products is not None else None
        found: dict[str, MediaProduct] = {}
        for entry in self.store.list_downloads([*RUNNABLE_STATES, DownloadState.FAILED]):
            if wanted is not None and entry.product_key not in wanted:
                continue
            if entry.state is DownloadState.FAILED and entry.error_kind not in RETRYABLE_KINDS:
                continue
            latest = self.store.latest_download(entry.product_key)
            if latest is None or latest.id != entry.id:
                continue
            found[entry.product_key] = self._product_to_resume(entry)
        return list(found.values())

    def _product_to_resume(self, entry: DownloadEntry) -> MediaProduct:
        if entry.from_source and self.settings.source:
            # Ask the source again: signed URLs and license expiries may have changed. The
            # same file (same redacted URL) is still resumed from its bytes on disk.
            # (the source's current checksum applies, not the one it gave last time)
            return MediaProduct(entry.product_type, entry.product_id)
        expires = entry.license_expires_at
        return MediaProduct(
            entry.product_type,
            entry.product_id,
            url=self.vault.reveal(entry.media_url),
            license_url=self.vault.reveal(entry.license_url),
            sha256=entry.expected_sha256,
            size=entry.expected_size,
            license_expires_at=datetime.fromtimestamp(expires, UTC) if expires else None,
        )

    def resume(
        self,
        products: Sequence[MediaProduct] | None = None,
        *,
        wait: bool = True,
        on_result: Callable[[ProductResult], None] | None = None,
    ) -> list[ProductResult]:
        """Continue every resumable download (up to ``settings.jobs`` at once); a download
        another process runs is skipped with --no-wait and waited for otherwise."""
        self.maybe_run_maintenance()
        todo: list[MediaProduct] = []
        skipped: list[ProductResult] = []
        for product in self.resumable_products(products):
            if not wait and self.is_running_elsewhere(product.key):
                busy = self._busy(product.key, "left to that process (exit 3: skipped)")
                skipped.append(ProductResult(product, None, busy))
            else:
                todo.append(product)
        for result in skipped:
            if on_result is not None:
                on_result(result)
        return skipped + self.offline_products(todo, wait=wait, on_result=on_result)

    # -- maintenance, validation, health (see maintenance.py) -------------------------------------

    def check_store(self) -> None:
        """StorageError when SQLite's quick check finds the database damaged."""
        self.store.quick_check()

    def maybe_run_maintenance(self) -> bool:
        """Run the light maintenance pass when its interval has passed; True when it ran.

        Called by the commands that download, never by `state`, so reads stay fast. The time
        of the last pass is recorded in the database, so it runs once per interval across all
        processes and cron jobs.
        """
        with self._setup_lock:
            if self._maintenance_checked:
                return False
            self._maintenance_checked = True
            return self._run_maintenance()

    def _run_maintenance(self) -> bool:
        interval = self.settings.maintenance_interval
        if interval <= 0 or not self.settings.enhanced_download_management:
            return False
        if self.store.read_only:
            return False  # it cleans up and records: nothing a read-only store allows
        last = _timestamp(self.store.get_setting(LAST_MAINTENANCE_KEY))
        now = self._clock()
        # An unreadable or future time (damaged, or a clock that jumped) counts as never.
        if last is not None and 0 <= now - last < interval:
            return False
        self.store.set_setting(LAST_MAINTENANCE_KEY, repr(now))
        recovered = self.recover_dead_downloads() if self.settings.download_recovery else 0
        report = self.perform_maintenance_cleanup(self.settings.retention)
        self._event(
            "maintenance_completed",
            recovered=recovered,
            cleaned_up=report.entries_removed,
            bytes_reclaimed=report.bytes_reclaimed,
        )
        return True

    def recover_dead_downloads(self) -> int:
        """Mark downloads whose owner process died as PAUSED, so `resume` picks them up."""
        recovered = 0
        for entry in self.store.list_downloads([DownloadState.PENDING, DownloadState.IN_PROGRESS]):
            if self.is_running_elsewhere(entry.product_key):
                continue
            self.store.downloads.transition(
                entry.id, DownloadState.PAUSED, owner_pid=None, last_error="owner process died"
            )
            self._record("download_recovered", product_key=entry.product_key)
            self._event("download_recovered", product=entry.product_key, dead_pid=entry.owner_pid)
            recovered += 1
        return recovered

    def perform_maintenance_cleanup(
        self, older_than_s: float | None = None, *, dry_run: bool = False
    ) -> CleanupReport:
        from offline_cli.maintenance import CleanupManager

        age = self.settings.retention if older_than_s is None else older_than_s
        return CleanupManager(self.runtime).run(older_than_s=age, dry_run=dry_run)

    def validate_downloads(
        self,
        products: Sequence[MediaProduct] | None = None,
        *,
        repair: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[ValidationResult]:
        from offline_cli.maintenance import Validator

        return Validator(self.runtime, self.offline_product).run(
            products, repair=repair, on_progress=on_progress
        )

    def get_download_health(self, since_s: float | None = None) -> DownloadHealthReport:
        from offline_cli.maintenance import build_health_report

        self.flush_metrics()
        return build_health_report(self.store, self._clock, since_s)


def _timestamp(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
