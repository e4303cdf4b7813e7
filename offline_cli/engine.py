"""OfflineEngine: the facade that wires the store, the runtime and the downloads together.

It decides *which* products are downloaded and *when* (locks, a bounded pool of workers,
what to resume); the parts it wires do the work: download.py (one product's download),
maintenance.py (cleanup, validation, health), store.py (the database). What only a download,
a deletion or maintenance needs (httpx, the retry machinery, filelock, thread pools) is
imported by the method that needs it, so read commands such as `state` stay light
(tests/test_startup.py checks what `state` imports).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from offline_cli.config import Settings, load_credentials, load_settings
from offline_cli.errors import (
    BusyError,
    ChecksumMismatch,
    DownloadCancelled,
    DownloadError,
    DownloadInterrupted,
    NotStored,
    OfflineError,
    PermanentError,
    StorageError,
    StoreUnwritable,
    UsageError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.locks import LOCK_POLL_S, LOCK_PROBE_GRACE_S, ProductLocks
from offline_cli.models import (
    DownloadState,
    ErrorKind,
    MediaProduct,
    OfflineState,
)
from offline_cli.paths import Layout, default_home
from offline_cli.state import ProductStatus, StoreReader
from offline_cli.store import Store

if TYPE_CHECKING:
    from concurrent.futures import Future

    from offline_cli.auth import RequestCredentials
    from offline_cli.credentials import CredentialVault
    from offline_cli.deletion import Deleter
    from offline_cli.export import StoredProduct
    from offline_cli.maintenance import CleanupReport, DownloadHealthReport, ValidationResult
    from offline_cli.network import NetworkMonitor
    from offline_cli.ratelimit import RateLimiter
    from offline_cli.runtime import Cancel, FaultHook, Runtime, Watchdog
    from offline_cli.transfer import HttpClient, HttpTransport

log = logging.getLogger("offline_cli")

LAST_MAINTENANCE_KEY = "last_maintenance_at"
# How often a thread that waits (for another process's lock, for workers) looks up.
PROGRESS_WAIT_S = 0.25


class Outcome(enum.Enum):
    """What ``offline_product`` did."""

    DOWNLOADED = "downloaded"
    ALREADY_OFFLINE = "already offline"
    DOWNLOADED_BY_OTHER = "downloaded by another process"
    # --refresh: the server says the stored copy is its current version
    NOT_MODIFIED = "not modified"


@dataclass(frozen=True)
class ProductResult:
    """What became of one product of ``offline_products`` or ``resume``."""

    product: MediaProduct
    outcome: Outcome | None
    error: OfflineError | None


ResumeResult = ProductResult  # the name of earlier releases


def _unresolvable(product: MediaProduct) -> UsageError:
    return UsageError(
        f"no URL and no playback-info source for {product.key}, and the store does not know it",
        product=product.key,
        hint="give a URL, --source TEMPLATE, $OFFLINE_CLI_SOURCE or `source` in config",
    )


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
        credentials: RequestCredentials | None = None,
        create: bool = True,
    ) -> None:
        """``sleep`` None waits on each download's cancel event (so a cancel or Ctrl-C ends
        a backoff at once); tests inject a fake sleep and clock. ``fault_hook`` is a test
        seam: called at named points of a download (see runtime.FaultHook).

        Listener callbacks come from the thread that runs each download: with more than
        one job (``settings.jobs``), from worker threads, several at once.

        ``credentials`` (headers and bearer token for the trusted origin, auth.py) None:
        from ``settings`` and ``$OFFLINE_CLI_TOKEN``, read when the first download starts.

        ``create`` False (read commands): a home without a database is read as an empty
        store, and nothing is created on disk (no home folder, database or locks).
        """
        self.layout = Layout(Path(home).expanduser() if home is not None else default_home())
        self.settings = settings if settings is not None else load_settings(self.layout.home)
        self.listener = listener or OfflineEngineListener()
        self._transport = transport
        self._credentials = credentials
        self._sleep = sleep
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand
        self._disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self._network_monitor = network_monitor
        self._fault = fault_hook  # None: runtime.no_faults
        self._store: Store | None = None
        self._create = create
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
        self._limiter: RateLimiter | None = None
        if self.settings.limit_rate:
            from offline_cli.ratelimit import RateLimiter

            self._limiter = RateLimiter(self.settings.limit_rate, monotonic=monotonic)
        # The downloads running now (their cancel signals), and whether Ctrl-C or SIGTERM
        # stopped this engine: no download starts after that.
        self._running: set[Cancel] = set()
        self._running_lock = threading.Lock()
        self._stopping = threading.Event()
        # One thread watches every download's cancel requests and header deadlines; its
        # database connection is its own (closed as it ends). Made with the runtime: the
        # runtime module (and what it wires) is imported only by what downloads or removes.
        self._watchdog: Watchdog | None = None

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
        if not self._create and not self._has_database():
            return Store(
                self.layout.database,
                busy_timeout_s=self.settings.db_timeout,
                clock=self._clock,
                read_only_reason=f"there is no store in {self.layout.home} yet",
                in_memory=True,
            )
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

    def _has_database(self) -> bool:
        """Whether the home holds a database; a home that is not a folder, or a link where
        the database goes, counts (opening it says what is wrong)."""
        home, database = self.layout.home, self.layout.database
        if not os.path.lexists(home):
            return False
        return not os.path.isdir(home) or os.path.lexists(database)

    def _read_only_reason(self) -> str | None:
        return self._store.read_only_reason if self._store is not None else None

    @property
    def runtime(self) -> Runtime:
        """What the parts of a download use, wired once (again after the store reopens)."""
        from offline_cli.ownership import StoreFiles
        from offline_cli.retry import RetryPolicy
        from offline_cli.runtime import ProgressBoard, Runtime, Watchdog, no_faults
        from offline_cli.telemetry import Telemetry

        with self._setup_lock:
            store = self.store
            if self._watchdog is None:
                self._watchdog = Watchdog(on_exit=self._close_thread_connection)
            if self._runtime is None or self._runtime.store is not store:
                telemetry = Telemetry(
                    store,
                    metrics=self.settings.enhanced_download_management,
                    monotonic=self._monotonic,
                )
                self._runtime = Runtime(
                    settings=self._effective_settings(),
                    layout=self.layout,
                    store=store,
                    vault=self.vault,
                    files=StoreFiles(self.layout, store, self.foreign_paths),
                    locks=self.locks,
                    telemetry=telemetry,
                    listener=self.listener,
                    policy=RetryPolicy(
                        retries=self.settings.retries if self.settings.download_retry else 0,
                        backoff_base=self.settings.backoff_base,
                        backoff_max=self.settings.backoff_max,
                        retry_after_max=self.settings.retry_after_max,
                    ),
                    network_monitor=self._monitor,
                    watchdog=self._watchdog,
                    progress=ProgressBoard(store, self._watchdog, also=telemetry.flush),
                    clock=self._clock,
                    monotonic=self._monotonic,
                    sleep=self._sleep,
                    rand=self._rand,
                    disk_free=self._disk_free,
                    limiter=self._limiter,
                    date_if_range_hosts=self.date_if_range_hosts,
                    fault=self._fault or no_faults,
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
        if self._watchdog is not None:
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
            proxy=self.settings.proxy,
            ca_bundle=self.settings.ca_bundle,
            insecure=self.settings.insecure,
            credentials=(
                self._credentials
                if self._credentials is not None
                else load_credentials(self.settings)
            ),
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
                from offline_cli.credentials import CredentialVault

                self._vault = CredentialVault(self.layout.credentials_file)
            return self._vault

    # -- state ----------------------------------------------------------------------------

    def reader(self) -> StoreReader:
        """Reads products out of the store (cheap: no network, no vault until asked)."""
        return StoreReader(
            self.store,
            self.layout,
            self.locks,
            lambda: self.vault,
            self._clock,
            self.settings.source,
        )

    def stored_product(self, product: MediaProduct) -> StoredProduct:
        """Where ``product``'s committed files are (an HLS product: its local playlist and
        folder); NotStored when it is not offlined or not valid by the cheap check."""
        stored, problem = self.reader().stored_product(product.key)
        if stored is None and problem is None:
            raise NotStored("not offlined", product=product.key, hint="run `offline` first")
        if stored is None or problem is not None:
            raise NotStored(
                f"not valid: {problem}",
                product=product.key,
                hint="run `offline-cli validate --repair` on it",
            )
        return stored

    def export_product(
        self, product: MediaProduct, dest: Path, *, force: bool = False
    ) -> tuple[Path, str]:
        """Copy ``product``'s media (an HLS product: its playlist and parts) to ``dest``,
        verified against the SHA-256 recorded at download; the store is only read."""
        from offline_cli.export import export

        return export(self.stored_product(product), dest, force=force)

    def get_offline_state(self, product: MediaProduct) -> OfflineState:
        return self.reader().offline_state(product.key)

    def product_statuses(
        self, products: Sequence[MediaProduct] | None = None, *, with_downloads: bool = False
    ) -> list[ProductStatus]:
        """The state of ``products`` (else of every known product): what `state` prints."""
        return self.reader().statuses(products, with_downloads=with_downloads)

    def product_for_key(self, key: str) -> MediaProduct:
        """The product a stored key names, with the URLs the store remembers."""
        return self.reader().product_for_key(key)

    def resumable_products(
        self, products: Sequence[MediaProduct] | None = None
    ) -> list[MediaProduct]:
        """Interrupted, paused and retryable failed downloads (of ``products``, else all)."""
        return self.reader().resumable_products(products)

    def known_products(self) -> list[MediaProduct]:
        products: list[MediaProduct] = []
        for key in self.store.known_product_keys():
            products.append(self.product_for_key(key))
        return products

    # -- offline ---------------------------------------------------------------------------

    def offline(self, product: MediaProduct) -> bool:
        """Download ``product``; False when it was already OFFLINED_AND_VALID.

        Raises a DownloadError subclass when the download fails for good (the listener hears
        ``offlining_failed`` first).
        """
        self._stopping.clear()  # an earlier interrupt() stopped an earlier call
        try:
            return self.offline_product(product) is Outcome.DOWNLOADED
        finally:
            self.flush_metrics()

    def offline_product(
        self, product: MediaProduct, *, wait: bool = True, refresh: bool = False
    ) -> Outcome:
        """Download one product in this thread (see ``offline_products`` for many).

        ``refresh``: a product already OFFLINED_AND_VALID is checked with the server (like
        ``wget -N``): NOT_MODIFIED, or DOWNLOADED when a new version replaced it."""
        from filelock import Timeout

        from offline_cli.runtime import RunInterrupted

        # Bad input changes nothing: checked (and a stored product's URLs found) first.
        product = self.with_stored_urls(product)
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
            self.runtime.telemetry.event("waiting_for_other_process", product=product.key)
            while True:
                if self._stopping.is_set():
                    raise DownloadInterrupted(
                        "interrupted while waiting for another process; nothing was changed",
                        product=product.key,
                    ) from None
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
                if not refresh:
                    return Outcome.ALREADY_OFFLINE
                changed = self._download(product, refresh=True)
                return Outcome.DOWNLOADED if changed else Outcome.NOT_MODIFIED
            self._download(product)
            return Outcome.DOWNLOADED
        except RunInterrupted:
            # interrupt() from another thread: an OfflineError to callers of the API (the
            # listener has heard offlining_failed with the same error).
            raise DownloadInterrupted(
                "interrupted; saved as PAUSED", product=product.key, hint="run `resume`"
            ) from None
        finally:
            lock.release()

    def _download(self, product: MediaProduct, *, refresh: bool = False) -> bool:
        """Download one product (we hold its lock), stoppable through its cancel signal;
        False when ``refresh`` found the stored copy current (nothing was fetched)."""
        from offline_cli.download import Downloader
        from offline_cli.runtime import Cancel

        cancel = Cancel()
        with self._running_lock:
            if self._stopping.is_set():
                raise DownloadInterrupted(
                    "not started: the command was interrupted",
                    product=product.key,
                    hint="offline it again",
                )
            self._running.add(cancel)
        try:
            return Downloader(self.runtime, self._client).download(product, cancel, refresh=refresh)
        finally:
            with self._running_lock:
                self._running.discard(cancel)

    def interrupt(self) -> None:
        """Stop every download of this engine, keeping its bytes (PAUSED), and start no
        more in the ``offline_products`` or ``resume`` call running now: what Ctrl-C and
        SIGTERM do. Safe to call from any thread; the next call starts afresh."""
        with self._running_lock:
            self._stopping.set()
            running = list(self._running)
        for cancel in running:
            cancel.set(cancel.INTERRUPTED)

    def offline_products(
        self,
        products: Sequence[MediaProduct],
        *,
        wait: bool = True,
        on_result: Callable[[ProductResult], None] | None = None,
        refresh: bool = False,
    ) -> list[ProductResult]:
        """Download ``products``, up to ``settings.jobs`` at once; one's failure never stops
        the others. ``on_result`` hears each outcome as it comes (in the calling thread).
        ``refresh``: see ``offline_product`` (an HLS product is refused: UsageError).

        Ctrl-C or SIGTERM in the calling thread stops every running download (saved as
        PAUSED), starts no other, and is raised again once they all have stopped.
        """
        self.check_resolvable(products)
        if refresh:
            from offline_cli.download import check_refreshable

            check_refreshable(self.store, products)
        self.maybe_run_maintenance()
        # interrupt() stops the call it interrupts (and the downloads running in it); a new
        # call starts afresh.
        self._stopping.clear()
        results: dict[int, ProductResult] = {}

        def done(index: int, result: ProductResult) -> None:
            results[index] = result
            if on_result is not None:
                on_result(result)

        try:
            self._offline_all(products, wait, done, refresh)
        finally:
            self.flush_metrics()
        return [results[i] for i in sorted(results)]

    def _offline_all(
        self,
        products: Sequence[MediaProduct],
        wait: bool,
        done: Callable[[int, ProductResult], None],
        refresh: bool = False,
    ) -> None:
        jobs = min(self.settings.jobs, len(products))
        if jobs <= 1:
            for index, product in enumerate(products):
                done(index, self._offline_one(product, wait, refresh))
            return
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
        from concurrent.futures import wait as wait_for

        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="offline-cli-download")
        futures: dict[Future[ProductResult], int] = {}
        try:
            futures = {
                pool.submit(self._offline_in_worker, product, wait, refresh): index
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

    def _offline_in_worker(
        self, product: MediaProduct, wait: bool, refresh: bool = False
    ) -> ProductResult:
        # This worker's database connection stays open for its next product; it closes
        # when the pool ends and the thread's state (peewee's connection) goes with it.
        return self._offline_one(product, wait, refresh)

    def _offline_one(
        self, product: MediaProduct, wait: bool, refresh: bool = False
    ) -> ProductResult:
        if self._stopping.is_set():
            not_started = DownloadInterrupted(
                "not started: the command was interrupted",
                product=product.key,
                hint="offline it again",
            )
            return ProductResult(product, None, not_started)
        try:
            outcome = self.offline_product(product, wait=wait, refresh=refresh)
            return ProductResult(product, outcome, None)
        except OfflineError as exc:
            return ProductResult(product, None, exc)

    def _busy(self, product_key: str, hint: str) -> BusyError:
        """--no-wait met a download another live process runs: one message for both commands."""
        entry = self.store.latest_download(product_key)
        pid = f" (pid {entry.owner_pid})" if entry and entry.owner_pid else ""
        return BusyError(f"another process is downloading it{pid}", product=product_key, hint=hint)

    def check_resolvable(self, products: Sequence[MediaProduct]) -> None:
        """UsageError when a product has no URL, there is no playback-info source, and the
        store does not know the product either."""
        for product in products:
            self.with_stored_urls(product)

    def with_stored_urls(self, product: MediaProduct) -> MediaProduct:
        """``product`` itself when it has a URL or the playback-info source resolves it;
        else the product with the URLs the store remembers (of its stored copy or its
        download), so a stored product's name is enough to continue or check it."""
        if product.url is not None or self.settings.source is not None:
            return product
        known = self.reader().known_product(product.key)
        if known is None or known.url is None:
            raise _unresolvable(product)
        # What the command line said of it wins over what the store remembers.
        return dataclasses.replace(
            known,
            license_url=product.license_url or known.license_url,
            sha256=product.sha256 or known.sha256,
        )

    @staticmethod
    def check_resolvable_with(settings: Settings, products: Sequence[MediaProduct]) -> None:
        """UsageError for the first product without a URL when there is no playback-info
        source (the store is not asked: see ``check_resolvable``)."""
        for product in products:
            if product.url is None and settings.source is None:
                raise _unresolvable(product)

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

    # -- delete ------------------------------------------------------------------------------

    def delete_offline(self, product: MediaProduct) -> bool:
        """Remove ``product``: cancel a running download, then its files and entries."""
        removed = self._deleter().delete_key(product.key)
        if removed:
            self.listener.offlined_deleted(product)
        return removed

    def delete_all_offlined_media_products(self) -> bool:
        """Remove every product, its files and entries; never follows a link out of home."""
        self._deleter().delete_all()
        self.listener.all_offlined_media_products_deleted()
        return True

    def _deleter(self) -> Deleter:
        from offline_cli.deletion import Deleter

        return Deleter(lambda: self.runtime, self._reopen_store)

    def _reopen_store(self) -> Store:
        if self._store is not None:
            self._store.close()
            self._store = None
        return self.store

    # -- resume ----------------------------------------------------------------------------------

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
            from offline_cli.maintenance import run_light_maintenance

            return run_light_maintenance(
                self.runtime, self.perform_maintenance_cleanup, LAST_MAINTENANCE_KEY
            )

    def recover_dead_downloads(self) -> int:
        """Mark downloads whose owner process died as PAUSED, so `resume` picks them up."""
        from offline_cli.maintenance import recover_dead_downloads

        return recover_dead_downloads(self.runtime)

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
