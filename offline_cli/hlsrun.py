"""One HLS product's run: plan it from its playlists, fetch its parts (segments, init sections,
AES-128 keys) several at once, each resumable by range, and commit its folder together with
the local playlists that name them, or nothing."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_cli.bundle import INDEX_PLAYLIST, is_part_name, regular_size, sha256_of
from offline_cli.errors import (
    DiskFull,
    DownloadCancelled,
    DownloadError,
    OfflineError,
    PermanentError,
)
from offline_cli.hls import (
    KEY_BYTES,
    MAX_PLAYLIST_BYTES,
    HlsPlan,
    Part,
    PartKind,
    Quality,
    StreamChoice,
    plan,
)
from offline_cli.models import OfflinedEntry, StoredPart, shorten
from offline_cli.paths import (
    PRIVATE_DIR_MODE,
    fsync_dir,
    open_private,
    safe_remove,
    safe_remove_tree,
)
from offline_cli.productrun import CoordinationState, ProductRun
from offline_cli.redaction import redact_url
from offline_cli.retry import RetryHooks, execute
from offline_cli.runtime import Cancel, PartsAbandoned, RunInterrupted, Runtime

if TYPE_CHECKING:
    from offline_cli.models import DownloadEntry, MediaProduct
    from offline_cli.transfer import Checkpoint, HttpClient, TransferResult


class HlsRun(ProductRun):
    """A ProductRun whose media is a folder of parts planned from an HLS playlist."""

    def __init__(
        self,
        runtime: Runtime,
        product: MediaProduct,
        entry: DownloadEntry,
        client: HttpClient,
        cancel: Cancel,
        *,
        quality: Quality,
        recorded: StreamChoice | None,
        stored: OfflinedEntry | None,
        trusted_origin: str | None = None,
    ) -> None:
        # The parts stop together: a part that fails for good stops its siblings through
        # this run's own signal, which the caller's (delete, Ctrl-C) also sets.
        super().__init__(runtime, product, entry, client, Cancel(), trusted_origin=trusted_origin)
        self.outer = cancel
        self.quality = quality
        self.recorded = recorded
        self.stored = stored if stored is not None and stored.is_hls else None
        assert entry.partial_media_path
        self.folder = Path(entry.partial_media_path)
        self.plan: HlsPlan | None = None
        self._estimates: dict[str, int] = {}
        self._done = 0  # bytes on disk of every part (and the license)
        # The validator each byte-ranged file's parts came under (redacted URL -> version).
        self._versions: dict[str, str] = {}
        self._total = 0  # the parts' sizes, or their estimates until known
        self.done_parts: dict[str, StoredPart] = {}
        self._first_error: BaseException | None = None

    def run(self) -> None:
        undo = self.outer.on_set(lambda: self.cancel.set(self.outer.reason or Cancel.INTERRUPTED))
        try:
            super().run()
        finally:
            undo()

    # -- progress -------------------------------------------------------------------------

    def _claim_remaining(self, done: int, total: int) -> None:
        pass  # each part claims its own (see ProductRun._transfer)

    def _set_size(self, part: str, done: int, total: int | None) -> None:
        # Running sums (a progress report comes with every chunk of every part; summing a
        # few thousand parts each time would cost more than the download).
        old_done, old_total = self.sizes.get(part, (0, None))
        estimate = self._estimates.get(part, 0)
        self._done += done - old_done
        self._total += self._expected(estimate, done, total) - self._expected(
            estimate, old_done, old_total
        )
        self.sizes[part] = (done, total)

    @staticmethod
    def _expected(estimate: int, done: int, total: int | None) -> int:
        """A part's size once its response said it; until then the playlist's estimate
        (BANDWIDTH x duration), never less than what arrived."""
        return total if total is not None else max(estimate, done)

    def _totals(self) -> tuple[int, int | None]:
        return self._done, (self._total if self.plan is not None else None)

    # -- the run --------------------------------------------------------------------------

    def _final_media_path(self) -> Path:
        return self.rt.layout.final_hls_path(self.product.key, self.entry.id)

    def _run(self) -> None:
        self._restore_from_interrupted_commit()
        license_result = self._fetch_license()
        planned = self._plan()
        parts = planned.parts
        with self._lock:
            self._estimates = {p.name: p.estimate for p in parts}
            self._total += sum(p.estimate for p in parts if p.name not in self.sizes)
            self.plan = planned
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            self.folder.unlink()  # planted: never write through it
        self.folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        saved = self.rt.store.downloads.saved_parts(self.entry.id)
        todo: list[Part] = []
        for part in parts:
            have = self._already_have(part, saved.get(part.name))
            if have is None:
                todo.append(part)
            else:
                self.done_parts[part.name] = have
                self._progress(part.name, have.size, have.size)
        self._fetch_all(todo, saved)
        self.coordination.advance(CoordinationState.BOTH_COMPLETED)
        self._check_stop()
        self._commit_folder(planned, parts, license_result)

    def _plan(self) -> HlsPlan:
        from offline_cli.playback import fetch_playlist

        rt = self.rt
        assert self.product.url

        def fetch(url: str) -> tuple[str, str]:
            self._check_stop()
            return execute(
                lambda: fetch_playlist(
                    self.client,
                    url,
                    self.product.key,
                    limit=MAX_PLAYLIST_BYTES,
                    stall_timeout_s=rt.settings.stall_timeout,
                    trusted_origin=self.trusted_origin,
                ),
                rt.policy,
                RetryHooks(
                    sleep=self._wait,
                    clock=rt.clock,
                    made_progress=lambda: False,
                    on_retry=lambda e, a, d, r: rt.listener.offlining_retrying(
                        self.product, a, d, r
                    ),
                    rand=rt.rand,
                ),
            )

        try:
            planned = plan(
                self.product.url, fetch, self.quality, self.recorded, product=self.product.key
            )
        except OfflineError:
            raise
        except Exception as exc:
            # m3u8 reads text a server wrote and may fail anywhere on it (when parsing, or
            # later in a property): a playlist it cannot read is a bad playlist, never a
            # crash that would also stop the other products of the command.
            raise PermanentError(
                f"bad HLS playlist: it cannot be read ({type(exc).__name__}: "
                f"{shorten(str(exc), 120)})",
                product=self.product.key,
                url=self.product.url,
            ) from exc
        choice = planned.choice.to_json()
        if choice != self.entry.stream:
            rt.store.downloads.set_stream(self.entry.id, choice)
        rt.telemetry.event(
            "hls_planned",
            product=self.product.key,
            parts=len(planned.parts),
            bandwidth=planned.choice.bandwidth,
        )
        return planned

    def _already_have(self, part: Part, saved: dict[str, Any] | None) -> StoredPart | None:
        """The part when a complete copy is at hand: finished by an earlier run of this
        download (kill -9, a network failure), or unchanged in the copy being repaired
        (linked in, so `validate --repair` fetches only what is damaged). Hashed again
        either way: a file in the home may have been replaced since."""
        path = self.folder / part.name
        if saved and saved.get("source") == part.identity and saved.get("complete"):
            size, digest = saved.get("size"), saved.get("sha256")
            if isinstance(size, int) and regular_size(path) == size and isinstance(digest, str):
                try:
                    if sha256_of(path) == digest:
                        version = saved.get("version")
                        version = version if isinstance(version, str) else None
                        self._pin_version(part, version)
                        return StoredPart(
                            part.name, part.kind, size, digest, part.identity, version
                        )
                except OSError:
                    pass
        if self.stored is None or self.stored.parts is None:
            return None
        old_folder = self.rt.files.own_final_file(self.stored.media_path, self.product.key)
        if old_folder is None or old_folder.is_symlink():
            return None
        for old in self.stored.parts:
            if old.source != part.identity or old.kind != part.kind or not is_part_name(old.name):
                continue
            source = old_folder / old.name
            if regular_size(source) != old.size:
                continue
            try:
                if sha256_of(source) != old.sha256:
                    continue
                path.unlink(missing_ok=True)
                try:
                    os.link(source, path, follow_symlinks=False)
                except OSError:
                    shutil.copyfile(source, path, follow_symlinks=False)
            except OSError:
                continue
            self._pin_version(part, old.version)
            kept = StoredPart(
                part.name, part.kind, old.size, old.sha256, part.identity, old.version
            )
            self._save_complete(kept)
            return kept
        return None

    def _save_complete(self, part: StoredPart) -> None:
        self.rt.store.downloads.save_part(
            self.entry.id,
            part.name,
            {
                "source": part.source,
                "complete": True,
                "size": part.size,
                "sha256": part.sha256,
                "version": part.version,
            },
        )

    def _pin_version(self, part: Part, version: str | None) -> None:
        """The byte ranges of one file all come from one version of it: the first part of a
        URL to arrive (or be kept) pins its validator; a part of another version fails the
        download, its partial data removed, so the next try fetches them all anew."""
        if version is None or part.window is None:
            return
        resource = redact_url(part.url)
        with self._lock:
            pinned = self._versions.setdefault(resource, version)
        if pinned != version:
            raise PermanentError(
                f"{shorten(resource, 80)} changed while its byte ranges were fetched "
                f"({shorten(pinned, 40)}, then {shorten(version, 40)}); nothing was stored",
                product=self.product.key,
                url=part.url,
                hint="run the command again: it fetches every range of the new version",
            )

    def _fetch_all(self, parts: list[Part], saved: dict[str, dict[str, Any]]) -> None:
        """Fetch ``parts``, up to -j at once; the first to fail for good stops the others
        and is what the run reports (a network failure keeps the completed parts)."""
        workers = max(1, min(self.rt.settings.jobs, len(parts)))
        if workers == 1:
            for part in parts:
                self._fetch_one(part, saved.get(part.name))
            return
        pool = ThreadPoolExecutor(workers, thread_name_prefix="offline-cli-part")
        try:
            for part in parts:
                pool.submit(self._fetch_guarded, part, saved.get(part.name))
            pool.shutdown(wait=True)
        except BaseException:
            # Ctrl-C in this thread while the parts run: stop them, keep their bytes.
            self.cancel.set(Cancel.INTERRUPTED)
            pool.shutdown(wait=True)
            raise
        self.outer.raise_if_set(self.product.key)
        if self._first_error is not None:
            raise self._first_error

    def _fetch_guarded(self, part: Part, saved: dict[str, Any] | None) -> None:
        try:
            self._fetch_one(part, saved)
        except PartsAbandoned:
            pass
        except BaseException as exc:
            with self._lock:
                if self._first_error is None:
                    self._first_error = exc
            if not isinstance(exc, RunInterrupted):
                self.cancel.set(Cancel.ABANDONED)

    def _fetch_one(self, part: Part, saved: dict[str, Any] | None) -> None:
        from offline_cli.transfer import Checkpoint

        self._check_stop()
        identity = part.identity
        checkpoint = None
        if saved is not None and saved.get("source") == identity:
            checkpoint = Checkpoint.from_dict(saved, part.url)

        def save(point: Checkpoint) -> None:
            self.rt.store.downloads.save_part(
                self.entry.id, part.name, {**point.to_dict(), "source": identity}
            )
            self.rt.fault("checkpoint", part=part.name, etag=point.etag)

        try:
            result = self._transfer(
                part.name,
                part.url,
                self.folder / part.name,
                window=part.window,
                checkpoint=checkpoint or Checkpoint(url=part.url),
                on_checkpoint=save,
            )
        except DownloadCancelled:
            raise  # a delete from another process: nothing to do with this part
        except DownloadError as exc:
            raise exc.within(f"{part.kind} {part.name}") from exc.__cause__
        if part.kind == PartKind.KEY and result.size != KEY_BYTES:
            raise PermanentError(
                f"the AES-128 key is {result.size} bytes, not {KEY_BYTES}",
                product=self.product.key,
                url=part.url,
                hint="the key server sent something that is not a key",
            )
        version = result.etag or result.last_modified
        self._pin_version(part, version)
        done = StoredPart(part.name, part.kind, result.size, result.sha256, identity, version)
        self._save_complete(done)
        with self._lock:
            self.done_parts[part.name] = done

    # -- commit ---------------------------------------------------------------------------

    def _write_playlists(self, playlists: dict[str, str]) -> list[StoredPart]:
        written = []
        for name, text in playlists.items():
            data = text.encode("utf-8")
            path = self.folder / name
            try:
                if path.is_dir() and not path.is_symlink():
                    safe_remove_tree(self.rt.layout, path)
                path.unlink(missing_ok=True)  # never write through a planted link
                with os.fdopen(open_private(path, os.O_WRONLY | os.O_TRUNC), "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                raise (DiskFull if full else PermanentError)(
                    f"cannot write the local playlist {name}: "
                    f"{'disk full' if full else exc.strerror or exc}",
                    product=self.product.key,
                ) from exc
            digest = hashlib.sha256(data).hexdigest()
            written.append(StoredPart(name, PartKind.PLAYLIST, len(data), digest, f"local:{name}"))
        return written

    def _check_folder_ours(self, parts: list[StoredPart]) -> None:
        """Every file about to be committed is a regular file of the size it was hashed at,
        in a folder that is not a link: something swapped in meanwhile is never stored. And
        nothing else goes into the store with them (a part of an earlier plan, a planted
        file or link): the folder holds what the product's row lists, no more."""
        if self.folder.is_symlink() or not self.folder.is_dir():
            self._replaced(self.folder)
        for part in parts:
            if regular_size(self.folder / part.name) != part.size:
                self._replaced(self.folder / part.name)
        wanted = {part.name for part in parts}
        for name in os.listdir(self.folder):
            if name not in wanted:
                safe_remove(self.rt.layout, self.folder / name)
                if os.path.lexists(self.folder / name):  # a folder: not one of ours either
                    safe_remove_tree(self.rt.layout, self.folder / name)

    def _replaced(self, path: Path) -> None:
        raise PermanentError(
            f"{path} was replaced while it downloaded; nothing was stored",
            product=self.product.key,
            hint="something else writes in the home's partial folder; run offline again",
        )

    def _commit_folder(
        self, planned: HlsPlan, planned_parts: list[Part], license_result: TransferResult | None
    ) -> None:
        rt, key = self.rt, self.product.key
        layout = rt.layout
        playlists = self._write_playlists(planned.playlists)
        parts = playlists + [self.done_parts[p.name] for p in planned_parts]
        self._check_folder_ours(parts)
        if license_result is not None:
            self._check_still_ours(license_result, layout)
        fsync_dir(self.folder)
        final = self._final_media_path()
        final_license = layout.final_license_path(key, self.entry.id) if license_result else None
        if final.parent.is_symlink():
            final.parent.unlink()  # a link planted in the store: never write through it
        final.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        if os.path.lexists(final):
            # This download's own name: left by an earlier try of its commit, or planted.
            safe_remove(layout, final)
        if license_result is not None and final_license is not None:
            os.replace(license_result.path, final_license)
            rt.fault("license_moved")
        os.replace(self.folder, final)
        fsync_dir(final.parent)
        rt.fault("files_moved")
        index = playlists[0]
        assert index.name == INDEX_PLAYLIST
        expires = self.product.license_expires_at
        offlined = OfflinedEntry(
            product_key=key,
            product_type=self.product.product_type,
            product_id=self.product.product_id,
            media_path=str(final),
            license_path=str(final_license) if final_license else None,
            size=sum(p.size for p in parts),
            sha256=index.sha256,
            license_size=license_result.size if license_result else None,
            license_sha256=license_result.sha256 if license_result else None,
            etag=None,
            last_modified=None,
            license_expires_at=expires.timestamp() if isinstance(expires, datetime) else None,
            source_url=rt.vault.seal(self.product.url) or "",
            license_url=rt.vault.seal(self.product.license_url),
            mtime_ns=os.stat(final / INDEX_PLAYLIST, follow_symlinks=False).st_mtime_ns,
            completed_at=rt.clock(),
            parts=tuple(parts),
            stream=planned.choice.to_json(),
        )
        self._record(offlined, final, final_license)
