"""Where the parts of a download report to: log events (JSON lines) and metric rows."""

from __future__ import annotations

import logging
from typing import Any

from offline_cli.errors import StorageError
from offline_cli.redaction import scrub_urls
from offline_cli.store import Store

log = logging.getLogger("offline_cli")


class Telemetry:
    """Log events always; metric rows only with enhanced download management (the seed's
    "metrics collector"), and a metric that cannot be written never breaks a download."""

    def __init__(self, store: Store, *, metrics: bool) -> None:
        self._store = store
        self._metrics = metrics

    def event(self, event: str, **fields: Any) -> None:
        safe = {k: scrub_urls(v) if isinstance(v, str) else v for k, v in fields.items()}
        log.info(event, extra={"event": event, "fields": safe})

    def record(self, event: str, **fields: Any) -> None:
        if not self._metrics:
            return
        try:
            self._store.record_event(event, **fields)
        except StorageError as exc:  # pragma: no cover - only when the disk is failing
            log.warning("metric not recorded: %s", exc)
