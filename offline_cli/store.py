"""The SQLite store: the only module that imports peewee; plain dataclasses go in and out."""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote

import peewee

from offline_cli.errors import StorageError, StoreUnwritable
from offline_cli.models import (
    ALLOWED_TRANSITIONS,
    DownloadEntry,
    DownloadState,
    ErrorKind,
    OfflinedEntry,
    ProductType,
    StoredPart,
    looks_like_url,
)
from offline_cli.paths import Layout
from offline_cli.redaction import has_controls, scrub_urls

if TYPE_CHECKING:
    from offline_cli.credentials import CredentialVault

# Version 1 is the first release: download and offlined entries. Version 2 adds resume
# bookkeeping, cancellation, validation marks, metrics and settings. Version 3 renames URL
# products and stored URLs by the whole-name credential rule (redaction.py); the tables
# are unchanged. Version 4 adds HLS: the variant a download took (``stream``), the files of a
# stored HLS product (``parts``) and each part's resume checkpoint (download_parts).
# Migrations only add or rename.
SCHEMA_VERSION = 4
DEFAULT_BUSY_TIMEOUT_S = 30.0
# Below this much free space an I/O error of SQLite is read as a full disk: growing the
# shared-memory index (-shm) or the WAL fails with SQLITE_IOERR, not SQLITE_FULL.
NEARLY_FULL_BYTES = 1024 * 1024
# When the database was created, or first cleaned up when an older release created it
# (see maintenance.py: the files of a replaced database are not orphans at once).
DATABASE_SEEN_KEY = "database_first_seen_at"
_Entry = TypeVar("_Entry", DownloadEntry, OfflinedEntry)
_HUGE = float("inf")
_PRODUCT_TYPES = {t.value: t for t in ProductType}
_STATES = {t.value: t for t in DownloadState}
_KINDS = {t.value: t for t in ErrorKind}


class _Base(peewee.Model):
    """The schema only: a Store uses subclasses bound to its own database (_Tables)."""


class _DownloadRow(_Base):
    id = peewee.TextField(primary_key=True)
    product_key = peewee.TextField(index=True)
    product_type = peewee.TextField()
    product_id = peewee.TextField()
    state = peewee.TextField(index=True)
    progress = peewee.FloatField(default=0.0)
    attempt_count = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    error_kind = peewee.TextField(null=True)
    created_at = peewee.FloatField()
    updated_at = peewee.FloatField()
    paused_at = peewee.FloatField(null=True)
    owner_pid = peewee.IntegerField(null=True)
    partial_media_path = peewee.TextField(null=True)
    partial_license_path = peewee.TextField(null=True)
    media_url = peewee.TextField(null=True)
    license_url = peewee.TextField(null=True)
    expected_sha256 = peewee.TextField(null=True)
    # version 2
    bytes_done = peewee.IntegerField(default=0)
    bytes_total = peewee.IntegerField(null=True)
    cancel_requested = peewee.BooleanField(default=False)
    resume_info = peewee.TextField(default="{}")
    expected_size = peewee.IntegerField(null=True)
    license_expires_at = peewee.FloatField(null=True)
    from_source = peewee.BooleanField(default=False)
    # version 4
    stream = peewee.TextField(null=True)

    class Meta:
        table_name = "download_entries"


class _PartRow(_Base):
    """One HLS part's resume checkpoint (one row each, so saving one never rewrites all)."""

    download = peewee.ForeignKeyField(
        _DownloadRow, column_name="download_id", on_delete="CASCADE", backref="parts"
    )
    name = peewee.TextField()
    data = peewee.TextField()

    class Meta:
        table_name = "download_parts"
        primary_key = peewee.CompositeKey("download", "name")


class _OfflinedRow(_Base):
    product_key = peewee.TextField(primary_key=True)
    product_type = peewee.TextField()
    product_id = peewee.TextField()
    media_path = peewee.TextField()
    license_path = peewee.TextField(null=True)
    size = peewee.IntegerField()
    sha256 = peewee.TextField()
    license_size = peewee.IntegerField(null=True)
    license_sha256 = peewee.TextField(null=True)
    etag = peewee.TextField(null=True)
    last_modified = peewee.TextField(null=True)
    license_expires_at = peewee.FloatField(null=True)
    source_url = peewee.TextField()
    license_url = peewee.TextField(null=True)
    mtime_ns = peewee.IntegerField()
    completed_at = peewee.FloatField()
    # version 2
    invalid_reason = peewee.TextField(null=True)
    # version 4
    parts = peewee.TextField(null=True)
    stream = peewee.TextField(null=True)

    class Meta:
        table_name = "offlined_entries"


class _MetricRow(_Base):
    """One recorded event (download started, succeeded, failed, retried, ...)."""

    at = peewee.FloatField(index=True)
    event = peewee.TextField(index=True)
    product_key = peewee.TextField(null=True)
    duration_s = peewee.FloatField(null=True)
    bytes = peewee.IntegerField(null=True)
    error_kind = peewee.TextField(null=True)
    attempts = peewee.IntegerField(null=True)
    detail = peewee.TextField(null=True)

    class Meta:
        table_name = "metric_events"


class _SettingRow(_Base):
    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "settings"


_V1_DOWNLOAD_COLUMNS = (
    "id",
    "product_key",
    "product_type",
    "product_id",
    "state",
    "progress",
    "attempt_count",
    "last_error",
    "error_kind",
    "created_at",
    "updated_at",
    "paused_at",
    "owner_pid",
    "partial_media_path",
    "partial_license_path",
    "media_url",
    "license_url",
    "expected_sha256",
)


@dataclass(frozen=True)
class MetricEvent:
    at: float
    event: str
    product_key: str | None
    duration_s: float | None
    bytes: int | None
    error_kind: str | None
    attempts: int | None
    detail: str | None


@dataclass
class EventSummary:
    """Metric events summed by kind of event (see Store.event_summary)."""

    counts: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    with_attempts: dict[str, int] = field(default_factory=dict)  # events whose attempts != 0
    retried_products: int = 0  # distinct products named by retry events
    durations: float = 0.0  # of the succeeded downloads
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    per_day: dict[str, dict[str, int]] = field(default_factory=dict)


def _sqlite_error_name(exc: BaseException) -> str:
    """SQLITE_FULL, SQLITE_IOERR_SHMSIZE, ... of a sqlite3 error, even wrapped by peewee."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        name = getattr(seen, "sqlite_errorname", None)
        if isinstance(name, str):
            return name
        seen = getattr(seen, "orig", None) or seen.__cause__
    return ""


class IllegalTransition(RuntimeError):
    """A bug: code asked for a state change the state machine forbids."""


class BadRow(ValueError):
    """A row whose values this offline-cli cannot read (damaged or written by hand)."""


def _number(value: Any, name: str, *, optional: bool = False) -> Any:
    """``value`` when it is a finite number (or None where allowed), else BadRow."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRow(f"{name} {value!r} is not a number")
    return value


