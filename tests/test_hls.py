"""HLS products: variants, renditions, byte ranges, init sections, AES-128 keys, refusals,
faults on single segments, kill -9 and resume, validation and repair, expired signed URLs."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offline_cli import MediaProduct, ProductType
from tests.conftest import RecordingListener
from tests.hlsserver import HlsOrigin
from tests.netsim import Fault, NetSim, Resource
from tests.procutil import CrashAt, Procs, download_state

# No waiting between retries: a cut segment is retried at once.
FAST = {"OFFLINE_CLI_BACKOFF_BASE": "0", "OFFLINE_CLI_BACKOFF_MAX": "0"}
Cli = Callable[..., Any]


def stored_folder(home: Path) -> Path:
    folders = list((home / "store").glob("*/*.hls"))
    assert len(folders) == 1, folders
    return folders[0]


def playlist_uris(playlist: Path) -> list[str]:
    """Every URI a playlist names: its URI lines and its URI="..." attributes."""
    uris = []
    for line in playlist.read_text().splitlines():
        if line and not line.startswith("#"):
            uris.append(line)
        uris += re.findall(r'URI="([^"]+)"', line)
    return uris


def assert_plays_from_disk(folder: Path) -> None:
    """Every URI of the local playlists is a relative name of a stored file (and ffprobe,
    where installed, reads the stored playlist)."""
    pending, seen = ["index.m3u8"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        assert "/" not in name and ":" not in name, name
        assert (folder / name).is_file(), name
        if name.endswith(".m3u8"):
            pending += playlist_uris(folder / name)
    assert len(seen) > 2
    if shutil.which("ffprobe"):
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-allowed_extensions", "ALL", str(folder / "index.m3u8")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "No such file" not in probe.stderr, probe.stderr


def offline(cli: Cli, origin: HlsOrigin, *args: str) -> Any:
    return cli("offline", "track:1", "--source", origin.source, *args, env=FAST)


def stream_of(home: Path) -> dict[str, Any]:
    conn = sqlite3.connect(home / "offline.db")
    try:
        (raw,) = conn.execute("SELECT stream FROM offlined_entries").fetchone()
    finally:
        conn.close()
    return dict(json.loads(raw))


# -- variants ---------------------------------------------------------------------------------


def test_master_playlist_takes_the_highest_bandwidth_and_stores_a_playable_folder(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(800_000, 2_000_000, 1_200_000))
    result = offline(cli, origin)
    assert result.exit_code == 0, result.stderr
    assert cli("state", "track:1").stdout.strip() == "OFFLINED_AND_VALID"
    assert {p.split("/")[2] for p in origin.segment_requests()} == {"v2000000"}
    folder = stored_folder(home)
    assert_plays_from_disk(folder)
    for i in range(origin.segments):
        stored = (folder / f"v-s{i + 1}.ts").read_bytes()
        assert stored == origin.bodies[f"/hls/v2000000/seg{i}.ts"]
    assert stream_of(home)["bandwidth"] == 2_000_000
    # nothing partial is left, and `validate` hashes every part
    assert not list((home / "partial").iterdir())
    checked = cli("validate", "track:1")
    assert checked.exit_code == 0 and "VALID" in checked.stdout


@pytest.mark.parametrize(
    ("args", "taken"),
    [
        (["--quality", "worst"], "v800000"),
        (["--quality", "1200000"], "v1200000"),
        (["--max-bandwidth", "1500000"], "v1200000"),
        (["--max-bandwidth", "100"], "v800000"),  # none fits: the lowest, as Media3 does
    ],
)
def test_quality_options_choose_the_variant(
    cli: Cli, home: Path, sim: NetSim, args: list[str], taken: str
) -> None:
    origin = HlsOrigin(sim, variants=(800_000, 2_000_000, 1_200_000))
    result = offline(cli, origin, *args)
    assert result.exit_code == 0, result.stderr
    assert {p.split("/")[2] for p in origin.segment_requests()} == {taken}
    assert stream_of(home)["variant"].endswith(f"/{taken}/index.m3u8")


def test_a_bandwidth_no_variant_has_is_refused_naming_the_offered_ones(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim)
    result = offline(cli, origin, "--quality", "999")
    assert result.exit_code == 1
    assert "no variant of BANDWIDTH 999; the playlist offers 800000, 2000000" in result.stderr
    assert origin.segment_requests() == []


def test_a_malformed_quality_is_bad_usage(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim)
    result = offline(cli, origin, "--quality", "highest")
    assert result.exit_code == 2
    assert "malformed quality 'highest'" in result.stderr
    assert not (home / "offline.db").exists() or origin.segment_requests() == []


# -- renditions, byte ranges, init sections, keys ---------------------------------------------


def test_audio_rendition_init_sections_and_keys_are_stored_with_a_local_master(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, audio=True, init=True, key=True)
    result = offline(cli, origin)
    assert result.exit_code == 0, result.stderr
    folder = stored_folder(home)
    assert_plays_from_disk(folder)
    master = (folder / "index.m3u8").read_text()
    assert 'URI="audio1.m3u8"' in master and "video.m3u8" in master
    assert 'NAME="English"' in master and 'LANGUAGE="en"' in master
    video = (folder / "video.m3u8").read_text()
    assert '#EXT-X-KEY:METHOD=AES-128,URI="v-k1.key"' in video
    assert '#EXT-X-MAP:URI="v-i1.mp4"' in video
    assert (folder / "v-k1.key").read_bytes() == sim.resources["/hls/key.bin"].body
    assert len(origin.segment_requests("audio")) == origin.segments


def test_byte_range_segments_and_init_section_are_stored_as_their_own_files(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, byteranges=True, variants=(900_000,))
    result = offline(cli, origin)
    assert result.exit_code == 0, result.stderr
    folder = stored_folder(home)
    whole = origin.bodies["/hls/v900000/all.mp4"]
    assert (folder / "v-i1.mp4").read_bytes() == whole[:700]
    size = origin.segment_bytes
    for i in range(origin.segments):
        start = 700 + i * size
        assert (folder / f"v-s{i + 1}.mp4").read_bytes() == whole[start : start + size]
    ranges = {s.range for s in sim.requests("/hls/v900000/all.mp4")}
    assert f"bytes=700-{700 + size - 1}" in ranges and "bytes=0-699" in ranges
    assert "#EXT-X-BYTERANGE" not in (folder / "index.m3u8").read_text()
    assert_plays_from_disk(folder)


def test_a_server_that_ignores_ranges_cannot_serve_byte_range_segments(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, byteranges=True, variants=(900_000,))
    sim.resources["/hls/v900000/all.mp4"].faults = [Fault("ignore_range")] * 20
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "HTTP 200 to a byte-range request" in result.stderr
    assert cli("state", "track:1").stdout.strip() == "NOT_OFFLINED"
    assert not list((home / "partial").iterdir())


# -- refusals before any segment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ('#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://key42"', "METHOD=SAMPLE-AES"),
        ('#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI="https://k.example/k"', "SAMPLE-AES-CTR"),
        ('#EXT-X-KEY:METHOD=AES-128,URI="skd://key42"', "FairPlay key (skd://)"),
        (
            '#EXT-X-KEY:METHOD=AES-128,URI="https://k.example/k",KEYFORMAT="com.widevine"',
            "KEYFORMAT='com.widevine'",
        ),
    ],
)
def test_drm_streams_are_refused_before_any_segment_naming_the_method(
    cli: Cli, home: Path, sim: NetSim, header: str, named: str
) -> None:
    origin = HlsOrigin(sim, media_header=header)
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "cannot store this stream for offline use" in result.stderr
    assert named in result.stderr
    assert origin.segment_requests() == []
    assert cli("state", "track:1").stdout.strip() == "NOT_OFFLINED"


def test_live_playlists_are_refused_before_any_segment(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, endlist=False)
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "a live playlist (no #EXT-X-ENDLIST)" in result.stderr
    assert origin.segment_requests() == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<html>not a playlist</html>", "it does not start with #EXTM3U"),
        ("#EXTM3U\n#EXTINF:4,\n#EXT-X-BYTERANGE:12x\nseg.ts\n#EXT-X-ENDLIST\n", "BYTERANGE"),
        ("#EXTM3U\n#EXTINF:4,\nftp://elsewhere/seg.ts\n#EXT-X-ENDLIST\n", "not an http(s) URL"),
        ("#EXTM3U\n#EXT-X-ENDLIST\n", "without segments"),
    ],
)
def test_malformed_playlists_fail_naming_the_problem(
    cli: Cli, home: Path, sim: NetSim, text: str, problem: str
) -> None:
    origin = HlsOrigin(sim)
    sim.resources["/hls/master.m3u8"] = Resource(text.encode())
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "bad HLS playlist from 127.0.0.1" in result.stderr and problem in result.stderr
    assert "Traceback" not in result.stderr
    assert cli("state", "track:1").stdout.strip() == "NOT_OFFLINED"


def test_names_in_the_playlist_never_become_file_names(cli: Cli, home: Path, sim: NetSim) -> None:
    """``../`` names (and a name of another folder) are fetched as URLs, stored under the
    tool's own names inside the product's folder."""
    origin = HlsOrigin(sim, variants=(1,))
    sim.add("/evil.ts", Resource(b"E" * 500))
    sim.add(
        "/hls/v1/index.m3u8",
        Resource(
            b"#EXTM3U\n#EXTINF:4,\n../../../../../evil.ts\n#EXTINF:4,\n"
            b"..%2F..%2Fevil.ts\n#EXT-X-ENDLIST\n"
        ),
    )
    sim.add("/hls/v1/..%2F..%2Fevil.ts", Resource(b"F" * 10))
    result = offline(cli, origin)
    assert result.exit_code == 0, result.stderr
    folder = stored_folder(home)
    assert sorted(p.name for p in folder.iterdir()) == ["index.m3u8", "v-s1.ts", "v-s2.ts"]
    assert (folder / "v-s1.ts").read_bytes() == b"E" * 500
    outside = [p for p in home.parent.rglob("*evil*")]
    assert outside == []


# -- faults on single segments -------------------------------------------------------------------


def test_a_segment_cut_mid_body_resumes_by_range(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    path = origin.segment_path("v1000", 2)
    sim.resources[path].faults = [Fault("cut", at=7_000)]
    result = offline(cli, origin)
    assert result.exit_code == 0, result.stderr
    served = sim.requests(path)
    assert [s.range for s in served] == [None, "bytes=7000-"]
    assert served[1].if_range == sim.resources[path].etag
    assert (stored_folder(home) / "v-s3.ts").read_bytes() == origin.bodies[path]


def test_a_segment_that_fails_for_good_removes_the_partial_folder(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    del sim.resources[origin.segment_path("v1000", 4)]
    result = offline(cli, origin, "-j", "1")
    assert result.exit_code == 1
    assert "segment v-s5.ts: HTTP 404 Not Found from 127.0.0.1" in result.stderr
    assert cli("state", "track:1").stdout.strip() == "NOT_OFFLINED"
    assert not list((home / "partial").iterdir())
    assert not list((home / "store").glob("*/*.hls"))


def test_a_key_that_fails_for_good_leaves_nothing(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, key=True)
    # twice: the first 403 sends the product back to its source once (an expired URL)
    sim.resources["/hls/key.bin"].faults = [Fault("status", status=403)] * 2
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "key v-k1.key: HTTP 403" in result.stderr
    assert not list((home / "partial").iterdir())
    assert cli("state", "track:1").stdout.strip() == "NOT_OFFLINED"


def test_a_key_that_is_not_16_bytes_is_refused(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, key=True)
    sim.resources["/hls/key.bin"] = Resource(b"<html>login</html>")
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "the AES-128 key is 18 bytes, not 16" in result.stderr


def test_exhausted_network_retries_keep_the_completed_segments_for_resume(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    path = origin.segment_path("v1000", 3)
    sim.resources[path].faults = [Fault("status", status=503)] * 3
    failed = cli(
        "offline", "track:1", "--source", origin.source, "-j", "1", "--retries", "1", env=FAST
    )
    assert failed.exit_code == 1
    assert download_state(home, "track:1") == "FAILED"
    before = origin.segment_requests()
    resumed = cli("resume", env={**FAST, "OFFLINE_CLI_SOURCE": origin.source})
    assert resumed.exit_code == 0, resumed.stderr
    again = origin.segment_requests()[len(before) :]
    # the three segments done before the failure are never fetched again
    assert set(again) == {origin.segment_path("v1000", i) for i in range(3, 6)}


def test_kill9_mid_playlist_then_resume_fetches_only_the_missing_parts(
    procs: Procs, home: Path, sim: NetSim, cli: Cli
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,), segments=8)
    child = procs.spawn_crash(
        MediaProduct(ProductType.TRACK, "1"),
        CrashAt("checkpoint", part="v-s5.ts"),
        settings={"source": origin.source, "jobs": 1},
    )
    assert child.wait() == -9, child.stderr()
    first = origin.segment_requests()
    assert first == [origin.segment_path("v1000", i) for i in range(5)]
    resumed = cli("resume", env={**FAST, "OFFLINE_CLI_SOURCE": origin.source})
    assert resumed.exit_code == 0, resumed.stderr
    again = origin.segment_requests()[len(first) :]
    assert sorted(again) == sorted(origin.segment_path("v1000", i) for i in range(4, 8))
    assert cli("validate", "track:1").exit_code == 0


# -- validate and repair -------------------------------------------------------------------------


def test_a_damaged_segment_is_repaired_alone(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, variants=(1_000,), key=True)
    assert offline(cli, origin).exit_code == 0
    folder = stored_folder(home)
    damaged = folder / "v-s3.ts"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    checked = cli("validate", "track:1")
    assert checked.exit_code == 1
    assert "segment v-s3.ts SHA-256 differs" in checked.stdout + checked.stderr
    before = origin.segment_requests()
    key_requests = len(sim.requests("/hls/key.bin"))
    repaired = cli("validate", "--repair", "track:1", "--source", origin.source, env=FAST)
    assert repaired.exit_code == 0, repaired.stdout + repaired.stderr
    assert origin.segment_requests()[len(before) :] == [origin.segment_path("v1000", 2)]
    assert len(sim.requests("/hls/key.bin")) == key_requests
    assert cli("validate", "track:1").exit_code == 0
    assert_plays_from_disk(stored_folder(home))


def test_state_reads_a_missing_segment_as_not_valid(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    assert offline(cli, origin).exit_code == 0
    (stored_folder(home) / "v-s2.ts").unlink()
    assert cli("state", "track:1").stdout.strip() == "OFFLINED_BUT_NOT_VALID"


def test_expired_segment_urls_are_resolved_again_through_the_source(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,), signed=True, token_uses=3)
    result = offline(cli, origin, "-j", "1")
    assert result.exit_code == 0, result.stderr
    info_requests = sim.requests("/info/track/1")
    assert len(info_requests) == 2
    served = [(s.path, s.status) for s in sim.log if "/seg" in s.path]
    assert served.count((origin.segment_path("v1000", 3), 403)) == 1
    # each segment stored once: none of the three fetched before the expiry again
    assert [p for p, status in served if status == 200] == [
        origin.segment_path("v1000", i) for i in range(6)
    ]
    # the token is a credential: never in the database
    raw = (home / "offline.db").read_bytes()
    assert b"token=t1" not in raw and b"token=t2" not in raw


# -- delete, cleanup, metrics -------------------------------------------------------------------


def test_delete_removes_the_folder_and_cleanup_keeps_a_stored_one(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    assert offline(cli, origin).exit_code == 0
    folder = stored_folder(home)
    cleaned = cli("cleanup", "--older-than", "0")
    assert cleaned.exit_code == 0
    assert folder.is_dir() and cli("state", "track:1").stdout.strip() == "OFFLINED_AND_VALID"
    assert cli("delete", "track:1").exit_code == 0
    assert not folder.exists()


def test_an_orphaned_hls_folder_is_cleaned_up_whole(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    assert offline(cli, origin).exit_code == 0
    folder = stored_folder(home)
    orphan = folder.parent / ("0" * 32 + ".hls")
    shutil.copytree(folder, orphan)
    listed = cli("cleanup", "--older-than", "0", "--json")
    items = json.loads(listed.stdout)["items"]
    assert [i["path"] for i in items if i["kind"] == "orphan"] == [str(orphan)]
    assert not orphan.exists() and folder.is_dir()


def test_health_counts_an_hls_product_as_one_download(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, variants=(1_000,))
    sim.resources[origin.segment_path("v1000", 1)].faults = [Fault("status", status=503)]
    assert offline(cli, origin).exit_code == 0
    report = json.loads(cli("health", "--json").stdout)
    assert report["downloads_started"] == 1 and report["downloads_succeeded"] == 1
    assert report["retries"] == 1
    assert report["bytes_downloaded"] >= origin.segments * origin.segment_bytes


class BytesListener(RecordingListener):
    def __init__(self) -> None:
        super().__init__()
        self.totals: list[int | None] = []

    def offlining_bytes(self, product: MediaProduct, done: int, total: int | None) -> None:
        self.totals.append(total)


def test_progress_counts_bytes_estimated_from_bandwidth_until_sizes_are_known(
    make_engine: Callable[..., Any], sim: NetSim
) -> None:
    # 40 kbit/s x 4 s = 20,000 bytes a segment: the estimate is the size, so every total
    # reported (before and after the sizes are known) is the whole product's.
    origin = HlsOrigin(sim, variants=(40_000,), segments=5)
    for i in range(origin.segments):
        sim.resources[origin.segment_path("v40000", i)].rate = 400_000
    listener = BytesListener()
    engine = make_engine(listener, source=origin.source, jobs=1, monotonic=time.monotonic)
    assert engine.offline(MediaProduct(ProductType.TRACK, "1"))
    assert len(listener.totals) >= 3
    assert set(listener.totals) == {5 * 20_000}
    fractions = [f for name, _, f in listener.events if name == "progressed"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_redirected_playlist_resolves_its_names_against_where_it_came_from(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    """As players do: relative URIs of a playlist served after a redirect are relative to
    the URL it came from, not the one asked for."""
    origin = HlsOrigin(sim, variants=(1_000,), prefix="/real")
    sim.add(
        "/moved/master.m3u8",
        Resource(
            b"", faults=[Fault("status", status=302, headers={"Location": "/real/master.m3u8"})]
        ),
    )
    sim.resources["/info/track/1"] = Resource(
        json.dumps(
            {
                "manifestMimeType": "application/vnd.apple.mpegurl",
                "url": sim.url("/moved/master.m3u8"),
            }
        ).encode()
    )
    result = offline(cli, origin)
    assert result.exit_code == 0, result.stderr
    assert sorted(origin.segment_requests()) == [origin.segment_path("v1000", i) for i in range(6)]


def test_credentials_go_to_playlists_and_segments_of_the_source_origin_only(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    """The token and --header reach the source's own origin (playlists, segments, keys there)
    and never a CDN of another origin the playlist names."""
    cdn = NetSim().start(poll_interval=0.02)
    try:
        origin = HlsOrigin(sim, variants=(1_000,), key=True)
        elsewhere = HlsOrigin(cdn, variants=(2_000,))
        master = (
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nv1000/index.m3u8\n"
            f"#EXT-X-STREAM-INF:BANDWIDTH=500\n{cdn.url('/hls/v2000/index.m3u8')}\n"
        )
        sim.resources["/hls/master.m3u8"] = Resource(master.encode())
        env = {**FAST, "OFFLINE_CLI_TOKEN": "sekrit-token"}
        home_args = ("--header", "X-Api-Key: k-123")
        assert (
            cli("offline", "track:1", "--source", origin.source, *home_args, env=env).exit_code == 0
        )
        for served in sim.log:
            assert served.headers.get("Authorization") == "Bearer sekrit-token", served.path
            assert served.headers.get("X-Api-Key") == "k-123"
        assert cli("delete", "track:1").exit_code == 0
        worst = cli(
            "offline",
            "track:1",
            "--source",
            origin.source,
            "--quality",
            "worst",
            *home_args,
            env=env,
        )
        assert worst.exit_code == 0, worst.stderr
        assert elsewhere.segment_requests()
        for served in cdn.log:
            assert "Authorization" not in served.headers and "X-Api-Key" not in served.headers
    finally:
        cdn.stop()


def test_a_checksum_given_for_an_hls_product_is_refused_not_ignored(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim)
    result = offline(cli, origin, "--sha256", "a" * 64)
    assert result.exit_code == 1
    assert "--sha256 cannot check an HLS product" in result.stderr
    assert origin.segment_requests() == []


def test_a_stale_folder_at_the_final_name_does_not_stop_the_commit(
    cli: Cli, home: Path, sim: NetSim, procs: Procs
) -> None:
    """A crash after the folder was renamed back (or a planted folder of the same name):
    the commit replaces what is at its own final name."""
    origin = HlsOrigin(sim, variants=(1_000,))
    child = procs.spawn_crash(
        MediaProduct(ProductType.TRACK, "1"),
        CrashAt("files_moved"),
        settings={"source": origin.source},
    )
    assert child.wait() == -9, child.stderr()
    folder = stored_folder(home)
    shutil.copytree(folder, home / "partial" / folder.name.replace(".hls", ".hls.part"))
    (folder / "planted.txt").write_text("x")
    resumed = cli("resume", env={**FAST, "OFFLINE_CLI_SOURCE": origin.source})
    assert resumed.exit_code == 0, resumed.stderr
    assert "planted.txt" not in {p.name for p in stored_folder(home).iterdir()}
    assert cli("validate", "track:1").exit_code == 0


def test_repair_takes_the_variant_the_product_was_stored_with(
    cli: Cli, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(800_000, 2_000_000))
    assert offline(cli, origin, "--quality", "worst").exit_code == 0
    (stored_folder(home) / "v-s1.ts").unlink()
    before = len(origin.segment_requests())
    repaired = cli("validate", "--repair", "--source", origin.source, env=FAST)
    assert repaired.exit_code == 0, repaired.stderr
    assert origin.segment_requests()[before:] == [origin.segment_path("v800000", 0)]
    assert stream_of(home)["bandwidth"] == 800_000


def test_quality_from_the_config_may_be_a_number(
    cli: Cli, home: Path, sim: NetSim, tmp_path: Path
) -> None:
    origin = HlsOrigin(sim, variants=(800_000, 2_000_000))
    config = tmp_path / "config.toml"
    config.write_text("quality = 800000\n")
    result = cli(
        "offline",
        "track:1",
        "--source",
        origin.source,
        env={**FAST, "OFFLINE_CLI_CONFIG": str(config)},
    )
    assert result.exit_code == 0, result.stderr
    assert stream_of(home)["bandwidth"] == 800_000


def test_a_source_that_wants_credentials_says_so(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim)
    sim.resources["/info/track/1"].faults = [Fault("status", status=401)]
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "the playback-info source refused: HTTP 401" in result.stderr
    assert "$OFFLINE_CLI_TOKEN" in result.stderr


def test_a_live_playlist_is_told_to_wait_for_the_end(cli: Cli, home: Path, sim: NetSim) -> None:
    origin = HlsOrigin(sim, endlist=False)
    result = offline(cli, origin)
    assert "try again once the stream has ended" in result.stderr
