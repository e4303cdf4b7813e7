"""Keeping the store tidy, correct and observable: cleanup, validation and health metrics."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_cli.bundle import folder_problem, index_mtime_ns, sha256_of
from offline_cli.errors import OfflineError, StoreUnwritable
from offline_cli.models import (
    LICENSE_EXPIRED,
    DownloadState,
    MediaProduct,
    OfflinedEntry,
    looks_like_url,
)
from offline_cli.paths import HLS_FOLDER, safe_remove, tree_size
from offline_cli.store import DATABASE_SEEN_KEY

if TYPE_CHECKING:
    from offline_cli.runtime import Runtime
    from offline_cli.store import Store

# Files older than the database itself are kept at least this long, whatever the retention.
MIN_ORPHAN_GRACE_S = 86400.0
# File times come from the kernel's coarse clock, a few ms behind time.time().
MTIME_SLACK_S = 2.0


# -- cleanup -------------------------------------------------------------------------------------


def iso_time(at: float | None) -> str | None:
    """A point in time as every JSON output writes it: ISO 8601 in UTC, ``…Z``."""
    if at is None or not math.isfinite(at):
        return None
    try:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # a damaged row's time, years away
        return None


@dataclass(frozen=True)
class CleanupItem:
    kind: str  # "partial", "orphan" or "entry"
    path: str | None
    product_key: str | None
    bytes: int
    # An entry's download state ("FAILED"; None when unreadable or for a file).
    state: str | None = None
    # When the entry was last written or the file last modified (epoch seconds), if known.
    modified_at: float | None = None
    # An orphan that is a folder (an HLS product's), not a file.
    folder: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "product": self.product_key,
            "path": self.path,
            "size": self.bytes,
            "state": self.state,
            "modified_at": iso_time(self.modified_at),
        }


@dataclass
class CleanupReport:
    dry_run: bool
    older_than_s: float
    items: list[CleanupItem] = field(default_factory=list)

    @property
    def bytes_reclaimed(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def entries_removed(self) -> int:
        return sum(1 for i in self.items if i.kind == "entry")

    @property
    def files_removed(self) -> int:
        return sum(1 for i in self.items if i.path is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "older_than_s": self.older_than_s,
            "bytes_reclaimed": self.bytes_reclaimed,
            "entries_removed": self.entries_removed,
            "files_removed": self.files_removed,
            "items": [i.to_dict() for i in self.items],
        }


class CleanupManager:
    """Removes what no finished product needs, and never what a live download uses."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def run(self, *, older_than_s: float, dry_run: bool) -> CleanupReport:
        store = self.rt.store
        if not dry_run and store.read_only:
            # Nothing can be removed nor recorded: say so before touching anything.
            raise StoreUnwritable(
                f"cannot clean up the store: {store.read_only_reason}",
                hint="make the home writable (or free some space); `cleanup --dry-run` works",
            )
        try:
            return self._run(older_than_s=older_than_s, dry_run=dry_run)
        except OSError as exc:  # a file that cannot be removed: the home went read-only
            raise StoreUnwritable(
                f"cannot clean up the store: cannot remove {exc.filename}: {exc.strerror or exc}",
                hint="make the home writable; run cleanup again",
            ) from exc

    def _run(self, *, older_than_s: float, dry_run: bool) -> CleanupReport:
        rt, store, layout = self.rt, self.rt.store, self.rt.layout
        report = CleanupReport(dry_run=dry_run, older_than_s=older_than_s)
        cutoff = rt.clock() - older_than_s
        unfinished = [
            DownloadState.PENDING,
            DownloadState.IN_PROGRESS,
            DownloadState.PAUSED,
            DownloadState.FAILED,
            DownloadState.CANCELLED,
        ]
        for entry in store.list_downloads(unfinished):
            if entry.updated_at > cutoff and older_than_s > 0:
                continue
            if rt.locks.is_running_elsewhere(entry.product_key):
                continue  # its owner is alive: never touch it
            for column, raw in (
                ("partial_media_path", entry.partial_media_path),
                ("partial_license_path", entry.partial_license_path),
            ):
                self._remove_partial(report, entry.product_key, entry.id, column, raw)
            report.items.append(
                CleanupItem(
                    "entry", None, entry.product_key, 0, entry.state.value, entry.updated_at
                )
            )
            if not dry_run:
                store.delete_download(entry.id)
        self._unreadable_downloads(report, cutoff)
        self._orphans(report, cutoff)
        if not dry_run:
            for child in list(layout.store_dir.iterdir()) if layout.store_dir.is_dir() else []:
                if child.is_dir() and not child.is_symlink() and not any(child.iterdir()):
                    child.rmdir()
            if report.items:
                rt.telemetry.record(
                    "cleanup",
                    bytes=report.bytes_reclaimed,
                    attempts=report.entries_removed,
                    detail=f"{report.files_removed} files",
                )
            rt.telemetry.event(
                "cleanup_completed",
                entries=report.entries_removed,
                files=report.files_removed,
                bytes_reclaimed=report.bytes_reclaimed,
            )
        return report

    def _unreadable_downloads(self, report: CleanupReport, cutoff: float) -> None:
        """Download rows whose values cannot be read go like any unfinished download.

        A committed product whose row is damaged is left to `delete`: its media may be fine.
        """
        rt, store = self.rt, self.rt.store
        for bad in store.unreadable_entries():
            if bad.table != "download":
                continue
            if bad.at is not None and bad.at > cutoff and report.older_than_s > 0:
                continue
            if rt.locks.is_running_elsewhere(bad.product_key):
                continue
            for raw in bad.paths:
                self._remove_partial(report, bad.product_key, bad.row_id, "partial path", raw)
            report.items.append(CleanupItem("entry", None, bad.product_key, 0, None, bad.at))
            if not report.dry_run:
                store.delete_unreadable(bad)

    def _remove_partial(
        self, report: CleanupReport, key: str, download_id: str, column: str, raw: str | None
    ) -> None:
        """Remove one partial file a download row names, when it is one (see Layout.own_file);
        any other path (a damaged row naming offline.db, say) is reported and left alone."""
        if not raw:
            return
        layout = self.rt.layout
        path = layout.own_file(raw, key, partial=True, download_id=download_id)
        if path is None:
            self.rt.files.report_foreign_path(key, column, raw)
            return
        if os.path.lexists(path):
            try:
                mtime: float | None = path.lstat().st_mtime
            except OSError:
                mtime = None
            report.items.append(
                CleanupItem("partial", str(path), key, tree_size(path), None, mtime)
            )
            if not report.dry_run:
                safe_remove(layout, path)

    def _database_first_seen(self, now: float) -> float:
        """When this database was created (or, for one made by an older release, first
        cleaned up): a file older than that was made under a database since replaced."""
        store = self.rt.store
        raw = store.get_setting(DATABASE_SEEN_KEY)
        try:
            seen = float(raw) if raw is not None else None
        except ValueError:
            seen = None
        if seen is None or not math.isfinite(seen) or seen > now:
            seen = now
            if not store.read_only:
                store.set_setting(DATABASE_SEEN_KEY, repr(now))
        return seen

    def _orphans(self, report: CleanupReport, cutoff: float) -> None:
        """Files in the store or partial folders that no entry owns, old enough to go.

        Older than the database means the product was recorded in a database that has
        been replaced: such files are kept until the database itself is older than the
        retention age (and at least a day), so moving a database aside, or a fresh one,
        never lets a cleanup (or the automatic one) delete stored media at once.
        """
        rt, store, layout = self.rt, self.rt.store, self.rt.layout
        older_than_s, dry_run = report.older_than_s, report.dry_run
        # The wall clock, not the engine's: it is compared with file modification times.
        now = time.time()
        first_seen = self._database_first_seen(now) - MTIME_SLACK_S
        grace = max(rt.settings.retention, MIN_ORPHAN_GRACE_S)
        keep_older_than_database = now - first_seen < grace
        # The running downloads first, then what is committed: a commit that lands between
        # the two reads is in one of them (read the other way round, in neither).
        active = store.list_downloads(
            [DownloadState.PENDING, DownloadState.IN_PROGRESS, DownloadState.PAUSED]
        )
        owned = store.referenced_paths()
        for running in active:
            # A commit in flight has renamed its files to their final names already.
            owned.add(str(layout.final_media_path(running.product_key, running.id)))
            owned.add(str(layout.final_license_path(running.product_key, running.id)))
            owned.add(str(layout.final_hls_path(running.product_key, running.id)))
        for folder in (layout.store_dir, layout.partial_dir):
            if not folder.is_dir() or folder.is_symlink():
                continue
            for root, dirs, files, linked in _walk(str(folder)):
                # An HLS product's folder is one item: kept or removed whole, never entered.
                bundles = [d for d in dirs if HLS_FOLDER.fullmatch(d)]
                dirs[:] = [d for d in dirs if d not in bundles]
                links = [d for d in dirs if d in linked]
                for name in files + links + bundles:
                    # A string first: most files are owned, and a Path costs a few µs.
                    if os.path.join(root, name) in owned:
                        continue
                    path = Path(root) / name
                    try:
                        mtime = path.lstat().st_mtime
                    except OSError:
                        continue
                    if older_than_s > 0 and mtime > cutoff:
                        continue
                    if keep_older_than_database and mtime < first_seen:
                        continue
                    if rt.files.in_use(path):
                        continue  # a download that started (or committed) since the reads
                    report.items.append(
                        CleanupItem(
                            "orphan",
                            str(path),
                            None,
                            tree_size(path),
                            None,
                            mtime,
                            folder=name in bundles,
                        )
                    )
                    if not dry_run:
                        safe_remove(layout, path)


