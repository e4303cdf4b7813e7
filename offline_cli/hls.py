"""HLS playlists: parse them (m3u8), choose a variant, refuse what cannot be stored for offline
use, plan the parts to fetch and write the local playlists that name them. No I/O here: the
caller fetches playlists and hands their text in."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from offline_cli.bundle import INDEX_PLAYLIST
from offline_cli.errors import DownloadError, PermanentError, UsageError
from offline_cli.models import MAX_URL_CHARS, check_url, shorten
from offline_cli.redaction import has_controls, redact_url

if TYPE_CHECKING:
    import m3u8  # imported when a playlist is parsed: ~45 ms no other command should pay

# Limits on what a hostile or broken playlist can make us do (a playlist is text a server
# wrote; a few thousand segments is a long film).
MAX_PLAYLIST_BYTES = 16 << 20
MAX_SEGMENTS = 100_000
# m3u8 matches every segment against every key and init section seen (time ~ tags x
# segments): a playlist rotating its key per segment would pin a CPU for minutes. Both are
# counted in the text before it is parsed.
MAX_KEY_TAGS = 2_000
MAX_TAG_WORK = 20_000_000  # (EXT-X-KEY + EXT-X-MAP tags) x segments
MAX_AUDIO_RENDITIONS = 8
MAX_SEGMENT_SECONDS = 24 * 3600.0
MAX_RANGE_BYTES = 1 << 50
# A segment's size is estimated at this rate when the playlist names no bandwidth.
FALLBACK_BITS_PER_SECOND = 1_000_000
AUDIO_BITS_PER_SECOND = 160_000
KEY_BYTES = 16  # an AES-128 key

# Extensions a stored segment may keep from its URL (players such as ffmpeg pick a demuxer
# by them); anything else is stored as .ts (segments) or .mp4 (init sections).
_SEGMENT_EXTENSIONS = frozenset(
    {"ts", "aac", "ac3", "ec3", "mp3", "mp4", "m4s", "m4a", "m4v", "cmfv", "cmfa", "vtt", "webvtt"}
)
_SAFE_ATTRIBUTE = re.compile(r"[A-Za-z0-9 ._+,:/()-]{1,64}")
_IV_RE = re.compile(r"0[xX][0-9a-fA-F]{1,32}")
_RESOLUTION_RE = re.compile(r"[0-9]{1,5}x[0-9]{1,5}")
# Key methods refused, with the name the message gives them.
_REFUSED_METHODS = {
    "SAMPLE-AES": "SAMPLE-AES (sample encryption, FairPlay and the like)",
    "SAMPLE-AES-CTR": "SAMPLE-AES-CTR (CENC, Widevine/PlayReady)",
    "SAMPLE-AES-CENC": "SAMPLE-AES-CENC (CENC, Widevine/PlayReady)",
}


class PartKind:
    """What a stored file of an HLS product is. Persisted values: never change them."""

    SEGMENT = "segment"
    INIT = "init"
    KEY = "key"
    PLAYLIST = "playlist"


@dataclass(frozen=True)
class Quality:
    """Which variant of a master playlist to take: ``best`` (highest BANDWIDTH), ``worst``,
    or an exact BANDWIDTH; ``max_bandwidth`` caps best (the lowest variant when none fits,
    as Media3's track selector falls back)."""

    quality: str = "best"
    max_bandwidth: int | None = None


@dataclass(frozen=True)
class StreamChoice:
    """The variant a download took, recorded so `resume` and `validate --repair` take it
    again: the (redacted) URL of its media playlist and its BANDWIDTH. ``variant`` None: the
    product's URL is a media playlist (nothing to choose)."""

    variant: str | None = None
    bandwidth: int | None = None

    def to_json(self) -> str:
        return json.dumps({"variant": self.variant, "bandwidth": self.bandwidth})

    @classmethod
    def from_json(cls, text: str | None) -> StreamChoice | None:
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        variant, bandwidth = data.get("variant"), data.get("bandwidth")
        choice = cls(
            variant if isinstance(variant, str) else None,
            bandwidth if isinstance(bandwidth, int) and not isinstance(bandwidth, bool) else None,
        )
        # Nothing chosen yet (a download that has not read its master playlist), or nothing
        # to choose (a media playlist): no choice to keep.
        return choice if choice != cls() else None


@dataclass(frozen=True)
class Part:
    """One file of the stored product: where it comes from and the name it is stored under."""

    name: str
    url: str
    kind: str
    # (offset, length) within the resource at ``url`` (EXT-X-BYTERANGE), None: all of it.
    window: tuple[int, int] | None = None
    estimate: int = 0  # bytes, until its response says

    @property
    def identity(self) -> str:
        """What a stored or partial copy of this part must have been fetched from (the
        redacted URL and window): a renewed signature is the same part, another file is not."""
        window = f"@{self.window[0]}+{self.window[1]}" if self.window else ""
        return redact_url(self.url) + window


@dataclass(frozen=True)
class Rendition:
    """One media playlist to store: its parts in order and its local text."""

    playlist_name: str
    parts: tuple[Part, ...]
    text: str


@dataclass(frozen=True)
class HlsPlan:
    choice: StreamChoice
    renditions: tuple[Rendition, ...]
    # name -> text of the local playlists; index.m3u8 is the local master when alternative
    # renditions are kept, else the one media playlist.
    playlists: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> list[Part]:
        """Every file to fetch, once each (renditions may share keys or init sections)."""
        seen: dict[str, Part] = {}
        for rendition in self.renditions:
            for part in rendition.parts:
                seen.setdefault(part.name, part)
        return list(seen.values())


# GET a playlist: its text and the URL it came from (after redirects).
FetchText = Callable[[str], tuple[str, str]]


def plan(
    url: str,
    fetch: FetchText,
    quality: Quality,
    recorded: StreamChoice | None,
    *,
    product: str,
) -> HlsPlan:
    """Fetch the playlist at ``url`` (master or media) and what it references, choose the
    variant, refuse what cannot be stored, and return the parts and local playlists."""
    top = _parse(*fetch(url), product)
    if not top.is_variant:
        rendition = _plan_media(top, url, "v", "video.m3u8", None, product)
        return HlsPlan(StreamChoice(), (rendition,), {INDEX_PLAYLIST: rendition.text})
    _refuse_keys(top.session_keys, url, product)
    variant = _choose(top, quality, recorded, url, product)
    bandwidth = variant.stream_info.bandwidth
    media_url = _absolute(variant, url, product)
    media = _parse(*fetch(media_url), product)
    if media.is_variant:
        raise _bad(product, media_url, "a variant names another master playlist")
    video = _plan_media(media, media_url, "v", "video.m3u8", bandwidth, product)
    audio: list[tuple[Rendition, m3u8.Media]] = []
    group = variant.stream_info.audio
    for item in top.media:
        if item.type != "AUDIO" or item.group_id != group or not group or not item.uri:
            continue
        if len(audio) >= MAX_AUDIO_RENDITIONS:
            break
        audio_url = _absolute(item, url, product)
        audio_playlist = _parse(*fetch(audio_url), product)
        if audio_playlist.is_variant:
            raise _bad(product, audio_url, "an audio rendition names a master playlist")
        index = len(audio) + 1
        audio.append(
            (
                _plan_media(
                    audio_playlist,
                    audio_url,
                    f"a{index}",
                    f"audio{index}.m3u8",
                    AUDIO_BITS_PER_SECOND,
                    product,
                ),
                item,
            )
        )
    choice = StreamChoice(redact_url(media_url), bandwidth)
    if not audio:
        return HlsPlan(choice, (video,), {INDEX_PLAYLIST: video.text})
    master = _local_master(variant, audio)
    playlists = {INDEX_PLAYLIST: master, video.playlist_name: video.text}
    playlists.update((r.playlist_name, r.text) for r, _ in audio)
    return HlsPlan(choice, (video, *(r for r, _ in audio)), playlists)


# -- parsing ------------------------------------------------------------------------------


def _bad(product: str, url: str, problem: str) -> DownloadError:
    host = urlsplit(url).hostname or "?"
    return PermanentError(
        f"bad HLS playlist from {host}: {shorten(problem, 200)}", product=product, url=url
    )


def _parse(text: str, url: str, product: str) -> m3u8.M3U8:
    if len(text) > MAX_PLAYLIST_BYTES:
        raise _bad(product, url, f"larger than {MAX_PLAYLIST_BYTES >> 20} MiB")
    if not text.lstrip("\ufeff").startswith("#EXTM3U"):
        raise _bad(product, url, "it does not start with #EXTM3U")
    if "\0" in text:
        raise _bad(product, url, "it holds NUL bytes")
    segments = text.count("#EXTINF")
    if segments > MAX_SEGMENTS:
        raise _bad(product, url, f"more than {MAX_SEGMENTS} segments")
    tags = text.count("#EXT-X-KEY") + text.count("#EXT-X-MAP")
    if tags > MAX_KEY_TAGS or tags * segments > MAX_TAG_WORK:
        raise _bad(
            product, url, f"{tags} EXT-X-KEY/EXT-X-MAP tags for {segments} segments: too many"
        )
    import m3u8

    try:
        playlist = m3u8.loads(text, uri=url)
    except Exception as exc:  # m3u8 raises ValueError, IndexError, ParseError... on bad input
        raise _bad(product, url, f"cannot parse it ({type(exc).__name__})") from None
    if len(playlist.segments) > MAX_SEGMENTS:
        raise _bad(product, url, f"more than {MAX_SEGMENTS} segments")
    return playlist


def _absolute(item: Any, base: str, product: str) -> str:
    """The URI of a playlist entry made absolute: http(s) only, and no longer than we keep.

    m3u8 joins it with the playlist's URL when asked (urljoin: a malformed one such as
    ``http://[::1/x`` raises there, not when the playlist is parsed)."""
    try:
        value = item.absolute_uri
    except ValueError as exc:
        raise _bad(product, base, f"a URI is not a valid URL ({exc})") from None
    if not value:
        raise _bad(product, base, "an entry has no URI")
    if len(value) > MAX_URL_CHARS:
        raise _bad(product, base, f"a URI is longer than {MAX_URL_CHARS} characters")
    try:
        return check_url(value)
    except UsageError as exc:
        raise _bad(product, base, f"a URI is not an http(s) URL: {exc.message}") from None


def _choose(
    master: m3u8.M3U8,
    quality: Quality,
    recorded: StreamChoice | None,
    url: str,
    product: str,
) -> m3u8.Playlist:
    variants = [v for v in master.playlists if v.uri]
    if not variants:
        raise _bad(product, url, "a master playlist without variants")
    for variant in variants:
        bandwidth = variant.stream_info.bandwidth
        if not isinstance(bandwidth, int) or not 0 <= bandwidth < 1 << 53:
            raise _bad(product, url, "a variant without a valid BANDWIDTH")
    if recorded is not None and recorded.variant is not None:
        # The variant the download started with: its URL first (signatures aside), else
        # the one of the same bandwidth (the master was rewritten with new paths).
        for variant in variants:
            if redact_url(_absolute(variant, url, product)) == recorded.variant:
                return variant
        for variant in variants:
            if variant.stream_info.bandwidth == recorded.bandwidth:
                return variant
    ordered = sorted(variants, key=_bandwidth)
    if quality.quality == "worst":
        return ordered[0]
    if quality.quality.isdigit():
        wanted = int(quality.quality)
        for variant in ordered:
            if variant.stream_info.bandwidth == wanted:
                return variant
        offered = ", ".join(str(v.stream_info.bandwidth) for v in ordered)
        raise PermanentError(
            f"no variant of BANDWIDTH {wanted}; the playlist offers {shorten(offered, 120)}",
            product=product,
            url=url,
            hint="use --quality best, worst or one of those numbers",
        )
    if quality.max_bandwidth is not None:
        fitting = [v for v in ordered if _bandwidth(v) <= quality.max_bandwidth]
        return fitting[-1] if fitting else ordered[0]
    return ordered[-1]


def _bandwidth(variant: m3u8.Playlist) -> int:
    return variant.stream_info.bandwidth or 0  # checked to be a number by _choose


def _refuse_keys(keys: Sequence[m3u8.Key | None], url: str, product: str) -> None:
    for key in keys:
        if key is None or key.method in (None, "NONE"):
            continue
        _check_key(key, url, product)


def _refused(product: str, url: str, what: str, hint: str | None = None) -> DownloadError:
    return PermanentError(
        f"cannot store this stream for offline use: {what}; nothing fetched",
        product=product,
        url=url,
        hint=hint or "only clear or AES-128 (identity key) HLS streams can be stored",
    )


def _check_key(key: m3u8.Key, url: str, product: str) -> None:
    method = str(key.method or "").upper()
    if method in _REFUSED_METHODS:
        raise _refused(product, url, f"encryption METHOD={_REFUSED_METHODS[method]}")
    if method != "AES-128":
        raise _refused(product, url, f"encryption METHOD={shorten(method, 40)!r}")
    key_format = key.keyformat
    if key_format is not None and key_format != "identity":
        raise _refused(product, url, f"KEYFORMAT={shorten(str(key_format), 80)!r} (DRM)")
    uri = key.uri or ""
    if uri.lower().startswith("skd:"):
        raise _refused(product, url, "a FairPlay key (skd://)")
    if key.iv is not None and not _IV_RE.fullmatch(str(key.iv)):
        raise _bad(product, url, "an AES-128 key with a malformed IV")


def _extension(url: str, default: str) -> str:
    path = urlsplit(url).path
    suffix = path.rsplit("/", 1)[-1].rpartition(".")[2].lower() if "." in path else ""
    return suffix if suffix in _SEGMENT_EXTENSIONS else default


def _window(text: str | None, previous_end: int | None, url: str, product: str) -> tuple[int, int]:
    """EXT-X-BYTERANGE ``length[@offset]``: (offset, length); without an offset the range
    follows the previous one of the same resource."""
    match = re.fullmatch(r"([0-9]{1,16})(?:@([0-9]{1,16}))?", (text or "").strip())
    if match is None:
        raise _bad(product, url, f"a malformed BYTERANGE {shorten(str(text))!r}")
    length = int(match.group(1))
    if match.group(2) is not None:
        offset = int(match.group(2))
    elif previous_end is not None:
        offset = previous_end
    else:
        raise _bad(product, url, "a BYTERANGE without an offset follows no range of its file")
    if length == 0 or offset + length > MAX_RANGE_BYTES:
        raise _bad(product, url, f"an impossible BYTERANGE {shorten(str(text))!r}")
    return offset, length


def _plan_media(
    playlist: m3u8.M3U8,
    url: str,
    prefix: str,
    playlist_name: str,
    bandwidth: int | None,
    product: str,
) -> Rendition:
    """The parts of one media playlist and its local text (our names, no byte ranges)."""
    if not playlist.is_endlist:
        kind = "an EVENT" if playlist.playlist_type == "event" else "a live"
        raise _refused(
            product,
            url,
            f"{kind} playlist (no #EXT-X-ENDLIST)",
            "only complete (VOD) playlists can be stored; try again once the stream has ended",
        )
    if not playlist.segments:
        raise _bad(product, url, "a media playlist without segments")
    rate = (bandwidth or FALLBACK_BITS_PER_SECOND) / 8
    parts: list[Part] = []
    by_identity: dict[str, Part] = {}
    range_ends: dict[str, int] = {}
    counters = {"s": 0, "i": 0, "k": 0}

    def part_for(
        uri: str, kind: str, letter: str, ext: str, window: tuple[int, int] | None, estimate: int
    ) -> Part:
        candidate = Part("", uri, kind, window, estimate)
        known = by_identity.get(candidate.identity)
        if known is not None and kind != PartKind.SEGMENT:
            return known  # a key or init section shared by many segments: stored once
        counters[letter] += 1
        part = Part(f"{prefix}-{letter}{counters[letter]}.{ext}", uri, kind, window, estimate)
        by_identity.setdefault(part.identity, part)
        parts.append(part)
        return part

    lines = ["#EXTM3U"]
    body: list[str] = []
    current_key: str | None = None
    current_map: str | None = None
    uses_map = False
    longest = 0.0
    for segment in playlist.segments:
        duration = segment.duration
        if not isinstance(duration, (int, float)) or not 0 <= duration <= MAX_SEGMENT_SECONDS:
            raise _bad(product, url, "a segment with an impossible duration")
        if math.isnan(duration):
            raise _bad(product, url, "a segment with an impossible duration")
        longest = max(longest, duration)
        key = segment.key
        key_line = "#EXT-X-KEY:METHOD=NONE"
        if key is not None and key.method not in (None, "NONE"):
            _check_key(key, url, product)
            key_url = _absolute(key, url, product)
            key_part = part_for(key_url, PartKind.KEY, "k", "key", None, KEY_BYTES)
            key_line = f'#EXT-X-KEY:METHOD=AES-128,URI="{key_part.name}"'
            if key.iv is not None:
                key_line += f",IV={key.iv}"
        if key_line != (current_key or "#EXT-X-KEY:METHOD=NONE"):
            body.append(key_line)
        current_key = key_line
        init = segment.init_section
        if init is not None:
            init_url = _absolute(init, url, product)
            init_window = None
            if init.byterange:
                init_window = _window(init.byterange, 0, url, product)
            init_part = part_for(
                init_url, PartKind.INIT, "i", _extension(init_url, "mp4"), init_window, 4096
            )
            map_line = f'#EXT-X-MAP:URI="{init_part.name}"'
            if map_line != current_map:
                body.append(map_line)
                current_map = map_line
            uses_map = True
        segment_url = _absolute(segment, url, product)
        window = None
        if segment.byterange:
            window = _window(segment.byterange, range_ends.get(segment_url), url, product)
            range_ends[segment_url] = window[0] + window[1]
        estimate = window[1] if window else int(rate * duration)
        seg = part_for(
            segment_url, PartKind.SEGMENT, "s", _extension(segment_url, "ts"), window, estimate
        )
        if segment.discontinuity:
            body.append("#EXT-X-DISCONTINUITY")
        body.append(f"#EXTINF:{duration:.6f},")
        body.append(seg.name)
    version = max(6 if uses_map else 3, _int(playlist.version, 3))
    # Kept as it is, up to 2^64 - 1 (RFC 8216): an AES-128 segment without an IV decrypts
    # with its number, so a number we cannot keep is a playlist we cannot store.
    sequence = (
        0 if playlist.media_sequence is None else _int(playlist.media_sequence, -1, limit=1 << 64)
    )
    if sequence < 0:
        raise _bad(product, url, "a malformed EXT-X-MEDIA-SEQUENCE")
    lines += [
        f"#EXT-X-VERSION:{min(version, 12)}",
        f"#EXT-X-TARGETDURATION:{max(1, math.ceil(longest))}",
        f"#EXT-X-MEDIA-SEQUENCE:{sequence}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        *body,
        "#EXT-X-ENDLIST",
        "",
    ]
    return Rendition(playlist_name, tuple(parts), "\n".join(lines))


def _int(value: object, default: int, *, limit: int = 1 << 53) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit:
        return value
    return default


def _safe(value: object) -> str | None:
    """An attribute value copied into a local playlist only when it is plainly harmless
    (no quote, comma-free where it matters, no control character)."""
    if not isinstance(value, str) or has_controls(value):
        return None
    return value if _SAFE_ATTRIBUTE.fullmatch(value) else None


def _local_master(variant: m3u8.Playlist, audio: list[tuple[Rendition, m3u8.Media]]) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:6"]
    for index, (rendition, media) in enumerate(audio, 1):
        name = _safe(media.name) or f"audio {index}"
        attributes = [
            "TYPE=AUDIO",
            'GROUP-ID="audio"',
            f'NAME="{name}"',
            f"DEFAULT={'YES' if index == 1 else 'NO'}",
            "AUTOSELECT=YES",
        ]
        language = _safe(media.language)
        if language and re.fullmatch(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*", language):
            attributes.append(f'LANGUAGE="{language}"')
        attributes.append(f'URI="{rendition.playlist_name}"')
        lines.append("#EXT-X-MEDIA:" + ",".join(attributes))
    info = variant.stream_info
    attributes = [f"BANDWIDTH={info.bandwidth}"]
    codecs = _safe(info.codecs)
    if codecs:
        attributes.append(f'CODECS="{codecs}"')
    resolution = info.resolution
    if isinstance(resolution, tuple) and len(resolution) == 2:
        text = f"{resolution[0]}x{resolution[1]}"
        if _RESOLUTION_RE.fullmatch(text):
            attributes.append(f"RESOLUTION={text}")
    attributes.append('AUDIO="audio"')
    lines += ["#EXT-X-STREAM-INF:" + ",".join(attributes), "video.m3u8", ""]
    return "\n".join(lines)
