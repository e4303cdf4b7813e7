"""offline-cli: a resilient download manager for media products (public Python API).

The public names are loaded on first use (PEP 562): importing a part of the package, such as
``offline_cli.transfer``, runs this file, and must not drag in the engine and the store with it.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from offline_cli._version import __version__

# `import httpx` imports httpx's own command line (httpx._main: click, rich, pygments; about
# 35 ms and 6 MiB) whenever those are installed, and typer installs them. offline-cli never
# runs it; None in sys.modules makes that import fail, and httpx then defines a stub `main`.
# (Only when httpx is not imported yet: a program that already has it keeps it whole.)
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

if TYPE_CHECKING:
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

# Each lazily loaded public name, with the module that defines it.
_LAZY: dict[str, str] = {
    "OfflineEngine": "offline_cli.engine",
    "Outcome": "offline_cli.engine",
    "BusyError": "offline_cli.errors",
    "DownloadError": "offline_cli.errors",
    "OfflineError": "offline_cli.errors",
    "StorageError": "offline_cli.errors",
    "UsageError": "offline_cli.errors",
    "OfflineEngineListener": "offline_cli.listener",
    "CleanupReport": "offline_cli.maintenance",
    "DownloadHealthReport": "offline_cli.maintenance",
    "ValidationResult": "offline_cli.maintenance",
    "DownloadEntry": "offline_cli.models",
    "DownloadState": "offline_cli.models",
    "MediaProduct": "offline_cli.models",
    "OfflineState": "offline_cli.models",
    "ProductType": "offline_cli.models",
}


if not TYPE_CHECKING:
    # Hidden from type checkers, which see the imports above instead: a module __getattr__
    # would make them accept any name, `from offline_cli import Typo` included.

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups do not come back here
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
