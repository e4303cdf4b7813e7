"""Shared fixtures: an isolated home and environment, a CLI runner, fast engines."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from offline_cli.config import Settings
from offline_cli.engine import OfflineEngine
from offline_cli.listener import OfflineEngineListener
from offline_cli.models import DownloadEntry, DownloadState, MediaProduct, ProductType
from offline_cli.paths import Layout
from tests.netsim import NetSim
from tests.procutil import Procs


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's configuration, home folder or terminal."""
    for name in list(os.environ):
        # A proxy of the machine's (HTTP_PROXY, no_proxy…) would take the loopback requests.
        if name.startswith("OFFLINE_CLI_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("TERM", "dumb")
    # platformdirs folders land in the test's tmp dir, never in the real home
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(path))
    return path


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run the command line in-process: cli("state", "--json", input="...")."""
    from offline_cli.cli import app

    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> CliResult:
        result = runner.invoke(app, list(args), input=input, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr, result.exception)

    return run


@dataclass
class RecordingListener(OfflineEngineListener):
    """Records every callback as (name, product key, detail)."""

    events: list[tuple[str, str | None, Any]] = field(default_factory=list)

    def offlining_started(self, product: MediaProduct) -> None:
        self.events.append(("started", product.key, None))

    def offlining_progressed(self, product: MediaProduct, fraction: float) -> None:
        self.events.append(("progressed", product.key, fraction))

    def offlining_completed(self, product: MediaProduct) -> None:
        self.events.append(("completed", product.key, None))

    def offlining_failed(self, product: MediaProduct, error: Exception) -> None:  # type: ignore[override]
        self.events.append(("failed", product.key, error))

    def offlined_deleted(self, product: MediaProduct) -> None:
        self.events.append(("deleted", product.key, None))

    def all_offlined_media_products_deleted(self) -> None:
        self.events.append(("all_deleted", None, None))

    def offlining_paused(self, product: MediaProduct, reason: str) -> None:
        self.events.append(("paused", product.key, reason))

    def offlining_unpaused(self, product: MediaProduct) -> None:
        self.events.append(("unpaused", product.key, None))

    def offlining_retrying(
        self, product: MediaProduct, attempt: int, delay: float, reason: str
    ) -> None:
        self.events.append(("retrying", product.key, (attempt, delay, reason)))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events if name != "progressed"]


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(home: Path, clock: FakeClock) -> Iterator[Callable[..., OfflineEngine]]:
    """Build engines on the test home with a fake clock and sleep (retries take no time)."""
    engines: list[OfflineEngine] = []

    def make(listener: OfflineEngineListener | None = None, **kwargs: Any) -> OfflineEngine:
        settings = kwargs.pop("settings", None) or Settings(
            **{k: kwargs.pop(k) for k in list(kwargs) if k in Settings.__dataclass_fields__}
        )
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("clock", clock.time)
        kwargs.setdefault("monotonic", clock.monotonic)
        kwargs.setdefault("rand", lambda: 1.0)
        engine = OfflineEngine(home, listener, settings=settings, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine_for(
    make_engine: Callable[..., OfflineEngine],
) -> Callable[..., OfflineEngine]:
    """An engine whose HTTP goes to ``handler`` (an in-process origin, no socket)."""

    def make(
        handler: Callable[[httpx.Request], httpx.Response],
        listener: OfflineEngineListener | None = None,
        **kw: Any,
    ) -> OfflineEngine:
        return make_engine(listener, transport=httpx.MockTransport(handler), **kw)

    return make


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def sim() -> Iterator[NetSim]:
    """The one loopback origin of the tests that need real sockets (faults, stalls, outages)."""
    server = NetSim().start(poll_interval=0.02)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def procs(home: Path, tmp_path: Path) -> Iterator[Procs]:
    """Runs the real command line in child processes against ``home``."""
    runner = Procs(home, tmp_path / "procs")
    try:
        yield runner
    finally:
        runner.close()


def new_download(
    store: Any,
    key: str,
    *,
    state: DownloadState = DownloadState.PENDING,
    license_url: str | None = None,
    media_url: str | None = None,
) -> DownloadEntry:
    """A download entry of product ``key`` (``TYPE:ID``) as a download starts one, with
    the partial paths of the store's home; nothing is fetched."""
    layout = Layout(store.path.parent)
    type_name, _, product_id = key.partition(":")
    return store.downloads.create(  # type: ignore[no-any-return]
        product_key=key,
        product_type=ProductType(type_name),
        product_id=product_id,
        media_url=media_url or f"http://127.0.0.1:9/{product_id}",
        license_url=license_url,
        expected_sha256=None,
        partial_media_path=layout.partial_media_path,
        partial_license_path=layout.partial_license_path,
        state=state,
    )