def _walk(top: str) -> Iterator[tuple[str, list[str], list[str], set[str]]]:
    """``os.walk(top, followlinks=False)`` (top-down: the caller may prune ``dirs``), each
    folder also with the names of its ``dirs`` that are symbolic links, known from the
    folder's own listing: no look at each of a store's 100,000 folders to ask."""
    dirs: list[str] = []
    files: list[str] = []
    linked: set[str] = set()
    try:
        with os.scandir(top) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if not is_dir:
                    files.append(entry.name)
                    continue
                dirs.append(entry.name)
                with contextlib.suppress(OSError):
                    if entry.is_symlink():
                        linked.add(entry.name)
    except OSError:
        return  # as os.walk: a folder that cannot be read is passed over
    yield top, dirs, files, linked
    for name in dirs:
        if name not in linked:
            yield from _walk(os.path.join(top, name))


# -- validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationResult:
    product_key: str
    valid: bool
    reason: str | None
    repaired: bool = False
    repair_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "product": self.product_key,
            "valid": self.valid,
            "reason": self.reason,
            "repaired": self.repaired,
            "repair_error": self.repair_error,
        }


def _mtime_ns(entry: OfflinedEntry) -> int | None:
    """The modification time the cheap check compares: the media file's, or an HLS
    product's local playlist's."""
    if entry.is_hls:
        return index_mtime_ns(Path(entry.media_path))
    try:
        return os.stat(entry.media_path, follow_symlinks=False).st_mtime_ns
    except OSError:
        return None


