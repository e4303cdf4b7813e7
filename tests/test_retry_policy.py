"""RetryPolicy as pure functions, and ``execute()`` with every effect injected."""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offline_cli.errors import (
    ChecksumMismatch,
    DiskFull,
    DownloadCancelled,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    NetworkUnavailable,
    ProductNotFound,
    ServerError,
    UnknownDownloadError,
)
from offline_cli.models import ErrorKind
from offline_cli.retry import GiveUp, Retry, RetryHooks, RetryPolicy, classify, execute

NOW = 1_800_000_000.0


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


# -- backoff_time -------------------------------------------------------------------------------


def test_backoff_sequence_doubles_from_one_second_up_to_the_cap() -> None:
    policy = RetryPolicy()
    assert [policy.backoff_time(n, rand=1.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]


def test_defaults_are_base_one_cap_sixteen_and_at_least_three_retries() -> None:
    policy = RetryPolicy()
    assert policy.backoff_base == 1.0
    assert policy.backoff_max == 16.0
    assert policy.retries >= 3


def test_jitter_only_shortens_down_to_eighty_percent() -> None:
    policy = RetryPolicy()
    assert policy.backoff_time(3, rand=0.0) == pytest.approx(0.8 * 4)
    assert policy.backoff_time(3, rand=0.5) == pytest.approx(0.9 * 4)
    assert policy.backoff_time(10, rand=0.0) == pytest.approx(0.8 * 16)


def test_rand_outside_the_unit_interval_is_clamped() -> None:
    policy = RetryPolicy()
    assert policy.backoff_time(2, rand=-3.0) == pytest.approx(0.8 * 2)
    assert policy.backoff_time(2, rand=7.0) == pytest.approx(2)


def test_attempt_zero_waits_nothing_and_huge_attempts_do_not_overflow() -> None:
    policy = RetryPolicy()
    assert policy.backoff_time(0) == 0.0
    assert policy.backoff_time(-1) == 0.0
    assert policy.backoff_time(10_000) == 16.0


def test_custom_base_and_cap() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0)
    assert [policy.backoff_time(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    rand=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_delay_is_inside_the_jitter_window_and_never_above_the_cap(
    attempt: int, rand: float
) -> None:
    policy = RetryPolicy()
    capped = min(16.0, 2.0 ** min(attempt - 1, 62))
    delay = policy.backoff_time(attempt, rand)
    assert 0.8 * capped - 1e-9 <= delay <= capped <= 16.0


@given(
    attempt=st.integers(min_value=1, max_value=60),
    low=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    high=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)
def test_delay_grows_with_rand(attempt: int, low: float, high: float) -> None:
    low, high = sorted((low, high))
    policy = RetryPolicy()
    assert policy.backoff_time(attempt, low) <= policy.backoff_time(attempt, high)


def test_policy_is_immutable_and_validated() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.retries = 1  # type: ignore[misc]
    assert policy.with_retries(1).retries == 1
    assert policy.retries == RetryPolicy.DEFAULT_RETRIES
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_max=-1)


# -- parse_retry_after --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("5", 5.0),
        ("  120 ", 120.0),
        ("300", 300.0),
        ("301", 300.0),  # capped
        ("86400", 300.0),  # capped
        (http_date(NOW + 30), 30.0),  # HTTP date in the future
        (http_date(NOW + 3600), 300.0),  # far future: capped
        (http_date(NOW - 30), 0.0),  # HTTP date in the past: no wait
        ("Wed, 21 Oct 2026 07:28:00 GMT", 0.0),  # a fixed date before NOW
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 99 Foo 2026 25:61:00 GMT", None),
        ("Wed, 21 Oct 2026 07:28:00", None),  # no zone: unreadable
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    policy = RetryPolicy(retry_after_max=300.0)
    result = policy.parse_retry_after(value, now=NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_parse_retry_after_cap_is_configurable() -> None:
    policy = RetryPolicy(retry_after_max=10.0)
    assert policy.parse_retry_after("60", now=NOW) == 10.0
    assert policy.parse_retry_after(http_date(NOW + 60), now=NOW) == 10.0


# -- classify and decide ------------------------------------------------------------------------


def network() -> NetworkError:
    return NetworkError("connection cut", product="track:1")


def server(status: int = 503, retry_after: str | None = None) -> ServerError:
    return ServerError(f"HTTP {status}", status=status, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (network(), ErrorKind.NETWORK),
        (NetworkUnavailable("gone"), ErrorKind.NETWORK),
        (server(), ErrorKind.SERVER),
        (server(429), ErrorKind.SERVER),
        (HTTPStatusError("HTTP 404", status=404), ErrorKind.PERMANENT),
        (ChecksumMismatch("bad"), ErrorKind.PERMANENT),
        (DiskFull("full"), ErrorKind.PERMANENT),
        (ProductNotFound("no"), ErrorKind.PERMANENT),
        (UnknownDownloadError("what"), ErrorKind.UNKNOWN),
        (DownloadError("plain"), ErrorKind.UNKNOWN),
        (ValueError("bug"), ErrorKind.UNKNOWN),
        (DownloadCancelled("deleted"), ErrorKind.CANCELLED),
    ],
)
def test_classify(error: BaseException, kind: ErrorKind) -> None:
    assert classify(error) is kind


@pytest.mark.parametrize("error", [network(), server(500), server(502), server(504), server(429)])
def test_network_and_server_errors_are_retried_with_backoff(error: DownloadError) -> None:
    policy = RetryPolicy(retries=5)
    delays = []
    for attempt in range(1, 6):
        decision = policy.decide(error, attempt, now=NOW, rand=1.0)
        assert isinstance(decision, Retry)
        delays.append(decision.delay)
    assert delays == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("error", [network(), server()])
def test_retries_exhausted_gives_up(error: DownloadError) -> None:
    policy = RetryPolicy(retries=3)
    assert isinstance(policy.decide(error, 3, now=NOW), Retry)
    decision = policy.decide(error, 4, now=NOW)
    assert isinstance(decision, GiveUp)
    assert "3 retries" in decision.reason


@pytest.mark.parametrize(
    "error",
    [
        HTTPStatusError("HTTP 401", status=401),
        HTTPStatusError("HTTP 403", status=403),
        HTTPStatusError("HTTP 404", status=404),
        HTTPStatusError("HTTP 410", status=410),
        HTTPStatusError("HTTP 400", status=400),
        ChecksumMismatch("bad"),
        DiskFull("full"),
        ProductNotFound("no"),
        DownloadCancelled("deleted"),
    ],
)
def test_permanent_errors_give_up_at_the_first_attempt(error: DownloadError) -> None:
    assert isinstance(RetryPolicy(retries=100).decide(error, 1, now=NOW), GiveUp)


def test_unknown_errors_are_retried_once() -> None:
    policy = RetryPolicy(retries=5)
    error = UnknownDownloadError("odd")
    assert policy.decide(error, 1, now=NOW, rand=1.0) == Retry(1.0, "unknown error")
    assert isinstance(policy.decide(error, 2, now=NOW), GiveUp)


def test_zero_retries_gives_up_on_everything() -> None:
    policy = RetryPolicy(retries=0)
    for error in (network(), server(), UnknownDownloadError("odd")):
        assert isinstance(policy.decide(error, 1, now=NOW), GiveUp)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_used_instead_of_backoff(status: int) -> None:
    decision = RetryPolicy().decide(server(status, "7"), 1, now=NOW, rand=0.0)
    assert isinstance(decision, Retry)
    assert decision.delay == 7.0
    assert "Retry-After" in decision.reason


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_http_date_is_used_instead_of_backoff(status: int) -> None:
    decision = RetryPolicy().decide(server(status, http_date(NOW + 42)), 2, now=NOW)
    assert isinstance(decision, Retry)
    assert decision.delay == pytest.approx(42.0)


def test_retry_after_is_capped() -> None:
    decision = RetryPolicy(retry_after_max=60).decide(server(429, "3600"), 1, now=NOW)
    assert decision == Retry(60.0, "HTTP 429, Retry-After 60s")


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    decision = RetryPolicy().decide(server(503, "later"), 3, now=NOW, rand=1.0)
    assert decision == Retry(4.0, "server error")


def test_retry_after_does_not_extend_the_attempt_budget() -> None:
    decision = RetryPolicy(retries=2).decide(server(429, "1"), 3, now=NOW)
    assert isinstance(decision, GiveUp)


# -- execute ------------------------------------------------------------------------------------


@dataclass
class Script:
    """An operation that raises the scripted errors in turn, then returns ``result``."""

    errors: list[BaseException]
    result: str = "done"
    calls: int = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


@dataclass
class Harness:
    sleeps: list[float] = field(default_factory=list)
    retries: list[tuple[str, int, float, str]] = field(default_factory=list)
    now: float = NOW
    progress: Iterable[bool] = ()
    outage: Callable[[DownloadError], bool | None] | None = None
    rand: float = 1.0

    def hooks(self) -> RetryHooks:
        progress = iter(self.progress)

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

        return RetryHooks(
            sleep=sleep,
            clock=lambda: self.now,
            made_progress=lambda: next(progress, False),
            on_retry=lambda e, a, d, r: self.retries.append((type(e).__name__, a, d, r)),
            wait_out_outage=self.outage,
            rand=lambda: self.rand,
        )


def test_execute_returns_at_once_when_the_first_try_succeeds() -> None:
    harness = Harness()
    op = Script([])
    assert execute(op, RetryPolicy(), harness.hooks()) == "done"
    assert op.calls == 1
    assert harness.sleeps == []
    assert harness.retries == []


def test_execute_sleeps_the_backoff_between_tries() -> None:
    harness = Harness()
    op = Script([network(), server(502), network()])
    assert execute(op, RetryPolicy(retries=5), harness.hooks()) == "done"
    assert op.calls == 4
    assert harness.sleeps == [1.0, 2.0, 4.0]
    assert [(name, attempt) for name, attempt, _, _ in harness.retries] == [
        ("NetworkError", 1),
        ("ServerError", 2),
        ("NetworkError", 3),
    ]


def test_execute_uses_the_injected_rand_for_jitter() -> None:
    harness = Harness(rand=0.0)
    execute(Script([network(), network()]), RetryPolicy(), harness.hooks())
    assert harness.sleeps == pytest.approx([0.8, 1.6])


def test_execute_sleeps_retry_after() -> None:
    harness = Harness()
    execute(
        Script([server(429, "9"), server(503, http_date(NOW + 20))]), RetryPolicy(), harness.hooks()
    )
    # the second Retry-After date is read against the clock after the first wait
    assert harness.sleeps == pytest.approx([9.0, 11.0])


def test_execute_gives_up_after_the_retries_and_reraises_the_last_error() -> None:
    harness = Harness()
    errors: list[BaseException] = [network() for _ in range(10)]
    last = errors[3]
    op = Script(errors)
    with pytest.raises(NetworkError) as excinfo:
        execute(op, RetryPolicy(retries=3), harness.hooks())
    assert excinfo.value is last
    assert op.calls == 4
    assert harness.sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "error",
    [
        HTTPStatusError("HTTP 404", status=404),
        HTTPStatusError("HTTP 403", status=403),
        ChecksumMismatch("bad"),
        DiskFull("full"),
        DownloadCancelled("deleted"),
    ],
)
def test_execute_does_not_retry_permanent_errors(error: DownloadError) -> None:
    harness = Harness()
    op = Script([error])
    with pytest.raises(type(error)) as excinfo:
        execute(op, RetryPolicy(retries=5), harness.hooks())
    assert excinfo.value is error
    assert op.calls == 1
    assert harness.sleeps == []
    assert harness.retries == []


