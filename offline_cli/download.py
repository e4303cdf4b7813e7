"""One product's download: resolve it, prepare its entry, run it (productrun.ProductRun, or
hlsrun.HlsRun for an HLS playlist), and record how it ended.

The engine decides *whether* and *when* a product is downloaded (locks, queues, what to
resume); a Downloader does the download itself with what the runtime hands it (clock,
sleep, store, telemetry, retry policy, rate limiter), and a run is one try of it, stopped by
its one cancel signal. Nothing here imports the engine.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

from offline_cli.auth import origin_of
from offline_cli.credentials import lacks_credentials
from offline_cli.errors import (
    DownloadInterrupted,
    HTTPStatusError,
    OfflineError,
    PermanentError,
    UsageError,
)
from offline_cli.hls import Quality, StreamChoice
from offline_cli.hlsrun import HlsRun
from offline_cli.models import (
    RETRYABLE_KINDS,
    RUNNABLE_STATES,
    DownloadEntry,
    DownloadState,
    ErrorKind,
    MediaProduct,
    OfflinedEntry,
    looks_like_url,
)
from offline_cli.productrun import ProductRun
from offline_cli.redaction import redact_url
from offline_cli.retry import RetryHooks, classify, execute
from offline_cli.runtime import Cancel, Runtime

if TYPE_CHECKING:
    from offline_cli.store import Store
    from offline_cli.transfer import HttpClient

REFRESH_HLS_REFUSED = "refresh of HLS products is not supported; nothing fetched"
REFRESH_HLS_HINT = "delete it and offline it again for the current version"


def check_refreshable(store: Store, products: Sequence[MediaProduct]) -> None:
    """UsageError, before any work, when ``--refresh`` names a stored HLS product: its
    playlist, parts and keys each have their own version, and no single validator says
    whether the whole changed."""
    for product in products:
        stored = store.get_offlined(product.key)
        if stored is not None and stored.is_hls:
            raise UsageError(REFRESH_HLS_REFUSED, product=product.key, hint=REFRESH_HLS_HINT)


# Statuses of a stored (signed) URL that has expired: the product is resolved through its
# source once more before the download counts as failed.
EXPIRED_URL_STATUSES = (401, 403, 410)


def _redacted(url: str | None) -> str | None:
    return redact_url(url) if url is not None else None


class Downloader:
    """Downloads, verifies and commits products; the caller holds each product's lock."""

    def __init__(self, runtime: Runtime, client: Callable[[], HttpClient]) -> None:
        self.rt = runtime
        self._client = client

    def download(self, product: MediaProduct, cancel: Cancel, *, refresh: bool = False) -> bool:
        """Download ``product`` (the listener hears started, then completed or failed).

        ``refresh``: the product is stored; ask the server first whether it changed (the
        stored validators, as curl -z and wget -N do). False: it did not, and nothing was
        fetched or changed (the listener hears nothing). A new version is downloaded as a
        new download and replaces the stored copy at its commit, not before.
        """
        rt = self.rt
        started = rt.monotonic()
        entry: DownloadEntry | None = None
        stored = rt.store.get_offlined(product.key) if refresh else None
        try:
            product = self._with_full_urls(product)
            if stored is None:
                rt.listener.offlining_started(product)
            client = self._client()
            from_source = self._came_from_source(product)
            trusted = self._trusted_origin(product, from_source)
            product = self._resolve(product, client, cancel, trusted)
            if stored is not None:
                if not self._changed(product, stored, client, cancel, trusted):
                    rt.telemetry.event("not_modified", product=product.key)
                    return False
                rt.telemetry.event("modified", product=product.key)
                rt.listener.offlining_started(product)
            self._refuse_expired_license(product)
            # Started once its media URL is known: a bad playback-info answer starts nothing.
            rt.telemetry.record("download_started", product_key=product.key)
            entry = self._prepare_entry(product, from_source=from_source)
            rt.telemetry.event("state_changed", product=product.key, to="IN_PROGRESS")
            run = self._new_run(product, entry, client, cancel, trusted)
            try:
                run.run()
            except HTTPStatusError as exc:
                if exc.status not in EXPIRED_URL_STATUSES or not self._has_source(product):
                    raise
                # Signed URLs expire (an HLS segment's within hours): ask the source once
                # for fresh ones; the parts already complete are kept.
                rt.telemetry.event("re_resolving", product=product.key, status=exc.status)
                product = self._resolve(
                    MediaProduct(product.product_type, product.product_id),
                    client,
                    cancel,
                    trusted,
                )
                fresh = rt.store.get_download(entry.id)
                assert fresh is not None
                entry = fresh
                rt.store.downloads.transition(entry.id, DownloadState.IN_PROGRESS)
                retried = self._new_run(product, entry, client, cancel, trusted)
                retried.retries = run.retries
                retried.bytes_fetched = run.bytes_fetched
                run = retried
                run.run()
            rt.telemetry.record(
                "download_succeeded",
                product_key=product.key,
                duration_s=rt.monotonic() - started,
                bytes=run.bytes_fetched,
                attempts=run.retries,
            )
        except OfflineError as exc:
            self._fail(product, entry, exc)
            raise
        except BaseException as exc:
            # KeyboardInterrupt, Terminated, RunInterrupted, or a bug: keep the bytes, pause.
            self._pause_after_interrupt(product, entry, exc)
            raise
        rt.telemetry.event("state_changed", product=product.key, to="COMPLETED")
        rt.listener.offlining_completed(product)
        return True

    def _changed(
        self,
        product: MediaProduct,
        stored: OfflinedEntry,
        client: HttpClient,
        cancel: Cancel,
        trusted_origin: str | None,
    ) -> bool:
        """Whether the server holds another version than ``stored`` (a conditional GET,
        retried like any request; its body is never read)."""
        if product.hls or stored.is_hls:
            raise UsageError(REFRESH_HLS_REFUSED, product=product.key, hint=REFRESH_HLS_HINT)
        assert product.url is not None
        from offline_cli.transfer import Validators, probe_changed

        rt = self.rt
        url = product.url
        validators = Validators(stored.etag, stored.last_modified, stored.size)
        return execute(
            lambda: probe_changed(
                client,
                url,
                validators,
                product=product.key,
                stall_timeout_s=rt.settings.stall_timeout,
                trusted_origin=trusted_origin,
            ),
            rt.policy,
            self._one_shot_hooks(product, cancel),
        )

    def _one_shot_hooks(self, product: MediaProduct, cancel: Cancel) -> RetryHooks:
        """Retry hooks for a request whose answer is read whole (no progress to keep)."""
        rt = self.rt
        return RetryHooks(
            sleep=lambda seconds: rt.wait(seconds, cancel, product.key),
            clock=rt.clock,
            made_progress=lambda: False,
            on_retry=lambda e, a, d, r: rt.listener.offlining_retrying(product, a, d, r),
            rand=rt.rand,
        )

    def _has_source(self, product: MediaProduct) -> bool:
        return self.rt.settings.source is not None and not looks_like_url(product.product_id)

    def _new_run(
        self,
        product: MediaProduct,
        entry: DownloadEntry,
        client: HttpClient,
        cancel: Cancel,
        trusted_origin: str | None,
    ) -> ProductRun:
        if not product.hls:
            return ProductRun(
                self.rt, product, entry, client, cancel, trusted_origin=trusted_origin
            )
        settings = self.rt.settings
        stored = self.rt.store.get_offlined(product.key)
        # The variant this download started with, else the one of the copy being repaired.
        recorded = StreamChoice.from_json(entry.stream) or (
            StreamChoice.from_json(stored.stream) if stored is not None else None
        )
        return HlsRun(
            self.rt,
            product,
            entry,
            client,
            cancel,
            quality=Quality(settings.quality, settings.max_bandwidth or None),
            recorded=recorded,
            stored=stored,
            trusted_origin=trusted_origin,
        )

    def _with_full_urls(self, product: MediaProduct) -> MediaProduct:
        """``product`` with the full URLs the vault keeps for redacted ones; a redacted URL
        the vault has forgotten is never requested (the server would get the placeholder)."""
        vault = self.rt.vault
        url, license_url = vault.reveal(product.url), vault.reveal(product.license_url)
        if lacks_credentials(url) or lacks_credentials(license_url):
            raise PermanentError(
                # str() puts the product first: "KEY: its full URL is no longer known ..."
                "its full URL is no longer known (its credentials were forgotten); "
                "give the URL again",
                product=product.key,
                hint="run `offline` with the URL, credentials included",
            )
        return dataclasses.replace(product, url=url, license_url=license_url)

    def _came_from_source(self, product: MediaProduct) -> bool:
        """Whether ``product``'s URLs are (or will be) the playback-info source's: it has
        none yet, or they are the ones the store kept from a download through the source
        (a resume without a source now, a repair)."""
        if product.url is None:
            return True
        latest = self.rt.store.latest_download(product.key)
        return (
            latest is not None and latest.from_source and latest.media_url == _redacted(product.url)
        )

    def _trusted_origin(self, product: MediaProduct, from_source: bool) -> str | None:
        """The one origin the credentials (--header, the token) may go to for ``product``:
        the source's for a product that came from it (never its CDN's, which the source
        names), else the product URL's. None: they go nowhere."""
        if not from_source:
            return origin_of(product.url)
        if self.rt.settings.source is None:
            return None
        from offline_cli.playback import source_url

        return origin_of(source_url(self.rt.settings.source, product))

    def _resolve(
        self,
        product: MediaProduct,
        client: HttpClient,
        cancel: Cancel,
        trusted_origin: str | None,
    ) -> MediaProduct:
        """Fill in URLs from the playback-info source when the product has none."""
        if product.url is not None:
            return product
        rt = self.rt
        template = rt.settings.source
        if template is None:
            raise PermanentError("no URL and no playback-info source", product=product.key)
        from offline_cli.playback import fetch_playback_info

        info = execute(
            lambda: fetch_playback_info(
                client,
                template,
                product,
                rt.settings.stall_timeout,
                trusted_origin=trusted_origin,
            ),
            rt.policy,
            self._one_shot_hooks(product, cancel),
        )
        if info.is_hls:
            if product.sha256:
                raise PermanentError(
                    "--sha256 cannot check an HLS product (its playlist names many parts, "
                    "each checked on its own); nothing fetched",
                    product=product.key,
                    hint="give no --sha256 for it",
                )
            # The playlist names the parts; a size or SHA-256 of "the media" means nothing.
            return MediaProduct(
                product.product_type,
                product.product_id,
                url=info.url,
                license_url=product.license_url or info.license_url,
                license_expires_at=info.license_expires_at,
                hls=True,
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
        if expires is not None and expires.timestamp() <= self.rt.clock():
            raise PermanentError(
                f"license expired at {expires.isoformat()}; nothing fetched",
                product=product.key,
                hint="the source hands out an expired license; try again when it renews it",
            )

    def _find_resumable(self, product: MediaProduct) -> DownloadEntry | None:
        """The unfinished download of this product to continue (we hold its lock)."""
        entry = self.rt.store.latest_download(product.key)
        if entry is None or entry.media_url != _redacted(product.url):
            return None
        if entry.license_url != _redacted(product.license_url):
            return None
        if (entry.stream is not None) != product.hls:
            return None
        if not self.rt.files.partials_are_own(entry):
            return None  # a damaged row: never write where it points (it is discarded)
        if entry.state in RUNNABLE_STATES:
            return entry
        if entry.state is DownloadState.FAILED and entry.error_kind in RETRYABLE_KINDS:
            return entry
        return None

    def _prepare_entry(self, product: MediaProduct, *, from_source: bool) -> DownloadEntry:
        rt = self.rt
        downloads = rt.store.downloads
        entry = self._find_resumable(product) if rt.settings.download_recovery else None
        if entry is not None:
            if entry.state in (DownloadState.IN_PROGRESS, DownloadState.PENDING):
                # Its owner is gone (we hold the lock): a crash. Continue from the disk.
                rt.telemetry.record("download_recovered", product_key=product.key)
                rt.telemetry.event(
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
            for stale in rt.store.list_downloads(
                [*RUNNABLE_STATES, DownloadState.FAILED], product_key=product.key
            ):
                rt.files.discard_partials(stale)
                downloads.transition(stale.id, DownloadState.CANCELLED, owner_pid=None)
            entry = downloads.create(
                product_key=product.key,
                product_type=product.product_type,
                product_id=product.product_id,
                media_url=rt.vault.seal(product.url),
                license_url=rt.vault.seal(product.license_url),
                expected_sha256=product.sha256,
                partial_media_path=(
                    rt.layout.partial_hls_path if product.hls else rt.layout.partial_media_path
                ),
                partial_license_path=rt.layout.partial_license_path,
                expected_size=product.size,
                license_expires_at=(
                    product.license_expires_at.timestamp() if product.license_expires_at else None
                ),
                from_source=from_source,
                # An HLS download is one with a stream; the variant is recorded once chosen.
                stream=StreamChoice().to_json() if product.hls else None,
                state=DownloadState.IN_PROGRESS,
            )
            return entry  # as created: nothing else has touched it
        fresh = rt.store.get_download(entry.id)
        assert fresh is not None
        return fresh

    def _fail(
        self, product: MediaProduct, entry: DownloadEntry | None, error: OfflineError
    ) -> None:
        rt = self.rt
        kind = classify(error)
        if entry is not None:
            current = rt.store.get_download(entry.id)
            keep_partials = kind in RETRYABLE_KINDS and rt.settings.download_recovery
            if not keep_partials:
                # Nothing left behind: permanent failures and cancellations drop their bytes.
                rt.files.discard_partials(entry)
            if current is not None and not current.state.is_terminal:
                if kind is ErrorKind.CANCELLED:
                    rt.store.downloads.transition(
                        entry.id, DownloadState.CANCELLED, owner_pid=None, last_error=str(error)
                    )
                else:
                    rt.store.downloads.mark_failed(entry.id, str(error), kind)
        attempts = rt.store.get_download(entry.id) if entry is not None else None
        rt.telemetry.record(
            "download_failed",
            product_key=product.key,
            error_kind=kind.value,
            attempts=attempts.attempt_count if attempts else None,
            detail=str(error),
        )
        rt.telemetry.event(
            "download_failed", product=product.key, kind=kind.value, error=str(error)
        )
        rt.listener.offlining_failed(product, error)

    def _pause_after_interrupt(
        self, product: MediaProduct, entry: DownloadEntry | None, exc: BaseException
    ) -> None:
        rt = self.rt
        if entry is not None:
            with suppress(Exception):
                current = rt.store.get_download(entry.id)
                if current is not None and current.state in (
                    DownloadState.IN_PROGRESS,
                    DownloadState.PENDING,
                ):
                    rt.store.downloads.transition(
                        entry.id, DownloadState.PAUSED, owner_pid=None, last_error="interrupted"
                    )
        rt.telemetry.event("download_paused", product=product.key, reason=type(exc).__name__)
        rt.listener.offlining_failed(
            product,
            DownloadInterrupted(
                "interrupted; saved as PAUSED", product=product.key, hint="run `resume`"
            ),
        )
