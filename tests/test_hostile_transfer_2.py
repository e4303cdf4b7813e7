"""Hostile servers against one transfer, second round (attack report items 2, 4, 7 and 9).

What needs a real HTTP parser and real sockets (headers dripped byte by byte, redirects with
unusable Location headers) runs on ``RawServer``: a loopback socket that sends exactly the
bytes it is given, piece by piece, moving the fake clock before each piece, so a server that
takes "minutes" of the engine's clock takes a fraction of a second of real time.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from offline_cli import MediaProduct, ProductType
from offline_cli.engine import OfflineEngine
from offline_cli.errors import NetworkError, PermanentError, ServerError
from offline_cli.models import DownloadState
from tests.conftest import FakeClock, RecordingListener
from tests.test_hostile_transfer import (
    BODY,
    KEY,
    Origin,
    partial_files,
    product,
    retries,
    stored,
)

# How long RawServer waits between two pieces (real time): short, so tests stay fast, and
# far below any read timeout, so only a total deadline can stop a dripping server.
DRIP_S = 0.05
# A dripping server gives up after this many pieces (10 s), so the old code, which waits
# forever, fails the test instead of hanging it.
MAX_PIECES = 200

Answer = Callable[[], Iterable[bytes]]


class RawServer:
    """A loopback HTTP/1.1 server answering each request with the next ``answers`` entry,
    sent piece by piece (``DRIP_S`` apart after the first), calling ``each_piece`` before
    each piece. Connections are kept alive, as a real server would."""

    def __init__(self, answers: list[Answer], each_piece: Callable[[], None]) -> None:
        self.answers = answers
        self.each_piece = each_piece
        self.requests: list[bytes] = []
        self.connections = 0
        self.pieces_sent = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self.thread.join(timeout=5)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                self.requests.append(head)
                if not self.answers:
                    return
                for n, piece in enumerate(self.answers.pop(0)()):
                    if n and self.stopped.wait(DRIP_S):
                        return
                    self.each_piece()
                    try:
                        conn.sendall(piece)
                    except OSError:
                        return
                    self.pieces_sent += 1


def response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def whole(data: bytes) -> Answer:
    return lambda: [data]


def header_lines_dripped() -> Iterator[bytes]:
    """The report's server: a status line, then one header line every DRIP_S, forever."""
    yield b"HTTP/1.1 200 OK\r\n"
    for n in range(MAX_PIECES):
        yield f"X-A{n}: b\r\n".encode()


def status_line_dripped() -> Iterator[bytes]:
    """The status line one byte at a time."""
    for n in range(MAX_PIECES):
        yield b"HTTP/1.1 200 OK"[n % 15 : n % 15 + 1] if n < 15 else b"X"


@pytest.fixture
def raw_server(clock: FakeClock) -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def make(answers: list[Answer], tick: float = 1.0) -> RawServer:
        def each_piece() -> None:
            clock.now += tick

        server = RawServer(answers, each_piece)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def file_product(url: str, name: str = "x") -> MediaProduct:
    return MediaProduct(ProductType.FILE, name, url=url)


# -- 2: a URL httpx refuses to request fails that product, permanently ------------------------


def test_a_url_httpx_cannot_request_fails_that_product_permanently(
    make_engine: Callable[..., OfflineEngine], home: Path
) -> None:
    # accepted as a URL, but httpx raises InvalidURL (not an httpx.HTTPError) building it
    url = "http://\u2488.com/f"
    listener = RecordingListener()
    engine = make_engine(listener, retries=3)

    with pytest.raises(PermanentError) as excinfo:
        engine.offline(file_product(url))

    assert "cannot fetch http://\u2488.com/f: Invalid IDNA hostname" in str(excinfo.value)
    assert excinfo.value.exit_code == 1
    assert retries(listener) == []  # the same URL fails the same way: not retried
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.FAILED
    assert engine.resumable_products() == []


def test_a_host_name_idna_refuses_fails_that_product_permanently(
    make_engine: Callable[..., OfflineEngine],
) -> None:
    engine = make_engine(retries=3)

    with pytest.raises(PermanentError, match=r"cannot fetch http://xn--/f: invalid host name"):
        engine.offline(file_product("http://xn--/f"))


