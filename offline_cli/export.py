"""Getting a stored product back out: where its files are (`path`) and a verified copy of it
somewhere else (`export`). The store itself is only read."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from offline_cli.bundle import INDEX_PLAYLIST, sha256_of
from offline_cli.errors import ExportFailed, UsageError
from offline_cli.models import OfflinedEntry, looks_like_url

_HASH_BLOCK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME_CHARS = 120
# FICLONE from <linux/fs.h>: make the destination share the source's blocks (copy on write).
_FICLONE = 0x40049409


@dataclass(frozen=True)
class StoredProduct:
    """Where a committed product's files are, as the store records them."""

    entry: OfflinedEntry
    media: Path  # the media file, or an HLS product's local playlist
    license: Path | None
    folder: Path | None  # an HLS product's folder

    @property
    def key(self) -> str:
        return self.entry.product_key

    @property
    def files(self) -> list[tuple[str, int, str]]:
        """(name, size, SHA-256) of what an export copies: the one media file, or every
        file of the HLS folder."""
        if self.entry.parts is not None:
            return [(p.name, p.size, p.sha256) for p in self.entry.parts]
        return [(self.media.name, self.entry.size, self.entry.sha256)]


def locate(entry: OfflinedEntry, media_root: Path, license_path: Path | None) -> StoredProduct:
    """The StoredProduct of an entry whose (checked) media path is ``media_root``."""
    if entry.is_hls:
        return StoredProduct(entry, media_root / INDEX_PLAYLIST, license_path, media_root)
    return StoredProduct(entry, media_root, license_path, None)


def media_name(entry: OfflinedEntry, media_root: str) -> str:
    """``str(locate(entry, Path(media_root), ...).media)``, without making Paths (`state
    --json` names the media of every product)."""
    return os.path.join(media_root, INDEX_PLAYLIST) if entry.is_hls else media_root


def export_name(entry: OfflinedEntry, source_url: str | None) -> str:
    """The name an export takes inside a DEST folder: the URL's last path segment, made
    safe (letters, digits, ``.``, ``_``, ``-``); an HLS product, or a URL without a usable
    last segment, is named after the product (``track-42``)."""
    candidate = ""
    if not entry.is_hls and source_url and looks_like_url(source_url):
        candidate = unquote(urlsplit(source_url).path.rsplit("/", 1)[-1])
    if not candidate.strip("._-") or candidate in (".", ".."):
        candidate = f"{entry.product_type.value}-{entry.product_id}"
        if looks_like_url(entry.product_id):
            candidate = entry.product_type.value + "-" + urlsplit(entry.product_id).path
    safe = _UNSAFE.sub("_", candidate).strip("._") or "product"
    return safe[:_NAME_CHARS]


