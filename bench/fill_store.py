"""Fill an offline-cli home with N products fast, as offline-cli itself would have left it.

Used by the bench's ``store`` section (bench/run.py); run with the Python that has offline_cli
installed: ``python bench/fill_store.py HOME N``. Nothing is downloaded: the schema comes from
the store's own code (``Store`` creates and migrates it), the files are real small files in the
store's layout (``Layout``: ``store/<product folder>/<id>.media`` and ``.license``, an HLS
product's ``<id>.hls`` folder of parts, ``partial/<id>.media.part``), and the rows are the ones
a download leaves (an offlined row and its COMPLETED download row, or a FAILED, PAUSED,
CANCELLED or crashed IN_PROGRESS download row with its partial file) plus the metric events a
download records, inserted in bulk with executemany in one transaction.

The mix, of N products (deterministic: product i's fate is i modulo 1000):
  88.8 %  offlined, valid: a file of 200 bytes, one in five with a license; one in a hundred
          of these is HLS (a folder of 6 parts); each has a COMPLETED download row
   0.2 %  offlined but invalid (the media file was deleted by hand)
   6 %    FAILED (network, server or permanent; half keep a partial file)
   4 %    PAUSED (network lost; a partial file of 1 KB)
   0.8 %  CANCELLED
   0.2 %  IN_PROGRESS whose owner died (kill -9): `state --json` reads them as PAUSED
Metric events: download_started and download_succeeded/failed for each, retry events for
the failed ones, network_pause for the paused ones (about 2.1 events per product). Times are
spread over the last 30 days (the retention is 7), so cleanup finds old failed, paused and
cancelled entries; 50 orphan files (10 days old) lie in store/ and partial/; every product has
its lock file in locks/.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from offline_cli.paths import Layout
from offline_cli.store import DATABASE_SEEN_KEY, Store

DAY = 86400.0
MEDIA_BYTES = 200
ORPHANS = 50
HLS_PARTS = ("index.m3u8", "video.m3u8", "v-i000000.mp4", "v-s000000.m4s", "v-s000001.m4s")


def fate(i: int) -> str:
    r = i % 1000
    if r < 2:
        return "invalid"
    if r < 62:
        return "failed"
    if r < 102:
        return "paused"
    if r < 110:
        return "cancelled"
    if r < 112:
        return "crashed"
    return "offlined"


def product(i: int) -> tuple[str, str, str]:
    """(key, type, id): half URL products, half track:/video: ids."""
    if i % 2:
        url = f"https://cdn.example.com/media/{i:06d}.mp4"
        return url, "file", url
    kind = "track" if i % 4 else "video"
    return f"{kind}:{i:06d}", kind, f"{i:06d}"


def write(path: Path, data: bytes) -> int:
    """Write a file (0600, as the store's are); its mtime_ns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)


def fill(home: Path, n: int) -> dict[str, int]:
    layout = Layout(home)
    layout.ensure()
    Store(layout.database).close()  # the schema, created and migrated by the store's code
    now = time.time()
    downloads: list[tuple[Any, ...]] = []
    offlined: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    counts: dict[str, int] = {}
    media = os.urandom(MEDIA_BYTES)
    for i in range(n):
        key, ptype, pid = product(i)
        what = fate(i)
        counts[what] = counts.get(what, 0) + 1
        did = uuid.UUID(int=(i + 1) * 7919 + (1 << 120)).hex
        at = now - 30 * DAY * ((i * 7919) % n) / n - 60
        started = at - 5
        url = key if ptype == "file" else f"https://cdn.example.com/{ptype}/{pid}.mp4"
        events.append((started, "download_started", key, None, None, None, None, None))
        # Every product that was downloaded has its lock file (made by its first download).
        os.close(os.open(layout.lock_path(key), os.O_WRONLY | os.O_CREAT, 0o600))
        if what in ("offlined", "invalid"):
            folder = layout.product_dir(key)
            folder.mkdir(mode=0o700)
            hls = what == "offlined" and i % 100 == 13
            license_path = license_size = license_sha = license_url = None
            parts = stream = None
            if hls:
                media_path = layout.final_hls_path(key, did)
                media_path.mkdir(mode=0o700)
                stored = []
                for name in reversed(HLS_PARTS):  # the index last: its mtime is recorded
                    mtime_ns = write(media_path / name, media)
                    kind = "playlist" if name.endswith(".m3u8") else "segment"
                    stored.append(
                        {
                            "name": name,
                            "kind": kind,
                            "size": MEDIA_BYTES,
                            "sha256": "0" * 64,
                            "source": f"{url}/{name}",
                        }
                    )
                parts = json.dumps(stored[::-1], separators=(",", ":"))
                stream = json.dumps({"bandwidth": 800000, "resolution": "640x360"})
                size = MEDIA_BYTES * len(HLS_PARTS)
            else:
                media_path = layout.final_media_path(key, did)
                mtime_ns = write(media_path, media)
                size = MEDIA_BYTES
                if i % 5 == 0:
                    license_path = layout.final_license_path(key, did)
                    write(license_path, b"L" * 64)
                    license_size, license_sha = 64, "1" * 64
                    license_url = f"https://license.example.com/{i}"
                if what == "invalid":
                    media_path.unlink()
            offlined.append(
                (
                    key,
                    ptype,
                    pid,
                    str(media_path),
                    None if license_path is None else str(license_path),
                    size,
                    "2" * 64,
                    license_size,
                    license_sha,
                    f'"etag-{i}"',
                    None,
                    None,
                    url,
                    license_url,
                    mtime_ns,
                    at,
                    None,
                    parts,
                    stream,
                )
            )
            head = (did, key, ptype, pid, "COMPLETED", 1.0, 0, None, None, started, at, None)
            tail = (None, None, None, url, license_url, None, size, size, 0, "{}", None, None)
            downloads.append((*head, *tail, 0, stream))
            events.append((at, "download_succeeded", key, 5.0, size, None, 0, None))
            continue
        partial = layout.partial_media_path(did)
        done = 0
        # What a resumable download remembers of its partial file (its validators).
        resume = json.dumps(
            {"media": {"etag": f'"etag-{i}"', "last_modified": None, "size": 10_000}}
        )
        state, error, kind, paused_at, pid_owner = what.upper(), None, None, None, None
        if what == "failed":
            kind = ("network", "server", "permanent")[i % 3]
            error = {"network": "connection reset", "server": "HTTP 503", "permanent": "HTTP 404"}
            error = error[kind]
            if i % 2:
                done = write(partial, media) and MEDIA_BYTES
            else:
                partial, resume = None, "{}"  # type: ignore[assignment]
            for attempt in (1, 2):
                events.append((started + attempt, "retry", key, None, None, kind, attempt, error))
            events.append((at, "download_failed", key, None, None, kind, 3, error))
        elif what == "paused":
            write(partial, media * 5)
            done, error, paused_at = MEDIA_BYTES * 5, "network lost", at
            events.append((at, "network_pause", key, None, None, None, None, "cdn.example.com"))
        elif what == "cancelled":
            partial, error, kind = None, "cancelled by the user", "cancelled"  # type: ignore[assignment]
            resume = "{}"
        else:  # crashed: IN_PROGRESS, its owner long gone
            write(partial, media)
            state, done, pid_owner = "IN_PROGRESS", MEDIA_BYTES, 4_000_000 + i
        head = (did, key, ptype, pid, state, done / 10_000, 1, error, kind, started, at, paused_at)
        where = None if partial is None else str(partial)
        tail = (pid_owner, where, None, url, None, None, done, 10_000, 0, resume, None, None)
        downloads.append((*head, *tail, 0, None))
    orphan_time = now - 10 * DAY
    for j in range(ORPHANS if n else 0):
        folder = layout.store_dir if j % 2 else layout.partial_dir
        name = f"{uuid.UUID(int=j + 1).hex}.media" + ("" if j % 2 else ".part")
        if j % 2:
            folder = folder / f"orphan-{j}"
            folder.mkdir(mode=0o700)
        write(folder / name, media)
        os.utime(folder / name, (orphan_time, orphan_time))
    conn = sqlite3.connect(layout.database)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO download_entries (id, product_key, product_type, product_id, state,"
                " progress, attempt_count, last_error, error_kind, created_at, updated_at,"
                " paused_at, owner_pid, partial_media_path, partial_license_path, media_url,"
                " license_url, expected_sha256, bytes_done, bytes_total, cancel_requested,"
                " resume_info, expected_size, license_expires_at, from_source, stream)"
                f" VALUES ({', '.join('?' * 26)})",
                downloads,
            )
            conn.executemany(
                "INSERT INTO offlined_entries (product_key, product_type, product_id, media_path,"
                " license_path, size, sha256, license_size, license_sha256, etag, last_modified,"
                " license_expires_at, source_url, license_url, mtime_ns, completed_at,"
                f" invalid_reason, parts, stream) VALUES ({', '.join('?' * 19)})",
                offlined,
            )
            events.sort()
            conn.executemany(
                "INSERT INTO metric_events (at, event, product_key, duration_s, bytes, error_kind,"
                " attempts, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            # The database is older than the files it names (it was made when the first was).
            conn.execute(
                "UPDATE settings SET value = ? WHERE key = ?",
                (repr(now - 40 * DAY), DATABASE_SEEN_KEY),
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    counts["downloads"] = len(downloads)
    counts["events"] = len(events)
    counts["orphans"] = ORPHANS if n else 0
    return counts


def main() -> None:
    home, n = Path(sys.argv[1]), int(sys.argv[2])
    started = time.perf_counter()
    counts = fill(home, n)
    counts["fill_ms"] = round((time.perf_counter() - started) * 1000)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
