"""The home folder and the layout of everything stored under it."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from offline_cli.errors import StorageError

APP_NAME = "offline-cli"
HOME_ENV = "OFFLINE_CLI_HOME"
# The names the store gives its files: a download id (uuid4 hex) and what the file holds.
# An HLS product is a folder (``<id>.hls``, ``<id>.hls.part`` while it downloads) of files
# the tool named itself; it is owned, moved and removed as one.
_FINAL_FILE = re.compile(r"(?P<id>[0-9a-f]{32})\.(?:media|license|hls)")
_PARTIAL_FILE = re.compile(r"(?P<id>[0-9a-f]{32})\.(?:media|license|hls)\.part")
# ``<folder>/<file>`` under the store folder, each one plain component (not . or ..).
_STORE_TAIL = re.compile(r"(?!\.\.?/)[^/\0]+/(?!\.\.?$)[^/\0]+")
_STORED_TAIL = re.compile(r"((?!\.\.?/)[^/\0]+)/[0-9a-f]{32}\.(?:media|license|hls)")
HLS_FOLDER = re.compile(r"[0-9a-f]{32}\.hls(?:\.part)?")
# Owner only, whatever the umask: licenses and credentials live in the home.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def default_home() -> Path:
    """``$OFFLINE_CLI_HOME`` when set, else the platformdirs user data folder."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def product_dir_name(product_key: str) -> str:
    """A file-system-safe, collision-free folder name for a product key.

    Product keys may be URLs, so the name is a hash; a readable prefix helps a person who
    looks inside the store.
    """
    digest = hashlib.sha256(product_key.encode()).hexdigest()[:24]
    readable = "".join(c if c.isalnum() else "-" for c in product_key)[:40].strip("-")
    return f"{readable}-{digest}" if readable else digest


def refuse_link(path: Path) -> None:
    """Raise StorageError when ``path`` is a symbolic link (or anything but a file)."""
    try:
        info = path.lstat()
    except OSError:
        return
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISLNK(info.st_mode):
        raise StorageError(
            f"{path} is a symbolic link; offline-cli never follows links to its own files",
            # Removing a link never touches what it points to.
            hint=f"remove the link (rm '{path}') if you did not put it there, and try again",
        )
    raise StorageError(
        f"{path} is not a regular file; offline-cli keeps its own file there",
        hint=f"move it aside (mv '{path}' '{path}.moved') and try again",
    )


def open_private(path: Path, flags: int, *, create: bool = True) -> int:
    """Open a file of the home, never through a link, creating it 0600 when missing.

    ``flags`` are the os.open access flags (O_RDONLY, O_WRONLY|O_APPEND, ...). A link or
    anything but a regular file at ``path`` is a StorageError naming it; without ``create``
    a missing file is FileNotFoundError.
    """
    # O_NONBLOCK: a FIFO planted at the path must not hang the open (it is refused below).
    nofollow = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags | nofollow, PRIVATE_FILE_MODE)
    except OSError:
        refuse_link(path)  # ELOOP (EMLINK on BSD) for a link: say so, naming the path
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            refuse_link(path)
        if info.st_mode & 0o077:
            # Made by an older release (or another umask): only the owner reads our files.
            with suppress(OSError):
                os.fchmod(fd, PRIVATE_FILE_MODE)
        # Blocking again, as a plain open would be (the flag only guarded the open itself).
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch_private(path: Path) -> None:
    """Make sure ``path`` is a private regular file of the home (created 0600 when missing)."""
    os.close(open_private(path, os.O_RDONLY))


