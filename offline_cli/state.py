"""What the store says about products: their OfflineState, their downloads as read now, and
the products to resume. Reads only: no network, and the credential vault only when a
product's full URL is asked for."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from offline_cli.bundle import folder_problem
from offline_cli.locks import ProductLocks
from offline_cli.models import (
    LICENSE_EXPIRED,
    RETRYABLE_KINDS,
    RUNNABLE_STATES,
    DownloadEntry,
    DownloadState,
    MediaProduct,
    OfflinedEntry,
    OfflineState,
    ProductType,
)
from offline_cli.paths import Layout
from offline_cli.store import OfflinedCheck, Store

if TYPE_CHECKING:
    from offline_cli.credentials import CredentialVault
    from offline_cli.export import StoredProduct


@dataclass(frozen=True)
class ProductStatus:
    """One line of `state`: a product's OfflineState and its latest download entry."""

    key: str
    state: OfflineState
    download: DownloadEntry | None


class StoreReader:
    """Reads products out of the store (``state``, ``resume``'s list, the cheap check)."""

    def __init__(
        self,
        store: Store,
        layout: Layout,
        locks: ProductLocks,
        vault: Callable[[], CredentialVault],
        clock: Callable[[], float],
        source: str | None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.locks = locks
        self._vault = vault
        self._clock = clock
        self._source = source

    def offline_state(self, product_key: str) -> OfflineState:
        return self.state_of(self.store.get_offlined(product_key))

    def state_of(self, entry: OfflinedEntry | None) -> OfflineState:
        if entry is None:
            return OfflineState.NOT_OFFLINED
        if self.quick_valid(entry) is None:
            return OfflineState.OFFLINED_AND_VALID
        return OfflineState.OFFLINED_BUT_NOT_VALID

    def statuses(
        self, products: Sequence[MediaProduct] | None, *, with_downloads: bool
    ) -> list[ProductStatus]:
        """The state of ``products`` (else of every known product), in a few queries.

        What `state` prints: scripts call it in loops, so it reads in bulk and touches
        neither the network nor the credential vault.
        """
        store = self.store
        listing: list[tuple[str, OfflinedCheck | None]]
        if products is None:
            listing = store.product_listing()
            latest = store.latest_download_by_key() if with_downloads else {}
        elif len(products) > 20:
            offlined = {key: check for key, check in store.product_listing() if check is not None}
            listing = [(p.key, offlined.get(p.key)) for p in products]
            latest = store.latest_download_by_key() if with_downloads else {}
        else:
            keys = [p.key for p in products]
            listing = [
                (k, None if (e := store.get_offlined(k)) is None else OfflinedCheck.of(e))
                for k in keys
            ]
            latest = (
                {k: d for k in keys if (d := store.latest_download(k)) is not None}
                if with_downloads
                else {}
            )
        valid, invalid, absent = (
            OfflineState.OFFLINED_AND_VALID,
            OfflineState.OFFLINED_BUT_NOT_VALID,
            OfflineState.NOT_OFFLINED,
        )
        check, as_read = self.quick_problem, self.as_read
        linked = self._linked_folders() if len(listing) > 20 else None
        if not latest:
            return [
                ProductStatus(
                    k,
                    absent if found is None else valid if check(found, linked) is None else invalid,
                    None,
                )
                for k, found in listing
            ]
        return [
            ProductStatus(
                k,
                absent if found is None else valid if check(found, linked) is None else invalid,
                as_read(latest.get(k)),
            )
            for k, found in listing
        ]

    def _linked_folders(self) -> set[str] | None:
        """The names in the store folder that are symbolic links: one read of the folder
        instead of a look at each product's (a folder planted as a link is never followed)."""
        try:
            with os.scandir(self.layout.store_dir) as entries:
                return {e.name for e in entries if e.is_symlink()}
        except OSError:
            return None  # each product's folder is looked at instead

    def as_read(self, entry: DownloadEntry | None) -> DownloadEntry | None:
        """A running download whose owner is gone (kill -9, power loss) reads as PAUSED,
        what the next maintenance pass or `resume` makes of it."""
        if entry is None or entry.state not in (DownloadState.PENDING, DownloadState.IN_PROGRESS):
            return entry
        if self.locks.owner_alive(entry.product_key) is not False:
            return entry
        return dataclasses.replace(
            entry, state=DownloadState.PAUSED, last_error=entry.last_error or "owner process died"
        )

    def quick_valid(self, entry: OfflinedEntry) -> str | None:
        """None when valid by the cheap check (size and mtime), else the reason."""
        return self.quick_problem(OfflinedCheck.of(entry))

    def quick_problem(
        self, entry: OfflinedCheck, linked: Container[str] | None = None
    ) -> str | None:
        """quick_valid of what the store's bulk read gives (`state` checks every product).

        ``linked``: the folders of the store that are symbolic links, read once by a caller
        that checks many products (else each product's folder is looked at)."""
        if entry.invalid_reason:
            return entry.invalid_reason
        media, license_path = entry.media_path, entry.license_path
        if entry.folder is None or linked is None:
            # Only the shape here (this check runs for every product `state` lists): the
            # files are looked at, never read; validate proves whose folder it is.
            own = self.layout.stored_file(entry.media_path, entry.product_key)
            if own is None:
                return "media path is not a file of the store (not read)"
            media = own
            if entry.license_path is not None:
                license_path = self.layout.stored_file(entry.license_path, entry.product_key)
                if license_path is None:
                    return "license path is not a file of the store (not read)"
            linked = None
        if entry.parts is not None:
            problem = folder_problem(Path(media), entry.parts, mtime_ns=entry.mtime_ns, full=False)
            if problem is not None:
                return problem
        elif os.path.islink(os.path.dirname(media)) if linked is None else entry.folder in linked:
            # A folder planted as a link: its files are not ours, whatever their sizes say.
            return "media folder is a symbolic link (not followed)"
        else:
            try:
                info = os.stat(media, follow_symlinks=False)
            except OSError:
                return "media file missing"
            if info.st_size != entry.size or info.st_mtime_ns != entry.mtime_ns:
                return "media file changed"
        if license_path is not None:
            try:
                license_info = os.stat(license_path, follow_symlinks=False)
            except OSError:
                return "license file missing"
            if license_info.st_size != entry.license_size:
                return "license file changed"
        if entry.license_expires_at is not None and entry.license_expires_at <= self._clock():
            return LICENSE_EXPIRED
        return None

    def stored_product(self, key: str) -> tuple[StoredProduct | None, str | None]:
        """Where a committed product's files are, and why it is not valid (None: valid by
        the cheap check); (None, None) when it is not offlined. Paths that are not the
        store's own are never returned."""
        from offline_cli.export import locate  # `path` and `state --json`, not `state`

        entry = self.store.get_offlined(key)
        if entry is None:
            return None, None
        own = self.layout.own_file
        media = own(entry.media_path, key, partial=False, folder_ok=lambda folder: True)
        if media is None:
            return None, "media path is not a file of the store (not read)"
        license_path = (
            own(entry.license_path, key, partial=False, folder_ok=lambda folder: True)
            if entry.license_path
            else None
        )
        return locate(entry, media, license_path), self.quick_valid(entry)

    def stored_files(self) -> dict[str, tuple[OfflinedEntry, str, str | None]]:
        """Of every offlined product whose paths are the store's own: its entry, media (as
        StoredProduct.media names it) and license, in one read (`state --json` lists them
        all); the validity is not looked at."""
        from offline_cli.export import media_name  # `state --json`, not `state`

        own = self.layout.stored_file
        found: dict[str, tuple[OfflinedEntry, str, str | None]] = {}
        for entry in self.store.list_offlined():
            key = entry.product_key
            media = own(entry.media_path, key)
            if media is None:
                continue
            license_path = own(entry.license_path, key) if entry.license_path else None
            found[key] = (entry, media_name(entry, media), license_path)
        return found

    def product_for_key(self, key: str) -> MediaProduct:
        """The product a stored key names, with the URLs the store remembers."""
        known = self.known_product(key)
        if known is not None:
            return known
        if "://" in key:
            return MediaProduct(ProductType.FILE, key, url=self._vault().reveal(key))
        type_name, _, product_id = key.partition(":")
        return MediaProduct(ProductType(type_name), product_id)

    def known_product(self, key: str) -> MediaProduct | None:
        """The product ``key`` names, with the URLs the store remembers (of its stored copy,
        else of its latest download); None when the store has neither."""
        offlined = self.store.get_offlined(key)
        if offlined is not None:
            expires = offlined.license_expires_at
            return MediaProduct(
                offlined.product_type,
                offlined.product_id,
                url=self._vault().reveal(offlined.source_url),
                license_url=self._vault().reveal(offlined.license_url),
                # Kept, so fetching the same license again cannot make it look unexpired.
                license_expires_at=datetime.fromtimestamp(expires, UTC) if expires else None,
                hls=offlined.is_hls,
            )
        download = self.store.latest_download(key)
        if download is not None:
            return self.product_to_resume(download)
        return None

    def resumable_products(self, products: Sequence[MediaProduct] | None) -> list[MediaProduct]:
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
            found[entry.product_key] = self.product_to_resume(entry)
        return list(found.values())

    def product_to_resume(self, entry: DownloadEntry) -> MediaProduct:
        if entry.from_source and self._source:
            # Ask the source again: signed URLs and license expiries may have changed. The
            # same file (same redacted URL) is still resumed from its bytes on disk.
            # (the source's current checksum applies, not the one it gave last time)
            return MediaProduct(entry.product_type, entry.product_id)
        expires = entry.license_expires_at
        return MediaProduct(
            entry.product_type,
            entry.product_id,
            url=self._vault().reveal(entry.media_url),
            license_url=self._vault().reveal(entry.license_url),
            sha256=entry.expected_sha256,
            size=entry.expected_size,
            license_expires_at=datetime.fromtimestamp(expires, UTC) if expires else None,
            hls=entry.stream is not None,
        )