def test_execute_retries_unknown_errors_once() -> None:
    harness = Harness()
    op = Script([UnknownDownloadError("a"), UnknownDownloadError("b")])
    with pytest.raises(UnknownDownloadError, match="b"):
        execute(op, RetryPolicy(retries=5), harness.hooks())
    assert op.calls == 2
    assert harness.sleeps == [1.0]


def test_execute_lets_non_download_errors_through_untouched() -> None:
    harness = Harness()
    op = Script([ValueError("a bug")])
    with pytest.raises(ValueError):
        execute(op, RetryPolicy(), harness.hooks())
    assert op.calls == 1


def test_attempts_start_over_after_a_try_that_made_progress() -> None:
    # Eight failures with retries=1: each one moved the download forward, so none is the
    # second consecutive failure without progress.
    harness = Harness(progress=[True] * 8)
    op = Script([network() for _ in range(8)])
    assert execute(op, RetryPolicy(retries=1), harness.hooks()) == "done"
    assert op.calls == 9
    assert harness.sleeps == [1.0] * 8
    assert {attempt for _, attempt, _, _ in harness.retries} == {1}


def test_attempts_count_only_consecutive_failures_without_progress() -> None:
    # progress (1), none (2), progress (1), none (2), none (3 > retries: give up)
    harness = Harness(progress=[True, False, True, False, False])
    op = Script([network() for _ in range(7)])
    with pytest.raises(NetworkError):
        execute(op, RetryPolicy(retries=2), harness.hooks())
    assert [attempt for _, attempt, _, _ in harness.retries] == [1, 2, 1, 2]
    assert harness.sleeps == [1.0, 2.0, 1.0, 2.0]
    assert op.calls == 5


