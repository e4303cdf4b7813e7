"""Resolve a ``TYPE:ID`` product through a playback-info source (a URL template)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import httpx

from offline_cli.errors import (
    DownloadError,
    PermanentError,
    ProductNotFound,
    UnknownDownloadError,
    UsageError,
)
from offline_cli.models import MediaProduct, check_sha256, check_url
from offline_cli.transfer import host_of, raise_for_status, wrap_http_error

HLS_MIME_TYPES = ("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl")


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


def parse_playback_info(body: bytes, product: MediaProduct, where: str) -> PlaybackInfo:
    """Check the JSON a source answered; a bad answer names the field that is wrong."""

    def bad(message: str) -> DownloadError:
        return PermanentError(f"bad playback info from {where}: {message}", product=product.key)

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad("not JSON") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    url, mime = data.get("url"), data.get("manifestMimeType")
    if not isinstance(url, str) or not isinstance(mime, str):
        raise bad("'url' and 'manifestMimeType' are required strings")
    try:
        check_url(url)
        license_url = data.get("licenseUrl")
        if license_url is not None:
            if not isinstance(license_url, str):
                raise bad("'licenseUrl' must be a string")
            check_url(license_url)
        sha256 = data.get("sha256")
        if sha256 is not None:
            if not isinstance(sha256, str):
                raise bad("'sha256' must be a string")
            sha256 = check_sha256(sha256)
    except UsageError as exc:
        raise bad(exc.message) from None
    size = data.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad("'size' must be a whole number")
    expires = data.get("licenseExpiresAt")
    expires_at = None
    if expires is not None:
        try:
            expires_at = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
        except ValueError:
            raise bad(f"'licenseExpiresAt' is not ISO 8601: {expires!r}") from None
        if expires_at.tzinfo is None:
            raise bad("'licenseExpiresAt' needs a time zone")
    return PlaybackInfo(url, mime, license_url, sha256, size, expires_at)


def fetch_playback_info(
    client: httpx.Client, template: str, product: MediaProduct, stall_timeout_s: float = 30.0
) -> PlaybackInfo:
    """GET the source for ``product``; a 404 means the product does not exist."""
    url = source_url(template, product)
    try:
        response = client.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise wrap_http_error(exc, url, product.key, stall_timeout_s) from exc
    if response.status_code == 404:
        raise ProductNotFound(
            f"product not found: HTTP 404 from {host_of(url)}", product=product.key, url=url
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
    return parse_playback_info(response.content, product, host_of(url))
