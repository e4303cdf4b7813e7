"""The chaos soak: many randomized trials of faults, kill -9 and recovery, checked after each.

Each trial downloads one product (200-500 kB, sometimes with a license) from a loopback NetSim
with random faults (cut, reset, stall, 503 with Retry-After 0, 500, ignore_range, wrong_offset,
short body, ETag change), kills the downloading process with SIGKILL at random points (a random
byte count on disk, from "before anything" to "the whole body is there, commit in flight"),
sometimes starts two processes at once, then recovers with `resume`, a plain `offline`, or
`cleanup` followed by `offline`. After each trial: the stored file is byte-exact, `state` prints
OFFLINED_AND_VALID, no partial data is left, and the database passes PRAGMA integrity_check.

SOAK_TRIALS (default 12, `make soak` runs 200) and SOAK_SEED (printed; give it to replay a run)
come from the environment. Run it alone with ``pytest -m slow -s tests/test_soak.py``.
"""

from __future__ import annotations

import os
import random
import signal
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


@dataclass
class Trial:
    index: int
    size: int
    with_license: bool
    faults: list[str]
    kills: list[int]  # byte counts on disk at which the downloader is killed
    twins: bool
    recovery: str
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"trial {self.index}: size={self.size} license={self.with_license} "
            f"faults={self.faults} kills={self.kills} twins={self.twins} "
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


def _kill_points(rng: random.Random, size: int) -> list[int]:
    points = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2])):
        roll = rng.random()
        if roll < 0.1:
            points.append(0)  # at once: while the process starts or creates the database
        elif roll < 0.25:
            points.append(size)  # whole body on disk: verify and commit are in flight
        else:
            points.append(rng.randint(1, size - 1))
    return points


def _kill_at(child: Child, home: Path, at_bytes: int) -> bool:
    """SIGKILL ``child`` once ``at_bytes`` are on disk; False when it ended first."""
    wait_for(lambda: partial_bytes(home) >= at_bytes or not child.running(), timeout=30)
    if not child.running():
        return False
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    return True


def _run_trial(trial: Trial, rng: random.Random, sim: NetSim, workdir: Path) -> bool:
    """One trial; raises AssertionError with the reason when a check fails.

    Returns True when the stored file is byte-exact.
    """
    home = workdir / "home"
    procs = Procs(home, workdir / "procs", extra_env=FAST_RETRIES)
    try:
        media_path, license_path = f"/t{trial.index}/media", f"/t{trial.index}/license"
        body = rng.randbytes(trial.size)
        names, faults = _faults(rng, trial.size)
        trial.faults = names
        resource = sim.add(media_path, Resource(body, rate=RATE, faults=faults))
        license_body = b"LICENSE:" + rng.randbytes(rng.randint(100, 5000))
        args = [sim.url(media_path)]
        key = sim.url(media_path)
        if trial.with_license:
            sim.add(license_path, Resource(license_body))
            key = f"track:{trial.index}"
            args += ["--id", key, "--license-url", sim.url(license_path)]

        # the download, killed at random points (each kill hits the process that runs next)
        pending_kills = list(trial.kills)
        children = [procs.spawn("offline", *args)]
        if trial.twins:
            children.append(procs.spawn("offline", *args))
        killed: set[int] = set()
        while pending_kills:
            at_bytes = pending_kills.pop(0)
            live = [c for c in children if c.running()]
            if not live:
                # the download ended before this kill: the kill hits a `resume` instead
                live = [procs.spawn("resume")]
                children += live
            victim = rng.choice(live)
            if _kill_at(victim, home, at_bytes):
                killed.add(victim.pid)
                trial.notes.append(f"killed@{partial_bytes(home)}")
        for child in children:
            code = child.wait(60)
            if child.pid not in killed:
                assert code == 0, f"exit {code}: {child.stderr()[-800:]}"
            assert "Traceback" not in child.stderr(), child.stderr()[-2000:]

        # recovery
        if offlined(home, key) is None and not downloads(home, key):
            # killed before the download was even recorded: nothing to resume, no bytes
            # anywhere; only a new `offline` can fetch it
            assert partial_files(home) == [], "partial data without a download entry"
            trial.notes.append("nothing-recorded")
            trial.recovery = "offline"
        if trial.recovery == "cleanup":
            cleaned = procs.run("cleanup", "--older-than", "0")
            assert cleaned.returncode == 0, cleaned.stderr
            if download_state(home, key) != "COMPLETED":
                assert partial_files(home) == [], "cleanup left partial data"
            final = procs.run("offline", *args)
        elif trial.recovery == "offline":
            final = procs.run("offline", *args)
        else:
            final = procs.run("resume")
        assert final.returncode == 0, f"{trial.recovery} exit {final.returncode}: {final.stderr}"
        assert "Traceback" not in final.stderr, final.stderr

        # the checks
        expected = resource.body  # a "change" fault may have replaced it
        row = offlined(home, key)
        assert row is not None, f"not offlined; download state {download_state(home, key)}"
        stored = Path(row["media_path"]).read_bytes()
        exact = stored == expected
        assert exact, f"stored media differs ({len(stored)} bytes, expected {len(expected)})"
        if trial.with_license:
            assert Path(row["license_path"]).read_bytes() == license_body, "license differs"
        state = procs.run("state", key)
        assert state.stdout.strip() == "OFFLINED_AND_VALID", state.stdout + state.stderr
        assert partial_files(home) == [], f"partial data left: {partial_files(home)}"
        assert store_files(home) == {p for p in (row["media_path"], row["license_path"]) if p}
        assert download_state(home, key) == "COMPLETED"
        assert integrity(home) == "ok"
        if not trial.faults and not trial.kills:
            sim.wait_idle()
            assert sim.bytes_sent(media_path) == len(body), "the same bytes were fetched twice"
        return exact
    finally:
        procs.close()


@pytest.mark.slow
def test_chaos_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("SOAK_SEED", str(time.time_ns() % 2**32)))
    print(f"\nchaos soak: SOAK_SEED={seed} SOAK_TRIALS={TRIALS}")
    rng = random.Random(seed)
    sim = NetSim().start()
    exact = 0
    failures: list[str] = []
    started = time.monotonic()
    try:
        for index in range(TRIALS):
            trial_rng = random.Random(rng.getrandbits(64))
            size = trial_rng.randint(200_000, 500_000)
            trial = Trial(
                index=index,
                size=size,
                with_license=trial_rng.random() < 0.3,
                faults=[],
                kills=_kill_points(trial_rng, size),
                twins=trial_rng.random() < 0.2,
                recovery=trial_rng.choice(["resume", "resume", "offline", "cleanup"]),
            )
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
    print(f"{TRIALS} trials, {exact} byte-exact, {len(failures)} failures")
    assert not failures, "\n".join(failures)
