"""An HLS origin on a NetSim for tests: a playback-info endpoint, a master playlist with
variants (and, on request, alternative audio, byte-range segments, init sections and AES-128
keys), media playlists, and segments that take the NetSim's faults one by one. Segment URLs
can be signed with a token that expires, as a CDN's do."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from tests.netsim import NetSim, Resource

HLS_MIME = "application/vnd.apple.mpegurl"


def _body(label: str, size: int) -> bytes:
    """Deterministic bytes for one segment (so a test can compare what was stored)."""
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class HlsOrigin:
    sim: NetSim
    variants: tuple[int, ...] = (800_000, 2_000_000)
    segments: int = 6
    segment_bytes: int = 20_000
    duration: float = 4.0
    audio: bool = False
    byteranges: bool = False
    init: bool = False
    key: bool = False
    # What a test changes to make a playlist refused or odd: extra lines after the header of
    # every media playlist, and whether it ends (VOD) or not (live).
    media_header: str = ""
    endlist: bool = True
    # Signed segment URLs: each media playlist names its segments with ?token=<current>.
    # After ``token_uses`` segment requests, the tokens handed out so far expire (403) and
    # the playback info (and playlists) hand out the next one.
    signed: bool = False
    token_uses: int | None = None
    prefix: str = "/hls"
    requests_with_token: int = 0
    generation: int = 1
    bodies: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.prefix
        self.sim.add(f"{p}/master.m3u8", Resource(b"", render=self._master))
        for bandwidth in self.variants:
            self._add_rendition(f"{p}/v{bandwidth}", f"v{bandwidth}")
        if self.audio:
            self._add_rendition(f"{p}/audio/en", "audio-en", ext="aac")
        if self.key:
            self.sim.add(f"{p}/key.bin", Resource(_body("key", 16)))
        self.sim.add("/info/track/1", Resource(b"", render=self._info))
        if self.signed:
            self.sim.gate = self._gate

    # -- what tests use ---------------------------------------------------------------------

    @property
    def source(self) -> str:
        return self.sim.url("/info/{type}/{id}")

    @property
    def master_url(self) -> str:
        return self.sim.url(f"{self.prefix}/master.m3u8")

    def segment_path(self, rendition: str, index: int) -> str:
        if self.byteranges:
            return f"{self.prefix}/{rendition}/all.mp4"
        ext = "aac" if rendition.startswith("audio") else "ts"
        return f"{self.prefix}/{rendition}/seg{index}.{ext}"

    def segment_requests(self, rendition: str | None = None) -> list[str]:
        """Paths of the segment requests served (any status), in order."""
        return [
            s.path
            for s in self.sim.log
            if "/seg" in s.path or s.path.endswith("all.mp4")
            if rendition is None or f"/{rendition}/" in s.path
        ]

    # -- rendering --------------------------------------------------------------------------

    def _token(self) -> str:
        return f"t{self.generation}"

    def _signed(self, name: str) -> str:
        return f"{name}?token={self._token()}" if self.signed else name

    def _info(self, query: str) -> bytes:
        return json.dumps(
            {
                "productType": "TRACK",
                "productId": "1",
                "manifestMimeType": HLS_MIME,
                "url": self.sim.url(f"{self.prefix}/master.m3u8") + self._query(),
            }
        ).encode()

    def _query(self) -> str:
        return f"?token={self._token()}" if self.signed else ""

    def _master(self, query: str) -> bytes:
        lines = ["#EXTM3U", "#EXT-X-VERSION:6"]
        if self.audio:
            lines.append(
                '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="English",LANGUAGE="en",'
                f'DEFAULT=YES,AUTOSELECT=YES,URI="{self._signed("audio/en/index.m3u8")}"'
            )
        for bandwidth in self.variants:
            audio = ',AUDIO="aud"' if self.audio else ""
            lines.append(
                f"#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION=640x360,"
                f'CODECS="avc1.4d401e,mp4a.40.2"{audio}'
            )
            lines.append(self._signed(f"v{bandwidth}/index.m3u8"))
        return ("\n".join(lines) + "\n").encode()

    def _add_rendition(self, path: str, label: str, ext: str = "ts") -> None:
        if self.byteranges:
            whole = b"".join(
                _body(f"{label}-{i}", self.segment_bytes) for i in range(self.segments)
            )
            init = _body(f"{label}-init", 700)
            self.bodies[f"{path}/all.mp4"] = init + whole
            self.sim.add(f"{path}/all.mp4", Resource(init + whole))
        else:
            for i in range(self.segments):
                body = _body(f"{label}-{i}", self.segment_bytes)
                self.bodies[f"{path}/seg{i}.{ext}"] = body
                self.sim.add(f"{path}/seg{i}.{ext}", Resource(body))
            if self.init:
                self.sim.add(f"{path}/init.mp4", Resource(_body(f"{label}-init", 700)))
        self.sim.add(f"{path}/index.m3u8", Resource(b"", render=self._media(label, ext)))

    def _media(self, label: str, ext: str) -> Callable[[str], bytes]:
        def render(query: str) -> bytes:
            lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:4"]
            lines += [line for line in self.media_header.splitlines() if line]
            if self.endlist:
                lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
            if self.byteranges:
                lines.append('#EXT-X-MAP:URI="all.mp4",BYTERANGE="700@0"')
            elif self.init:
                lines.append(f'#EXT-X-MAP:URI="{self._signed("init.mp4")}"')
            if self.key:
                lines.append(
                    f'#EXT-X-KEY:METHOD=AES-128,URI="{self._signed(f"{self.prefix}/key.bin")}"'
                )
            for i in range(self.segments):
                lines.append(f"#EXTINF:{self.duration:.3f},")
                if self.byteranges:
                    # The first names its offset (after the init section), the rest follow.
                    offset = "@700" if i == 0 else ""
                    lines.append(f"#EXT-X-BYTERANGE:{self.segment_bytes}{offset}")
                    lines.append(self._signed("all.mp4"))
                else:
                    lines.append(self._signed(f"seg{i}.{ext}"))
            if self.endlist:
                lines.append("#EXT-X-ENDLIST")
            return ("\n".join(lines) + "\n").encode()

        return render

    def _gate(self, path: str, query: str) -> int | None:
        if "/seg" not in path and not path.endswith(".mp4") and not path.endswith(".bin"):
            return None
        token = parse_qs(query).get("token", [""])[0]
        if token != self._token():
            return 403
        self.requests_with_token += 1
        if self.token_uses is not None and self.requests_with_token > self.token_uses:
            # This token has expired: refuse it, and hand out the next one from now on.
            self.generation += 1
            self.requests_with_token = 0
            return 403
        return None
