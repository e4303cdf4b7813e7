"""Hostile HLS origins and a hostile home: what the attack on HLS support found (each of
these failed before its fix)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from offline_cli import MediaProduct, ProductType
from offline_cli.errors import DownloadError
from offline_cli.hls import Quality, plan
from offline_cli.paths import Layout
from tests.hlsserver import HlsOrigin
from tests.netsim import Fault, NetSim, Resource
from tests.procutil import CrashAt, Procs, download_state
from tests.test_hls import offline, stored_folder

ROOT = Path(__file__).resolve().parents[1]


def _crash_mid(procs: Procs, origin: HlsOrigin, part: str = "v-s3.ts") -> None:
    child = procs.spawn_crash(
        MediaProduct(ProductType.TRACK, "1"),
        CrashAt("checkpoint", part=part),
        settings={"source": origin.source, "jobs": 1},
    )
    assert child.wait() == -9, child.stderr()


# -- 1. a bracketed (IPv6-looking) URI in a playlist crashes the run with a traceback -------------


def test_a_malformed_ipv6_uri_in_a_media_playlist_is_a_bad_playlist_not_a_traceback(
    procs: Procs, home: Path, sim: NetSim
) -> None:
    """urllib's urljoin raises ValueError("Invalid IPv6 URL") from m3u8's absolute_uri, which
    hls._absolute calls outside the try of _parse: the ValueError escapes the engine."""
    origin = HlsOrigin(sim, variants=(1_000,))
    sim.add(
        "/hls/v1000/index.m3u8",
        Resource(b"#EXTM3U\n#EXTINF:4,\nseg0.ts\n#EXTINF:4,\nhttp://[::1/x.ts\n#EXT-X-ENDLIST\n"),
    )
    child = procs.spawn("offline", "track:1", "--source", origin.source)
    code = child.wait()
    err = child.stderr()
    assert "Traceback" not in err, err
    assert code == 1 and "bad HLS playlist" in err, (code, err)
    # and the download is not left IN_PROGRESS with no owner
    assert download_state(procs.home, "track:1") in (None, "FAILED")


def test_a_malformed_ipv6_key_uri_is_a_bad_playlist_too() -> None:
    text = (
        '#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="http://[::1/k"\n#EXTINF:4,\nx.ts\n#EXT-X-ENDLIST\n'
    )
    try:
        plan("http://127.0.0.1:9/m.m3u8", lambda u: (text, u), Quality(), None, product="t:1")
    except DownloadError as exc:
        assert "bad HLS playlist" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("accepted")


# -- 2. a non-empty folder at the final .hls path: OSError traceback at commit --------------------


def test_a_folder_planted_at_the_final_hls_path_does_not_crash_the_commit(
    procs: Procs, home: Path, sim: NetSim
) -> None:
    origin = HlsOrigin(sim, variants=(1_000,), segments=6)
    _crash_mid(procs, origin)
    partial = next((home / "partial").glob("*.hls.part"))
    download_id = partial.name.split(".")[0]
    final = Layout(home).final_hls_path("track:1", download_id)
    final.mkdir(parents=True)
    (final / "planted").write_text("p")
    procs.extra_env["OFFLINE_CLI_SOURCE"] = origin.source
    child = procs.spawn("resume")
    code = child.wait()
    err = child.stderr()
    assert "Traceback" not in err, err
    assert code in (0, 1, 4), (code, err)


# -- 3, 4. playlists refused before they are parsed ---------------------------------------------


def _refusal(text: str) -> str:
    """The message plan() refuses ``text`` with (it must refuse it)."""
    try:
        plan("http://127.0.0.1:9/m.m3u8", lambda u: (text, u), Quality(), None, product="t:1")
    except DownloadError as exc:
        return str(exc)
    raise AssertionError("accepted")


def _refused_before_parsing(text_expr: str) -> str:
    """Plan the playlist ``text_expr`` builds, in a fresh interpreter: the refusal message.
    m3u8 must not have been imported: the text is refused before it is parsed, so a huge
    playlist never builds a million segment objects, nor runs a quadratic key search."""
    code = textwrap.dedent(
        f"""
        import sys
        from offline_cli.hls import plan, Quality
        from offline_cli.errors import DownloadError
        text = {text_expr}
        try:
            plan("http://127.0.0.1:9/m.m3u8", lambda u: (text, u), Quality(), None, product="t")
        except DownloadError as exc:
            print(exc)
        print("m3u8" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    message, imported = out.stdout.strip().rsplit("\n", 1)
    assert imported == "False", "the playlist was parsed before it was refused"
    return message


KEY_PER_SEGMENT = (
    "'#EXTM3U\\n' + ''.join("
    "f'#EXT-X-KEY:METHOD=AES-128,URI=\"k{i}\"\\n#EXTINF:1,\\ns{i}.ts\\n' "
    "for i in range(20_000)) + '#EXT-X-ENDLIST\\n'"
)


def test_key_rotation_past_the_budget_is_refused_before_parsing() -> None:
    """m3u8 matches every segment against every key seen (time ~ keys x segments): 20,000
    segments each with its own key took minutes of CPU."""
    message = _refused_before_parsing(KEY_PER_SEGMENT)
    assert "20000 EXT-X-KEY/EXT-X-MAP tags for 20000 segments: too many" in message


def test_key_lines_alone_cannot_pin_the_cpu() -> None:
    body = "".join(f'#EXT-X-KEY:METHOD=AES-128,URI="k{i}"\n' for i in range(20_000))
    message = _refusal("#EXTM3U\n" + body + "#EXTINF:1,\ns.ts\n#EXT-X-ENDLIST\n")
    assert "20000 EXT-X-KEY/EXT-X-MAP tags for 1 segments: too many" in message


def test_an_oversized_segment_count_is_refused_before_parsing() -> None:
    """1.25 million tiny segments fit in 16 MiB: counted in the text, never built."""
    message = _refused_before_parsing(
        "'#EXTM3U\\n' + '#EXTINF:1,\\na\\n' * 1_250_000 + '#EXT-X-ENDLIST\\n'"
    )
    assert "more than 100000 segments" in message


# -- 5. byte-range parts of one file are stored from two versions of it ---------------------------


def test_byte_range_parts_of_one_file_never_mix_two_versions(
    cli: Any, home: Path, sim: NetSim
) -> None:
    """SPEC: 'The stored file is never a mix of two versions.' Each EXT-X-BYTERANGE part is
    fetched with its own validators, and none is compared with the validator of the parts
    already complete: a file that changes mid-product must never be stored half old, half
    new (the download fails and the next try starts over)."""
    origin = HlsOrigin(sim, byteranges=True, variants=(900_000,), segments=4, segment_bytes=1000)
    path = "/hls/v900000/all.mp4"
    old = origin.bodies[path]
    new = bytes(b ^ 0x55 for b in old)
    resource = sim.resources[path]
    served = {"n": 0}

    def gate(p: str, q: str) -> int | None:
        if p == path:
            served["n"] += 1
            if served["n"] == 4:  # init, s1, s2 served; the file changes before s3
                resource.faults.insert(0, Fault("change", body=new))
        return None

    sim.gate = gate
    result = offline(cli, origin, "-j", "1")
    assert result.exit_code == 1
    assert "changed while its byte ranges were fetched" in result.stderr
    assert cli("state", "track:1").stdout.strip() == "NOT_OFFLINED"
    assert not list((home / "partial").iterdir())
    # the next try fetches every range of the new version
    sim.gate = None
    assert offline(cli, origin, "-j", "1").exit_code == 0
    folder = stored_folder(home)
    stored = b"".join((folder / f"v-s{i}.mp4").read_bytes() for i in range(1, 5))
    assert (folder / "v-i1.mp4").read_bytes() + stored == new


# -- 2b. a folder planted at a local playlist's name in the partial folder: traceback, every run --


def test_a_folder_planted_at_index_m3u8_in_the_partial_folder_does_not_crash_the_commit(
    procs: Procs, home: Path, sim: NetSim
) -> None:
    """_write_playlists does path.unlink(missing_ok=True) on whatever is there: a directory
    raises IsADirectoryError (not an OfflineError), a traceback on each resume, forever."""
    origin = HlsOrigin(sim, variants=(1_000,), segments=6)
    _crash_mid(procs, origin)
    partial = next((home / "partial").glob("*.hls.part"))
    (partial / "index.m3u8").mkdir()
    (partial / "index.m3u8" / "z").write_text("z")
    procs.extra_env["OFFLINE_CLI_SOURCE"] = origin.source
    child = procs.spawn("resume")
    code = child.wait()
    err = child.stderr()
    assert "Traceback" not in err, err
    assert code in (0, 1, 4), (code, err)


# -- 6. files that are not parts are committed into the stored product ----------------------------


def test_only_the_products_own_files_are_committed_into_the_store(
    procs: Procs, home: Path, sim: NetSim, tmp_path: Path
) -> None:
    """Whatever lies in the partial folder at commit (a planted file, a link to a file outside
    the home, a stale part of an older plan) is renamed into store/ with the folder, kept
    there (cleanup never looks inside an .hls folder) and counted nowhere."""
    origin = HlsOrigin(sim, variants=(1_000,), segments=6)
    _crash_mid(procs, origin)
    partial = next((home / "partial").glob("*.hls.part"))
    (partial / "junk.bin").write_bytes(b"j" * 100_000)
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    (partial / "v-s99.ts").symlink_to(outside)
    procs.extra_env["OFFLINE_CLI_SOURCE"] = origin.source
    child = procs.spawn("resume")
    assert child.wait() == 0, child.stderr()
    names = sorted(p.name for p in stored_folder(home).iterdir())
    assert names == ["index.m3u8"] + [f"v-s{i}.ts" for i in range(1, 7)], names


# -- 7. a media sequence number >= 2**53 is rewritten as 0: AES-128 IVs change ---------------------


def test_the_media_sequence_of_an_encrypted_playlist_is_kept() -> None:
    """Without an IV attribute, a segment's AES-128 IV is its media sequence number (RFC 8216
    5.2). _int() turns any EXT-X-MEDIA-SEQUENCE >= 2**53 (valid: a decimal-integer is up to
    2**64-1) into 0, so the stored segments decrypt with the wrong IV; validate says VALID."""
    sequence = 2**60
    text = (
        f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n"
        '#EXT-X-KEY:METHOD=AES-128,URI="k.bin"\n#EXTINF:4,\nx.ts\n#EXT-X-ENDLIST\n'
    )
    planned = plan("http://127.0.0.1:9/m.m3u8", lambda u: (text, u), Quality(), None, product="t:1")
    local = planned.playlists["index.m3u8"]
    assert f"#EXT-X-MEDIA-SEQUENCE:{sequence}" in local or ",IV=0x" in local, local


def test_one_hostile_playlist_does_not_abort_the_other_products_of_the_batch(
    procs: Procs, home: Path, sim: NetSim
) -> None:
    """The ValueError of finding 1 escapes offline_products: the products after it in the
    same command (or the same `resume`) are never downloaded."""
    origin = HlsOrigin(sim, variants=(1_000,))
    sim.add(
        "/hls/v1000/index.m3u8",
        Resource(b"#EXTM3U\n#EXTINF:4,\nhttp://[::1/x.ts\n#EXT-X-ENDLIST\n"),
    )
    sim.add("/file.bin", Resource(b"z" * 1000))
    child = procs.spawn(
        "offline", "track:1", sim.url("/file.bin"), "--source", origin.source, "-j", "1"
    )
    child.wait()
    assert sim.requests("/file.bin"), child.stderr()


def test_a_byte_range_past_the_end_of_the_file_is_named_as_such(
    cli: Any, home: Path, sim: NetSim
) -> None:
    """Not "not enough disk space: need 562.9 TB": the server's Content-Range says the file
    is 5 kB."""
    origin = HlsOrigin(sim, variants=(1_000,))
    sim.add("/small.mp4", Resource(b"s" * 5000))
    sim.add(
        "/hls/v1000/index.m3u8",
        Resource(
            b"#EXTM3U\n#EXTINF:4,\n#EXT-X-BYTERANGE:562949953421311@0\n/small.mp4\n#EXT-X-ENDLIST\n"
        ),
    )
    result = offline(cli, origin)
    assert result.exit_code == 1
    assert "is past the end of the file at 127.0.0.1 (5000 bytes)" in result.stderr
    assert "disk space" not in result.stderr
