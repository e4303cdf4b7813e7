"""The chaos soak: many randomized trials of faults, kill -9 and recovery, checked after each.

Most trials download one product (200-500 kB, sometimes with a license) from a loopback
NetSim; every third one downloads 3 to 6 products (100-300 kB) in one command with `-j 4`,
some as URLs and some as TYPE:ID from a playback-info source that gives a license too. Each
media gets random faults (cut, reset, stall, 503 with Retry-After 0, 500, ignore_range,
wrong_offset, short body, ETag change). The downloading process is killed with SIGKILL at
random points: a random byte count of partial data on disk, from "before anything" to "the
whole body is there, commit in flight" (one product), or to about what `-j 4` holds in flight,
or once some of the products are stored while others download or commit (several products).
Sometimes two processes start at once; then recovery is `resume` (with `-j 4` for several
products), a plain `offline`, or `cleanup` followed by `offline`. After each trial: every
stored file is byte-exact, `state` prints OFFLINED_AND_VALID for each product, no partial
data is left (nor ever any without a download entry), the store holds exactly the products'
files, and the database passes PRAGMA integrity_check.

SOAK_TRIALS (default 12, `make soak` runs 200) and SOAK_SEED (printed; give it to replay a run)
come from the environment. Run it alone with ``pytest -m slow -s tests/test_soak.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.netsim import Fault, NetSim, Resource, wait_for
from tests.procutil import (
    Child,
    Procs,
    download_state,
    downloads,
    integrity,
    offlined,
    partial_bytes,
    partial_files,
    store_files,
)

TRIALS = int(os.environ.get("SOAK_TRIALS", "12"))
RATE = 1_000_000  # bytes per second: slow enough that a kill lands mid-body
# Retries that take milliseconds, and a stall noticed in half a second.
FAST_RETRIES = {
    "OFFLINE_CLI_RETRIES": "8",
    "OFFLINE_CLI_BACKOFF_BASE": "0.02",
    "OFFLINE_CLI_BACKOFF_MAX": "0.1",
    "OFFLINE_CLI_RETRY_AFTER_MAX": "1",
    "OFFLINE_CLI_STALL_TIMEOUT": "0.5",
}
FAULT_KINDS = [
    "cut",
    "reset",
    "status503",
    "status500",
    "ignore_range",
    "wrong_offset",
    "short",
    "change",
    "stall",
]


# Every MULTI_EVERY-th trial downloads several products in one command with -j MULTI_JOBS.
MULTI_EVERY = 3
MULTI_JOBS = 4


@dataclass
class Product:
    """One product of a trial: a URL, or TYPE:ID from the playback-info source with a license."""

    key: str
    name: str  # what goes on the command line
    media_path: str
    size: int
    resource: Resource
    license_path: str | None = None
    license_body: bytes | None = None
    faults: list[str] = field(default_factory=list)


@dataclass
class Trial:
    index: int
    sizes: list[int]  # one per product
    licenses: list[bool]  # one per product
    kills: list[tuple[str, int]]  # ("bytes", n): n bytes of partial data on disk; ("stored", k)
    twins: bool
    recovery: str
    jobs: int | None = None  # None: one product, the command as before; else -j jobs
    faults: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        kills = [f"{n}" if kind == "bytes" else f"{kind}:{n}" for kind, n in self.kills]
        if self.jobs is None:
            faults = self.faults[0] if self.faults else []
            shape = f"size={self.sizes[0]} license={self.licenses[0]} faults={faults}"
        else:
            shape = (
                f"products={len(self.sizes)} jobs={self.jobs} sizes={self.sizes} "
                f"licenses={self.licenses} faults={self.faults}"
            )
        return (
            f"trial {self.index}: {shape} kills={kills} twins={self.twins} "
            f"recovery={self.recovery} {' '.join(self.notes)}"
        )


def _faults(rng: random.Random, size: int) -> tuple[list[str], list[Fault]]:
    names: list[str] = []
    faults: list[Fault] = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        kind = rng.choice(FAULT_KINDS)
        at = rng.randint(1, size - 1)
        if kind in ("cut", "reset"):
            faults.append(Fault(kind, at=at))
        elif kind == "stall":
            faults.append(Fault("stall", at=at, stall_s=1.0))
        elif kind == "status503":
            faults.append(Fault("status", status=503, headers={"Retry-After": "0"}))
        elif kind == "status500":
            faults.append(Fault("status", status=500))
        elif kind == "change":
            faults.append(Fault("change", body=rng.randbytes(rng.randint(200_000, 500_000))))
        else:
            faults.append(Fault(kind))
        names.append(kind if kind not in ("cut", "reset", "stall") else f"{kind}@{at}")
    return names, faults


def _kill_points(rng: random.Random, size: int) -> list[tuple[str, int]]:
    """Kills of a one-product trial, at byte counts of its partial data."""
    points = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2])):
        roll = rng.random()
        if roll < 0.1:
            points.append(0)  # at once: while the process starts or creates the database
        elif roll < 0.25:
            points.append(size)  # whole body on disk: verify and commit are in flight
        else:
            points.append(rng.randint(1, size - 1))
    return [("bytes", n) for n in points]


def _multi_kill_points(rng: random.Random, sizes: list[int]) -> list[tuple[str, int]]:
    """Kills of a several-products trial: at a byte count of all their partial data (up to
    about what -j has in flight at once), or once some products are stored while the others
    are still downloading (or committing)."""
    in_flight = sum(sorted(sizes)[:MULTI_JOBS])
    points: list[tuple[str, int]] = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2])):
        roll = rng.random()
        if roll < 0.1:
            points.append(("bytes", 0))
        elif roll < 0.3:
            points.append(("stored", rng.randint(1, len(sizes) - 1)))
        else:
            points.append(("bytes", rng.randint(1, in_flight // 2)))
    return points


def _stored_count(home: Path) -> int:
    """Products stored so far (0 while there is no database or no schema yet: a process
    killed while it created them leaves it so until the next one runs)."""
    path = home / "offline.db"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM offlined_entries").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _kill_at(child: Child, home: Path, point: tuple[str, int]) -> bool:
    """SIGKILL ``child`` once ``point`` is reached; False when it ended first."""
    kind, n = point
    if kind == "stored":
        reached = lambda: _stored_count(home) >= n  # noqa: E731
    else:
        reached = lambda: partial_bytes(home) >= n  # noqa: E731
    wait_for(lambda: reached() or not child.running(), timeout=30)
    if not child.running():
        return False
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    return True


def _products(trial: Trial, rng: random.Random, sim: NetSim) -> tuple[list[Product], list[str]]:
    """The trial's products on the NetSim, and the arguments of `offline` that fetch them."""
    if trial.jobs is None:
        # one product, a URL, named with --id when it has a license
        size = trial.sizes[0]
        media_path, license_path = f"/t{trial.index}/media", f"/t{trial.index}/license"
        body = rng.randbytes(size)
        names, faults = _faults(rng, size)
        resource = sim.add(media_path, Resource(body, rate=RATE, faults=faults))
        license_body = b"LICENSE:" + rng.randbytes(rng.randint(100, 5000))
        url = sim.url(media_path)
        product = Product(url, url, media_path, size, resource, faults=names)
        args = [url]
        if trial.licenses[0]:
            sim.add(license_path, Resource(license_body))
            product.key = f"track:{trial.index}"
            product.license_path, product.license_body = license_path, license_body
            args += ["--id", product.key, "--license-url", sim.url(license_path)]
        return [product], args
    # several products in one command: URLs, and TYPE:ID names whose playback info (from
    # the source) gives a media URL and a license URL
    products = []
    for k, (size, licensed) in enumerate(zip(trial.sizes, trial.licenses, strict=True)):
        base = f"/t{trial.index}/p{k}"
        body = rng.randbytes(size)
        names, faults = _faults(rng, size)
        resource = sim.add(f"{base}/media", Resource(body, rate=RATE, faults=faults))
        url = sim.url(f"{base}/media")
        product = Product(url, url, f"{base}/media", size, resource, faults=names)
        if licensed:
            product_id = str(trial.index * 100 + k)
            product.key = product.name = f"track:{product_id}"
            product.license_path = f"{base}/license"
            product.license_body = b"LICENSE:" + rng.randbytes(rng.randint(100, 5000))
            sim.add(product.license_path, Resource(product.license_body))
            info = {
                "url": url,
                "manifestMimeType": "audio/flac",
                "licenseUrl": sim.url(product.license_path),
            }
            sim.add(
                f"/t{trial.index}/info/track/{product_id}",
                Resource(json.dumps(info).encode()),
            )
        products.append(product)
    args = ["-j", str(trial.jobs)]
    if any(trial.licenses):
        args += ["--source", sim.url(f"/t{trial.index}/info/{{type}}/{{id}}")]
    return products, args + [p.name for p in products]


