"""Planted links never make offline-cli write (or read) outside its home; the home is private.

A link planted where the store keeps its own files (database, SQLite's companions, lock
files, the credential vault) makes every command refuse the home: exit 4, one line naming
the path, and the link's target unchanged, content and mtime. Everything offline-cli creates
in the home is owner-only (folders 0700, files 0600) whatever the umask.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from offline_cli.credentials import CredentialVault
from offline_cli.engine import OfflineEngine
from offline_cli.errors import StorageError
from offline_cli.paths import Layout, product_dir_name
from offline_cli.redaction import redact_url
from tests.conftest import CliResult

BODY = b"media bytes " * 10_000
LICENSE = b"license bytes " * 100
VICTIM = b"a file of the user's, outside the home\n" * 100
OLD_NS = 1_600_000_000 * 10**9  # atime and mtime of the victim: reading it would move atime

KEY = "track:1"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim.txt"
    path.write_bytes(VICTIM)
    os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


def _assert_untouched(victim: Path, content: bytes = VICTIM) -> None:
    info = victim.stat()
    assert victim.read_bytes() == content
    assert info.st_mtime_ns == OLD_NS


def _one_line_error(result: CliResult, *needles: str) -> None:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("offline-cli: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _commands(url: str) -> list[list[str]]:
    return [
        ["state"],
        ["offline", "-q", url, "--id", KEY],
        ["delete", KEY],
        ["validate"],
        ["cleanup", "--older-than", "0"],
        ["health"],
    ]


@pytest.fixture
def served(httpserver: HTTPServer) -> str:
    httpserver.expect_request("/m").respond_with_data(BODY)
    return httpserver.url_for("/m")


# -- links where the store keeps its own files: every command refuses the home ---------------

PLANTED = [
    "offline.db",
    "offline.db-wal",
    "offline.db-shm",
    f"locks/{product_dir_name(KEY)}.lock",
    "credentials.json",
    "credentials.json.lock",
]


@pytest.mark.parametrize("name", PLANTED)
def test_a_planted_link_makes_every_command_refuse_the_home(
    cli, home: Path, served: str, victim: Path, httpserver: HTTPServer, name: str
) -> None:
    # A home made by an earlier run, with one product stored.
    assert cli("offline", "-q", served, "--id", KEY).exit_code == 0
    requests = len(httpserver.log)
    link = home / name
    link.unlink(missing_ok=True)
    link.symlink_to(victim)

    for command in _commands(served):
        result = cli(*command)

        assert result.exit_code == 4, (command, result.output)
        _one_line_error(result, str(link), "symbolic link")
        _assert_untouched(victim)
        assert link.is_symlink()
    assert len(httpserver.log) == requests  # refused before any download


@pytest.mark.parametrize("name", ["offline.db", "offline.db-wal", "locks", "credentials.json.lock"])
def test_a_link_planted_in_a_new_home_is_refused(
    cli, home: Path, served: str, victim: Path, name: str
) -> None:
    (home / "locks").mkdir(parents=True)
    link = home / name if name != "locks" else home / "locks" / f"{product_dir_name(KEY)}.lock"
    link.symlink_to(victim)

    result = cli("offline", "-q", served, "--id", KEY)

    assert result.exit_code == 4, result.output
    _one_line_error(result, str(link), "symbolic link")
    _assert_untouched(victim)


def test_a_fifo_planted_as_the_database_is_refused_not_waited_on(cli, home: Path) -> None:
    home.mkdir()
    os.mkfifo(home / "offline.db")

    result = cli("state")

    assert result.exit_code == 4
    _one_line_error(result, str(home / "offline.db"), "not a regular file")


def test_the_write_probe_never_follows_a_link(cli, home: Path, victim: Path) -> None:
    # Today's name of the probe, predictable from the pid: a link there was truncated by
    # every command, `state` included.
    home.mkdir()
    (home / f".write-probe-{os.getpid()}").symlink_to(victim)

    result = cli("state")

    assert result.exit_code == 0, result.output
    _assert_untouched(victim)


def test_a_lock_link_planted_after_the_home_was_checked_is_refused(
    make_engine: Callable[..., OfflineEngine], home: Path, victim: Path
) -> None:
    # The engine checks the home once; a link planted later is refused by the lock's own open.
    engine = make_engine()
    assert engine.store is not None  # opens the store: the home is checked now
    link = home / "locks" / f"{product_dir_name(KEY)}.lock"
    link.symlink_to(victim)

    with pytest.raises(StorageError) as caught:
        engine.is_running_elsewhere(KEY)

    assert str(link) in str(caught.value)
    _assert_untouched(victim)


def test_the_declared_filelock_refuses_a_lock_file_that_is_a_link(
    tmp_path: Path, victim: Path
) -> None:
    # Pins the lower bound in pyproject.toml: filelock before 3.20.1 truncated the target.
    from filelock import FileLock

    link = tmp_path / "x.lock"
    link.symlink_to(victim)

    with pytest.raises(OSError), FileLock(link, is_singleton=False):
        pass

    _assert_untouched(victim)


# -- the credential vault ----------------------------------------------------------------------

SECRET_URL = "https://cdn.example/m?token=hunter2"


def test_vault_refuses_a_planted_link_and_never_reads_or_writes_through_it(
    tmp_path: Path, victim: Path
) -> None:
    path = tmp_path / "credentials.json"
    path.symlink_to(victim)

    with pytest.raises(StorageError, match="symbolic link"):
        CredentialVault(path).reveal(redact_url(SECRET_URL))
    with pytest.raises(StorageError, match="symbolic link"):
        CredentialVault(path).seal(SECRET_URL)

    _assert_untouched(victim)
    assert path.is_symlink()


def test_vault_file_and_its_lock_are_owner_only(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "credentials.json"

    CredentialVault(path).seal(SECRET_URL)

    assert CredentialVault(path).reveal(redact_url(SECRET_URL)) == SECRET_URL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{path}.lock").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "credentials.json",
        "credentials.json.lock",
    ]  # no temporary file left behind


def test_vault_refuses_a_planted_lock_link(tmp_path: Path, victim: Path) -> None:
    path = tmp_path / "credentials.json"
    Path(f"{path}.lock").symlink_to(victim)

    with pytest.raises(StorageError, match=r"credentials\.json\.lock"):
        CredentialVault(path).seal(SECRET_URL)

    _assert_untouched(victim)
    assert not path.exists()


# -- validate never follows a product folder that is a link -----------------------------------


@pytest.fixture
def linked_product(cli, home: Path, served: str, tmp_path: Path) -> Path:
    """A stored product whose folder was moved outside the home and replaced by a link."""
    assert cli("offline", "-q", served, "--id", KEY).exit_code == 0
    product_dir = home / "store" / product_dir_name(KEY)
    outside = tmp_path / "elsewhere"
    product_dir.rename(outside)
    product_dir.symlink_to(outside, target_is_directory=True)
    for file in outside.iterdir():
        os.utime(file, ns=(OLD_NS, OLD_NS))
    return outside


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_atime_ns)
        for p in sorted(folder.iterdir())
    }


def test_validate_does_not_follow_a_symlinked_product_folder(
    cli, home: Path, linked_product: Path
) -> None:
    [media] = linked_product.glob("*.media")
    before = media.stat()

    result = cli("validate", KEY)

    assert result.exit_code == 1, result.output
    assert "symbolic link" in result.output
    assert "Traceback" not in result.output
    after = media.stat()
    # Never opened: reading it would have moved its (year-old) access time.
    assert after.st_atime_ns == before.st_atime_ns == OLD_NS
    assert media.read_bytes() == BODY
    assert cli("state", KEY).stdout == "OFFLINED_BUT_NOT_VALID\n"


def test_state_does_not_trust_a_symlinked_product_folder(
    cli, home: Path, served: str, tmp_path: Path
) -> None:
    assert cli("offline", "-q", served, "--id", KEY).exit_code == 0
    product_dir = home / "store" / product_dir_name(KEY)
    outside = tmp_path / "elsewhere"
    # A rename keeps sizes and times: only the link itself tells the files left the store.
    product_dir.rename(outside)
    product_dir.symlink_to(outside, target_is_directory=True)

    assert cli("state", KEY).stdout == "OFFLINED_BUT_NOT_VALID\n"


def test_validate_repair_does_not_write_through_a_symlinked_product_folder(
    cli, home: Path, linked_product: Path
) -> None:
    before = {name: (data, mtime) for name, (data, mtime, _) in _snapshot(linked_product).items()}

    result = cli("validate", "--repair", KEY)

    assert result.exit_code == 0, result.output
    after = {name: (data, mtime) for name, (data, mtime, _) in _snapshot(linked_product).items()}
    assert after == before
    product_dir = home / "store" / product_dir_name(KEY)
    assert not product_dir.is_symlink()
    [media] = product_dir.glob("*.media")
    assert media.read_bytes() == BODY
    assert cli("state", KEY).stdout == "OFFLINED_AND_VALID\n"


# -- item 13: owner-only, whatever the umask ----------------------------------------------------


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(home: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(home.lstat().st_mode)}
    for path in home.rglob("*"):
        modes[str(path.relative_to(home))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


def _assert_private(home: Path) -> dict[str, int]:
    modes = _modes(home)
    for name, mode in modes.items():
        path = home / name
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, (name, oct(mode))
    return modes


def test_home_and_every_file_in_it_are_owner_only_whatever_the_umask(
    cli, home: Path, httpserver: HTTPServer, umask: int
) -> None:
    from tests.netsim import Fault, NetSim, Resource

    httpserver.expect_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/lic").respond_with_data(LICENSE)
    secret = httpserver.url_for("/m") + "?token=hunter2"  # sealed in the credential vault
    log = home / "offline.log"
    result = cli(
        "--log-file",
        str(log),
        "offline",
        "-q",
        secret,
        "--id",
        KEY,
        "--license-url",
        httpserver.url_for("/lic"),
    )
    assert result.exit_code == 0, result.output
    sim = NetSim().start()
    try:
        # A download cut short leaves a partial file behind.
        sim.add("/cut", Resource(BODY, faults=[Fault("cut", at=30_000)]))
        failed = cli("offline", "-q", sim.url("/cut"), "--id", "track:2", "--retries", "0")
        assert failed.exit_code == 1, failed.output
    finally:
        sim.stop()

    modes = _assert_private(home)

    for name in ("offline.db", "credentials.json", "offline.log", "locks", "partial"):
        assert name in modes
    assert any(name.endswith(".media") for name in modes)
    assert any(name.endswith(".license") for name in modes)
    assert any(name.endswith(".part") for name in modes)
    assert any(name.endswith(".lock") for name in modes)


def test_database_companions_are_owner_only_while_open(
    make_engine: Callable[..., OfflineEngine], home: Path, umask: int
) -> None:
    engine = make_engine()
    engine.store.events_since(None)

    modes = _assert_private(home)

    assert {"offline.db", "offline.db-wal", "offline.db-shm"} <= set(modes)


def test_an_older_release_database_is_made_owner_only(cli, home: Path, umask: int) -> None:
    assert cli("cleanup").exit_code == 0  # creates the store (`state` only reads)
    os.chmod(home / "offline.db", 0o644)

    assert cli("state").exit_code == 0

    assert stat.S_IMODE((home / "offline.db").stat().st_mode) == 0o600


def test_layout_refuses_nothing_in_a_clean_home(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "fresh")
    layout.ensure()
    layout.ensure()  # idempotent
    assert sorted(p.name for p in layout.home.iterdir()) == [
        "locks",
        "offline.db",
        "partial",
        "store",
    ]
