"""Authenticated sources: --header and the bearer token go to the trusted origin only, and
are never stored, logged or shown (issue 9, "Authenticated sources")."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer

from offline_cli.auth import RequestCredentials, origin_of, parse_header
from offline_cli.config import Settings
from offline_cli.errors import UsageError
from offline_cli.models import MediaProduct
from offline_cli.transfer import make_client, trusted_extensions

TOKEN = "tok-3f9a1c77e2b54d0f"
KEY = "key-8d2e6b19aa40c7f3"
BODY = b"media-bytes-" * 500
LICENSE = b"license-bytes"


@pytest.fixture
def servers() -> Iterator[tuple[HTTPServer, HTTPServer]]:
    """Two loopback servers: two origins (same host, another port)."""
    started = [HTTPServer(host="127.0.0.1", port=0) for _ in range(2)]
    for server in started:
        server.start()
    try:
        yield started[0], started[1]
    finally:
        for server in started:
            server.clear()
            if server.is_running():
                server.stop()


def _base(server: HTTPServer, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}"


def _seen(server: HTTPServer, path: str, host: str | None = None) -> list[dict[str, str]]:
    """The headers of every request ``server`` got for ``path`` (with the Host ``host``)."""
    return [
        dict(request.headers)
        for request, _ in server.log
        if request.path == path and (host is None or request.host.split(":")[0] == host)
    ]


def _has_credentials(headers: dict[str, str]) -> bool:
    return headers.get("Authorization") == f"Bearer {TOKEN}" and headers.get("X-Api-Key") == KEY


def _has_none(headers: dict[str, str]) -> bool:
    values = " ".join(headers.values())
    return "Authorization" not in headers and "X-Api-Key" not in headers and TOKEN not in values


def _serve_source(source: HTTPServer, url: str, license_url: str | None = None) -> str:
    info: dict[str, Any] = {"manifestMimeType": "audio/flac", "url": url}
    if license_url is not None:
        info["licenseUrl"] = license_url
    source.expect_request("/v1/tracks/42").respond_with_json(info)
    return _base(source) + "/v1/{type}s/{id}"


def _with_token(**extra: str) -> dict[str, str]:
    return {"OFFLINE_CLI_TOKEN": TOKEN, **extra}


# -- where they go -----------------------------------------------------------------------------


def test_header_and_token_reach_the_source_and_its_same_origin_media_and_license(
    cli: Callable[..., Any], home: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    source, _ = servers
    source.expect_request("/m").respond_with_data(BODY)
    source.expect_request("/lic").respond_with_data(LICENSE)
    template = _serve_source(source, _base(source) + "/m", _base(source) + "/lic")

    result = cli(
        "offline", "track:42", "--source", template, "-H", f"X-Api-Key: {KEY}", env=_with_token()
    )

    assert result.exit_code == 0, result.output
    for path in ("/v1/tracks/42", "/m", "/lic"):
        seen = _seen(source, path)
        assert seen and all(_has_credentials(h) for h in seen), (path, seen)


def test_media_and_license_on_other_origins_get_neither(
    cli: Callable[..., Any], home: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    source, cdn = servers
    # Another port is another origin; so is another name for the same host and port.
    cdn.expect_request("/m").respond_with_data(BODY)
    source.expect_request("/lic").respond_with_data(LICENSE)
    template = _serve_source(source, _base(cdn) + "/m", _base(source, "localhost") + "/lic")

    result = cli(
        "offline", "track:42", "--source", template, "-H", f"X-Api-Key: {KEY}", env=_with_token()
    )

    assert result.exit_code == 0, result.output
    assert all(_has_credentials(h) for h in _seen(source, "/v1/tracks/42"))
    media, license_ = _seen(cdn, "/m"), _seen(source, "/lic", host="localhost")
    assert media and license_
    assert all(_has_none(h) for h in media + license_), (media, license_)


def test_a_url_product_sends_them_to_its_own_origin_and_not_after_a_redirect_elsewhere(
    cli: Callable[..., Any], home: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    origin, other = servers
    origin.expect_request("/a").respond_with_data("", status=302, headers={"Location": "/b"})
    origin.expect_request("/b").respond_with_data(
        "", status=302, headers={"Location": _base(other) + "/c"}
    )
    other.expect_request("/c").respond_with_data(BODY)

    result = cli("offline", _base(origin) + "/a", "-H", f"X-Api-Key: {KEY}", env=_with_token())

    assert result.exit_code == 0, result.output
    # The hop within the origin keeps them; the hop to another origin has neither (httpx
    # itself would drop only Authorization).
    assert all(_has_credentials(h) for h in _seen(origin, "/a") + _seen(origin, "/b"))
    assert _seen(other, "/c") and all(_has_none(h) for h in _seen(other, "/c"))


def test_a_repaired_source_product_never_sends_them_to_its_cdn(
    cli: Callable[..., Any], home: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    source, cdn = servers
    cdn.expect_request("/m").respond_with_data(BODY)
    template = _serve_source(source, _base(cdn) + "/m")
    assert cli("offline", "track:42", "--source", template, env=_with_token()).exit_code == 0
    (media,) = (home / "store").rglob("*.media")
    media.write_bytes(b"damaged")
    cdn.clear_log()

    # The repair fetches the stored CDN URL: it is still the source's, not the product's own.
    result = cli("validate", "--repair", "--source", template, env=_with_token())

    assert result.exit_code == 0, result.output
    assert _seen(cdn, "/m") and all(_has_none(h) for h in _seen(cdn, "/m"))


def test_a_resumed_source_product_without_a_source_sends_them_nowhere(
    cli: Callable[..., Any], home: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    source, cdn = servers
    cdn.expect_oneshot_request("/m").respond_with_data("busy", status=503)
    cdn.expect_request("/m").respond_with_data(BODY)
    template = _serve_source(source, _base(cdn) + "/m")
    first = cli("offline", "track:42", "--source", template, "--retries", "0", env=_with_token())
    assert first.exit_code == 1, first.output

    # No source now: the stored CDN URL is resumed as it is, still without the credentials.
    result = cli("resume", "-H", f"X-Api-Key: {KEY}", env=_with_token())

    assert result.exit_code == 0, result.output
    assert len(_seen(cdn, "/m")) == 2 and all(_has_none(h) for h in _seen(cdn, "/m"))


def test_an_explicit_authorization_header_wins_over_the_token(
    cli: Callable[..., Any], home: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    origin, _ = servers
    origin.expect_request("/m").respond_with_data(BODY)

    result = cli(
        "offline", _base(origin) + "/m", "-H", "authorization: Basic dTpw", env=_with_token()
    )

    assert result.exit_code == 0, result.output
    assert [h["Authorization"] for h in _seen(origin, "/m")] == ["Basic dTpw"]


def test_a_header_of_ours_overridden_comes_back_on_another_origin() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "a.example":
            return httpx.Response(302, headers={"Location": "https://b.example/x"})
        return httpx.Response(200, content=b"ok")

    credentials = RequestCredentials.build((("User-Agent", "custom/1"), ("X-Api-Key", KEY)), TOKEN)
    with make_client(transport=httpx.MockTransport(handler), credentials=credentials) as client:
        client.get("https://a.example/m", extensions=trusted_extensions("https://a.example:443"))

    first, second = seen
    assert first.headers["User-Agent"] == "custom/1"
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert second.headers["User-Agent"].startswith("offline-cli/")
    assert "X-Api-Key" not in second.headers and "Authorization" not in second.headers


def test_a_request_that_names_no_trusted_origin_gets_no_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    credentials = RequestCredentials.build((("X-Api-Key", KEY),), TOKEN)
    with make_client(transport=httpx.MockTransport(handler), credentials=credentials) as client:
        client.get("https://a.example/m")
    assert "X-Api-Key" not in seen[0].headers and "Authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://CDN.Example.com/a?b", "https://cdn.example.com:443"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://h:80/x", "http://h:80"),
        ("ftp://h/x", None),
        ("http://h:99999/", None),
        (None, None),
    ],
)
def test_origin_of(url: str | None, origin: str | None) -> None:
    assert origin_of(url) == origin


# -- where the token comes from ----------------------------------------------------------------


def test_token_from_the_file_the_config_names(
    cli: Callable[..., Any], home: Path, tmp_path: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    origin, _ = servers
    origin.expect_request("/m").respond_with_data(BODY)
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(f'token_file = "{token_file}"\n', encoding="utf-8")

    result = cli("offline", _base(origin) + "/m", env={"OFFLINE_CLI_CONFIG": str(config)})

    assert result.exit_code == 0, result.output
    assert [h["Authorization"] for h in _seen(origin, "/m")] == [f"Bearer {TOKEN}"]


def test_the_environment_token_wins_over_the_file(
    cli: Callable[..., Any], home: Path, tmp_path: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    origin, _ = servers
    origin.expect_request("/m").respond_with_data(BODY)
    missing = tmp_path / "no-such-token"

    result = cli(
        "offline", _base(origin) + "/m", env=_with_token(OFFLINE_CLI_TOKEN_FILE=str(missing))
    )

    assert result.exit_code == 0, result.output
    assert [h["Authorization"] for h in _seen(origin, "/m")] == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize("content", [None, "", " \n\t\n", f"{TOKEN}\x00more", f"{TOKEN}\nline2"])
def test_a_token_file_that_cannot_be_used_is_exit_2_naming_the_file_not_its_content(
    cli: Callable[..., Any],
    home: Path,
    tmp_path: Path,
    servers: tuple[HTTPServer, HTTPServer],
    content: str | None,
) -> None:
    origin, _ = servers
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content, encoding="utf-8")

    result = cli("offline", _base(origin) + "/m", env={"OFFLINE_CLI_TOKEN_FILE": str(token_file)})

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(token_file) in lines[0], result.stderr
    assert TOKEN not in result.output
    assert not origin.log and not home.exists()


# -- what is refused -----------------------------------------------------------------------------

SECRETISH = "zq7-SECRETISH-9wx"


@pytest.mark.parametrize(
    ("header", "said"),
    [
        (f"Bearer{SECRETISH}", "no colon"),
        (f": {SECRETISH}", "empty header name"),
        (f"X Api: {SECRETISH}", "not an HTTP token"),
        (f"X-Api\x00: {SECRETISH}", "not an HTTP token"),
        (f"X-Api: {SECRETISH}\r\nHost: evil", "control characters"),
        (f"X-Api: {SECRETISH}\x07", "control characters"),
        (f"X-Api: {SECRETISH}é", "non-ASCII"),
        ("X-Api:   ", "empty value"),
        (f"Host: {SECRETISH}", "Host is set by offline-cli"),
        (f"content-length: {SECRETISH}", "content-length is set by offline-cli"),
        (f"Transfer-Encoding: {SECRETISH}", "is set by offline-cli"),
        (f"Connection: {SECRETISH}", "is set by offline-cli"),
        (f"Range: {SECRETISH}", "is set by offline-cli"),
        (f"If-Range: {SECRETISH}", "is set by offline-cli"),
        (f"Accept-Encoding: {SECRETISH}", "is set by offline-cli"),
    ],
)
def test_a_bad_header_is_exit_2_in_one_line_without_its_value(
    cli: Callable[..., Any],
    home: Path,
    servers: tuple[HTTPServer, HTTPServer],
    header: str,
    said: str,
) -> None:
    origin, _ = servers
    result = cli("offline", _base(origin) + "/m", "-H", "X-Ok: 1", "--header", header)

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("offline-cli: error: --header #2"), lines
    assert said in lines[0], lines[0]
    assert SECRETISH not in result.output
    assert not origin.log and not home.exists()


def test_the_same_header_twice_is_refused(cli: Callable[..., Any], home: Path) -> None:
    result = cli("offline", "http://127.0.0.1:9/m", "-H", "X-A: 1", "-H", "x-a: 2")
    assert result.exit_code == 2
    assert "--header #2: x-a is given twice" in result.stderr
    assert not home.exists()


@pytest.mark.parametrize("command", [["resume"], ["validate", "--repair"]])
def test_resume_and_repair_check_their_headers_too(
    cli: Callable[..., Any], home: Path, command: list[str]
) -> None:
    result = cli(*command, "-H", f"Bearer{SECRETISH}")
    assert result.exit_code == 2, result.output
    assert "--header #1: no colon" in result.stderr and SECRETISH not in result.output


def test_bad_headers_in_the_environment_and_the_config_name_where_they_are(
    cli: Callable[..., Any], home: Path, tmp_path: Path
) -> None:
    env = cli(
        "offline", "http://127.0.0.1:9/m", env={"OFFLINE_CLI_HEADERS": f"X-A: 1\n{SECRETISH}"}
    )
    assert env.exit_code == 2
    assert "$OFFLINE_CLI_HEADERS: header #2: no colon" in env.stderr and SECRETISH not in env.output

    config = tmp_path / "config.toml"
    config.write_text(f'headers = ["Host: {SECRETISH}"]\n', encoding="utf-8")
    conf = cli("offline", "http://127.0.0.1:9/m", env={"OFFLINE_CLI_CONFIG": str(config)})
    assert conf.exit_code == 2
    assert f"config file {config}, key 'headers': header #1: Host is set" in conf.stderr
    assert SECRETISH not in conf.output

    config.write_text('headers = "X-A: 1"\n', encoding="utf-8")
    wrong_type = cli("offline", "http://127.0.0.1:9/m", env={"OFFLINE_CLI_CONFIG": str(config)})
    assert wrong_type.exit_code == 2 and "expected a list of strings" in wrong_type.stderr
    assert not home.exists()


def test_parse_header_trims_spaces_around_the_value() -> None:
    assert parse_header("X-A:\t v a l \t", "h") == ("X-A", "v a l")
    with pytest.raises(UsageError):
        parse_header("X-A: ok\n", "h")


# -- layering --------------------------------------------------------------------------------


def test_headers_layer_like_other_settings_file_then_environment_then_command_line(
    cli: Callable[..., Any], home: Path, tmp_path: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    origin, _ = servers
    origin.expect_request("/m").respond_with_data(BODY)
    config = tmp_path / "config.toml"
    config.write_text('headers = ["X-File: 1"]\n', encoding="utf-8")
    env = {"OFFLINE_CLI_CONFIG": str(config)}

    def sent(*args: str, **extra: str) -> dict[str, str]:
        origin.clear_log()
        cli("delete", _base(origin) + "/m", env={**env, **extra})
        result = cli("offline", _base(origin) + "/m", *args, env={**env, **extra})
        assert result.exit_code == 0, result.output
        (headers,) = _seen(origin, "/m")
        return {k: v for k, v in headers.items() if k.startswith("X-")}

    assert sent() == {"X-File": "1"}
    assert sent(OFFLINE_CLI_HEADERS="X-Env: 2\n\nX-Env2: 3\n") == {"X-Env": "2", "X-Env2": "3"}
    assert sent("-H", "X-Cli: 4", OFFLINE_CLI_HEADERS="X-Env: 2") == {"X-Cli": "4"}


# -- never stored, logged or shown ---------------------------------------------------------------


def _every_file_under(root: Path) -> Iterator[Path]:
    for folder, _, files in os.walk(root):
        for name in files:
            yield Path(folder) / name


def test_token_and_header_values_are_never_written_under_the_home_or_printed(
    cli: Callable[..., Any],
    home: Path,
    tmp_path: Path,
    servers: tuple[HTTPServer, HTTPServer],
) -> None:
    source, cdn = servers
    source.expect_request("/m").respond_with_data(BODY)
    source.expect_request("/lic").respond_with_data(LICENSE)
    source.expect_request("/v1/tracks/42").respond_with_json(
        {
            "manifestMimeType": "audio/flac",
            "url": _base(source) + "/m",
            "licenseUrl": _base(source) + "/lic",
        }
    )
    # A failure with a message: the server answers with the credentials it got.
    source.expect_request("/v1/tracks/7").respond_with_data(
        f"denied for Bearer {TOKEN} / {KEY}", status=403
    )
    cdn.expect_request("/gone").respond_with_data("", status=404)
    template = _base(source) + "/v1/{type}s/{id}"
    log = tmp_path / "events.jsonl"
    args = ("--log-file", str(log), "-v", "offline")
    options = ("--source", template, "-H", f"X-Api-Key: {KEY}")

    good = cli(*args, "track:42", *options, env=_with_token())
    bad = cli(*args, "track:7", _base(cdn) + "/gone", *options, env=_with_token())
    assert good.exit_code == 0, good.output
    assert bad.exit_code == 1, bad.output
    shown = [
        good,
        bad,
        cli("state", "--json", env=_with_token()),
        cli("health", "--json", env=_with_token()),
        cli("validate", "--json", env=_with_token()),
    ]

    secrets = (TOKEN.encode(), KEY.encode())
    files = list(_every_file_under(home))
    assert any(f.name == "offline.db" for f in files)
    for path in [*files, log]:
        data = path.read_bytes()
        assert not any(secret in data for secret in secrets), path
    for result in shown:
        assert TOKEN not in result.output and KEY not in result.output


def test_config_shows_how_many_headers_and_where_the_token_comes_from_never_values(
    cli: Callable[..., Any], home: Path, tmp_path: Path
) -> None:
    env = _with_token(OFFLINE_CLI_HEADERS=f"X-Api-Key: {KEY}\nX-Other: {KEY}2")
    text = cli("config", env=env)
    as_json = cli("config", "--json", env=env)

    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    assert "headers\t2 set\t($OFFLINE_CLI_HEADERS)" in text.stdout
    assert "token\tfrom $OFFLINE_CLI_TOKEN\t($OFFLINE_CLI_TOKEN)" in text.stdout
    settings = json.loads(as_json.stdout)["settings"]
    assert settings["headers"]["value"] == "2 set"
    assert settings["token"] == {"value": "from $OFFLINE_CLI_TOKEN", "origin": "$OFFLINE_CLI_TOKEN"}
    for result in (text, as_json):
        assert TOKEN not in result.output and KEY not in result.output

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    from_file = cli("config", env={"OFFLINE_CLI_TOKEN_FILE": str(token_file)})
    assert f"token\tfrom token_file {token_file}\t($OFFLINE_CLI_TOKEN_FILE)" in from_file.stdout
    assert "headers\tnone\t(default)" in from_file.stdout
    assert TOKEN not in from_file.output
    assert "token\tnone\t(default)" in cli("config").stdout


def test_credentials_repr_names_headers_but_never_values() -> None:
    credentials = RequestCredentials.build((("X-Api-Key", KEY),), TOKEN)
    shown = repr(credentials) + str(credentials)
    assert "X-Api-Key" in shown and "Authorization" in shown
    assert KEY not in shown and TOKEN not in shown


def test_the_engine_reads_headers_from_its_settings_and_the_token_from_the_environment(
    make_engine: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    servers: tuple[HTTPServer, HTTPServer],
) -> None:
    origin, _ = servers
    origin.expect_request("/m").respond_with_data(BODY)
    monkeypatch.setenv("OFFLINE_CLI_TOKEN", TOKEN)
    engine = make_engine(settings=Settings(headers=(f"X-Api-Key: {KEY}",)))

    assert engine.offline(MediaProduct.from_url(_base(origin) + "/m"))
    assert all(_has_credentials(h) for h in _seen(origin, "/m"))


def test_validate_without_repair_does_not_need_a_readable_token(
    cli: Callable[..., Any], home: Path, tmp_path: Path, servers: tuple[HTTPServer, HTTPServer]
) -> None:
    origin, _ = servers
    origin.expect_request("/m").respond_with_data(BODY)
    assert cli("offline", _base(origin) + "/m").exit_code == 0
    missing = {"OFFLINE_CLI_TOKEN_FILE": str(tmp_path / "missing")}

    assert cli("validate", env=missing).exit_code == 0
    repair = cli("validate", "--repair", env=missing)
    assert repair.exit_code == 2 and "missing" in repair.stderr