def _text(value: Any, name: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRow(f"{name} {value!r} is not text")
    return value


def _enum(kind: Any, value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise BadRow(f"unknown {name} {value!r}") from None


def _resume_info(raw: Any) -> dict[str, dict[str, str | int | None]]:
    try:
        info = json.loads(raw or "{}")
    except (TypeError, ValueError):
        raise BadRow("resume_info is not JSON") from None
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise BadRow("resume_info is not a JSON object of objects")
    return info


def _download_from_row(row: Any) -> DownloadEntry:
    """The entry of a row, or BadRow naming the first value that cannot be read."""
    try:
        return DownloadEntry(
            id=_text(row.id, "id"),
            product_key=_text(row.product_key, "product_key"),
            product_type=_enum(ProductType, row.product_type, "product type"),
            product_id=_text(row.product_id, "product_id"),
            state=_enum(DownloadState, row.state, "state"),
            progress=_number(row.progress, "progress"),
            attempt_count=_number(row.attempt_count, "attempt_count"),
            last_error=_text(row.last_error, "last_error", optional=True),
            error_kind=_enum(ErrorKind, row.error_kind, "error kind") if row.error_kind else None,
            created_at=_number(row.created_at, "created_at"),
            updated_at=_number(row.updated_at, "updated_at"),
            paused_at=_number(row.paused_at, "paused_at", optional=True),
            owner_pid=_number(row.owner_pid, "owner_pid", optional=True),
            partial_media_path=_text(row.partial_media_path, "partial path", optional=True),
            partial_license_path=_text(row.partial_license_path, "partial path", optional=True),
            media_url=_text(row.media_url, "media_url", optional=True),
            license_url=_text(row.license_url, "license_url", optional=True),
            expected_sha256=_text(row.expected_sha256, "expected_sha256", optional=True),
            bytes_done=_number(row.bytes_done, "bytes_done"),
            bytes_total=_number(row.bytes_total, "bytes_total", optional=True),
            cancel_requested=bool(row.cancel_requested),
            resume_info=_resume_info(row.resume_info),
            expected_size=_number(row.expected_size, "expected_size", optional=True),
            license_expires_at=_number(row.license_expires_at, "license expiry", optional=True),
            from_source=bool(row.from_source),
            stream=_text(row.stream, "stream", optional=True),
        )
    except BadRow:
        raise
    except ValueError as exc:  # the entry's own checks (progress out of range, ...)
        raise BadRow(str(exc)) from None


def _offlined_from_row(row: Any) -> OfflinedEntry:
    """The entry of a row, or BadRow naming the first value that cannot be read."""
    return OfflinedEntry(
        product_key=_text(row.product_key, "product_key"),
        product_type=_enum(ProductType, row.product_type, "product type"),
        product_id=_text(row.product_id, "product_id"),
        media_path=_text(row.media_path, "media_path"),
        license_path=_text(row.license_path, "license_path", optional=True),
        size=_number(row.size, "size"),
        sha256=_text(row.sha256, "sha256"),
        license_size=_number(row.license_size, "license_size", optional=True),
        license_sha256=_text(row.license_sha256, "license_sha256", optional=True),
        etag=_text(row.etag, "etag", optional=True),
        last_modified=_text(row.last_modified, "last_modified", optional=True),
        license_expires_at=_number(row.license_expires_at, "license expiry", optional=True),
        source_url=_text(row.source_url, "source_url"),
        license_url=_text(row.license_url, "license_url", optional=True),
        mtime_ns=_number(row.mtime_ns, "mtime_ns"),
        completed_at=_number(row.completed_at, "completed_at"),
        invalid_reason=_text(row.invalid_reason, "invalid_reason", optional=True),
        parts=_stored_parts(row.parts),
        stream=_text(row.stream, "stream", optional=True),
    )


def _stored_parts(raw: Any) -> tuple[StoredPart, ...] | None:
    """The files of a stored HLS product, each checked for shape (names are checked against
    the tool's own by whoever touches the files)."""
    if raw is None:
        return None
    try:
        items = json.loads(raw)
    except (TypeError, ValueError):
        raise BadRow("parts is not JSON") from None
    if not isinstance(items, list) or not items:
        raise BadRow("parts is not a list of files")
    parts = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRow("parts holds something that is not a file")
        try:
            part = StoredPart(
                name=_text(item.get("name"), "part name"),
                kind=_text(item.get("kind"), "part kind"),
                size=_number(item.get("size"), "part size"),
                sha256=_text(item.get("sha256"), "part sha256"),
                source=_text(item.get("source"), "part source"),
                version=_text(item.get("version"), "part version", optional=True),
            )
        except BadRow:
            raise
        if not isinstance(part.size, int) or part.size < 0:
            raise BadRow("a part's size is not a whole number")
        parts.append(part)
    return tuple(parts)


@dataclass(frozen=True)
class ProductRows:
    """What ``delete`` needs of a product's rows, read without interpreting their values,
    so a damaged row can always be deleted."""

    download_ids: list[str]
    cancelled_ids: set[str]
    paths: list[str]
    urls: list[str]

    @property
    def empty(self) -> bool:
        return not self.download_ids and not self.paths and not self.urls


@dataclass(frozen=True)
class UnreadableEntry:
    """A row ``BadRow`` refused: cleanup removes it with the files it names."""

    table: str  # "download" or "offlined"
    row_id: str
    product_key: str
    reason: str
    at: float | None  # when it was last written, when that much is readable
    paths: list[str]


class OfflinedCheck(NamedTuple):
    """What the cheap check of `state` reads of an offlined row (paths under the home as
    it is now)."""

    product_key: str
    media_path: str
    license_path: str | None
    size: int
    mtime_ns: int
    license_size: int | None
    license_expires_at: float | None
    invalid_reason: str | None
    parts: tuple[StoredPart, ...] | None
    # The product's folder in the store when the store found both paths to be files of the
    # store spelt as this home spells them (Layout.stored_file holds): none to check again.
    folder: str | None = None

    @classmethod
    def of(cls, e: OfflinedEntry) -> OfflinedCheck:
        return cls(
            e.product_key,
            e.media_path,
            e.license_path,
            e.size,
            e.mtime_ns,
            e.license_size,
            e.license_expires_at,
            e.invalid_reason,
            e.parts,
        )


def _time_key(value: Any) -> float:
    """A time column as `known_product_keys` orders by it: read as the model reads it, and
    a damaged time (not a finite number) as 0, so it sorts first rather than breaking."""
    with contextlib.suppress(TypeError, ValueError):
        value = float(value)
    return _as_float(value) or 0.0


def _paths(*values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str) and v]


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class _Tables:
    """The models bound to one store's database.

    A peewee model is bound to one database; binding the schema classes themselves (or a
    module-level proxy re-pointed on each call) would let two stores, used from two
    threads, write into each other's file. Each Store gets its own subclasses instead.
    """

    def __init__(self, db: peewee.SqliteDatabase) -> None:
        self.db = db
        self.download = _bind(_DownloadRow, db)
        self.offlined = _bind(_OfflinedRow, db)
        self.metric = _bind(_MetricRow, db)
        self.setting = _bind(_SettingRow, db)
        self.part = _bind(_PartRow, db)

    @property
    def all(self) -> list[type[peewee.Model]]:
        return [self.download, self.offlined, self.metric, self.setting, self.part]


_Model = TypeVar("_Model", bound=peewee.Model)

# The hot paths of a download (a few statements per product, many products a second with
# -j) use fixed SQL over these columns: peewee builds each query anew, at about a millisecond
# of Python work apiece. The models still define the schema and serve everything else.
_DOWNLOAD_COLUMNS = tuple(f.column_name for f in _DownloadRow._meta.sorted_fields)
_OFFLINED_COLUMNS = tuple(f.column_name for f in _OfflinedRow._meta.sorted_fields)
# Each column's conversion from what SQLite holds, as peewee applies it (a number written as
# text by an older release reads as the number; what does not convert is left as it is).
_CONVERTERS = {
    c: f.python_value
    for model in (_DownloadRow, _OfflinedRow)
    for c, f in zip(
        (f.column_name for f in model._meta.sorted_fields), model._meta.sorted_fields, strict=True
    )
}
_SELECT_DOWNLOAD = f"SELECT {', '.join(_DOWNLOAD_COLUMNS)} FROM download_entries"
_METRIC_COLUMNS = (
    "at",
    "event",
    "product_key",
    "duration_s",
    "bytes",
    "error_kind",
    "attempts",
    "detail",
)
_SELECT_OFFLINED = f"SELECT {', '.join(_OFFLINED_COLUMNS)} FROM offlined_entries"


def _canonical(model: type[peewee.Model], special: dict[str, str]) -> str:
    """An SQL condition true only for rows whose every value is in the form this release
    writes: such a row surely parses (``_download_from_row``, ``_offlined_from_row``), so bulk
    reads may take its values as they are. Any other row takes the full, checked path.
    ``special``: the condition of a column that is more than its type."""
    finite = "abs({c}) < 1e308"
    conditions = []
    for f in model._meta.sorted_fields:
        c = f.column_name
        if c in special:
            cond = special[c]
        elif isinstance(f, peewee.BooleanField):
            continue  # read as bool(value): any value will do
        elif isinstance(f, peewee.IntegerField):
            cond = f"typeof({c}) = 'integer'"
        elif isinstance(f, peewee.FloatField):
            cond = f"typeof({c}) IN ('integer', 'real') AND {finite.format(c=c)}"
        else:
            cond = f"typeof({c}) = 'text'"
        conditions.append(f"({c} IS NULL OR ({cond}))" if f.null else f"({cond})")
    return " AND ".join(conditions)


def _one_of(column: str, kind: type[enum.Enum]) -> str:
    return f"{column} IN ({', '.join(repr(k.value) for k in kind)})"


_DOWNLOAD_CANONICAL = _canonical(
    _DownloadRow,
    {
        "product_type": _one_of("product_type", ProductType),
        "state": _one_of("state", DownloadState),
        "error_kind": f"{_one_of('error_kind', ErrorKind)} OR error_kind = ''",
        "progress": "typeof(progress) IN ('integer', 'real') AND progress BETWEEN 0 AND 1",
        "attempt_count": "typeof(attempt_count) = 'integer' AND attempt_count >= 0",
        "resume_info": "resume_info = '{}'",
    },
)
# parts: an HLS product's files are checked one by one (_stored_parts), never taken as read.
_OFFLINED_CANONICAL = _canonical(
    _OfflinedRow,
    {"product_type": _one_of("product_type", ProductType), "parts": "0"},
)

# Indexes beyond the models' own, created idempotently by every migration (and added to a
# store of the current version that lacks them). product_created: each product's first
# download (`state` orders products by when they were first seen) read from the index alone.
# The unusual rows (not canonical: damaged, or an HLS product's) are indexed apart, so bulk
# reads take the others as they are and find these at once; the index's name carries a digest
# of its condition, so a release that changes the condition makes a new one (the old goes).
_METRIC_CANONICAL = _canonical(_MetricRow, {})
_OFFLINED_UNUSUAL = f"NOT coalesce(({_OFFLINED_CANONICAL}), 0)"
_METRIC_UNUSUAL = f"NOT coalesce(({_METRIC_CANONICAL}), 0)"
_DOWNLOAD_UNUSUAL = f"NOT coalesce(({_DOWNLOAD_CANONICAL}), 0)"
_UNUSUAL_PREFIX = "unusual_"


def _unusual_index(table: str, column: str, condition: str) -> tuple[str, str]:
    name = f"{_UNUSUAL_PREFIX}{table}_{hashlib.sha256(condition.encode()).hexdigest()[:12]}"
    return name, f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column}) WHERE {condition}"


