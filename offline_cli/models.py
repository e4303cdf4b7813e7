"""Plain value types shared by every layer: products, states and stored entries."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from offline_cli.errors import UsageError
from offline_cli.redaction import has_controls, redact_refused, redact_url


class ProductType(enum.Enum):
    """The kind of a media product. Values are persisted and never change."""

    TRACK = "track"
    VIDEO = "video"
    FILE = "file"


class OfflineState(enum.Enum):
    """What the offline store holds for a product, computed when read."""

    NOT_OFFLINED = "NOT_OFFLINED"
    OFFLINED_AND_VALID = "OFFLINED_AND_VALID"
    OFFLINED_BUT_NOT_VALID = "OFFLINED_BUT_NOT_VALID"


class DownloadState(enum.Enum):
    """The state of one download entry. Persisted values: never change them once released."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    PAUSED = "PAUSED"
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (DownloadState.COMPLETED, DownloadState.CANCELLED)


class ErrorKind(enum.Enum):
    """How a failure is classified for retry decisions. Persisted values: never change them."""

    NETWORK = "network"
    SERVER = "server"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


# Downloads that `resume` continues: unfinished ones, and failed ones of these kinds.
RUNNABLE_STATES = (DownloadState.PENDING, DownloadState.IN_PROGRESS, DownloadState.PAUSED)
RETRYABLE_KINDS = (ErrorKind.NETWORK, ErrorKind.SERVER, ErrorKind.UNKNOWN)

# Which state may follow which. The state manager refuses anything else, so a finished
# download can never be silently reopened (COMPLETED -> IN_PROGRESS is illegal).
ALLOWED_TRANSITIONS: dict[DownloadState, frozenset[DownloadState]] = {
    DownloadState.PENDING: frozenset(
        {
            DownloadState.IN_PROGRESS,
            DownloadState.PAUSED,
            DownloadState.FAILED,
            DownloadState.CANCELLED,
        }
    ),
    DownloadState.IN_PROGRESS: frozenset(
        {
            DownloadState.PAUSED,
            DownloadState.FAILED,
            DownloadState.COMPLETED,
            DownloadState.CANCELLED,
        }
    ),
    DownloadState.PAUSED: frozenset(
        {DownloadState.IN_PROGRESS, DownloadState.FAILED, DownloadState.CANCELLED}
    ),
    DownloadState.FAILED: frozenset({DownloadState.IN_PROGRESS, DownloadState.CANCELLED}),
    DownloadState.COMPLETED: frozenset(),
    DownloadState.CANCELLED: frozenset(),
}

# The reason a product with an expired license is not valid (state and validate agree).
LICENSE_EXPIRED = "license expired"

