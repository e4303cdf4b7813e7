"""Where the parts of a download report to: log events (JSON lines) and metric rows."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from offline_cli.errors import StorageError
from offline_cli.redaction import scrub_urls
from offline_cli.store import Store

log = logging.getLogger("offline_cli")

# Metric rows are written in batches: at most this many wait, for at most this long (a kill
# -9 loses at most that much of the record, never a download's own state).
METRICS_BATCH = 64
METRICS_MAX_AGE_S = 1.0


class Telemetry:
    """Log events always; metric rows only with enhanced download management (the seed's
    "metrics collector"), and a metric that cannot be written never breaks a download.

    Metric rows are buffered and written a batch per transaction (every download records
    two or three, and with -j many finish each second); ``flush`` writes what waits.
    """

    def __init__(
        self,
        store: Store,
        *,
        metrics: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._monotonic = monotonic
        self._pending: list[dict[str, Any]] = []
        self._oldest = 0.0
        self._lock = threading.Lock()

    def event(self, event: str, **fields: Any) -> None:
        safe = {k: scrub_urls(v) if isinstance(v, str) else v for k, v in fields.items()}
        log.info(event, extra={"event": event, "fields": safe})

    def record(self, event: str, **fields: Any) -> None:
        if not self._metrics:
            return
        now = self._monotonic()
        with self._lock:
            if not self._pending:
                self._oldest = now
            self._pending.append({"at": self._store.clock(), "event": event, **fields})
            due = len(self._pending) >= METRICS_BATCH or now - self._oldest >= METRICS_MAX_AGE_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metric rows now."""
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self._store.record_events(batch)
        except StorageError as exc:  # pragma: no cover - only when the disk is failing
            log.warning("%d metric(s) not recorded: %s", len(batch), exc)