def _run_trial(trial: Trial, rng: random.Random, sim: NetSim, workdir: Path) -> bool:
    """One trial; raises AssertionError with the reason when a check fails.

    Returns True when every stored file is byte-exact.
    """
    home = workdir / "home"
    procs = Procs(home, workdir / "procs", extra_env=FAST_RETRIES)
    try:
        products, args = _products(trial, rng, sim)
        trial.faults = [p.faults for p in products]
        keys = [p.key for p in products]
        jobs_args = [] if trial.jobs is None else ["-j", str(trial.jobs)]

        # the download, killed at random points (each kill hits the process that runs next)
        pending_kills = list(trial.kills)
        children = [procs.spawn("offline", *args)]
        if trial.twins:
            children.append(procs.spawn("offline", *args))
        killed: set[int] = set()
        while pending_kills:
            point = pending_kills.pop(0)
            live = [c for c in children if c.running()]
            if not live:
                # the download ended before this kill: the kill hits a `resume` instead
                live = [procs.spawn("resume", *jobs_args)]
                children += live
            victim = rng.choice(live)
            if _kill_at(victim, home, point):
                killed.add(victim.pid)
                trial.notes.append(f"killed@{partial_bytes(home)}/{_stored_count(home)}")
        for child in children:
            code = child.wait(60)
            if child.pid not in killed:
                assert code == 0, f"exit {code}: {child.stderr()[-800:]}"
            assert "Traceback" not in child.stderr(), child.stderr()[-2000:]

        # recovery
        recorded = {d["id"] for key in keys for d in downloads(home, key)}
        stray = [p for p in partial_files(home) if p.name[:32] not in recorded]
        assert stray == [], f"partial data without a download entry: {stray}"
        if any(offlined(home, key) is None and not downloads(home, key) for key in keys):
            # killed before a download was even recorded: nothing to resume for it, no bytes
            # anywhere; only a new `offline` can fetch it
            trial.notes.append("nothing-recorded")
            if trial.jobs is not None and trial.recovery == "resume" and len(keys) > 1:
                # the others (started, or queued behind -j) still resume first, in parallel
                resumed = procs.run("resume", *jobs_args)
                assert resumed.returncode == 0, (
                    f"resume exit {resumed.returncode}: {resumed.stderr}"
                )
                assert "Traceback" not in resumed.stderr, resumed.stderr
                trial.notes.append("resumed-then-offline")
            trial.recovery = "offline"
        if trial.recovery == "cleanup":
            cleaned = procs.run("cleanup", "--older-than", "0")
            assert cleaned.returncode == 0, cleaned.stderr
            unfinished = {
                d["id"]
                for key in keys
                if download_state(home, key) != "COMPLETED"
                for d in downloads(home, key)
            }
            left = [p for p in partial_files(home) if p.name[:32] in unfinished]
            assert left == [], f"cleanup left partial data: {left}"
            final = procs.run("offline", *args)
        elif trial.recovery == "offline":
            final = procs.run("offline", *args)
        else:
            final = procs.run("resume", *jobs_args)
        assert final.returncode == 0, f"{trial.recovery} exit {final.returncode}: {final.stderr}"
        assert "Traceback" not in final.stderr, final.stderr

        # the checks
        exact = True
        expected_files: set[str] = set()
        for product in products:
            expected = product.resource.body  # a "change" fault may have replaced it
            row = offlined(home, product.key)
            assert row is not None, (
                f"{product.key} not offlined; download state {download_state(home, product.key)}"
            )
            stored = Path(row["media_path"]).read_bytes()
            exact = exact and stored == expected
            assert stored == expected, (
                f"{product.key}: stored media differs "
                f"({len(stored)} bytes, expected {len(expected)})"
            )
            if product.license_body is not None:
                license_bytes = Path(row["license_path"]).read_bytes()
                assert license_bytes == product.license_body, f"{product.key}: license differs"
            assert download_state(home, product.key) == "COMPLETED", product.key
            expected_files |= {p for p in (row["media_path"], row["license_path"]) if p}
        state = procs.run("state", *keys)
        assert state.stdout.split() == ["OFFLINED_AND_VALID"] * len(keys), (
            state.stdout + state.stderr
        )
        assert partial_files(home) == [], f"partial data left: {partial_files(home)}"
        assert store_files(home) == expected_files
        assert integrity(home) == "ok"
        if not any(trial.faults) and not trial.kills:
            sim.wait_idle()
            for product in products:
                sent = sim.bytes_sent(product.media_path)
                assert sent == product.size, f"{product.key}: the same bytes were fetched twice"
        return exact
    finally:
        procs.close()


