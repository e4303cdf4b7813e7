"""The engine against a misbehaving loopback server: cuts, resets, stalls, 5xx, Retry-After,
broken range support, changed files, lying lengths, outages and permanent errors.

Every test checks that what is stored is exactly what the server holds and that a retry did
not fetch again the bytes it already had. Retry waits go through the fake clock.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, ProductType
from offline_cli.engine import OfflineEngine
from offline_cli.errors import (
    DownloadCancelled,
    HTTPStatusError,
    NetworkError,
    NetworkUnavailable,
    ServerError,
    UnknownDownloadError,
)
from offline_cli.models import DownloadState, ErrorKind
from offline_cli.network import NetworkMonitor
from tests.conftest import FakeClock, RecordingListener
from tests.netsim import Fault, NetSim, Resource, Served, free_port, wait_for

KEY = "file:x"
CHUNK = 64 * 1024  # the transfer's read size: a resume may refetch at most about this much
SLACK = 2 * CHUNK


def make_body(seed: int = 0, size: int = 300_000) -> bytes:
    return random.Random(seed).randbytes(size)


BODY = make_body()


def product(url: str) -> MediaProduct:
    return MediaProduct(ProductType.FILE, "x", url=url)


def stored(engine: OfflineEngine, key: str = KEY) -> bytes:
    entry = engine.store.get_offlined(key)
    assert entry is not None, "product was not committed"
    return Path(entry.media_path).read_bytes()


def served(server: NetSim, path: str) -> list[Served]:
    """The requests for ``path``, once the server has logged every one it was handling."""
    assert server.wait_idle()
    return server.requests(path)


def sent(server: NetSim, path: str) -> int:
    """Body bytes the server sent for ``path``, once every request it handles is logged."""
    assert server.wait_idle()
    return server.bytes_sent(path)


def header(request: Served, name: str) -> str | None:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value
    return None


def retry_events(listener: RecordingListener) -> list[tuple[int, float, str]]:
    return [detail for name, _, detail in listener.events if name == "retrying"]


def partial_files(home: Path) -> list[Path]:
    folder = home / "partial"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def revive(dead: NetSim) -> NetSim:
    """Bring a stopped host back at the same address, serving the same resources."""
    back = NetSim(port=dead.port)
    back.resources = dead.resources
    return back.start(poll_interval=0.02)


class StopServerOnRetry(RecordingListener):
    """Takes the host down when the first retry is scheduled: the next try is refused."""

    def __init__(self, server: NetSim) -> None:
        super().__init__()
        self.server = server

    def offlining_retrying(
        self, product: MediaProduct, attempt: int, delay: float, reason: str
    ) -> None:
        super().offlining_retrying(product, attempt, delay, reason)
        if len(retry_events(self)) == 1:
            self.server.stop()


# -- cut, reset, stall: resume by range ------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_body_cut_at_a_random_offset_resumes_by_range(seed: int, sim: NetSim, make_engine) -> None:
    body = make_body(seed)
    cut = random.Random(seed).randrange(1, len(body))
    resource = sim.add("/f", Resource(body, faults=[Fault("cut", at=cut)]))
    listener = RecordingListener()
    engine = make_engine(listener)

    assert engine.offline(product(sim.url("/f"))) is True

    assert stored(engine) == body
    first, second = served(sim, "/f")
    assert (first.status, first.range, first.bytes_sent) == (200, None, cut)
    assert second.status == 206
    assert second.range == f"bytes={cut}-"
    assert second.if_range == resource.etag
    assert sent(sim, "/f") == len(body)  # not one byte fetched twice
    assert listener.names() == ["started", "retrying", "completed"]


def test_many_cuts_that_each_make_progress_never_exhaust_the_retries(
    sim: NetSim, make_engine
) -> None:
    cuts = sorted(random.Random(7).sample(range(1, len(BODY)), 8))
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at) for at in cuts]))
    listener = RecordingListener()
    engine = make_engine(listener, retries=1)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    assert len(served(sim, "/f")) == 9
    assert sent(sim, "/f") == len(BODY)
    # attempts count consecutive failures without progress: each cut is attempt 1 again
    assert [attempt for attempt, _, _ in retry_events(listener)] == [1] * 8


def test_tcp_reset_mid_body_resumes(sim: NetSim, make_engine) -> None:
    at = 150_000
    resource = sim.add("/f", Resource(BODY, faults=[Fault("reset", at=at)]))
    listener = RecordingListener()
    engine = make_engine(listener)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    first, second, *rest = served(sim, "/f")
    assert rest == []
    assert first.bytes_sent == at
    if second.range is not None:  # bytes that arrived before the RST are kept
        assert second.status == 206
        assert second.if_range == resource.etag
    assert sent(sim, "/f") <= len(BODY) + at
    assert listener.names() == ["started", "retrying", "completed"]


def test_stall_is_a_network_error_and_is_retried(sim: NetSim, make_engine) -> None:
    at = 100_000
    resource = sim.add("/f", Resource(BODY, faults=[Fault("stall", at=at, stall_s=1.0)]))
    listener = RecordingListener()
    engine = make_engine(listener, stall_timeout=0.3)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    (_attempt, _delay, reason), *more = retry_events(listener)
    assert more == []
    assert listener.names() == ["started", "retrying", "completed"]
    # the stalled handler is still asleep: wait for the log, not for the server to be idle
    assert wait_for(lambda: len(sim.requests("/f")) == 2)
    requests = sim.requests("/f")
    assert requests[1].range == f"bytes={at}-"
    assert requests[1].if_range == resource.etag
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.COMPLETED
    assert "network" in reason


def test_stall_message_names_the_stall(sim: NetSim, make_engine) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("stall", at=10, stall_s=1.0)] * 2))
    listener = RecordingListener()
    engine = make_engine(listener, stall_timeout=0.2, retries=0)

    with pytest.raises(NetworkError, match=r"stalled: no data .* for 0\.2s"):
        engine.offline(product(sim.url("/f")))
    assert listener.names() == ["started", "failed"]


# -- server errors and Retry-After -----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_burst_then_success(status: int, sim: NetSim, make_engine, clock: FakeClock) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=status)] * 3))
    listener = RecordingListener()
    engine = make_engine(listener)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    assert [s.status for s in served(sim, "/f")] == [status, status, status, 200]
    assert sent(sim, "/f") == len(BODY)
    assert [(a, d) for a, d, _ in retry_events(listener)] == [(1, 1.0), (2, 2.0), (3, 4.0)]
    assert sum(clock.sleeps) == pytest.approx(7.0)


def test_mixed_5xx_burst_backs_off_exponentially(sim: NetSim, make_engine, clock) -> None:
    statuses = [500, 502, 503, 504, 429]
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=s) for s in statuses]))
    listener = RecordingListener()
    engine = make_engine(listener, retries=5)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    assert [d for _, d, _ in retry_events(listener)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert sum(clock.sleeps) == pytest.approx(31.0)


def test_jitter_shortens_the_waits(sim: NetSim, make_engine, clock) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=503)] * 2))
    listener = RecordingListener()
    engine = make_engine(listener, rand=lambda: 0.0)

    engine.offline(product(sim.url("/f")))

    assert [d for _, d, _ in retry_events(listener)] == pytest.approx([0.8, 1.6])
    assert sum(clock.sleeps) == pytest.approx(2.4)


def test_server_errors_past_the_retries_fail_and_stay_resumable(
    sim: NetSim, make_engine, clock
) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=503)] * 4))
    listener = RecordingListener()
    engine = make_engine(listener, retries=3)

    with pytest.raises(ServerError, match="HTTP 503"):
        engine.offline(product(sim.url("/f")))

    assert len(served(sim, "/f")) == 4
    assert sum(clock.sleeps) == pytest.approx(1 + 2 + 4)
    assert listener.names() == ["started", "retrying", "retrying", "retrying", "failed"]
    entry = engine.store.latest_download(KEY)
    assert entry is not None
    assert (entry.state, entry.error_kind, entry.attempt_count) == (
        DownloadState.FAILED,
        ErrorKind.SERVER,
        3,
    )
    # a retryable failure can be resumed later
    [result] = engine.resume()
    assert result.error is None
    assert stored(engine) == BODY


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(
    status: int, form: str, sim: NetSim, make_engine, clock: FakeClock
) -> None:
    value = "7" if form == "seconds" else http_date(clock.time() + 20)
    expected = 7.0 if form == "seconds" else 20.0
    fault = Fault("status", status=status, headers={"Retry-After": value})
    sim.add("/f", Resource(BODY, faults=[fault]))
    listener = RecordingListener()
    engine = make_engine(listener)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    [(attempt, delay, reason)] = retry_events(listener)
    assert (attempt, delay) == (1, pytest.approx(expected))
    assert "Retry-After" in reason
    # the wait is slept in slices (so a delete is noticed), all through the fake clock
    assert sum(clock.sleeps) == pytest.approx(expected)
    assert len(served(sim, "/f")) == 2


def test_retry_after_is_capped(sim: NetSim, make_engine, clock: FakeClock) -> None:
    fault = Fault("status", status=429, headers={"Retry-After": "86400"})
    sim.add("/f", Resource(BODY, faults=[fault]))
    listener = RecordingListener()
    engine = make_engine(listener, retry_after_max=45.0)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    assert [d for _, d, _ in retry_events(listener)] == [45.0]
    assert sum(clock.sleeps) == pytest.approx(45.0)


# -- servers that cannot resume truthfully --------------------------------------------------


def test_range_ignored_restarts_cleanly(sim: NetSim, make_engine) -> None:
    at = 120_000
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at), Fault("ignore_range")]))
    engine = make_engine()

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    _first, second = served(sim, "/f")
    assert second.range == f"bytes={at}-"
    assert second.status == 200
    assert sent(sim, "/f") == at + len(BODY)


def test_206_at_the_wrong_offset_restarts_cleanly(sim: NetSim, make_engine) -> None:
    at = 120_000
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at), Fault("wrong_offset")]))
    engine = make_engine()

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    requests = served(sim, "/f")
    assert [(s.status, s.range) for s in requests] == [
        (200, None),
        (206, f"bytes={at}-"),
        (200, None),
    ]


def test_changed_etag_between_attempts_stores_the_new_version_only(
    sim: NetSim, make_engine
) -> None:
    old, new = make_body(10), make_body(11)
    at = 200_000
    resource = sim.add("/f", Resource(old, faults=[Fault("cut", at=at), Fault("change", body=new)]))
    old_etag = resource.etag
    engine = make_engine()

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == new
    _first, second = served(sim, "/f")
    assert second.if_range == old_etag  # the resume named the version it had
    assert second.status == 200  # ... and the server sent the whole new file
    assert resource.etag != old_etag
    entry = engine.store.get_offlined(KEY)
    assert entry is not None and entry.etag == resource.etag


class ChangeOnRetry(RecordingListener):
    """Replaces the resource between two tries (for servers that ignore If-Range)."""

    def __init__(self, change: Callable[[], None]) -> None:
        super().__init__()
        self.change = change

    def offlining_retrying(
        self, product: MediaProduct, attempt: int, delay: float, reason: str
    ) -> None:
        super().offlining_retrying(product, attempt, delay, reason)
        self.change()


def test_206_with_a_changed_etag_is_not_appended(sim: NetSim, make_engine) -> None:
    old, new = make_body(20), make_body(21)  # same length: only the ETag tells them apart
    at = 100_000
    resource = sim.add(
        "/f", Resource(old, etag='"v1"', faults=[Fault("cut", at=at), Fault("ignore_if_range")])
    )

    def change() -> None:
        resource.body, resource.etag = new, '"v2"'

    engine = make_engine(ChangeOnRetry(change))
    engine.offline(product(sim.url("/f")))

    assert stored(engine) == new
    requests = served(sim, "/f")
    assert [(s.status, s.if_range) for s in requests] == [(200, None), (206, '"v1"'), (200, None)]


def test_206_with_a_different_total_is_not_appended(sim: NetSim, make_engine) -> None:
    old, new = make_body(30), make_body(31, size=400_000)
    at = 100_000
    resource = sim.add("/f", Resource(old, etag='"same"', faults=[Fault("cut", at=at)]))

    def change() -> None:
        resource.body = new  # a careless server: new bytes, same ETag, other length

    engine = make_engine(ChangeOnRetry(change))
    engine.offline(product(sim.url("/f")))

    assert stored(engine) == new
    assert [s.status for s in served(sim, "/f")] == [200, 206, 200]


def test_last_modified_is_the_validator_without_a_strong_etag(sim: NetSim, make_engine) -> None:
    old, new = make_body(40), make_body(41)
    at = 100_000
    resource = sim.add(
        "/f",
        Resource(
            old,
            etag="",  # no ETag at all
            last_modified="Wed, 21 Oct 2026 07:28:00 GMT",
            faults=[Fault("cut", at=at), Fault("ignore_if_range")],
        ),
    )

    def change() -> None:
        resource.body, resource.last_modified = new, "Thu, 22 Oct 2026 07:28:00 GMT"

    engine = make_engine(ChangeOnRetry(change))
    engine.offline(product(sim.url("/f")))

    assert stored(engine) == new
    requests = served(sim, "/f")
    assert requests[1].if_range == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert [s.status for s in requests] == [200, 206, 200]


def test_weak_etag_falls_back_to_last_modified(sim: NetSim, make_engine) -> None:
    at = 100_000
    resource = sim.add("/f", Resource(BODY, etag='W/"weak"', faults=[Fault("cut", at=at)]))
    engine = make_engine()

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    second = served(sim, "/f")[1]
    assert (second.status, second.if_range) == (206, resource.last_modified)
    assert sent(sim, "/f") == len(BODY)


def test_body_shorter_than_its_content_length_is_retried(sim: NetSim, make_engine) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("short")]))
    listener = RecordingListener()
    engine = make_engine(listener)

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    assert len(retry_events(listener)) == 1
    assert listener.names()[-1] == "completed"
    # the length the server claimed was wrong, so the bytes are not trusted: fetched again
    assert sent(sim, "/f") <= 2 * len(BODY)


def test_short_body_on_a_resumed_request_completes(sim: NetSim, make_engine) -> None:
    at = 100_000
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at), Fault("short")]))
    engine = make_engine()

    engine.offline(product(sim.url("/f")))

    assert stored(engine) == BODY
    # a 206 whose Content-Length disagrees with its Content-Range is refused (nothing of it
    # written), so the retry fetches the whole file again
    assert sent(sim, "/f") <= 2 * len(BODY) + SLACK


# -- outages: pause and continue without using attempts -----------------------------------


def test_outage_longer_than_the_retry_budget_pauses_and_continues(
    sim: NetSim, make_engine, clock: FakeClock
) -> None:
    at = 100_000
    resource = sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at)]))
    listener = StopServerOnRetry(sim)
    down_for = 60  # probes, one per fake second: longer than 1+2+4+8+16 s of retries
    seen_states: list[DownloadState] = []
    revived: list[NetSim] = []

    def probe(host: str, port: int) -> bool:
        assert (host, port) == ("127.0.0.1", sim.port)
        entry = engine.store.latest_download(KEY)
        assert entry is not None
        seen_states.append(entry.state)
        if len(seen_states) < down_for:
            return False
        revived.append(revive(sim))
        return True

    monitor = NetworkMonitor(probe=probe, sleep=clock.sleep, clock=clock.monotonic)
    engine = make_engine(listener, network_monitor=monitor, retries=3)
    try:
        assert engine.offline(product(sim.url("/f"))) is True
        back = revived[0]
        assert stored(engine) == BODY
        [resumed] = served(back, "/f")
        assert (resumed.status, resumed.range, resumed.if_range) == (
            206,
            f"bytes={at}-",
            resource.etag,
        )
        assert sent(sim, "/f") + sent(back, "/f") == len(BODY)
    finally:
        for server in revived:
            server.stop()

    assert listener.names() == ["started", "retrying", "paused", "unpaused", "completed"]
    paused_reason = next(detail for name, _, detail in listener.events if name == "paused")
    assert "waiting for network" in paused_reason
    # the first probe decides it is an outage (the host refuses connections); then PAUSED
    assert seen_states[0] is DownloadState.IN_PROGRESS
    assert set(seen_states[1:]) == {DownloadState.PAUSED}
    assert clock.now - 1_800_000_000.0 >= down_for - 1  # longer than the whole retry budget
    entry = engine.store.latest_download(KEY)
    assert entry is not None
    assert entry.state is DownloadState.COMPLETED
    assert entry.attempt_count == 1  # the outage used no attempts


def test_outage_with_the_real_tcp_probe(sim: NetSim, make_engine, clock: FakeClock) -> None:
    at = 100_000
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at)]))
    listener = StopServerOnRetry(sim)
    revived: list[NetSim] = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 40 and not revived:
            revived.append(revive(sim))

    monitor = NetworkMonitor(sleep=sleep, clock=clock.monotonic)
    engine = make_engine(listener, network_monitor=monitor)
    try:
        engine.offline(product(sim.url("/f")))
        assert stored(engine) == BODY
        assert sent(sim, "/f") + sent(revived[0], "/f") == len(BODY)
    finally:
        for server in revived:
            server.stop()
    assert listener.names() == ["started", "retrying", "paused", "unpaused", "completed"]


def test_outage_past_the_network_timeout_fails_and_resume_continues(
    sim: NetSim, make_engine, clock: FakeClock, home: Path
) -> None:
    at = 100_000
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=at)]))
    listener = StopServerOnRetry(sim)
    probes: list[float] = []

    def probe(host: str, port: int) -> bool:
        probes.append(clock.now)
        return False

    monitor = NetworkMonitor(probe=probe, sleep=clock.sleep, clock=clock.monotonic)
    engine = make_engine(listener, network_monitor=monitor, network_timeout=30.0)

    with pytest.raises(NetworkUnavailable, match="network unavailable"):
        engine.offline(product(sim.url("/f")))

    assert listener.names() == ["started", "retrying", "paused", "failed"]
    assert probes[-1] - probes[0] == pytest.approx(30.0)
    entry = engine.store.latest_download(KEY)
    assert entry is not None
    assert (entry.state, entry.error_kind) == (DownloadState.FAILED, ErrorKind.NETWORK)
    assert partial_files(home)  # kept for resume

    back = revive(sim)
    try:
        [result] = engine.resume()
        assert result.error is None
        assert stored(engine) == BODY
        [resumed] = served(back, "/f")
        assert resumed.range == f"bytes={at}-"
        assert sent(sim, "/f") + sent(back, "/f") == len(BODY)
    finally:
        back.stop()


def test_delete_during_an_outage_cancels_without_waiting_for_the_network(
    sim: NetSim, make_engine, clock: FakeClock, home: Path
) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=100_000)]))
    listener = StopServerOnRetry(sim)
    probes: list[float] = []

    def probe(host: str, port: int) -> bool:
        probes.append(clock.now)
        if len(probes) == 3:
            # what `delete` in another process does while this one holds the lock
            assert engine.store.downloads.request_cancel(KEY) == 1
        return False

    monitor = NetworkMonitor(probe=probe, sleep=clock.sleep, clock=clock.monotonic)
    engine = make_engine(listener, network_monitor=monitor)  # network timeout: 120 s

    with pytest.raises(DownloadCancelled):
        engine.offline(product(sim.url("/f")))

    assert len(probes) <= 4  # noticed at the next probe, not after the network timeout
    assert listener.names() == ["started", "retrying", "paused", "failed"]
    entry = engine.store.latest_download(KEY)
    assert entry is not None and entry.state is DownloadState.CANCELLED
    assert partial_files(home) == []


def test_without_network_awareness_an_outage_uses_the_retries(
    sim: NetSim, make_engine, clock: FakeClock
) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=100_000)]))
    listener = StopServerOnRetry(sim)
    engine = make_engine(listener, network_aware_downloads=False, retries=2)

    with pytest.raises(NetworkError, match="cannot connect") as excinfo:
        engine.offline(product(sim.url("/f")))

    assert not isinstance(excinfo.value, NetworkUnavailable)
    assert "paused" not in listener.names()
    # the cut made progress (attempt 1), the refusals did not (2, then 3 > retries)
    assert [a for a, _, _ in retry_events(listener)] == [1, 2]


def test_a_host_that_never_answered_is_not_an_outage(make_engine, clock: FakeClock) -> None:
    url = f"http://127.0.0.1:{free_port()}/f"
    listener = RecordingListener()
    engine = make_engine(listener, retries=2, connect_timeout=2.0)

    with pytest.raises(NetworkError, match=r"cannot connect to 127\.0\.0\.1") as excinfo:
        engine.offline(product(url))

    assert not isinstance(excinfo.value, NetworkUnavailable)
    assert listener.names() == ["started", "retrying", "retrying", "failed"]
    assert sum(clock.sleeps) == pytest.approx(1 + 2)


# -- permanent and unknown errors -----------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_permanent_http_errors_fail_at_once_and_leave_nothing(
    status: int, sim: NetSim, make_engine, clock: FakeClock, home: Path
) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=status)]))
    listener = RecordingListener()
    engine = make_engine(listener)

    with pytest.raises(HTTPStatusError, match=f"HTTP {status}") as excinfo:
        engine.offline(product(sim.url("/f")))

    assert excinfo.value.status == status
    assert "127.0.0.1" in str(excinfo.value)
    assert len(served(sim, "/f")) == 1
    assert clock.sleeps == []
    assert listener.names() == ["started", "failed"]
    assert partial_files(home) == []
    assert engine.store.get_offlined(KEY) is None
    entry = engine.store.latest_download(KEY)
    assert entry is not None
    assert (entry.state, entry.error_kind) == (DownloadState.FAILED, ErrorKind.PERMANENT)


def test_missing_resource_is_404_with_one_request(sim: NetSim, make_engine, home: Path) -> None:
    engine = make_engine()
    with pytest.raises(HTTPStatusError, match=r"HTTP 404 Not Found from 127\.0\.0\.1"):
        engine.offline(product(sim.url("/nothing")))
    assert len(served(sim, "/nothing")) == 1
    assert partial_files(home) == []


def test_404_after_a_cut_drops_the_partial_bytes(sim: NetSim, make_engine, home: Path) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=100_000), Fault("status", status=404)]))
    engine = make_engine()
    with pytest.raises(HTTPStatusError):
        engine.offline(product(sim.url("/f")))
    assert len(served(sim, "/f")) == 2
    assert partial_files(home) == []


def test_unknown_error_is_retried_once(sim: NetSim, make_engine) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=300)] * 2))
    listener = RecordingListener()
    engine = make_engine(listener)

    with pytest.raises(UnknownDownloadError, match="unexpected HTTP 300"):
        engine.offline(product(sim.url("/f")))

    assert len(served(sim, "/f")) == 2
    assert listener.names() == ["started", "retrying", "failed"]


def test_unknown_error_then_success(sim: NetSim, make_engine) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("status", status=300)]))
    engine = make_engine()
    engine.offline(product(sim.url("/f")))
    assert stored(engine) == BODY


# -- what goes on the wire -------------------------------------------------------------------


def test_requests_ask_for_identity_encoding(sim: NetSim, make_engine) -> None:
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=50_000)]))
    engine = make_engine()
    engine.offline(product(sim.url("/f")))
    assert [header(s, "Accept-Encoding") for s in served(sim, "/f")] == ["identity"] * 2


def test_retry_carries_range_and_if_range_with_the_etag(sim: NetSim, make_engine) -> None:
    resource = sim.add("/f", Resource(BODY, etag='"abc123"', faults=[Fault("cut", at=70_000)]))
    engine = make_engine()
    engine.offline(product(sim.url("/f")))
    first, second = served(sim, "/f")
    assert header(first, "Range") is None and header(first, "If-Range") is None
    assert header(second, "Range") == "bytes=70000-"
    assert header(second, "If-Range") == resource.etag == '"abc123"'


def test_outage_of_a_redirect_target_is_bounded(
    sim: NetSim, make_engine, httpserver: HTTPServer
) -> None:
    """The front host still answers (302) while the CDN it redirects to is down: the pause
    probes the CDN, so it ends at the network timeout instead of looping on the front host."""
    sim.add("/f", Resource(BODY, faults=[Fault("cut", at=100_000)]))
    httpserver.expect_request("/front").respond_with_data(
        "", status=302, headers={"Location": sim.url("/f")}
    )
    listener = StopServerOnRetry(sim)
    engine = make_engine(listener, retries=2, network_timeout=30)
    with pytest.raises(NetworkUnavailable):
        engine.offline(product(httpserver.url_for("/front")))
    assert len(httpserver.log) <= 3  # one per try, never a loop
    assert listener.names().count("paused") == 1