def full_check(
    entry: OfflinedEntry,
    now: float,
    own_file: Callable[[str | None, str], Path | None] | None = None,
) -> str | None:
    """None when the product is valid in full (files, sizes, SHA-256, license), else why.

    With ``own_file`` (StoreFiles.own_final_file), a file is only read where the store
    keeps it: a product folder replaced by a link, or a path that is not one of this
    product's files in the store, makes the product invalid, unread.
    """
    checks: list[tuple[str, str | None, int | None, str | None]] = [
        ("media", entry.media_path, entry.size, entry.sha256),
        ("license", entry.license_path, entry.license_size, entry.license_sha256),
    ]
    for name, raw, size, digest in checks:
        if raw is None:
            continue
        path = Path(raw)
        if own_file is not None:
            owned = own_file(raw, entry.product_key)
            if owned is None:
                # Outside the home, or offline.db, credentials.json, another product's file.
                return f"{name} path is not a file of the store (not read)"
            path = owned
        if name == "media" and entry.parts is not None:
            problem = folder_problem(path, entry.parts, mtime_ns=None, full=True)
            if problem is not None:
                return problem
            continue
        if path.parent.is_symlink():
            return f"{name} folder is a symbolic link (not followed)"
        if path.is_symlink() or not path.is_file():
            return f"{name} file missing"
        try:
            actual = path.lstat().st_size
            if size is not None and actual != size:
                return f"{name} size {actual} differs from recorded {size}"
            if digest is not None and sha256_of(path) != digest:
                return f"{name} SHA-256 differs from the one recorded at download"
        except OSError as exc:
            # Replaced while we looked (a link now): unreadable is not valid.
            return f"{name} file unreadable: {exc.strerror or exc}"
    if entry.license_expires_at is not None and entry.license_expires_at <= now:
        return LICENSE_EXPIRED
    return None


