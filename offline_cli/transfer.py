"""One resumable HTTP transfer into a partial file: range, validators, hashing, stalls.

This is the transport edge: httpx errors are wrapped into the offline-cli error tree here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http
import os
import queue
import re
import shutil
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx

from offline_cli._version import __version__
from offline_cli.auth import ORIGIN_EXTENSION, RequestCredentials
from offline_cli.errors import (
    ConfigError,
    DiskFull,
    DownloadError,
    HTTPStatusError,
    NetworkError,
    PermanentError,
    ServerError,
    UnknownDownloadError,
)
from offline_cli.models import human_bytes, shorten
from offline_cli.paths import open_private
from offline_cli.redaction import redact_url

if TYPE_CHECKING:
    from offline_cli.network import ProxyRoutes

CHUNK_SIZE = 64 * 1024
HASH_READ_SIZE = 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_STALL_TIMEOUT_S = 30.0
# Like curl -Y: slower than this (bytes/s) for a whole stall window is a stall. 0: off.
DEFAULT_MIN_SPEED = 1024
# Keep some space free beyond the file itself, so the database can still record the result
# (a commit writes a few pages to the WAL). The reserve grows with the file (1/16 of it,
# for the journal and metadata a large download causes) between these two bounds, so a
# small product still fits on a nearly full disk.
DISK_RESERVE_MIN_BYTES = 256 * 1024
DISK_RESERVE_MAX_BYTES = 8 * 1024 * 1024
# How often the header deadline is checked while a request waits for its status line and
# headers (a server can drip them forever, each byte resetting the read timeout).
HEADER_DEADLINE_POLL_S = 0.05
# A URL in a message is cut to this many characters (httpx refuses URLs over 64 KiB).
SHOWN_URL_CHARS = 120
# (no URL in it: messages redact the user info of every URL they hold)
PROXY_AUTH_HINT = "give the proxy's user and password in its URL, as USER:PASSWORD@ before its host"
# No real file is larger; a bigger number in a header is a lie or an attack.
MAX_CONTENT_LENGTH = 2**63 - 1

# ASCII digits only, at most 19 (so int() is cheap and the value fits MAX_CONTENT_LENGTH's size)
_NUMBER = r"([0-9]{1,19})"
_CONTENT_RANGE_RE = re.compile(
    rf"^[ \t]*bytes[ \t]+{_NUMBER}-{_NUMBER}/({_NUMBER[1:-1]}|\*)[ \t]*$", re.IGNORECASE
)
_UNSATISFIED_RANGE_RE = re.compile(rf"^[ \t]*bytes[ \t]+\*/{_NUMBER}[ \t]*$", re.IGNORECASE)
_CONTENT_LENGTH_RE = re.compile(r"^[ \t]*([0-9]+)[ \t]*$")


@dataclass(frozen=True)
class ContentRange:
    """A satisfied ``Content-Range``: bytes ``start`` to ``end`` inclusive of ``total``."""

    start: int
    end: int
    total: int | None  # None for ``*`` (length unknown)


def parse_content_range(value: str | None) -> ContentRange | None:
    """The range a 206 announces, or None when it is absent, malformed or impossible
    (end before start, end past the total, numbers no file can have)."""
    match = _CONTENT_RANGE_RE.match(value or "")
    if match is None:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    limit = MAX_CONTENT_LENGTH if total is None else total
    if start > end or end >= limit:
        return None
    return ContentRange(start, end, total)


def describe_bad_content_range(value: str | None) -> str:
    """What is wrong with a 206's ``Content-Range`` that parse_content_range refused, in
    words that finish "sent a partial response …"."""
    if value is None:
        return "without a Content-Range"
    shown = repr(value[:60])
    match = _CONTENT_RANGE_RE.match(value)
    if match is None:
        return f"with an unreadable Content-Range {shown}"
    start, end = int(match.group(1)), int(match.group(2))
    if start > end:
        return f"whose Content-Range {shown} ends before it starts"
    if match.group(3) == "*":
        return f"whose Content-Range {shown} ends past any possible length"
    return f"whose Content-Range {shown} ends past its total length"


def parse_unsatisfied_range(value: str | None) -> int | None:
    """The length in a 416's ``Content-Range: bytes */LENGTH``, else None."""
    match = _UNSATISFIED_RANGE_RE.match(value or "")
    if match is None or int(match.group(1)) > MAX_CONTENT_LENGTH:
        return None
    return int(match.group(1))


# The HTTP types other modules name (for their annotations only): httpx itself is imported
# by the transport modules alone.
HttpClient = httpx.Client
HttpTransport = httpx.BaseTransport


