"""Paths read from a damaged database row are never trusted (attack report, finding 1).

A row is written by hand with plain sqlite3, the way a crash, a hand edit or a hostile
program with access to the home would leave it: it names offline.db, credentials.json or
another product's media, all inside the home. `cleanup`, `delete`, `validate --repair` and a
new download must leave those files alone, say which row is wrong in one line, and still
remove the row itself where they would have. A redacted URL whose full form the vault has
forgotten is never requested.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from offline_cli.models import MediaProduct
from offline_cli.paths import Layout, product_dir_name
from offline_cli.redaction import redact_url
from tests.procutil import damage as _sql

SECRET = "s3cr3t-t0ken"
BODY = bytes(range(256)) * 200
OTHER_BODY = b"other product " * 1000


def _column(home: Path, statement: str, params: tuple[object, ...] = ()) -> list[object]:
    conn = sqlite3.connect(home / "offline.db")
    try:
        return [row[0] for row in conn.execute(statement, params)]
    finally:
        conn.close()


def _no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, text


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "not a file of the store" in line]


@pytest.fixture
def server(httpserver: HTTPServer) -> HTTPServer:
    """/a and /b: plain files; /q.bin: only with ?token=SECRET (a signed URL)."""

    def signed(request: Request) -> Response:
        if request.args.get("token") != SECRET:
            return Response("forbidden", status=403)
        return Response(BODY)

    httpserver.expect_request("/a").respond_with_data(BODY)
    httpserver.expect_request("/b").respond_with_data(OTHER_BODY)
    httpserver.expect_request("/q.bin").respond_with_handler(signed)
    return httpserver


def _signed_url(server: HTTPServer) -> str:
    return server.url_for("/q.bin") + f"?token={SECRET}"


def _snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def _state(cli, key: str) -> str:
    return str(cli("state", key).stdout.strip())


# -- the rule itself --------------------------------------------------------------------------


def test_own_file_accepts_only_the_store_shapes(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    key, other = "file:http://h/a", "file:http://h/b"
    ident = "0123456789abcdef0123456789abcdef"
    final = layout.final_media_path(key, ident)
    assert layout.own_file(str(final), key, partial=False) == final
    assert layout.own_file(layout.final_license_path(key, ident), key, partial=False)
    assert layout.own_file(layout.partial_media_path(ident), key, partial=True, download_id=ident)
    # The home spelt another way (a doubled slash, a `.`) names the same file.
    odd = f"{layout.home}//store/./{product_dir_name(key)}/{ident}.media"
    assert layout.own_file(odd, key, partial=False) == final
    refused = [
        layout.database,
        layout.credentials_file,
        layout.credentials_lock,
        layout.store_dir / ".." / "offline.db",
        layout.partial_dir / ".." / "credentials.json",
        final.parent / ".." / product_dir_name(key) / final.name,
        layout.final_media_path(other, ident),  # another product's media
        final.parent / "extra" / final.name,
        final.with_name(f"{ident}.media.part"),
        final.with_name("notes.media"),
        layout.partial_media_path(ident),  # a partial file is not a committed one
        Path("/etc/passwd"),
        Path("store") / product_dir_name(key) / final.name,  # relative to the cwd
    ]
    for path in refused:
        assert layout.own_file(str(path), key, partial=False) is None, path
    wrong_id = "f" * 32
    assert (
        layout.own_file(layout.partial_media_path(wrong_id), key, partial=True, download_id=ident)
        is None
    )
    assert layout.own_file(str(final), key, partial=True) is None
    assert layout.own_file(None, key, partial=False) is None


# -- cleanup --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "media, license",
    [
        ("{home}/credentials.json", "{home}/offline.db"),
        ("{home}/partial/../credentials.json", "{home}/store/../offline.db"),
    ],
    ids=["named", "dotdot"],
)
def test_cleanup_never_removes_the_database_or_credentials_a_download_row_names(
    cli, home: Path, server: HTTPServer, media: str, license: str
) -> None:
    assert cli("offline", _signed_url(server)).exit_code == 0  # credentials.json exists now
    failed = cli("offline", "http://127.0.0.1:1/x", "--retries", "0", "--network-timeout", "0")
    assert failed.exit_code == 1, failed.output
    _sql(
        home,
        "UPDATE download_entries SET partial_media_path = ?, partial_license_path = ? "
        "WHERE product_key = 'http://127.0.0.1:1/x'",
        (media.format(home=home), license.format(home=home)),
    )
    vault = _snapshot(home / "credentials.json")

    cleanup = cli("cleanup", "--older-than", "0")

    assert cleanup.exit_code == 0, cleanup.output
    assert _snapshot(home / "credentials.json") == vault
    assert "partial data" not in cleanup.stdout, cleanup.stdout
    warnings = _warnings(cleanup.stderr)
    assert len(warnings) == 1 and "http://127.0.0.1:1/x" in warnings[0], cleanup.stderr
    # The database is whole, the signed product still valid, the bad row gone.
    assert _state(cli, redact_url(_signed_url(server))) == "OFFLINED_AND_VALID"
    keys = _column(home, "SELECT product_key FROM download_entries")
    assert "http://127.0.0.1:1/x" not in keys
    again = cli("cleanup", "--older-than", "0")
    assert again.exit_code == 0 and _warnings(again.stderr) == []
    _no_traceback(cleanup.output, again.output)


# -- delete ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, target", [("media_path", "credentials.json"), ("license_path", "offline.db")]
)
def test_delete_never_removes_the_database_or_credentials_an_offlined_row_names(
    cli, home: Path, server: HTTPServer, column: str, target: str
) -> None:
    signed = redact_url(_signed_url(server))
    assert cli("offline", _signed_url(server)).exit_code == 0
    plain = server.url_for("/a")
    assert cli("offline", plain).exit_code == 0
    own_folder = home / "store" / product_dir_name(MediaProduct.from_url(plain).key)
    _sql(
        home,
        f"UPDATE offlined_entries SET {column} = ? WHERE product_key = ?",
        (str(home / target), MediaProduct.from_url(plain).key),
    )
    vault = _snapshot(home / "credentials.json")

    deleted = cli("delete", plain)

    assert deleted.exit_code == 0, deleted.output
    assert _snapshot(home / "credentials.json") == vault
    warnings = _warnings(deleted.stderr)
    assert len(warnings) == 1 and str(home / target) in warnings[0], deleted.stderr
    # The row and the product's own folder are gone; everything else is as it was.
    assert not own_folder.exists()
    assert _state(cli, plain) == "NOT_OFFLINED"
    assert _state(cli, signed) == "OFFLINED_AND_VALID"
    assert SECRET in json.loads((home / "credentials.json").read_text())[signed]
    _no_traceback(deleted.output)


def test_delete_never_removes_another_products_media(cli, home: Path, server: HTTPServer) -> None:
    one, two = server.url_for("/a"), server.url_for("/b")
    assert cli("offline", one, two).exit_code == 0
    two_key = MediaProduct.from_url(two).key
    (two_media,) = _column(
        home, "SELECT media_path FROM offlined_entries WHERE product_key = ?", (two_key,)
    )
    _sql(
        home,
        "UPDATE offlined_entries SET license_path = ? WHERE product_key = ?",
        (two_media, MediaProduct.from_url(one).key),
    )
    before = _snapshot(Path(str(two_media)))

    deleted = cli("delete", one)

    assert deleted.exit_code == 0, deleted.output
    assert _snapshot(Path(str(two_media))) == before
    assert len(_warnings(deleted.stderr)) == 1, deleted.stderr
    assert _state(cli, two) == "OFFLINED_AND_VALID"
    assert _state(cli, one) == "NOT_OFFLINED"
    _no_traceback(deleted.output)


# -- validate --repair, and a download over a damaged row ------------------------------------------


def test_validate_repair_never_removes_credentials_an_offlined_row_names(
    cli, home: Path, server: HTTPServer
) -> None:
    signed = redact_url(_signed_url(server))
    assert cli("offline", _signed_url(server)).exit_code == 0
    plain = server.url_for("/a")
    assert cli("offline", plain).exit_code == 0
    _sql(
        home,
        "UPDATE offlined_entries SET media_path = ? WHERE product_key = ?",
        (str(home / "credentials.json"), MediaProduct.from_url(plain).key),
    )
    vault = _snapshot(home / "credentials.json", home / "credentials.json.lock")

    checked = cli("validate")
    assert checked.exit_code == 1, checked.output
    assert "media path is not a file of the store (not read)" in checked.output
    repaired = cli("validate", "--repair")

    # Repaired by downloading again into the store; the file the row named is untouched.
    assert repaired.exit_code == 0, repaired.output
    assert _snapshot(home / "credentials.json", home / "credentials.json.lock") == vault
    assert len(_warnings(repaired.stderr)) == 1, repaired.stderr
    assert _state(cli, plain) == "OFFLINED_AND_VALID"
    # The signed product can still be repaired with its secret, not the placeholder.
    (signed_media,) = _column(
        home, "SELECT media_path FROM offlined_entries WHERE product_key = ?", (signed,)
    )
    Path(str(signed_media)).write_bytes(b"damaged")
    again = cli("validate", "--repair")
    assert again.exit_code == 0, again.output
    assert _state(cli, signed) == "OFFLINED_AND_VALID"
    tokens = [req.args.get("token") for req, _ in server.log if req.path == "/q.bin"]
    assert tokens == [SECRET, SECRET]
    _no_traceback(checked.output, repaired.output, again.output)


def test_a_download_never_writes_where_a_damaged_download_row_points(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    answers = [Response("busy", status=503)]

    def flaky(request: Request) -> Response:
        return answers.pop() if answers else Response(BODY)

    httpserver.expect_request("/flaky").respond_with_handler(flaky)
    url = httpserver.url_for("/flaky")
    assert cli("offline", url, "--retries", "0").exit_code == 1  # kept for resume
    _sql(home, "UPDATE download_entries SET partial_media_path = ?", (str(home / "offline.db"),))

    resumed = cli("resume")

    assert resumed.exit_code == 0, resumed.output
    assert len(_warnings(resumed.stderr)) == 1, resumed.stderr
    assert _column(home, "PRAGMA integrity_check") == ["ok"]
    assert _state(cli, url) == "OFFLINED_AND_VALID"
    (media,) = _column(home, "SELECT media_path FROM offlined_entries")
    assert Path(str(media)).read_bytes() == BODY
    _no_traceback(resumed.output)


# -- a redacted URL the vault has forgotten ------------------------------------------------------


def test_a_forgotten_signed_url_is_never_requested_on_repair(
    cli, home: Path, server: HTTPServer
) -> None:
    signed = redact_url(_signed_url(server))
    assert cli("offline", _signed_url(server)).exit_code == 0
    (media,) = _column(home, "SELECT media_path FROM offlined_entries")
    Path(str(media)).write_bytes(b"damaged")
    (home / "credentials.json").write_text("{}")  # forgotten (or lost) since
    requests_before = len(server.log)

    repaired = cli("validate", "--repair")

    assert repaired.exit_code == 1, repaired.output
    line = (
        f"{signed}: its full URL is no longer known (its credentials were forgotten); "
        "give the URL again"
    )
    assert line in repaired.stdout, repaired.output
    assert len(server.log) == requests_before  # nothing was requested
    # Given again, it downloads with its secret.
    assert cli("offline", _signed_url(server)).exit_code == 0
    assert _state(cli, signed) == "OFFLINED_AND_VALID"
    _no_traceback(repaired.output)


def test_a_forgotten_signed_url_is_never_requested_on_resume(
    cli, home: Path, server: HTTPServer
) -> None:
    url = server.url_for("/q.bin") + "?token=wrong"  # 403: FAILED, permanent
    assert cli("offline", url).exit_code == 1
    _sql(home, "UPDATE download_entries SET state = 'PAUSED'")
    (home / "credentials.json").write_text("{}")
    requests_before = len(server.log)

    resumed = cli("resume")

    assert resumed.exit_code == 1, resumed.output
    error = [line for line in resumed.stderr.splitlines() if "error:" in line]
    assert error == [
        f"offline-cli: error: {redact_url(url)}: its full URL is no longer known (its "
        "credentials were forgotten); give the URL again (hint: run `offline` with the URL, "
        "credentials included)"
    ], resumed.stderr
    assert len(server.log) == requests_before
    _no_traceback(resumed.output)


def test_a_folder_kept_from_an_older_name_stays_its_products_own(
    cli, home: Path, server: HTTPServer
) -> None:
    """Schema 3 renamed products without moving their folders: such a folder is the
    product's own (valid, deleted with it) while no other product names it."""
    one, two = server.url_for("/a"), server.url_for("/b")
    assert cli("offline", one, two).exit_code == 0
    two_key = MediaProduct.from_url(two).key
    folder = home / "store" / product_dir_name(two_key)
    legacy = folder.with_name(product_dir_name(two_key + "?sig=REDACTED"))
    folder.rename(legacy)
    _sql(
        home,
        "UPDATE offlined_entries SET media_path = replace(media_path, ?, ?) WHERE product_key = ?",
        (str(folder), str(legacy), two_key),
    )
    (two_media,) = _column(
        home, "SELECT media_path FROM offlined_entries WHERE product_key = ?", (two_key,)
    )
    validated = cli("validate")
    assert validated.exit_code == 0, validated.output
    # Another product's row naming it does not make it that product's.
    _sql(
        home,
        "UPDATE offlined_entries SET license_path = ? WHERE product_key = ?",
        (two_media, MediaProduct.from_url(one).key),
    )
    assert cli("delete", one).exit_code == 0
    assert Path(str(two_media)).read_bytes() == OTHER_BODY
    assert _state(cli, two) == "OFFLINED_AND_VALID"
    deleted = cli("delete", two)
    assert deleted.exit_code == 0 and _warnings(deleted.stderr) == [], deleted.output
    assert not Path(str(two_media)).exists()