_INDEXES = dict(
    [
        (
            "download_entries_product_state",
            "CREATE INDEX IF NOT EXISTS download_entries_product_state "
            "ON download_entries (product_key, state)",
        ),
        (
            "download_entries_product_created",
            "CREATE INDEX IF NOT EXISTS download_entries_product_created "
            "ON download_entries (product_key, created_at)",
        ),
        _unusual_index("offlined_entries", "completed_at", _OFFLINED_UNUSUAL),
        _unusual_index("download_entries", "created_at", _DOWNLOAD_UNUSUAL),
        _unusual_index("metric_events", "at", _METRIC_UNUSUAL),
    ]
)


class _Row:
    """A row read by fixed SQL, with the attribute access the row parsers use."""

    def __init__(self, columns: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self.__dict__.update((c, _CONVERTERS[c](v)) for c, v in zip(columns, values, strict=True))

    def __getattr__(self, name: str) -> Any:  # only for mypy: every column is set
        raise AttributeError(name)


def _bind(model: type[_Model], db: peewee.SqliteDatabase) -> type[_Model]:
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": __name__})


class Store:
    """One SQLite file in WAL mode; short IMMEDIATE transactions so processes share it.

    ``read_only_reason`` opens it read-only instead (the home is read-only or its disk is
    full): reads work, and any write raises StoreUnwritable with that reason.
    ``in_memory`` (with a ``read_only_reason``) reads an empty store that stands for a
    database not created yet, and creates nothing on disk.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        read_only_reason: str | None = None,
        in_memory: bool = False,
    ) -> None:
        self.path = path
        self.clock = clock
        # The home this database lives in now: stored paths are read relative to it.
        self._layout = Layout(path.parent)
        self.read_only_reason = read_only_reason
        # Rows read commands skipped because a value could not be read: product -> why.
        self.bad_rows: dict[str, str] = {}
        self._db = self._database(busy_timeout_s, immutable=False)
        self._tables: _Tables | None = None
        self._write_lock = threading.RLock()
        self._keeper: sqlite3.Connection | None = None
        with self._errors():
            if in_memory:
                self._open_in_memory(busy_timeout_s)
            elif read_only_reason is None:
                self._open(busy_timeout_s)
            else:
                self._open_read_only(busy_timeout_s)
        self.downloads = DownloadStateManager(self)

    @property
    def _t(self) -> _Tables:
        """The models bound to this store's database, bound when first used: the reads of
        `state` are fixed SQL, and binding five models cost it more than its query."""
        tables = self._tables
        if tables is None or tables.db is not self._db:
            # Two threads may both bind: either result is the same schema on the same database.
            tables = self._tables = _Tables(self._db)
        return tables

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    def _database(self, busy_timeout_s: float, *, immutable: bool) -> peewee.SqliteDatabase:
        if self.read_only_reason is None:
            return peewee.SqliteDatabase(
                str(self.path),
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": "normal",
                    "busy_timeout": int(busy_timeout_s * 1000),
                    "foreign_keys": 1,
                },
                # IMMEDIATE: take the write lock at BEGIN, so two processes never deadlock
                # upgrading a read lock (SQLite would answer BUSY at once, ignoring the timeout).
                lock_type="IMMEDIATE",
                timeout=busy_timeout_s,
            )
        # mode=ro still needs the -shm file of a WAL database (to create it, or to grow it);
        # immutable=1 needs nothing, which is all a read-only folder or a full disk allows.
        options = "mode=ro&immutable=1" if immutable else "mode=ro"
        return peewee.SqliteDatabase(
            f"file:{quote(str(self.path))}?{options}",
            pragmas={"busy_timeout": int(busy_timeout_s * 1000)},
            timeout=busy_timeout_s,
            uri=True,
        )

    def _open_in_memory(self, busy_timeout_s: float) -> None:
        """An empty database of the current schema in memory, shared by this store's
        connections (one per thread) and read-only to them: a read command on a home with
        no store yet reads nothing, and any write fails as on a read-only store."""
        uri = f"file:offline-cli-{id(self)}?mode=memory&cache=shared"
        self._db = peewee.SqliteDatabase(uri, uri=True)
        self._migrate()
        # An in-memory database lives while a connection to it is open: the one that made
        # the schema is kept (here, not only in its thread's state) for the store's life.
        self._keeper = self._db.connection()
        self._db = peewee.SqliteDatabase(
            uri,
            uri=True,
            pragmas={"query_only": 1, "busy_timeout": int(busy_timeout_s * 1000)},
            timeout=busy_timeout_s,
        )

    def _open_read_only(self, busy_timeout_s: float) -> None:
        """Open without writing anything: no migration, no -wal or -shm if need be."""
        if not self.path.is_file():
            raise StoreUnwritable(
                f"database {self.path} does not exist and cannot be created: "
                f"{self.read_only_reason}"
            )
        try:
            self._db.connect()
            version = self._db.execute_sql("PRAGMA user_version").fetchone()[0]
        except (peewee.OperationalError, sqlite3.OperationalError):
            self._db.close()
            self._db = self._database(busy_timeout_s, immutable=True)
            self._db.connect()
            version = self._db.execute_sql("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise StoreUnwritable(
                f"database {self.path} is new and cannot be set up: {self.read_only_reason}",
                hint="free some space or make the home writable",
                disk_full=self._nearly_full(),
            )
        if version != SCHEMA_VERSION:
            raise StoreUnwritable(
                f"database {self.path} has schema version {version} and needs upgrading, "
                f"which cannot be written now: {self.read_only_reason}",
                hint="free some space or make the home writable, then run the command again",
            )

    def _open(self, busy_timeout_s: float) -> None:
        """Connect and migrate, retrying "locked" for up to the busy timeout.

        Switching a new file to WAL upgrades a read lock, and SQLite answers BUSY at once
        (no busy timeout) when another process holds a write lock then, as when two cron
        jobs create the store together. Retrying is safe: the migration is one transaction.
        """
        deadline = time.monotonic() + busy_timeout_s
        delay = 0.01
        while True:
            try:
                self._db.connect(reuse_if_open=True)
                new = self._db.execute_sql("PRAGMA user_version").fetchone()[0] == 0
                self._migrate()
                if new:
                    self._record_creation()
                return
            except (peewee.OperationalError, sqlite3.OperationalError) as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
                if not self._db.is_closed():
                    self._db.close()
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def _record_creation(self) -> None:
        """Note when the database was made (wall clock: cleanup compares it with file
        times): files older than it belong to a database that was replaced."""
        self._db.execute_sql(
            "INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)",
            (DATABASE_SEEN_KEY, repr(time.time())),
        )

    def close(self) -> None:
        if not self._db.is_closed():
            self._db.close()

    # -- errors and transactions ------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite failures into StorageError with a hint saying what to do."""
        try:
            yield
        except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: Exception) -> StorageError:
        """Name what went wrong; only a failed integrity check suggests moving the file aside.

        A full disk, an I/O error or a permission problem leaves the database intact, and
        a user who moved it aside would lose the record of every stored product.
        """
        text = str(exc)
        code = _sqlite_error_name(exc)
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text:
            return StorageError(
                f"database {self.path} is locked: {text}",
                hint="another offline-cli is holding it; try again, or raise --db-timeout",
            )
        if self.read_only_reason is not None and (
            code.startswith("SQLITE_READONLY") or "readonly" in text
        ):
            return StoreUnwritable(
                f"cannot change the store: {self.read_only_reason}",
                hint="free some space or make the home writable; read commands still work",
                disk_full=self._nearly_full(),
            )
        if (
            code.startswith("SQLITE_FULL")
            or "is full" in text
            or (code.startswith("SQLITE_IOERR") and self._nearly_full())
        ):
            return StoreUnwritable(
                f"database {self.path} cannot be written: the disk is full ({text})",
                hint="free some space (`delete` works on a full disk); the database is intact",
                disk_full=True,
            )
        if code.startswith("SQLITE_IOERR") or "I/O error" in text:
            return StoreUnwritable(
                f"I/O error on database {self.path}: {text}",
                hint="check the disk (free space, kernel log); the database was not changed",
            )
        if code.startswith("SQLITE_READONLY") or "readonly" in text:
            return StoreUnwritable(
                f"database {self.path} is read-only: {text}",
                hint="make the home folder and offline.db writable; read commands still work",
            )
        if self.path.exists() and not self.path.is_file():
            # Not a database at all (a folder, a device): moving it aside loses nothing.
            return StorageError(
                f"database {self.path} is not a file: {text}",
                hint=f"move it aside (mv '{self.path}' '{self.path}.broken') to start a store",
            )
        if code.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
            return StoreUnwritable(
                f"cannot open database {self.path}: {text}",
                hint="check that the home folder and offline.db exist and are yours to read "
                "and write",
            )
        verdict = self._integrity_fails()
        if verdict:
            return StorageError(
                f"database {self.path} is damaged: {text} (PRAGMA integrity_check fails)",
                hint=(
                    f"move it aside (mv '{self.path}' '{self.path}.broken') to start an empty "
                    "store; stored files are kept until they are older than the retention age"
                ),
            )
        return StorageError(
            f"database {self.path} failed: {text}",
            hint=(
                "PRAGMA integrity_check passes, so the file is sound; try again"
                if verdict is False
                else "try again; if it persists, check the disk (PRAGMA integrity_check "
                "could not run)"
            ),
        )

    def _nearly_full(self) -> bool:
        try:
            return shutil.disk_usage(self.path.parent).free < NEARLY_FULL_BYTES
        except OSError:
            return False

    def _integrity_fails(self) -> bool | None:
        """True only when SQLite itself says the file is damaged; None when it cannot tell."""
        try:
            conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            return None
        try:
            rows = conn.execute("PRAGMA integrity_check(1)").fetchall()
        except sqlite3.DatabaseError as exc:
            damaged = _sqlite_error_name(exc).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or (
                "malformed" in str(exc) or "not a database" in str(exc)
            )
            return True if damaged else None
        finally:
            conn.close()
        return rows != [("ok",)]

    def skip_bad_row(self, product_key: Any, error: BadRow) -> None:
        """Remember a row a read skipped, so the command can name it once."""
        self.bad_rows.setdefault(str(product_key), str(error))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # One writer at a time within this process: threads queue on a Python lock, handed
        # over at once, instead of in SQLite's busy handler, which sleeps up to 100 ms a
        # turn. Other processes still wait in the busy handler (up to the busy timeout).
        with self._write_lock, self._errors(), self._db.atomic():
            yield

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute_sql("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"database {self.path} has schema version {version}, newer than this "
                f"offline-cli understands ({SCHEMA_VERSION})",
                hint="upgrade offline-cli",
            )
        if version == SCHEMA_VERSION:
            self._ensure_indexes()
            return
        # The vault of this home: the credentials of the URLs the database names.
        from offline_cli.credentials import CredentialVault

        vault = CredentialVault(Layout(self.path.parent).credentials_file)
        renamed: dict[str, str] = {}
        with self._db.atomic():
            # Read again under the write lock: another process may have migrated meanwhile.
            version = self._db.execute_sql("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                self._db.create_tables(self._t.all)
            else:
                if version == 1:
                    self._migrate_1_to_2()
                if version <= 2:
                    renamed = self._migrate_2_to_3(vault)
                self._migrate_3_to_4()
            self._create_indexes()
            self._db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Only now that the database names the new forms: the old names were vault keys
        # for the same full URLs, and a later delete forgets only the new ones.
        still_used = set(renamed.values())
        stale: list[str | None] = [old for old in renamed if old not in still_used]
        if stale:
            # A leftover old name is harmless (nothing refers to it), so a failure is not fatal.
            with contextlib.suppress(OSError):
                vault.forget(stale)

    def _ensure_indexes(self) -> None:
        """Create the indexes a store of this schema version lacks (one an earlier release
        of the same version did not make): they change no data, so the version stays."""
        names = {
            row[0]
            for row in self._db.execute_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
            ).fetchall()
        }
        stale = {n for n in names if n.startswith(_UNUSUAL_PREFIX)} - set(_INDEXES)
        if set(_INDEXES) <= names and not stale:
            return
        with self._db.atomic():
            self._create_indexes(stale)

    def _create_indexes(self, stale: Iterable[str] = ()) -> None:
        for name in stale:
            self._db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
        for sql in _INDEXES.values():
            self._db.execute_sql(sql)

    def _migrate_2_to_3(self, vault: CredentialVault) -> dict[str, str]:
        """Rename URL products and stored URLs by today's redaction rule; return old -> new.

        Version 2 hid every parameter whose name merely contained a word like ``key`` or
        ``auth``, so ``?keyword=cats`` and ``?keyword=dogs`` shared one name. The vault
        still holds the full URL behind each such name, so the name is derived again from
        it; a URL the vault does not know keeps its name (unless it holds a value today's
        rule hides, which then moves into the vault). Two old products are never merged.
        """
        execute = self._db.execute_sql
        # Most wanted first: when two old names would now share one, the product completed
        # last takes it (a new `offline` of the URL then finds it), the others keep theirs.
        offlined = execute(
            "SELECT product_key, source_url, license_url FROM offlined_entries"
            " ORDER BY completed_at DESC"
        ).fetchall()
        downloads = execute(
            "SELECT id, product_key, media_url, license_url, resume_info FROM download_entries"
            " ORDER BY updated_at DESC"
        ).fetchall()
        keys = {str(row[1]) for row in downloads} | {str(row[0]) for row in offlined}
        checkpoints: dict[str, dict[str, Any]] = {}
        for row in downloads:
            try:
                info = json.loads(row[4] or "{}")
            except (TypeError, ValueError):
                continue  # unreadable bookkeeping: the transfer starts that file over
            if isinstance(info, dict):
                checkpoints[str(row[0])] = info
        urls: list[str] = []
        for row in offlined:
            urls.extend(u for u in (row[0], row[1], row[2]) if isinstance(u, str))
        for row in downloads:
            urls.extend(u for u in (row[1], row[2], row[3]) if isinstance(u, str))
        for info in checkpoints.values():
            urls.extend(
                part["url"]
                for part in info.values()
                if isinstance(part, dict) and isinstance(part.get("url"), str)
            )
        # A URL no release could have stored (controls, lone surrogates) is damage, not a
        # name to carry over: it keeps its value, and reads of that row skip it as bad.
        urls = [u for u in urls if looks_like_url(u) and not has_controls(u)]
        try:
            renamed = vault.rename_by_current_rule(urls)
        except OSError as exc:
            raise StorageError(
                f"cannot update the credentials file {vault.path}: {exc.strerror or exc}",
                hint="make the home folder writable, then run the command again",
            ) from exc
        self._scrub_history(keys)
        if not renamed:
            return renamed

        new_names: dict[str, list[str]] = {}
        for key in keys:
            if key in renamed:
                new_names.setdefault(renamed[key], []).append(key)
        for new, olds in new_names.items():
            if len(olds) != 1 or new in keys:
                continue  # would merge two products
            old = olds[0]
            for table in ("download_entries", "offlined_entries", "metric_events"):
                # A URL product's id is its name; a TYPE:ID product's id stays.
                id_update = (
                    ", product_id = CASE WHEN product_id = ? THEN ? ELSE product_id END"
                    if table != "metric_events"
                    else ""
                )
                params = [new, old, new] if id_update else [new]
                execute(
                    f"UPDATE {table} SET product_key = ?{id_update} WHERE product_key = ?",
                    [*params, old],
                )
        for old, new in renamed.items():
            for table, column in (
                ("download_entries", "media_url"),
                ("download_entries", "license_url"),
                ("offlined_entries", "source_url"),
                ("offlined_entries", "license_url"),
            ):
                execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", [new, old])
        for download_id, info in checkpoints.items():
            changed = False
            for part in info.values():
                if isinstance(part, dict) and part.get("url") in renamed:
                    part["url"] = renamed[part["url"]]
                    changed = True
            if changed:
                execute(
                    "UPDATE download_entries SET resume_info = ? WHERE id = ?",
                    [json.dumps(info), download_id],
                )
        return renamed

    def _scrub_history(self, live_keys: set[str]) -> None:
        """Hide, by today's rule, credentials in recorded errors and in the metrics of
        products no longer stored (``pwd=...`` was kept in clear before version 3)."""
        execute = self._db.execute_sql
        for table, column, rowid in (
            ("download_entries", "last_error", "id"),
            ("metric_events", "detail", "id"),
            ("metric_events", "product_key", "id"),
        ):
            for row_id, text in execute(
                f"SELECT {rowid}, {column} FROM {table} WHERE {column} LIKE '%://%'"
            ).fetchall():
                if not isinstance(text, str) or (column == "product_key" and text in live_keys):
                    continue
                scrubbed = scrub_urls(text)
                if scrubbed != text:
                    execute(
                        f"UPDATE {table} SET {column} = ? WHERE {rowid} = ?", [scrubbed, row_id]
                    )

    def _migrate_1_to_2(self) -> None:
        # playhouse.migrate (and the drivers it probes for) only when an old store is upgraded
        from playhouse.migrate import SqliteMigrator, migrate

        migrator = SqliteMigrator(self._db)
        migrate(
            migrator.add_column("download_entries", "bytes_done", self._t.download.bytes_done),
            migrator.add_column("download_entries", "bytes_total", self._t.download.bytes_total),
            migrator.add_column(
                "download_entries", "cancel_requested", self._t.download.cancel_requested
            ),
            migrator.add_column("download_entries", "resume_info", self._t.download.resume_info),
            migrator.add_column(
                "download_entries", "expected_size", self._t.download.expected_size
            ),
            migrator.add_column(
                "download_entries", "license_expires_at", self._t.download.license_expires_at
            ),
            migrator.add_column("download_entries", "from_source", self._t.download.from_source),
            migrator.add_column(
                "offlined_entries", "invalid_reason", self._t.offlined.invalid_reason
            ),
        )
        self._db.create_tables([self._t.metric, self._t.setting])

    def _migrate_3_to_4(self) -> None:
        from playhouse.migrate import SqliteMigrator, migrate

        migrator = SqliteMigrator(self._db)
        wanted = [
            ("download_entries", "stream", self._t.download.stream),
            ("offlined_entries", "parts", self._t.offlined.parts),
            ("offlined_entries", "stream", self._t.offlined.stream),
        ]
        # Only what is missing: a store some tool rolled back to an older version number
        # may hold these columns already.
        existing = {
            (table, column.name)
            for table in {t for t, _, _ in wanted}
            for column in self._db.get_columns(table)
        }
        migrate(
            *(
                migrator.add_column(table, name, field)
                for table, name, field in wanted
                if (table, name) not in existing
            )
        )
        self._db.create_tables([self._t.part], safe=True)

    @staticmethod
    def create_v1_schema(path: Path) -> None:
        """Create an empty database exactly as the first release did (used by tests)."""
        conn = sqlite3.connect(path)
        try:
            cols = ", ".join(
                f"{c} TEXT" if c not in ("progress", "attempt_count") else f"{c} REAL"
                for c in _V1_DOWNLOAD_COLUMNS
            )
            conn.execute(f"CREATE TABLE download_entries ({cols})")
            conn.execute(
                "CREATE TABLE offlined_entries (product_key TEXT PRIMARY KEY, product_type TEXT,"
                " product_id TEXT, media_path TEXT, license_path TEXT, size INTEGER,"
                " sha256 TEXT, license_size INTEGER, license_sha256 TEXT, etag TEXT,"
                " last_modified TEXT, license_expires_at REAL, source_url TEXT,"
                " license_url TEXT, mtime_ns INTEGER, completed_at REAL)"
            )
            conn.execute("PRAGMA user_version = 1")
            conn.commit()
        finally:
            conn.close()

    def quick_check(self) -> None:
        """StorageError (with the move-aside hint) when PRAGMA quick_check finds damage."""
        with self._errors():
            rows = self._db.execute_sql("PRAGMA quick_check(1)").fetchall()
        if rows != [("ok",)]:
            # Its first finding, on one line: the message is one line on stderr.
            first = str(rows[0][0]).strip().splitlines() or ["damaged"]
            raise self._storage_error(sqlite3.DatabaseError(f"quick_check: {first[0]}"))

    def integrity_check(self) -> str:
        with self._errors():
            return str(self._db.execute_sql("PRAGMA integrity_check").fetchone()[0])

    # -- offlined entries ----------------------------------------------------------------

    def _offlined(self, rows: Iterable[Any]) -> list[OfflinedEntry]:
        rehome = self._layout.rehome
        return self._read_rows(
            rows,
            _offlined_from_row,
            lambda e: replace(
                e,
                media_path=rehome(e.media_path) or e.media_path,
                license_path=rehome(e.license_path),
            ),
        )

    def _downloads(self, rows: Iterable[Any]) -> list[DownloadEntry]:
        rehome = self._layout.rehome
        return self._read_rows(
            rows,
            _download_from_row,
            lambda e: replace(
                e,
                partial_media_path=rehome(e.partial_media_path),
                partial_license_path=rehome(e.partial_license_path),
            ),
        )

    def _read_rows(
        self,
        rows: Iterable[Any],
        parse: Callable[[Any], _Entry],
        rehome: Callable[[_Entry], _Entry],
    ) -> list[_Entry]:
        """The entries of ``rows``, skipping (and naming) those that cannot be read, with
        their paths under the home as it is now: a moved home keeps its products, never read
        as missing nor taken for orphans."""
        entries = []
        for row in rows:
            try:
                entries.append(rehome(parse(row)))
            except BadRow as exc:
                self.skip_bad_row(row.product_key, exc)
        return entries

    def _fetch(self, sql: str, params: tuple[Any, ...], columns: tuple[str, ...]) -> list[_Row]:
        with self._errors():
            rows = self._db.execute_sql(sql, params).fetchall()
        return [_Row(columns, tuple(r)) for r in rows]

    def get_offlined(self, product_key: str) -> OfflinedEntry | None:
        rows = self._fetch(
            f"{_SELECT_OFFLINED} WHERE product_key = ?", (product_key,), _OFFLINED_COLUMNS
        )
        found = self._offlined(rows)
        return found[0] if found else None

    def offlined_by_key(self) -> dict[str, OfflinedEntry]:
        return {e.product_key: e for e in self.list_offlined()}

    def latest_download_by_key(self) -> dict[str, DownloadEntry]:
        """Each product's latest download entry, in one query."""
        with self._errors():
            rows = self._db.execute_sql(f"{_SELECT_DOWNLOAD} ORDER BY created_at, rowid").fetchall()
            unusual = self._unusual("id", "download_entries", _DOWNLOAD_UNUSUAL)
        latest = {row[1]: row for row in rows}
        return {e.product_key: e for e in self._download_rows(latest.values(), unusual)}

    def list_offlined(self) -> list[OfflinedEntry]:
        with self._errors():
            rows = self._db.execute_sql(f"{_SELECT_OFFLINED} ORDER BY completed_at").fetchall()
            unusual = self._unusual("product_key", "offlined_entries", _OFFLINED_UNUSUAL)
        return self._offlined_rows(rows, unusual)

    def _unusual(self, column: str, table: str, condition: str) -> set[Any]:
        """The ``column`` of the rows not in the form this release writes (by their index)."""
        sql = f"SELECT {column} FROM {table} WHERE {condition}"
        return {value for (value,) in self._db.execute_sql(sql).fetchall()}

    def _offlined_rows(
        self, rows: Iterable[tuple[Any, ...]], unusual: set[Any]
    ) -> list[OfflinedEntry]:
        """The entries of raw rows (in _OFFLINED_COLUMNS): a usual row's values are taken
        as they are (they cannot fail a check), an unusual one is read and checked in full."""
        layout = self._layout
        at_home, rehome = layout.is_store_path, layout.rehome
        entries: list[OfflinedEntry] = []
        for r in rows:
            if r[0] in unusual:
                entries += self._offlined([_Row(_OFFLINED_COLUMNS, tuple(r))])
                continue
            media, lic = r[3], r[4]
            if not at_home(media):
                media = rehome(media) or media
            if lic is not None and not at_home(lic):
                lic = rehome(lic)
            values = list(r)
            values[1], values[3], values[4] = _PRODUCT_TYPES[r[1]], media, lic
            entries.append(OfflinedEntry(*values))  # parts: None, as the row says
        return entries

    def _download_rows(
        self, rows: Iterable[tuple[Any, ...]], unusual: set[Any]
    ) -> list[DownloadEntry]:
        """As _offlined_rows, for download rows (in _DOWNLOAD_COLUMNS)."""
        rehome = self._layout.rehome
        entries: list[DownloadEntry] = []
        for r in rows:
            if r[0] in unusual:
                entries += self._downloads([_Row(_DOWNLOAD_COLUMNS, tuple(r))])
                continue
            values = list(r)
            values[2] = _PRODUCT_TYPES[r[2]]
            values[4] = _STATES[r[4]]
            values[8] = _KINDS[r[8]] if r[8] else None
            values[13] = rehome(r[13])
            values[14] = rehome(r[14])
            values[20] = bool(r[20])
            values[21] = {}  # a usual row's resume_info is '{}'
            values[24] = bool(r[24])
            entries.append(DownloadEntry(*values))
        return entries

    def set_invalid_reason(
        self, product_key: str, reason: str | None, *, mtime_ns: int | None = None
    ) -> None:
        """Record a full check's verdict; a pass also records the file's current mtime, so
        `state`'s cheap check agrees with it after a touch or a copy."""
        values: dict[str, Any] = {"invalid_reason": reason}
        if mtime_ns is not None:
            values["mtime_ns"] = mtime_ns
        with self.transaction():
            self._t.offlined.update(**values).where(
                self._t.offlined.product_key == product_key
            ).execute()

    def commit_product(self, download_id: str, entry: OfflinedEntry) -> OfflinedEntry | None:
        """Record a completed product and finish its download in one transaction.

        Returns the entry it replaced, whose files the caller removes afterwards.
        """
        values = [getattr(entry, column) for column in _OFFLINED_COLUMNS]
        values[_OFFLINED_COLUMNS.index("product_type")] = entry.product_type.value
        if entry.parts is not None:
            values[_OFFLINED_COLUMNS.index("parts")] = json.dumps(
                [p.to_dict() for p in entry.parts], separators=(",", ":")
            )
        with self.transaction():
            old_rows = self._fetch(
                f"{_SELECT_OFFLINED} WHERE product_key = ?",
                (entry.product_key,),
                _OFFLINED_COLUMNS,
            )
            # A damaged old row is replaced all the same; its files are left to cleanup.
            readable = self._offlined(old_rows)
            old = readable[0] if readable else None
            self._db.execute_sql(
                f"INSERT OR REPLACE INTO offlined_entries ({', '.join(_OFFLINED_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_OFFLINED_COLUMNS))})",
                tuple(values),
            )
            self.downloads.transition(
                download_id,
                DownloadState.COMPLETED,
                progress=1.0,
                bytes_done=entry.size + (entry.license_size or 0),
                bytes_total=entry.size + (entry.license_size or 0),
                partial_media_path=None,
                partial_license_path=None,
                owner_pid=None,
                last_error=None,
                error_kind=None,
            )
            # The parts' checkpoints served their purpose: the product row lists its files.
            self._db.execute_sql("DELETE FROM download_parts WHERE download_id = ?", (download_id,))
        return old

    # -- download entries (read side) ------------------------------------------------------

    def get_download(self, download_id: str) -> DownloadEntry | None:
        rows = self._fetch(f"{_SELECT_DOWNLOAD} WHERE id = ?", (download_id,), _DOWNLOAD_COLUMNS)
        found = self._downloads(rows)
        return found[0] if found else None

    def latest_download(self, product_key: str) -> DownloadEntry | None:
        rows = self._fetch(
            f"{_SELECT_DOWNLOAD} WHERE product_key = ? ORDER BY created_at DESC, rowid DESC "
            "LIMIT 1",
            (product_key,),
            _DOWNLOAD_COLUMNS,
        )
        # A damaged latest row hides the product's downloads rather than an older one
        # being taken for the latest (and resumed).
        found = self._downloads(rows)
        return found[0] if found else None

    def list_downloads(
        self, states: Iterable[DownloadState] | None = None, product_key: str | None = None
    ) -> list[DownloadEntry]:
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            values = [s.value for s in states]
            where.append(f"state IN ({', '.join('?' * len(values))})")
            params += values
        if product_key is not None:
            where.append("product_key = ?")
            params.append(product_key)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._fetch(
            f"{_SELECT_DOWNLOAD}{condition} ORDER BY created_at", tuple(params), _DOWNLOAD_COLUMNS
        )
        return self._downloads(rows)

    def delete_download(self, download_id: str) -> None:
        with self.transaction():
            self._t.download.delete().where(self._t.download.id == download_id).execute()

    def known_product_keys(self) -> list[str]:
        """Every product the store knows, offlined or with a download entry, oldest first
        (by when it was first seen; ties by name)."""
        with self._errors():
            offlined = self._db.execute_sql(
                "SELECT completed_at, product_key FROM offlined_entries"
            ).fetchall()
        return self._by_first_seen(offlined)

    def _by_first_seen(self, offlined: Iterable[tuple[Any, Any]]) -> list[str]:
        """The keys of ``offlined`` (completed_at, key) and of every download entry, by
        when each product was first seen. A time that is not a finite number (damaged)
        counts as 0, so it sorts first rather than breaking the listing."""
        with self._errors():
            self._db.connection().create_function(
                "offline_cli_time", 1, _time_key, deterministic=True
            )
            # Read from the index (product_key, created_at) alone; only a damaged time
            # calls back into Python.
            downloads = self._db.execute_sql(
                "SELECT product_key, CASE WHEN typeof(m) IN ('integer', 'real') "
                "AND abs(m) < 1e308 THEN m ELSE offline_cli_time(m) END FROM "
                "(SELECT product_key, MIN(created_at) AS m FROM download_entries "
                "GROUP BY product_key)"
            ).fetchall()
        first_seen: dict[str, float] = dict(downloads)
        if any(type(key) is not str for key in first_seen):  # damaged: keys as the model reads
            first_seen = {}
            for key, at in downloads:
                key = str(key)
                first_seen[key] = min(at, first_seen.get(key, at))
        get = first_seen.get
        for raw_at, raw_key in offlined:
            key = raw_key if type(raw_key) is str else str(raw_key)
            at = raw_at if type(raw_at) in (int, float) and -_HUGE < raw_at < _HUGE else None
            if at is None:
                at = _time_key(raw_at)
            seen = get(key)
            if seen is None or at < seen:
                first_seen[key] = at
        return [key for _, key in sorted(zip(first_seen.values(), first_seen.keys(), strict=True))]

    def product_listing(self) -> list[tuple[str, OfflinedCheck | None]]:
        """Every product the store knows (as known_product_keys orders them) with what the
        cheap check needs of its offlined row (None: not offlined, or a row that cannot be
        read, which is skipped and named as every read does), in a few bulk queries."""
        with self._errors():
            rows = self._db.execute_sql(
                "SELECT product_key, media_path, license_path, size, mtime_ns, license_size, "
                "license_expires_at, invalid_reason, completed_at FROM offlined_entries"
            ).fetchall()
            unusual = {
                key
                for (key,) in self._db.execute_sql(
                    f"SELECT product_key FROM offlined_entries WHERE {_OFFLINED_UNUSUAL}"
                ).fetchall()
            }
        keys = self._by_first_seen((row[8], row[0]) for row in rows)
        layout = self._layout
        rehome, folder_of = layout.rehome, layout.stored_folder
        found: dict[str, OfflinedCheck] = {}
        for key, media, lic, size, mtime_ns, lic_size, expires, invalid, _ in rows:
            if key in unusual:
                continue
            folder = folder_of(media)
            if folder is not None and (lic is None or folder_of(lic) is not None):
                # Files of the store as written under this home: their own rehome.
                found[key] = OfflinedCheck(
                    key, media, lic, size, mtime_ns, lic_size, expires, invalid, None, folder
                )
            else:
                found[key] = OfflinedCheck(
                    key,
                    rehome(media) or media,
                    rehome(lic),
                    size,
                    mtime_ns,
                    lic_size,
                    expires,
                    invalid,
                    None,
                )
        if unusual:
            # Rows in another form (an HLS product's parts, or damage): read and checked
            # in full, as get_offlined reads them.
            slow = self._fetch(
                f"{_SELECT_OFFLINED} WHERE {_OFFLINED_UNUSUAL} ORDER BY completed_at",
                (),
                _OFFLINED_COLUMNS,
            )
            for entry in self._offlined(slow):
                found[entry.product_key] = OfflinedCheck.of(entry)
        return [(key, found.get(key)) for key in keys]

    def count_offlined(self) -> int:
        """How many offlined rows can be read (those that cannot are skipped and named)."""
        with self._errors():
            (count,) = self._db.execute_sql("SELECT count(*) FROM offlined_entries").fetchone()
        unusual = self._fetch(
            f"{_SELECT_OFFLINED} WHERE {_OFFLINED_UNUSUAL} ORDER BY completed_at",
            (),
            _OFFLINED_COLUMNS,
        )
        return int(count) - len(unusual) + len(self._offlined(unusual))

    def product_rows(self, product_key: str) -> ProductRows:
        """The ids, files and URLs of a product's rows, whatever else they hold."""
        with self._errors():
            downloads = list(
                self._t.download.select(
                    self._t.download.id,
                    self._t.download.state,
                    self._t.download.partial_media_path,
                    self._t.download.partial_license_path,
                    self._t.download.media_url,
                    self._t.download.license_url,
                ).where(self._t.download.product_key == product_key)
            )
            offlined = self._t.offlined.get_or_none(self._t.offlined.product_key == product_key)
        paths: list[str] = []
        urls: list[str] = []
        for d in downloads:
            paths += _paths(d.partial_media_path, d.partial_license_path)
            urls += _paths(d.media_url, d.license_url)
        if offlined is not None:
            paths += _paths(offlined.media_path, offlined.license_path)
            urls += _paths(offlined.source_url, offlined.license_url)
        return ProductRows(
            download_ids=[str(d.id) for d in downloads],
            cancelled_ids={str(d.id) for d in downloads if d.state == "CANCELLED"},
            paths=paths,
            urls=urls,
        )

    def forget_product(self, product_key: str, *, keep: Collection[str] = ()) -> None:
        """Delete a product's rows (but the downloads in ``keep``) in one transaction."""
        with self.transaction():
            self._t.offlined.delete().where(self._t.offlined.product_key == product_key).execute()
            self._t.download.delete().where(
                (self._t.download.product_key == product_key)
                & self._t.download.id.not_in(list(keep))
            ).execute()
        self.bad_rows.pop(product_key, None)

    def unreadable_entries(self) -> list[UnreadableEntry]:
        """Every row a read would skip, with what cleanup needs to remove it."""
        found: list[UnreadableEntry] = []
        # Only rows not in the form this release writes can fail to parse: the others are
        # never read here (a store of many products is not parsed whole).
        downloads = self._fetch(
            f"{_SELECT_DOWNLOAD} WHERE {_DOWNLOAD_UNUSUAL}",
            (),
            _DOWNLOAD_COLUMNS,
        )
        offlined = self._fetch(
            f"{_SELECT_OFFLINED} WHERE {_OFFLINED_UNUSUAL}",
            (),
            _OFFLINED_COLUMNS,
        )
        for d in downloads:
            try:
                _download_from_row(d)
            except BadRow as exc:
                found.append(
                    UnreadableEntry(
                        "download",
                        str(d.id),
                        str(d.product_key),
                        str(exc),
                        _as_float(d.updated_at),
                        _paths(
                            *map(
                                self._layout.rehome, (d.partial_media_path, d.partial_license_path)
                            )
                        ),
                    )
                )
        for o in offlined:
            try:
                _offlined_from_row(o)
            except BadRow as exc:
                found.append(
                    UnreadableEntry(
                        "offlined",
                        str(o.product_key),
                        str(o.product_key),
                        str(exc),
                        _as_float(o.completed_at),
                        _paths(o.media_path, o.license_path),
                    )
                )
        return found

    def delete_unreadable(self, entry: UnreadableEntry) -> None:
        with self.transaction():
            if entry.table == "download":
                self._t.download.delete().where(self._t.download.id == entry.row_id).execute()
            else:
                self._t.offlined.delete().where(
                    self._t.offlined.product_key == entry.row_id
                ).execute()

    def offlined_paths(self) -> dict[str, list[str]]:
        """The files each offlined row names, whatever else the row holds."""
        with self._errors():
            rows = self._t.offlined.select(
                self._t.offlined.product_key,
                self._t.offlined.media_path,
                self._t.offlined.license_path,
            )
            return {str(r.product_key): _paths(r.media_path, r.license_path) for r in rows}

    def referenced_paths(self) -> set[str]:
        """Every file path some entry owns (for orphan detection)."""
        with self._errors():
            rows = self._db.execute_sql(
                "SELECT media_path, license_path FROM offlined_entries "
                "UNION ALL SELECT partial_media_path, partial_license_path FROM download_entries"
            ).fetchall()
        text = _CONVERTERS["media_path"]  # as the model reads a text column
        paths = {p if isinstance(p, str) else text(p) for row in rows for p in row if p}
        paths.discard("")
        # As written and as under the home today (a moved home's files are still owned).
        rehome = self._layout.rehome
        return paths | {q for q in map(rehome, paths) if q}

    # -- metrics and settings --------------------------------------------------------------

    def record_event(
        self,
        event: str,
        *,
        product_key: str | None = None,
        duration_s: float | None = None,
        bytes: int | None = None,
        error_kind: str | None = None,
        attempts: int | None = None,
        detail: str | None = None,
    ) -> None:
        self.record_events(
            [
                {
                    "at": self.clock(),
                    "event": event,
                    "product_key": product_key,
                    "duration_s": duration_s,
                    "bytes": bytes,
                    "error_kind": error_kind,
                    "attempts": attempts,
                    "detail": detail,
                }
            ]
        )

    def record_events(self, events: list[dict[str, Any]]) -> None:
        """Record many metric events in one transaction (each a dict of metric columns)."""
        if not events:
            return
        columns = _METRIC_COLUMNS
        with self.transaction():
            self._db.execute_sql(
                f"INSERT INTO metric_events ({', '.join(columns)}) VALUES "
                + ", ".join(f"({', '.join('?' * len(columns))})" for _ in events),
                tuple(e.get(c) for e in events for c in columns),
            )

    def event_summary(self, since: float | None) -> EventSummary | None:
        """What `health` reports of the metric events since ``since``, summed by SQLite;
        None when some event in the window is not in the form this release writes (the
        caller then reads them one by one, as events_since gives them)."""
        window, params = ("AND at >= ?", (since,)) if since is not None else ("", ())
        with self._errors():
            if self._db.execute_sql(
                f"SELECT 1 FROM metric_events WHERE {_METRIC_UNUSUAL} {window} LIMIT 1", params
            ).fetchone():
                return None
            summary = EventSummary()
            totals = self._db.execute_sql(
                "SELECT event, count(*), coalesce(sum(bytes), 0), coalesce(sum(attempts), 0), "
                "count(CASE WHEN attempts != 0 THEN 1 END) "
                f"FROM metric_events WHERE 1 {window} GROUP BY event",
                params,
            ).fetchall()
            for event, count, total_bytes, attempts, with_attempts in totals:
                summary.counts[event] = count
                summary.bytes[event] = total_bytes
                summary.attempts[event] = attempts
                summary.with_attempts[event] = with_attempts
            (summary.retried_products,) = self._db.execute_sql(
                "SELECT count(DISTINCT product_key) FROM metric_events "
                f"WHERE event = 'retry' AND product_key != '' {window}",
                params,
            ).fetchone()
            # Summed here in time order, as a reader of the events one by one would.
            for (duration,) in self._db.execute_sql(
                "SELECT duration_s FROM metric_events WHERE event = 'download_succeeded' "
                f"{window} ORDER BY at",
                params,
            ).fetchall():
                summary.durations += duration or 0.0
            # In the order each first appears (as a reader of the events in time order).
            summary.failures_by_kind = dict(
                self._db.execute_sql(
                    "SELECT coalesce(nullif(error_kind, ''), 'unknown') AS kind, count(*) "
                    f"FROM metric_events WHERE event = 'download_failed' {window} "
                    "GROUP BY kind ORDER BY min(at), kind",
                    params,
                ).fetchall()
            )
            for day, ok, ok_at, bad, bad_at in self._db.execute_sql(
                "SELECT strftime('%Y-%m-%d', at, 'unixepoch') AS day, "
                "count(CASE WHEN event = 'download_succeeded' THEN 1 END), "
                "min(CASE WHEN event = 'download_succeeded' THEN at END), "
                "count(CASE WHEN event = 'download_failed' THEN 1 END), "
                "min(CASE WHEN event = 'download_failed' THEN at END) "
                "FROM metric_events WHERE event IN ('download_succeeded', 'download_failed') "
                f"{window} GROUP BY day ORDER BY day",
                params,
            ).fetchall():
                counts = [("succeeded", ok, ok_at), ("failed", bad, bad_at)]
                counts.sort(key=lambda c: (c[2] is None, c[2] or 0.0))
                summary.per_day[day] = {name: n for name, n, _ in counts if n}
        return summary

    def count_downloads(self, states: Iterable[DownloadState]) -> int:
        """How many download rows in ``states`` can be read (list_downloads' length)."""
        values = [s.value for s in states]
        marks = ", ".join("?" * len(values))
        with self._errors():
            (count,) = self._db.execute_sql(
                f"SELECT count(*) FROM download_entries WHERE state IN ({marks})", tuple(values)
            ).fetchone()
            (unusual,) = self._db.execute_sql(
                f"SELECT count(*) FROM download_entries WHERE {_DOWNLOAD_UNUSUAL} "
                f"AND state IN ({marks})",
                tuple(values),
            ).fetchone()
        if not unusual:
            return int(count)
        return len(self.list_downloads([DownloadState(v) for v in values]))

    def events_since(self, since: float | None) -> list[MetricEvent]:
        query = self._t.metric.select().order_by(self._t.metric.at)
        if since is not None:
            query = query.where(self._t.metric.at >= since)
        with self._errors():
            rows = list(query)

        def number(value: Any) -> Any:
            return value if _as_float(value) is not None else None

        def integer(value: Any) -> int | None:
            known = _as_float(value)
            return int(known) if known is not None else None

        def text(value: Any) -> str | None:
            return value if isinstance(value, str) else None

        # A damaged metric row is skipped (or its damaged value dropped): health still runs.
        return [
            MetricEvent(
                float(r.at),
                r.event,
                text(r.product_key),
                number(r.duration_s),
                integer(r.bytes),
                text(r.error_kind),
                integer(r.attempts),
                text(r.detail),
            )
            for r in rows
            if _as_float(r.at) is not None and isinstance(r.event, str)
        ]

    def get_setting(self, key: str) -> str | None:
        with self._errors():
            row = self._t.setting.get_or_none(self._t.setting.key == key)
        return row.value if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction():
            self._t.setting.replace(key=key, value=value).execute()


