"""What the parts of a download share, handed to them by the engine: the runtime and a
run's cancel signal. Nothing here reaches back into the engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offline_cli.errors import DownloadCancelled, OfflineError

if TYPE_CHECKING:
    # Annotations only: the engine builds a Runtime for a download, and `state` (which
    # imports this module for the watchdog) must not pay for retry's backoff and the rest.
    from offline_cli.config import Settings
    from offline_cli.credentials import CredentialVault
    from offline_cli.listener import OfflineEngineListener
    from offline_cli.locks import ProductLocks
    from offline_cli.network import NetworkMonitor
    from offline_cli.ownership import StoreFiles
    from offline_cli.paths import Layout
    from offline_cli.ratelimit import RateLimiter
    from offline_cli.retry import RetryPolicy
    from offline_cli.store import Store
    from offline_cli.telemetry import Telemetry

# A test seam (see OfflineEngine's ``fault_hook``): called with the name of a point in a
# download ("progress", "checkpoint", "license_moved", "files_moved") and what it knows
# there, so a test can stop the process at that exact point (raise, or SIGKILL itself).
FaultHook = Callable[..., None]


def no_faults(point: str, **info: Any) -> None:
    """The production fault hook: nothing happens."""


class RunInterrupted(BaseException):
    """A worker's download was stopped by Ctrl-C or SIGTERM in the main thread.

    A BaseException, as KeyboardInterrupt is in the main thread: the download is saved as
    PAUSED on its way out, never counted as failed.
    """


class PartsAbandoned(Exception):
    """Another part of the same HLS product failed for good: this part stops too (the run
    reports that first failure, not this)."""


class Cancel:
    """One run's stop signal: one ``threading.Event`` and why it was set.

    Set by a delete from another process (noticed by the cancel watch or a progress write:
    the download is cancelled and its bytes dropped) or by Ctrl-C / SIGTERM in the main
    thread (interrupted: its bytes are kept, PAUSED). Whatever waits (a retry's backoff, an
    outage, a read) wakes on it; callbacks registered with ``on_set`` cut a read blocked
    in the network.
    """

    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"  # only the parts of one HLS run: another part failed for good

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self.event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the signal is set (at once if it is); returns the undo."""
        with self._lock:
            self._callbacks.append(callback)
            already = self.event.is_set()
        if already:
            callback()

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def raise_if_set(self, product: str) -> None:
        if not self.event.is_set():
            return
        if self.reason == self.INTERRUPTED:
            raise RunInterrupted()
        if self.reason == self.ABANDONED:
            raise PartsAbandoned()
        raise DownloadCancelled("cancelled: deleted by another process", product=product)


