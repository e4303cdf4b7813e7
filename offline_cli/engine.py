"""OfflineEngine: orchestrates products, locks, retries, commits and listener events.

httpx is imported only when something is downloaded, so read commands stay light.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from offline_cli.config import Settings, load_settings
from offline_cli.credentials import CredentialVault, lacks_credentials
from offline_cli.download import ProductRun
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
from offline_cli.paths import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    Layout,
    default_home,
    product_dir_name,
    safe_remove,
    safe_remove_tree,
    touch_private,
)
from offline_cli.redaction import redact_url, scrub_urls
from offline_cli.store import ProductRows, Store

if TYPE_CHECKING:
    import httpx

    from offline_cli.maintenance import CleanupReport, DownloadHealthReport, ValidationResult
    from offline_cli.network import NetworkMonitor
    from offline_cli.retry import RetryPolicy

log = logging.getLogger("offline_cli")

# How long delete waits for a running download in another process to stop.
CANCEL_WAIT_S = 10.0
LOCK_POLL_S = 0.05
# Longer than any lock probe (is_running_elsewhere holds a lock for microseconds).
LOCK_PROBE_GRACE_S = 0.2
LAST_MAINTENANCE_KEY = "last_maintenance_at"

_RUNNABLE_STATES = (DownloadState.PENDING, DownloadState.IN_PROGRESS, DownloadState.PAUSED)
_RETRYABLE_KINDS = (ErrorKind.NETWORK, ErrorKind.SERVER, ErrorKind.UNKNOWN)


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
class ResumeResult:
    product: MediaProduct
    outcome: Outcome | None
    error: OfflineError | None


class OfflineEngine:
    """The offline store of one home folder, and everything that downloads into it."""

    def __init__(
        self,
        home: str | Path | None = None,
        listener: OfflineEngineListener | None = None,
        *,
        settings: Settings | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        disk_free: Callable[[Path], int] | None = None,
        network_monitor: NetworkMonitor | None = None,
    ) -> None:
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
        self._store: Store | None = None
        self._maintenance_checked = False
        self._http: httpx.Client | None = None
        # hosts that honour If-Range only with a date (transfer.py): shared by all products
        self.date_if_range_hosts: set[str] = set()
        # Paths a damaged row named that are not files of the store (offline.db, another
        # product's media): left in place and reported, key -> what was refused.
        self.foreign_paths: dict[str, str] = {}
        self._vault: CredentialVault | None = None

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

    @property
    def skipped_entries(self) -> dict[str, str]:
        """Products whose database rows could not be read (and were skipped): key -> why."""
        return dict(self._store.bad_rows) if self._store is not None else {}

    def close(self) -> None:
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

    def _lock(self, product_key: str) -> FileLock:
        self.layout.locks_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        path = self.layout.lock_path(product_key)
        # Created here (0600, never through a planted link) so filelock only opens our file.
        touch_private(path)
        # flock-based: the kernel drops it when the process dies, even on kill -9.
        return FileLock(path, mode=PRIVATE_FILE_MODE, is_singleton=False)

    def _lock_failed(self, product_key: str, exc: OSError) -> StorageError:
        """A lock file that cannot be opened: the home is read-only (or worse)."""
        store = self._store
        reason = (
            store.read_only_reason
            if store is not None and store.read_only_reason
            else f"cannot open lock file {self.layout.lock_path(product_key)}: "
            f"{exc.strerror or exc}"
        )
        return StoreUnwritable(
            f"cannot change the store: {reason}",
            product=product_key,
            hint="make the home writable (or free some space); read commands still work",
        )

    def is_running_elsewhere(self, product_key: str) -> bool:
        """True when a live process holds the product's download lock.

        Also True when the lock cannot be probed (a read-only home): callers that remove
        things must then leave the product alone.
        """
        return self._owner_alive(product_key) is not False

    def _owner_alive(self, product_key: str) -> bool | None:
        """Whether a live process holds the product's lock; None when it cannot be told."""
        try:
            lock = self._lock(product_key)
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return None
        lock.release()
        return False

    def _client(self) -> httpx.Client:
        """One HTTP client per engine: connections and the TLS setup are shared by products."""
        if self._http is None:
            self._http = self._new_client()
        return self._http

    def _new_client(self) -> httpx.Client:
        from offline_cli.transfer import make_client

        return make_client(
            stall_timeout_s=self.settings.stall_timeout,
            connect_timeout_s=self.settings.connect_timeout,
            transport=self._transport,
        )

    def _monitor(self) -> NetworkMonitor:
        if self._network_monitor is None:
            from offline_cli.network import NetworkMonitor

            self._network_monitor = NetworkMonitor(sleep=self._sleep, clock=self._monotonic)
        return self._network_monitor

    def _event(self, event: str, **fields: Any) -> None:
        safe = {k: scrub_urls(v) if isinstance(v, str) else v for k, v in fields.items()}
        log.info(event, extra={"event": event, "fields": safe})

    def _record(self, event: str, **fields: Any) -> None:
        """Record a metric event; metrics never break a download."""
        if not self.settings.enhanced_download_management:
            return  # the simpler path: no metrics collector
        try:
            self.store.record_event(event, **fields)
        except StorageError as exc:  # pragma: no cover - only when the disk is failing
            log.warning("metric not recorded: %s", exc)

    @property
    def vault(self) -> CredentialVault:
        """Full URLs with credentials live here (0600), never in the database or logs."""
        if self._vault is None:
            self._vault = CredentialVault(self.layout.credentials_file)
        return self._vault

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
        if self._owner_alive(entry.product_key) is not False:
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
        return self.offline_product(product) is Outcome.DOWNLOADED

    def offline_product(self, product: MediaProduct, *, wait: bool = True) -> Outcome:
        self.check_resolvable([product])  # bad input changes nothing: check before any work
        self.maybe_run_maintenance()
        waited = False
        try:
            lock = self._lock(product.key)
            # A short grace: cleanup and maintenance probe locks for an instant, and that
            # must not read as another download.
            lock.acquire(timeout=LOCK_PROBE_GRACE_S, poll_interval=LOCK_POLL_S / 5)
        except Timeout:
            if not wait:
                raise self._busy(
                    product.key, "run again without --no-wait to wait for it"
                ) from None
            entry = self.store.latest_download(product.key)
            self.listener.offlining_waiting_for_other(product, entry.owner_pid if entry else None)
            self._event("waiting_for_other_process", product=product.key)
            lock.acquire(timeout=-1, poll_interval=LOCK_POLL_S)
            waited = True
        except OSError as exc:  # after Timeout, which is an OSError too
            raise self._lock_failed(product.key, exc) from exc
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

    def _with_full_urls(self, product: MediaProduct) -> MediaProduct:
        """``product`` with the full URLs the vault keeps for redacted ones; a redacted URL
        the vault has forgotten is never requested (the server would get the placeholder)."""
        url, license_url = self.vault.reveal(product.url), self.vault.reveal(product.license_url)
        if lacks_credentials(url) or lacks_credentials(license_url):
            raise PermanentError(
                # str() puts the product first: "KEY: its full URL is no longer known ..."
                "its full URL is no longer known (its credentials were forgotten); "
                "give the URL again",
                product=product.key,
                hint="run `offline` with the URL, credentials included",
            )
        return dataclasses.replace(product, url=url, license_url=license_url)

    def _resolve(self, product: MediaProduct, client: httpx.Client) -> MediaProduct:
        """Fill in URLs from the playback-info source when the product has none."""
        if product.url is not None:
            return product
        self.check_resolvable([product])
        template = self.settings.source
        assert template is not None
        from offline_cli.playback import fetch_playback_info
        from offline_cli.retry import RetryHooks, execute

        info = execute(
            lambda: fetch_playback_info(client, template, product, self.settings.stall_timeout),
            self._policy(),
            RetryHooks(
                sleep=self._sleep,
                clock=self._clock,
                made_progress=lambda: False,
                on_retry=lambda e, a, d, r: self.listener.offlining_retrying(product, a, d, r),
                rand=self._rand,
            ),
        )
        if info.is_hls:
            raise PermanentError(
                f"HLS playlists ({info.manifest_mime_type}) are not supported yet",
                product=product.key,
                url=info.url,
            )
        return MediaProduct(
            product.product_type,
            product.product_id,
            url=info.url,
            license_url=product.license_url or info.license_url,
            sha256=product.sha256 or info.sha256,
            size=info.size,
            license_expires_at=info.license_expires_at,
        )

    def _refuse_expired_license(self, product: MediaProduct) -> None:
        """A license already expired would be stored only to read OFFLINED_BUT_NOT_VALID at
        once: fail before any byte is fetched."""
        expires = product.license_expires_at
        if expires is not None and expires.timestamp() <= self._clock():
            raise PermanentError(
                f"license expired at {expires.isoformat()}; nothing fetched",
                product=product.key,
                hint="the source hands out an expired license; try again when it renews it",
            )

    def _policy(self) -> RetryPolicy:
        from offline_cli.retry import RetryPolicy

        return RetryPolicy(
            retries=self.settings.retries if self.settings.download_retry else 0,
            backoff_base=self.settings.backoff_base,
            backoff_max=self.settings.backoff_max,
            retry_after_max=self.settings.retry_after_max,
        )

    def _find_resumable(self, product: MediaProduct) -> DownloadEntry | None:
        """The unfinished download of this product to continue (we hold its lock)."""
        entry = self.store.latest_download(product.key)
        if entry is None or entry.media_url != _redacted(product.url):
            return None
        if entry.license_url != _redacted(product.license_url):
            return None
        if not self._partials_are_own(entry):
            return None  # a damaged row: never write where it points (it is discarded)
        if entry.state in _RUNNABLE_STATES:
            return entry
        if entry.state is DownloadState.FAILED and entry.error_kind in _RETRYABLE_KINDS:
            return entry
        return None

    def _download(self, product: MediaProduct) -> None:
        """Download, verify and commit one product; we hold its lock."""
        started = self._monotonic()
        entry: DownloadEntry | None = None
        try:
            product = self._with_full_urls(product)
            self.listener.offlining_started(product)
            client = self._client()
            from_source = product.url is None
            product = self._resolve(product, client)
            self._refuse_expired_license(product)
            # Started once its media URL is known: a bad playback-info answer starts nothing.
            self._record("download_started", product_key=product.key)
            entry = self._prepare_entry(product, from_source=from_source)
            self._event("state_changed", product=product.key, to="IN_PROGRESS")
            run = ProductRun(self, product, entry, client)
            run.run()
            self._record(
                "download_succeeded",
                product_key=product.key,
                duration_s=self._monotonic() - started,
                bytes=run.bytes_fetched,
                attempts=run.retries,
            )
        except OfflineError as exc:
            self._fail(product, entry, exc)
            raise
        except BaseException as exc:
            # KeyboardInterrupt, Terminated, or a bug: keep the bytes, pause the entry.
            self._pause_after_interrupt(product, entry, exc)
            raise
        self._event("state_changed", product=product.key, to="COMPLETED")
        self.listener.offlining_completed(product)

    def _prepare_entry(self, product: MediaProduct, *, from_source: bool) -> DownloadEntry:
        downloads = self.store.downloads
        entry = self._find_resumable(product) if self.settings.download_recovery else None
        if entry is not None:
            if entry.state in (DownloadState.IN_PROGRESS, DownloadState.PENDING):
                # Its owner is gone (we hold the lock): a crash. Continue from the disk.
                self._record("download_recovered", product_key=product.key)
                self._event(
                    "download_recovered",
                    product=product.key,
                    bytes_on_disk=entry.bytes_done,
                    dead_pid=entry.owner_pid,
                )
            downloads.transition(
                entry.id,
                DownloadState.IN_PROGRESS,
                owner_pid=os.getpid(),
                cancel_requested=False,
                last_error=None,
                error_kind=None,
            )
        else:
            for stale in self.store.list_downloads(
                [*_RUNNABLE_STATES, DownloadState.FAILED], product_key=product.key
            ):
                self._discard_partials(stale)
                downloads.transition(stale.id, DownloadState.CANCELLED, owner_pid=None)
            entry = downloads.create(
                product_key=product.key,
                product_type=product.product_type,
                product_id=product.product_id,
                media_url=self.vault.seal(product.url),
                license_url=self.vault.seal(product.license_url),
                expected_sha256=product.sha256,
                partial_media_path=self.layout.partial_media_path,
                partial_license_path=self.layout.partial_license_path,
                expected_size=product.size,
                license_expires_at=(
                    product.license_expires_at.timestamp() if product.license_expires_at else None
                ),
                from_source=from_source,
            )
            downloads.transition(entry.id, DownloadState.IN_PROGRESS, owner_pid=os.getpid())
        fresh = self.store.get_download(entry.id)
        assert fresh is not None
        return fresh

    def _partials_are_own(self, entry: DownloadEntry) -> bool:
        return all(
            self.layout.own_file(raw, entry.product_key, partial=True, download_id=entry.id)
            for raw in (entry.partial_media_path, entry.partial_license_path)
            if raw
        )

    def own_final_file(self, raw: str | None, product_key: str) -> Path | None:
        """The committed file ``raw`` names when it is one of ``product_key``'s files in the
        store (Layout.own_file), else None. A folder other than the one its name gives is
        its own too when no other product names it: a product renamed by schema 3 keeps
        the folder of its old name."""
        return self.layout.own_file(
            raw,
            product_key,
            partial=False,
            folder_ok=lambda folder: self._folder_unclaimed(folder, product_key),
        )

    def _folder_unclaimed(self, folder: str, product_key: str) -> bool:
        for key in self.store.known_product_keys():
            if key != product_key and product_dir_name(key) == folder:
                return False
        for key, paths in self.store.offlined_paths().items():
            if key != product_key and any(Path(p).parent.name == folder for p in paths):
                return False
        return True

    def report_foreign_path(self, product_key: str, column: str, raw: str) -> None:
        """Name a row whose ``column`` points at a file the store does not own (offline.db,
        credentials.json, another product's media): that file is left in place."""
        self.foreign_paths.setdefault(
            product_key, f"{column} {raw!r} is not a file of the store; left in place"
        )

    def _discard_partials(self, entry: DownloadEntry) -> int:
        freed = 0
        for column, raw in (
            ("partial_media_path", entry.partial_media_path),
            ("partial_license_path", entry.partial_license_path),
        ):
            if not raw:
                continue
            path = self.layout.own_file(raw, entry.product_key, partial=True, download_id=entry.id)
            if path is None:
                self.report_foreign_path(entry.product_key, column, raw)
            else:
                freed += safe_remove(self.layout, path)
        offlined = self.store.get_offlined(entry.product_key)
        committed = (offlined.media_path, offlined.license_path) if offlined else ()
        for final in (
            self.layout.final_media_path(entry.product_key, entry.id),
            self.layout.final_license_path(entry.product_key, entry.id),
        ):
            if str(final) not in committed:
                freed += safe_remove(self.layout, final)
        return freed

    def _fail(
        self, product: MediaProduct, entry: DownloadEntry | None, error: OfflineError
    ) -> None:
        from offline_cli.retry import classify

        kind = classify(error)
        if entry is not None:
            current = self.store.get_download(entry.id)
            keep_partials = kind in _RETRYABLE_KINDS and self.settings.download_recovery
            if not keep_partials:
                # Nothing left behind: permanent failures and cancellations drop their bytes.
                self._discard_partials(entry)
            if current is not None and not current.state.is_terminal:
                if kind is ErrorKind.CANCELLED:
                    self.store.downloads.transition(
                        entry.id, DownloadState.CANCELLED, owner_pid=None, last_error=str(error)
                    )
                else:
                    self.store.downloads.mark_failed(entry.id, str(error), kind)
        attempts = self.store.get_download(entry.id) if entry is not None else None
        self._record(
            "download_failed",
            product_key=product.key,
            error_kind=kind.value,
            attempts=attempts.attempt_count if attempts else None,
            detail=str(error),
        )
        self._event("download_failed", product=product.key, kind=kind.value, error=str(error))
        self.listener.offlining_failed(product, error)

    def _pause_after_interrupt(
        self, product: MediaProduct, entry: DownloadEntry | None, exc: BaseException
    ) -> None:
        if entry is not None:
            with suppress(Exception):
                current = self.store.get_download(entry.id)
                if current is not None and current.state in (
                    DownloadState.IN_PROGRESS,
                    DownloadState.PENDING,
                ):
                    self.store.downloads.transition(
                        entry.id, DownloadState.PAUSED, owner_pid=None, last_error="interrupted"
                    )
        self._event("download_paused", product=product.key, reason=type(exc).__name__)
        self.listener.offlining_failed(
            product,
            DownloadInterrupted(
                "interrupted; saved as PAUSED", product=product.key, hint="run `resume`"
            ),
        )

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
            lock = self._lock(key)
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
            raise self._lock_failed(key, exc) from exc
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
        for entry in self.store.list_downloads([*_RUNNABLE_STATES, DownloadState.FAILED]):
            if wanted is not None and entry.product_key not in wanted:
                continue
            if entry.state is DownloadState.FAILED and entry.error_kind not in _RETRYABLE_KINDS:
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
        self, products: Sequence[MediaProduct] | None = None, *, wait: bool = True
    ) -> list[ResumeResult]:
        """Continue every resumable download; a download another process runs is skipped."""
        self.maybe_run_maintenance()
        results: list[ResumeResult] = []
        for product in self.resumable_products(products):
            if self.is_running_elsewhere(product.key) and not wait:
                busy = self._busy(product.key, "left to that process (exit 3: skipped)")
                results.append(ResumeResult(product, None, busy))
                continue
            try:
                outcome = self.offline_product(product, wait=wait)
            except (DownloadError, BusyError, UsageError) as exc:
                results.append(ResumeResult(product, None, exc))
            else:
                results.append(ResumeResult(product, outcome, None))
        return results

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
        if self._maintenance_checked:
            return False
        self._maintenance_checked = True
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
        return CleanupManager(self).run(older_than_s=age, dry_run=dry_run)

    def validate_downloads(
        self,
        products: Sequence[MediaProduct] | None = None,
        *,
        repair: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[ValidationResult]:
        from offline_cli.maintenance import Validator

        return Validator(self).run(products, repair=repair, on_progress=on_progress)

    def get_download_health(self, since_s: float | None = None) -> DownloadHealthReport:
        from offline_cli.maintenance import build_health_report

        return build_health_report(self, since_s)


def _timestamp(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _redacted(url: str | None) -> str | None:
    return redact_url(url) if url is not None else None
