"""Helpers for tests that run offline-cli as real processes: spawn, signal, inspect the store.

Every child is tracked and killed in ``Procs.close()``; the store is read with plain sqlite3
(never through the engine), so inspecting it cannot change it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "offline_cli"]
# A bound on any one command; a healthy one takes a second or two.
COMMAND_TIMEOUT_S = 60.0


@dataclass
class Child:
    """A running offline-cli process whose stdout and stderr go to files."""

    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def wait(self, timeout: float = COMMAND_TIMEOUT_S) -> int:
        return self.popen.wait(timeout=timeout)


class Procs:
    """Starts offline-cli processes on one home folder and kills any left running."""

    def __init__(self, home: Path, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.extra_env = dict(extra_env or {})
        self._count = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
        env.update({"OFFLINE_CLI_HOME": str(self.home), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def spawn(self, *args: str) -> Child:
        self._count += 1
        out_path = self.workdir / f"proc{self._count}.out"
        err_path = self.workdir / f"proc{self._count}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            popen = subprocess.Popen(
                [*CLI, *args],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        child = Child(popen, out_path, err_path)
        self.children.append(child)
        return child

    def run(
        self, *args: str, timeout: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        child = self.spawn(*args)
        try:
            code = child.wait(timeout)
        finally:
            if child.running():
                child.popen.kill()
                child.popen.wait(timeout=10)
        return subprocess.CompletedProcess(child.popen.args, code, child.stdout(), child.stderr())

    def close(self) -> None:
        for child in self.children:
            if child.running():
                with contextlib.suppress(OSError):
                    child.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=10)


# -- looking inside the home folder -----------------------------------------------------------


def partial_bytes(home: Path) -> int:
    """Bytes of partial data on disk (media and license)."""
    total = 0
    folder = home / "partial"
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
    return total


def partial_files(home: Path) -> list[Path]:
    folder = home / "partial"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def store_files(home: Path) -> set[str]:
    folder = home / "store"
    return {str(p) for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def damage(home: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Change the store's database by hand, as a damaged or hand-edited one would be."""
    conn = sqlite3.connect(home / "offline.db")
    try:
        conn.execute(statement, params)
        conn.commit()
    finally:
        conn.close()


def query(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a read-only query on the store's database ([] when it does not exist yet)."""
    path = home / "offline.db"
    if not path.exists():
        return []
    deadline = time.monotonic() + 10
    while True:
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        except sqlite3.OperationalError:
            # "no such table" while another process is still creating the schema
            if time.monotonic() > deadline:
                raise
        finally:
            conn.close()
        time.sleep(0.02)


def downloads(home: Path, key: str) -> list[dict[str, Any]]:
    return query(
        home,
        "SELECT * FROM download_entries WHERE product_key = ? ORDER BY created_at, rowid",
        (key,),
    )


def download_state(home: Path, key: str) -> str | None:
    rows = downloads(home, key)
    return str(rows[-1]["state"]) if rows else None


def offlined(home: Path, key: str) -> dict[str, Any] | None:
    rows = query(home, "SELECT * FROM offlined_entries WHERE product_key = ?", (key,))
    return rows[0] if rows else None


def stored_media(home: Path, key: str) -> bytes | None:
    row = offlined(home, key)
    return Path(row["media_path"]).read_bytes() if row else None


def integrity(home: Path) -> str:
    rows = query(home, "PRAGMA integrity_check")
    return str(next(iter(rows[0].values())))
