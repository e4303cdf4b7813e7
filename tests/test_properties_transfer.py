"""Property tests for the header parsers a server controls: Content-Range and Retry-After.

Whatever a server sends, the parsers never raise, and what they accept is consistent:
a range that fits its total, a wait between zero and the cap.
"""

from __future__ import annotations

import email.utils

from hypothesis import example, given
from hypothesis import strategies as st

from offline_cli.retry import RetryPolicy
from offline_cli.transfer import (
    MAX_CONTENT_LENGTH,
    ContentRange,
    parse_content_range,
    parse_unsatisfied_range,
)

NOW = 1_800_000_000.0
POLICY = RetryPolicy()
lengths = st.integers(min_value=1, max_value=MAX_CONTENT_LENGTH)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    total = draw(lengths)
    start = draw(st.integers(min_value=0, max_value=total - 1))
    end = draw(st.integers(min_value=start, max_value=total - 1))
    return start, end, total


# Text shaped like a Content-Range, with odd digits, signs and spaces mixed in
range_like = st.from_regex(
    r"\A[ \t]?(bytes|BYTES|pages)?[ \t]{0,2}[0-9\u0660-\u0669²+-]{0,25}"
    r"-?[0-9²]{0,25}/?([0-9]{0,25}|\*)[ \t]?\Z"
)


@given(ranges())
def test_a_valid_content_range_round_trips(triple: tuple[int, int, int]) -> None:
    start, end, total = triple
    assert parse_content_range(f"bytes {start}-{end}/{total}") == ContentRange(start, end, total)
    assert parse_content_range(f"bytes {start}-{end}/*") == ContentRange(start, end, None)


@given(st.one_of(st.text(max_size=80), range_like, st.none()))
@example("bytes \u0660-\u0669/300000")
@example("bytes 0-0/" + "9" * 5000)
@example("bytes 10-5/300000")
@example("bytes 0-99/50")
def test_any_content_range_parses_to_a_consistent_range_or_none(value: str | None) -> None:
    parsed = parse_content_range(value)
    if parsed is not None:
        assert 0 <= parsed.start <= parsed.end
        assert parsed.end < (parsed.total if parsed.total is not None else MAX_CONTENT_LENGTH)
        assert parsed.end <= MAX_CONTENT_LENGTH


@given(st.one_of(st.text(max_size=60), range_like, st.none()))
@example("bytes */" + "9" * 40)
def test_any_unsatisfied_range_is_a_sane_length_or_none(value: str | None) -> None:
    length = parse_unsatisfied_range(value)
    assert length is None or 0 <= length <= MAX_CONTENT_LENGTH


@given(st.integers(min_value=0, max_value=10**30))
def test_delay_seconds_are_capped(seconds: int) -> None:
    assert POLICY.parse_retry_after(str(seconds), NOW) == min(float(seconds), 300.0)


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_an_http_date_is_the_time_until_it_capped(offset: int) -> None:
    value = email.utils.formatdate(NOW + offset, usegmt=True)
    assert POLICY.parse_retry_after(value, NOW) == min(max(0.0, float(offset)), 300.0)


@given(st.one_of(st.text(max_size=60), st.none()))
@example("²")  # str.isdigit() says yes, float() says no
@example("9" * 5000)
@example("Mon, 01 Jan 99999999999 00:00:00 GMT")
@example("Mon, 01 Jan 0001 00:00:00 -2359")
def test_any_retry_after_is_a_wait_within_the_cap_or_none(value: str | None) -> None:
    wait = POLICY.parse_retry_after(value, NOW)
    assert wait is None or 0.0 <= wait <= POLICY.retry_after_max
