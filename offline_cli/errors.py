"""The exception tree of offline-cli; every expected failure is one of these.

    OfflineError                      base: carries product, url, hint and an exit code
    ├── UsageError                    bad usage or input, nothing done            (exit 2)
    │   └── ConfigError               the config file or an option value is wrong (exit 2)
    ├── DownloadError                 the work was tried and did not succeed      (exit 1)
    │   ├── NetworkError              refused, reset, cut, DNS, timeout, stall    (retried)
    │   │   └── NetworkUnavailable    the host stopped answering for longer than the network timeout
    │   ├── ServerError               5xx and 429, may carry Retry-After          (retried)
    │   ├── PermanentError            never retried
    │   │   ├── HTTPStatusError       401, 403, 404, 410 and other 4xx
    │   │   ├── ChecksumMismatch      SHA-256 or size differs from what was expected
    │   │   ├── DiskFull              not enough space under the home folder
    │   │   └── ProductNotFound       the playback-info source answered 404
    │   ├── UnknownDownloadError      anything unclassified                       (one retry)
    │   ├── DownloadCancelled         deleted by another process while running
    │   └── DownloadInterrupted       Ctrl-C or SIGTERM: the download was saved as PAUSED
    ├── NotStored                     `path`/`export` of a product not offlined or not valid
    ├── ExportFailed                  `export` could not write a verified copy (nothing left)
    ├── BusyError                     another process is downloading it, --no-wait (exit 3)
    └── StorageError                  the store itself is unusable                (exit 4)
        └── StoreUnwritable           full disk, read-only home, I/O error: reads still work

httpx exceptions never cross the transport edge: ``transfer.py`` wraps them (``raise … from exc``).
"""

from __future__ import annotations

from offline_cli.redaction import escape_controls, scrub_urls


class OfflineError(Exception):
    """Base of every expected failure. ``str()`` is the one-line message for the user."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        product: str | None = None,
        url: str | None = None,
        hint: str | None = None,
    ) -> None:
        # Messages end up on terminals, in logs and in the database: never with credentials,
        # and never with raw control characters (they quote names and server answers).
        message = _displayable(message)
        super().__init__(message)
        self.message = message
        self.product = _displayable(product) if product else product
        self.url = url
        self.hint = _displayable(hint) if hint else hint

    def __str__(self) -> str:
        if self.product and not self.message.startswith(self.product):
            return f"{self.product}: {self.message}"
        return self.message

    def within(self, place: str) -> OfflineError:
        """Say which part of the product failed: ``segment v-s3.ts: HTTP 404 ...``."""
        self.message = f"{_displayable(place)}: {self.message}"
        self.args = (self.message,)
        return self

    def with_product(self, product: str) -> OfflineError:
        """Attach the product name when the raiser did not know it."""
        if self.product is None:
            self.product = _displayable(product)
        return self


def _displayable(text: str) -> str:
    return escape_controls(scrub_urls(text))


class UsageError(OfflineError):
    """Bad usage or bad input: nothing was downloaded and nothing changed."""

    exit_code = 2


class ConfigError(UsageError):
    """The config file, an environment variable or an option value is invalid."""


class DownloadError(OfflineError):
    """A download was tried and did not succeed."""

    exit_code = 1
    kind = "unknown"


class NetworkError(DownloadError):
    """The connection failed, was cut, timed out or stalled; retried with backoff."""

    kind = "network"

    def __init__(
        self,
        message: str,
        *,
        product: str | None = None,
        url: str | None = None,
        hint: str | None = None,
        host_unreachable: bool = False,
    ) -> None:
        super().__init__(message, product=product, url=url, hint=hint)
        # True when no connection could be made at all (refused, DNS): the signal that
        # a host which was answering has gone away and the download should pause.
        self.host_unreachable = host_unreachable


class NetworkUnavailable(NetworkError):
    """The host stayed unreachable for longer than the network timeout."""


class ServerError(DownloadError):
    """The server answered 5xx or 429; retried, honouring Retry-After."""

    kind = "server"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: str | None = None,
        product: str | None = None,
        url: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, product=product, url=url, hint=hint)
        self.status = status
        self.retry_after = retry_after


class PermanentError(DownloadError):
    """A failure that retrying cannot fix."""

    kind = "permanent"


class HTTPStatusError(PermanentError):
    """The server answered a 4xx other than 429."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        product: str | None = None,
        url: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, product=product, url=url, hint=hint)
        self.status = status


class ChecksumMismatch(PermanentError):
    """The downloaded bytes do not match the expected SHA-256 or size."""


class DiskFull(PermanentError):
    """There is not enough free space under the home folder."""


class ProductNotFound(PermanentError):
    """The playback-info source does not know the product."""


class UnknownDownloadError(DownloadError):
    """An unclassified failure; it gets one retry."""

    kind = "unknown"


class DownloadCancelled(DownloadError):
    """The download was cancelled (deleted) by another process while it ran."""

    kind = "cancelled"


class DownloadInterrupted(DownloadError):
    """Ctrl-C or SIGTERM stopped the download; it was saved as PAUSED for `resume`."""


class NotStored(OfflineError):
    """`path` or `export` of a product that is not offlined, or not valid."""


class ExportFailed(OfflineError):
    """`export` could not write a verified copy; nothing was left at the destination."""


class BusyError(OfflineError):
    """Another live process is downloading the product and --no-wait was given."""

    exit_code = 3


class StorageError(OfflineError):
    """The store itself is unusable: database corrupt or locked, home not writable."""

    exit_code = 4


class StoreUnwritable(StorageError):
    """The store cannot be written (full disk, read-only home, I/O error) but is not damaged;
    read commands still work on a read-only view of it."""

    def __init__(
        self,
        message: str,
        *,
        product: str | None = None,
        url: str | None = None,
        hint: str | None = None,
        disk_full: bool = False,
    ) -> None:
        super().__init__(message, product=product, url=url, hint=hint)
        # True when freeing space is what would make the write work (delete relies on it).
        self.disk_full = disk_full


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so no ``except Exception``
    swallows it; the engine saves the download as PAUSED on the way out."""
