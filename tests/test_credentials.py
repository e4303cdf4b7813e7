"""Credentials and tokens never reach the database or the logs, yet resume still works."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from offline_cli.redaction import redact_url, scrub_urls
from tests.netsim import Fault, NetSim, Resource

SECRET = "s3cr3t-T0KEN-value"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cdn.example.com/a.mp4", "https://cdn.example.com/a.mp4"),
        ("https://cdn.example.com/a.mp4?x=1&y=2", "https://cdn.example.com/a.mp4?x=1&y=2"),
        (
            f"https://cdn.example.com/a.mp4?token={SECRET}&x=1",
            "https://cdn.example.com/a.mp4?token=REDACTED&x=1",
        ),
        (
            f"https://u:{SECRET}@cdn.example.com/a",
            "https://REDACTED@cdn.example.com/a",
        ),
        (
            f"https://cdn.example.com/a?X-Amz-Signature={SECRET}&X-Amz-Credential=abc",
            "https://cdn.example.com/a?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def _all_store_bytes(home: Path) -> bytes:
    data = b""
    for name in ("offline.db", "offline.db-wal", "offline.db-shm"):
        path = home / name
        if path.exists():
            data += path.read_bytes()
    return data


def test_token_never_stored_or_logged_and_resume_still_works(
    cli, home: Path, tmp_path: Path
) -> None:
    sim = NetSim().start()
    try:
        body = bytes(range(256)) * 800
        sim.add("/m", Resource(body, faults=[Fault("cut", at=50_000)]))
        url = sim.url("/m") + f"?token={SECRET}"
        log = tmp_path / "log.jsonl"

        first = cli("--log-file", str(log), "-v", "offline", url, "--retries", "0")
        assert first.exit_code == 1  # cut, no retries: kept for resume
        resumed = cli("--log-file", str(log), "-v", "resume")
        assert resumed.exit_code == 0, resumed.output

        assert SECRET.encode() not in _all_store_bytes(home)
        assert SECRET not in log.read_text()
        assert SECRET not in first.output + resumed.output
        vault = home / "credentials.json"
        assert stat.S_IMODE(vault.stat().st_mode) == 0o600
        assert SECRET in json.loads(vault.read_text())[redact_url(url)]
        # the user can still name the product by the URL they typed
        assert cli("state", url).stdout.strip() == "OFFLINED_AND_VALID"
        assert sim.requests("/m")[-1].range == "bytes=50000-"
    finally:
        sim.stop()


def test_delete_forgets_credentials(cli, home: Path, httpserver: HTTPServer) -> None:
    def handler(request: Request) -> Response:
        if request.args.get("sig") != SECRET:
            return Response("forbidden", status=403)
        return Response(b"payload")

    httpserver.expect_request("/f").respond_with_handler(handler)
    url = httpserver.url_for("/f") + f"?sig={SECRET}"
    assert cli("offline", url).exit_code == 0
    assert cli("delete", url).exit_code == 0
    assert SECRET not in (home / "credentials.json").read_text()


def test_scrub_urls_in_messages() -> None:
    text = f"bad url 'ftp://alice:{SECRET}@cdn.example.com/x?token={SECRET}' and http://ok/x"
    scrubbed = scrub_urls(text)
    assert SECRET not in scrubbed
    assert "REDACTED@cdn.example.com" in scrubbed and "http://ok/x" in scrubbed


def test_credentials_from_a_playback_source_never_stored(cli, home: Path, tmp_path: Path) -> None:
    sim = NetSim().start()
    try:
        info = (
            '{"productType": "TRACK", "productId": "42", "manifestMimeType": "audio/flac",'
            f' "url": "ftp://alice:{SECRET}@cdn.example.com/42.flac?token={SECRET}"}}'
        )
        sim.add("/tracks/42", Resource(info.encode()))
        log = tmp_path / "log.jsonl"
        result = cli(
            "--log-file", str(log), "offline", "track:42", "--source", sim.url("/{type}s/{id}")
        )
        assert result.exit_code == 1
        assert SECRET not in result.output
        assert SECRET.encode() not in _all_store_bytes(home)
        assert SECRET not in log.read_text()
    finally:
        sim.stop()


def test_concurrent_seals_keep_every_entry(home: Path) -> None:
    """Processes sealing at once never drop each other's entries (the vault is locked)."""
    import subprocess
    import sys

    home.mkdir(parents=True)
    vault = home / "credentials.json"
    code = (
        "import sys; from pathlib import Path\n"
        "from offline_cli.credentials import CredentialVault\n"
        "v = CredentialVault(Path(sys.argv[1]))\n"
        "for i in range(25): v.seal(f'http://h/{sys.argv[2]}/{i}?token=t{i}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(vault), str(n)]) for n in range(6)]
    assert [p.wait(60) for p in procs] == [0] * 6
    assert len(json.loads(vault.read_text())) == 6 * 25


def test_seal_after_another_process_forgot_stores_again(home: Path) -> None:
    from offline_cli.credentials import CredentialVault

    home.mkdir(parents=True)
    path = home / "credentials.json"
    url = f"http://127.0.0.1:1/f?token={SECRET}"
    long_lived, other = CredentialVault(path), CredentialVault(path)
    long_lived.seal(url)
    other.forget([redact_url(url)])  # e.g. `delete` in another process
    long_lived.seal(url)  # a new download of the same URL
    assert CredentialVault(path).reveal(redact_url(url)) == url
