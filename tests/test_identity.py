"""Product identity (SPEC.md): only credential values are hidden, whole names from a fixed
list; URLs with control characters are refused; names and server text print escaped; a
database written by the release before (schema 2, old substring rule) keeps working."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from offline_cli.errors import DownloadError, UsageError
from offline_cli.models import MediaProduct, check_url
from offline_cli.paths import Layout
from offline_cli.redaction import REDACTED, escape_controls, redact_url, scrub_urls
from offline_cli.store import SCHEMA_VERSION

SECRET = "s3cr3t-VALUE-42"


def _by_query(server: HTTPServer, path: str = "/export") -> None:
    """Answer ``path`` with a body that depends on the whole query string."""

    def handler(request: Request) -> Response:
        return Response(b"body for " + request.query_string * 50, content_type="text/plain")

    server.expect_request(path).respond_with_handler(handler)


def _store_bytes(home: Path) -> bytes:
    return b"".join(
        (home / n).read_bytes() for n in ("offline.db", "offline.db-wal") if (home / n).exists()
    )


def _keys(home: Path) -> list[str]:
    conn = sqlite3.connect(home / "offline.db")
    try:
        return sorted(r[0] for r in conn.execute("SELECT product_key FROM offlined_entries"))
    finally:
        conn.close()


# -- identity: whole names, everything else counts ---------------------------------------------


def test_urls_differing_in_a_non_credential_parameter_are_two_products(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    _by_query(httpserver)
    cats = httpserver.url_for("/export") + "?keyword=cats&author=me&design=1"
    dogs = httpserver.url_for("/export") + "?keyword=dogs&author=me&design=1"
    assert cli("offline", cats).exit_code == 0
    second = cli("offline", dogs)
    assert second.exit_code == 0, second.output
    assert "already offline" not in second.output
    assert sorted(cli("state").stdout.splitlines()) == sorted(
        [f"{cats}\tOFFLINED_AND_VALID", f"{dogs}\tOFFLINED_AND_VALID"]
    )
    conn = sqlite3.connect(home / "offline.db")
    paths = dict(conn.execute("SELECT product_key, media_path FROM offlined_entries"))
    conn.close()
    assert b"keyword=cats" in Path(paths[cats]).read_bytes()
    assert b"keyword=dogs" in Path(paths[dogs]).read_bytes()


def test_the_same_file_behind_two_signed_urls_is_one_product(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a.mp4").respond_with_data(b"x" * 5000)
    base = httpserver.url_for("/a.mp4")
    first = f"{base}?X-Amz-Date=20260101T000000Z&X-Amz-Signature=aaa&Token=t1"
    second = f"{base}?X-Amz-Date=20260202T000000Z&X-Amz-Signature=bbb&Token=t2"
    assert cli("offline", first).exit_code == 0
    again = cli("offline", second)
    assert again.exit_code == 0
    assert "already offline and valid" in again.stderr
    assert len(httpserver.log) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # the names the issue found missing
        (f"https://h/a?pwd={SECRET}&x=1", "https://h/a?pwd=REDACTED&x=1"),
        (f"https://h/a?PASS={SECRET}", "https://h/a?PASS=REDACTED"),
        (f"https://h/cb?code={SECRET}&state=9", "https://h/cb?code=REDACTED&state=9"),
        (f"https://h/a?hmac={SECRET}", "https://h/a?hmac=REDACTED"),
        (f"https://h/a?api_key={SECRET}", "https://h/a?api_key=REDACTED"),
        # case-insensitive and percent-encoded names still match
        (f"https://h/a?x-amz-signature={SECRET}", "https://h/a?x-amz-signature=REDACTED"),
        (f"https://h/a?%74oken={SECRET}", "https://h/a?%74oken=REDACTED"),
        # path parameters and fragments
        (f"https://h/v.mp4;token={SECRET}", "https://h/v.mp4;token=REDACTED"),
        (
            f"https://h/d;jsessionid={SECRET};lang=en/v.mp4?q=1",
            "https://h/d;jsessionid=REDACTED;lang=en/v.mp4?q=1",
        ),
        (
            f"https://h/cb#access_token={SECRET}&token_type=bearer",
            "https://h/cb#access_token=REDACTED&token_type=bearer",
        ),
        (f"https://h/a?x=1;sig={SECRET}", "https://h/a?x=1;sig=REDACTED"),
        # names that merely contain a credential word are identity, not secrets
        (
            "https://h/export?keyword=cats&author=me&design=x&monkey=1&passage=2&keys=3",
            "https://h/export?keyword=cats&author=me&design=x&monkey=1&passage=2&keys=3",
        ),
        # everything else is kept byte for byte (no re-encoding of other parameters)
        (
            f"https://h/a%20b?q=a+b&r=a%20b&empty=&flag&token={SECRET}#frag",
            "https://h/a%20b?q=a+b&r=a%20b&empty=&flag&token=REDACTED#frag",
        ),
    ],
)
def test_redaction_hides_listed_names_only(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        f"http://[::1/a?token={SECRET}",  # urlsplit raises on this one
        f"http://u:{SECRET}@[bad/x",
    ],
)
def test_an_unparseable_url_is_never_printed_unredacted(url: str) -> None:
    assert SECRET not in redact_url(url)
    assert SECRET not in scrub_urls(f"cannot fetch {url}")


def test_credentials_in_path_parameters_and_fragments_never_reach_the_store(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/v.mp4;pwd=" + SECRET).respond_with_data(b"v" * 3000)
    url = httpserver.url_for("/v.mp4") + f";pwd={SECRET}?code={SECRET}#access_token={SECRET}"
    result = cli("offline", url)
    assert result.exit_code == 0, result.output
    assert SECRET.encode() not in _store_bytes(home)
    assert SECRET not in cli("state").stdout
    assert _keys(home) == [redact_url(url)]
    # the vault (0600) keeps the full URL, so resume and repair can fetch again
    vault = json.loads(Layout(home).credentials_file.read_text())
    assert vault == {redact_url(url): url}


# -- control characters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "http://h/a\x1b[2Jb",
        "http://h/a\x00b",
        "http://h/a\x7fb",
        "http://h/a\x9b31mb",  # C1 CSI: one character that starts an escape sequence
        "http://h/a\u202eb",
    ],
)
def test_check_url_refuses_control_characters(bad: str) -> None:
    with pytest.raises(UsageError, match="control characters") as info:
        check_url(bad)
    assert not any(c in str(info.value) for c in "\x1b\x00\x7f\x9b\u202e")


def test_url_with_escape_sequence_is_refused_as_argument_and_in_list_file(
    cli: Callable[..., Any], home: Path, tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/ok").respond_with_data(b"ok")
    hostile = httpserver.url_for("/a") + "\x1b]0;owned\x07\x1b[2J"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{httpserver.url_for('/ok')}\n{hostile}\n", encoding="utf-8")
    for args in (("offline", hostile), ("offline", "-i", str(listing))):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "control characters" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert "Traceback" not in result.output
    # nothing changed: no entry, nothing fetched (not even the good line before it)
    assert len(httpserver.log) == 0
    assert cli("state").stdout == ""


@pytest.mark.parametrize("separator", ["\x85", "\x1e", "\u2028", "\x0b", "\x0c"])
def test_a_control_in_a_list_file_line_is_refused_not_taken_as_a_line_break(
    cli: Callable[..., Any], home: Path, tmp_path: Path, httpserver: HTTPServer, separator: str
) -> None:
    httpserver.expect_request("/a").respond_with_data(b"a")
    httpserver.expect_request("/b").respond_with_data(b"b")
    listing = tmp_path / "list.txt"
    line = httpserver.url_for("/a") + separator + httpserver.url_for("/b")
    listing.write_text(line + "\n", encoding="utf-8")
    result = cli("offline", "-i", str(listing))
    assert result.exit_code == 2, result.output
    assert "control characters" in result.stderr
    assert len(httpserver.log) == 0


def test_a_stored_name_with_controls_prints_escaped(cli: Callable[..., Any], home: Path) -> None:
    """An entry left by the old crash path (issue 7, item 15) must not drive the terminal."""
    assert cli("cleanup").exit_code == 0  # creates the store (`state` only reads)
    evil = "http://h/a\x1b]0;owned\x07\x1b[2J\x9b"
    conn = sqlite3.connect(home / "offline.db")
    conn.execute(
        "INSERT INTO download_entries (id, product_key, product_type, product_id, state,"
        " progress, attempt_count, created_at, updated_at, bytes_done, cancel_requested,"
        " resume_info, from_source) VALUES ('d1', ?, 'file', ?, 'FAILED', 0, 1, 1, 1, 0, 0,"
        " '{}', 0)",
        (evil, evil),
    )
    conn.commit()
    conn.close()
    for args in (("state",), ("state", "--json")):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.output), (args, result)
    assert "http://h/a\\x1b]0;owned\\x07\\x1b[2J\\x9b\tNOT_OFFLINED" in cli("state").stdout


def _one_shot_server(status_line: bytes) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(status_line + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/m"
    finally:
        sock.close()


@pytest.fixture
def evil_reason_server() -> Iterator[str]:
    yield from _one_shot_server(b"HTTP/1.1 404 Not\x1b]0;owned\x07\x1b[2JFound")


def test_server_reason_phrase_with_escapes_prints_escaped(
    cli: Callable[..., Any], home: Path, evil_reason_server: str
) -> None:
    result = cli("offline", evil_reason_server)
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    # The standard phrase of the status, never what the server put there (issue 11).
    assert "HTTP 404 Not Found from 127.0.0.1" in result.stderr
    assert "owned" not in result.stderr


def test_errors_escape_controls_once_for_every_printer() -> None:
    exc = DownloadError("bad \x1b[31m\u202e", product="x\x00", hint="h\x9b")
    assert str(exc) == "x\\x00: bad \\x1b[31m\\u202e"
    assert exc.hint == "h\\x9b"
    assert escape_controls("a\tb\nc", keep="\t") == "a\tb\\x0ac"


# -- a database written by the previous release (schema 2) -------------------------------------

# The rule of schema 2, verbatim: any parameter whose name *contains* one of these words.
_OLD_SECRET_RE = re.compile(
    r"token|key|sig|signature|secret|password|passwd|auth|credential|policy|session|jwt|hdnts",
    re.IGNORECASE,
)


def _old_redact_url(url: str) -> str:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_OLD_SECRET_RE.search(name) for name, _ in pairs):
            query = urlencode([(n, REDACTED if _OLD_SECRET_RE.search(n) else v) for n, v in pairs])
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _rename_everywhere(home: Path, renames: dict[str, str]) -> None:
    """Replace each name (product key, id or URL) by another in every table and checkpoint,
    and move each product's folder to the one its old name gives, as the old release kept it."""
    layout = Layout(home)
    conn = sqlite3.connect(layout.database)
    try:
        for new, old in renames.items():
            folder, old_folder = layout.product_dir(new), layout.product_dir(old)
            if folder.is_dir() and folder != old_folder:
                folder.rename(old_folder)
                for column in ("media_path", "license_path"):
                    conn.execute(
                        f"UPDATE offlined_entries SET {column} = replace({column}, ?, ?)",
                        (f"{folder}/", f"{old_folder}/"),
                    )
            for table, column in (
                ("download_entries", "product_key"),
                ("download_entries", "product_id"),
                ("download_entries", "media_url"),
                ("offlined_entries", "product_key"),
                ("offlined_entries", "product_id"),
                ("offlined_entries", "source_url"),
                ("metric_events", "product_key"),
            ):
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (old, new))
            for row_id, info in conn.execute(
                "SELECT id, resume_info FROM download_entries"
            ).fetchall():
                conn.execute(
                    "UPDATE download_entries SET resume_info = ? WHERE id = ?",
                    (info.replace(json.dumps(new), json.dumps(old)), row_id),
                )
        conn.commit()
    finally:
        conn.close()


