"""One byte budget shared by every download of a command: a token bucket (curl's --limit-rate)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# At most this much (or one read, whichever is larger) arrives at full speed before the
# limit applies: small, so the average is right within a fraction of a second.
BURST_S = 0.1
MIN_BURST_BYTES = 16 * 1024


class RateLimiter:
    """Bytes a second across all threads that call ``consume``.

    A read larger than the bucket is let through and paid for afterwards (the bucket goes
    into debt, and the next reader waits it off), so the average holds whatever the chunk
    size httpx hands us.
    """

    def __init__(
        self,
        bytes_per_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(bytes_per_s)
        self.burst = max(MIN_BURST_BYTES, self.rate * BURST_S)
        self._monotonic = monotonic
        self._tokens = self.burst
        self._updated = monotonic()
        self._lock = threading.Lock()

    def consume(self, nbytes: int) -> float:
        """Take ``nbytes`` from the budget; returns how long the caller must wait (seconds)."""
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= nbytes
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
