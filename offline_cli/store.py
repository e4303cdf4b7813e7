"""The SQLite store: the only module that imports peewee; plain dataclasses go in and out."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from playhouse.migrate import SqliteMigrator, migrate

from offline_cli.credentials import CredentialVault
from offline_cli.errors import StorageError
from offline_cli.models import (
    ALLOWED_TRANSITIONS,
    DownloadEntry,
    DownloadState,
    ErrorKind,
    OfflinedEntry,
    ProductType,
    looks_like_url,
)
from offline_cli.paths import Layout
from offline_cli.redaction import scrub_urls

# Version 1 is the first release: download and offlined entries. Version 2 adds resume
# bookkeeping, cancellation, validation marks, metrics and settings. Version 3 renames URL
# products and stored URLs by the whole-name credential rule (redaction.py); the tables
# are unchanged. Migrations only add or rename.
SCHEMA_VERSION = 3
DEFAULT_BUSY_TIMEOUT_S = 30.0

_database = peewee.DatabaseProxy()


class _Base(peewee.Model):
    class Meta:
        database = _database


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

    class Meta:
        table_name = "download_entries"


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


class IllegalTransition(RuntimeError):
    """A bug: code asked for a state change the state machine forbids."""


def _download_from_row(row: _DownloadRow) -> DownloadEntry:
    return DownloadEntry(
        id=row.id,
        product_key=row.product_key,
        product_type=ProductType(row.product_type),
        product_id=row.product_id,
        state=DownloadState(row.state),
        progress=row.progress,
        attempt_count=row.attempt_count,
        last_error=row.last_error,
        error_kind=ErrorKind(row.error_kind) if row.error_kind else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        paused_at=row.paused_at,
        owner_pid=row.owner_pid,
        partial_media_path=row.partial_media_path,
        partial_license_path=row.partial_license_path,
        media_url=row.media_url,
        license_url=row.license_url,
        expected_sha256=row.expected_sha256,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        cancel_requested=bool(row.cancel_requested),
        resume_info=json.loads(row.resume_info or "{}"),
        expected_size=row.expected_size,
        license_expires_at=row.license_expires_at,
        from_source=bool(row.from_source),
    )


def _offlined_from_row(row: _OfflinedRow) -> OfflinedEntry:
    return OfflinedEntry(
        product_key=row.product_key,
        product_type=ProductType(row.product_type),
        product_id=row.product_id,
        media_path=row.media_path,
        license_path=row.license_path,
        size=row.size,
        sha256=row.sha256,
        license_size=row.license_size,
        license_sha256=row.license_sha256,
        etag=row.etag,
        last_modified=row.last_modified,
        license_expires_at=row.license_expires_at,
        source_url=row.source_url,
        license_url=row.license_url,
        mtime_ns=row.mtime_ns,
        completed_at=row.completed_at,
        invalid_reason=row.invalid_reason,
    )


class Store:
    """One SQLite file in WAL mode; short IMMEDIATE transactions so processes share it."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.clock = clock
        self._db = peewee.SqliteDatabase(
            str(path),
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
        _database.initialize(self._db)
        with self._errors():
            self._open(busy_timeout_s)
        self.downloads = DownloadStateManager(self)

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
                self._migrate()
                return
            except (peewee.OperationalError, sqlite3.OperationalError) as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
                if not self._db.is_closed():
                    self._db.close()
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def close(self) -> None:
        if not self._db.is_closed():
            self._db.close()

    # -- errors and transactions ------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite failures into StorageError with a hint saying what to do."""
        # The models go through one module-level proxy: point it at this store's database,
        # so two stores (two engines on two homes) in one process never write to each other.
        if _database.obj is not self._db:
            _database.initialize(self._db)
        try:
            yield
        except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StorageError(
                    f"database {self.path} is locked: {text}",
                    hint="another offline-cli is holding it; try again, or raise --db-timeout",
                ) from exc
            raise StorageError(
                f"database {self.path} is unusable: {text}",
                hint=(
                    f"move it aside (mv '{self.path}' '{self.path}.broken') to start an empty "
                    "store; stored files are then orphans that `cleanup` reclaims"
                ),
            ) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._errors(), self._db.atomic():
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
            return
        # The vault of this home: the credentials of the URLs the database names.
        vault = CredentialVault(Layout(self.path.parent).credentials_file)
        renamed: dict[str, str] = {}
        with self._db.atomic():
            # Read again under the write lock: another process may have migrated meanwhile.
            version = self._db.execute_sql("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                self._db.create_tables([_DownloadRow, _OfflinedRow, _MetricRow, _SettingRow])
            else:
                if version == 1:
                    self._migrate_1_to_2()
                renamed = self._migrate_2_to_3(vault)
            self._db.execute_sql(
                "CREATE INDEX IF NOT EXISTS download_entries_product_state "
                "ON download_entries (product_key, state)"
            )
            self._db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Only now that the database names the new forms: the old names were vault keys
        # for the same full URLs, and a later delete forgets only the new ones.
        still_used = set(renamed.values())
        stale: list[str | None] = [old for old in renamed if old not in still_used]
        if stale:
            # A leftover old name is harmless (nothing refers to it), so a failure is not fatal.
            with contextlib.suppress(OSError):
                vault.forget(stale)

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
        urls = [u for u in urls if looks_like_url(u)]
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
        migrator = SqliteMigrator(self._db)
        migrate(
            migrator.add_column("download_entries", "bytes_done", _DownloadRow.bytes_done),
            migrator.add_column("download_entries", "bytes_total", _DownloadRow.bytes_total),
            migrator.add_column(
                "download_entries", "cancel_requested", _DownloadRow.cancel_requested
            ),
            migrator.add_column("download_entries", "resume_info", _DownloadRow.resume_info),
            migrator.add_column("download_entries", "expected_size", _DownloadRow.expected_size),
            migrator.add_column(
                "download_entries", "license_expires_at", _DownloadRow.license_expires_at
            ),
            migrator.add_column("download_entries", "from_source", _DownloadRow.from_source),
            migrator.add_column("offlined_entries", "invalid_reason", _OfflinedRow.invalid_reason),
        )
        self._db.create_tables([_MetricRow, _SettingRow])

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

    def integrity_check(self) -> str:
        with self._errors():
            return str(self._db.execute_sql("PRAGMA integrity_check").fetchone()[0])

    # -- offlined entries ----------------------------------------------------------------

    def get_offlined(self, product_key: str) -> OfflinedEntry | None:
        with self._errors():
            row = _OfflinedRow.get_or_none(_OfflinedRow.product_key == product_key)
        return _offlined_from_row(row) if row else None

    def offlined_by_key(self) -> dict[str, OfflinedEntry]:
        return {e.product_key: e for e in self.list_offlined()}

    def latest_download_by_key(self) -> dict[str, DownloadEntry]:
        """Each product's latest download entry, in one query."""
        with self._errors():
            rows = list(
                _DownloadRow.select().order_by(_DownloadRow.created_at, peewee.SQL("rowid"))
            )
        return {row.product_key: _download_from_row(row) for row in rows}

    def list_offlined(self) -> list[OfflinedEntry]:
        with self._errors():
            rows = list(_OfflinedRow.select().order_by(_OfflinedRow.completed_at))
        return [_offlined_from_row(r) for r in rows]

    def delete_offlined(self, product_key: str) -> bool:
        with self.transaction():
            deleted: int = (
                _OfflinedRow.delete().where(_OfflinedRow.product_key == product_key).execute()
            )
        return deleted > 0

    def set_invalid_reason(
        self, product_key: str, reason: str | None, *, mtime_ns: int | None = None
    ) -> None:
        """Record a full check's verdict; a pass also records the file's current mtime, so
        `state`'s cheap check agrees with it after a touch or a copy."""
        values: dict[str, Any] = {"invalid_reason": reason}
        if mtime_ns is not None:
            values["mtime_ns"] = mtime_ns
        with self.transaction():
            _OfflinedRow.update(**values).where(_OfflinedRow.product_key == product_key).execute()

    def commit_product(self, download_id: str, entry: OfflinedEntry) -> OfflinedEntry | None:
        """Record a completed product and finish its download in one transaction.

        Returns the entry it replaced, whose files the caller removes afterwards.
        """
        with self.transaction():
            old_row = _OfflinedRow.get_or_none(_OfflinedRow.product_key == entry.product_key)
            old = _offlined_from_row(old_row) if old_row else None
            fields = {k: getattr(entry, k) for k in _OfflinedRow._meta.fields}
            fields["product_type"] = entry.product_type.value
            _OfflinedRow.replace(**fields).execute()
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
        return old

    # -- download entries (read side) ------------------------------------------------------

    def get_download(self, download_id: str) -> DownloadEntry | None:
        with self._errors():
            row = _DownloadRow.get_or_none(_DownloadRow.id == download_id)
        return _download_from_row(row) if row else None

    def latest_download(self, product_key: str) -> DownloadEntry | None:
        with self._errors():
            row = (
                _DownloadRow.select()
                .where(_DownloadRow.product_key == product_key)
                .order_by(_DownloadRow.created_at.desc(), peewee.SQL("rowid DESC"))
                .first()
            )
        return _download_from_row(row) if row else None

    def list_downloads(
        self, states: Iterable[DownloadState] | None = None, product_key: str | None = None
    ) -> list[DownloadEntry]:
        query = _DownloadRow.select().order_by(_DownloadRow.created_at)
        if states is not None:
            query = query.where(_DownloadRow.state.in_([s.value for s in states]))
        if product_key is not None:
            query = query.where(_DownloadRow.product_key == product_key)
        with self._errors():
            rows = list(query)
        return [_download_from_row(r) for r in rows]

    def delete_download(self, download_id: str) -> None:
        with self.transaction():
            _DownloadRow.delete().where(_DownloadRow.id == download_id).execute()

    def known_product_keys(self) -> list[str]:
        """Every product the store knows, offlined or with a download entry, oldest first."""
        with self._errors():
            offlined = [
                (r.completed_at, r.product_key)
                for r in _OfflinedRow.select(_OfflinedRow.product_key, _OfflinedRow.completed_at)
            ]
            grouped: Any = (
                _DownloadRow.select(
                    _DownloadRow.product_key, peewee.fn.MIN(_DownloadRow.created_at)
                )
                .group_by(_DownloadRow.product_key)
                .tuples()
            )
            downloads = [(float(at), str(key)) for key, at in grouped]
        first_seen: dict[str, float] = {}
        for at, key in offlined + downloads:
            first_seen[key] = min(at, first_seen.get(key, at))
        return sorted(first_seen, key=lambda k: (first_seen[k], k))

    def referenced_paths(self) -> set[str]:
        """Every file path some entry owns (for orphan detection)."""
        paths: set[str] = set()
        with self._errors():
            for o in _OfflinedRow.select(_OfflinedRow.media_path, _OfflinedRow.license_path):
                paths.update(p for p in (o.media_path, o.license_path) if p)
            for d in _DownloadRow.select(
                _DownloadRow.partial_media_path, _DownloadRow.partial_license_path
            ):
                paths.update(p for p in (d.partial_media_path, d.partial_license_path) if p)
        return paths

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
        with self.transaction():
            _MetricRow.create(
                at=self.clock(),
                event=event,
                product_key=product_key,
                duration_s=duration_s,
                bytes=bytes,
                error_kind=error_kind,
                attempts=attempts,
                detail=detail,
            )

    def events_since(self, since: float | None) -> list[MetricEvent]:
        query = _MetricRow.select().order_by(_MetricRow.at)
        if since is not None:
            query = query.where(_MetricRow.at >= since)
        with self._errors():
            return [
                MetricEvent(
                    r.at,
                    r.event,
                    r.product_key,
                    r.duration_s,
                    r.bytes,
                    r.error_kind,
                    r.attempts,
                    r.detail,
                )
                for r in query
            ]

    def get_setting(self, key: str) -> str | None:
        with self._errors():
            row = _SettingRow.get_or_none(_SettingRow.key == key)
        return row.value if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction():
            _SettingRow.replace(key=key, value=value).execute()


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
    ) -> DownloadEntry:
        download_id = uuid.uuid4().hex
        now = self._store.clock()
        with self._store.transaction():
            _DownloadRow.create(
                id=download_id,
                product_key=product_key,
                product_type=product_type.value,
                product_id=product_id,
                state=DownloadState.PENDING.value,
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
            )
        entry = self._store.get_download(download_id)
        assert entry is not None
        return entry

    def transition(self, download_id: str, new_state: DownloadState, **fields: Any) -> None:
        """Move an entry to ``new_state`` (and set ``fields``), refusing illegal moves."""
        with self._store.transaction():
            row = _DownloadRow.get_or_none(_DownloadRow.id == download_id)
            if row is None:
                raise IllegalTransition(f"download {download_id} does not exist")
            old_state = DownloadState(row.state)
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
            _DownloadRow.update(**values).where(_DownloadRow.id == download_id).execute()

    def update_progress(
        self,
        download_id: str,
        *,
        bytes_done: int,
        bytes_total: int | None,
    ) -> bool:
        """Record progress; returns True when another process asked to cancel."""
        progress = min(1.0, bytes_done / bytes_total) if bytes_total else 0.0
        values: dict[str, Any] = {
            "bytes_done": bytes_done,
            "bytes_total": bytes_total,
            "progress": progress,
            "updated_at": self._store.clock(),
        }
        with self._store.transaction():
            _DownloadRow.update(**values).where(_DownloadRow.id == download_id).execute()
            row = _DownloadRow.get_or_none(_DownloadRow.id == download_id)
        return row is None or bool(row.cancel_requested)

    def set_resume_info(
        self, download_id: str, resume_info: dict[str, dict[str, str | int | None]]
    ) -> None:
        with self._store.transaction():
            _DownloadRow.update(resume_info=json.dumps(resume_info)).where(
                _DownloadRow.id == download_id
            ).execute()

    def set_attempts(self, download_id: str, attempts: int, last_error: str | None) -> None:
        with self._store.transaction():
            _DownloadRow.update(
                attempt_count=attempts, last_error=last_error, updated_at=self._store.clock()
            ).where(_DownloadRow.id == download_id).execute()

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
        with self._store.transaction():
            count: int = (
                _DownloadRow.update(cancel_requested=True)
                .where(
                    (_DownloadRow.product_key == product_key)
                    & _DownloadRow.state.in_(
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
            row = _DownloadRow.get_or_none(_DownloadRow.id == download_id)
        return row is None or bool(row.cancel_requested)

    def active_downloads(self) -> list[DownloadEntry]:
        return self._store.list_downloads(
            [DownloadState.PENDING, DownloadState.IN_PROGRESS, DownloadState.PAUSED]
        )
