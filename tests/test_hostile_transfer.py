"""Hostile servers against one transfer (issue 7, items 1, 7, 8, 9, 10, 18).

Most servers here are ``httpx.MockTransport`` origins handed to the engine (its ``transport=``
seam): they decide byte by byte what a request gets, cut bodies with ``httpx.ReadError`` and
move the fake clock as bytes arrive, so slow servers take no real time. What needs a real
HTTP parser or TLS (huge headers, absurd lengths, certificates) runs on a loopback socket.
"""

from __future__ import annotations

import random
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, ProductType
from offline_cli.config import Settings, load_settings
from offline_cli.engine import OfflineEngine
from offline_cli.errors import ConfigError, DiskFull, NetworkError, PermanentError, ServerError
from offline_cli.models import DownloadState
from tests.conftest import FakeClock, RecordingListener

KEY = "file:x"
URL = "https://cdn.test/f"
BODY = random.Random(7).randbytes(300_000)
LAST_MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"
ETAG = '"v1"'


def product(url: str = URL) -> MediaProduct:
    return MediaProduct(ProductType.FILE, "x", url=url)


def stored(engine: OfflineEngine) -> bytes:
    entry = engine.store.get_offlined(KEY)
    assert entry is not None, "product was not committed"
    return Path(entry.media_path).read_bytes()


def partial_files(home: Path) -> list[Path]:
    folder = home / "partial"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def retries(listener: RecordingListener) -> list[tuple[int, float, str]]:
    return [detail for name, _, detail in listener.events if name == "retrying"]


class Body(httpx.SyncByteStream):
    """A response body sent ``chunk`` bytes at a time; cut (a ReadError) after ``cut_after``
    bytes; ``each_chunk`` runs before every chunk (to move a fake clock) once the first
    ``fast`` bytes (sent at once) are out."""

    def __init__(
        self,
        data: bytes,
        *,
        chunk: int = 16 * 1024,
        cut_after: int | None = None,
        each_chunk: Callable[[], None] = lambda: None,
        fast: int = 0,
    ) -> None:
        self.data, self.chunk, self.cut_after, self.each_chunk = data, chunk, cut_after, each_chunk
        self.fast = fast
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        limit = len(self.data) if self.cut_after is None else min(self.cut_after, len(self.data))
        if self.fast:
            self.sent = min(self.fast, limit)
            yield self.data[: self.sent]
        while self.sent < limit:
            self.each_chunk()
            piece = self.data[self.sent : min(self.sent + self.chunk, limit)]
            self.sent += len(piece)
            yield piece
        if limit < len(self.data):
            raise httpx.ReadError("connection cut")


Plan = Callable[[httpx.Request, "Origin"], httpx.Response | None]