_PRODUCT_RE = re.compile(r"^(?P<type>[a-z]+):(?P<id>[A-Za-z0-9._~-]{1,200})$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
SUPPORTED_SCHEMES = ("http", "https")
# The longest URL taken from any source (command line, -i, a playback answer): signed CDN
# URLs run to a few kB, and httpx refuses much longer ones only when fetching.
MAX_URL_CHARS = 16 * 1024


@dataclass(frozen=True)
class MediaProduct:
    """A product to offline: its type and id, and where its bytes come from when known.

    ``url`` is None when the product is resolved through a playback-info source.
    """

    product_type: ProductType
    product_id: str
    url: str | None = None
    license_url: str | None = None
    sha256: str | None = None
    size: int | None = None
    license_expires_at: datetime | None = None
    # ``url`` is an HLS playlist (the source said application/vnd.apple.mpegurl).
    hls: bool = False

    @property
    def key(self) -> str:
        """The product's name on the command line and in the store (``track:42`` or a URL).

        A product named by its URL has the redacted URL as its id, so no credential ever
        becomes a key.
        """
        if self.product_type is ProductType.FILE and looks_like_url(self.product_id):
            return self.product_id
        return f"{self.product_type.value}:{self.product_id}"

    @classmethod
    def from_url(cls, url: str) -> MediaProduct:
        """A product named by its (redacted) URL."""
        return cls(ProductType.FILE, redact_url(url), url=url)

    def __str__(self) -> str:
        return self.key


def parse_product_name(text: str) -> tuple[ProductType, str]:
    """Parse ``TYPE:ID`` into its parts, or raise UsageError naming the problem."""
    match = _PRODUCT_RE.fullmatch(text)  # fullmatch: ``$`` alone lets a final newline in
    if match is None:
        # Redacted: ``user:password@host/f`` (a URL without its scheme) is not a product name.
        raise UsageError(
            f"malformed product {redact_refused(text)!r}",
            hint="write a product as TYPE:ID (track:42, video:7, file:report) or give a URL",
        )
    type_name = match.group("type")
    try:
        product_type = ProductType(type_name)
    except ValueError:
        raise UsageError(
            f"unknown product type {type_name!r} in {text!r}",
            hint="TYPE is one of track, video, file",
        ) from None
    return product_type, match.group("id")


def looks_like_url(text: str) -> bool:
    """True when ``text`` is written as a URL (``scheme://...``), supported or not."""
    return "://" in text


def check_url(text: str) -> str:
    """Return ``text`` when it is an http(s) URL with a host, else raise UsageError.

    Messages quote the URL redacted as a whole (not only the parts that look like a URL): a
    URL refused for a space or a stray slash may still hold a password.
    """
    if len(text) > MAX_URL_CHARS:
        # httpx refuses a URL this long only when fetching, after an entry exists.
        raise UsageError(
            f"malformed URL {shorten(redact_refused(text))!r}: longer than {MAX_URL_CHARS} "
            "characters"
        )
    shown = redact_refused(text)
    if has_controls(text):
        # Refused before anything else: httpx rejects them only when fetching (after an
        # entry exists), a name holding ESC would rewrite the terminal when printed, and a
        # byte that is not UTF-8 cannot be stored or made into a file name.
        raise UsageError(
            f"malformed URL {shown!r}: it contains control characters or bytes that are not UTF-8",
            hint="remove escape sequences, NUL, other control characters and bytes that are "
            "not UTF-8 from the URL",
        )
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise UsageError(f"malformed URL {shown!r}") from None
    if parts.scheme.lower() not in SUPPORTED_SCHEMES:
        raise UsageError(
            f"unsupported URL scheme {parts.scheme!r} in {shown!r}",
            hint="only http:// and https:// are supported",
        )
    if not parts.hostname or any(c.isspace() for c in text):
        raise UsageError(f"malformed URL {shown!r}")
    del port
    return text


def check_sha256(text: str) -> str:
    """Return the lower-case hex digest, or raise UsageError."""
    if not _SHA256_RE.match(text):
        raise UsageError(
            f"malformed --sha256 {text!r}", hint="a SHA-256 is 64 hexadecimal characters"
        )
    return text.lower()


# ASCII digits only: ``\d`` would also take other scripts' digits.
_DURATION_RE = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhdw]?)$")
_COUNT_RE = re.compile(r"^[0-9]+$")
_NUMBER_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
# Longer than any sensible number; past it a number is refused before it is converted.
_MAX_NUMBER_CHARS = 64
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SHOWN_INPUT_CHARS = 40


def human_bytes(n: float) -> str:
    """A byte count for people: ``1.2 GB``, ``300.0 MB``, ``512 B`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - loop always returns


def shorten(text: str, limit: int = _SHOWN_INPUT_CHARS) -> str:
    """``text`` cut to ``limit`` characters for a message (a 400-digit input stays readable)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_duration(text: str) -> float:
    """Parse ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a bare number of seconds.

    Always finite and >= 0; whether it is in range is the caller's (config's) question.
    """
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise UsageError(
            f"malformed duration {shorten(text)!r}",
            hint="use a number with s, m, h, d or w, e.g. 7d",
        )
    return _finite(text, float(match.group("n")) * _UNIT_SECONDS[match.group("unit")])


def parse_count(text: str) -> int:
    """Parse a whole number >= 0 written in ASCII digits (``5``), or raise UsageError."""
    if _COUNT_RE.match(text.strip()) is None:
        raise UsageError(f"not a whole number: {shorten(text)!r}", hint="e.g. 5")
    if len(text.strip()) > _MAX_NUMBER_CHARS:
        raise _too_large(text)
    return int(text.strip())


