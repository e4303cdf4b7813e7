"""Property tests for the parsers that face the user and the playback source: durations,
numbers, settings from the environment and the config file, and playback-info answers.

Each parser gives a value or its one documented error, never another exception.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline_cli.config import SETTING_RANGES, Settings, load_settings
from offline_cli.errors import ConfigError, OfflineError, PermanentError, UsageError
from offline_cli.models import MediaProduct, ProductType, parse_count, parse_duration, parse_number
from offline_cli.playback import (
    MAX_PLAYBACK_INFO_BYTES,
    PlaybackInfo,
    fetch_playback_info,
    parse_playback_info,
)
from offline_cli.transfer import make_client

PRODUCT = MediaProduct(ProductType.TRACK, "1")
NO_HOME = Path("/nonexistent-offline-cli-home")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# No deadline: the machine is shared and a slow example is not a wrong one.
RELAXED = settings(deadline=None)
# The autouse fixture isolates the environment once per test, which is what these need.
FIXTURE_OK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers_as_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{1,12})?[smhdw]?\Z"),
    st.sampled_from(["inf", "nan", "-1", "1e9", "٣", "0x10", " 5 ", "5\n", "9" * 400, ""]),
)


def _assert_short_and_printable(message: str) -> None:
    """Long input is not echoed whole (40 characters at most, each escaped to at most 10)."""
    assert len(message) < 500
    assert message.isprintable(), message


# -- durations and numbers -------------------------------------------------------------------------


@RELAXED
@given(numbers_as_text)
def test_parse_duration_gives_a_finite_duration_or_usage_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except UsageError as exc:
        assert "duration" in exc.message or "too large" in exc.message
        _assert_short_and_printable(exc.message)
        return
    assert math.isfinite(seconds) and seconds >= 0


@RELAXED
@given(st.integers(0, 10**12), st.sampled_from(sorted(UNITS)))
def test_parse_duration_reads_what_it_is_given(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == n * UNITS[unit]


@RELAXED
@given(numbers_as_text)
def test_parse_count_and_number_give_a_value_or_usage_error(text: str) -> None:
    for parse in (parse_count, parse_number):
        try:
            value = parse(text)
        except UsageError as exc:
            _assert_short_and_printable(exc.message)
            continue
        assert value >= 0 and math.isfinite(value)
        assert float(value) == float(text.strip())


# -- settings from the environment and the config file ---------------------------------------------

setting_names = st.sampled_from([f for f in Settings.__dataclass_fields__ if f != "origins"])


@FIXTURE_OK
@given(setting_names, numbers_as_text)
def test_any_environment_value_gives_settings_in_range_or_config_error(
    name: str, text: str
) -> None:
    env = {f"OFFLINE_CLI_{name.upper()}": text}
    try:
        loaded = load_settings(NO_HOME, environ=env)
    except ConfigError as exc:
        # The variable names the setting: the message starts with it.
        assert exc.message.startswith(f"$OFFLINE_CLI_{name.upper()}: "), exc.message
        return
    _assert_in_range(loaded)


toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda x: (
            "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)
        )
    ),
    st.booleans().map(lambda b: "true" if b else "false"),
    numbers_as_text.map(json.dumps),
    st.just("[1, 2]"),
    st.just("{ a = 1 }"),
)


@FIXTURE_OK
@given(name=setting_names, value=toml_scalars, table=st.sampled_from(["", "[flags]\n"]))
def test_any_config_value_gives_settings_in_range_or_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, table: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"{table}{name} = {value}\n", encoding="utf-8")
    monkeypatch.setenv("OFFLINE_CLI_CONFIG", str(config))
    try:
        loaded = load_settings(NO_HOME, environ={})
    except ConfigError as exc:
        assert str(config) in exc.message
        return
    _assert_in_range(loaded)


def _assert_in_range(loaded: Settings) -> None:
    for name, (low, high) in SETTING_RANGES.items():
        value = getattr(loaded, name)
        assert math.isfinite(value) and low <= value <= high, (name, value)


# -- playback-info answers -----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**15, max_value=10**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "http://127.0.0.1/m",
            "https://h/x?sig=1",
            "audio/flac",
            "application/vnd.apple.mpegurl",
            "a" * 64,
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "http://" + "x" * 20_000,
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
)
OPTIONAL_FIELDS = ("licenseUrl", "sha256", "size", "licenseExpiresAt")
playback_documents = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={key: field_values for key in ("url", "manifestMimeType", *OPTIONAL_FIELDS)},
    ),
    # Required fields right, so that the optional ones are what decides.
    st.fixed_dictionaries(
        {"url": st.just("http://127.0.0.1/m"), "manifestMimeType": st.just("audio/flac")},
        optional={key: field_values for key in OPTIONAL_FIELDS},
    ),
)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _streamed(status: int, encoding: str, body: bytes) -> httpx.Response:
    """A response that is still to be read, as one from the network is."""
    headers = {"Content-Encoding": encoding, "Content-Length": str(len(body))}
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


def _assert_info_or_bad_playback_info(body: bytes) -> None:
    try:
        info = parse_playback_info(body, PRODUCT, "source")
    except PermanentError as exc:
        assert "bad playback info from source" in str(exc)
        assert len(str(exc)) < 400
        return
    assert isinstance(info, PlaybackInfo)
    assert info.size is None or 0 <= info.size <= 2**50
    if info.license_expires_at is not None:
        info.license_expires_at.timestamp()  # storable


@RELAXED
@given(playback_documents)
def test_any_playback_document_gives_info_or_bad_playback_info(document: dict[str, object]) -> None:
    _assert_info_or_bad_playback_info(json.dumps(document).encode())


def _with(**fields: object) -> bytes:
    return json.dumps({"url": "http://127.0.0.1/m", "manifestMimeType": "a/b", **fields}).encode()


@RELAXED
@given(st.integers(min_value=-(2**80), max_value=2**80))
def test_size_is_accepted_exactly_within_its_range(size: int) -> None:
    try:
        info = parse_playback_info(_with(size=size), PRODUCT, "source")
    except PermanentError as exc:
        assert "'size'" in str(exc)
        assert not 0 <= size <= 2**50
        return
    assert info.size == size and 0 <= size <= 2**50


@RELAXED
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_license_expiry_is_accepted_exactly_within_its_range(when: datetime, minutes: int) -> None:
    aware = when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    try:
        info = parse_playback_info(_with(licenseExpiresAt=aware.isoformat()), PRODUCT, "source")
    except PermanentError as exc:
        assert "'licenseExpiresAt'" in str(exc)
        assert not datetime(1970, 1, 1, tzinfo=UTC) <= aware <= datetime(3000, 1, 1, tzinfo=UTC)
        return
    assert info.license_expires_at == aware
    assert 0 <= aware.timestamp() <= datetime(3000, 1, 1, tzinfo=UTC).timestamp()


@RELAXED
@given(json_values)
def test_any_json_gives_info_or_bad_playback_info(value: object) -> None:
    _assert_info_or_bad_playback_info(json.dumps(value).encode())


@RELAXED
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.integers(1, 100_000).map(lambda n: b"[" * n),
        st.integers(1, 100_000).map(lambda n: b'{"a":' * n),
    )
)
def test_any_bytes_give_info_or_bad_playback_info(body: bytes) -> None:
    _assert_info_or_bad_playback_info(body)


@RELAXED
@given(
    body=st.one_of(
        st.binary(max_size=3000),
        playback_documents.map(lambda d: json.dumps(d).encode()),
    ),
    encoding=st.sampled_from(["identity", "gzip", "deflate", "br", "gzip, gzip", ""]),
    compress=st.booleans(),
    status=st.sampled_from([200, 200, 200, 204, 301, 404, 410, 500]),
)
def test_any_answer_over_http_gives_info_or_a_download_error(
    body: bytes, encoding: str, compress: bool, status: int
) -> None:
    """Through httpx's own transport seam: whatever the source answers, the caller gets a
    PlaybackInfo or one of our errors (never zlib's, httpx's or json's)."""
    if compress and encoding in ("gzip", "gzip, gzip"):
        body = gzip.compress(body)
    elif compress and encoding == "deflate":
        body = zlib.compress(body) if len(body) % 2 else _raw_deflate(body)

    def answer(request: httpx.Request) -> httpx.Response:
        return _streamed(status, encoding, body)

    with make_client(transport=httpx.MockTransport(answer)) as client:
        try:
            info = fetch_playback_info(client, "http://source/{type}/{id}", PRODUCT)
        except OfflineError as exc:
            assert "Traceback" not in str(exc)
            return
    assert isinstance(info, PlaybackInfo)


def test_decoded_cap_is_exact() -> None:
    """A document of exactly the cap is read; one byte more is refused, compressed or not."""
    document = json.dumps({"url": "http://h/m", "manifestMimeType": "a/b", "pad": ""}).encode()
    at_cap = document[:-2] + b" " * (MAX_PLAYBACK_INFO_BYTES - len(document)) + document[-2:]
    assert len(at_cap) == MAX_PLAYBACK_INFO_BYTES
    for body in (at_cap, at_cap[:-2] + b" " + at_cap[-2:]):
        encodings = (
            ("identity", body),
            ("gzip", gzip.compress(body)),
            ("deflate", zlib.compress(body)),
            ("deflate", _raw_deflate(body)),
        )
        for encoding, encoded in encodings:

            def answer(request: httpx.Request, encoded: bytes = encoded, enc: str = encoding):
                return _streamed(200, enc, encoded)

            with make_client(transport=httpx.MockTransport(answer)) as client:
                if len(body) == MAX_PLAYBACK_INFO_BYTES:
                    info = fetch_playback_info(client, "http://s/{id}", PRODUCT)
                    assert info.url == "http://h/m"
                else:
                    with pytest.raises(PermanentError, match="larger than 1 MiB"):
                        fetch_playback_info(client, "http://s/{id}", PRODUCT)
