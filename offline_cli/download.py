"""One product's download: license and media transfers, cancel watch, verify, commit.

The engine decides *whether* and *when* a product is downloaded (locks, resume, listener
start/end); a ProductRun does the download itself, through the engine's seams (clock,
sleep, store, HTTP client), and is the network monitor's observer while it waits.
"""

from __future__ import annotations

import enum
import os
import stat
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from offline_cli.errors import (
    ChecksumMismatch,
    DownloadCancelled,
    DownloadError,
    NetworkError,
    OfflineError,
    PermanentError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.models import DownloadEntry, DownloadState, MediaProduct, OfflinedEntry
from offline_cli.paths import PRIVATE_DIR_MODE, Layout, safe_remove

if TYPE_CHECKING:
    import httpx

    from offline_cli.engine import OfflineEngine
    from offline_cli.transfer import Checkpoint, Transfer, TransferResult

# How often progress is written to the database (and a cancel request is noticed).
PROGRESS_PERSIST_INTERVAL_S = 0.5
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
        engine: OfflineEngine,
        product: MediaProduct,
        entry: DownloadEntry,
        client: httpx.Client,
    ) -> None:
        self.engine = engine
        self.product = product
        self.entry = entry
        self.client = client
        self.coordination = CoordinatedDownload(has_license=product.license_url is not None)
        self.resume_info: dict[str, dict[str, str | int | None]] = dict(entry.resume_info)
        self.sizes: dict[str, tuple[int, int | None]] = {}
        self.bytes_fetched = 0
        self.retries = 0
        self._last_persist = 0.0
        self._last_notify = 0.0
        self._last_fraction = -1.0
        self._cancel_seen = False
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
        all_done, all_total = self._totals()
        now = self.engine._monotonic()
        finished = all_total is not None and all_done >= all_total
        if finished or now - self._last_notify >= PROGRESS_NOTIFY_INTERVAL_S:
            self._last_notify = now
            self.engine.listener.offlining_bytes(self.product, all_done, all_total)
            if all_total:
                fraction = min(1.0, all_done / all_total)
                if fraction != self._last_fraction:
                    self._last_fraction = fraction
                    self.engine.listener.offlining_progressed(self.product, fraction)
        enhanced = self.engine.settings.enhanced_download_management
        if enhanced and now - self._last_persist >= PROGRESS_PERSIST_INTERVAL_S:
            self._last_persist = now
            cancelled = self.engine.store.downloads.update_progress(
                self.entry.id, bytes_done=all_done, bytes_total=all_total
            )
            self._cancel_seen = self._cancel_seen or cancelled

    def _check_stop(self) -> None:
        if self._cancel_seen:
            raise DownloadCancelled(
                "cancelled: deleted by another process", product=self.product.key
            )

    def _interruptible_sleep(self, seconds: float) -> None:
        """Sleep in slices so a delete from another process is noticed within ~1 s."""
        deadline = self.engine._monotonic() + seconds
        while True:
            remaining = deadline - self.engine._monotonic()
            if remaining <= 0:
                return
            self.engine._sleep(min(remaining, PROGRESS_PERSIST_INTERVAL_S))
            if self.engine.store.downloads.is_cancel_requested(self.entry.id):
                self._cancel_seen = True
                self._check_stop()

    # -- network observer -----------------------------------------------------------------------

    def network_did_disconnect(self, host: str) -> None:
        self.engine.store.downloads.transition(self.entry.id, DownloadState.PAUSED)
        self.engine._record("network_pause", product_key=self.product.key, detail=host)
        self.engine._event("network_paused", product=self.product.key, host=host)
        self.engine.listener.offlining_paused(self.product, f"waiting for network ({host})")

    def network_did_connect(self, host: str) -> None:
        self.engine.store.downloads.transition(self.entry.id, DownloadState.IN_PROGRESS)
        self.engine._event("network_resumed", product=self.product.key, host=host)
        self.engine.listener.offlining_unpaused(self.product)

    # -- transfers ------------------------------------------------------------------------------

    def _checkpoint_saver(self, part: str) -> Callable[[Checkpoint], None]:
        def save(checkpoint: Checkpoint) -> None:
            self.resume_info[part] = checkpoint.to_dict()
            self.engine.store.downloads.set_resume_info(self.entry.id, self.resume_info)

        return save

    def _transfer(self, part: str, url: str, partial: Path) -> TransferResult:
        from offline_cli.retry import RetryHooks, execute
        from offline_cli.transfer import Checkpoint, Transfer

        engine = self.engine

        def attempt() -> TransferResult:
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
            disk_free=engine._disk_free,
            stall_timeout_s=engine.settings.stall_timeout,
            min_speed=engine.settings.min_speed,
            monotonic=engine._monotonic,
            date_if_range_hosts=engine.date_if_range_hosts,
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
            engine.store.downloads.set_attempts(self.entry.id, attempt, str(error))
            engine._record(
                "retry",
                product_key=self.product.key,
                error_kind=error.kind,
                attempts=attempt,
                detail=reason,
            )
            engine._event(
                "retry_scheduled",
                product=self.product.key,
                attempt=attempt,
                delay_s=round(delay, 3),
                reason=reason,
                error=str(error),
            )
            engine.listener.offlining_retrying(self.product, attempt, delay, reason)

        def check_cancel() -> None:
            if engine.store.downloads.is_cancel_requested(self.entry.id):
                self._cancel_seen = True
            self._check_stop()

        def wait_out_outage(error: DownloadError) -> bool | None:
            if not (
                engine.settings.network_aware_downloads
                and isinstance(error, NetworkError)
                and error.host_unreachable
                and transfer.host_answered
            ):
                return None
            monitor = engine._monitor()
            failed_url = error.url or url  # after a redirect: the host that stopped answering
            if monitor.is_reachable(failed_url):
                # It accepts connections (a TLS failure, or it is back already): not an
                # outage, so ordinary backoff and attempt counting apply.
                return None
            monitor.add_observer(self)
            try:
                # A delete from another process must not wait for the network to come back.
                return monitor.wait_until_reachable(
                    failed_url, engine.settings.network_timeout, check_stop=check_cancel
                )
            finally:
                monitor.remove_observer(self)
                self._check_stop()

        try:
            self._current = transfer
            result = execute(
                attempt,
                engine._policy(),
                RetryHooks(
                    sleep=self._interruptible_sleep,
                    clock=engine._clock,
                    made_progress=made_progress,
                    on_retry=on_retry,
                    wait_out_outage=wait_out_outage,
                    rand=engine._rand,
                ),
            )
        finally:
            self._current = None
            self.bytes_fetched += transfer.stats.bytes_fetched
        return result

    def _watch_for_cancel(self, stop: threading.Event) -> None:
        """Thread: notice a delete from another process even when no byte arrives (a stall,
        a slow server, progress persistence switched off) and cut the transfer short."""
        downloads = self.engine.store.downloads
        try:
            while not stop.wait(PROGRESS_PERSIST_INTERVAL_S):
                if not self._cancel_seen and downloads.is_cancel_requested(self.entry.id):
                    self._cancel_seen = True
                if self._cancel_seen:
                    # Every tick, not once: the transfer running now may be a later one (the
                    # media after the license) or a new request after the last was cut.
                    current = self._current
                    if current is not None:
                        current.abort()
        except OfflineError:  # pragma: no cover - the store failing: the main thread will see
            return
        finally:
            self.engine.store.close()  # this thread's own connection

    def run(self) -> None:
        stop = threading.Event()
        watch = threading.Thread(target=self._watch_for_cancel, args=(stop,), daemon=True)
        watch.start()
        try:
            self._run()
        except BaseException:
            self.coordination.fail()
            raise
        finally:
            stop.set()
            watch.join()

    def _run(self) -> None:
        layout = self.engine.layout
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
        layout = self.engine.layout
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
        os.replace(media.path, final_media)
        _fsync_dir(final_media.parent)
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
            source_url=self.engine.vault.seal(self.product.url) or "",
            license_url=self.engine.vault.seal(self.product.license_url),
            mtime_ns=os.stat(final_media, follow_symlinks=False).st_mtime_ns,
            completed_at=self.engine._clock(),
        )
        old = self.engine.store.commit_product(self.entry.id, offlined)
        if old is not None:
            for column, raw in (("media_path", old.media_path), ("license_path", old.license_path)):
                if not raw or raw in (offlined.media_path, offlined.license_path):
                    continue
                # The old row may be damaged: only a file of this product's folder goes.
                path = self.engine.own_final_file(raw, key)
                if path is None:
                    self.engine.report_foreign_path(key, column, raw)
                elif path not in (final_media, final_license):  # the same file, named oddly
                    safe_remove(layout, path)


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