_RATE_RE = re.compile(r"\A([0-9]+(?:\.[0-9]+)?)([kKmMgG]?)\Z")
_RATE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(text: str) -> int:
    """Parse a byte rate: ``500k``, ``2M``, ``1.5g`` or plain bytes (K = 1024, as curl's
    --limit-rate counts), or raise UsageError."""
    match = _RATE_RE.match(text.strip())
    if match is None or len(text.strip()) > _MAX_NUMBER_CHARS:
        raise UsageError(
            f"malformed rate {shorten(text)!r} (bytes a second: a number, or with k, M or g "
            "as in 500k, 2M, 1.5g; K = 1024)",
            hint="e.g. 500k or 2M",
        )
    value = _finite(text, float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])
    if 0 < value < 1:
        # int() would make it 0, which means no limit at all: the opposite of what was asked.
        raise UsageError(
            f"rate {shorten(text)!r} is less than 1 byte a second", hint="e.g. 500k or 2M"
        )
    return int(value)


def parse_quality(text: str) -> str:
    """An HLS variant choice: ``best``, ``worst`` or a BANDWIDTH (bits a second)."""
    value = text.strip().lower()
    if value in ("best", "worst") or (_COUNT_RE.match(value) and len(value) < 16):
        return value
    raise UsageError(
        f"malformed quality {shorten(text)!r}",
        hint="best, worst, or a variant's BANDWIDTH in bits a second (e.g. 2000000)",
    )


def parse_number(text: str) -> float:
    """Parse a finite number >= 0 written in ASCII digits (``1024``, ``0.5``), or raise."""
    if _NUMBER_RE.match(text.strip()) is None:
        raise UsageError(f"malformed number {shorten(text)!r}", hint="e.g. 1024 or 0.5")
    return _finite(text, float(text.strip()))


def _finite(text: str, value: float) -> float:
    """``value`` unless it overflowed (or its text is absurdly long): then UsageError."""
    if not math.isfinite(value) or len(text.strip()) > _MAX_NUMBER_CHARS:
        raise _too_large(text)
    return value


def _too_large(text: str) -> UsageError:
    return UsageError(f"number {shorten(text)!r} is too large")


@dataclass(frozen=True)
class DownloadEntry:
    """One persisted download attempt of a product, as the store returns it."""

    id: str
    product_key: str
    product_type: ProductType
    product_id: str
    state: DownloadState
    progress: float
    attempt_count: int
    last_error: str | None
    error_kind: ErrorKind | None
    created_at: float
    updated_at: float
    paused_at: float | None
    owner_pid: int | None
    partial_media_path: str | None
    partial_license_path: str | None
    media_url: str | None
    license_url: str | None
    expected_sha256: str | None
    bytes_done: int = 0
    bytes_total: int | None = None
    cancel_requested: bool = False
    resume_info: dict[str, dict[str, str | int | None]] = field(default_factory=dict)
    # What the playback-info source said, so a resumed download still knows it.
    expected_size: int | None = None
    license_expires_at: float | None = None
    from_source: bool = False
    # An HLS download: the variant it took (hls.StreamChoice as JSON); None for one file.
    stream: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.progress <= 1.0:
            raise ValueError(f"progress out of range: {self.progress}")
        if self.attempt_count < 0:
            raise ValueError(f"negative attempt count: {self.attempt_count}")


@dataclass(frozen=True)
class OfflinedEntry:
    """A product committed to the offline store."""

    product_key: str
    product_type: ProductType
    product_id: str
    media_path: str
    license_path: str | None
    size: int
    sha256: str
    license_size: int | None
    license_sha256: str | None
    etag: str | None
    last_modified: str | None
    license_expires_at: float | None
    source_url: str
    license_url: str | None
    mtime_ns: int
    completed_at: float
    invalid_reason: str | None = None
    # An HLS product: ``media_path`` is its folder, holding these files; None for one file.
    parts: tuple[StoredPart, ...] | None = None
    stream: str | None = None  # the variant it took (hls.StreamChoice as JSON)

    @property
    def is_hls(self) -> bool:
        return self.parts is not None


@dataclass(frozen=True)
class StoredPart:
    """One file of a stored HLS product: its own name in the product's folder, what it is
    (hls.PartKind), its size and SHA-256, and what it was fetched from (Part.identity)."""

    name: str
    kind: str
    size: int
    sha256: str
    source: str
    # The validator (ETag, else Last-Modified) its bytes came under, when the server gave one:
    # the byte ranges of one file must all come from one version of it.
    version: str | None = None

    def to_dict(self) -> dict[str, str | int]:
        data: dict[str, str | int] = {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
        }
        if self.version is not None:
            data["version"] = self.version
        return data
