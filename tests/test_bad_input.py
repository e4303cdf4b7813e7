"""Bad input: the right exit code, one line on stderr naming the problem, nothing changed."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from offline_cli.store import Store
from tests.conftest import CliResult

BODY = b"media bytes " * 10_000
SECRET = b"precious data outside the home folder"


def _one_line_error(result: CliResult, *needles: str) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("offline-cli: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _assert_store_empty(home: Path) -> None:
    if not home.exists():
        return
    for sub in ("store", "partial"):
        if (home / sub).exists():
            assert _files_under(home / sub) == [], sub
    db = home / "offline.db"
    if db.exists():
        conn = sqlite3.connect(db)
        try:
            for table in ("download_entries", "offlined_entries"):
                assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
        finally:
            conn.close()


def _assert_nothing_changed(home: Path, httpserver: HTTPServer) -> None:
    assert len(httpserver.log) == 0
    assert not home.exists()  # rejected before the store was even opened
    _assert_store_empty(home)


# -- malformed input: exit 2, nothing fetched, nothing created ------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["offline", "http://"], ["malformed URL", "'http://'"]),
        (["offline", "ftp://x/y"], ["unsupported URL scheme", "'ftp'"]),
        (["offline", "file:///etc/passwd"], ["unsupported URL scheme", "'file'"]),
        (["offline", "http:///no-host"], ["malformed URL"]),
        (["offline", "http://127.0.0.1:99999/x"], ["malformed URL", "99999"]),
        (["offline", "http://exa mple.com/"], ["malformed URL"]),
        (["offline", "https://[::1/"], ["malformed URL"]),
        (["offline", "track42"], ["malformed product", "'track42'"]),
        (["offline", "track:"], ["malformed product", "'track:'"]),
        (["offline", "song:1"], ["unknown product type", "'song'"]),
        (["state", "song:1"], ["unknown product type", "'song'"]),
        (["delete", "track42"], ["malformed product", "'track42'"]),
        (["validate", "http://"], ["malformed URL"]),
        (["cleanup", "--older-than", "5x"], ["--older-than", "malformed duration", "'5x'"]),
        (["health", "--since", "x"], ["--since", "malformed duration", "'x'"]),
        (["--db-timeout", "soon", "state"], ["--db-timeout", "malformed duration"]),
        (["cleanup", "--older-than", "-1"], ["--older-than", "'-1'"]),
        (["resume", "song:1"], ["unknown product type", "'song'"]),
        (["frobnicate"], ["frobnicate"]),
        (["delete"], ["Missing argument"]),
        (["state", "--frob"], ["--frob"]),
        (["offline"], ["no product given"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] != "malformed" else None,
)
def test_malformed_input_exits_2(
    cli, home: Path, httpserver: HTTPServer, args: list[str], needles: list[str]
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    _one_line_error(result, *needles)
    assert result.stdout == ""
    _assert_nothing_changed(home, httpserver)


def test_bad_product_among_good_ones_downloads_nothing(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    result = cli("offline", httpserver.url_for("/a"), "track42", httpserver.url_for("/b"))
    assert result.exit_code == 2
    _one_line_error(result, "malformed product", "'track42'")
    _assert_nothing_changed(home, httpserver)


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--sha256", "abc"], ["malformed --sha256", "'abc'"]),
        (["--sha256", "g" * 64], ["malformed --sha256"]),
        (["--id", "track42"], ["malformed product", "'track42'"]),
        (["--id", "song:1"], ["unknown product type", "'song'"]),
        (["--license-url", "ftp://x/y"], ["unsupported URL scheme"]),
        (["--retries", "-1"], ["--retries"]),
        (["--stall-timeout", "fast"], ["--stall-timeout", "malformed duration"]),
    ],
)
def test_malformed_option_of_a_good_url_exits_2(
    cli, home: Path, httpserver: HTTPServer, extra: list[str], needles: list[str]
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    result = cli("offline", httpserver.url_for("/a"), *extra)
    assert result.exit_code == 2, result.output
    _one_line_error(result, *needles)
    _assert_nothing_changed(home, httpserver)


def test_input_file_that_does_not_exist(
    cli, home: Path, tmp_path: Path, httpserver: HTTPServer
) -> None:
    missing = tmp_path / "no-such-list.txt"
    result = cli("offline", "-i", str(missing))
    assert result.exit_code == 2
    _one_line_error(result, str(missing), "No such file")
    _assert_nothing_changed(home, httpserver)


def test_input_file_that_is_a_folder_or_not_text(
    cli, home: Path, tmp_path: Path, httpserver: HTTPServer
) -> None:
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    for source, needle in ((tmp_path, "Is a directory"), (binary, "not UTF-8")):
        result = cli("offline", "-i", str(source))
        assert result.exit_code == 2
        _one_line_error(result, str(source), needle)
    _assert_nothing_changed(home, httpserver)


def test_input_file_with_a_bad_line_downloads_nothing(
    cli, home: Path, tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{httpserver.url_for('/a')}\nftp://x/y\n", encoding="utf-8")
    result = cli("offline", "-i", str(listing))
    assert result.exit_code == 2
    _one_line_error(result, "unsupported URL scheme")
    _assert_nothing_changed(home, httpserver)


def test_empty_stdin_is_no_product(cli, home: Path, httpserver: HTTPServer) -> None:
    result = cli("offline", "-i", "-", input="# only a comment\n\n")
    assert result.exit_code == 2
    _one_line_error(result, "no product given")
    _assert_nothing_changed(home, httpserver)


def test_bad_line_on_stdin_downloads_nothing(cli, home: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/a").respond_with_data(BODY)
    result = cli("offline", "-i", "-", input=f"{httpserver.url_for('/a')}\nsong:1\n")
    assert result.exit_code == 2
    _one_line_error(result, "unknown product type")
    _assert_nothing_changed(home, httpserver)


# -- refusals from the server: exit 1, one request, nothing kept -----------------------------


@pytest.mark.parametrize(("status", "reason"), [(404, "Not Found"), (401, None), (403, None)])
def test_http_client_error_fails_once_and_keeps_nothing(
    cli, home: Path, httpserver: HTTPServer, status: int, reason: str | None
) -> None:
    httpserver.expect_request("/m").respond_with_data("nope", status=status)

    url = httpserver.url_for("/m")
    result = cli("offline", "-q", url, "--id", "track:42")

    assert result.exit_code == 1
    line = _one_line_error(result, "track:42", f"HTTP {status}", f"from {urlsplit(url).hostname}")
    if reason:
        assert reason.lower() in line.lower()
    assert len(httpserver.log) == 1  # permanent: never retried
    assert _files_under(home / "partial") == []
    assert _files_under(home / "store") == []
    assert cli("state", "track:42").stdout == "NOT_OFFLINED\n"
    assert "nothing to resume" in cli("resume").stderr
    assert len(httpserver.log) == 1
    # without -q the only other line is the plain progress line
    loud = cli("offline", url, "--id", "track:42")
    assert loud.exit_code == 1
    assert loud.stderr.splitlines() == ["track:42: downloading", line]


# -- server-suggested file names are never trusted -------------------------------------------


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_content_disposition_cannot_escape_the_home(
    cli,
    home: Path,
    tmp_path: Path,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    name = "../../evil" if kind == "relative" else str(outside / "evil")
    httpserver.expect_request("/m").respond_with_response(
        Response(BODY, headers={"Content-Disposition": f'attachment; filename="{name}"'})
    )
    parents = [tmp_path, tmp_path.parent]
    before = {p: sorted(os.listdir(p)) for p in parents}

    result = cli("offline", httpserver.url_for("/m"), "--id", "file:doc")

    assert result.exit_code == 0, result.output
    stored = _files_under(home / "store")
    assert [p.read_bytes() for p in stored] == [BODY]
    assert all("evil" not in str(p.relative_to(home)) for p in stored)
    assert list(outside.iterdir()) == [] and list(cwd.iterdir()) == []
    assert sorted(os.listdir(tmp_path)) == sorted({*before[tmp_path], "home"})
    assert sorted(os.listdir(tmp_path.parent)) == before[tmp_path.parent]
    assert not (home / "evil").exists() and not (home.parent / "evil").exists()
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


# -- an unusable store: exit 4 with a message that says what to do ---------------------------


def _unwritable_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> Path:
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        home = locked / "home"
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        home = blocker / "home"
    monkeypatch.setenv("OFFLINE_CLI_HOME", str(home))
    return home


@pytest.mark.parametrize("how", ["chmod", "parent-is-a-file"])
# `state` only reads: on a home that does not exist it creates nothing and reads an empty
# store (issue 11), so `resume` stands for the commands that must make the store.
@pytest.mark.parametrize("command", ["offline", "resume", "cleanup", "delete-all"])
def test_home_not_writable_exits_4(
    cli,
    tmp_path: Path,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    command: str,
) -> None:
    home = _unwritable_home(tmp_path, monkeypatch, how)
    httpserver.expect_request("/m").respond_with_data(BODY)
    args = {
        "offline": ["offline", httpserver.url_for("/m")],
        "resume": ["resume"],
        "cleanup": ["cleanup", "--older-than", "0"],
        "delete-all": ["delete-all", "--yes"],
    }[command]
    try:
        result = cli(*args)
    finally:
        if how == "chmod":
            home.parent.chmod(0o700)

    assert result.exit_code == 4, result.output
    _one_line_error(result, str(home), "not writable", "OFFLINE_CLI_HOME")
    assert len(httpserver.log) == 0
    assert not home.exists()


def test_home_option_not_writable_exits_4(
    cli, tmp_path: Path, httpserver: HTTPServer, home: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("--home", str(blocker / "h"), "resume")
    assert result.exit_code == 4
    _one_line_error(result, "not writable")
    assert not home.exists()


def test_home_that_is_a_regular_file_exits_4(cli, home: Path, httpserver: HTTPServer) -> None:
    home.write_bytes(b"I am a file")
    httpserver.expect_request("/m").respond_with_data(BODY)
    for args in (["state"], ["offline", httpserver.url_for("/m")]):
        result = cli(*args)
        assert result.exit_code == 4, result.output
        _one_line_error(result, str(home), "not a folder", "OFFLINE_CLI_HOME")
    assert home.read_bytes() == b"I am a file"
    assert len(httpserver.log) == 0


def test_database_path_that_is_a_folder_exits_4(cli, home: Path) -> None:
    (home / "offline.db").mkdir(parents=True)
    result = cli("state")
    assert result.exit_code == 4
    _one_line_error(result, str(home / "offline.db"), "mv '")


def test_database_with_corrupt_pages_exits_4(cli, home: Path, httpserver: HTTPServer) -> None:
    home.mkdir()
    db = home / "offline.db"
    Store(db).close()  # a real, empty database, checkpointed into the main file
    data = bytearray(db.read_bytes())
    assert len(data) > 8192
    data[4096:] = b"\xab" * (len(data) - 4096)  # keep the header, smash every page after it
    db.write_bytes(bytes(data))
    httpserver.expect_request("/m").respond_with_data(BODY)
    for args in (["state"], ["state", "track:1"], ["offline", httpserver.url_for("/m")]):
        result = cli(*args)
        assert result.exit_code == 4, result.output
        _one_line_error(result, str(db), "malformed", "mv '")
    assert len(httpserver.log) == 0
    assert _files_under(home / "partial") == [] and _files_under(home / "store") == []


def _garbage_database(home: Path) -> Path:
    home.mkdir()
    db = home / "offline.db"
    db.write_bytes(b"this is not a database, just some text\n" * 200)
    return db


@pytest.mark.parametrize(
    "args",
    [
        ["state"],
        ["state", "track:1"],
        ["offline", "URL"],
        ["resume"],
        ["delete", "track:1"],
        ["delete-all", "--yes"],
        ["cleanup"],
        ["validate"],
        ["health"],
    ],
)
def test_database_that_is_not_a_database_exits_4(
    cli, home: Path, httpserver: HTTPServer, args: list[str]
) -> None:
    db = _garbage_database(home)
    garbage = db.read_bytes()
    httpserver.expect_request("/m").respond_with_data(BODY)
    args = [httpserver.url_for("/m") if a == "URL" else a for a in args]

    result = cli(*args)

    assert result.exit_code == 4, result.output
    line = _one_line_error(result, str(db))
    assert "not a database" in line or "unusable" in line
    assert f"mv '{db}'" in line  # says how to fix it
    assert len(httpserver.log) == 0
    assert db.read_bytes() == garbage
    assert _files_under(home / "store") == [] if (home / "store").exists() else True


def test_database_fix_from_the_hint_works(cli, home: Path) -> None:
    db = _garbage_database(home)
    assert cli("state").exit_code == 4
    db.rename(db.with_name("offline.db.broken"))
    result = cli("state")
    assert result.exit_code == 0
    assert result.stdout == ""


def test_database_newer_than_this_version_exits_4(cli, home: Path) -> None:
    home.mkdir()
    conn = sqlite3.connect(home / "offline.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    result = cli("state")
    assert result.exit_code == 4
    _one_line_error(result, "schema version 99", "upgrade offline-cli")


# -- symbolic links planted in the store are never followed when removing --------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_bytes(SECRET)
    (folder / "sub").mkdir()
    (folder / "sub" / "nested.txt").write_bytes(SECRET)
    return folder


def _assert_outside_intact(outside: Path) -> None:
    assert (outside / "precious.txt").read_bytes() == SECRET
    assert (outside / "sub" / "nested.txt").read_bytes() == SECRET
    assert sorted(p.name for p in outside.rglob("*")) == ["nested.txt", "precious.txt", "sub"]


def _offline_one(cli, httpserver: HTTPServer, product: str = "track:1") -> None:
    httpserver.expect_request(f"/{product}").respond_with_data(BODY)
    result = cli("offline", httpserver.url_for(f"/{product}"), "--id", product)
    assert result.exit_code == 0, result.output


def _product_dir(home: Path) -> Path:
    dirs = [p for p in (home / "store").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(dirs) == 1
    return dirs[0]


def _plant_links(home: Path, outside: Path) -> Path:
    """Links to outside files and folders inside the product folder; returns the media file."""
    product_dir = _product_dir(home)
    (product_dir / "link-to-file").symlink_to(outside / "precious.txt")
    (product_dir / "link-to-dir").symlink_to(outside / "sub", target_is_directory=True)
    (home / "partial" / "link.media.part").symlink_to(outside / "precious.txt")
    (home / "store" / "linked-product-dir").symlink_to(outside, target_is_directory=True)
    [media] = product_dir.glob("*.media")
    return media


@pytest.mark.parametrize("command", [["delete", "track:1"], ["delete-all", "--yes"]])
def test_symlinks_in_the_store_are_not_followed(
    cli, home: Path, httpserver: HTTPServer, outside: Path, command: list[str]
) -> None:
    _offline_one(cli, httpserver)
    _plant_links(home, outside)

    result = cli(*command)

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    _assert_outside_intact(outside)


@pytest.mark.parametrize("command", [["delete", "track:1"], ["delete-all", "--yes"]])
def test_media_file_replaced_by_a_symlink_is_not_followed(
    cli, home: Path, httpserver: HTTPServer, outside: Path, command: list[str]
) -> None:
    _offline_one(cli, httpserver)
    [media] = _product_dir(home).glob("*.media")
    media.unlink()
    media.symlink_to(outside / "precious.txt")
    assert cli("state", "track:1").stdout == "OFFLINED_BUT_NOT_VALID\n"
    validated = cli("validate", "track:1")
    assert validated.exit_code == 1
    _assert_outside_intact(outside)

    result = cli(*command)

    assert result.exit_code == 0, result.output
    _assert_outside_intact(outside)
    assert not os.path.lexists(media)


def test_product_folder_replaced_by_a_symlink_is_not_followed(
    cli, home: Path, httpserver: HTTPServer, outside: Path
) -> None:
    _offline_one(cli, httpserver)
    product_dir = _product_dir(home)
    for child in product_dir.iterdir():
        child.unlink()
    product_dir.rmdir()
    product_dir.symlink_to(outside, target_is_directory=True)

    for args in (["delete", "track:1"], ["cleanup", "--older-than", "0"]):
        result = cli(*args)
        assert result.exit_code in (0, 1), result.output
        assert "Traceback" not in result.output
        _assert_outside_intact(outside)


def test_store_folder_replaced_by_a_symlink_is_not_followed(
    cli, home: Path, httpserver: HTTPServer, outside: Path
) -> None:
    _offline_one(cli, httpserver)
    _product_dir(home)  # exists
    store = home / "store"
    for child in store.rglob("*"):
        if child.is_file():
            child.unlink()
    for child in store.iterdir():
        child.rmdir()
    store.rmdir()
    store.symlink_to(outside, target_is_directory=True)

    for args in (["cleanup", "--older-than", "0"], ["delete-all", "--yes"], ["state"]):
        result = cli(*args)
        assert "Traceback" not in result.output
        # refused as unusable: deletion never follows links, so it could never be cleaned
        assert result.exit_code == 4, result.output
        _one_line_error(result, "symbolic link")
        _assert_outside_intact(outside)


def test_cleanup_removes_planted_links_but_not_their_targets(
    cli, home: Path, httpserver: HTTPServer, outside: Path
) -> None:
    _offline_one(cli, httpserver)
    _plant_links(home, outside)

    result = cli("cleanup", "--older-than", "0")

    assert result.exit_code == 0, result.output
    _assert_outside_intact(outside)
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"


@pytest.mark.parametrize("server_resumes", [True, False])
def test_resume_does_not_write_through_a_planted_partial_symlink(
    cli, home: Path, outside: Path, server_resumes: bool
) -> None:
    from tests.netsim import Fault, NetSim, Resource

    sim = NetSim().start()
    try:
        faults = [Fault("cut", at=30_000)]
        if not server_resumes:
            faults.append(Fault("ignore_range"))
        sim.add("/m", Resource(BODY, faults=faults))
        failed = cli("offline", "-q", sim.url("/m"), "--id", "track:1", "--retries", "0")
        assert failed.exit_code == 1
        [partial] = _files_under(home / "partial")
        partial.unlink()
        partial.symlink_to(outside / "precious.txt")

        result = cli("resume", "track:1")

        assert "Traceback" not in result.output
        _assert_outside_intact(outside)
        assert result.exit_code == 0, result.output
        [media] = (home / "store").rglob("*.media")
        assert not media.is_symlink()
        assert media.read_bytes() == BODY
        assert cli("validate").exit_code == 0
    finally:
        sim.stop()


def test_offline_does_not_write_through_a_planted_product_folder_link(
    cli, home: Path, httpserver: HTTPServer, outside: Path
) -> None:
    from offline_cli.paths import product_dir_name

    assert cli("cleanup").exit_code == 0  # creates the home and its folders
    (home / "store" / product_dir_name("track:1")).symlink_to(outside, target_is_directory=True)
    httpserver.expect_request("/m").respond_with_data(BODY)

    result = cli("offline", httpserver.url_for("/m"), "--id", "track:1")

    assert "Traceback" not in result.output
    _assert_outside_intact(outside)
    assert result.exit_code == 0, result.output
    [media] = (home / "store").rglob("*.media")
    assert media.read_bytes() == BODY
    assert home.resolve() in media.resolve().parents
    assert cli("state", "track:1").stdout == "OFFLINED_AND_VALID\n"


def test_product_without_url_or_source_changes_nothing(cli, home: Path) -> None:
    result = cli("offline", "track:42")
    assert result.exit_code == 2
    _one_line_error(result, "no URL and no playback-info source", "--source")
    assert not home.exists()  # not even an empty store


def test_sha256_given_for_an_already_stored_product_is_checked(
    cli, home: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/m").respond_with_data(BODY)
    url = httpserver.url_for("/m")
    assert cli("offline", url, "--id", "track:1").exit_code == 0
    requests = len(httpserver.log)
    wrong = cli("offline", url, "--id", "track:1", "--sha256", "0" * 64)
    assert wrong.exit_code == 1
    _one_line_error(wrong, "checksum mismatch")
    assert len(httpserver.log) == requests
    assert cli("state", "track:1").stdout.strip() == "OFFLINED_AND_VALID"