def disk_reserve(needed: int) -> int:
    """Bytes kept free beyond a download of ``needed`` bytes (see DISK_RESERVE_MIN_BYTES)."""
    return min(DISK_RESERVE_MAX_BYTES, max(DISK_RESERVE_MIN_BYTES, needed // 16))


def make_client(
    *,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
    connections: int = 4,
    credentials: RequestCredentials | None = None,
    proxy: str | None = None,
    ca_bundle: str | None = None,
    insecure: bool = False,
) -> httpx.Client:
    """The one place an httpx.Client is built: explicit timeouts, redirects, identity bodies.

    The read timeout is the stall timeout: no byte for that long is a network error.
    ``connections`` is how many downloads run at once: the pool keeps that many alive per
    client (reused per host), and a download never waits for a free one.
    ``credentials`` go only to the origin a request names in its extensions
    (``trusted_extensions``), on each hop of a redirect (auth.py).
    ``proxy``: the `proxy` setting (network.ProxyRoutes: None for the environment's).
    ``ca_bundle``, ``insecure``: the settings that say which certificates verify
    (network.tls_context). A redirect from https to http is refused on every request.
    """
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(1, connections))
    if transport is None:
        # httpx reads HTTP_PROXY and the like only when it builds the transport itself
        # (given one, it ignores them): ours routes each request as httpx would.
        from offline_cli.network import ProxyRoutes

        transport = _SchemeTransport(limits, ProxyRoutes(proxy), ca_bundle, insecure)
    client = httpx.Client(
        limits=limits,
        timeout=httpx.Timeout(
            connect=connect_timeout_s, read=stall_timeout_s, write=stall_timeout_s, pool=None
        ),
        follow_redirects=True,
        max_redirects=10,
        headers={"Accept-Encoding": "identity", "User-Agent": f"offline-cli/{__version__}"},
        transport=transport,
    )

    def remember_connection(response: httpx.Response) -> None:
        # Every connection that goes back to the pool carried a response first (the
        # playback-info request included): remember it for Transfer.abort().
        stream = response.extensions.get("network_stream")
        if stream is not None:
            url = response.request.url
            origin = (url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[url.scheme])
            _remember_stream(client, stream, origin)

    def apply_credentials(request: httpx.Request) -> None:
        # httpx runs request hooks on every hop of a redirect, each hop's request carrying
        # the first one's extensions: the hop to another origin loses the credentials.
        assert credentials is not None
        credentials.apply(request.headers, str(request.url), request.extensions)

    hooks = [apply_credentials] if credentials else []
    client.event_hooks = {
        "request": hooks,
        "response": [remember_connection, _refuse_downgrade],
    }
    return client


class DowngradeRefused(httpx.RequestError):
    """A redirect from https to http: what TLS protected would go in clear text (and a
    man in the middle could answer it), so it is never followed."""

    def __init__(self, source: str, target: str, *, request: httpx.Request) -> None:
        super().__init__(f"redirect from {source} to {target}", request=request)
        self.source = source
        self.target = target


class TlsSetupError(httpx.TransportError):
    """The TLS context could not be built (a CA bundle that went bad since the command
    checked it): carries our ConfigError, whose message names the bundle."""

    def __init__(self, error: ConfigError, *, request: httpx.Request) -> None:
        super().__init__(error.message, request=request)
        self.error = error


def _refuse_downgrade(response: httpx.Response) -> None:
    # A response hook runs on every hop before httpx follows it, for every request this
    # client makes (media, license, playback info, playlists, refresh probes): one check.
    request = response.request
    if request.url.scheme != "https" or not response.has_redirect_location:
        return
    try:
        target = request.url.join(response.headers["Location"])
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return  # httpx refuses the Location itself when it follows it
    if target.scheme == "http":
        raise DowngradeRefused(str(request.url), str(target), request=request)


def trusted_extensions(trusted_origin: str | None) -> dict[str, Any]:
    """The request extensions that let the credentials go to ``trusted_origin`` (None: to
    no origin at all)."""
    return {ORIGIN_EXTENSION: trusted_origin} if trusted_origin is not None else {}


class _SchemeTransport(httpx.BaseTransport):
    """Each request direct or through the proxy ``routes`` name for it. Plain http:// needs
    no TLS context; a verifying transport (and the ~70 ms of loading the CA bundle into it)
    is built on the first request that needs TLS: to an https:// origin or an https proxy."""

    def __init__(
        self,
        limits: httpx.Limits,
        routes: ProxyRoutes | None = None,
        ca_bundle: str | None = None,
        insecure: bool = False,
    ) -> None:
        self._limits = limits
        self._routes = routes
        self._ca_bundle = ca_bundle
        self._insecure = insecure
        self._tls: ssl.SSLContext | None = None
        self._plain = httpx.HTTPTransport(limits=limits, verify=False)
        # (proxy URL or None, TLS needed) -> its transport, built on first use
        self._others: dict[tuple[str | None, bool], httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._routes.proxy_for(str(request.url)) if self._routes is not None else None
        tls = request.url.scheme != "http" or (proxy or "").lower().startswith("https:")
        if proxy is None and not tls:
            return self._plain.handle_request(request)
        with self._lock:
            transport = self._others.get((proxy, tls))
            if transport is None:
                verify = self._tls_context(request) if tls else False
                transport = httpx.HTTPTransport(limits=self._limits, verify=verify, proxy=proxy)
                self._others[(proxy, tls)] = transport
        return transport.handle_request(request)

    def _tls_context(self, request: httpx.Request) -> ssl.SSLContext:
        """One context for every TLS connection (loading the CAs is the slow part)."""
        if self._tls is None:
            from offline_cli.network import tls_context

            try:
                self._tls = tls_context(self._ca_bundle, self._insecure)
            except ConfigError as exc:
                raise TlsSetupError(exc, request=request) from exc
        return self._tls

    def close(self) -> None:
        self._plain.close()
        with self._lock:
            for transport in self._others.values():
                transport.close()


def host_of(url: str) -> str:
    return urlsplit(url).hostname or url


# A reason phrase no standard names (an unregistered status) is shown cut to this length.
_REASON_CHARS = 40
_NOT_PRINTABLE_RE = re.compile(r"[^\x20-\x7e]+")


def status_text(response: httpx.Response) -> str:
    """``HTTP 404 Not Found``: the standard phrase of the status, whatever the server sent
    (a hostile server may send anything, and some send their own: "File not found"); for a
    status with no standard phrase, the server's, printable ASCII only and short."""
    status = response.status_code
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        sent = _NOT_PRINTABLE_RE.sub(" ", response.reason_phrase or "")
        phrase = " ".join(sent.split())[:_REASON_CHARS].rstrip()
    return f"HTTP {status} {phrase}" if phrase else f"HTTP {status}"


# Origin (host, port) of each open connection of each client, so a deadline can cut the
# request in flight even on a kept-alive connection opened by an earlier transfer (httpcore
# tells which stream it opens, not which pooled one it reuses).
_Origin = tuple[str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CLIENT_STREAMS: weakref.WeakKeyDictionary[httpx.Client, weakref.WeakKeyDictionary[Any, _Origin]]
_CLIENT_STREAMS = weakref.WeakKeyDictionary()
# abort() reads the registry from the cancel watch or the header deadline thread
_CLIENT_STREAMS_LOCK = threading.Lock()


# The transfer each connection is busy with (it opened it, or holds its response): with
# several downloads at once, abort() must never cut a connection another transfer uses.
_STREAM_OWNERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _remember_stream(client: httpx.Client, stream: Any, origin: _Origin) -> None:
    with _CLIENT_STREAMS_LOCK:
        _CLIENT_STREAMS.setdefault(client, weakref.WeakKeyDictionary())[stream] = origin


def _claim_stream(stream: Any, owner: int) -> None:
    if stream is not None:
        with _CLIENT_STREAMS_LOCK:
            _STREAM_OWNERS[stream] = owner


def _release_stream(stream: Any, owner: int) -> None:
    if stream is not None:
        with _CLIENT_STREAMS_LOCK:
            if _STREAM_OWNERS.get(stream) == owner:
                del _STREAM_OWNERS[stream]


def _streams_to(client: httpx.Client, origin: _Origin, owner: int) -> list[Any]:
    """Open connections to ``origin`` that no other transfer is known to be using."""
    with _CLIENT_STREAMS_LOCK:
        streams = _CLIENT_STREAMS.get(client)
        return (
            [
                s
                for s, o in list(streams.items())
                if o == origin and _STREAM_OWNERS.get(s, owner) == owner
            ]
            if streams
            else []
        )


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
    def strong_etag(self) -> str | None:
        return self.etag if self.etag and not self.etag.startswith("W/") else None

    def if_range(self, *, prefer_date: bool = False) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified, else nothing.

        ``prefer_date``: the host answers an ETag If-Range with the whole file (some CDNs
        honour only dates), so send the Last-Modified date when there is one.
        """
        if prefer_date and self.last_modified:
            return self.last_modified
        return self.strong_etag or self.last_modified


@dataclass(frozen=True)
class TransferResult:
    path: Path
    size: int
    sha256: str
    etag: str | None
    last_modified: str | None
    # (st_dev, st_ino) of the file that was hashed: the commit moves that file or nothing.
    file_id: tuple[int, int] | None = None


@dataclass
class TransferStats:
    """What one transfer did, for metrics and for tests that bound refetched bytes."""

    bytes_fetched: int = 0
    restarts: int = 0
    requests: int = 0
    statuses: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Validators:
    """What names the stored version of a file: the ETag and Last-Modified it came with,
    and its size."""

    etag: str | None
    last_modified: str | None
    size: int | None = None

    def conditional_headers(self) -> dict[str, str]:
        """``If-None-Match`` and ``If-Modified-Since`` (a server prefers the first)."""
        headers: dict[str, str] = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def same_version(self, etag: str | None, last_modified: str | None, size: int | None) -> bool:
        """Whether a whole-file answer that ignored the conditions names this version: the
        same strong ETag; or, neither side having an ETag, the same Last-Modified date and
        size (wget -N's test). A weak ETag proves nothing about the bytes."""
        if etag or self.etag:
            return etag == self.etag and etag is not None and not etag.startswith("W/")
        return (
            last_modified is not None
            and last_modified == self.last_modified
            and size is not None
            and size == self.size
        )


def probe_changed(
    client: httpx.Client,
    url: str,
    stored: Validators,
    *,
    product: str | None,
    stall_timeout_s: float,
    trusted_origin: str | None = None,
) -> bool:
    """Whether ``url`` now serves another version than ``stored`` (curl -z, wget -N).

    One conditional GET: a 304 is "not changed". A 200 whose validators are the stored
    ones (a server ignoring the conditions) is "not changed" too, and its body is never
    read: the connection is closed with it. Errors are raised as the download's would be
    (5xx retried, other 4xx permanent).
    """
    try:
        with client.stream(
            "GET",
            url,
            headers=stored.conditional_headers(),
            extensions=trusted_extensions(trusted_origin),
        ) as response:
            status = response.status_code
            if status == 304:
                response.read()  # no body: reading its end keeps the connection for reuse
                return False
            raise_for_status(response, url, product)
            if status != 200:
                raise UnknownDownloadError(
                    f"unexpected {status_text(response)} from {host_of(url)}",
                    product=product,
                    url=url,
                )
            length = _CONTENT_LENGTH_RE.match(response.headers.get("Content-Length", ""))
            size = int(length.group(1)) if length is not None else None
            headers = response.headers
            return not stored.same_version(headers.get("ETag"), headers.get("Last-Modified"), size)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise wrap_http_error(exc, url, product, stall_timeout_s) from exc


# A body at least this large is written and hashed on a worker thread (see _Sink).
THREADED_SINK_MIN_BYTES = 8 * 1024 * 1024
# Writeback of the written bytes is started every so many bytes, not left to the final fsync.
WRITEBACK_EVERY_BYTES = 8 * 1024 * 1024
# Chunks received ahead of the disk at most (memory stays bounded: 8 reads of at most
# HTTP_READ_BYTES each).
SINK_QUEUE_CHUNKS = 8
# What httpcore asks the socket for at a time (its default is 64 KiB): fewer, larger reads
# cut the per-chunk Python work of a large body by a quarter (bench/README.md, "one large
# file"). httpcore reads this class attribute on every read; it is the one knob it offers.
HTTP_READ_BYTES = 256 * 1024
httpcore.HTTP11Connection.READ_NUM_BYTES = HTTP_READ_BYTES
# A large body tells on_progress every this many bytes or PROGRESS_EVERY_S, not per chunk
# (a 1 GiB body is 16,384 chunks); a small one, every chunk.
PROGRESS_EVERY_BYTES = 1024 * 1024
PROGRESS_EVERY_S = 0.05


class _Stage:
    """A worker thread doing ``work`` on each chunk handed to it, in order, at most
    SINK_QUEUE_CHUNKS behind; an error it meets is raised by the next put() or by close()."""

    def __init__(self, work: Callable[[bytes], object], name: str) -> None:
        self._work = work
        self.error: BaseException | None = None
        # SimpleQueue (in C) and a semaphore for the bound: a fraction of the lock traffic
        # of queue.Queue, which showed as most of the hand-over cost.
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._room = threading.BoundedSemaphore(SINK_QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._room.acquire()
        self._queue.put(chunk)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._work(chunk)
                except BaseException as exc:  # handed to the receiving thread
                    self.error = exc
            self._room.release()

    def close(self) -> None:
        self._queue.put(None)  # past the bound: the end mark never waits for room
        self._thread.join()


class _Sink:
    """Where a body's bytes go: written and hashed, in order.

    For a large body, writing and hashing each run on a thread of their own, so that
    receiving the next chunk, writing this one and hashing it overlap (the three release
    the GIL in their system calls and in OpenSSL); and the kernel's writeback of what was
    written is started every WRITEBACK_EVERY_BYTES (posix_fadvise DONTNEED starts it without
    waiting), so the final fsync finds little left to write instead of the whole file.
    """

    def __init__(self, out: Any, hasher: hashlib._Hash, start: int, *, threaded: bool) -> None:
        self._out = out
        self._hasher = hasher
        self._fd: int = out.fileno()
        self._written = start
        self._writeback_from = start
        self._stages: list[_Stage] = []
        if threaded:
            self._stages = [
                _Stage(self._write, "offline-cli-write"),
                _Stage(hasher.update, "offline-cli-hash"),
            ]

    def write(self, chunk: bytes) -> None:
        if not self._stages:
            self._write(chunk)
            self._hasher.update(chunk)
            return
        for stage in self._stages:
            stage.put(chunk)

    def _write(self, chunk: bytes) -> None:
        self._out.write(chunk)
        self._written += len(chunk)
        if self._written - self._writeback_from >= WRITEBACK_EVERY_BYTES:
            self._out.flush()
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(
                    self._fd,
                    self._writeback_from,
                    self._written - self._writeback_from,
                    os.POSIX_FADV_DONTNEED,
                )
            self._writeback_from = self._written

    def close(self, *, raise_error: bool = True) -> None:
        """Wait until every chunk handed over is written and hashed (also on the way out of
        a failed or cancelled read: those bytes arrived whole and in order, and resume
        from them); then raise what a stage met (a full disk), when asked to."""
        stages, self._stages = self._stages, []
        for stage in stages:
            stage.close()
        errors = [stage.error for stage in stages if stage.error is not None]
        if raise_error and errors:
            raise errors[0]


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
        throttle: Callable[[int], None] | None = None,
        read_size: int | None = None,
        claim_space: Callable[[int], None] | None = None,
        watch: Callable[[float, Callable[[], None]], Callable[[], None]] | None = None,
        disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        min_speed: float = DEFAULT_MIN_SPEED,
        monotonic: Callable[[], float] = time.monotonic,
        date_if_range_hosts: set[str] | None = None,
        window: tuple[int, int] | None = None,
        trusted_origin: str | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self.partial_path = partial_path
        self.product = product
        self.checkpoint = checkpoint or Checkpoint(url=url)
        self.on_checkpoint = on_checkpoint
        self.on_progress = on_progress
        self.check_stop = check_stop
        # Called with each chunk's size before the next read (the shared --limit-rate).
        self.throttle = throttle
        # Bytes a read hands over at most (None: what httpcore reads, 64 KiB). Under a low
        # rate limit smaller reads keep what lands on disk close to the budget.
        self.read_size = read_size
        # Told how many bytes this transfer is about to write once it has checked there is
        # room (other downloads of the process then count them as taken).
        self.claim_space = claim_space
        # Runs a check every so often until told to stop (the engine's one watchdog thread);
        # without one, each request's header deadline gets a thread of its own.
        self.watch = watch
        self.disk_free = disk_free
        self.stall_timeout_s = stall_timeout_s
        self.min_speed = min_speed
        self.monotonic = monotonic
        # Hosts that answer an ETag If-Range with the whole file: shared by the transfers
        # of one engine, so later requests to such a host send the Last-Modified date.
        self.date_if_range_hosts = date_if_range_hosts if date_if_range_hosts is not None else set()
        # (offset, length) of the resource that is this file (an HLS EXT-X-BYTERANGE): every
        # request asks for that range, and only a 206 of it is written.
        self.window = window
        if window is not None and self.checkpoint.total is None:
            self.checkpoint.total = window[1]
        # The origin (auth.origin_of) the client's credentials may go to, None for none.
        self.trusted_origin = trusted_origin
        self.stats = TransferStats()
        self._file_id: tuple[int, int] | None = None
        self.host_answered = False
        # When the last try ended because the body came slower than min_speed: the bytes
        # of that last, too slow window. They are not progress that should keep a crawling
        # server retried forever (the bytes before it, when it was fast, are).
        self.slow_bytes = 0
        # The speed floor of the try in progress: one for all its rounds, so a server
        # answering bounded 206s of a byte or two at a time is measured over the whole
        # window like any slow body (each round counted afresh would never trip it).
        self._speed: _SpeedFloor | None = None
        self._response: httpx.Response | None = None
        # The connection of the request in flight, known before any header arrives.
        self._stream: Any = None
        self._new_connection = False
        self._claimed: list[Any] = []
        # The origin the request in flight goes to (after a redirect: the new host).
        self._origin: _Origin | None = None
        # The header deadline: since when (monotonic) the status line and headers are
        # awaited, None when not waiting; set when the deadline cut the request.
        self._headers_awaited_since: float | None = None
        self._headers_overdue = False
        # The last host whose response headers arrived: the sender of a redirect.
        self._answered_host: str | None = None
        self._awaited_host: str | None = None

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
        self.checkpoint = Checkpoint(url=self.url, total=self.window[1] if self.window else None)
        self.on_checkpoint(self.checkpoint)

    def _hash_existing(self, length: int) -> hashlib._Hash:
        hasher = hashlib.sha256()
        with os.fdopen(open_private(self.partial_path, os.O_RDONLY, create=False), "rb") as f:
            self._remember_file(f.fileno())
            remaining = length
            while remaining > 0:
                block = f.read(min(HASH_READ_SIZE, remaining))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)
        return hasher

    def _remember_file(self, fd: int) -> None:
        """The identity of the file whose bytes are hashed (see TransferResult.file_id)."""
        info = os.fstat(fd)
        self._file_id = (info.st_dev, info.st_ino)

    def _result(self, hasher: hashlib._Hash, size: int) -> TransferResult:
        return TransferResult(
            path=self.partial_path,
            size=size,
            sha256=hasher.hexdigest(),
            etag=self.checkpoint.etag,
            last_modified=self.checkpoint.last_modified,
            file_id=self._file_id,
        )

    def _check_space(self, needed: int) -> None:
        free = self.disk_free(self.partial_path.parent)
        reserve = disk_reserve(needed)
        if needed + reserve > free:
            raise self._error(
                DiskFull,
                f"not enough disk space: need {human_bytes(needed)} plus "
                f"{human_bytes(reserve)} kept free so the database can record the download, "
                f"{human_bytes(free)} free",
                hint="free some space or point $OFFLINE_CLI_HOME at a larger disk",
            )
        if self.claim_space is not None:
            self.claim_space(needed)

    # -- one try ------------------------------------------------------------------------

    def attempt(self) -> TransferResult:
        self.slow_bytes = 0
        self._speed = None
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial_path.is_symlink():
            # Not a file we wrote: never append to (or truncate) whatever it points at.
            self.reset()
        offset = self.bytes_on_disk
        if offset and (self.checkpoint.if_range() is None or self.checkpoint.total is None):
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
            while True:
                result = self._request(offset)
                if result is not None:
                    return result
                # A bounded 206 arrived whole: that is progress, so ask for the rest at
                # once instead of failing into the backoff. Each round moves forward.
                self.check_stop()
                offset = self.bytes_on_disk
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # InvalidURL (a URL over httpx's length limit, a bad port) is not an HTTPError
            raise wrap_http_error(
                exc,
                self.url,
                self.product,
                self.stall_timeout_s,
                redirected_from=self._answered_host,
                reused_connection=not self._new_connection,
            ) from exc

    def _request(self, offset: int) -> TransferResult | None:
        headers: dict[str, str] = {}
        if self.window is not None:
            start, length = self.window
            headers["Range"] = f"bytes={start + offset}-{start + length - 1}"
        elif offset:
            headers["Range"] = f"bytes={offset}-"
        if offset:
            if_range = self.checkpoint.if_range(
                prefer_date=host_of(self.url) in self.date_if_range_hosts
            )
            # Only a bounded 206 without validators continues without one (its Content-Range
            # total is then checked); a new try without validators starts from zero.
            if if_range is not None:
                headers["If-Range"] = if_range
        self.stats.requests += 1
        self._answered_host = None
        # Whether this request opened a connection of its own (else it reuses a pooled one),
        # and every connection it claimed (a redirect's hops each have one).
        self._new_connection = False
        self._claimed = []
        extensions = {"trace": self._trace, **trusted_extensions(self.trusted_origin)}
        with contextlib.ExitStack() as stack:
            with self._header_deadline():
                try:
                    response = stack.enter_context(
                        self.client.stream("GET", self.url, headers=headers, extensions=extensions)
                    )
                except UnicodeError as exc:
                    # idna's error for a host name no IDNA rule accepts (``xn--``): httpx
                    # lets it through unwrapped, from our URL or from a redirect's Location.
                    if self._answered_host is not None:
                        raise httpx.RemoteProtocolError(
                            f"Invalid URL in location header: {exc}."
                        ) from exc
                    raise httpx.InvalidURL(f"invalid host name: {exc}") from exc
            self._response = response
            stream = response.extensions.get("network_stream")
            _claim_stream(stream, id(self))
            self._claimed.append(stream)
            try:
                return self._handle(response, offset)
            finally:
                self._response = None
                for claimed in self._claimed:
                    _release_stream(claimed, id(self))
                self._claimed = []

    @contextlib.contextmanager
    def _header_deadline(self) -> Iterator[None]:
        """Bound the wait for each response's status line and headers to the stall timeout.

        The read timeout restarts with every byte, so a server dripping a header line (or
        one byte of the status line) at a time would hold the request forever; the body
        has the speed floor, the headers get this total deadline. A watch thread cuts the
        request through abort() when it passes; the trace hook arms and disarms it.
        """
        self._headers_awaited_since = None
        self._headers_overdue = False
        finished = threading.Event()

        def check() -> None:
            since = self._headers_awaited_since
            if finished.is_set() or self._headers_overdue or since is None:
                return
            if self.monotonic() - since >= self.stall_timeout_s:
                self._headers_overdue = True
                self.abort()

        if self.watch is not None:
            stop_watching = self.watch(HEADER_DEADLINE_POLL_S, check)
        else:
            stop_watching = self._own_watch(check, finished)
        try:
            yield
        except httpx.HTTPError as exc:
            if not self._headers_overdue:
                raise
            host = self._origin[0] if self._origin else host_of(self.url)
            raise self._error(
                NetworkError,
                f"no response headers from {host} within {self.stall_timeout_s:g}s",
            ) from exc
        finally:
            finished.set()
            stop_watching()
            self._headers_awaited_since = None

    @staticmethod
    def _own_watch(check: Callable[[], None], finished: threading.Event) -> Callable[[], None]:
        def watch() -> None:
            while not finished.wait(HEADER_DEADLINE_POLL_S):
                check()

        watcher = threading.Thread(target=watch, name="header-deadline", daemon=True)
        watcher.start()
        return watcher.join

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: remember a new connection's stream as soon as it opens,
        and time the wait for each response's headers (see _header_deadline)."""
        if event == "connection.connect_tcp.started":
            self._new_connection = True
            self._origin = (str(info.get("host")), int(info.get("port") or 0))
        elif event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._stream = info.get("return_value")
            if self._stream is not None and self._origin is not None:
                _remember_stream(self.client, self._stream, self._origin)
                _claim_stream(self._stream, id(self))
                self._claimed.append(self._stream)
        elif event == "http11.send_request_headers.started":
            origin = info["request"].url.origin
            self._origin = (origin.host.decode("ascii"), origin.port)
        elif event == "http11.receive_response_headers.started":
            self._awaited_host = info["request"].url.host.decode("ascii", "replace")
            self._headers_awaited_since = self.monotonic()
        elif event == "http11.receive_response_headers.complete":
            self._headers_awaited_since = None
            self._answered_host = self._awaited_host
        elif event == "http11.receive_response_headers.failed":
            self._headers_awaited_since = None

    def abort(self) -> None:
        """Make a read blocked in another thread fail now (used to cancel a download),
        whether it waits for the headers or for the body.

        Shutting the socket down wakes a blocked ``recv``; closing it would not.
        """
        response = self._response
        streams = [self._stream]
        if response is not None:
            streams.append(response.extensions.get("network_stream"))
        elif self._origin is not None:
            # Waiting for headers, maybe on a kept-alive connection another transfer opened
            # (httpcore does not say which pooled one it reuses): cut the connections to
            # this origin no other transfer is known to use. An idle one shut down is simply
            # dropped by the pool; only another request waiting for its headers on a reused
            # connection to the same origin at this instant could be cut too, and it is
            # then retried from where it was.
            streams += _streams_to(self.client, self._origin, id(self))
        for stream in streams:
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _handle(self, response: httpx.Response, offset: int) -> TransferResult | None:
        """Act on a response's status: resume, start over, or write the body."""
        self.host_answered = True
        self.stats.statuses.append(response.status_code)
        status = response.status_code
        if self.window is not None:
            return self._handle_window(response, offset)
        if status == 416 and offset:
            return self._handle_unsatisfiable(response, offset)
        raise_for_status(response, self.url, self.product)
        if status == 206:
            return self._handle_partial(response, offset)
        if status != 200:
            raise self._error(
                UnknownDownloadError,
                f"unexpected {status_text(response)} from {host_of(self.url)}",
            )
        total = self._content_length(response)
        if offset and self._same_version(response, total):
            # The server ignored the range (or honours If-Range only with a date) but sends
            # the very version we hold: keep our bytes and skip the part we have.
            if self.checkpoint.last_modified:
                self.date_if_range_hosts.add(host_of(self.url))
            return self._write_body(response, offset, end=total, total=total, skip=offset)
        # The length recorded for the version this answer names: a body under the same
        # validator must end exactly there, whether it says its length or not.
        recorded = self.checkpoint.total if self._same_validator(response) else None
        if recorded is not None and total is not None and total != recorded:
            response.close()
            raise self._length_contradiction(response, f"a length of {total} bytes", recorded)
        if offset:
            # A 200 where 206 was asked: the file changed, or the server cannot tell us its
            # length (then its bytes are not appended to ours), so restart with the body.
            self.stats.restarts += 1
        if total is None and recorded is not None:
            # No length vouches for these bytes: whatever stops the body short of the
            # recorded length (it ends, a cut, a stall) drops them, never resumed from.
            try:
                return self._write_body(response, 0, end=None, total=recorded, replace=True)
            except BaseException:
                self.partial_path.unlink(missing_ok=True)
                raise
        return self._write_body(response, 0, end=total, total=total, replace=True)

    def _start_over(self, response: httpx.Response) -> TransferResult | None:
        """Drop this answer and the bytes on disk, and ask for the whole file again."""
        self.stats.restarts += 1
        response.close()
        self.reset()
        return self._request(0)

    def _handle_window(self, response: httpx.Response, offset: int) -> TransferResult | None:
        """The answer to a byte-range part: only a 206 of the asked range is written."""
        assert self.window is not None
        start, length = self.window
        status = response.status_code
        if status == 416:
            response.close()
            raise self._error(
                PermanentError,
                f"{host_of(self.url)} holds no bytes {start}-{start + length - 1} "
                "(the playlist's byte range is past the end of the file)",
            )
        raise_for_status(response, self.url, self.product)
        if status == 200 and offset:
            # If-Range did not match: the file changed since the part's first bytes.
            return self._start_over(response)
        if status != 206:
            response.close()
            raise self._error(
                PermanentError,
                f"{host_of(self.url)} answered HTTP {status} to a byte-range request: the "
                "playlist's byte-range segments cannot be fetched from it",
            )
        content_range = parse_content_range(response.headers.get("Content-Range"))
        if content_range is None:
            self._refuse_range(
                response, describe_bad_content_range(response.headers.get("Content-Range"))
            )
        assert content_range is not None
        if content_range.total is not None and start + length > content_range.total:
            response.close()
            raise self._error(
                PermanentError,
                f"the playlist's byte range {start}-{start + length - 1} is past the end of "
                f"the file at {host_of(self.url)} ({content_range.total} bytes)",
            )
        if content_range.start != start + offset or content_range.end > start + length - 1:
            self._refuse_range(
                response,
                f"that is not the range asked for (asked for bytes {start + offset}-"
                f"{start + length - 1}, got bytes {content_range.start}-{content_range.end})",
            )
        body_length = self._content_length(response)
        if body_length is not None and body_length != content_range.end - content_range.start + 1:
            self._refuse_range(response, "whose Content-Length disagrees with its Content-Range")
        if offset and not self._same_validator(response) and self.checkpoint.if_range():
            return self._start_over(response)
        return self._write_body(
            response,
            offset,
            end=content_range.end - start + 1,
            total=length,
            replace=not offset,
        )

    def _same_version(self, response: httpx.Response, total: int | None) -> bool:
        """True when a whole-file answer carries the validators of the bytes we hold and
        their length (a missing length does not agree with a known one)."""
        if self.checkpoint.total is not None and total != self.checkpoint.total:
            return False
        return self._same_validator(response)

    def _same_validator(self, response: httpx.Response) -> bool:
        """True when a response names the version of the checkpoint: the same strong ETag,
        else the same Last-Modified date."""
        etag: str | None = response.headers.get("ETag")
        if etag and not etag.startswith("W/") and self.checkpoint.strong_etag:
            return etag == self.checkpoint.strong_etag
        modified: str | None = response.headers.get("Last-Modified")
        return modified is not None and modified == self.checkpoint.last_modified

    def _length_contradiction(
        self, response: httpx.Response, got: str, recorded: int
    ) -> DownloadError:
        """A server fault (retried; one that keeps at it fails): an answer naming the version
        we recorded whose body is not that version's length. Nothing of it is stored, and
        the checkpoint keeps the recorded length for the next try."""
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        return self._error(
            ServerError,
            f"{host_of(self.url)} sent the same version ({shorten(str(validator), 60)}) "
            f"with {got}, not the {recorded} bytes recorded for it: refused, nothing stored",
            status=response.status_code,
            hint="the server contradicts itself (a truncated file?); try again later or "
            "another mirror",
        )

    def _handle_partial(self, response: httpx.Response, offset: int) -> TransferResult | None:
        """A 206: write it only when it starts exactly where we asked (0 for a plain GET)."""
        raw = response.headers.get("Content-Range")
        content_range = parse_content_range(raw)
        if content_range is None:
            self._refuse_range(response, describe_bad_content_range(raw))
        assert content_range is not None
        start, end = content_range.start, content_range.end
        if start != offset:
            self._refuse_range(
                response,
                f"that does not start where asked (asked for bytes from {offset}, "
                f"got bytes {start}-{end})",
            )
        length = self._content_length(response)
        if length is not None and length != end - start + 1:
            # One of the two is wrong, and we cannot tell which bytes are where.
            self._refuse_range(
                response,
                f"whose Content-Length ({length}) disagrees with its Content-Range "
                f"(bytes {start}-{end}, {end - start + 1} bytes)",
            )
        if offset and self._changed_since_checkpoint(response, content_range):
            # The file changed under us (or the server cannot tell versions apart): start
            # over cleanly rather than append bytes of another version.
            return self._start_over(response)
        return self._write_body(
            response,
            offset,
            end=content_range.end + 1,
            total=content_range.total,
            replace=not offset,
        )

    def _refuse_range(self, response: httpx.Response, problem: str) -> None:
        """A 206 we cannot use (a range we did not request, no usable range, a length that
        contradicts its range): its bytes are never written, and the retry starts from a
        clean state."""
        response.close()
        self.reset()
        raise self._error(
            ServerError,
            f"{host_of(self.url)} sent a partial response {problem}: refused, nothing written",
            status=206,
            hint="the server's range support is broken; try again later or another mirror",
        )

    def _changed_since_checkpoint(
        self, response: httpx.Response, content_range: ContentRange
    ) -> bool:
        if (
            content_range.total is not None
            and self.checkpoint.total is not None
            and content_range.total != self.checkpoint.total
        ):
            return True
        etag = response.headers.get("ETag")
        if etag and self.checkpoint.etag and etag != self.checkpoint.etag:
            return True
        modified = response.headers.get("Last-Modified")
        return bool(
            modified
            and not self.checkpoint.etag
            and self.checkpoint.last_modified
            and modified != self.checkpoint.last_modified
        )

    def _handle_unsatisfiable(self, response: httpx.Response, offset: int) -> TransferResult | None:
        """416: complete when the server's length is exactly what we hold, else start over."""
        length = parse_unsatisfied_range(response.headers.get("Content-Range"))
        if length == offset and self.checkpoint.total in (None, offset):
            self.checkpoint.total = offset
            self.on_checkpoint(self.checkpoint)
            return self._result(self._hash_existing(offset), offset)
        return self._start_over(response)

    def _content_length(self, response: httpx.Response) -> int | None:
        """The body's length, None when not given; a length no file can have is refused."""
        value = response.headers.get("Content-Length")
        if value is None:
            return None
        match = _CONTENT_LENGTH_RE.match(value)
        if match is None or len(match.group(1)) > 19 or int(match.group(1)) > MAX_CONTENT_LENGTH:
            response.close()
            raise self._error(
                PermanentError,
                f"bad HTTP response from {host_of(self.url)}: "
                f"impossible Content-Length {value[:40]!r}",
            )
        return int(match.group(1))

    def _write_body(
        self,
        response: httpx.Response,
        offset: int,
        *,
        end: int | None,
        total: int | None,
        replace: bool = False,
        skip: int = 0,
    ) -> TransferResult | None:
        """Write the body at ``offset`` up to ``end`` (exclusive; None: until it ends).

        ``total`` is the whole file's length; ``end < total`` is a bounded range, after
        which None is returned so the caller asks for the rest. With ``end`` None, ``total``
        is the length recorded for the same version (None: unknown), where the body must
        end. ``replace`` drops the bytes on disk first; ``skip`` drops that many bytes from
        the start of the body (a whole-file answer to a resume, whose first bytes we hold
        already).
        """
        if total is not None:
            self._check_space(total - offset)
        elif end is not None:
            self._check_space(end - offset)
        if replace:
            # Drop the old bytes before the new validators are recorded: a crash in between
            # must never leave bytes of one version under the validators of another.
            self.partial_path.unlink(missing_ok=True)
        # Record the validators before the first byte lands, so bytes on disk always have
        # a checkpoint that says which version of the file they belong to.
        keep = not replace
        self.checkpoint = Checkpoint(
            url=self.url,
            etag=response.headers.get("ETag", self.checkpoint.etag if keep else None),
            last_modified=response.headers.get(
                "Last-Modified", self.checkpoint.last_modified if keep else None
            ),
            total=total,
        )
        self.on_checkpoint(self.checkpoint)
        hasher = self._hash_existing(offset) if offset else hashlib.sha256()
        done = offset
        if self._speed is None:
            # From the first body of the try: the wait for its headers has its own
            # deadline, and the waits between bounded rounds count against the window.
            self._speed = _SpeedFloor(self.min_speed, self.stall_timeout_s, self.monotonic)
        expected = (end if end is not None else total or 0) - offset
        threaded = (end is None and total is None) or expected >= THREADED_SINK_MIN_BYTES
        # How often on_progress hears of it: bytes or seconds (a small body: every chunk).
        pace = (PROGRESS_EVERY_BYTES, PROGRESS_EVERY_S) if threaded else (0, 0.0)
        try:
            # 0600 and never through a link planted after the check in attempt().
            flags = os.O_WRONLY | (os.O_APPEND if offset else os.O_TRUNC)
            with os.fdopen(open_private(self.partial_path, flags), "ab" if offset else "wb") as out:
                out.truncate(offset)
                sink = _Sink(out, hasher, offset, threaded=threaded)
                try:
                    done = self._receive(response, sink, done, skip, end, total, pace)
                except BaseException:
                    sink.close(raise_error=False)
                    raise
                sink.close()
                out.flush()
                os.fsync(out.fileno())
                self._remember_file(out.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                free = self.disk_free(self.partial_path.parent)
                raise self._error(
                    DiskFull,
                    f"not enough disk space: disk full after {human_bytes(self.bytes_on_disk)}, "
                    f"{human_bytes(free)} free",
                ) from exc
            raise self._error(
                PermanentError, f"cannot write {self.partial_path}: {exc.strerror or exc}"
            ) from exc
        return self._finish_body(response, done, end, total, hasher)

    def _receive(
        self,
        response: httpx.Response,
        sink: _Sink,
        done: int,
        skip: int,
        end: int | None,
        total: int | None,
        pace: tuple[int, float],
    ) -> int:
        """Read the body into ``sink``; returns the bytes written (with what was there)."""
        told_bytes, told_at = done, self.monotonic()
        speed = self._speed
        assert speed is not None
        for raw in response.iter_raw(self.read_size):
            self.stats.bytes_fetched += len(raw)
            chunk = raw
            if skip:
                chunk, skip = raw[skip:], max(0, skip - len(raw))
            if end is None and total is not None and done + len(chunk) > total:
                raise self._length_contradiction(
                    response, f"a body longer than {total} bytes", total
                )
            if end is not None and done + len(chunk) > end:
                # Never write past what the server announced.
                chunk = chunk[: end - done]
                sink.write(chunk)
                done += len(chunk)
                raise self._error(NetworkError, f"server sent more than its length ({end} bytes)")
            sink.write(chunk)
            done += len(chunk)
            now = self.monotonic()
            if done - told_bytes >= pace[0] or now - told_at >= pace[1] or done in (end, total):
                told_bytes, told_at = done, now
                self.on_progress(done, total)
            self.check_stop()
            if self.throttle is not None:
                self.throttle(len(raw))
            if speed.too_slow(len(raw)):
                self.slow_bytes = speed.bytes
                raise self._error(
                    NetworkError,
                    f"stalled: less than {human_bytes(self.min_speed)}/s from "
                    f"{host_of(self.url)} for {self.stall_timeout_s:g}s",
                )
            if end is not None and done == end and end != total:
                # A bounded range is all in: do not wait on a server that sends on.
                # (A body that runs to the end of the file ends here by its length:
                # reading on lets httpcore see its end and keep the connection.)
                break
        if skip:
            raise self._error(
                NetworkError,
                f"body cut short: got {done} of {end} bytes from {host_of(self.url)}",
            )
        return done

    def _finish_body(
        self,
        response: httpx.Response,
        done: int,
        end: int | None,
        total: int | None,
        hasher: hashlib._Hash,
    ) -> TransferResult | None:
        """After a body ended: was it whole? A result when the file is complete, None when
        a bounded range is in and the caller asks for the rest."""
        if end is not None and done < end:
            raise self._error(
                NetworkError,
                f"body cut short: got {done} of {end} bytes from {host_of(self.url)}",
            )
        if end is None and total is None:
            # No length given nor known: the body ran to its end, and that is the file.
            total = self.checkpoint.total = done
            self.on_checkpoint(self.checkpoint)
        elif end is None and total is not None and done != total:
            # Ended early under a validator whose length we know: a truncated file, never
            # stored (the checkpoint stays, so the next try expects that length again).
            raise self._length_contradiction(response, f"a body of {done} bytes", total)
        if total is None or done < total:
            return None  # a bounded range: the caller asks for the rest
        self.on_progress(done, done)
        return self._result(hasher, done)


class _SpeedFloor:
    """curl's -Y/-y: a body slower than ``min_speed`` bytes/s over a whole ``window`` is
    stalled. Checked as bytes arrive; a server sending nothing trips the read timeout."""

    def __init__(self, min_speed: float, window: float, monotonic: Callable[[], float]) -> None:
        self.min_speed = min_speed
        self.window = window
        self.monotonic = monotonic
        self.started = monotonic()
        self.bytes = 0

    def too_slow(self, received: int) -> bool:
        if self.min_speed <= 0:
            return False
        self.bytes += received
        elapsed = self.monotonic() - self.started
        if elapsed < self.window:
            return False
        if self.bytes < self.min_speed * elapsed:
            return True
        self.started, self.bytes = self.monotonic(), 0  # a fresh window
        return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def raise_for_status(response: httpx.Response, url: str, product: str | None) -> None:
    """Raise ServerError for 5xx/429 (retried) and HTTPStatusError for other 4xx."""
    status = response.status_code
    if status < 400:
        return
    where = f"{status_text(response)} from {host_of(url)}"
    if status == 407:
        # Only a proxy sends it (for an http:// URL it forwards): not the host's answer.
        raise HTTPStatusError(
            f"{status_text(response)} from the proxy for {host_of(url)}",
            status=status,
            product=product,
            url=url,
            hint=PROXY_AUTH_HINT,
        )
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
    exc: httpx.HTTPError | httpx.InvalidURL,
    url: str,
    product: str | None,
    stall_timeout_s: float,
    *,
    redirected_from: str | None = None,
    reused_connection: bool = False,
) -> DownloadError:
    """Translate an httpx error into our tree; the caller raises it ``from exc``.

    The error names the URL that failed, which after a redirect is not the one asked for.
    ``redirected_from``: the host whose answer was the last one received (when known).
    """
    if isinstance(exc, httpx.InvalidURL):
        # Raised while building the request, so the same URL fails the same way every time.
        return PermanentError(
            f"cannot fetch {shorten(redact_url(url), SHOWN_URL_CHARS)}: {_reason(exc)}",
            product=product,
            url=url,
            hint="the stored URL cannot be requested; give a shorter or corrected URL",
        )
    asked = url
    with contextlib.suppress(RuntimeError):  # an error raised before any request was built
        url = str(exc.request.url)
    host = host_of(url)
    if isinstance(exc, DowngradeRefused):
        # The server answers the same way on every try: permanent.
        return PermanentError(
            f"refused redirect from {shorten(redact_url(exc.source), SHOWN_URL_CHARS)} to "
            f"{shorten(redact_url(exc.target), SHOWN_URL_CHARS)} (a downgrade)",
            product=product,
            url=asked,
            hint="a redirect from https to http would send the request in clear text; "
            "ask for the http URL yourself if you trust it",
        )
    if isinstance(exc, TlsSetupError):
        return PermanentError(exc.error.message, product=product, url=asked, hint=exc.error.hint)
    if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith(
        "Invalid URL in location header"
    ):
        # httpx raises this on the response that carried the Location: the same answer
        # comes back on every try.
        reason = str(exc).partition(":")[2].strip().rstrip(".") or "unusable Location"
        return PermanentError(
            f"bad redirect from {redirected_from or host}: {shorten(reason, SHOWN_URL_CHARS)}",
            product=product,
            url=url,
        )
    if isinstance(exc, httpx.UnsupportedProtocol) and url != asked:
        # A redirect to file:, ftp: and the like: httpx joined it with the old host, so its
        # URL names a host the server never said: name the scheme and the redirecting host.
        scheme = exc.request.url.scheme
        source = redirected_from or host_of(asked)
        return PermanentError(
            f"redirect from {source} to an unsupported scheme {scheme!r}",
            product=product,
            url=asked,
            hint="only http and https URLs can be downloaded",
        )
    unverified = _certificate_failure(exc)
    if unverified is not None:
        # The same certificate fails the same way on every try: retrying only wastes time.
        return PermanentError(
            f"TLS certificate of {host} does not verify: {unverified}",
            product=product,
            url=url,
            hint="the server's certificate is not trusted (expired, self-signed or for "
            "another name); give --ca-bundle a CA bundle that trusts it",
        )
    if _is_malformed_response(exc):
        # The server answered, with bytes no HTTP parser accepts (a huge header, an
        # impossible Content-Length): it will answer the same way again.
        reason = _reason(exc)
        if reason == "Receive buffer too long":  # h11's words for httpcore's 100 KiB limit
            reason = "response header larger than 100 KiB"
        if reused_connection:
            # On a kept-alive connection the bytes may be what the previous answer sent
            # beyond its length (a file that grew while served): not this product's fault.
            # httpcore drops that connection; the retry opens a new one.
            return NetworkError(
                f"bad HTTP response from {host} on a reused connection: {reason[:120]}",
                product=product,
                url=url,
            )
        return PermanentError(
            f"bad HTTP response from {host}: {reason[:120]}", product=product, url=url
        )
    if isinstance(exc, httpx.ProxyError):
        # The proxy answered its CONNECT with an error (407: it wants a user and password;
        # 502, 503: it could not reach the host). Its URL is never named: it may hold both.
        reason = _reason(exc)
        if reason.startswith("407"):
            return PermanentError(
                f"the proxy refused to connect to {host}: {reason[:120]}",
                product=product,
                url=url,
                hint=PROXY_AUTH_HINT,
            )
        return NetworkError(
            f"the proxy could not connect to {host}: {reason[:120]}", product=product, url=url
        )
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


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _certificate_failure(exc: httpx.HTTPError) -> str | None:
    """The verification message when ``exc`` comes from a certificate that does not verify."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or "verification failed")
    return None


def _is_malformed_response(exc: httpx.HTTPError) -> bool:
    """True for a protocol error the HTTP parser (h11) raised on bytes it received, as
    opposed to a connection closed early (a cut, retried): those say "closed"."""
    if not isinstance(exc, httpx.RemoteProtocolError):
        return False
    parser_error = any(type(c).__module__.split(".")[0] == "h11" for c in _causes(exc))
    return parser_error and "closed" not in str(exc).lower()