def _sql_value(value: Any) -> Any:
    """What sqlite3 stores for a value a model field would (enums by value, bools as 0/1)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


class DownloadStateManager:
    """The only writer of download entries: every state change goes through here.

    Each change is a read-check-write in one IMMEDIATE transaction, so two processes cannot
    both move the same entry and an illegal transition is refused, not stored.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(
        self,
        *,
        product_key: str,
        product_type: ProductType,
        product_id: str,
        media_url: str | None,
        license_url: str | None,
        expected_sha256: str | None,
        partial_media_path: Callable[[str], Path],
        partial_license_path: Callable[[str], Path],
        expected_size: int | None = None,
        license_expires_at: float | None = None,
        from_source: bool = False,
        stream: str | None = None,
        state: DownloadState = DownloadState.PENDING,
    ) -> DownloadEntry:
        download_id = uuid.uuid4().hex
        now = self._store.clock()
        with self._store.transaction():
            self._insert(
                id=download_id,
                product_key=product_key,
                product_type=product_type.value,
                product_id=product_id,
                state=state.value,
                progress=0.0,
                attempt_count=0,
                created_at=now,
                updated_at=now,
                owner_pid=os.getpid(),
                partial_media_path=str(partial_media_path(download_id)),
                partial_license_path=(
                    str(partial_license_path(download_id)) if license_url else None
                ),
                media_url=media_url,
                license_url=license_url,
                expected_sha256=expected_sha256,
                expected_size=expected_size,
                license_expires_at=license_expires_at,
                from_source=from_source,
                stream=stream,
                bytes_done=0,
                cancel_requested=False,
                resume_info="{}",
            )
        entry = self._store.get_download(download_id)
        assert entry is not None
        return entry

    def _insert(self, **values: Any) -> None:
        columns = [c for c in values if c in _DOWNLOAD_COLUMNS]
        self._store._db.execute_sql(
            f"INSERT INTO download_entries ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            tuple(_sql_value(values[c]) for c in columns),
        )

    def _update(self, download_id: str, values: dict[str, Any]) -> None:
        """UPDATE one entry (inside a transaction); ``values`` are columns of the table."""
        unknown = set(values) - set(_DOWNLOAD_COLUMNS)
        if unknown:
            raise ValueError(f"not a column of download_entries: {sorted(unknown)}")
        self._store._db.execute_sql(
            f"UPDATE download_entries SET {', '.join(f'{c} = ?' for c in values)} WHERE id = ?",
            (*(_sql_value(v) for v in values.values()), download_id),
        )

    def _column(self, download_id: str, column: str) -> tuple[Any] | None:
        assert column in _DOWNLOAD_COLUMNS
        row = self._store._db.execute_sql(
            f"SELECT {column} FROM download_entries WHERE id = ?", (download_id,)
        ).fetchone()
        return None if row is None else (row[0],)

    def transition(self, download_id: str, new_state: DownloadState, **fields: Any) -> None:
        """Move an entry to ``new_state`` (and set ``fields``), refusing illegal moves."""
        with self._store.transaction():
            row = self._column(download_id, "state")
            if row is None:
                raise IllegalTransition(f"download {download_id} does not exist")
            old_state = DownloadState(row[0])
            if old_state is not new_state and new_state not in ALLOWED_TRANSITIONS[old_state]:
                raise IllegalTransition(
                    f"download {download_id}: {old_state.value} -> {new_state.value} is illegal"
                )
            now = self._store.clock()
            values: dict[str, Any] = {"state": new_state.value, "updated_at": now, **fields}
            if new_state is DownloadState.PAUSED and old_state is not DownloadState.PAUSED:
                values.setdefault("paused_at", now)
            if new_state is DownloadState.IN_PROGRESS:
                values.setdefault("paused_at", None)
                values.setdefault("owner_pid", os.getpid())
            self._update(download_id, values)

    def update_progress(
        self,
        download_id: str,
        *,
        bytes_done: int,
        bytes_total: int | None,
    ) -> bool:
        """Record progress; returns True when another process asked to cancel."""
        progress = {download_id: (bytes_done, bytes_total)}
        return download_id in self.sync_progress(progress, [download_id])

    def sync_progress(
        self, progress: dict[str, tuple[int, int | None]], watched: Collection[str]
    ) -> set[str]:
        """Record the progress of many downloads in one transaction; returns those of
        ``watched`` another process asked to cancel (or that no longer exist)."""
        now = self._store.clock()
        ids = list(watched)
        with self._store.transaction():
            for download_id, (done, total) in progress.items():
                self._update(
                    download_id,
                    {
                        "bytes_done": done,
                        "bytes_total": total,
                        "progress": min(1.0, done / total) if total else 0.0,
                        "updated_at": now,
                    },
                )
            found: dict[str, bool] = {}
            for start in range(0, len(ids), 500):  # SQLite's limit on parameters
                chunk = ids[start : start + 500]
                for download_id, flag in self._store._db.execute_sql(
                    "SELECT id, cancel_requested FROM download_entries "
                    f"WHERE id IN ({', '.join('?' * len(chunk))})",
                    tuple(chunk),
                ).fetchall():
                    found[download_id] = bool(flag)
        return {i for i in ids if found.get(i, True)}

    def set_resume_info(
        self, download_id: str, resume_info: dict[str, dict[str, str | int | None]]
    ) -> None:
        with self._store.transaction():
            self._update(download_id, {"resume_info": json.dumps(resume_info)})

    def save_part(self, download_id: str, name: str, data: dict[str, Any]) -> None:
        """Record one HLS part's checkpoint (its validators, or that it is complete)."""
        with self._store.transaction():
            self._store._db.execute_sql(
                "INSERT OR REPLACE INTO download_parts (download_id, name, data) VALUES (?, ?, ?)",
                (download_id, name, json.dumps(data, separators=(",", ":"))),
            )

    def saved_parts(self, download_id: str) -> dict[str, dict[str, Any]]:
        """The checkpoints save_part recorded for a download (unreadable ones left out:
        that part starts over)."""
        with self._store._errors():
            rows = self._store._db.execute_sql(
                "SELECT name, data FROM download_parts WHERE download_id = ?", (download_id,)
            ).fetchall()
        saved: dict[str, dict[str, Any]] = {}
        for name, raw in rows:
            try:
                data = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if isinstance(name, str) and isinstance(data, dict):
                saved[name] = data
        return saved

    def set_stream(self, download_id: str, stream: str | None) -> None:
        with self._store.transaction():
            self._update(download_id, {"stream": stream})

    def set_attempts(self, download_id: str, attempts: int, last_error: str | None) -> None:
        with self._store.transaction():
            self._update(
                download_id,
                {
                    "attempt_count": attempts,
                    "last_error": last_error,
                    "updated_at": self._store.clock(),
                },
            )

    def mark_failed(self, download_id: str, error: str, kind: ErrorKind, **fields: Any) -> None:
        self.transition(
            download_id,
            DownloadState.FAILED,
            last_error=error,
            error_kind=kind.value,
            owner_pid=None,
            **fields,
        )

    def request_cancel(self, product_key: str) -> int:
        """Ask whichever process runs this product's download to stop."""
        rows = self._store._t.download
        with self._store.transaction():
            count: int = (
                rows.update(cancel_requested=True)
                .where(
                    (rows.product_key == product_key)
                    & rows.state.in_(
                        [
                            DownloadState.PENDING.value,
                            DownloadState.IN_PROGRESS.value,
                            DownloadState.PAUSED.value,
                        ]
                    )
                )
                .execute()
            )
        return count

    def is_cancel_requested(self, download_id: str) -> bool:
        with self._store._errors():
            row = self._column(download_id, "cancel_requested")
        return row is None or bool(row[0])

    def active_downloads(self) -> list[DownloadEntry]:
        return self._store.list_downloads(
            [DownloadState.PENDING, DownloadState.IN_PROGRESS, DownloadState.PAUSED]
        )
