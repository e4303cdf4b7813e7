"""The credential vault: full URLs whose credentials the database and logs never see."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from offline_cli.paths import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, open_private, touch_private
from offline_cli.redaction import REDACTED, redact_url


def lacks_credentials(url: str | None) -> bool:
    """True when ``url`` holds the redaction placeholder where a credential goes.

    Such a URL is the redacted name of a product whose full URL the vault has forgotten (or
    never had): requesting it would send the placeholder instead of the secret. The
    placeholder elsewhere (``/REDACTED.pdf``) is just a name, since redaction keeps it.
    """
    if url is None or REDACTED not in url:
        return False
    other = url.replace(REDACTED, "x")
    return redact_url(other) != other


class CredentialVault:
    """Maps each redacted URL to the full one, in a file only the owner can read (0600).

    The database stores redacted URLs; the engine asks the vault for the real one when it
    needs to fetch again (resume, repair).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, str] | None = None
        # Several processes seal and forget at once: each read-modify-write holds this lock,
        # so no process drops another's entry.
        self._lock_path = Path(f"{path}.lock")
        self._lock = FileLock(self._lock_path, mode=PRIVATE_FILE_MODE, is_singleton=False)

    def _locked(self) -> FileLock:
        """The vault's lock, its file first made ours (0600, never through a planted link)."""
        touch_private(self._lock_path)
        return self._lock

    def _load(self, fresh: bool = False) -> dict[str, str]:
        """The mapping, read once per vault (``fresh`` re-reads: another process may add)."""
        if self._cache is None or fresh:
            self._cache = self._read()
        return self._cache

    def _read(self) -> dict[str, str]:
        try:
            # Never through a link: a planted one is refused (StorageError), not read.
            with os.fdopen(open_private(self.path, os.O_RDONLY, create=False), "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        # mkstemp opens O_EXCL|O_NOFOLLOW, and the rename replaces a link at the final name
        # (never writes through it).
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".credentials-")
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
            self._cache = data
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def seal(self, url: str | None) -> str | None:
        """Remember ``url`` when it carries credentials; return its redacted form."""
        if url is None:
            return None
        redacted = redact_url(url)
        if redacted != url:
            # Always under the lock against a fresh read: another process may have
            # forgotten this URL since this vault last looked.
            with self._locked():
                data = dict(self._load(fresh=True))
                if data.get(redacted) != url:
                    data[redacted] = url
                    self._save(data)
        return redacted

    def rename_by_current_rule(self, stored: Iterable[str]) -> dict[str, str]:
        """The new name of each stored URL whose redacted form today's rule writes otherwise.

        ``stored`` are URLs as an older release wrote them to the database, redacted by its
        rule, most wanted first. Each is turned back into the full URL through the vault
        when the vault has it (else taken as it is) and redacted again by today's rule; the
        vault learns the full URL under each new name. When two different full URLs would
        get one new name, the first in ``stored`` takes it and the others keep their old
        names, so no product is ever fetched from another's URL. Returns old -> new for the
        names that change; the caller forgets the old ones once the database drops them.
        """
        urls = list(dict.fromkeys(stored))
        renamed, additions = self._renaming_plan(urls, self._load(fresh=True))
        if additions:
            with self._lock:  # another process may seal or forget meanwhile
                data = dict(self._load(fresh=True))
                renamed, additions = self._renaming_plan(urls, data)
                data.update(additions)
                self._save(data)
        return renamed

    @staticmethod
    def _renaming_plan(
        urls: list[str], data: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        derived = {old: (data.get(old, old), redact_url(data.get(old, old))) for old in urls}
        # Who owns each new name, first: vault entries already named by today's rule, and
        # stored names that today's rule keeps as they are.
        owner = {name: full for name, full in data.items() if redact_url(full) == name}
        for old, (full, new) in derived.items():
            if new == old:
                owner.setdefault(new, full)
        renamed: dict[str, str] = {}
        additions: dict[str, str] = {}
        for old, (full, new) in derived.items():
            if owner.setdefault(new, full) != full:
                continue  # another URL owns the name (e.g. ``?code=1`` before ``?code=2``)
            if new != old:
                renamed[old] = new
            if new != full and data.get(new) != full:
                additions[new] = full
        return renamed, additions

    def reveal(self, url: str | None) -> str | None:
        """The full URL for a redacted one (unchanged when it had no credentials).

        A redacted URL the vault no longer knows comes back as it is: check it with
        ``lacks_credentials`` before requesting it.
        """
        if url is None:
            return None
        known = self._load()
        if url not in known and REDACTED in url:
            known = self._load(fresh=True)
        return known.get(url, url)

    def forget(self, urls: list[str | None]) -> None:
        if not self.path.exists():
            return
        with self._locked():
            data = dict(self._load(fresh=True))
            if any(u in data for u in urls if u):
                for u in urls:
                    if u:
                        data.pop(u, None)
                self._save(data)
