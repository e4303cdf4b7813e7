"""The home folder and the layout of everything stored under it."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from offline_cli.errors import StorageError

APP_NAME = "offline-cli"
HOME_ENV = "OFFLINE_CLI_HOME"


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


@dataclass(frozen=True)
class Layout:
    """Where things live under one home folder. Nothing is ever written outside it."""

    home: Path

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

    def lock_path(self, product_key: str) -> Path:
        return self.locks_dir / f"{product_dir_name(product_key)}.lock"

    def ensure(self) -> None:
        """Create the folders, or raise StorageError when the home is not writable."""
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
        try:
            for folder in (self.home, self.store_dir, self.partial_dir, self.locks_dir):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.home / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"home folder {self.home} is not writable: {exc.strerror or exc}",
                hint=f"fix its permissions or point ${HOME_ENV} at a writable folder",
            ) from exc

    def is_inside(self, path: Path) -> bool:
        """True when ``path`` (not following a final symlink) lies inside the home folder."""
        try:
            parent = path.parent.resolve()
            home = self.home.resolve()
        except OSError:
            return False
        return parent == home or home in parent.parents


def safe_remove(layout: Layout, path: Path) -> int:
    """Remove one file inside the home folder and return the bytes freed.

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
        return 0
    path.unlink(missing_ok=True)
    return 0 if stat.S_ISLNK(info.st_mode) else info.st_size


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
