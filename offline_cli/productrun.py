"""One run of one product's download: its license and media transfers, progress, cancel,
verify and commit. A Downloader makes one per try; an HLS product's run is hlsrun.HlsRun."""

from __future__ import annotations

import enum
import os
import stat
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from offline_cli.errors import (
    ChecksumMismatch,
    DownloadCancelled,
    DownloadError,
    NetworkError,
    PermanentError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.models import DownloadEntry, DownloadState, MediaProduct, OfflinedEntry
from offline_cli.paths import PRIVATE_DIR_MODE, Layout, fsync_dir, safe_remove
from offline_cli.retry import RetryHooks, execute
from offline_cli.runtime import Cancel, Runtime

if TYPE_CHECKING:
    from offline_cli.transfer import Checkpoint, HttpClient, Transfer, TransferResult

# How often the listener hears progress.
PROGRESS_NOTIFY_INTERVAL_S = 0.1


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
        # The origin the credentials (--header, the token) may go to; None: nowhere.
        self.trusted_origin = trusted_origin
        self.coordination = CoordinatedDownload(has_license=product.license_url is not None)
        self.resume_info: dict[str, dict[str, str | int | None]] = dict(entry.resume_info)
        self.sizes: dict[str, tuple[int, int | None]] = {}
        self.bytes_fetched = 0
        self.retries = 0
        self._last_notify = 0.0
        self._last_fraction = -1.0
        # The transfers in flight (an HLS product runs several at once), cut by a cancel.
        self._running: set[Transfer] = set()
        # Guards the counters, the running set and the sizes (HLS parts report from workers).
        self._lock = threading.RLock()

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

    def _set_size(self, part: str, done: int, total: int | None) -> None:
        self.sizes[part] = (done, total)

    def _progress(self, part: str, done: int, total: int | None) -> None:
        with self._lock:
            self._set_size(part, done, total)
            all_done, all_total = self._totals()
        if total is not None:
            self._claim_remaining(done, total)
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

    def _claim_remaining(self, done: int, total: int) -> None:
        # What is on disk now counts as used, not as still to come.
        self.rt.space.claim(id(self), total - done)

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

    def _transfer(
        self,
        part: str,
        url: str,
        partial: Path,
        *,
        window: tuple[int, int] | None = None,
        checkpoint: Checkpoint | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
    ) -> TransferResult:
        """Fetch ``url`` into ``partial`` with retries (one part of the product: its media,
        its license, or one HLS segment, init section or key)."""
        from offline_cli.transfer import Checkpoint, Transfer

        rt = self.rt
        limiter = rt.limiter
        # Each HLS part claims the space it still has to write on its own.
        owner = id(self) if window is None and checkpoint is None else id(partial)

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
            checkpoint=checkpoint or Checkpoint.from_dict(self.resume_info.get(part), url),
            on_checkpoint=on_checkpoint or self._checkpoint_saver(part),
            on_progress=lambda done, total: self._progress(part, done, total),
            check_stop=self._check_stop,
            throttle=(lambda n: self._wait(limiter.consume(n))) if limiter else None,
            read_size=_read_size(limiter.rate, rt.settings.jobs) if limiter else None,
            watch=rt.watchdog.every,
            # The free space less what the other running downloads still have to write.
            disk_free=lambda path: rt.disk_free(path) - rt.space.others(owner),
            claim_space=lambda nbytes: rt.space.claim(owner, nbytes),
            stall_timeout_s=rt.settings.stall_timeout,
            min_speed=rt.settings.min_speed,
            monotonic=rt.monotonic,
            date_if_range_hosts=rt.date_if_range_hosts,
            window=window,
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
            with self._lock:
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
            from offline_cli.network import probe_target

            monitor = rt.network_monitor()
            # After a redirect: the host that stopped answering; through a proxy: the proxy.
            failed_url = probe_target(error.url or url, rt.settings.proxy)
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
            with self._lock:
                self._running.add(transfer)
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
            with self._lock:
                self._running.discard(transfer)
                self.bytes_fetched += transfer.stats.bytes_fetched
            if owner != id(self):
                rt.space.release(owner)
        return result

    def _poll_cancel(self) -> None:
        """Ask the database whether another process deleted the product; stop if so."""
        if not self.cancel.is_set() and self.rt.store.downloads.is_cancel_requested(self.entry.id):
            self.cancel.set(Cancel.CANCELLED)
        self._check_stop()

    def _abort_current(self) -> None:
        with self._lock:
            running = list(self._running)
        for transfer in running:
            transfer.abort()

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

    def _fetch_license(self) -> TransferResult | None:
        """The license first: small, and the likelier to be refused."""
        if self.coordination.state is not CoordinationState.WAITING_FOR_LICENSE:
            return None
        assert self.product.license_url and self.entry.partial_license_path
        try:
            result = self._transfer(
                "license", self.product.license_url, Path(self.entry.partial_license_path)
            )
        except DownloadCancelled:
            raise  # a delete from another process: nothing to do with the license
        except DownloadError as exc:
            # As media errors name their host, and so the license's is not taken for the
            # media's: "track:42: license: HTTP 404 Not Found from license.example.com".
            raise exc.within("license") from exc.__cause__
        self.coordination.advance(CoordinationState.WAITING_FOR_MEDIA)
        return result

    def _run(self) -> None:
        layout = self.rt.layout
        self._restore_from_interrupted_commit()
        license_result = self._fetch_license()
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

    def _final_media_path(self) -> Path:
        return self.rt.layout.final_media_path(self.product.key, self.entry.id)

    def _restore_from_interrupted_commit(self) -> None:
        """A crash between the renames and the database commit left final files behind:
        move them back to the partial paths so the commit is simply done again."""
        layout = self.rt.layout
        pairs = [
            (self.entry.partial_media_path, self._final_media_path()),
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
        fsync_dir(final_media.parent)
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
        self._record(offlined, final_media, final_license)

    def _record(
        self, offlined: OfflinedEntry, final_media: Path, final_license: Path | None
    ) -> None:
        """Commit the product's row, then remove the files of the copy it replaced."""
        key = self.product.key
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
                    safe_remove(self.rt.layout, path)


def _read_size(rate: float, jobs: int) -> int:
    """Bytes a read takes under a rate limit: about a quarter of a second of a job's share
    (1 KiB to 64 KiB), so the jobs' first reads do not overshoot a small budget."""
    return max(1024, min(64 * 1024, int(rate // (4 * max(1, jobs)))))
