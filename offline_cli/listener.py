"""The listener interface the engine reports through; the CLI's progress bars implement it."""

from __future__ import annotations

from offline_cli.errors import OfflineError
from offline_cli.models import MediaProduct


class OfflineEngineListener:
    """Callbacks of one engine. Every download ends in exactly one of completed or failed.

    The first six mirror the original SDK; the rest are optional extras (bytes, pauses,
    retries) so a progress bar can show size, speed and ETA. Override what you need.

    Callbacks come from the thread that runs each download: with more than one job
    (``-j``, ``settings.jobs``) that is a worker thread, and several downloads call at once,
    so a listener that keeps state must lock it. An exception a callback raises is a bug: it
    pauses that download, stops the others as Ctrl-C would, and is raised again.
    """

    def offlining_started(self, product: MediaProduct) -> None:
        """A download of ``product`` started (or resumed)."""

    def offlining_progressed(self, product: MediaProduct, fraction: float) -> None:
        """``fraction`` (0.0-1.0) of media and license together is on disk."""

    def offlining_completed(self, product: MediaProduct) -> None:
        """Media and license are committed; the product is OFFLINED_AND_VALID."""

    def offlining_failed(self, product: MediaProduct, error: OfflineError) -> None:
        """The download ended without committing anything."""

    def offlined_deleted(self, product: MediaProduct) -> None:
        """``product`` was removed from the store."""

    def all_offlined_media_products_deleted(self) -> None:
        """Everything was removed from the store."""

    # -- optional, richer callbacks ---------------------------------------------------------

    def offlining_bytes(self, product: MediaProduct, done: int, total: int | None) -> None:
        """Bytes on disk so far and the expected total (None while unknown)."""

    def offlining_paused(self, product: MediaProduct, reason: str) -> None:
        """The download is PAUSED (for example waiting for the network)."""

    def offlining_unpaused(self, product: MediaProduct) -> None:
        """A paused download continues."""

    def offlining_retrying(
        self, product: MediaProduct, attempt: int, delay: float, reason: str
    ) -> None:
        """A try failed; the next starts after ``delay`` seconds."""

    def offlining_waiting_for_other(self, product: MediaProduct, pid: int | None) -> None:
        """Another process is downloading ``product``; this one waits for its outcome."""
