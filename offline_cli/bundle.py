"""A stored HLS product's folder: the names its files may have, and its checks (every part
present with its recorded size, the cheap check `state` makes, and for `validate` its
recorded SHA-256). Apart from the HLS planner (hls.py) so that `state` does not import it."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from offline_cli.models import StoredPart

# The only file names a stored HLS product has: the tool's own, whatever the playlist says.
INDEX_PLAYLIST = "index.m3u8"
PART_NAME_RE = re.compile(
    r"(?:index|video|audio[0-9]{1,2})\.m3u8|(?:v|a[0-9]{1,2})-[sik][0-9]{1,6}\.[a-z0-9]{1,5}"
)
_HASH_BLOCK = 1 << 20


def is_part_name(name: str) -> bool:
    """Whether ``name`` is one the tool gives the files of a stored HLS product."""
    return PART_NAME_RE.fullmatch(name) is not None


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, never of what a link at ``path`` points to (OSError then)."""
    hasher = hashlib.sha256()
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as stream:
        while block := stream.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def regular_size(path: Path) -> int | None:
    """The size of a regular file at ``path`` (never through a link), else None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def index_mtime_ns(folder: Path) -> int | None:
    try:
        return os.stat(folder / INDEX_PLAYLIST, follow_symlinks=False).st_mtime_ns
    except OSError:
        return None


def folder_problem(
    folder: Path, parts: tuple[StoredPart, ...], *, mtime_ns: int | None, full: bool
) -> str | None:
    """None when ``folder`` holds every part as recorded, else what is wrong (the first).

    ``mtime_ns``: the local playlist's recorded modification time (the cheap check trusts
    sizes and that time, as for a single file); ``full`` hashes every part.
    """
    if folder.is_symlink() or folder.parent.is_symlink():
        return "media folder is a symbolic link (not followed)"
    if not folder.is_dir():
        return "media folder missing"
    for part in parts:
        if not is_part_name(part.name):
            return f"part name {part.name[:40]!r} is not one offline-cli gives (not read)"
        path = folder / part.name
        size = regular_size(path)
        if size is None:
            return f"{part.kind} {part.name} missing"
        if size != part.size:
            return f"{part.kind} {part.name} size {size} differs from recorded {part.size}"
    if mtime_ns is not None and index_mtime_ns(folder) != mtime_ns:
        return "local playlist changed"
    if full:
        for part in parts:
            try:
                if sha256_of(folder / part.name) != part.sha256:
                    return (
                        f"{part.kind} {part.name} SHA-256 differs from the one recorded at download"
                    )
            except OSError as exc:
                return f"{part.kind} {part.name} unreadable: {exc.strerror or exc}"
    return None
