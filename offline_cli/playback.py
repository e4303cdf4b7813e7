"""Resolve a ``TYPE:ID`` product through a playback-info source (a URL template)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from offline_cli.errors import (
    DownloadError,
    HTTPStatusError,
    PermanentError,
    ProductNotFound,
    UnknownDownloadError,
    UsageError,
)
from offline_cli.models import MAX_URL_CHARS, MediaProduct, check_sha256, check_url, shorten
from offline_cli.redaction import has_controls
from offline_cli.transfer import (
    host_of,
    raise_for_status,
    status_text,
    trusted_extensions,
    wrap_http_error,
)

HLS_MIME_TYPES = ("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl")

# A playback-info document is a few hundred bytes of JSON. These limits keep a hostile or broken
# source from exhausting memory (a small gzip bomb, an endless body) or the parser's stack, and
# keep what it says within what the store and the clock can hold.
MAX_PLAYBACK_INFO_BYTES = 1 << 20  # decoded size, after any Content-Encoding
MAX_JSON_DEPTH = 32
MAX_MIME_TYPE_CHARS = 255
MAX_MEDIA_SIZE = 1 << 50  # 1 PiB
EARLIEST_EXPIRY = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EXPIRY = datetime(3000, 1, 1, tzinfo=UTC)
_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class PlaybackInfo:
    url: str
    manifest_mime_type: str
    license_url: str | None
    sha256: str | None
    size: int | None
    license_expires_at: datetime | None

    @property
    def is_hls(self) -> bool:
        return self.manifest_mime_type.lower() in HLS_MIME_TYPES


def source_url(template: str, product: MediaProduct) -> str:
    return template.replace("{type}", product.product_type.value).replace(
        "{id}", product.product_id
    )


def json_depth(value: object) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar is 0), measured
    without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_playback_info(body: bytes, product: MediaProduct, where: str) -> PlaybackInfo:
    """Check the JSON a source answered; a bad answer names the field that is wrong."""

    def bad(message: str) -> DownloadError:
        return PermanentError(
            f"bad playback info from {where}: {shorten(message, _MESSAGE_CHARS)}",
            product=product.key,
        )

    if len(body) > MAX_PLAYBACK_INFO_BYTES:
        raise bad(f"larger than {MAX_PLAYBACK_INFO_BYTES >> 20} MiB")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad("not UTF-8 JSON") from None
    nested_too_deeply = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        data = json.loads(text)
    except RecursionError:
        # json's scanner counts its depth against the recursion limit and stops cleanly.
        raise bad(nested_too_deeply) from None
    except ValueError:
        # Also integers longer than Python converts (4300 digits).
        raise bad("not JSON") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise bad(nested_too_deeply)
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    url, mime = data.get("url"), data.get("manifestMimeType")
    if not isinstance(url, str) or not isinstance(mime, str):
        raise bad("'url' and 'manifestMimeType' are required strings")
    if not 0 < len(mime) <= MAX_MIME_TYPE_CHARS:
        raise bad(f"'manifestMimeType' must be 1 to {MAX_MIME_TYPE_CHARS} characters")
    if has_controls(mime):
        # It is quoted in messages that reach the terminal and the database.
        raise bad("'manifestMimeType' holds control characters or bytes that are not UTF-8")
    try:
        check_url(_bounded_url(url, "url", bad))
        license_url = data.get("licenseUrl")
        if license_url is not None:
            if not isinstance(license_url, str):
                raise bad("'licenseUrl' must be a string")
            check_url(_bounded_url(license_url, "licenseUrl", bad))
        sha256 = data.get("sha256")
        if sha256 is not None:
            if not isinstance(sha256, str):
                raise bad("'sha256' must be a string")
            sha256 = check_sha256(sha256)
    except UsageError as exc:
        raise bad(exc.message) from None
    size = data.get("size")
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MEDIA_SIZE
    ):
        raise bad(f"'size' must be a whole number from 0 to {MAX_MEDIA_SIZE} (1 PiB)")
    return PlaybackInfo(
        url, mime, license_url, sha256, size, _expiry(data.get("licenseExpiresAt"), bad)
    )


def _bounded_url(url: str, name: str, bad: Callable[[str], DownloadError]) -> str:
    if len(url) > MAX_URL_CHARS:
        raise bad(f"{name!r} is longer than {MAX_URL_CHARS} characters")
    return url


def _expiry(value: object, bad: Callable[[str], DownloadError]) -> datetime | None:
    """``licenseExpiresAt``: an ISO 8601 time with a zone, between 1970 and 3000."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad("'licenseExpiresAt' must be an ISO 8601 string")
    try:
        expires_at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"'licenseExpiresAt' is not ISO 8601: {value!r}") from None
    if expires_at.tzinfo is None:
        raise bad("'licenseExpiresAt' needs a time zone")
    try:
        in_range = EARLIEST_EXPIRY <= expires_at <= LATEST_EXPIRY
    except OverflowError:  # year 1 or 9999 shifted by its zone past what datetime holds
        in_range = False
    if not in_range:
        raise bad(f"'licenseExpiresAt' is out of range (1970 to 3000): {value!r}")
    return expires_at


