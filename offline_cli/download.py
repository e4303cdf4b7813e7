"""One product's download: resolve it, prepare its entry, run its transfers, verify, commit.

The engine decides *whether* and *when* a product is downloaded (locks, queues, what to
resume); a Downloader does the download itself with what the runtime hands it (clock,
sleep, store, telemetry, retry policy, rate limiter), and a ProductRun is one run of it,
stopped by its one cancel signal. Nothing here imports the engine.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from offline_cli.auth import origin_of
from offline_cli.credentials import lacks_credentials
from offline_cli.errors import (
    ChecksumMismatch,
    DownloadError,
    DownloadInterrupted,
    NetworkError,
    OfflineError,
    PermanentError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.models import (
    RETRYABLE_KINDS,
    RUNNABLE_STATES,
    DownloadEntry,
    DownloadState,
    ErrorKind,
    MediaProduct,
    OfflinedEntry,
)
from offline_cli.paths import PRIVATE_DIR_MODE, Layout, safe_remove
from offline_cli.redaction import redact_url
from offline_cli.retry import RetryHooks, classify, execute
from offline_cli.runtime import Cancel, Runtime

if TYPE_CHECKING:
    from offline_cli.transfer import Checkpoint, HttpClient, Transfer, TransferResult

# How often the listener hears progress.
PROGRESS_NOTIFY_INTERVAL_S = 0.1


def _redacted(url: str | None) -> str | None:
    return redact_url(url) if url is not None else None


class CoordinationState(enum.Enum):
    """Media and license of one product move through these together."""

    WAITING_FOR_LICENSE = "waiting for license"
    WAITING_FOR_MEDIA = "waiting for media"
    BOTH_COMPLETED = "both completed"
    FAILED = "failed"


_COORDINATION_NEXT = {
    CoordinationState.WAITING_FOR_LICENSE: {
        CoordinationState.WAITING_FOR_MEDIA,
        CoordinationState.FAILED,
    },
    CoordinationState.WAITING_FOR_MEDIA: {
        CoordinationState.BOTH_COMPLETED,
        CoordinationState.FAILED,
    },
    # the commit itself can still fail (disk, interrupt)
    CoordinationState.BOTH_COMPLETED: {CoordinationState.FAILED},
    CoordinationState.FAILED: set(),
}


class CoordinatedDownload:
    """License first (small, and the likelier to be refused), then media; committed only
    when both are complete, and a failure of either removes both."""

    def __init__(self, has_license: bool) -> None:
        self.state = (
            CoordinationState.WAITING_FOR_LICENSE
            if has_license
            else CoordinationState.WAITING_FOR_MEDIA
        )

    def fail(self) -> None:
        """Either part failed for good: the product stays NOT_OFFLINED."""
        if self.state is not CoordinationState.FAILED:
            self.advance(CoordinationState.FAILED)

    def advance(self, new_state: CoordinationState) -> None:
        if new_state not in _COORDINATION_NEXT[self.state]:
            raise RuntimeError(f"coordination: {self.state.value} -> {new_state.value}")
        self.state = new_state


class Downloader:
    """Downloads, verifies and commits products; the caller holds each product's lock."""

    def __init__(self, runtime: Runtime, client: Callable[[], HttpClient]) -> None:
        self.rt = runtime
        self._client = client

    def download(self, product: MediaProduct, cancel: Cancel) -> None:
        """Download ``product`` (the listener hears started, then completed or failed)."""
        rt = self.rt
        started = rt.monotonic()
        entry: DownloadEntry | None = None
        try:
            product = self._with_full_urls(product)
            rt.listener.offlining_started(product)
            client = self._client()
            from_source = self._came_from_source(product)
            trusted = self._trusted_origin(product, from_source)
            product = self._resolve(product, client, cancel, trusted)
            self._refuse_expired_license(product)
            # Started once its media URL is known: a bad playback-info answer starts nothing.
            rt.telemetry.record("download_started", product_key=product.key)
            entry = self._prepare_entry(product, from_source=from_source)
            rt.telemetry.event("state_changed", product=product.key, to="IN_PROGRESS")
            run = ProductRun(rt, product, entry, client, cancel, trusted_origin=trusted)
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
            RetryHooks(
                sleep=lambda seconds: rt.wait(seconds, cancel, product.key),
                clock=rt.clock,
                made_progress=lambda: False,
                on_retry=lambda e, a, d, r: rt.listener.offlining_retrying(product, a, d, r),
                rand=rt.rand,
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
                partial_media_path=rt.layout.partial_media_path,
                partial_license_path=rt.layout.partial_license_path,
                expected_size=product.size,
                license_expires_at=(
                    product.license_expires_at.timestamp() if product.license_expires_at else None
                ),
                from_source=from_source,
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


class ProductRun(OfflineEngineListener):
    """One run of one product's download: license and media transfers, verify, commit."""

    def __init__(
        self,
        runtime: Runtime,
        product: MediaProduct,
        entry: DownloadEntry,
        client: HttpClient,
        cancel: Cancel,
        *,
        trusted_origin: str | None = None,
    ) -> None:
        self.rt = runtime
        self.cancel = cancel
        self.product = product
        self.entry = entry
        self.client = client
        self.trusted_origin = trusted_origin
        self.coordination = CoordinatedDownload(has_license=product.license_url is not None)
        self.resume_info: dict[str, dict[str, str | int | None]] = dict(entry.resume_info)
        self.sizes: dict[str, tuple[int, int | None]] = {}
        self.bytes_fetched = 0
        self.retries = 0
        self._last_notify = 0.0
        self._last_fraction = -1.0
        self._current: Transfer | None = None

    # -- progress and cancellation --------------------------------------------------------------

    def _totals(self) -> tuple[int, int | None]:
        done = sum(d for d, _ in self.sizes.values())
        totals = [t for _, t in self.sizes.values()]
        expected_parts = 2 if self.product.license_url else 1
        if len(totals) < expected_parts or any(t is None for t in totals):
            total = None
            if self.product.size is not None and not self.product.license_url:
                total = self.product.size
        else:
            total = sum(t for t in totals if t is not None)
        return done, total

    def _progress(self, part: str, done: int, total: int | None) -> None:
        self.sizes[part] = (done, total)
        if total is not None:
            # What is on disk now counts as used, not as still to come.
            self.rt.space.claim(id(self), total - done)
        all_done, all_total = self._totals()
        now = self.rt.monotonic()
        finished = all_total is not None and all_done >= all_total
        if finished or now - self._last_notify >= PROGRESS_NOTIFY_INTERVAL_S:
            self._last_notify = now
            self.rt.listener.offlining_bytes(self.product, all_done, all_total)
            if all_total:
                fraction = min(1.0, all_done / all_total)
                if fraction != self._last_fraction:
                    self._last_fraction = fraction
                    self.rt.listener.offlining_progressed(self.product, fraction)
        if self.rt.settings.enhanced_download_management:
            # Written with every running download's at the board's next tick: a download
            # done before then never writes its progress (its commit says it all).
            self.rt.progress.report(self.entry.id, all_done, all_total)
        self.rt.fault("progress", part=part, done=done)

    def _check_stop(self) -> None:
        self.cancel.raise_if_set(self.product.key)

    def _wait(self, seconds: float) -> None:
        """A backoff or a rate-limit wait: ends at once when the run is stopped."""
        self.rt.wait(seconds, self.cancel, self.product.key)

    # -- network observer -----------------------------------------------------------------------

    def network_did_disconnect(self, host: str) -> None:
        self.rt.store.downloads.transition(self.entry.id, DownloadState.PAUSED)
        self.rt.telemetry.record("network_pause", product_key=self.product.key, detail=host)
        self.rt.telemetry.event("network_paused", product=self.product.key, host=host)
        self.rt.listener.offlining_paused(self.product, f"waiting for network ({host})")

    def network_did_connect(self, host: str) -> None:
        self.rt.store.downloads.transition(self.entry.id, DownloadState.IN_PROGRESS)
        self.rt.telemetry.event("network_resumed", product=self.product.key, host=host)
        self.rt.listener.offlining_unpaused(self.product)

    # -- transfers ------------------------------------------------------------------------------

    def _checkpoint_saver(self, part: str) -> Callable[[Checkpoint], None]:
        def save(checkpoint: Checkpoint) -> None:
            self.resume_info[part] = checkpoint.to_dict()
            self.rt.store.downloads.set_resume_info(self.entry.id, self.resume_info)
            self.rt.fault("checkpoint", part=part, etag=checkpoint.etag)

        return save

    def _transfer(self, part: str, url: str, partial: Path) -> TransferResult:
        from offline_cli.transfer import Checkpoint, Transfer

        rt = self.rt
        limiter = rt.limiter

        def attempt() -> TransferResult:
            self._check_stop()
            try:
                return transfer.attempt()
            except DownloadError:
                self._check_stop()  # a read the cancel watch cut short is a cancellation
                raise

        transfer = Transfer(
            self.client,
            url,
            partial,
            product=self.product.key,
            checkpoint=Checkpoint.from_dict(self.resume_info.get(part), url),
            on_checkpoint=self._checkpoint_saver(part),
            on_progress=lambda done, total: self._progress(part, done, total),
            check_stop=self._check_stop,
            throttle=(lambda n: self._wait(limiter.consume(n))) if limiter else None,
            read_size=_read_size(limiter.rate, rt.settings.jobs) if limiter else None,
            watch=rt.watchdog.every,
            # The free space less what the other running downloads still have to write.
            disk_free=lambda path: rt.disk_free(path) - rt.space.others(id(self)),
            claim_space=lambda nbytes: rt.space.claim(id(self), nbytes),
            stall_timeout_s=rt.settings.stall_timeout,
            min_speed=rt.settings.min_speed,
            monotonic=rt.monotonic,
            date_if_range_hosts=rt.date_if_range_hosts,
            trusted_origin=self.trusted_origin,
        )
        seen = {"bytes": transfer.bytes_on_disk}

        def made_progress() -> bool:
            now = transfer.bytes_on_disk
            # Bytes that came below the speed floor do not count: a server trickling a
            # byte a second must use up the retries, not be retried forever.
            moved = now - transfer.slow_bytes > seen["bytes"]
            seen["bytes"] = now
            return moved

        def on_retry(error: DownloadError, attempt: int, delay: float, reason: str) -> None:
            self.retries += 1
            rt.store.downloads.set_attempts(self.entry.id, attempt, str(error))
            rt.telemetry.record(
                "retry",
                product_key=self.product.key,
                error_kind=error.kind,
                attempts=attempt,
                detail=reason,
            )
            rt.telemetry.event(
                "retry_scheduled",
                product=self.product.key,
                attempt=attempt,
                delay_s=round(delay, 3),
                reason=reason,
                error=str(error),
            )
            rt.listener.offlining_retrying(self.product, attempt, delay, reason)

        def wait_out_outage(error: DownloadError) -> bool | None:
            if not (
                rt.settings.network_aware_downloads
                and isinstance(error, NetworkError)
                and error.host_unreachable
                and transfer.host_answered
            ):
                return None
            monitor = rt.network_monitor()
            failed_url = error.url or url  # after a redirect: the host that stopped answering
            if monitor.is_reachable(failed_url):
                # It accepts connections (a TLS failure, or it is back already): not an
                # outage, so ordinary backoff and attempt counting apply.
                return None
            monitor.add_observer(self)
            try:
                # A delete from another process must not wait for the network to come back.
                # After each probe: a delete from another process must not wait for the
                # network to come back (nor for the cancel watch's next look).
                return monitor.wait_until_reachable(
                    failed_url, rt.settings.network_timeout, check_stop=self._poll_cancel
                )
            finally:
                monitor.remove_observer(self)
                self._check_stop()

        try:
            self._current = transfer
            result = execute(
                attempt,
                rt.policy,
                RetryHooks(
                    sleep=self._wait,
                    clock=rt.clock,
                    made_progress=made_progress,
                    on_retry=on_retry,
                    wait_out_outage=wait_out_outage,
                    rand=rt.rand,
                ),
            )
        finally:
            self._current = None
            self.bytes_fetched += transfer.stats.bytes_fetched
        return result

    def _poll_cancel(self) -> None:
        """Ask the database whether another process deleted the product; stop if so."""
        if not self.cancel.is_set() and self.rt.store.downloads.is_cancel_requested(self.entry.id):
            self.cancel.set(Cancel.CANCELLED)
        self._check_stop()

    def _abort_current(self) -> None:
        current = self._current
        if current is not None:
            current.abort()

    def _on_tick(self) -> None:
        """On the watchdog, after the progress board asked the database whether another
        process deleted the product (so a delete is noticed even when no byte arrives):
        keep cutting the transfer short while the run is stopped (a request may start just
        after a cut)."""
        if self.cancel.is_set():
            # Every tick, not once: the transfer running now may be a later one (the media
            # after the license) or a new request after the last was cut.
            self._abort_current()

    def run(self) -> None:
        unwatch = self.rt.progress.add(self.entry.id, self.cancel, self._on_tick)
        undo = self.cancel.on_set(self._abort_current)
        try:
            self._run()
        except BaseException:
            self.coordination.fail()
            raise
        finally:
            undo()
            unwatch()
            self.rt.space.release(id(self))

    def _run(self) -> None:
        layout = self.rt.layout
        self._restore_from_interrupted_commit()
        license_result = None
        if self.coordination.state is CoordinationState.WAITING_FOR_LICENSE:
            assert self.product.license_url and self.entry.partial_license_path
            license_result = self._transfer(
                "license", self.product.license_url, Path(self.entry.partial_license_path)
            )
            self.coordination.advance(CoordinationState.WAITING_FOR_MEDIA)
        assert self.product.url and self.entry.partial_media_path
        media = self._transfer("media", self.product.url, Path(self.entry.partial_media_path))
        self._verify(media)
        self.coordination.advance(CoordinationState.BOTH_COMPLETED)
        self._check_stop()
        self._commit(media, license_result, layout)

    def _verify(self, media: TransferResult) -> None:
        expected = self.product.sha256 or self.entry.expected_sha256
        if expected and media.sha256 != expected.lower():
            raise ChecksumMismatch(
                f"checksum mismatch: expected SHA-256 {expected}, got {media.sha256}",
                product=self.product.key,
                url=self.product.url,
                hint="the server sent different bytes; nothing was kept",
            )
        if self.product.size is not None and media.size != self.product.size:
            raise ChecksumMismatch(
                f"size mismatch: expected {self.product.size} bytes, got {media.size}",
                product=self.product.key,
                url=self.product.url,
            )

    def _restore_from_interrupted_commit(self) -> None:
        """A crash between the renames and the database commit left final files behind:
        move them back to the partial paths so the commit is simply done again."""
        layout = self.rt.layout
        pairs = [
            (
                self.entry.partial_media_path,
                layout.final_media_path(self.product.key, self.entry.id),
            ),
            (
                self.entry.partial_license_path,
                layout.final_license_path(self.product.key, self.entry.id),
            ),
        ]
        for partial, final in pairs:
            if partial and not Path(partial).exists() and final.exists():
                os.replace(final, partial)

    def _check_still_ours(self, written: TransferResult, layout: Layout) -> None:
        """The partial file about to be committed is the one this run wrote and hashed:
        a link or another file swapped in meanwhile (or a linked partial folder) would be
        stored under a SHA-256 it does not have, or import a file from outside the home."""
        try:
            info = os.lstat(written.path)
            swapped = (
                os.path.islink(layout.partial_dir)
                or not stat.S_ISREG(info.st_mode)
                or info.st_size != written.size
                or (written.file_id is not None and written.file_id != (info.st_dev, info.st_ino))
            )
        except OSError:
            swapped = True
        if swapped:
            raise PermanentError(
                f"{written.path} was replaced while it downloaded; nothing was stored",
                product=self.product.key,
                hint="something else writes in the home's partial folder; run offline again",
            )

    def _commit(
        self, media: TransferResult, license_result: TransferResult | None, layout: Layout
    ) -> None:
        key = self.product.key
        final_media = layout.final_media_path(key, self.entry.id)
        final_license = layout.final_license_path(key, self.entry.id) if license_result else None
        for written in (license_result, media):
            if written is not None:
                self._check_still_ours(written, layout)
        if final_media.parent.is_symlink():
            final_media.parent.unlink()  # a link planted in the store: never write through it
        final_media.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        if license_result is not None and final_license is not None:
            os.replace(license_result.path, final_license)
            self.rt.fault("license_moved")
        os.replace(media.path, final_media)
        _fsync_dir(final_media.parent)
        self.rt.fault("files_moved")
        expires = self.product.license_expires_at
        offlined = OfflinedEntry(
            product_key=key,
            product_type=self.product.product_type,
            product_id=self.product.product_id,
            media_path=str(final_media),
            license_path=str(final_license) if final_license else None,
            size=media.size,
            sha256=media.sha256,
            license_size=license_result.size if license_result else None,
            license_sha256=license_result.sha256 if license_result else None,
            etag=media.etag,
            last_modified=media.last_modified,
            license_expires_at=expires.timestamp() if isinstance(expires, datetime) else None,
            source_url=self.rt.vault.seal(self.product.url) or "",
            license_url=self.rt.vault.seal(self.product.license_url),
            mtime_ns=os.stat(final_media, follow_symlinks=False).st_mtime_ns,
            completed_at=self.rt.clock(),
        )
        old = self.rt.store.commit_product(self.entry.id, offlined)
        if old is not None:
            for column, raw in (("media_path", old.media_path), ("license_path", old.license_path)):
                if not raw or raw in (offlined.media_path, offlined.license_path):
                    continue
                # The old row may be damaged: only a file of this product's folder goes.
                path = self.rt.files.own_final_file(raw, key)
                if path is None:
                    self.rt.files.report_foreign_path(key, column, raw)
                elif path not in (final_media, final_license):  # the same file, named oddly
                    safe_remove(layout, path)


def _read_size(rate: float, jobs: int) -> int:
    """Bytes a read takes under a rate limit: about a quarter of a second of a job's share
    (1 KiB to 64 KiB), so the jobs' first reads do not overshoot a small budget."""
    return max(1024, min(64 * 1024, int(rate // (4 * max(1, jobs)))))


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
