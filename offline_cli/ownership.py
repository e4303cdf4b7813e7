"""Which files the store owns: a path read from the database is acted on only when it is
one of the store's own files (Layout.own_file), and what a damaged row names is reported."""

from __future__ import annotations

import threading
from pathlib import Path

from offline_cli.models import DownloadEntry, DownloadState
from offline_cli.paths import Layout, product_dir_name, safe_remove
from offline_cli.store import Store


class StoreFiles:
    def __init__(
        self, layout: Layout, store: Store, foreign_paths: dict[str, str] | None = None
    ) -> None:
        self.layout = layout
        self.store = store
        # Paths a damaged row named that are not files of the store (offline.db, another
        # product's media): left in place and reported, key -> what was refused.
        self.foreign_paths: dict[str, str] = foreign_paths if foreign_paths is not None else {}
        self._lock = threading.Lock()

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
        with self._lock:
            self.foreign_paths.setdefault(
                product_key, f"{column} {raw!r} is not a file of the store; left in place"
            )

    def in_use(self, path: Path) -> bool:
        """Whether a file of the store or partial folder belongs, by the database as it is
        now, to a download that is not over (or to the product a download committed).

        Asked again just before a sweep removes a file: a download that started, or a
        commit that landed, after the sweep read the database must keep its files.
        """
        download_id = path.name[:32]
        if len(download_id) != 32 or not all(c in "0123456789abcdef" for c in download_id):
            return False
        entry = self.store.get_download(download_id)
        if entry is None or entry.state is DownloadState.CANCELLED:
            return False
        if entry.state is not DownloadState.COMPLETED:
            return True
        offlined = self.store.get_offlined(entry.product_key)
        return offlined is not None and str(path) in (offlined.media_path, offlined.license_path)

    def partials_are_own(self, entry: DownloadEntry) -> bool:
        return all(
            self.layout.own_file(raw, entry.product_key, partial=True, download_id=entry.id)
            for raw in (entry.partial_media_path, entry.partial_license_path)
            if raw
        )

    def discard_partials(self, entry: DownloadEntry) -> int:
        """Remove a download's partial files (and final files its crashed commit left that
        the product's committed row does not name); returns the bytes freed."""
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
            self.layout.final_hls_path(entry.product_key, entry.id),
        ):
            if str(final) not in committed:
                freed += safe_remove(self.layout, final)
        return freed