def _decoded_chunks(response: httpx.Response, limit: int) -> Iterator[bytes]:
    """The body as it arrives, decoded here rather than by httpx so that no chunk of a gzip
    bomb inflates past the cap before it is counted. Unknown encodings are refused."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        yield from response.iter_raw()
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"unsupported Content-Encoding {shorten(encoding)!r}")
    # 32 + 15 reads a gzip or a zlib header (deflate per RFC 9110); some servers send deflate
    # without its zlib header, so a first chunk that fails is tried again as raw deflate.
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
    first = True
    for raw in response.iter_raw():
        data = raw
        if first and encoding == "deflate":
            first = False
            try:
                zlib.decompressobj(32 + zlib.MAX_WBITS).decompress(data, 1)
            except zlib.error:
                inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        while data:
            yield inflater.decompress(data, limit + 1)
            data = inflater.unconsumed_tail
    yield inflater.flush()


def read_capped_body(response: httpx.Response, limit: int = MAX_PLAYBACK_INFO_BYTES) -> bytes:
    """The decoded body, or ValueError once it passes ``limit`` bytes."""
    body = bytearray()
    for chunk in _decoded_chunks(response, limit):
        body += chunk
        if len(body) > limit:
            raise ValueError(f"larger than {limit >> 20} MiB")
    return bytes(body)


def fetch_playback_info(
    client: httpx.Client,
    template: str,
    product: MediaProduct,
    stall_timeout_s: float = 30.0,
    *,
    trusted_origin: str | None = None,
) -> PlaybackInfo:
    """GET the source for ``product``; a 404 means the product does not exist.

    The answer is streamed and its decoded size capped: it is read whole only when small.
    The client's credentials go to ``trusted_origin`` only (the source's own, normally).
    """
    url = source_url(template, product)
    try:
        with client.stream(
            "GET",
            url,
            headers={"Accept": "application/json"},
            extensions=trusted_extensions(trusted_origin),
        ) as response:
            if response.status_code == 404:
                raise ProductNotFound(
                    f"product not found: {status_text(response)} from {host_of(url)}",
                    product=product.key,
                    url=url,
                )
            if response.status_code in (401, 403):
                raise HTTPStatusError(
                    f"the playback-info source refused: {status_text(response)} "
                    f"from {host_of(url)}",
                    status=response.status_code,
                    product=product.key,
                    url=url,
                    hint="it may want credentials: set $OFFLINE_CLI_TOKEN (or token_file in "
                    "the config) or give --header",
                )
            if response.status_code >= 400:
                # Same classification as media: 5xx/429 retried, other 4xx permanent.
                raise_for_status(response, url, product.key)
            if response.status_code != 200:
                raise UnknownDownloadError(
                    f"unexpected HTTP {response.status_code} from {host_of(url)}",
                    product=product.key,
                    url=url,
                )
            try:
                body = read_capped_body(response)
            except ValueError as exc:
                raise PermanentError(
                    f"bad playback info from {host_of(url)}: {exc}", product=product.key
                ) from None
            except zlib.error:
                encoding = response.headers.get("Content-Encoding", "")
                raise PermanentError(
                    f"bad playback info from {host_of(url)}: body is not valid "
                    f"{shorten(encoding)!r} data",
                    product=product.key,
                ) from None
    except httpx.HTTPError as exc:
        raise wrap_http_error(exc, url, product.key, stall_timeout_s) from exc
    return parse_playback_info(body, product, host_of(url))


def fetch_playlist(
    client: httpx.Client,
    url: str,
    product: str,
    *,
    limit: int,
    stall_timeout_s: float = 30.0,
    trusted_origin: str | None = None,
) -> tuple[str, str]:
    """GET an HLS playlist: its text (at most ``limit`` bytes decoded) and the URL it came
    from after any redirect, which its relative URIs are resolved against (as players do).
    Failures are classified like media (404 permanent, 5xx retried)."""
    where = host_of(url)
    try:
        with client.stream(
            "GET",
            url,
            headers={"Accept": "application/vnd.apple.mpegurl, */*"},
            extensions=trusted_extensions(trusted_origin),
        ) as response:
            raise_for_status(response, url, product)
            if response.status_code != 200:
                raise UnknownDownloadError(
                    f"unexpected HTTP {response.status_code} for a playlist from {where}",
                    product=product,
                    url=url,
                )
            final_url = str(response.url)
            try:
                body = read_capped_body(response, limit)
            except (ValueError, zlib.error) as exc:
                raise PermanentError(
                    f"bad HLS playlist from {where}: {shorten(str(exc), _MESSAGE_CHARS)}",
                    product=product,
                    url=url,
                ) from None
    except httpx.HTTPError as exc:
        raise wrap_http_error(exc, url, product, stall_timeout_s) from exc
    try:
        return body.decode("utf-8-sig"), final_url
    except UnicodeDecodeError:
        raise PermanentError(
            f"bad HLS playlist from {where}: not UTF-8 text", product=product, url=url
        ) from None