def _plain(name: str) -> bool:
    """A single, normalised path component."""
    return name not in ("", ".", "..") and os.sep not in name


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not regular files, by its listing alone (a lock
    folder holds one file per product ever downloaded: 100,000 in a big store)."""
    try:
        if not folder.is_dir() or folder.is_symlink():
            return []
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if not e.is_file(follow_symlinks=False)]
    except OSError:
        return []


@dataclass(frozen=True)
class Layout:
    """Where things live under one home folder. Nothing is ever written outside it."""

    home: Path

    def __post_init__(self) -> None:
        # Absolute and without `..`, once: every path the store records is spelt from it, so
        # a relative `--home` used from another folder still names the same files.
        object.__setattr__(self, "home", Path(os.path.abspath(self.home)))

    @property
    def database(self) -> Path:
        return self.home / "offline.db"

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def partial_dir(self) -> Path:
        return self.home / "partial"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    def product_dir(self, product_key: str) -> Path:
        return self.store_dir / product_dir_name(product_key)

    def final_media_path(self, product_key: str, download_id: str) -> Path:
        # Versioned by download id: a new copy never overwrites the valid one before the
        # database points at it, so a failed re-download cannot damage the old copy.
        return self.product_dir(product_key) / f"{download_id}.media"

    def final_license_path(self, product_key: str, download_id: str) -> Path:
        return self.product_dir(product_key) / f"{download_id}.license"

    def partial_media_path(self, download_id: str) -> Path:
        return self.partial_dir / f"{download_id}.media.part"

    def partial_license_path(self, download_id: str) -> Path:
        return self.partial_dir / f"{download_id}.license.part"

    def final_hls_path(self, product_key: str, download_id: str) -> Path:
        return self.product_dir(product_key) / f"{download_id}.hls"

    def partial_hls_path(self, download_id: str) -> Path:
        return self.partial_dir / f"{download_id}.hls.part"

    def lock_path(self, product_key: str) -> Path:
        return self.locks_dir / f"{product_dir_name(product_key)}.lock"

    @property
    def database_companions(self) -> tuple[Path, ...]:
        """The files SQLite keeps beside the database (WAL mode; a journal after a crash)."""
        return tuple(self.home / f"offline.db{suffix}" for suffix in ("-wal", "-shm", "-journal"))

    @property
    def credentials_lock(self) -> Path:
        return self.home / "credentials.json.lock"

    def ensure(self) -> None:
        """Create the folders (0700) and the database file (0600), or raise StorageError when
        the home is not writable or holds a link where offline-cli keeps its own files."""
        if self.home.exists() and not self.home.is_dir():
            raise StorageError(
                f"home folder {self.home} is not a folder",
                hint=f"point ${HOME_ENV} or --home at a folder",
            )
        for folder in (self.store_dir, self.partial_dir, self.locks_dir):
            if folder.is_symlink():
                # Deletion never follows links, so a linked store could never be cleaned.
                raise StorageError(
                    f"{folder} is a symbolic link; offline-cli keeps everything inside its home",
                    hint=f"replace the link by a folder, or point ${HOME_ENV} at the real place",
                )
        # SQLite and filelock open these by name and follow a link: the file it points at,
        # anywhere on the disk, would be written (a lock file even truncated).
        for path in (
            self.database,
            *self.database_companions,
            self.credentials_file,
            self.credentials_lock,
            *_entries(self.locks_dir),
        ):
            refuse_link(path)
        try:
            for folder in (self.home, self.store_dir, self.partial_dir, self.locks_dir):
                # 0700 whatever the umask: licenses and credentials live here.
                folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            # mkstemp creates with O_EXCL|O_NOFOLLOW and 0600: a planted link is never opened.
            fd, probe = tempfile.mkstemp(dir=self.home, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
            # SQLite creates the -wal and -shm files with the database's mode, so creating
            # the database here (0600, never through a link) makes all three private.
            touch_private(self.database)
        except OSError as exc:
            raise StorageError(
                f"home folder {self.home} is not writable: {exc.strerror or exc}",
                hint=f"fix its permissions or point ${HOME_ENV} at a writable folder",
            ) from exc

    def rehome(self, raw: str | None) -> str | None:
        """A path read from the database, under this home even when the home was moved,
        restored elsewhere or spelt differently (a link, a relative path) when it was written.

        Only the store's own shapes move: ``.../store/<folder>/<file>`` and
        ``.../partial/<file>``; anything else (a damaged row naming /etc/passwd) is returned
        as it is, for own_file to refuse.
        """
        if not raw or "\0" in raw:
            return raw
        # The common case, fast (`state` reads every product's paths): a normalised path
        # already under this home is its own answer.
        store, partial = self._prefixes
        if raw.startswith(store):
            folder, sep, name = raw[len(store) :].partition(os.sep)
            if sep and _plain(folder) and _plain(name):
                return raw
        elif raw.startswith(partial) and _plain(raw[len(partial) :]) and not self._home_is_store:
            return raw
        parts = Path(raw).parts
        for anchor, depth in ((self.store_dir.name, 3), (self.partial_dir.name, 2)):
            if len(parts) > depth and parts[-depth] == anchor and ".." not in parts[-depth:]:
                return str(self.home.joinpath(*parts[-depth:]))
        return raw

    @cached_property
    def _home_is_store(self) -> bool:
        """A home named like the store folder: rehome reads its partial files otherwise."""
        return self.home.name == self.store_dir.name

    @cached_property
    def _prefixes(self) -> tuple[str, str]:
        """``<home>/store/`` and ``<home>/partial/`` as strings."""
        return os.path.join(self.store_dir, ""), os.path.join(self.partial_dir, "")

    def stored_folder(self, raw: str) -> str | None:
        """The folder of ``raw`` when stored_file takes it as it stands (``<home>/store/
        <folder>/<download id>.media``, ``.license`` or ``.hls``, spelt as this layout spells
        the home), else None."""
        store = self._prefixes[0]
        if not raw.startswith(store):
            return None
        match = _STORED_TAIL.fullmatch(raw, len(store))
        return None if match is None else match[1]

    def is_store_path(self, raw: str) -> bool:
        """Whether ``raw`` is ``<home>/store/<folder>/<file>``, spelt as this layout spells
        it (no ``..``, no empty or extra component): its own rehome."""
        store = self._prefixes[0]
        return raw.startswith(store) and _STORE_TAIL.fullmatch(raw, len(store)) is not None

    def stored_file(self, raw: str, product_key: str) -> str | None:
        """``own_file(raw, product_key, partial=False)`` in any folder of the store (the cheap
        check of `state` takes only the shape), as a string; fast for the common spelling."""
        store = self._prefixes[0]
        if raw.startswith(store) and _STORED_TAIL.fullmatch(raw, len(store)) is not None:
            return raw
        path = self.own_file(raw, product_key, partial=False, folder_ok=lambda folder: True)
        return None if path is None else str(path)

    def own_file(
        self,
        raw: str | os.PathLike[str] | None,
        product_key: str,
        *,
        partial: bool,
        download_id: str | None = None,
        folder_ok: Callable[[str], bool] | None = None,
    ) -> Path | None:
        """The file ``raw`` names when it is one the store may own for ``product_key``,
        else None.

        A path read from the database is trusted only this far: a damaged or hand-edited
        row could name offline.db, credentials.json or another product's media, all inside
        the home. The store's own files are ``store/<product_dir_name(key)>/<id>.media`` or
        ``.license`` (``partial`` False) and ``partial/<id>.media.part`` or
        ``.license.part`` (``partial`` True), where ``<id>`` is ``download_id`` when given.
        The comparison is lexical, on the normalised path (no ``..``, no extra folder);
        the home may be named as this layout names it or by its resolved form.

        ``folder_ok`` accepts another store folder as the product's: schema 3 renamed some
        products without moving their folders, named after their old names.
        """
        if raw is None or raw == "":
            return None
        text = os.fspath(raw)
        if "\0" in text or ".." in Path(text).parts:
            return None
        path = os.path.normpath(os.path.abspath(text))
        if partial:
            expected: tuple[str, ...] = (self.partial_dir.name,)
            pattern = _PARTIAL_FILE
        else:
            expected, pattern = (self.store_dir.name, product_dir_name(product_key)), _FINAL_FILE
        for home in self._home_spellings():
            if not path.startswith(home + os.sep):
                continue
            parts = Path(os.path.relpath(path, home)).parts
            match = pattern.fullmatch(parts[-1])
            if match is None or len(parts) != len(expected) + 1:
                return None
            if parts[:-1] != expected and not (
                not partial
                and parts[0] == self.store_dir.name
                and folder_ok is not None
                and folder_ok(parts[1])
            ):
                return None
            if download_id is not None and match["id"] != download_id:
                return None
            # Always the file under this layout's home, whichever way the row spelt it.
            return self.home.joinpath(*parts)
        return None

    def _home_spellings(self) -> Iterator[str]:
        """The home as this layout names it, then (only when asked) its resolved form."""
        named = os.path.normpath(os.path.abspath(self.home))
        yield named
        with suppress(OSError, RuntimeError):
            resolved = str(self.home.resolve())
            if resolved != named:
                yield resolved

    def is_inside(self, path: Path) -> bool:
        """True when ``path`` (not following a final symlink) lies inside the home folder."""
        try:
            parent = path.parent.resolve()
            home = self.home.resolve()
        except OSError:
            return False
        return parent == home or home in parent.parents


def safe_remove(layout: Layout, path: Path) -> int:
    """Remove one file (or an HLS product's folder) inside the home folder and return the
    bytes freed.

    A symbolic link is removed as a link (its target is never touched), and nothing outside
    the home folder is ever removed.
    """
    if not layout.is_inside(path):
        return 0
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    if stat.S_ISDIR(info.st_mode):
        if HLS_FOLDER.fullmatch(path.name):
            return safe_remove_tree(layout, path)
        return 0
    path.unlink(missing_ok=True)
    return 0 if stat.S_ISLNK(info.st_mode) else info.st_size


def tree_size(path: Path) -> int:
    """Bytes of a file, or of the files of a folder (links not followed)."""
    try:
        info = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def safe_remove_tree(layout: Layout, folder: Path) -> int:
    """Remove a folder inside the home, never following a symbolic link out of it."""
    if not layout.is_inside(folder) or not folder.exists():
        return 0
    if folder.is_symlink():
        folder.unlink()
        return 0
    freed = 0
    for root, dirs, files in os.walk(folder, topdown=False, followlinks=False):
        root_path = Path(root)
        for name in files:
            freed += safe_remove(layout, root_path / name)
        for name in dirs:
            sub = root_path / name
            if sub.is_symlink():
                sub.unlink()
            else:
                sub.rmdir()
    folder.rmdir()
    return freed


def fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (best effort: some file systems refuse)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
