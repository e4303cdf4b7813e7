"""`export` against hostile DESTs: a missing folder written as `DIR/`, FIFOs, devices and
sockets, the offline-cli home itself, names too long to look at, and control characters."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

Cli = Callable[..., Any]
BODY = b"stored media " * 5000


def _offline(cli: Cli, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/files/song.flac").respond_with_data(BODY)
    result = cli("offline", httpserver.url_for("/files/song.flac"), "--id", "track:42")
    assert result.exit_code == 0, result.stderr


def _one_error(result: Any, code: int, words: str) -> None:
    assert result.exit_code == code, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 2  # the error, and maybe its hint
    assert result.stdout == ""


def test_a_trailing_slash_names_a_folder_that_must_exist(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    _offline(cli, httpserver)
    out = tmp_path / "out"
    out.mkdir()
    result = cli("export", "track:42", f"{out}/Videos/")
    _one_error(result, 2, "does not exist")
    assert list(out.iterdir()) == []
    (out / "plain").write_bytes(b"x")
    _one_error(cli("export", "track:42", f"{out}/plain/", "--force"), 2, "is not a folder")
    assert (out / "plain").read_bytes() == b"x"
    # An existing folder still receives the file, named after the URL.
    assert cli("export", "track:42", f"{out}/").exit_code == 0
    assert (out / "song.flac").read_bytes() == BODY


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _char_device(path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a private twin of /dev/null
    return path


@pytest.mark.parametrize("make", [_fifo, _socket, _char_device])
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("inside_folder", [False, True])
def test_a_fifo_device_or_socket_is_never_replaced(
    cli: Cli,
    home: Path,
    httpserver: HTTPServer,
    tmp_path: Path,
    make: Callable[[Path], Path],
    force: bool,
    inside_folder: bool,
) -> None:
    _offline(cli, httpserver)
    out = tmp_path / "out"
    out.mkdir()
    special = make(out / "song.flac")
    before = os.lstat(special)
    dest = out if inside_folder else special
    result = cli("export", "track:42", str(dest), *(["--force"] if force else []))
    _one_error(result, 2, "is not a regular file or a folder")
    after = os.lstat(special)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert sorted(p.name for p in out.iterdir()) == ["song.flac"]


def test_force_replaces_a_symlink_and_never_writes_through_it(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    _offline(cli, httpserver)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    link = tmp_path / "link.flac"
    link.symlink_to(victim)
    _one_error(cli("export", "track:42", str(link)), 2, "exists")
    assert cli("export", "track:42", str(link), "--force").exit_code == 0
    assert not link.is_symlink() and link.read_bytes() == BODY
    assert victim.read_bytes() == b"keep me"


def test_nothing_is_exported_into_the_offline_cli_home(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    _offline(cli, httpserver)
    database = home / "offline.db"
    db_before = database.read_bytes()
    store_before = sorted(str(p) for p in (home / "store").rglob("*"))
    alias = tmp_path / "alias"
    alias.symlink_to(home)
    for dest in (
        str(database),
        f"{home}/store/",
        str(home),
        f"{alias}/offline.db",
        f"{alias}/store/",
    ):
        result = cli("export", "track:42", dest, "--force")
        _one_error(result, 2, "DEST is inside the offline-cli home")
    assert database.read_bytes() == db_before
    assert sorted(str(p) for p in (home / "store").rglob("*")) == store_before


@pytest.mark.parametrize("shape", ["name", "folder"])
def test_a_name_too_long_is_one_line_not_a_traceback(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path, shape: str
) -> None:
    _offline(cli, httpserver)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / ("n" * 300) if shape == "name" else out / ("d" * 300) / "f"
    result = cli("export", "track:42", str(dest), "--force")
    _one_error(result, 2, "File name too long")
    assert list(out.iterdir()) == []


def test_a_control_character_in_dest_is_escaped_when_printed(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    _offline(cli, httpserver)
    dest = tmp_path / "two\nlines\x1b[2J.flac"
    result = cli("export", "track:42", str(dest))
    assert result.exit_code == 0, result.stderr
    assert dest.read_bytes() == BODY
    assert result.stdout == str(tmp_path / "two\\x0alines\\x1b[2J.flac") + "\n"
