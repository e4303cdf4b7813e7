"""TLS: --ca-bundle and --insecure, bad CA bundles, and redirects from https to http."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pytest_httpserver import HTTPServer

from offline_cli.paths import Layout

BODY = b"tls body " * 100


@pytest.fixture
def plain() -> Iterator[HTTPServer]:
    server = HTTPServer()
    server.expect_request("/f").respond_with_data(BODY)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def tls(plain: HTTPServer) -> Iterator[tuple[HTTPServer, trustme.CA]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = HTTPServer(ssl_context=context)
    server.expect_request("/f").respond_with_data(BODY)
    server.expect_request("/redir").respond_with_data(
        "", status=302, headers={"Location": plain.url_for("/f")}
    )
    server.expect_request("/source/track/42").respond_with_data(
        "", status=302, headers={"Location": plain.url_for("/f")}
    )
    server.start()
    yield server, ca
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def bundle(tls: tuple[HTTPServer, trustme.CA], tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls[1].cert_pem.write_to_path(str(path))
    return path


def _stored(cli, key: str = "track:42") -> bytes | None:
    result = cli("path", key)
    return Path(result.stdout.strip()).read_bytes() if result.exit_code == 0 else None


# -- redirects from https to http --------------------------------------------------------------


def test_a_redirect_from_https_to_http_is_refused(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], plain: HTTPServer, bundle: Path
) -> None:
    server, _ca = tls
    url = server.url_for("/redir")

    result = cli("offline", "--ca-bundle", str(bundle), "--id", "track:42", url)

    assert result.exit_code == 1
    assert f"track:42: refused redirect from {url} to {plain.url_for('/f')} (a downgrade)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert plain.log == []  # never asked in clear text
    assert _stored(cli) is None
    [row] = json.loads(cli("state", "--json").stdout)
    assert row["state"] not in ("PAUSED", "OFFLINED")  # permanent: no retry waits


def test_a_playback_source_redirecting_to_http_is_refused(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], plain: HTTPServer, bundle: Path
) -> None:
    server, _ca = tls
    template = server.url_for("/source/{type}/{id}")

    result = cli("offline", "--ca-bundle", str(bundle), "--source", template, "track:42")

    assert result.exit_code == 1
    assert "refused redirect from https://" in result.stderr
    assert "(a downgrade)" in result.stderr
    assert plain.log == []


def test_a_redirect_from_http_to_https_is_still_followed(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], plain: HTTPServer, bundle: Path
) -> None:
    server, _ca = tls
    plain.expect_request("/up").respond_with_data(
        "", status=302, headers={"Location": server.url_for("/f")}
    )

    result = cli("offline", "--ca-bundle", str(bundle), "--id", "track:42", plain.url_for("/up"))

    assert result.exit_code == 0, result.stderr
    assert _stored(cli) == BODY


# -- --ca-bundle and --insecure ------------------------------------------------------------------


def test_a_private_ca_is_trusted_with_ca_bundle_only(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], bundle: Path
) -> None:
    server, _ca = tls
    url = server.url_for("/f")

    refused = cli("offline", "--id", "track:41", url)
    trusted = cli("offline", "--ca-bundle", str(bundle), "--id", "track:42", url)

    assert refused.exit_code == 1
    assert "does not verify" in refused.stderr
    assert "--ca-bundle" in refused.stderr  # the hint names the option
    assert trusted.exit_code == 0, trusted.stderr
    assert _stored(cli) == BODY


def test_ca_bundle_from_the_environment_and_the_config_file(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], bundle: Path, monkeypatch
) -> None:
    server, _ca = tls
    monkeypatch.setenv("OFFLINE_CLI_CA_BUNDLE", str(bundle))
    assert cli("offline", "--id", "track:42", server.url_for("/f")).exit_code == 0
    monkeypatch.delenv("OFFLINE_CLI_CA_BUNDLE")
    (home / "config.toml").write_text(f"ca_bundle = {json.dumps(str(bundle))}\n")
    assert cli("offline", "--id", "track:43", server.url_for("/f")).exit_code == 0
    assert _stored(cli, "track:43") == BODY


@pytest.mark.parametrize("quiet", [[], ["-q"]])
def test_insecure_downloads_with_a_warning_on_every_run(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], quiet: list[str]
) -> None:
    server, _ca = tls

    result = cli("offline", *quiet, "--insecure", "--id", "track:42", server.url_for("/f"))
    again = cli("resume", *quiet, "--insecure")

    assert result.exit_code == 0, result.stderr
    assert _stored(cli) == BODY
    for run in (result, again):
        assert "warning: TLS certificates are not verified (--insecure)" in run.stderr


def test_insecure_from_the_environment_warns_too(
    cli, home: Path, tls: tuple[HTTPServer, trustme.CA], monkeypatch
) -> None:
    server, _ca = tls
    monkeypatch.setenv("OFFLINE_CLI_INSECURE", "1")

    result = cli("offline", "--id", "track:42", server.url_for("/f"))

    assert result.exit_code == 0, result.stderr
    assert "TLS certificates are not verified ($OFFLINE_CLI_INSECURE)" in result.stderr


# -- bad CA bundles ------------------------------------------------------------------------------


def _bad_bundle(kind: str, tmp_path: Path) -> str:
    if kind == "missing":
        return str(tmp_path / "nonexistent.pem")
    if kind == "device":
        return "/dev/null"
    if kind == "folder":
        return str(tmp_path)
    key = tmp_path / "key.pem"
    key.write_bytes(trustme.CA().issue_cert("x.test").private_key_pem.bytes())
    return str(key)


@pytest.mark.parametrize("kind", ["missing", "device", "folder", "key"])
@pytest.mark.parametrize("given", ["SSL_CERT_FILE", "--ca-bundle", "OFFLINE_CLI_CA_BUNDLE"])
@pytest.mark.parametrize("command", ["offline", "resume"])
def test_a_bad_ca_bundle_is_exit_2_before_anything_is_created(
    cli, home: Path, tmp_path: Path, monkeypatch, kind: str, given: str, command: str
) -> None:
    path = _bad_bundle(kind, tmp_path)
    args = ["--id", "track:42", "https://127.0.0.1:1/f"] if command == "offline" else []
    if given == "--ca-bundle":
        args = ["--ca-bundle", path, *args]
    else:
        monkeypatch.setenv(given, path)

    result = cli(command, *args)

    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    shown = "--ca-bundle" if given == "--ca-bundle" else f"${given}"
    assert f"CA bundle {path} ({shown})" in line
    assert "Traceback" not in result.stderr
    assert not Layout(home).database.exists()


def test_a_bundle_that_breaks_after_the_check_fails_the_download_without_a_traceback(
    cli, home: Path, tmp_path: Path, monkeypatch
) -> None:
    # The engine's transport builds the TLS context itself (lazily): its error is ours too.
    from offline_cli.config import Settings
    from offline_cli.engine import OfflineEngine
    from offline_cli.errors import PermanentError
    from offline_cli.models import MediaProduct, ProductType

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))

    with (
        OfflineEngine(home, settings=Settings(retries=0)) as engine,
        pytest.raises(PermanentError, match=r"CA bundle .*gone\.pem \(\$SSL_CERT_FILE\)"),
    ):
        engine.offline(MediaProduct(ProductType.TRACK, "42", url="https://127.0.0.1:1/f"))