def _make_schema_2(home: Path, full_urls: list[str], *, vault_knows: bool = True) -> None:
    """Rewrite a store made by this release into what the previous one wrote for the same
    downloads: the same tables, names and URLs redacted by the old rule, the vault keyed by
    those names, and user_version 2."""
    _rename_everywhere(home, {redact_url(u): _old_redact_url(u) for u in full_urls})
    _set_user_version(home, 2)
    vault = {_old_redact_url(u): u for u in full_urls if vault_knows and _old_redact_url(u) != u}
    Layout(home).credentials_file.write_text(json.dumps(vault), encoding="utf-8")


def _set_user_version(home: Path, version: int) -> None:
    conn = sqlite3.connect(Layout(home).database)
    try:
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()


def _user_version(home: Path) -> int:
    conn = sqlite3.connect(home / "offline.db")
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_schema_2_store_is_renamed_by_the_new_rule_and_keeps_working(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    _by_query(httpserver)
    base = httpserver.url_for("/export")
    cats = f"{base}?keyword=cats&token={SECRET}"
    plain = f"{base}?format=csv"
    for url in (cats, plain):
        assert cli("offline", url).exit_code == 0
    _make_schema_2(home, [cats, plain])
    old_cats = _old_redact_url(cats)
    assert "keyword=REDACTED" in old_cats and old_cats in _keys(home)

    listed = cli("state")
    assert listed.exit_code == 0, listed.output
    assert _user_version(home) == SCHEMA_VERSION == 4
    assert sorted(_keys(home)) == sorted([redact_url(cats), plain])
    assert f"{redact_url(cats)}\tOFFLINED_AND_VALID" in listed.stdout
    # the old name is gone from the vault; the new one reveals the full URL
    vault = json.loads(Layout(home).credentials_file.read_text())
    assert vault == {redact_url(cats): cats}
    # the product answers to its URL, and a URL that differs in keyword is a new product
    assert cli("state", cats).stdout.strip() == "OFFLINED_AND_VALID"
    assert cli("validate").exit_code == 0
    dogs = f"{base}?keyword=dogs&token={SECRET}"
    fetched = cli("offline", dogs)
    assert fetched.exit_code == 0 and "already offline" not in fetched.output
    # delete finds the files through the renamed entry and forgets the credentials
    assert cli("delete", cats, dogs, plain).exit_code == 0
    assert _keys(home) == []
    assert json.loads(Layout(home).credentials_file.read_text()) == {}
    assert not [p for p in Layout(home).store_dir.rglob("*") if p.is_file()]


def test_schema_2_names_the_vault_does_not_know_are_kept(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    _by_query(httpserver)
    cats = httpserver.url_for("/export") + "?keyword=cats"
    assert cli("offline", cats).exit_code == 0
    _make_schema_2(home, [cats], vault_knows=False)
    old_name = _old_redact_url(cats)
    assert cli("state").exit_code == 0
    assert _keys(home) == [old_name]
    assert cli("state", old_name).stdout.strip() == "OFFLINED_AND_VALID"
    assert cli("delete", old_name).exit_code == 0


def test_schema_2_raw_values_the_new_rule_hides_move_into_the_vault(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    """The old rule stored ``pwd=...`` in clear: the migration hides it, resume still works."""
    _by_query(httpserver)
    url = httpserver.url_for("/export") + f"?pwd={SECRET}"
    assert cli("offline", url).exit_code == 0
    _make_schema_2(home, [url])
    # what the old release also left in clear: an error quoting the URL, and the metrics of
    # a product deleted since
    conn = sqlite3.connect(home / "offline.db")
    conn.execute("UPDATE download_entries SET last_error = ?", (f"HTTP 503 from {url}",))
    conn.execute(
        "INSERT INTO metric_events (at, event, product_key, detail) VALUES (1, 'failed', ?, ?)",
        (f"https://gone.example/x?pwd={SECRET}", f"cannot fetch https://u:{SECRET}@gone/"),
    )
    conn.commit()
    conn.close()
    assert SECRET.encode() in _store_bytes(home)
    assert cli("state").exit_code == 0
    conn = sqlite3.connect(home / "offline.db")
    conn.execute("VACUUM")  # the old pages may linger in free space until then
    conn.close()
    assert SECRET.encode() not in _store_bytes(home)
    assert _keys(home) == [redact_url(url)]
    assert cli("state", url).stdout.strip() == "OFFLINED_AND_VALID"
    assert cli("validate", "--repair", url).exit_code == 0
    product = MediaProduct.from_url(url)
    assert product.key == redact_url(url)


def test_schema_2_products_that_would_now_share_a_name_are_not_merged(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    """``code`` was not a credential before, so ``?code=1`` and ``?code=2`` were two stored
    products under their raw URLs; today both are named ``?code=REDACTED``. The one completed
    last takes that name, the other keeps its own, and neither is ever fetched from the
    other's URL."""
    _by_query(httpserver)
    first = httpserver.url_for("/export") + "?code=1"
    second = httpserver.url_for("/export") + "?code=2"
    for url in (first, second):
        assert cli("offline", url).exit_code == 0
        _rename_everywhere(home, {redact_url(url): url})  # as the old release named it
    _set_user_version(home, 2)
    # the old release sealed nothing for them: ``code`` was no credential
    Layout(home).credentials_file.write_text("{}", encoding="utf-8")
    assert cli("state").exit_code == 0
    assert _user_version(home) == SCHEMA_VERSION
    shared = redact_url(second)
    assert _keys(home) == sorted([first, shared])
    assert json.loads(Layout(home).credentials_file.read_text()) == {shared: second}
    conn = sqlite3.connect(home / "offline.db")
    sources = dict(conn.execute("SELECT product_key, source_url FROM offlined_entries"))
    conn.close()
    assert sources == {first: first, shared: shared}
    checked = cli("validate", "--repair")
    assert checked.exit_code == 0, checked.output
    assert sorted(checked.stdout.splitlines()) == sorted([f"{first}\tVALID", f"{shared}\tVALID"])
    # today's rule: any ``?code=`` URL of that file is the product completed last
    again = cli("offline", first)
    assert again.exit_code == 0 and "already offline and valid" in again.stderr


def test_schema_2_store_with_a_lone_surrogate_in_a_checkpoint_still_opens(
    cli: Callable[..., Any], home: Path, httpserver: HTTPServer
) -> None:
    _by_query(httpserver)
    url = f"{httpserver.url_for('/export')}?keyword=cats&token={SECRET}"
    assert cli("offline", url).exit_code == 0
    _make_schema_2(home, [url])
    conn = sqlite3.connect(home / "offline.db")
    # JSON's escape for a lone surrogate: no release wrote it, a damaged database may hold it
    conn.execute(
        "UPDATE download_entries SET resume_info = ?",
        ['{"media": {"url": "http://127.0.0.1:1/m?token=\\ud800", "total": 1}}'],
    )
    conn.commit()
    conn.close()

    listed = cli("state")

    assert listed.exit_code == 0, listed.output
    assert "Traceback" not in listed.output
    assert _user_version(home) == SCHEMA_VERSION
    assert cli("delete-all", "--yes").exit_code == 0