@dataclass
class Origin:
    """An HTTP origin serving ``body`` with ranges and If-Range, for ``httpx.MockTransport``.

    ``plan`` holds one entry per request, consumed in order: a function that answers the
    request itself, or returns None to have it served normally.
    """

    body: bytes = BODY
    etag: str | None = ETAG
    last_modified: str | None = LAST_MODIFIED
    plan: list[Plan] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    # an If-Range naming the ETag gets the whole file (CDNs that honour only dates)
    if_range_dates_only: bool = False
    # answer every request with at most this many bytes (a bounded 206)
    max_range: int | None = None
    chunk: int = 16 * 1024
    each_chunk: Callable[[], None] = lambda: None
    fast: int = 0  # bytes of each body sent at once, before each_chunk is called

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.plan:
            answer = self.plan.pop(0)(request, self)
            if answer is not None:
                return answer
        return self.serve(request)

    def serve(
        self, request: httpx.Request, *, cut_after: int | None = None, data: bytes | None = None
    ) -> httpx.Response:
        body = self.body if data is None else data
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        honoured = if_range is None or if_range == self.last_modified
        honoured = honoured or (if_range == self.etag and not self.if_range_dates_only)
        if match and honoured:
            start, status = int(match.group(1)), 206
        end = len(body)
        if self.max_range is not None:
            end, status = min(end, start + self.max_range), 206
        return self.respond(status, body, start, end, cut_after=cut_after)

    def respond(
        self,
        status: int,
        body: bytes,
        start: int,
        end: int,
        *,
        cut_after: int | None = None,
        content_range: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send ``body[start:end]``; a 206 says so in its Content-Range."""
        out = {"Content-Length": str(end - start)}
        if self.etag:
            out["ETag"] = self.etag
        if self.last_modified:
            out["Last-Modified"] = self.last_modified
        if status == 206:
            out["Content-Range"] = content_range or f"bytes {start}-{end - 1}/{len(body)}"
        out.update(headers or {})
        stream = Body(
            body[start:end],
            chunk=self.chunk,
            cut_after=cut_after,
            each_chunk=self.each_chunk,
            fast=self.fast,
        )
        self.bodies.append(stream)
        return httpx.Response(status, headers=out, stream=stream)

    def ranges(self) -> list[str | None]:
        return [r.headers.get("Range") for r in self.requests]

    def if_ranges(self) -> list[str | None]:
        return [r.headers.get("If-Range") for r in self.requests]


def cut(at: int) -> Plan:
    """Serve the request normally, cutting the body after ``at`` of its bytes."""
    return lambda request, origin: origin.serve(request, cut_after=at)


def serve_normally(request: httpx.Request, origin: Origin) -> None:
    return None


@pytest.fixture
def origin() -> Origin:
    return Origin()


# -- 1: a 206 that does not start where asked is refused -----------------------------------


def unasked_range(request: httpx.Request, origin: Origin) -> httpx.Response:
    """The issue's server: a plain GET answered with 206 bytes 1000-END."""
    return origin.respond(206, origin.body, 1000, len(origin.body))


def test_unasked_for_206_is_never_written_and_retried_from_clean(
    origin: Origin, engine_for, clock: FakeClock
) -> None:
    # the issue's sequence: a 206 to a plain GET, then an honest server with one cut
    origin.plan = [unasked_range, cut(100_000)]
    listener = RecordingListener()
    engine = engine_for(origin, listener)

    assert engine.offline(product()) is True

    assert stored(engine) == BODY  # not BODY[1000:] + BODY[...]
    assert origin.ranges() == [None, None, "bytes=100000-"]
    (attempt, _delay, reason), _cut = retries(listener)
    assert (attempt, reason) == (1, "server error")  # a server fault: backed off, not trusted
    assert clock.sleeps  # ... with a wait


def test_a_server_that_keeps_sending_unasked_ranges_fails_clearly(
    origin: Origin, engine_for, home: Path
) -> None:
    origin.plan = [unasked_range] * 10
    listener = RecordingListener()
    engine = engine_for(origin, listener, retries=2)

    with pytest.raises(ServerError) as excinfo:
        engine.offline(product())

    message = str(excinfo.value)
    assert "cdn.test sent a partial response that does not start where asked" in message
    assert "asked for bytes from 0, got bytes 1000-299999" in message
    assert "refused, nothing written" in message
    assert excinfo.value.exit_code == 1
    assert origin.ranges() == [None, None, None]  # each retry from a clean state
    assert partial_files(home) == []
    assert engine.store.get_offlined(KEY) is None
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.FAILED


def test_a_206_at_another_offset_than_the_resume_is_never_appended(
    origin: Origin, engine_for
) -> None:
    garbage = b"\xee" * len(BODY)

    def elsewhere(request: httpx.Request, origin: Origin) -> httpx.Response:
        assert request.headers["Range"] == "bytes=100000-"
        # announces 99000-END but it is not what we asked for; its bytes must not land
        return origin.respond(206, garbage, 99_000, len(BODY))

    origin.plan = [cut(100_000), elsewhere]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == BODY
    assert origin.ranges() == [None, "bytes=100000-", None]


@pytest.mark.parametrize(
    "content_range",
    [
        None,  # no Content-Range at all
        "bytes 0-99/50",  # ends past its own total
        "bytes 10-5/300000",  # ends before it starts
        "bytes \u0660-\u0669/300000",  # not ASCII digits
        "bytes 0-299999/" + "9" * 40,  # a total no file has
        "pages 0-299999/300000",
    ],
)
def test_a_206_without_a_usable_content_range_is_refused(
    content_range: str | None, origin: Origin, engine_for
) -> None:
    def odd(request: httpx.Request, origin: Origin) -> httpx.Response:
        response = origin.respond(206, origin.body, 0, len(origin.body))
        if content_range is None:
            del response.headers["Content-Range"]
        else:
            response.headers["Content-Range"] = content_range
        return response

    origin.plan = [odd]
    listener = RecordingListener()
    engine = engine_for(origin, listener)

    engine.offline(product())

    assert stored(engine) == BODY
    assert len(origin.requests) == 2
    assert [reason for _, _, reason in retries(listener)] == ["server error"]


# -- 9: bounded 206s are progress ------------------------------------------------------------


@pytest.mark.parametrize("validators", [True, False], ids=["etag", "no-validators"])
def test_bounded_206s_continue_at_once_without_backoff(
    validators: bool, engine_for, clock: FakeClock
) -> None:
    body = BODY[:20_000]
    origin = Origin(body=body, max_range=1000)
    if not validators:
        origin.etag = origin.last_modified = None
    listener = RecordingListener()
    engine = engine_for(origin, listener)

    engine.offline(product())

    assert stored(engine) == body
    assert clock.sleeps == []
    assert retries(listener) == []
    assert origin.ranges() == [None] + [f"bytes={n}-" for n in range(1000, 20_000, 1000)]
    if validators:
        assert set(origin.if_ranges()[1:]) == {ETAG}


def test_a_bounded_206_cut_short_resumes_where_it_stopped(engine_for) -> None:
    body = BODY[:10_000]
    origin = Origin(body=body, max_range=4000, chunk=500)
    origin.plan = [serve_normally, cut(1500)]  # the second range is cut after 1500 of its bytes
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == body
    assert origin.ranges() == [None, "bytes=4000-", "bytes=5500-", "bytes=9500-"]


# -- 10: a whole-file answer of the same version keeps the bytes -----------------------------


def test_cdn_that_honours_only_date_if_range_keeps_the_bytes_and_switches_to_dates(
    engine_for,
) -> None:
    origin = Origin(if_range_dates_only=True)
    garbage = b"\xee" * 100_000 + BODY[100_000:]

    def whole_file_with_other_overlap(request: httpx.Request, origin: Origin) -> httpx.Response:
        # The same version (same ETag and date): the overlap is the same bytes on a real
        # server. Sending others here proves they were skipped, not written over ours.
        assert request.headers["If-Range"] == ETAG
        return origin.serve(request, data=garbage, cut_after=200_000)

    origin.plan = [cut(100_000), whole_file_with_other_overlap]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == BODY
    assert origin.if_ranges() == [None, ETAG, LAST_MODIFIED]
    assert [r.headers.get("Range") for r in origin.requests] == [
        None,
        "bytes=100000-",
        "bytes=200000-",
    ]


def test_the_date_if_range_is_used_for_later_products_of_that_host(
    engine_for,
) -> None:
    origin = Origin(if_range_dates_only=True)
    origin.plan = [cut(100_000)]
    engine = engine_for(origin)
    engine.offline(product())
    other = MediaProduct(ProductType.FILE, "y", url="https://cdn.test/g")
    origin.plan = [cut(50_000)]
    first_of_second = len(origin.requests)

    engine.offline(other)

    assert origin.if_ranges()[first_of_second:] == [None, LAST_MODIFIED]
    assert [r.headers.get("Range") for r in origin.requests[first_of_second:]] == [
        None,
        "bytes=50000-",
    ]


def test_a_server_ignoring_ranges_with_the_same_last_modified_keeps_the_bytes(
    engine_for,
) -> None:
    origin = Origin(etag=None)
    garbage = b"\xee" * 100_000 + BODY[100_000:]

    def ignores_range(request: httpx.Request, origin: Origin) -> httpx.Response:
        return origin.respond(200, garbage, 0, len(garbage))

    origin.plan = [cut(100_000), ignores_range]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == BODY


@pytest.mark.parametrize("change", ["etag", "length"])
def test_a_whole_file_answer_of_another_version_still_starts_over(change: str, engine_for) -> None:
    new = random.Random(8).randbytes(300_000 if change == "etag" else 310_000)
    origin = Origin()

    def changed(request: httpx.Request, origin: Origin) -> httpx.Response:
        origin.body = new
        if change == "etag":
            origin.etag = '"v2"'
        return origin.respond(200, new, 0, len(new))

    origin.plan = [cut(100_000), changed]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == new


# -- 8: a transfer below the speed floor is a stall ------------------------------------------


def trickle(clock: FakeClock, bytes_per_second: int) -> Origin:
    """An origin sending ``bytes_per_second`` bytes each (fake) second."""
    body = BODY[:5_000]

    def tick() -> None:
        clock.now += 1.0

    return Origin(body=body, chunk=bytes_per_second, each_chunk=tick)


def test_a_server_trickling_a_byte_a_second_is_stalled_and_gives_up(
    engine_for, clock: FakeClock
) -> None:
    origin = trickle(clock, 1)
    listener = RecordingListener()
    engine = engine_for(origin, listener, retries=2)

    with pytest.raises(NetworkError, match=r"stalled: less than 1\.0 kB/s from cdn\.test for 30s"):
        engine.offline(product())

    # each try ends once the 30 s window is over, and crawling bytes are not progress
    assert len(origin.requests) == 3
    assert all(body.sent <= 31 for body in origin.bodies)
    assert [attempt for attempt, _, _ in retries(listener)] == [1, 2]


def test_a_try_that_was_fast_before_it_crawled_made_progress(engine_for, clock: FakeClock) -> None:
    # every answer sends 40 kB at once (above the floor for its 30 s window), then a byte a
    # second: each try ends stalled in its second window, but the bytes of the fast window
    # are progress, so one retry at a time is enough to finish
    origin = trickle(clock, 1)
    origin.body, origin.fast = BODY[:200_000], 40_000
    engine = engine_for(origin, retries=1)

    engine.offline(product())

    assert stored(engine) == origin.body
    assert len(origin.requests) == 5


def test_a_transfer_above_the_floor_is_not_stalled(engine_for, clock: FakeClock) -> None:
    origin = trickle(clock, 1100)
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == origin.body
    assert len(origin.requests) == 1


def test_min_speed_zero_switches_the_floor_off(engine_for, clock: FakeClock) -> None:
    origin = trickle(clock, 100)
    engine = engine_for(origin, min_speed=0)

    engine.offline(product())

    assert stored(engine) == origin.body
    assert len(origin.requests) == 1


def test_min_speed_is_a_setting(tmp_path: Path) -> None:
    assert Settings().min_speed == 1024
    config = tmp_path / "config.toml"
    config.write_text("min_speed = 0\n")
    assert load_settings(tmp_path, environ={"OFFLINE_CLI_CONFIG": str(config)}).min_speed == 0
    from_env = load_settings(tmp_path, environ={"OFFLINE_CLI_MIN_SPEED": "2048"})
    assert (from_env.min_speed, from_env.origin("min_speed")) == (2048, "$OFFLINE_CLI_MIN_SPEED")
    with pytest.raises(ConfigError, match="OFFLINE_CLI_MIN_SPEED: not a whole number"):
        load_settings(tmp_path, environ={"OFFLINE_CLI_MIN_SPEED": "fast"})


# -- 18: the disk-space reserve scales with the product --------------------------------------


def test_a_small_product_fits_on_a_nearly_full_disk(engine_for) -> None:
    origin = Origin(body=BODY[:1000])
    engine = engine_for(origin, disk_free=lambda path: 4_000_000)

    engine.offline(product())

    assert stored(engine) == BODY[:1000]


def test_refusing_for_space_says_what_is_reserved_and_why(engine_for, home: Path) -> None:
    origin = Origin(body=BODY[:200_000])
    engine = engine_for(origin, disk_free=lambda path: 300_000)

    with pytest.raises(DiskFull) as excinfo:
        engine.offline(product())

    assert excinfo.value.message == (
        "not enough disk space: need 200.0 kB plus 262.1 kB kept free so the database can "
        "record the download, 300.0 kB free"
    )
    assert len(origin.requests) == 1
    assert partial_files(home) == []


def test_a_large_product_keeps_at_most_8_mib_free(engine_for) -> None:
    # 1 GB to fetch, 1 GB + 8 MiB free: the reserve is capped, not 1/16 of the file
    size = 1_000_000_000
    origin = Origin(body=BODY[:1000])

    def huge(request: httpx.Request, origin: Origin) -> httpx.Response:
        return origin.respond(200, b"", 0, 0, headers={"Content-Length": str(size)})

    origin.plan = [huge]
    engine = engine_for(origin, disk_free=lambda path: size + 8 * 1024 * 1024, retries=0)

    with pytest.raises(NetworkError, match="body cut short"):  # space check passed
        engine.offline(product())


# -- 7: malformed responses and untrusted certificates are permanent -------------------------


class RawServer:
    """A loopback server sending the same raw bytes to every connection; counts them."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(self.payload)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Padding: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n",  # a 200 kB header
        b"Content-Length: " + b"9" * 40 + b"\r\n",  # a 40-digit length
        b"Content-Length: " + b"9" * 20 + b"\r\n",  # 20 digits: parsed, but no file is so big
        b"Content-Length: 2\r\nBad Header Line\r\n",
    ],
    ids=["200kB-header", "40-digit-length", "20-digit-length", "bad-header-line"],
)
def test_a_malformed_response_is_a_permanent_protocol_error(
    headers: bytes, make_engine, clock: FakeClock, home: Path
) -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\nhi")
    listener = RecordingListener()
    engine = make_engine(listener)
    try:
        with pytest.raises(PermanentError, match=r"bad HTTP response from 127\.0\.0\.1"):
            engine.offline(product(f"http://127.0.0.1:{server.port}/f"))
    finally:
        server.close()

    assert server.connections == 1
    assert clock.sleeps == []
    assert listener.names() == ["started", "failed"]
    assert partial_files(home) == []


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[HTTPServer, trustme.CA]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = HTTPServer(ssl_context=context)
    server.expect_request("/f").respond_with_data(BODY[:1000])
    server.start()
    yield server, ca
    server.clear()
    if server.is_running():
        server.stop()


def test_a_certificate_that_does_not_verify_fails_at_once(
    tls: tuple[HTTPServer, trustme.CA], make_engine, clock: FakeClock, home: Path
) -> None:
    server, _ca = tls
    listener = RecordingListener()
    engine = make_engine(listener)

    with pytest.raises(PermanentError, match=r"TLS certificate of localhost does not verify"):
        engine.offline(product(server.url_for("/f")))

    assert clock.sleeps == []
    assert listener.names() == ["started", "failed"]
    assert partial_files(home) == []


def test_a_certificate_trusted_through_ssl_cert_file_downloads(
    tls: tuple[HTTPServer, trustme.CA],
    make_engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the hint of the error above is true: a CA bundle in SSL_CERT_FILE makes it work
    server, ca = tls
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    engine = make_engine()

    engine.offline(product(server.url_for("/f")))

    assert stored(engine) == BODY[:1000]


# -- Retry-After from a hostile server ------------------------------------------------------


@pytest.mark.parametrize("value", ["²", "Mon, 01 Jan 99999999999 00:00:00 GMT"])
def test_an_unreadable_retry_after_is_ignored_not_a_crash(
    value: str, origin: Origin, engine_for, clock: FakeClock
) -> None:
    def busy(request: httpx.Request, origin: Origin) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value.encode(), "Content-Length": "0"})

    origin.plan = [busy]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == BODY
    assert sum(clock.sleeps) == pytest.approx(1.0)  # the ordinary backoff instead


def test_a_body_without_a_length_is_the_whole_file(origin: Origin, engine_for) -> None:
    def unsized(request: httpx.Request, origin: Origin) -> httpx.Response:
        return httpx.Response(200, headers={"ETag": ETAG}, stream=Body(origin.body))

    origin.plan = [unsized]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == BODY
    assert len(origin.requests) == 1


# -- the same through the command line: one line, exit 1, no traceback ---------------------


def test_cli_reports_a_huge_header_in_one_line_without_retrying(cli, home: Path) -> None:
    server = RawServer(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 200_000 + b"\r\n\r\n")
    try:
        result = cli("offline", f"http://127.0.0.1:{server.port}/f", "--id", "track:1")
    finally:
        server.close()

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].endswith(
        "bad HTTP response from 127.0.0.1: response header larger than 100 KiB"
    )
    assert "Traceback" not in result.output
    assert server.connections == 1
    assert cli("state", "track:1").stdout == "NOT_OFFLINED\n"


def test_cli_fails_an_unasked_range_with_a_clear_message(cli, home: Path) -> None:
    data = BODY[:2000]
    server = RawServer(
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1000-1999/2000\r\n"
        b"Content-Length: 1000\r\n\r\n" + data[1000:]
    )
    try:
        result = cli(
            "offline", f"http://127.0.0.1:{server.port}/f", "--id", "track:1", "--retries", "0"
        )
    finally:
        server.close()

    assert result.exit_code == 1
    assert "does not start where asked (asked for bytes from 0, got bytes 1000-1999)" in (
        result.stderr
    )
    assert "Traceback" not in result.output
    assert cli("state", "track:1").stdout == "NOT_OFFLINED\n"
    assert partial_files(home) == []