def _clone_or_copy(source: Path, target: Path) -> str:
    """Copy ``source`` (never through a link) to a new file ``target``: a reflink where the
    file system shares blocks (Btrfs, XFS), else a plain copy. Never a hard link: editing an
    exported file in place would change the stored copy. Returns how it was done."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            try:
                import fcntl

                fcntl.ioctl(dst, _FICLONE, src)
                return "reflink"
            except (OSError, ImportError):
                pass
            with os.fdopen(os.dup(src), "rb") as reader, os.fdopen(os.dup(dst), "wb") as writer:
                shutil.copyfileobj(reader, writer, _HASH_BLOCK)
                writer.flush()
                os.fsync(writer.fileno())
            return "copy"
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_special(target: Path, st: os.stat_result | None, key: str) -> None:
    # A FIFO, a device or a socket is never replaced, even with --force: as root a rename
    # onto /dev/null would have replaced the device with a regular file.
    if st is not None and not (
        stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
    ):
        raise UsageError(
            f"{target} is not a regular file or a folder; nothing was written", product=key
        )


def check_dest(text: str, home: Path, key: str) -> Path:
    """DEST as typed, checked before anything is written: a trailing ``/`` means an existing
    folder (as ``cp f nodir/`` refuses), and nothing may land inside the offline-cli
    ``home`` (an export onto ``offline.db`` or into ``store/`` would corrupt it)."""
    dest = Path(text).expanduser()
    try:
        if text.endswith(os.sep) and not dest.is_dir():
            if _exists(dest):
                raise UsageError(f"{dest} is not a folder; nothing was written", product=key)
            raise UsageError(f"folder {dest} does not exist; nothing was written", product=key)
        real_home = Path(os.path.realpath(home))
        # Both the path DEST resolves to and the link itself (--force replaces a link).
        spots = (
            Path(os.path.realpath(dest)),
            Path(os.path.realpath(dest.parent)) / dest.name,
        )
        if any(spot.is_relative_to(real_home) for spot in spots):
            raise UsageError(
                f"DEST is inside the offline-cli home {home}; nothing was written",
                product=key,
                hint="export to a folder outside it",
            )
    except OSError as exc:
        raise UsageError(f"DEST {dest}: {exc.strerror or exc}", product=key) from exc
    return dest


def export(stored: StoredProduct, dest: Path, *, force: bool) -> tuple[Path, str]:
    """Copy ``stored`` to ``dest`` (a file, or a folder to put it in; for HLS a folder that
    will hold the playlist and its parts); returns where it went and how it was copied.

    Written under a temporary name beside the target and renamed into place only once every
    file's SHA-256 matches the one recorded at download: a failure leaves nothing at DEST.
    """
    try:
        target, parent = _checked_target(stored, dest, force=force)
    except OSError as exc:
        # ENAMETOOLONG, ELOOP, EACCES...: a DEST that cannot even be looked at.
        raise UsageError(f"DEST {dest}: {exc.strerror or exc}", product=stored.key) from exc
    return _write(stored, target, parent)


def _checked_target(stored: StoredProduct, dest: Path, *, force: bool) -> tuple[Path, Path]:
    target = dest
    st = _lstat(dest)
    _refuse_special(dest, st, stored.key)
    if st is not None and stat.S_ISDIR(st.st_mode):
        target = dest / export_name(stored.entry, stored.entry.source_url)
        st = _lstat(target)
        _refuse_special(target, st, stored.key)
    if st is not None and not force:
        raise UsageError(
            f"{target} exists; nothing was written",
            product=stored.key,
            hint="give --force to replace it",
        )
    if st is not None and (stored.folder is None) == stat.S_ISDIR(st.st_mode):
        kind = "a folder" if stored.folder is None else "not a folder"
        raise UsageError(
            f"{target} is {kind}; --force replaces a file with a file and an HLS export "
            "with an HLS export",
            product=stored.key,
        )
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"folder {parent} does not exist", product=stored.key)
    return target, parent


def _write(stored: StoredProduct, target: Path, parent: Path) -> tuple[Path, str]:
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.", suffix=".part", dir=parent))
    except OSError as exc:
        raise ExportFailed(
            f"cannot write in {parent}: {exc.strerror or exc}", product=stored.key
        ) from exc
    try:
        methods = set()
        for name, size, digest in stored.files:
            source = (stored.folder / name) if stored.folder is not None else stored.media
            copy = work / name
            methods.add(_clone_or_copy(source, copy))
            if copy.stat().st_size != size or sha256_of(copy) != digest:
                raise ExportFailed(
                    f"the copy of {name} does not match the SHA-256 recorded at download; "
                    "nothing was written",
                    product=stored.key,
                    hint="run `offline-cli validate --repair` on it first",
                )
        # Checked again just before the rename, which replaces (never follows) what is there.
        _refuse_special(target, _lstat(target), stored.key)
        if stored.folder is None:
            os.replace(work / stored.media.name, target)
        else:
            aside = None
            if _exists(target):
                aside = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.", dir=parent))
                os.replace(target, aside / "old")
            os.replace(work, target)
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        return target, "reflink" if methods == {"reflink"} else "copy"
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ExportFailed(
            f"cannot export to {target}: {'disk full' if full else exc.strerror or exc}; "
            "nothing was written",
            product=stored.key,
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