def test_resume_of_a_stored_url_too_long_for_httpx_fails_cleanly(cli, home: Path) -> None:
    failed = cli("offline", "http://127.0.0.1:1/x", "--id", "file:z", "--retries", "0")
    assert failed.exit_code == 1  # a retryable failure: `resume` takes it up again
    # a URL stored before the command line capped lengths (or by an older version)
    long_url = "http://127.0.0.1:1/" + "a" * 70_000
    with sqlite3.connect(home / "offline.db") as db:
        db.execute("update download_entries set media_url = ?", (long_url,))

    result = cli("resume")

    assert result.exit_code == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "file:z" in result.stderr
    assert "a" * 200 not in result.stderr  # the URL is shortened in the message
    state = cli("state", "--json")
    assert '"PAUSED"' not in state.stdout
    assert cli("resume").exit_code == 0  # failed for good: nothing left to resume


# -- 4: a total deadline for the status line and headers --------------------------------------


@pytest.mark.parametrize("drip", [header_lines_dripped, status_line_dripped])
def test_headers_dripped_forever_are_cut_at_the_stall_timeout_and_retried(
    drip: Answer, raw_server, make_engine, clock: FakeClock
) -> None:
    server = raw_server([drip, drip])
    listener = RecordingListener()
    engine = make_engine(listener, stall_timeout=2.0, retries=1)

    with pytest.raises(NetworkError) as excinfo:
        engine.offline(file_product(server.url("/t")))

    assert str(excinfo.value) == "file:x: no response headers from 127.0.0.1 within 2s"
    assert len(server.requests) == 2
    assert server.pieces_sent < 20  # cut at the deadline, not when the server gave up
    assert [reason for _, _, reason in retries(listener)] == ["network error"]
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.FAILED


def test_headers_slow_but_within_the_deadline_and_a_long_body_are_not_cut(
    raw_server, make_engine
) -> None:
    body = BODY[:4000]

    def slow() -> Iterator[bytes]:
        # headers over 1.5 s of the 2 s deadline, then a body over 4 s (the deadline is for
        # the headers only; the body has the read timeout and the speed floor)
        yield b"HTTP/1.1 200 OK\r\n"
        yield b"Content-Length: 4000\r\n"
        yield b"X-A: b\r\n\r\n"
        for start in range(0, 4000, 1000):
            yield body[start : start + 1000]

    server = raw_server([slow], tick=0.5)
    engine = make_engine(stall_timeout=2.0, retries=0, min_speed=0)

    assert engine.offline(file_product(server.url("/t"))) is True

    assert stored(engine) == body


def test_the_deadline_cuts_a_request_on_a_kept_alive_connection(raw_server, make_engine) -> None:
    # the playback-info answer leaves its connection open; the media request reuses it
    server = raw_server([])
    info = f'{{"url": "{server.url("/media")}", "manifestMimeType": "audio/flac"}}'.encode()
    server.answers += [
        whole(response("200 OK", {"Content-Length": str(len(info))}, info)),
        header_lines_dripped,
    ]
    engine = make_engine(source=server.url("/info/{type}/{id}"), stall_timeout=2.0, retries=0)

    with pytest.raises(NetworkError, match=r"no response headers from 127\.0\.0\.1 within 2s"):
        engine.offline(MediaProduct(ProductType.TRACK, "1"))

    assert (len(server.requests), server.connections) == (2, 1)
    # cut at the deadline (about 3 pieces), not when the server gave up
    assert server.pieces_sent < 10


# -- 7: a 206 whose Content-Length contradicts its Content-Range -----------------------------


def lying_length(request: httpx.Request, origin: Origin) -> httpx.Response:
    """The report's server: 100 bytes announced by the range, 1000 by the length, and a body
    of 1000 bytes from somewhere else in the file."""
    start = 0
    if request.headers.get("Range"):
        start = int(request.headers["Range"][6:-1])
    return origin.respond(
        206,
        origin.body,
        start + 500,
        start + 1500,
        content_range=f"bytes {start}-{start + 99}/{len(origin.body)}",
    )