def test_outage_that_ends_uses_no_attempts() -> None:
    seen: list[DownloadError] = []

    def outage(error: DownloadError) -> bool | None:
        seen.append(error)
        return True

    harness = Harness(outage=outage)
    errors: list[BaseException] = [
        NetworkError("refused", host_unreachable=True) for _ in range(20)
    ]
    op = Script(errors)
    assert execute(op, RetryPolicy(retries=0), harness.hooks()) == "done"
    assert op.calls == 21
    assert len(seen) == 20
    assert harness.retries == []
    assert harness.sleeps == []


def test_outage_hook_is_asked_only_about_network_errors() -> None:
    seen: list[DownloadError] = []

    def outage(error: DownloadError) -> bool | None:
        seen.append(error)
        return None  # not an outage: normal retries

    harness = Harness(outage=outage)
    op = Script([server(503), network(), HTTPStatusError("HTTP 404", status=404)])
    with pytest.raises(HTTPStatusError):
        execute(op, RetryPolicy(), harness.hooks())
    assert [type(e) for e in seen] == [NetworkError]
    assert harness.sleeps == [1.0, 2.0]


def test_outage_past_the_network_timeout_raises_network_unavailable() -> None:
    harness = Harness(outage=lambda error: False)
    refused = NetworkError(
        "cannot connect", product="track:1", url="http://h/", host_unreachable=True
    )
    op = Script([refused])
    with pytest.raises(NetworkUnavailable) as excinfo:
        execute(op, RetryPolicy(retries=5), harness.hooks())
    assert op.calls == 1
    assert excinfo.value.__cause__ is refused
    assert excinfo.value.product == "track:1"
    assert excinfo.value.url == "http://h/"
    assert excinfo.value.hint
    assert harness.retries == []


def test_outage_between_ordinary_failures_keeps_their_attempt_count() -> None:
    answers = iter([None, True, None])

    def outage(error: DownloadError) -> bool | None:
        return next(answers)

    harness = Harness(outage=outage)
    op = Script([network(), NetworkError("refused", host_unreachable=True), network()])
    assert execute(op, RetryPolicy(retries=2), harness.hooks()) == "done"
    assert [attempt for _, attempt, _, _ in harness.retries] == [1, 2]
    assert harness.sleeps == [1.0, 2.0]
