"""Deleting products: a running download is asked to cancel first, rows go before files, and
only the store's own files are ever removed (never through a link, never outside home)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from filelock import Timeout

from offline_cli.errors import DownloadError, StoreUnwritable
from offline_cli.locks import LOCK_POLL_S, LOCK_PROBE_GRACE_S
from offline_cli.paths import safe_remove, safe_remove_tree
from offline_cli.runtime import Runtime
from offline_cli.store import ProductRows, Store

log = logging.getLogger("offline_cli")

# How long delete waits for a running download in another process to stop.
CANCEL_WAIT_S = 10.0


class Deleter:
    """``runtime`` gives the parts as they are now; ``reopen`` opens the store again (after a
    full disk refused a write, SQLite needs a fresh connection to use the space freed)."""

    def __init__(self, runtime: Callable[[], Runtime], reopen: Callable[[], Store]) -> None:
        self.rt = runtime
        self._reopen = reopen

    def delete_key(self, key: str) -> bool:
        """Delete one product: its rows first, in one transaction, then its files.

        A locked or unwritable database changes nothing. Only when the disk is full (SQLite
        needs a few free pages to record anything) are the files removed first, to make that
        room; if the record still fails, `state` reads the product as not valid and a second
        `delete` finishes it.
        """
        cancelled_running = False
        rt = self.rt()  # again after a reopen: that gives a new store
        try:
            lock = rt.locks.lock(key)
            lock.acquire(timeout=LOCK_PROBE_GRACE_S, poll_interval=LOCK_POLL_S / 5)
        except Timeout:
            cancelled_running = True
            rt.store.downloads.request_cancel(key)
            rt.telemetry.event("cancel_requested", product=key)
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
            raise rt.locks.failed(key, exc) from exc
        try:
            rows = rt.store.product_rows(key)
            if rows.empty:
                return False
            # The download this delete cancelled keeps its CANCELLED entry (no files) as a
            # record; cleanup removes it after the retention age.
            keep = rows.cancelled_ids if cancelled_running else set()
            try:
                rt.store.forget_product(key, keep=keep)
            except StoreUnwritable as exc:
                if not exc.disk_full:
                    raise
                self._remove_product_files(key, rows)
                self._reopen().forget_product(key, keep=keep)
                rt = self.rt()
            self._remove_product_files(key, rows)
            try:
                rt.vault.forget(list(rows.urls))
            except OSError as exc:  # a full disk: the vault is rewritten whole
                log.warning("%s: credentials not forgotten yet: %s", key, exc)
            rt.telemetry.event("product_deleted", product=key)
            return True
        finally:
            lock.release()

    def _remove_product_files(self, key: str, rows: ProductRows) -> None:
        """Remove a product's files (only files of the store that are this product's); what
        fails is an orphan for cleanup, since no entry owns it any more."""
        rt = self.rt()
        try:
            for raw in rows.paths:
                path = rt.files.own_final_file(raw, key)
                if path is None:
                    partial = rt.layout.own_file(raw, key, partial=True)
                    owned = partial is not None and partial.name[:32] in rows.download_ids
                    path = partial if owned else None
                if path is None:
                    rt.files.report_foreign_path(key, "path", raw)
                else:
                    safe_remove(rt.layout, path)
            safe_remove_tree(rt.layout, rt.layout.product_dir(key))
        except OSError as exc:
            log.warning("%s: files not removed yet: %s", key, exc)

    def delete_all(self) -> int:
        """Remove every product, its files and entries; never follows a link out of home."""
        keys = self.rt().store.known_product_keys()
        stuck: list[str] = []
        for key in keys:
            try:
                self.delete_key(key)
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
        # Anything else in the store and partial folders is an orphan of nothing, but for
        # the files of a download that started (or committed) since the products were
        # listed: a download of another process may begin at any time.
        rt = self.rt()
        in_use = False
        for folder in (rt.layout.store_dir, rt.layout.partial_dir):
            if folder.is_symlink():
                folder.unlink()
                continue
            if not folder.exists():
                continue
            for child in list(folder.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    if any(rt.files.in_use(f) for f in child.iterdir()):
                        in_use = True
                        continue
                    safe_remove_tree(rt.layout, child)
                elif rt.files.in_use(child):
                    in_use = True
                else:
                    safe_remove(rt.layout, child)
        if not in_use:  # the vault still holds the full URLs of those downloads
            safe_remove(rt.layout, rt.layout.credentials_file)
        rt.telemetry.event("all_deleted", count=len(keys))
        return len(keys)
