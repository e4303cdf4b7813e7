"""One resumable HTTP transfer into a partial file: range, validators, hashing, stalls.

This is the transport edge: httpx errors are wrapped into the offline-cli error tree here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from offline_cli import __version__
from offline_cli.errors import (
    DiskFull,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    PermanentError,
    ServerError,
    UnknownDownloadError,
)
from offline_cli.models import human_bytes
from offline_cli.paths import open_private
from offline_cli.redaction import redact_url

CHUNK_SIZE = 64 * 1024
HASH_READ_SIZE = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_STALL_TIMEOUT_S = 30.0
# Keep this much free beyond the file itself, so the database can still be written.
DISK_MARGIN_BYTES = 8 * 1024 * 1024

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


def make_client(
    *,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """The one place an httpx.Client is built: explicit timeouts, redirects, identity bodies.

    The read timeout is the stall timeout: no byte for that long is a network error.
    """
    return httpx.Client(
        timeout=httpx.Timeout(
            connect=connect_timeout_s, read=stall_timeout_s, write=stall_timeout_s, pool=None
        ),
        follow_redirects=True,
        max_redirects=10,
        headers={"Accept-Encoding": "identity", "User-Agent": f"offline-cli/{__version__}"},
        transport=transport,
    )


def host_of(url: str) -> str:
    return urlsplit(url).hostname or url


@dataclass
class Checkpoint:
    """What must survive a crash to resume safely: the validators of the bytes on disk."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "url": redact_url(self.url),
            "etag": self.etag,
            "last_modified": self.last_modified,
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, data: dict[str, str | int | None] | None, url: str) -> Checkpoint:
        if not data or data.get("url") != redact_url(url):
            return cls(url=url)
        etag, modified, total = data.get("etag"), data.get("last_modified"), data.get("total")
        return cls(
            url=url,
            etag=etag if isinstance(etag, str) else None,
            last_modified=modified if isinstance(modified, str) else None,
            total=total if isinstance(total, int) else None,
        )

    @property
    def if_range(self) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified, else nothing."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(frozen=True)
class TransferResult:
    path: Path
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None


@dataclass
class TransferStats:
    """What one transfer did, for metrics and for tests that bound refetched bytes."""

    bytes_fetched: int = 0
    restarts: int = 0
    requests: int = 0
    statuses: list[int] = field(default_factory=list)