def _trial(index: int, rng: random.Random) -> Trial:
    if index % MULTI_EVERY == MULTI_EVERY - 1:
        # several products at once: smaller ones, so a trial takes about as long
        count = rng.randint(3, 6)
        sizes = [rng.randint(100_000, 300_000) for _ in range(count)]
        return Trial(
            index=index,
            sizes=sizes,
            licenses=[rng.random() < 0.3 for _ in sizes],
            kills=_multi_kill_points(rng, sizes),
            twins=rng.random() < 0.2,
            recovery=rng.choice(["resume", "resume", "offline", "cleanup"]),
            jobs=MULTI_JOBS,
        )
    size = rng.randint(200_000, 500_000)
    return Trial(
        index=index,
        sizes=[size],
        licenses=[rng.random() < 0.3],
        kills=_kill_points(rng, size),
        twins=rng.random() < 0.2,
        recovery=rng.choice(["resume", "resume", "offline", "cleanup"]),
    )


@pytest.mark.slow
def test_chaos_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("SOAK_SEED", str(time.time_ns() % 2**32)))
    print(f"\nchaos soak: SOAK_SEED={seed} SOAK_TRIALS={TRIALS}")
    rng = random.Random(seed)
    sim = NetSim().start()
    exact = 0
    failures: list[str] = []
    multi = 0
    started = time.monotonic()
    try:
        for index in range(TRIALS):
            trial_rng = random.Random(rng.getrandbits(64))
            trial = _trial(index, trial_rng)
            multi += trial.jobs is not None
            try:
                if _run_trial(trial, trial_rng, sim, tmp_path / f"trial{index}"):
                    exact += 1
                print(f"ok {trial.describe()}")
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(exc)).strip()
                failures.append(f"{trial.describe()}: {detail}")
                print(f"FAILED {failures[-1]}")
    finally:
        sim.stop()
    elapsed = time.monotonic() - started
    print(f"chaos soak took {elapsed:.1f}s (seed {seed})")
    print(
        f"{TRIALS} trials ({multi} of several products with -j {MULTI_JOBS}), "
        f"{exact} byte-exact, {len(failures)} failures"
    )
    assert not failures, "\n".join(failures)
