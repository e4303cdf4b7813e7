"""offline-cli: a resilient download manager for media products (public Python API)."""

from __future__ import annotations

from offline_cli._version import __version__
from offline_cli.engine import OfflineEngine, Outcome
from offline_cli.errors import (
    BusyError,
    DownloadError,
    OfflineError,
    StorageError,
    UsageError,
)
from offline_cli.listener import OfflineEngineListener
from offline_cli.maintenance import (
    CleanupReport,
    DownloadHealthReport,
    ValidationResult,
)
from offline_cli.models import (
    DownloadEntry,
    DownloadState,
    MediaProduct,
    OfflineState,
    ProductType,
)

__all__ = [
    "BusyError",
    "CleanupReport",
    "DownloadEntry",
    "DownloadError",
    "DownloadHealthReport",
    "DownloadState",
    "MediaProduct",
    "OfflineEngine",
    "OfflineEngineListener",
    "OfflineError",
    "OfflineState",
    "Outcome",
    "ProductType",
    "StorageError",
    "UsageError",
    "ValidationResult",
    "__version__",
]