class Watchdog:
    """One thread for the periodic checks of every download of an engine (is a cancel
    requested? are a response's headers overdue?), rather than a thread per download and
    per request: with many small downloads at once, starting those threads cost more than
    the checks."""

    TICK_S = 0.05

    def __init__(self, on_exit: Callable[[], None] = lambda: None) -> None:
        self._on_exit = on_exit
        self._checks: dict[int, tuple[float, Callable[[], None], list[float]]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, interval_s: float, check: Callable[[], None]) -> Callable[[], None]:
        """Run ``check`` about every ``interval_s`` until the returned callable is called."""
        with self._lock:
            self._next_id += 1
            key = self._next_id
            self._checks[key] = (interval_s, check, [time.monotonic() + interval_s])
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="offline-cli-watchdog", daemon=True
                )
                self._thread.start()

        def cancel() -> None:
            with self._lock:
                self._checks.pop(key, None)

        return cancel

    def _run(self) -> None:
        try:
            stop = self._stop
            while not stop.wait(self.TICK_S):
                now = time.monotonic()
                with self._lock:
                    due = [entry for entry in self._checks.values() if entry[2][0] <= now]
                for interval, check, next_at in due:
                    next_at[0] = now + interval
                    # A failing check must not end the watch of every other download.
                    with suppress(Exception):
                        check()
        finally:
            self._on_exit()

    def close(self) -> None:
        """Stop the thread (it starts again at the next ``every``)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            self._stop = threading.Event()


class SpaceClaims:
    """The bytes each running download of this process still has to write, so one that
    checks the free space counts what the others will take (eight downloads at once must
    not each believe the whole free space is theirs)."""

    def __init__(self) -> None:
        self._claims: dict[int, int] = {}
        self._lock = threading.Lock()

    def claim(self, owner: int, nbytes: int) -> None:
        with self._lock:
            self._claims[owner] = max(0, nbytes)

    def release(self, owner: int) -> None:
        with self._lock:
            self._claims.pop(owner, None)

    def others(self, owner: int) -> int:
        with self._lock:
            return sum(n for o, n in self._claims.items() if o != owner)


# How often the progress of running downloads is written (and a cancel request noticed).
PROGRESS_PERSIST_INTERVAL_S = 0.5


class ProgressBoard:
    """The running downloads of an engine: their progress is written to the database in one
    transaction every PROGRESS_PERSIST_INTERVAL_S (a batch, not a write per download), and
    one query a tick asks which of them another process asked to cancel.

    Runs on the watchdog thread; ``on_tick`` of each download then runs there too (to cut
    the transfer of one whose cancel signal is set).
    """

    def __init__(
        self, store: Store, watchdog: Watchdog, also: Callable[[], None] = lambda: None
    ) -> None:
        self._store = store
        self._watchdog = watchdog
        # Run at each tick too (the telemetry's flush: metric rows wait at most a tick).
        self._also = also
        self._lock = threading.Lock()
        # download id -> (its cancel signal, its tick); and the progress not written yet
        self._runs: dict[str, tuple[Cancel, Callable[[], None]]] = {}
        self._pending: dict[str, tuple[int, int | None]] = {}
        self._stop_watching: Callable[[], None] | None = None

    def add(
        self, download_id: str, cancel: Cancel, on_tick: Callable[[], None]
    ) -> Callable[[], None]:
        """Watch a running download until the returned callable is called."""
        with self._lock:
            self._runs[download_id] = (cancel, on_tick)
            if self._stop_watching is None:
                self._stop_watching = self._watchdog.every(PROGRESS_PERSIST_INTERVAL_S, self.flush)

        def remove() -> None:
            with self._lock:
                self._runs.pop(download_id, None)
                self._pending.pop(download_id, None)
                if not self._runs and self._stop_watching is not None:
                    self._stop_watching()
                    self._stop_watching = None

        return remove

    def report(self, download_id: str, done: int, total: int | None) -> None:
        """The latest progress of a download (written at the next tick)."""
        with self._lock:
            if download_id in self._runs:
                self._pending[download_id] = (done, total)

    def flush(self) -> None:
        with self._lock:
            runs = dict(self._runs)
            pending, self._pending = self._pending, {}
        with suppress(Exception):
            self._also()
        if not runs:
            return
        try:
            cancelled = self._store.downloads.sync_progress(pending, list(runs))
        except OfflineError:  # a failing store: each run sees it at its own next write
            cancelled = set()
        for download_id, (cancel, on_tick) in runs.items():
            if download_id in cancelled:
                cancel.set(Cancel.CANCELLED)
            on_tick()


@dataclass(frozen=True)
class Runtime:
    """Everything a product's run, cleanup and validation use, wired once by the engine.

    ``sleep`` None (production) waits on the run's cancel event, so a cancel or Ctrl-C
    ends a backoff at once; tests inject a fake sleep that advances a fake clock.
    """

    settings: Settings
    layout: Layout
    store: Store
    vault: CredentialVault
    files: StoreFiles
    locks: ProductLocks
    telemetry: Telemetry
    listener: OfflineEngineListener
    policy: RetryPolicy
    network_monitor: Callable[[], NetworkMonitor]
    watchdog: Watchdog
    progress: ProgressBoard
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] | None = None
    rand: Callable[[], float] = field(default=lambda: 0.5)
    disk_free: Callable[[Path], int] = field(default=lambda p: 1 << 62)
    limiter: RateLimiter | None = None
    # Hosts that honour If-Range only with a date (transfer.py): shared by all products.
    date_if_range_hosts: set[str] = field(default_factory=set)
    fault: FaultHook = no_faults
    space: SpaceClaims = field(default_factory=SpaceClaims)

    def wait(self, seconds: float, cancel: Cancel, product: str) -> None:
        """Wait ``seconds`` unless ``cancel`` is set first (then raise, as it says)."""
        if seconds > 0:
            if self.sleep is None:
                cancel.event.wait(seconds)
            else:
                self.sleep(seconds)
        cancel.raise_if_set(product)