class Transfer:
    """Download ``url`` into ``partial_path``, appending to what is there when it is safe.

    ``attempt()`` is one try; call it again after a failure and it resumes by range.
    """

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        partial_path: Path,
        *,
        product: str,
        checkpoint: Checkpoint | None = None,
        on_checkpoint: Callable[[Checkpoint], None] = lambda c: None,
        on_progress: Callable[[int, int | None], None] = lambda done, total: None,
        check_stop: Callable[[], None] = lambda: None,
        disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.url = url
        self.partial_path = partial_path
        self.product = product
        self.checkpoint = checkpoint or Checkpoint(url=url)
        self.on_checkpoint = on_checkpoint
        self.on_progress = on_progress
        self.check_stop = check_stop
        self.disk_free = disk_free
        self.stall_timeout_s = stall_timeout_s
        self.stats = TransferStats()
        self.host_answered = False
        self._response: httpx.Response | None = None
        # The connection of the request in flight, known before any header arrives.
        self._stream: Any = None

    # -- helpers --------------------------------------------------------------------------

    @property
    def bytes_on_disk(self) -> int:
        try:
            return self.partial_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _error(self, cls: type[DownloadError], message: str, **kw: object) -> DownloadError:
        return cls(message, product=self.product, url=self.url, **kw)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Throw away the partial bytes: the next try starts from zero."""
        self.partial_path.unlink(missing_ok=True)
        self.checkpoint = Checkpoint(url=self.url)
        self.on_checkpoint(self.checkpoint)

    def _hash_existing(self, length: int) -> hashlib._Hash:
        hasher = hashlib.sha256()
        with os.fdopen(open_private(self.partial_path, os.O_RDONLY, create=False), "rb") as f:
            remaining = length
            while remaining > 0:
                block = f.read(min(HASH_READ_SIZE, remaining))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)
        return hasher

    def _result(self, hasher: hashlib._Hash, size: int) -> TransferResult:
        return TransferResult(
            path=self.partial_path,
            size=size,
            sha256=hasher.hexdigest(),
            etag=self.checkpoint.etag,
            last_modified=self.checkpoint.last_modified,
        )

    def _check_space(self, needed: int) -> None:
        free = self.disk_free(self.partial_path.parent)
        if needed + DISK_MARGIN_BYTES > free:
            raise self._error(
                DiskFull,
                f"not enough disk space: need {human_bytes(needed)}, {human_bytes(free)} free",
                hint="free some space or point $OFFLINE_CLI_HOME at a larger disk",
            )

    # -- one try ------------------------------------------------------------------------

    def attempt(self) -> TransferResult:
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial_path.is_symlink():
            # Not a file we wrote: never append to (or truncate) whatever it points at.
            self.reset()
        offset = self.bytes_on_disk
        if offset and (self.checkpoint.if_range is None or self.checkpoint.total is None):
            # Without a validator we cannot prove the server still holds the same bytes,
            # and a file mixing two versions is worse than fetching again.
            self.reset()
            offset = 0
        if offset and self.checkpoint.total is not None and offset > self.checkpoint.total:
            self.reset()
            offset = 0
        if offset and offset == self.checkpoint.total:
            self.on_progress(offset, offset)
            return self._result(self._hash_existing(offset), offset)
        try:
            return self._request(offset)
        except httpx.HTTPError as exc:
            raise wrap_http_error(exc, self.url, self.product, self.stall_timeout_s) from exc

    def _request(self, offset: int) -> TransferResult:
        headers: dict[str, str] = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if_range = self.checkpoint.if_range
            assert if_range is not None
            headers["If-Range"] = if_range
        self.stats.requests += 1
        extensions = {"trace": self._trace}
        with self.client.stream(
            "GET", self.url, headers=headers, extensions=extensions
        ) as response:
            self._response = response
            try:
                return self._handle(response, offset)
            finally:
                self._response = None

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember a new connection's stream as soon as it opens."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._stream = info.get("return_value")

    def abort(self) -> None:
        """Make a read blocked in another thread fail now (used to cancel a download),
        whether it waits for the headers or for the body.

        Shutting the socket down wakes a blocked ``recv``; closing it would not.
        """
        response = self._response
        streams = [self._stream]
        if response is not None:
            streams.append(response.extensions.get("network_stream"))
        for stream in streams:
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _handle(self, response: httpx.Response, offset: int) -> TransferResult:
        """Act on a response's status: resume, start over, or write the body."""
        self.host_answered = True
        self.stats.statuses.append(response.status_code)
        status = response.status_code
        if status == 416 and offset:
            return self._handle_unsatisfiable(response, offset)
        raise_for_status(response, self.url, self.product)
        if status == 206 and offset:
            start = self._check_partial_response(response, offset)
            if start is None:
                # The server cannot resume this file truthfully: start over cleanly.
                self.stats.restarts += 1
                response.close()
                self.reset()
                return self._request(0)
            return self._write_body(response, offset, append=True)
        if status != 200 and status != 206:
            raise self._error(
                UnknownDownloadError,
                f"unexpected HTTP {status} {response.reason_phrase} from {host_of(self.url)}",
            )
        if offset:
            # A 200 where 206 was asked: the file changed (If-Range) or the server
            # ignores ranges. The body is the whole new file, so restart with it.
            self.stats.restarts += 1
        return self._write_body(response, 0, append=False)

    def _check_partial_response(self, response: httpx.Response, offset: int) -> int | None:
        """The start of a 206 body when it continues our bytes, else None."""
        match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
        if match is None:
            return None
        start, total = int(match.group(1)), match.group(3)
        if start != offset:
            return None
        if (
            total != "*"
            and self.checkpoint.total is not None
            and int(total) != self.checkpoint.total
        ):
            return None
        etag = response.headers.get("ETag")
        if etag and self.checkpoint.etag and etag != self.checkpoint.etag:
            return None
        modified = response.headers.get("Last-Modified")
        if (
            modified
            and not self.checkpoint.etag
            and self.checkpoint.last_modified
            and modified != self.checkpoint.last_modified
        ):
            return None
        return start

    def _handle_unsatisfiable(self, response: httpx.Response, offset: int) -> TransferResult:
        """416: complete when the server's length is exactly what we hold, else start over."""
        match = _UNSATISFIED_RANGE_RE.match(response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset and self.checkpoint.total in (None, offset):
            self.checkpoint.total = offset
            self.on_checkpoint(self.checkpoint)
            return self._result(self._hash_existing(offset), offset)
        self.stats.restarts += 1
        response.close()
        self.reset()
        return self._request(0)

    def _total_from(self, response: httpx.Response, offset: int) -> int | None:
        if response.status_code == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if match and match.group(3) != "*":
                return int(match.group(3))
        length = response.headers.get("Content-Length")
        if length and length.isdigit():
            return offset + int(length)
        return None

    def _write_body(self, response: httpx.Response, offset: int, *, append: bool) -> TransferResult:
        total = self._total_from(response, offset)
        if total is not None:
            self._check_space(total - offset)
        if not append:
            # Drop the old bytes before the new validators are recorded: a crash in between
            # must never leave bytes of one version under the validators of another.
            self.partial_path.unlink(missing_ok=True)
        # Record the validators before the first byte lands, so bytes on disk always have
        # a checkpoint that says which version of the file they belong to.
        self.checkpoint = Checkpoint(
            url=self.url,
            etag=response.headers.get("ETag", self.checkpoint.etag if append else None),
            last_modified=response.headers.get(
                "Last-Modified", self.checkpoint.last_modified if append else None
            ),
            total=total,
        )
        self.on_checkpoint(self.checkpoint)
        hasher = self._hash_existing(offset) if append else hashlib.sha256()
        done = offset
        try:
            # 0600 and never through a link planted after the check in attempt().
            flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
            with os.fdopen(open_private(self.partial_path, flags), "ab" if append else "wb") as out:
                if append:
                    out.truncate(offset)
                for chunk in response.iter_raw():
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    self.stats.bytes_fetched += len(chunk)
                    if total is not None and done > total:
                        raise self._error(
                            NetworkError, f"server sent more than its length ({total} bytes)"
                        )
                    self.on_progress(done, total)
                    self.check_stop()
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                free = self.disk_free(self.partial_path.parent)
                raise self._error(
                    DiskFull,
                    f"not enough disk space: disk full after {human_bytes(done)}, "
                    f"{human_bytes(free)} free",
                ) from exc
            raise self._error(
                PermanentError, f"cannot write {self.partial_path}: {exc.strerror or exc}"
            ) from exc
        if total is not None and done < total:
            raise self._error(
                NetworkError,
                f"body cut short: got {done} of {total} bytes from {host_of(self.url)}",
            )
        if total is None:
            self.checkpoint.total = done
            self.on_checkpoint(self.checkpoint)
        self.on_progress(done, done)
        return self._result(hasher, done)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def raise_for_status(response: httpx.Response, url: str, product: str | None) -> None:
    """Raise ServerError for 5xx/429 (retried) and HTTPStatusError for other 4xx."""
    status = response.status_code
    if status < 400:
        return
    where = f"HTTP {status} {response.reason_phrase} from {host_of(url)}"
    if status == 429 or status >= 500:
        raise ServerError(
            where,
            status=status,
            retry_after=response.headers.get("Retry-After"),
            product=product,
            url=url,
        )
    raise HTTPStatusError(where, status=status, product=product, url=url)


def wrap_http_error(
    exc: httpx.HTTPError, url: str, product: str | None, stall_timeout_s: float
) -> DownloadError:
    """Translate an httpx error into our tree; the caller raises it ``from exc``.

    The error names the URL that failed, which after a redirect is not the one asked for.
    """
    with contextlib.suppress(RuntimeError):  # an error raised before any request was built
        url = str(exc.request.url)
    host = host_of(url)
    unreachable = {"product": product, "url": url, "host_unreachable": True}
    if isinstance(exc, httpx.ConnectTimeout):
        return NetworkError(f"connection to {host} timed out", **unreachable)  # type: ignore[arg-type]
    if isinstance(exc, httpx.ConnectError):
        return NetworkError(f"cannot connect to {host}: {_reason(exc)}", **unreachable)  # type: ignore[arg-type]
    if isinstance(exc, httpx.ReadTimeout):
        return NetworkError(
            f"stalled: no data from {host} for {stall_timeout_s:g}s", product=product, url=url
        )
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"timed out talking to {host}", product=product, url=url)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return NetworkError(f"connection to {host} cut: {_reason(exc)}", product=product, url=url)
    if isinstance(exc, httpx.NetworkError):
        return NetworkError(f"network error with {host}: {_reason(exc)}", product=product, url=url)
    if isinstance(exc, httpx.TooManyRedirects):
        return PermanentError(f"too many redirects from {host}", product=product, url=url)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return PermanentError(f"cannot fetch {redact_url(url)}", product=product, url=url)
    return UnknownDownloadError(f"HTTP error with {host}: {_reason(exc)}", product=product, url=url)
