"""`make demo` (docs/demo.py): run piped, as CI runs it, it shows every step, ends well and
leaves nothing behind — no temporary folder, no host listening, no offline-cli running —
also when it is interrupted half-way."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "docs" / "demo.py"
# A bound against a hung demo only (it takes some 20 s); never a claim about its speed.
HANG_S = 300.0


def _env(tmp: Path) -> dict[str, str]:
    """The demo's temporary folder lands in ``tmp``, so what it leaves there is seen."""
    tmp.mkdir()
    return {**os.environ, "TMPDIR": str(tmp)}


def _ports(transcript: str) -> set[int]:
    return {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", transcript)}


def _homes(transcript: str) -> list[str]:
    return re.findall(r"^\$ export OFFLINE_CLI_HOME=(\S+)$", transcript, re.MULTILINE)


def _processes_using(home: str) -> list[int]:
    """Processes of this user whose environment names ``home`` (an offline-cli the demo
    started and did not end)."""
    found = []
    needle = f"OFFLINE_CLI_HOME={home}\0".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or another user's
        if needle in environ + b"\0":
            found.append(int(entry.name))
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _assert_nothing_left(tmp: Path, transcript: str) -> None:
    assert list(tmp.iterdir()) == [], "the demo left its temporary folder"
    [home] = _homes(transcript)
    assert not Path(home).exists()
    assert _processes_using(home) == [], "an offline-cli of the demo is still running"
    ports = _ports(transcript)
    assert ports, transcript
    assert [p for p in ports if _listening(p)] == [], "a demo host still listens"


def test_the_demo_run_piped_shows_every_step_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    done = subprocess.run(
        [sys.executable, str(DEMO)],
        env=_env(tmp),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=HANG_S,
        check=False,
    )
    transcript = done.stdout.decode(errors="replace")
    assert done.returncode == 0, transcript
    lines = transcript.splitlines()
    # Each step, echoed as a shell transcript, in order.
    steps = [
        "$ export OFFLINE_CLI_HOME=",
        "$ offline-cli --version",
        "$ offline-cli offline -j 4 track:1 track:2 video:3 file:4",
        "$ offline-cli offline video:5",
        "$ kill -9 ",
        "$ offline-cli state video:5",
        "$ offline-cli resume",
        "$ offline-cli path track:1",
        "$ offline-cli export track:1 ",
        "$ offline-cli state",
        "$ offline-cli health",
    ]
    at = 0
    for step in steps:
        later = [i for i, line in enumerate(lines) if i >= at and line.startswith(step)]
        assert later, f"no {step!r} after line {at}:\n{transcript}"
        at = later[0] + 1
    # The faults happened and offline-cli's own piped lines show what it did about them.
    assert "server: track-1.flac: cut the connection" in transcript
    assert "server: track-2.flac: answered 503 Service Unavailable, Retry-After: 1" in transcript
    assert re.search(r"host 127\.0\.0\.1:\d+ went down", transcript)
    assert re.search(r"^track:1: retry 1 in ", transcript, re.MULTILINE)
    assert re.search(r"^track:2: retry 1 in .*503", transcript, re.MULTILINE)
    assert re.search(r"^video:3: paused, waiting for network", transcript, re.MULTILINE)
    assert re.search(r"^video:3: network is back, continuing", transcript, re.MULTILINE)
    assert "resume continued video:5 from byte " in transcript
    assert "track-1.flac is byte for byte what the server holds" in transcript
    for product in ("track:1", "track:2", "video:3", "file:4", "video:5"):
        assert f"{product}\tOFFLINED_AND_VALID" in transcript
        assert re.search(rf"^{product}: done \(", transcript, re.MULTILINE)
    assert "downloads succeeded" in transcript  # the health table
    # Piped: plain lines, no progress bars or colours.
    assert "\x1b" not in transcript
    assert "Traceback" not in transcript
    _assert_nothing_left(tmp, transcript)


def _read_lines(stream: object, into: queue.Queue[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        into.put(raw.decode(errors="replace"))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_demo_cleans_up(tmp_path: Path, signum: int, code: int) -> None:
    """Ctrl-C (or SIGTERM) while the batch downloads: the demo alone gets the signal (as
    from `kill`, not the terminal's whole process group) and still ends its offline-cli."""
    tmp = tmp_path / "tmp"
    demo = subprocess.Popen(
        [sys.executable, str(DEMO)],
        env=_env(tmp),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(demo.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + HANG_S
    try:
        # Signalled once a download of the batch has started (offline-cli's own line).
        while not any(line.startswith("track:1: downloading") for line in seen):
            assert demo.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=1.0))
            except queue.Empty:
                continue
        os.kill(demo.pid, signum)
        assert demo.wait(timeout=HANG_S) == code
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    reader.join(timeout=HANG_S)
    while not lines.empty():
        seen.append(lines.get())
    transcript = "".join(seen)
    assert "cleaned up" in transcript
    assert "Traceback" not in transcript
    _assert_nothing_left(tmp, transcript)
