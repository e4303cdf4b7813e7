"""Helpers for tests that run offline-cli as real processes: spawn, signal, crash at a named
point of a download, inspect the store.

Every child is tracked and killed in ``Procs.close()``; the store is read with plain sqlite3
(never through the engine), so inspecting it cannot change it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offline_cli import MediaProduct

CLI = [sys.executable, "-m", "offline_cli"]
# The checkout, so a child can import this module (``kill9_child``) whatever its cwd.
ROOT = Path(__file__).resolve().parents[1]
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
        """``offline-cli ARGS`` on this home."""
        return self._start([*CLI, *args], self.env())

    def spawn_crash(
        self, product: MediaProduct, at: CrashAt, settings: dict[str, Any] | None = None
    ) -> Child:
        """A child that downloads ``product`` on this home through ``OfflineEngine`` with a
        fault hook that SIGKILLs the child at ``at`` (see ``kill9_child``); ``settings``
        (source, jobs, ...) for its engine."""
        spec = {
            "home": str(self.home),
            "at": asdict(at),
            "settings": settings or {},
            "product": {
                "type": product.product_type.value,
                "id": product.product_id,
                "url": product.url,
                "license_url": product.license_url,
            },
        }
        code = "import sys; from tests.procutil import kill9_child; kill9_child(sys.argv[1])"
        env = self.env()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return self._start([sys.executable, "-c", code, json.dumps(spec)], env)

    def _start(self, argv: list[str], env: dict[str, str]) -> Child:
        self._count += 1
        out_path = self.workdir / f"proc{self._count}.out"
        err_path = self.workdir / f"proc{self._count}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            popen = subprocess.Popen(
                argv,
                env=env,
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


# -- crashing a download at a named point (OfflineEngine's fault_hook) -----------------------


@dataclass(frozen=True)
class CrashAt:
    """A point of a download where a fault hook stops it (see offline_cli.runtime.FaultHook),
    and what must hold there: ``part`` ("license" or "media") is the part at hand, ``done``
    at least that many bytes of it are written (a "progress" point), ``etag`` the validators
    just saved name that version (a "checkpoint" point)."""

    point: str
    part: str | None = None
    done: int | None = None
    etag: str | None = None

    def reached(self, point: str, info: dict[str, Any]) -> bool:
        if point != self.point:
            return False
        if self.part is not None and info.get("part") != self.part:
            return False
        if self.done is not None and int(info.get("done", -1)) < self.done:
            return False
        return self.etag is None or info.get("etag") == self.etag


def part_bytes(home: Path, part: str | None) -> int:
    """Bytes on disk of the partial files of ``part`` ("media", "license"; None: all)."""
    if part is None:
        return partial_bytes(home)
    total = 0
    for path in partial_files(home):
        if path.name.endswith(f".{part}.part"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
    return total


def kill9_child(spec_json: str) -> None:
    """The body of a ``Procs.spawn_crash`` child: download one product with a fault hook
    that sends this process SIGKILL at the point, so no handler, ``finally`` or flush runs.

    A killed process loses what its file buffer held: at a "progress" point it dies only
    once ``done`` bytes are on disk, so the test knows how many survive. A download that
    ends without reaching the point exits 1, saying so.
    """
    from offline_cli import MediaProduct, OfflineEngine, ProductType
    from offline_cli.config import Settings

    spec = json.loads(spec_json)
    home = Path(spec["home"])
    at = CrashAt(**spec["at"])
    item = spec["product"]
    product = MediaProduct(
        ProductType(item["type"]), item["id"], url=item["url"], license_url=item["license_url"]
    )

    def die_there(point: str, **info: Any) -> None:
        if at.reached(point, info) and (at.done is None or part_bytes(home, at.part) >= at.done):
            os.kill(os.getpid(), signal.SIGKILL)

    settings = Settings(**spec["settings"]) if spec.get("settings") else None
    with OfflineEngine(home, fault_hook=die_there, settings=settings) as engine:
        engine.offline(product)
    sys.exit(f"the download of {product.key} ended without reaching {at}")
