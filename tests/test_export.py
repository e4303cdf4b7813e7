"""`path` and `export`: where a stored product is, and a verified copy of it elsewhere."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer

from tests.hlsserver import HlsOrigin
from tests.netsim import NetSim

Cli = Callable[..., Any]
BODY = b"stored media " * 5000


def _offline(cli: Cli, httpserver: HTTPServer, path: str = "/files/My%20Song.flac") -> str:
    httpserver.expect_request(path.replace("%20", " ")).respond_with_data(BODY)
    url = httpserver.url_for(path) + "?token=s3cret"
    result = cli("offline", url, "--id", "track:42")
    assert result.exit_code == 0, result.stderr
    return url


def _dir_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_path_prints_the_stored_media_file(cli: Cli, home: Path, httpserver: HTTPServer) -> None:
    _offline(cli, httpserver)
    result = cli("path", "track:42")
    assert result.exit_code == 0
    media = Path(result.stdout.strip())
    assert media.read_bytes() == BODY and media.is_relative_to(home / "store")
    listed = json.loads(cli("path", "track:42", "--json").stdout)
    assert listed == [
        {
            "product": "track:42",
            "media_path": str(media),
            "license_path": None,
            "size": len(BODY),
            "sha256": hashlib.sha256(BODY).hexdigest(),
            "license_size": None,
            "license_sha256": None,
            "hls": False,
        }
    ]


def test_path_of_a_product_not_stored_is_exit_1_and_the_others_still_print(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    _offline(cli, httpserver)
    result = cli("path", "track:7", "track:42")
    assert result.exit_code == 1
    assert "track:7: not offlined" in result.stderr
    assert result.stdout.strip().endswith(".media")


def test_path_of_a_changed_product_says_it_is_not_valid(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    _offline(cli, httpserver)
    media = Path(cli("path", "track:42").stdout.strip())
    media.write_bytes(b"changed")
    result = cli("path", "track:42")
    assert result.exit_code == 1
    assert "track:42: not valid: media file changed" in result.stderr
    assert "validate --repair" in result.stderr


def test_state_json_gives_the_stored_paths_size_and_sha256(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    _offline(cli, httpserver)
    (row,) = json.loads(cli("state", "--json").stdout)
    assert row["product"] == "track:42" and row["state"] == "OFFLINED_AND_VALID"
    assert Path(row["media_path"]).read_bytes() == BODY
    assert row["size"] == len(BODY) and row["sha256"] == hashlib.sha256(BODY).hexdigest()


def test_export_into_a_folder_keeps_the_urls_last_segment_made_safe(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    _offline(cli, httpserver)
    media = Path(cli("path", "track:42").stdout.strip())
    before = media.stat()
    out = tmp_path / "music"
    out.mkdir()
    result = cli("export", "track:42", str(out))
    assert result.exit_code == 0, result.stderr
    target = out / "My_Song.flac"
    assert result.stdout.strip() == str(target)
    assert target.read_bytes() == BODY
    assert _dir_listing(out) == ["My_Song.flac"]  # no temporary file left
    # the store is only read: same file, same time, and the copy is not the stored inode
    after = media.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_nlink,
    )
    assert target.stat().st_ino != after.st_ino
    target.write_bytes(b"edited by the user")
    assert cli("validate", "track:42").exit_code == 0


def test_export_never_overwrites_without_force(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    _offline(cli, httpserver)
    target = tmp_path / "song.flac"
    target.write_bytes(b"mine")
    refused = cli("export", "track:42", str(target))
    assert refused.exit_code == 2
    assert f"{target} exists; nothing was written" in refused.stderr
    assert target.read_bytes() == b"mine"
    forced = cli("export", "track:42", str(target), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert target.read_bytes() == BODY
    assert _dir_listing(tmp_path) == ["home", "song.flac"]


def test_export_of_a_copy_that_fails_its_hash_writes_nothing(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """Bytes changed in the store with the size and time kept (bit rot): the cheap check
    passes, the copy's SHA-256 does not, and DEST is left as it was."""
    _offline(cli, httpserver)
    media = Path(cli("path", "track:42").stdout.strip())
    info = media.stat()
    data = bytearray(media.read_bytes())
    data[10] ^= 1
    media.write_bytes(bytes(data))
    os.utime(media, ns=(info.st_atime_ns, info.st_mtime_ns))
    out = tmp_path / "out"
    out.mkdir()
    result = cli("export", "track:42", str(out / "x.flac"))
    assert result.exit_code == 1
    assert "does not match the SHA-256 recorded at download; nothing was written" in result.stderr
    assert _dir_listing(out) == []


def test_export_of_a_product_not_stored_and_to_a_missing_folder(
    cli: Cli, home: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    missing = cli("export", "track:9", str(tmp_path))
    assert missing.exit_code == 1 and "track:9: not offlined" in missing.stderr
    _offline(cli, httpserver)
    nowhere = cli("export", "track:42", str(tmp_path / "no" / "such" / "x.flac"))
    assert nowhere.exit_code == 2
    assert "does not exist" in nowhere.stderr


def test_export_of_an_hls_product_is_a_folder_that_plays(
    cli: Cli, home: Path, sim: NetSim, tmp_path: Path
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,), audio=True, key=True)
    assert cli("offline", "track:1", "--source", origin.source).exit_code == 0
    playlist = Path(cli("path", "track:1").stdout.strip())
    assert playlist.name == "index.m3u8" and playlist.parent.name.endswith(".hls")
    dest = tmp_path / "film"
    result = cli("export", "track:1", str(dest))
    assert result.exit_code == 0, result.stderr
    assert _dir_listing(dest) == _dir_listing(playlist.parent)
    for name in _dir_listing(dest):
        assert (dest / name).read_bytes() == (playlist.parent / name).read_bytes()
    # into an existing folder: a folder named after the product
    again = cli("export", "track:1", str(tmp_path))
    assert again.exit_code == 0, again.stderr
    assert (tmp_path / "track-1" / "index.m3u8").is_file()
    assert cli("export", "track:1", str(tmp_path)).exit_code == 2
    assert cli("export", "track:1", str(tmp_path), "--force").exit_code == 0
    assert _dir_listing(tmp_path) == ["film", "home", "track-1"]
