"""Defects a review of the hardened tool found: each test fails on the code before its fix."""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from offline_cli import MediaProduct, OfflineEngineListener, OfflineState
from offline_cli.errors import PermanentError

BODY = b"review" * 1000


def _run(home: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """offline-cli in a child with a time limit (what it must not do is hang)."""
    kwargs.setdefault("timeout", 30)
    env = {**os.environ, "OFFLINE_CLI_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "offline_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_log_file_that_is_a_fifo_nobody_reads_is_refused_not_waited_on(
    tmp_path: Path, home: Path
) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    # Opening the FIFO for writing would block forever: the child's time limit catches it.
    result = _run(home, "--log-file", str(fifo), "state", stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "a FIFO nobody reads" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_quiet_prints_only_what_needs_attention(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    url = httpserver.url_for("/m")
    assert cli("offline", "-q", url).exit_code == 0
    quiet = cli("validate", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    assert cli("validate").stdout == f"{url}\tVALID\n"


def test_retries_out_of_range_reads_like_every_other_number(cli, home: Path) -> None:
    for value in ("-1", "101"):
        result = cli("offline", "--retries", value, "http://127.0.0.1:9/x")
        assert result.exit_code == 2, result.output
        assert "out of range (0 to 100)" in result.stderr, result.stderr
    assert not (home / "offline.db").exists()


def test_a_license_already_expired_fails_before_anything_is_fetched(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    info = {
        "url": httpserver.url_for("/media"),
        "licenseUrl": httpserver.url_for("/license"),
        "manifestMimeType": "audio/flac",
        "licenseExpiresAt": "2000-01-01T00:00:00Z",
    }
    httpserver.expect_request("/tracks/9").respond_with_json(info)
    source = httpserver.url_for("/{type}s/{id}")

    result = cli("offline", "track:9", "--source", source)

    assert result.exit_code == 1, result.output
    assert "license expired at 2000-01-01T00:00:00+00:00" in result.stderr
    assert "Traceback" not in result.output
    assert [r.path for r, _ in httpserver.log] == ["/tracks/9"]  # no media, no license
    assert cli("state", "track:9").stdout == "NOT_OFFLINED\n"


def test_a_path_refused_on_delete_is_reported_without_suggesting_delete_again(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    url = httpserver.url_for("/m")
    assert cli("offline", "-q", url).exit_code == 0
    conn = sqlite3.connect(home / "offline.db")
    conn.execute("UPDATE offlined_entries SET license_path = ?", (str(home / "offline.db"),))
    conn.commit()
    conn.close()

    deleted = cli("delete", url)

    assert deleted.exit_code == 0, deleted.output
    [warning] = [line for line in deleted.stderr.splitlines() if "warning" in line]
    assert "not a file of the store; left in place" in warning
    assert "delete` removes it" not in warning  # it was just deleted
    assert (home / "offline.db").is_file()


def test_a_moved_home_keeps_its_products_and_cleanup_keeps_their_files(
    cli, tmp_path: Path, httpserver: HTTPServer, monkeypatch
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    httpserver.expect_request("/l").respond_with_data(b"license")
    url = httpserver.url_for("/m")
    first = tmp_path / "first-home"
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(first))
    assert cli("offline", "-q", url, "--license-url", httpserver.url_for("/l")).exit_code == 0
    moved = tmp_path / "moved-home"
    first.rename(moved)  # a restore from backup, or a new disk
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(moved))
    stored = sorted(p.name for p in (moved / "store").rglob("*") if p.is_file())

    assert cli("state", url).stdout == "OFFLINED_AND_VALID\n"
    assert cli("validate").stdout == f"{url}\tVALID\n"
    cleanup = cli("cleanup", "--older-than", "0")
    assert cleanup.exit_code == 0 and "orphan" not in cleanup.output, cleanup.output
    assert sorted(p.name for p in (moved / "store").rglob("*") if p.is_file()) == stored
    assert cli("delete", url).exit_code == 0
    assert not any(p.is_file() for p in (moved / "store").rglob("*"))
    assert not first.exists()  # nothing was written where the home used to be


def test_log_file_dev_stderr_works_when_stderr_is_a_pipe(home: Path) -> None:
    # As in CI and cron: stderr is a pipe someone reads.
    result = _run(home, "--log-file", "/dev/stderr", "state", stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr


def test_end_of_input_at_the_delete_all_prompt_is_a_no(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    url = httpserver.url_for("/m")
    assert cli("offline", "-q", url).exit_code == 0
    controller, terminal = os.openpty()
    os.write(controller, b"\x04")  # Ctrl-D at the prompt: end of input
    try:
        result = _run(home, "delete-all", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 1, result.stderr  # a no (issue 11): not bad usage
    assert "nothing deleted" in result.stderr and "interrupted" not in result.stderr
    assert cli("state", url).stdout == "OFFLINED_AND_VALID\n"


def test_the_home_spelt_another_way_keeps_its_products(
    cli, tmp_path: Path, httpserver: HTTPServer, monkeypatch
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    url = httpserver.url_for("/m")
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert cli("--home", str(link), "offline", "-q", url).exit_code == 0
    assert cli("--home", "real", "offline", "-q", url + "?second").exit_code == 0
    monkeypatch.chdir(real)  # the relative spelling now names nothing here
    stored = sorted(p for p in (real / "store").rglob("*") if p.is_file())
    assert len(stored) == 2

    for spelling in (str(real), str(link), str(tmp_path / "x" / ".." / "real")):
        assert cli("--home", spelling, "state").stdout == (
            f"{url}\tOFFLINED_AND_VALID\n{url}?second\tOFFLINED_AND_VALID\n"
        ), spelling
        cleanup = cli("--home", spelling, "cleanup", "--older-than", "0")
        assert cleanup.exit_code == 0 and "orphan" not in cleanup.output, cleanup.output
    assert sorted(p for p in (real / "store").rglob("*") if p.is_file()) == stored


class _SwapAtTheEnd(OfflineEngineListener):
    """When the last byte has arrived (before the commit), replace what was written."""

    def __init__(self, home: Path, swap: Callable[[Path], None]) -> None:
        self.home, self.swap, self.done = home, swap, False

    def offlining_bytes(self, product: MediaProduct, done: int, total: int | None) -> None:
        if not self.done and total is not None and done == total:
            self.done = True
            [partial] = (self.home / "partial").glob("*.media.part")
            self.swap(partial)


def _swap_file_for_link(victim: Path) -> Callable[[Path], None]:
    def swap(partial: Path) -> None:
        partial.unlink()
        partial.symlink_to(victim)

    return swap


def _swap_folder_for_link(elsewhere: Path) -> Callable[[Path], None]:
    def swap(partial: Path) -> None:
        elsewhere.mkdir()
        (elsewhere / partial.name).write_bytes(b"E" * len(BODY))  # same size, other bytes
        folder = partial.parent
        folder.rename(folder.with_name("partial.old"))
        folder.symlink_to(elsewhere, target_is_directory=True)

    return swap


def _swap_for_a_file_of_the_same_size(partial: Path) -> None:
    partial.unlink()
    partial.write_bytes(b"S" * len(BODY))


@pytest.mark.parametrize("how", ["file", "folder", "same-size file"])
def test_a_partial_swapped_before_the_commit_is_never_stored(
    make_engine, home: Path, tmp_path: Path, httpserver: HTTPServer, how: str
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    victim = tmp_path / "victim"
    victim.write_bytes(b"V" * len(BODY))
    swap = {
        "file": _swap_file_for_link(victim),
        "folder": _swap_folder_for_link(tmp_path / "elsewhere"),
        "same-size file": _swap_for_a_file_of_the_same_size,
    }[how]
    product = MediaProduct.from_url(httpserver.url_for("/m"))
    engine = make_engine(_SwapAtTheEnd(home, swap))

    with pytest.raises(PermanentError, match="replaced while it downloaded"):
        engine.offline(product)

    assert engine.get_offline_state(product) is OfflineState.NOT_OFFLINED
    assert not any(p.is_file() for p in (home / "store").rglob("*"))
    assert victim.read_bytes() == b"V" * len(BODY)


def test_a_list_of_millions_of_blank_lines_reads_in_bounded_memory(
    home: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "blank.txt"
    listing.write_text(" \t\n" * (8 << 20))  # 24 MiB, 8 million blank lines

    def limit_memory() -> None:
        # A list of every line took about 27 times the file; reading them one by one, 3 times.
        resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))

    result = _run(home, "offline", "-i", str(listing), timeout=60, preexec_fn=limit_memory)
    assert result.returncode == 2, result.stderr
    assert "no product given" in result.stderr and "Traceback" not in result.stderr
