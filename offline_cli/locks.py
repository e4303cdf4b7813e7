"""Per-product download locks: one live downloader of a product across processes and threads."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from offline_cli.errors import StorageError, StoreUnwritable
from offline_cli.paths import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, Layout, touch_private

if TYPE_CHECKING:
    from filelock import FileLock

LOCK_POLL_S = 0.05
# Longer than any lock probe (is_running_elsewhere holds a lock for microseconds).
LOCK_PROBE_GRACE_S = 0.2


class ProductLocks:
    """flock-based files under ``locks/``: the kernel drops a lock when its process dies,
    even on kill -9, and two threads of one process exclude each other too (each acquire
    opens its own file description)."""

    def __init__(self, layout: Layout, read_only_reason: Callable[[], str | None]) -> None:
        self.layout = layout
        self._read_only_reason = read_only_reason

    def lock(self, product_key: str) -> FileLock:
        # filelock when a lock is first needed: `state` of a stored product takes none.
        from filelock import FileLock

        self.layout.locks_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        path = self.layout.lock_path(product_key)
        # Created here (0600, never through a planted link) so filelock only opens our file.
        touch_private(path)
        return FileLock(path, mode=PRIVATE_FILE_MODE, is_singleton=False)

    def failed(self, product_key: str, exc: OSError) -> StorageError:
        """A lock file that cannot be opened: the home is read-only (or worse)."""
        reason = self._read_only_reason() or (
            f"cannot open lock file {self.layout.lock_path(product_key)}: {exc.strerror or exc}"
        )
        return StoreUnwritable(
            f"cannot change the store: {reason}",
            product=product_key,
            hint="make the home writable (or free some space); read commands still work",
        )

    def _probe(self, product_key: str) -> bool | None:
        """owner_alive by a bare flock on the lock file, as filelock takes it (cleanup and
        `state --json` probe thousands of products: filelock costs a millisecond a probe).
        A missing lock file in a writable home is held by no one (a downloader creates it
        before it locks it), and is not created. None: ask filelock (it says why not)."""
        path = self.layout.lock_path(product_key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False if self._read_only_reason() is None else None
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)  # closing drops the lock it just took
        return False

    def is_running_elsewhere(self, product_key: str) -> bool:
        """True when a live process holds the product's download lock.

        Also True when the lock cannot be probed (a read-only home): callers that remove
        things must then leave the product alone.
        """
        return self.owner_alive(product_key) is not False

    def owner_alive(self, product_key: str) -> bool | None:
        """Whether a live process holds the product's lock; None when it cannot be told."""
        probed = self._probe(product_key)
        if probed is not None:
            return probed
        from filelock import Timeout

        try:
            lock = self.lock(product_key)
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:
            return None
        lock.release()
        return False