class Validator:
    """Hashes stored products in full; ``redownload`` (the engine's offline_product) is how
    --repair fetches a damaged one again."""

    def __init__(self, runtime: Runtime, redownload: Callable[[MediaProduct], object]) -> None:
        self.rt = runtime
        self.redownload = redownload

    def run(
        self,
        products: Sequence[MediaProduct] | None,
        *,
        repair: bool,
        on_progress: Callable[[int, int], None] | None,
    ) -> list[ValidationResult]:
        rt, store = self.rt, self.rt.store
        if products is None:
            entries = store.list_offlined()
            missing: list[str] = []
        else:
            entries = []
            missing = []
            for product in products:
                found = store.get_offlined(product.key)
                if found is None:
                    missing.append(product.key)
                else:
                    entries.append(found)
        results = [ValidationResult(key, False, "not offlined") for key in missing]
        for index, entry in enumerate(entries, 1):
            mtime_before = _mtime_ns(entry)
            reason = full_check(entry, rt.clock(), rt.files.own_final_file)
            # Recorded so `state` answers OFFLINED_BUT_NOT_VALID without hashing again, and
            # VALID again once the bytes are proven right (even if the mtime moved).
            fresh_mtime = mtime_before if reason is None else None
            if fresh_mtime is not None and fresh_mtime != _mtime_ns(entry):
                fresh_mtime = None  # changed while hashing: prove nothing about the new bytes
            # A read-only store (full disk, read-only home) still answers; it just cannot
            # remember the verdict.
            if not store.read_only and (
                reason != entry.invalid_reason
                or (fresh_mtime is not None and fresh_mtime != entry.mtime_ns)
            ):
                try:
                    store.set_invalid_reason(entry.product_key, reason, mtime_ns=fresh_mtime)
                except StoreUnwritable as exc:  # a full disk: the verdict stands unrecorded
                    rt.telemetry.event(
                        "verdict_not_recorded", product=entry.product_key, error=str(exc)
                    )
            result = ValidationResult(entry.product_key, reason is None, reason)
            if reason is not None and repair:
                result = self._repair(entry, reason)
            rt.telemetry.event(
                "product_validated", product=entry.product_key, valid=result.valid, reason=reason
            )
            results.append(result)
            if on_progress is not None:
                on_progress(index, len(entries))
        return results

    def _repair(self, entry: OfflinedEntry, reason: str) -> ValidationResult:
        if reason == LICENSE_EXPIRED:
            # The same license again would be just as expired: only the source can renew it.
            if self.rt.settings.source is None or looks_like_url(entry.product_id):
                return ValidationResult(
                    entry.product_key,
                    False,
                    reason,
                    False,
                    "no playback-info source to renew the license (give --source)",
                )
            product = MediaProduct(entry.product_type, entry.product_id)
        elif (
            entry.is_hls
            and self.rt.settings.source is not None
            and not looks_like_url(entry.product_id)
        ):
            # Its segment URLs are signed and may have expired: ask the source again.
            product = MediaProduct(entry.product_type, entry.product_id)
        else:
            expires = entry.license_expires_at
            product = MediaProduct(
                entry.product_type,
                entry.product_id,
                url=self.rt.vault.reveal(entry.source_url),
                license_url=self.rt.vault.reveal(entry.license_url),
                license_expires_at=datetime.fromtimestamp(expires, UTC) if expires else None,
                hls=entry.is_hls,
            )
        try:
            self.redownload(product)
        except OfflineError as exc:
            # The old copy stays as it was (the new one is committed only when complete).
            return ValidationResult(entry.product_key, False, reason, False, str(exc))
        fresh = self.rt.store.get_offlined(entry.product_key)
        still = (
            full_check(fresh, self.rt.clock(), self.rt.files.own_final_file)
            if fresh
            else "not offlined"
        )
        return ValidationResult(entry.product_key, still is None, still or reason, still is None)


# -- light maintenance ------------------------------------------------------------------------


def run_light_maintenance(
    rt: Runtime, cleanup: Callable[[float], CleanupReport], last_run_key: str
) -> bool:
    """The light pass the downloading commands run once per interval (across processes:
    the time of the last pass is in the database): mark downloads whose owner died as
    PAUSED, then clean up what is older than the retention. True when it ran."""
    settings, store = rt.settings, rt.store
    interval = settings.maintenance_interval
    if interval <= 0 or not settings.enhanced_download_management:
        return False
    if store.read_only:
        return False  # it cleans up and records: nothing a read-only store allows
    last = _timestamp(store.get_setting(last_run_key))
    now = rt.clock()
    # An unreadable or future time (damaged, or a clock that jumped) counts as never.
    if last is not None and 0 <= now - last < interval:
        return False
    store.set_setting(last_run_key, repr(now))
    recovered = recover_dead_downloads(rt) if settings.download_recovery else 0
    report = cleanup(settings.retention)
    rt.telemetry.event(
        "maintenance_completed",
        recovered=recovered,
        cleaned_up=report.entries_removed,
        bytes_reclaimed=report.bytes_reclaimed,
    )
    return True


