"""Proxies (`--proxy`, `proxy`, $OFFLINE_CLI_PROXY, HTTP_PROXY and NO_PROXY) and
`offline --refresh` (a conditional GET with the stored validators, like wget -N and curl -z).

The proxy is a small threaded forward proxy on 127.0.0.1: it takes absolute-form GETs,
fetches them from the origin (pytest-httpserver or NetSim) and relays the answer, recording
what it forwarded.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from offline_cli.config import Settings
from offline_cli.engine import OfflineEngine
from offline_cli.models import MediaProduct, OfflineState, ProductType
from tests.hlsserver import HlsOrigin
from tests.netsim import Fault, NetSim, Resource, free_port

Cli = Callable[..., Any]
BODY_V1 = b"first version " * 4000
BODY_V2 = b"second version, longer " * 4000
LICENSE_V1 = b"license one"
LICENSE_V2 = b"license two, renewed"
DATE_V1 = "Wed, 21 Oct 2026 07:28:00 GMT"
DATE_V2 = "Thu, 22 Oct 2026 07:28:00 GMT"
# Headers a proxy answers for itself, never forwards.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 (absolute-form GET only, as for http:// URLs)."""

    def __init__(self) -> None:
        # (absolute URL asked for, its Proxy-Authorization header)
        self.seen: list[tuple[str, str | None]] = []
        # When set, the Proxy-Authorization it wants (else 407)
        self.wants: str | None = None
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with lock:
                    proxy.seen.append((self.path, self.headers.get("Proxy-Authorization")))
                if (
                    proxy.wants is not None
                    and self.headers.get("Proxy-Authorization") != proxy.wants
                ):
                    self.send_response(407)
                    self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                target = urlsplit(self.path)
                if not target.scheme or target.hostname is None:
                    self.send_error(400, "not a proxy request")
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                try:
                    forwarded = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    path = target.path + (f"?{target.query}" if target.query else "")
                    upstream.request("GET", path or "/", headers=forwarded)
                    answer = upstream.getresponse()
                    body = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [urlsplit(url).path for url, _ in self.seen]

    def start(self) -> ForwardProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    # (conftest's isolated_env removes the machine's own HTTP_PROXY and the like)
    server = ForwardProxy().start()
    try:
        yield server
    finally:
        server.stop()


def _source_product(httpserver: HTTPServer) -> str:
    """A playback-info source naming a media file and a license on the same origin."""
    httpserver.expect_request("/info/track/42").respond_with_json(
        {
            "manifestMimeType": "audio/flac",
            "url": httpserver.url_for("/media/42.flac"),
            "licenseUrl": httpserver.url_for("/license/42"),
        }
    )
    httpserver.expect_request("/media/42.flac").respond_with_data(BODY_V1)
    httpserver.expect_request("/license/42").respond_with_data(LICENSE_V1)
    return httpserver.url_for("/info/{type}/{id}")


