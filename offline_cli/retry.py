"""Retry policy (an immutable value with pure methods) and its execution with ``backoff``."""

from __future__ import annotations

import email.utils
import math
import random
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import TypeVar

import backoff

from offline_cli.errors import (
    DownloadCancelled,
    DownloadError,
    NetworkError,
    NetworkUnavailable,
    PermanentError,
    ServerError,
    UnknownDownloadError,
)
from offline_cli.models import ErrorKind

T = TypeVar("T")

# RFC 9110 delay-seconds: ASCII digits only (str.isdigit() also accepts "²", which float()
# refuses)
_DELAY_SECONDS_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds."""

    delay: float
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Stop: the error is permanent or the attempts are used up."""

    reason: str


Decision = Retry | GiveUp


def classify(error: BaseException) -> ErrorKind:
    """Map an error to the kind that decides whether it is retried."""
    if isinstance(error, DownloadCancelled):
        return ErrorKind.CANCELLED
    if isinstance(error, NetworkError):
        return ErrorKind.NETWORK
    if isinstance(error, ServerError):
        return ErrorKind.SERVER
    if isinstance(error, PermanentError):
        return ErrorKind.PERMANENT
    return ErrorKind.UNKNOWN


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a failed transfer again.

    ``attempt`` counts consecutive failures without progress (1 for the first failure), so a
    long download that keeps making progress is never given up on.
    """

    DEFAULT_RETRIES = 5
    DEFAULT_BACKOFF_BASE = 1.0
    DEFAULT_BACKOFF_MAX = 16.0
    DEFAULT_RETRY_AFTER_MAX = 300.0
    # Jitter only shortens: the delay is drawn from [JITTER_MIN, 1.0] of the capped value,
    # so the cap is a true upper bound and clients that failed together spread out.
    JITTER_MIN = 0.8
    UNKNOWN_ERROR_RETRIES = 1

    retries: int = DEFAULT_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ValueError("delays must be >= 0")

    def with_retries(self, retries: int) -> RetryPolicy:
        return replace(self, retries=retries)

    def backoff_time(self, attempt: int, rand: float = 1.0) -> float:
        """Jittered exponential delay before retry number ``attempt`` (1-based).

        ``rand`` in [0, 1] picks the point in the jitter window; 1.0 gives the full delay.
        """
        if attempt < 1:
            return 0.0
        exponent = min(attempt - 1, 62)  # 2**62 is far past any cap; avoids overflow
        capped = min(self.backoff_max, self.backoff_base * math.pow(2, exponent))
        factor = self.JITTER_MIN + (1.0 - self.JITTER_MIN) * min(max(rand, 0.0), 1.0)
        return capped * factor

    def parse_retry_after(self, value: str | None, now: float) -> float | None:
        """Seconds to wait from a ``Retry-After`` value (seconds or HTTP date), capped.

        Returns None when the value is absent or unreadable; a date in the past gives 0.
        """
        if value is None:
            return None
        value = value.strip()
        if _DELAY_SECONDS_RE.fullmatch(value):
            # float() of any digit string is finite or inf, never an error; the cap bounds it
            seconds = float(value)
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
                if when.tzinfo is None:
                    return None
                seconds = max(0.0, when.timestamp() - now)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
        return min(seconds, self.retry_after_max)

    def decide(self, error: BaseException, attempt: int, now: float, rand: float = 1.0) -> Decision:
        """Retry or give up after failure number ``attempt`` without progress."""
        kind = classify(error)
        if kind in (ErrorKind.PERMANENT, ErrorKind.CANCELLED):
            return GiveUp(f"{kind.value} error")
        allowed = (
            min(self.retries, self.UNKNOWN_ERROR_RETRIES)
            if kind is ErrorKind.UNKNOWN
            else (self.retries)
        )
        if attempt > allowed:
            return GiveUp(f"gave up after {allowed} retries")
        if isinstance(error, ServerError):
            retry_after = self.parse_retry_after(error.retry_after, now)
            if retry_after is not None:
                return Retry(retry_after, f"HTTP {error.status}, Retry-After {retry_after:g}s")
        return Retry(self.backoff_time(attempt, rand), f"{kind.value} error")


@dataclass
class RetryHooks:
    """What the executor needs from its caller; every effect is injected."""

    sleep: Callable[[float], None]
    clock: Callable[[], float]
    # True when the failed try moved the download forward (then attempts start over)
    made_progress: Callable[[], bool]
    # Called before the wait with (error, attempt, delay, reason)
    on_retry: Callable[[DownloadError, int, float, str], None]
    # For a network outage: returns None when this is not an outage, else blocks until the
    # host answers (True) or the network timeout passes (False). Outages use no attempts.
    wait_out_outage: Callable[[DownloadError], bool | None] | None = None
    rand: Callable[[], float] = random.random


def execute(operation: Callable[[], T], policy: RetryPolicy, hooks: RetryHooks) -> T:
    """Run ``operation`` until it succeeds or the policy gives up, re-raising the last error.

    ``backoff`` drives the loop; our wait generator asks the policy for the delay and does
    the waiting through the injected ``sleep`` (so tests run in milliseconds and a
    cancellation can cut a wait short), handing backoff a zero wait.
    """
    attempts = 0
    pending: Decision | None = None
    outage: dict[str, bool] = {}

    def give_up(error: Exception) -> bool:
        nonlocal attempts, pending
        assert isinstance(error, DownloadError)
        if hooks.made_progress():
            attempts = 0
        if hooks.wait_out_outage is not None and classify(error) is ErrorKind.NETWORK:
            back = hooks.wait_out_outage(error)
            if back is True:
                pending = Retry(0.0, "network is back")
                return False
            if back is False:
                outage["timed_out"] = True
                return True
        attempts += 1
        pending = policy.decide(error, attempts, hooks.clock(), hooks.rand())
        if isinstance(pending, Retry):
            hooks.on_retry(error, attempts, pending.delay, pending.reason)
            return False
        return True

    def waits() -> Generator[float, BaseException | None, None]:
        yield 0.0  # primed by backoff with send(None)
        while True:
            if isinstance(pending, Retry) and pending.delay > 0:
                hooks.sleep(pending.delay)
            yield 0.0

    retrying = backoff.on_exception(
        waits,
        DownloadError,
        max_tries=None,
        jitter=None,
        giveup=give_up,
        logger=None,
    )(operation)
    try:
        return retrying()
    except NetworkError as exc:
        if outage.get("timed_out") and not isinstance(exc, NetworkUnavailable):
            raise NetworkUnavailable(
                f"network unavailable: {exc.message}",
                product=exc.product,
                url=exc.url,
                hint="the host did not come back within the network timeout; run `resume` later",
            ) from exc
        raise


__all__ = [
    "Decision",
    "GiveUp",
    "Retry",
    "RetryHooks",
    "RetryPolicy",
    "UnknownDownloadError",
    "classify",
    "execute",
]