def test_a_206_whose_length_contradicts_its_range_is_refused_then_fails(
    origin: Origin, engine_for, home: Path, clock: FakeClock
) -> None:
    origin.plan = [lying_length] * 10
    listener = RecordingListener()
    engine = engine_for(origin, listener, retries=2)

    with pytest.raises(ServerError) as excinfo:
        engine.offline(product())

    assert str(excinfo.value) == (
        "file:x: cdn.test sent a partial response whose Content-Length (1000) disagrees "
        "with its Content-Range (bytes 0-99, 100 bytes): refused, nothing written"
    )
    assert origin.ranges() == [None, None, None]  # each try from zero, none counted progress
    # backed off like any server fault, not taken as progress
    assert [reason for _, _, reason in retries(listener)] == ["server error"] * 2
    assert clock.sleeps
    assert partial_files(home) == []
    assert engine.store.get_offlined(KEY) is None


def test_a_206_with_a_lying_length_on_resume_is_not_appended(origin: Origin, engine_for) -> None:
    def cut(request: httpx.Request, origin: Origin) -> httpx.Response:
        return origin.serve(request, cut_after=100_000)

    origin.plan = [cut, lying_length]
    engine = engine_for(origin)

    engine.offline(product())

    assert stored(engine) == BODY
    assert origin.ranges() == [None, "bytes=100000-", None]


@pytest.fixture
def origin() -> Origin:
    return Origin()


@pytest.mark.parametrize(
    ("content_range", "problem"),
    [
        ("bytes 0-200099/200000", "whose Content-Range 'bytes 0-200099/200000' ends past its"),
        ("bytes 10-5/300000", "whose Content-Range 'bytes 10-5/300000' ends before it starts"),
        ("pages 0-299999/300000", "with an unreadable Content-Range 'pages 0-299999/300000'"),
        (None, "without a Content-Range"),
    ],
)
def test_an_unusable_content_range_is_named_for_what_is_wrong(
    content_range: str | None, problem: str, origin: Origin, engine_for
) -> None:
    def odd(request: httpx.Request, origin: Origin) -> httpx.Response:
        answer = origin.respond(206, origin.body, 0, len(origin.body))
        del answer.headers["Content-Range"]
        if content_range is not None:
            answer.headers["Content-Range"] = content_range
        return answer

    origin.plan = [odd] * 3
    engine = engine_for(origin, retries=0)

    with pytest.raises(ServerError) as excinfo:
        engine.offline(product())

    message = str(excinfo.value)
    assert f"cdn.test sent a partial response {problem}" in message
    assert "does not start where asked" not in message


# -- 9: redirects the client cannot follow -----------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1/a\x7fb\x1b[2J",  # control characters
        "http://127.0.0.1/" + "a" * 90_000,  # longer than httpx takes
        "http://[::1/x",  # unparseable
        "http://xn--/x",  # a host name IDNA refuses (idna's own error, not httpx's)
    ],
    ids=["controls", "90kB", "unparseable", "idna"],
)
def test_an_unusable_location_is_a_permanent_bad_redirect(
    location: str, raw_server, make_engine
) -> None:
    redirect = whole(response("302 Found", {"Location": location, "Content-Length": "0"}))
    server = raw_server([redirect] * 3)
    listener = RecordingListener()
    engine = make_engine(listener, retries=2)

    with pytest.raises(PermanentError) as excinfo:
        engine.offline(file_product(server.url("/r")))

    message = str(excinfo.value)
    assert message.startswith("file:x: bad redirect from 127.0.0.1: ")
    assert len(message) < 300
    assert "\x1b" not in message
    assert len(server.requests) == 1  # not retried
    assert retries(listener) == []


def test_a_redirect_to_a_file_url_names_the_scheme_and_invents_no_host(
    raw_server, make_engine
) -> None:
    redirect = whole(
        response("302 Found", {"Location": "file:///etc/passwd", "Content-Length": "0"})
    )
    server = raw_server([redirect] * 3)
    engine = make_engine(retries=2)

    with pytest.raises(PermanentError) as excinfo:
        engine.offline(file_product(server.url("/r")))

    assert str(excinfo.value) == ("file:x: redirect from 127.0.0.1 to an unsupported scheme 'file'")
    assert len(server.requests) == 1