def _files_under(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


# -- proxies ----------------------------------------------------------------------------------


def test_proxy_option_carries_the_source_media_and_license_requests_and_hides_its_password(
    cli: Cli, home: Path, httpserver: HTTPServer, proxy: ForwardProxy, tmp_path: Path
) -> None:
    source = _source_product(httpserver)
    log = tmp_path / "events.jsonl"
    result = cli(
        "--log-file",
        str(log),
        "offline",
        "track:42",
        "--source",
        source,
        "--proxy",
        proxy.url("agent:pr0xy-s3cret@"),
        "-v",
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(proxy.paths()) == ["/info/track/42", "/license/42", "/media/42.flac"]
    # absolute-form: the proxy was asked for the origin's URLs, with the proxy's credentials
    assert all(url.startswith(httpserver.url_for("/")) for url, _ in proxy.seen)
    expected = "Basic " + base64.b64encode(b"agent:pr0xy-s3cret").decode()
    assert {auth for _, auth in proxy.seen} == {expected}
    state = cli("state", "--json")
    assert json.loads(state.stdout)[0]["state"] == "OFFLINED_AND_VALID"
    for text in (result.stdout, result.stderr, state.stdout, log.read_text()):
        assert "pr0xy-s3cret" not in text
    assert b"pr0xy-s3cret" not in _files_under(home)


def test_http_proxy_from_the_environment_is_used(
    cli: Cli,
    home: Path,
    httpserver: HTTPServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpserver.expect_request("/media/7.flac").respond_with_data(BODY_V1)
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    result = cli("offline", httpserver.url_for("/media/7.flac"), "--id", "track:7")
    assert result.exit_code == 0, result.stderr
    assert proxy.paths() == ["/media/7.flac"]


def test_no_proxy_bypasses_the_environment_proxy(
    cli: Cli,
    home: Path,
    httpserver: HTTPServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpserver.expect_request("/media/7.flac").respond_with_data(BODY_V1)
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.setenv("NO_PROXY", "example.org, 127.0.0.1")
    url = f"http://127.0.0.1:{httpserver.port}/media/7.flac"
    result = cli("offline", url, "--id", "track:7")
    assert result.exit_code == 0, result.stderr
    assert proxy.seen == []


def test_proxy_option_overrides_the_environment_both_ways(
    cli: Cli,
    home: Path,
    httpserver: HTTPServer,
    proxy: ForwardProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpserver.expect_request("/media/1.flac").respond_with_data(BODY_V1)
    httpserver.expect_request("/media/2.flac").respond_with_data(BODY_V2)
    # --proxy URL goes for every request, NO_PROXY or not
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    first = cli("offline", httpserver.url_for("/media/1.flac"), "--proxy", proxy.url())
    assert first.exit_code == 0, first.stderr
    assert proxy.paths() == ["/media/1.flac"]
    # --proxy none (or '') sends every request direct, HTTP_PROXY or not
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    for value in ("none", ""):
        cli("delete-all", "--yes")
        second = cli("offline", httpserver.url_for("/media/2.flac"), "--proxy", value)
        assert second.exit_code == 0, second.stderr
    assert proxy.paths() == ["/media/1.flac"]


def test_proxy_from_the_config_file_and_the_environment_variable(
    cli: Cli, home: Path, httpserver: HTTPServer, proxy: ForwardProxy, tmp_path: Path
) -> None:
    httpserver.expect_request("/media/1.flac").respond_with_data(BODY_V1)
    config = tmp_path / "config.toml"
    config.write_text(f'proxy = "{proxy.url("u:cfg-s3cret@")}"\n', encoding="utf-8")
    env = {"OFFLINE_CLI_CONFIG": str(config)}
    shown = cli("config", env=env)
    assert f"proxy\thttp://REDACTED@127.0.0.1:{proxy.port}\t(config file" in shown.stdout
    assert "cfg-s3cret" not in shown.stdout
    assert "cfg-s3cret" not in cli("config", "--json", env=env).stdout
    assert cli("offline", httpserver.url_for("/media/1.flac"), env=env).exit_code == 0
    assert proxy.paths() == ["/media/1.flac"]
    # the variable wins over the file: `none` goes direct
    env["OFFLINE_CLI_PROXY"] = "none"
    assert "proxy\tnone\t($OFFLINE_CLI_PROXY)" in cli("config", env=env).stdout
    cli("delete-all", "--yes")
    assert cli("offline", httpserver.url_for("/media/1.flac"), env=env).exit_code == 0
    assert proxy.paths() == ["/media/1.flac"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ftp://u:s3cret@127.0.0.1:21", "is not a proxy URL"),
        ("gopher://127.0.0.1:70", "is not a proxy URL"),
        ("u:s3cret@127.0.0.1:port", "could not be cast"),
        ("http://u:s3cret@", "names no host"),
        ("http://u:s3cret@127.0.0.1:99999", "out of range"),
        ("http://u:s3cret@127.0.0.1:3128/path", "no path"),
    ],
)
def test_a_bad_proxy_is_exit_2_in_one_line_without_its_password(
    cli: Cli, home: Path, value: str, words: str
) -> None:
    result = cli("offline", "http://127.0.0.1:9/f", "--proxy", value)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert words in lines[0] and "--proxy" in lines[0], result.stderr
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output
    assert not (home / "offline.db").exists()


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("socksio") is not None, reason="socksio installed"
)
def test_a_socks_proxy_without_socksio_is_exit_2_saying_what_to_install(
    cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli("offline", "http://127.0.0.1:9/f", "--proxy", "socks5://127.0.0.1:1080")
    assert result.exit_code == 2
    assert "socksio" in result.stderr and "httpx[socks]" in result.stderr
    # the same for a socks proxy the environment names
    monkeypatch.setenv("ALL_PROXY", "socks5h://u:s3cret@127.0.0.1:1080")
    from_env = cli("resume")
    assert from_env.exit_code == 2
    assert "$ALL_PROXY" in from_env.stderr and "socksio" in from_env.stderr
    assert "s3cret" not in from_env.output
    assert not (home / "offline.db").exists()


def test_a_bad_http_proxy_variable_is_exit_2_naming_it(
    cli: Cli, home: Path, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "gopher://u:s3cret@127.0.0.1:70")
    result = cli("offline", "http://127.0.0.1:9/f")
    assert result.exit_code == 2
    assert "$HTTP_PROXY" in result.stderr and "s3cret" not in result.output
    # --proxy overrides the environment: its variables are not even read
    monkeypatch.setenv("HTTP_PROXY", "gopher://x")
    direct = cli("offline", "http://127.0.0.1:9/f", "--proxy", "none", "--retries", "0")
    assert direct.exit_code == 1 and "$HTTP_PROXY" not in direct.stderr


def test_a_proxy_that_is_down_is_a_network_error_naming_no_password(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    down = f"http://u:s3cret@127.0.0.1:{free_port()}"
    result = cli(
        "offline",
        httpserver.url_for("/m"),
        "--proxy",
        down,
        "--retries",
        "0",
        "--network-timeout",
        "0",
    )
    assert result.exit_code == 1
    assert "cannot connect" in result.stderr
    assert "s3cret" not in result.output


# -- refresh ----------------------------------------------------------------------------------


class Versioned:
    """One file on a pytest-httpserver origin whose version a test changes; it answers
    conditional requests (304) unless ``honour`` is False, and records every request's
    headers."""

    def __init__(self, body: bytes, etag: str | None = '"v1"', date: str | None = DATE_V1) -> None:
        self.body, self.etag, self.date = body, etag, date
        self.honour = True
        self.requests: list[dict[str, str]] = []
        # Called while a whole body is being answered (the download of a new version).
        self.while_serving: Callable[[], None] | None = None

    def change(self, body: bytes, etag: str | None = '"v2"', date: str | None = DATE_V2) -> None:
        self.body, self.etag, self.date = body, etag, date

    def __call__(self, request: Request) -> Response:
        self.requests.append(dict(request.headers))
        validators = {k: v for k, v in (("ETag", self.etag), ("Last-Modified", self.date)) if v}
        if self.honour:
            match = request.headers.get("If-None-Match")
            since = request.headers.get("If-Modified-Since")
            if (match is not None and match == self.etag) or (
                match is None and since is not None and since == self.date
            ):
                return Response(status=304, headers=validators)
        if self.while_serving is not None and "If-None-Match" not in request.headers:
            self.while_serving()
        return Response(self.body, headers=validators, content_type="application/octet-stream")


def _stored(cli: Cli, key: str = "track:42") -> dict[str, Any]:
    (row,) = json.loads(cli("state", "--json", key).stdout)
    return dict(row)


def _snapshot(cli: Cli) -> tuple[str, str, str, str]:
    health = json.loads(cli("health", "--json").stdout)
    return (
        cli("state", "--json").stdout,
        json.dumps(health, sort_keys=True),
        cli("path", "track:42").stdout,
        cli("state").stdout,
    )


@pytest.fixture
def media(httpserver: HTTPServer) -> Versioned:
    origin = Versioned(BODY_V1)
    httpserver.expect_request("/media/42.flac").respond_with_handler(origin)
    return origin


def test_refresh_of_an_unchanged_product_is_not_modified_and_changes_nothing(
    cli: Cli, home: Path, httpserver: HTTPServer, media: Versioned
) -> None:
    url = httpserver.url_for("/media/42.flac")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    before = _snapshot(cli)
    stored = Path(cli("path", "track:42").stdout.strip())
    mtime = stored.stat().st_mtime_ns
    result = cli("offline", "--refresh", url, "--id", "track:42")
    assert result.exit_code == 0, result.stderr
    assert "track:42: not modified" in result.stderr
    assert "downloading" not in result.stderr and "done" not in result.stderr
    asked = media.requests[-1]
    assert asked["If-None-Match"] == '"v1"' and asked["If-Modified-Since"] == DATE_V1
    assert _snapshot(cli) == before
    assert stored.read_bytes() == BODY_V1 and stored.stat().st_mtime_ns == mtime


def test_refresh_by_date_alone_when_the_server_gave_no_etag(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    origin = Versioned(BODY_V1, etag=None)
    httpserver.expect_request("/media/42.flac").respond_with_handler(origin)
    url = httpserver.url_for("/media/42.flac")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    result = cli("offline", "--refresh", url, "--id", "track:42")
    assert "track:42: not modified" in result.stderr and result.exit_code == 0
    assert "If-None-Match" not in origin.requests[-1]
    assert origin.requests[-1]["If-Modified-Since"] == DATE_V1


def test_refresh_of_a_changed_product_replaces_it_and_the_old_stays_valid_until_the_commit(
    cli: Cli, home: Path, httpserver: HTTPServer, media: Versioned
) -> None:
    licenses = Versioned(LICENSE_V1, etag='"l1"')
    httpserver.expect_request("/license/42").respond_with_handler(licenses)
    url = httpserver.url_for("/media/42.flac")
    lic = httpserver.url_for("/license/42")
    assert cli("offline", url, "--license-url", lic, "--id", "track:42").exit_code == 0
    old = _stored(cli)
    media.change(BODY_V2)
    licenses.change(LICENSE_V2, etag='"l2"')
    seen_during: list[tuple[OfflineState, bytes, bytes]] = []

    def old_copy_still_valid() -> None:
        # While the new version streams in, the old one is what the store serves.
        with OfflineEngine(home, settings=Settings()) as engine:
            state = engine.get_offline_state(MediaProduct(ProductType.TRACK, "42"))
        seen_during.append(
            (state, Path(old["media_path"]).read_bytes(), Path(old["license_path"]).read_bytes())
        )

    media.while_serving = old_copy_still_valid
    result = cli("offline", "--refresh", url, "--license-url", lic, "--id", "track:42")
    assert result.exit_code == 0, result.stderr
    assert "track:42: done" in result.stderr
    assert seen_during == [(OfflineState.OFFLINED_AND_VALID, BODY_V1, LICENSE_V1)]
    new = _stored(cli)
    assert new["state"] == "OFFLINED_AND_VALID"
    assert Path(new["media_path"]).read_bytes() == BODY_V2
    assert Path(new["license_path"]).read_bytes() == LICENSE_V2  # the license fetched again
    assert new["sha256"] != old["sha256"]
    assert not Path(old["media_path"]).exists() and not Path(old["license_path"]).exists()
    # the next refresh asks with the new version's validators
    again = cli("offline", "--refresh", url, "--license-url", lic, "--id", "track:42")
    assert "track:42: not modified" in again.stderr
    assert media.requests[-1]["If-None-Match"] == '"v2"'
    assert media.requests[-1]["If-Modified-Since"] == DATE_V2


def test_a_refresh_failing_mid_download_keeps_the_old_version_and_resumes_later(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    resource = sim.add("/media/42.flac", Resource(BODY_V1))
    url = sim.url("/media/42.flac")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    old = _stored(cli)
    # NetSim ignores conditions: the check gets the new version (a new ETag), the download
    # that follows is cut half-way.
    resource.faults = [Fault("change", body=BODY_V2), Fault("cut", at=len(BODY_V2) // 2)]
    failed = cli("offline", "--refresh", url, "--id", "track:42", "--retries", "0")
    assert failed.exit_code == 1, failed.stderr
    assert "track:42" in failed.stderr
    kept = _stored(cli)
    assert kept["state"] == "OFFLINED_AND_VALID"
    assert kept["media_path"] == old["media_path"] and kept["sha256"] == old["sha256"]
    assert Path(old["media_path"]).read_bytes() == BODY_V1
    assert cli("path", "track:42").stdout.strip() == old["media_path"]
    # the next refresh sees it changed and continues the new version from its bytes on disk
    again = cli("offline", "--refresh", url, "--id", "track:42")
    assert again.exit_code == 0, again.stderr
    sim.wait_idle()
    ranged = [s for s in sim.requests("/media/42.flac") if s.range]
    assert [(s.status, s.range) for s in ranged] == [(206, f"bytes={len(BODY_V2) // 2}-")]
    new = _stored(cli)
    assert Path(new["media_path"]).read_bytes() == BODY_V2
    assert not Path(old["media_path"]).exists()


def test_a_server_ignoring_the_conditions_with_the_same_etag_is_not_modified_unread(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    big = os.urandom(16 * 1024 * 1024)
    sim.add("/media/42.flac", Resource(big))
    url = sim.url("/media/42.flac")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    before = _snapshot(cli)
    result = cli("offline", "--refresh", url, "--id", "track:42")
    assert result.exit_code == 0, result.stderr
    assert "track:42: not modified" in result.stderr
    sim.wait_idle()
    check = sim.log[-1]
    assert check.status == 200 and check.headers.get("If-None-Match")
    assert check.bytes_sent < len(big)  # the body was not read: the connection was closed
    assert _snapshot(cli) == before


def test_a_server_ignoring_the_conditions_with_a_weak_or_no_etag_is_downloaded_again(
    cli: Cli, home: Path, httpserver: HTTPServer
) -> None:
    origin = Versioned(BODY_V1, etag='W/"v1"')
    origin.honour = False
    httpserver.expect_request("/media/42.flac").respond_with_handler(origin)
    url = httpserver.url_for("/media/42.flac")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    first = _stored(cli)
    # the same weak ETag proves nothing about the bytes: fetched again (same content)
    result = cli("offline", "--refresh", url, "--id", "track:42")
    assert result.exit_code == 0 and "track:42: done" in result.stderr
    assert _stored(cli)["media_path"] != first["media_path"]
    # without an ETag, the same date and size are the same version (wget -N)
    origin.etag = None
    cli("delete", "track:42")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    same = cli("offline", "--refresh", url, "--id", "track:42")
    assert "track:42: not modified" in same.stderr


def test_refresh_of_a_product_not_offlined_is_a_plain_download(
    cli: Cli, home: Path, httpserver: HTTPServer, media: Versioned
) -> None:
    result = cli("offline", "--refresh", httpserver.url_for("/media/42.flac"), "--id", "track:42")
    assert result.exit_code == 0, result.stderr
    assert "track:42: done" in result.stderr
    assert len(media.requests) == 1 and "If-None-Match" not in media.requests[0]
    assert _stored(cli)["state"] == "OFFLINED_AND_VALID"


def test_refresh_of_a_source_product_asks_the_source_then_the_media_url(
    cli: Cli, home: Path, httpserver: HTTPServer, media: Versioned
) -> None:
    httpserver.expect_request("/info/track/42").respond_with_json(
        {"manifestMimeType": "audio/flac", "url": httpserver.url_for("/media/42.flac")}
    )
    source = httpserver.url_for("/info/{type}/{id}")
    assert cli("offline", "track:42", "--source", source).exit_code == 0
    before = _snapshot(cli)
    result = cli("offline", "--refresh", "track:42", "--source", source)
    assert "track:42: not modified" in result.stderr and result.exit_code == 0
    assert media.requests[-1]["If-None-Match"] == '"v1"'
    assert _snapshot(cli) == before
    media.change(BODY_V2)
    changed = cli("offline", "--refresh", "track:42", "--source", source)
    assert changed.exit_code == 0 and "track:42: done" in changed.stderr
    assert Path(_stored(cli)["media_path"]).read_bytes() == BODY_V2


def test_a_refresh_check_the_server_refuses_is_exit_1_and_changes_nothing(
    cli: Cli, home: Path, httpserver: HTTPServer, media: Versioned
) -> None:
    url = httpserver.url_for("/media/42.flac")
    assert cli("offline", url, "--id", "track:42").exit_code == 0
    before = cli("state", "--json").stdout
    httpserver.clear()
    httpserver.expect_request("/media/42.flac").respond_with_data("gone", status=410)
    result = cli("offline", "--refresh", url, "--id", "track:42")
    assert result.exit_code == 1
    assert "track:42" in result.stderr and "HTTP 410" in result.stderr
    assert cli("state", "--json").stdout == before


def test_refresh_of_an_hls_product_is_refused_with_exit_2(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    assert cli("offline", "track:1", "--source", origin.source).exit_code == 0
    served = len(sim.log)
    before = cli("state", "--json").stdout
    result = cli("offline", "--refresh", "track:1", "--source", origin.source)
    assert result.exit_code == 2
    assert "refresh of HLS products is not supported" in result.stderr
    assert len(sim.log) == served
    assert cli("state", "--json").stdout == before


def test_a_proxy_wanting_a_password_is_exit_1_naming_the_proxy_not_the_host(
    cli: Cli, home: Path, httpserver: HTTPServer, proxy: ForwardProxy
) -> None:
    httpserver.expect_request("/media/1.flac").respond_with_data(BODY_V1)
    proxy.wants = "Basic " + base64.b64encode(b"agent:right").decode()
    url = httpserver.url_for("/media/1.flac")
    wrong = cli("offline", url, "--proxy", proxy.url("agent:wr0ng@"))
    assert wrong.exit_code == 1
    assert "HTTP 407 Proxy Authentication Required from the proxy for localhost" in wrong.stderr
    assert "USER:PASSWORD@ before its host" in wrong.stderr and "wr0ng" not in wrong.output
    assert cli("offline", url, "--proxy", proxy.url("agent:right@")).exit_code == 0