def recover_dead_downloads(rt: Runtime) -> int:
    """Mark downloads whose owner process died as PAUSED, so `resume` picks them up."""
    recovered = 0
    for entry in rt.store.list_downloads([DownloadState.PENDING, DownloadState.IN_PROGRESS]):
        if rt.locks.is_running_elsewhere(entry.product_key):
            continue
        rt.store.downloads.transition(
            entry.id, DownloadState.PAUSED, owner_pid=None, last_error="owner process died"
        )
        rt.telemetry.record("download_recovered", product_key=entry.product_key)
        rt.telemetry.event(
            "download_recovered", product=entry.product_key, dead_pid=entry.owner_pid
        )
        recovered += 1
    return recovered


def _timestamp(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


# -- health --------------------------------------------------------------------------------------


@dataclass
class DownloadHealthReport:
    since: float | None
    downloads_started: int = 0
    downloads_succeeded: int = 0
    downloads_failed: int = 0
    retries: int = 0
    retry_success_rate: float | None = None
    success_rate: float | None = None
    recoveries: int = 0
    network_pauses: int = 0
    cleaned_up: int = 0
    bytes_reclaimed: int = 0
    bytes_downloaded: int = 0
    mean_throughput_bytes_per_s: float | None = None
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    per_day: dict[str, dict[str, int]] = field(default_factory=dict)
    active_downloads: int = 0
    offlined_products: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "since": iso_time(self.since)}


def build_health_report(
    store: Store, clock: Callable[[], float], since_s: float | None
) -> DownloadHealthReport:
    since = clock() - since_s if since_s is not None else None
    report = DownloadHealthReport(since=since)
    summary = store.event_summary(since)
    if summary is None:  # some event is damaged: read them one by one
        durations, succeeded_after_retry, retried_products = _sum_events(store, since, report)
    else:
        counts = summary.counts
        report.downloads_started = counts.get("download_started", 0)
        report.downloads_succeeded = counts.get("download_succeeded", 0)
        report.bytes_downloaded = summary.bytes.get("download_succeeded", 0)
        report.downloads_failed = counts.get("download_failed", 0)
        report.retries = counts.get("retry", 0)
        report.recoveries = counts.get("download_recovered", 0)
        report.network_pauses = counts.get("network_pause", 0)
        report.cleaned_up = summary.attempts.get("cleanup", 0)
        report.bytes_reclaimed = summary.bytes.get("cleanup", 0)
        report.failures_by_kind = summary.failures_by_kind
        report.per_day = summary.per_day
        durations = summary.durations
        succeeded_after_retry = summary.with_attempts.get("download_succeeded", 0)
        retried_products = summary.retried_products
    finished = report.downloads_succeeded + report.downloads_failed
    if finished:
        report.success_rate = report.downloads_succeeded / finished
    if report.retries:
        # Of the downloads that needed a retry, how many still succeeded.
        retried = max(retried_products, succeeded_after_retry)
        report.retry_success_rate = succeeded_after_retry / retried if retried else None
    if durations > 0:
        report.mean_throughput_bytes_per_s = report.bytes_downloaded / durations
    report.active_downloads = store.count_downloads(
        [DownloadState.PENDING, DownloadState.IN_PROGRESS, DownloadState.PAUSED]
    )
    report.offlined_products = store.count_offlined()
    return report


def _sum_events(
    store: Store, since: float | None, report: DownloadHealthReport
) -> tuple[float, int, int]:
    """Add the events since ``since`` to ``report`` one by one (a damaged event is skipped,
    or its damaged value dropped); returns the durations of the succeeded downloads, how
    many succeeded after a retry, and how many products were retried."""
    kinds: Counter[str] = Counter()
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    durations = 0.0
    succeeded_after_retry = 0
    products_retried: set[str] = set()
    for event in store.events_since(since):
        day = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d")
        if event.event == "download_started":
            report.downloads_started += 1
        elif event.event == "download_succeeded":
            report.downloads_succeeded += 1
            report.bytes_downloaded += event.bytes or 0
            durations += event.duration_s or 0.0
            per_day[day]["succeeded"] += 1
            if event.attempts:
                succeeded_after_retry += 1
        elif event.event == "download_failed":
            report.downloads_failed += 1
            kinds[event.error_kind or "unknown"] += 1
            per_day[day]["failed"] += 1
        elif event.event == "retry":
            report.retries += 1
            if event.product_key:
                products_retried.add(event.product_key)
        elif event.event == "download_recovered":
            report.recoveries += 1
        elif event.event == "network_pause":
            report.network_pauses += 1
        elif event.event == "cleanup":
            report.cleaned_up += event.attempts or 0
            report.bytes_reclaimed += event.bytes or 0
    report.failures_by_kind = dict(kinds)
    report.per_day = {day: dict(c) for day, c in sorted(per_day.items())}
    return durations, succeeded_after_retry, len(products_retried)
