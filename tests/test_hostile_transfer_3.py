"""Hostile servers against one transfer, third round (attack report 2, items 2 and 7).

The servers are ``httpx.MockTransport`` origins handed to the engine (its ``transport=``
seam); a slow server moves the fake clock instead of taking real time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from offline_cli import MediaProduct, ProductType
from offline_cli.engine import OfflineEngine
from offline_cli.errors import NetworkError, ServerError
from offline_cli.models import DownloadState
from tests.conftest import FakeClock, RecordingListener
from tests.test_hostile_transfer import KEY, partial_files, retries

URL = "https://slow.test/f"
FILE = bytes(range(256)) * 20  # 5120 bytes
ETAG = '"e"'

Handler = Callable[[httpx.Request], httpx.Response]


def product() -> MediaProduct:
    return MediaProduct(ProductType.FILE, "x", url=URL)


@pytest.fixture
def engine_with(make_engine: Callable[..., OfflineEngine]) -> Callable[..., OfflineEngine]:
    def make(handler: Handler, listener: RecordingListener | None = None, **kw: object):
        return make_engine(listener, transport=httpx.MockTransport(handler), **kw)

    return make


class Cut(httpx.SyncByteStream):
    """``data`` then a cut connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.data
        raise httpx.ReadError("connection cut")


# -- 2: bounded 206s of a byte each stay within the speed floor ------------------------------


def test_one_byte_206s_are_a_stall_and_use_up_the_retries(
    engine_with, clock: FakeClock, home: Path
) -> None:
    requests: list[str | None] = []

    def one_byte_each(request: httpx.Request) -> httpx.Response:
        # Old code: every round is progress and each gets a fresh speed window, so this
        # goes on for the whole (claimed 1 PiB) file; stop it well before that.
        if len(requests) >= 100:
            pytest.fail("the download never stopped a server sending one byte per 206")
        requests.append(request.headers.get("Range"))
        clock.now += 0.5  # half a second before each answer: 2 B/s
        start = int((request.headers.get("Range") or "bytes=0-")[6:-1])
        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes {start}-{start}/{2**50}", "ETag": ETAG},
            stream=httpx.ByteStream(b"x"),
        )

    listener = RecordingListener()
    engine = engine_with(
        one_byte_each, listener, retries=2, stall_timeout=2.0, disk_free=lambda p: 2**62
    )

    with pytest.raises(NetworkError) as excinfo:
        engine.offline(product())

    assert str(excinfo.value) == "file:x: stalled: less than 1.0 kB/s from slow.test for 2s"
    # the floor spans the rounds of a try: 2 s of rounds, then the try ends; the slow
    # bytes are no progress, so the two retries run out
    assert [attempt for attempt, _delay, _reason in retries(listener)] == [1, 2]
    assert len(requests) == 3 * 5
    assert engine.store.get_offlined(KEY) is None
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.FAILED


def test_bounded_206s_at_a_good_speed_still_complete(engine_with, clock: FakeClock) -> None:
    # the shared window must not fail a server that serves the file in small, fast rounds
    def small_rounds(request: httpx.Request) -> httpx.Response:
        clock.now += 0.1  # 512 bytes per 0.1 s: 5 kB/s
        start = int((request.headers.get("Range") or "bytes=0-")[6:-1])
        end = min(start + 512, len(FILE))
        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes {start}-{end - 1}/{len(FILE)}", "ETag": ETAG},
            stream=httpx.ByteStream(FILE[start:end]),
        )

    engine = engine_with(small_rounds, retries=0, stall_timeout=0.5)

    assert engine.offline(product()) is True
    entry = engine.store.get_offlined(KEY)
    assert entry is not None and Path(entry.media_path).read_bytes() == FILE


# -- 7: a 200 under the same strong ETag must be the recorded length -------------------------


def truncating_server(later: Callable[[], httpx.Response]) -> tuple[Handler, list[httpx.Request]]:
    """First request: 200 with the whole length, cut after 3000 bytes; then ``later``."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            headers = {"Content-Length": str(len(FILE)), "ETag": ETAG}
            return httpx.Response(200, headers=headers, stream=Cut(FILE[:3000]))
        return later()

    return handler, seen


def chunked_100_bytes() -> httpx.Response:
    # a body with no length (chunked), ending cleanly: 100 bytes of the same "version"
    return httpx.Response(200, headers={"ETag": ETAG}, stream=httpx.ByteStream(FILE[:100]))


def test_a_200_without_length_under_the_same_etag_is_never_stored_truncated(
    engine_with, home: Path
) -> None:
    handler, seen = truncating_server(chunked_100_bytes)
    listener = RecordingListener()
    engine = engine_with(handler, listener, retries=3)

    with pytest.raises(ServerError) as excinfo:
        engine.offline(product())

    assert str(excinfo.value) == (
        f'file:x: slow.test sent the same version ("e") with a body of 100 bytes, not the '
        f"{len(FILE)} bytes recorded for it: refused, nothing stored"
    )
    assert engine.store.get_offlined(KEY) is None
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.FAILED
    assert len(seen) == 4  # the cut, then a server fault on each try, no progress made
    assert [(a, reason) for a, _d, reason in retries(listener)][1:] == [
        (2, "server error"),
        (3, "server error"),
    ]
    assert all(p.stat().st_size == 0 for p in partial_files(home))  # nothing kept


def test_a_200_with_another_length_under_the_same_etag_is_refused(engine_with, home: Path) -> None:
    def short_with_length() -> httpx.Response:
        headers = {"ETag": ETAG, "Content-Length": "100"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(FILE[:100]))

    handler, seen = truncating_server(short_with_length)
    engine = engine_with(handler, retries=2)

    with pytest.raises(ServerError) as excinfo:
        engine.offline(product())

    assert f"with a length of 100 bytes, not the {len(FILE)} bytes" in str(excinfo.value)
    assert engine.store.get_offlined(KEY) is None
    assert len(seen) == 3  # the cut, then the refused answer on each try
    # refused before a byte was written: the bytes of the recorded version stay
    assert [p.read_bytes() for p in partial_files(home)] == [FILE[:3000]]


def test_a_200_without_length_that_ends_at_the_recorded_total_completes(
    engine_with,
) -> None:
    # a server that ignores ranges and never sends a length is fine when the body is whole
    handler, seen = truncating_server(
        lambda: httpx.Response(200, headers={"ETag": ETAG}, stream=httpx.ByteStream(FILE))
    )
    engine = engine_with(handler)

    assert engine.offline(product()) is True
    entry = engine.store.get_offlined(KEY)
    assert entry is not None and Path(entry.media_path).read_bytes() == FILE
    assert seen[1].headers["Range"] == "bytes=3000-"


def test_a_cut_200_without_length_is_not_resumed_from(engine_with) -> None:
    # bytes no length vouched for are dropped when the body stops short, so the next try
    # asks for the whole file again rather than resuming from them
    answers = [
        lambda: httpx.Response(200, headers={"ETag": ETAG}, stream=Cut(FILE[:2000])),
        lambda: httpx.Response(200, headers={"ETag": ETAG}, stream=httpx.ByteStream(FILE)),
    ]
    handler, seen = truncating_server(lambda: answers.pop(0)())
    engine = engine_with(handler)

    assert engine.offline(product()) is True
    entry = engine.store.get_offlined(KEY)
    assert entry is not None and Path(entry.media_path).read_bytes() == FILE
    assert [r.headers.get("Range") for r in seen] == [None, "bytes=3000-", None]
