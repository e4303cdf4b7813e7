#!/usr/bin/env python3
"""offline-cli benchmarks: speed and memory, as ratios against reference runs made alongside.

Run with ``make bench`` (``.venv/bin/python bench/run.py``); ``--help`` lists the knobs.
Everything happens on loopback (servers on 127.0.0.1 started here) in a temporary folder.
See bench/README.md for what each section measures and how to read it.

Sections:
  1. throughput  ``offline-cli offline URL`` of one large file vs curl, wget, aria2c
  2. memory      peak RSS of offline-cli for a small and a large file (plus references)
  3. latency     ``state`` / ``state --json`` with 1 and N products vs python baselines,
                 and the slowest imports of ``offline_cli.cli`` (python -X importtime)
  4. resume      SIGKILL half-way through a rate-limited download, then ``resume``: bytes
                 fetched again beyond the missing part (server-side byte count)
  5. many        1000 x 16 KiB from one ``-i`` list with ``-j 8`` (and ``-j 1``) vs
                 ``aria2c -j 8 -i``, ``curl -Z --parallel-max 8`` and ``wget -i``
  6. throttled   24 x 1 MB from a server capped at 500 kB/s per connection: ``-j 8`` and
                 ``-j 1`` against the ideal time (and aria2c, curl with 8 connections)
  7. startup     ``state PRODUCT``, ``--version`` and ``--help`` through the console script
                 against a minimal typer app: paired ratios and the targets (PASS/FAIL)

BENCH_CASES=many,throttled (comma-separated section names) is the same as ``--only`` for each.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from sendfile_server import SendfileServer  # noqa: E402

MB = 1_000_000  # decimal megabytes throughout (MB/s as curl and wget print them)
PYTHON = sys.executable
_VENV_SCRIPT = Path(PYTHON).parent / "offline-cli"
OFFLINE_CLI: list[str] = (
    [str(_VENV_SCRIPT)] if _VENV_SCRIPT.exists() else [PYTHON, "-m", "offline_cli"]
)

# -- child processes ------------------------------------------------------------------------


@dataclass
class Run:
    """One finished child process: wall time, exit code, peak RSS and its output."""

    cmd: list[str]
    wall_s: float
    returncode: int
    maxrss_kb: int
    stdout: str
    stderr: str

    def check(self) -> Run:
        if self.returncode != 0:
            raise BenchError(
                f"{' '.join(self.cmd)} exited {self.returncode}: {self.stderr.strip()[-500:]}"
            )
        return self


class BenchError(RuntimeError):
    pass


def _find_gnu_time() -> str | None:
    """GNU time, to read a child's own peak RSS (see ``Child``); None when absent."""
    path = shutil.which("time", path="/usr/bin:/bin:/usr/local/bin")
    if path is None:
        return None
    try:
        with tempfile.NamedTemporaryFile("r") as f:
            subprocess.run([path, "-f", "%M", "-o", f.name, "true"], check=True, timeout=10)
            return path if f.read().strip().isdigit() else None
    except (OSError, subprocess.SubprocessError):
        return None


GNU_TIME = _find_gnu_time()


class Child:
    """A child process in its own process group, with output in temporary files.

    Peak RSS: Linux keeps a process's RSS high-water mark across fork (vfork) and exec, so
    ``ru_maxrss`` of a child of this (Python, tens of MB) process is never below our own
    peak. With ``measure_rss`` the command runs under GNU time (a small C program), whose
    ``%M`` is the child's own peak; without GNU time ``os.wait4``'s value is used, and is a
    floor-limited upper bound.
    """

    def __init__(
        self, cmd: Sequence[str], env: dict[str, str] | None = None, *, measure_rss: bool = False
    ) -> None:
        self.cmd = list(cmd)
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed in reap()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in reap()
        self._rss_file: Path | None = None
        argv = self.cmd
        if measure_rss and GNU_TIME is not None:
            fd, name = tempfile.mkstemp(prefix="offline-cli-bench-rss-")
            os.close(fd)
            self._rss_file = Path(name)
            argv = [GNU_TIME, "-f", "%M", "-o", name, *self.cmd]
        self.started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # one group: kill() reaches GNU time's child too
        )
        self.pid = proc.pid
        proc.returncode = 0  # never let Popen wait for it (or reap it behind our back)
        with _children_lock:
            _children[self.pid] = self

    def running(self) -> bool:
        """True while the child has not exited (looks without reaping it)."""
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is None

    def kill(self) -> None:
        """SIGKILL the child's process group (safe until reaped: the pid cannot be reused)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def reap(self, timeout: float = 300.0) -> Run:
        timer = threading.Timer(timeout, self.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(self.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - self.started
        with _children_lock:
            _children.pop(self.pid, None)
        texts = []
        for f in (self._out, self._err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
            f.close()
        maxrss = usage.ru_maxrss
        if self._rss_file is not None:
            lines = self._rss_file.read_text().split()
            self._rss_file.unlink(missing_ok=True)
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else -1
        code = os.waitstatus_to_exitcode(status)
        return Run(self.cmd, wall, code, maxrss, texts[0], texts[1])


_children: dict[int, Child] = {}
_children_lock = threading.Lock()


def run(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    measure_rss: bool = False,
    timeout: float = 300.0,
) -> Run:
    return Child(cmd, env, measure_rss=measure_rss).reap(timeout)


def kill_all_children() -> None:
    """Kill and reap every child still running (on error or Ctrl-C)."""
    with _children_lock:
        children = list(_children.values())
    for child in children:
        child.kill()
        with contextlib.suppress(ChildProcessError):
            child.reap()


def cli_env(home: Path, config: Path) -> dict[str, str]:
    """The environment for offline-cli: its own home, an empty config, no inherited knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
    env["OFFLINE_CLI_HOME"] = str(home)
    env["OFFLINE_CLI_CONFIG"] = str(config)
    env["NO_COLOR"] = "1"
    return env


# -- small helpers --------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def write_random_file(path: Path, size: int) -> None:
    block = os.urandom(MB)
    with path.open("wb") as f:
        left = size
        while left > 0:
            # A different block each MB (cheap): no two blocks alike, nothing compressible.
            piece = hashlib.sha256(left.to_bytes(8, "little")).digest() + block
            piece = piece[: min(left, len(piece))]
            f.write(piece)
            left -= len(piece)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


def tool_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else None


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        first = r[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


@dataclass
class Report:
    """Results as JSON-able data plus the human tables, printed as each section ends."""

    data: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_table(self, text: str) -> None:
        self.tables.append(text)
        print("\n" + text, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# -- 1 + 2: throughput and memory -----------------------------------------------------------


@dataclass
class Tool:
    name: str
    argv: Callable[[str, Path], list[str]]  # (url, output file) -> command
    env: dict[str, str] | None = None
    home: Path | None = None  # offline-cli: a fresh home per run


def download_tools(tmp: Path, config: Path, report: Report) -> list[Tool]:
    tools = [
        Tool("curl", lambda url, out: ["curl", "-s", "-o", str(out), url]),
        Tool("wget", lambda url, out: ["wget", "-q", "-O", str(out), url]),
        Tool(
            "aria2c",
            lambda url, out: [
                "aria2c",
                "-q",
                "--max-connection-per-server=1",
                "--split=1",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "-d",
                str(out.parent),
                "-o",
                out.name,
                url,
            ],
        ),
    ]
    available = []
    for tool in tools:
        if shutil.which(tool.name) is None:
            hint = " (apt-get install -y aria2)" if tool.name == "aria2c" else ""
            report.note(f"{tool.name} not installed: skipped{hint}")
            continue
        available.append(tool)
    home = tmp / "home-throughput"
    available.append(
        Tool(
            "offline-cli",
            lambda url, out: [*OFFLINE_CLI, "-q", "offline", url],
            env=cli_env(home, config),
            home=home,
        )
    )
    return available


def download_once(tool: Tool, url: str, out: Path, size: int) -> Run:
    """One timed download into a clean place; checks the size of what was written."""
    out.unlink(missing_ok=True)
    if tool.home is not None:
        shutil.rmtree(tool.home, ignore_errors=True)
    result = run(tool.argv(url, out), env=tool.env, measure_rss=True).check()
    if tool.home is not None:
        files = [p for p in (tool.home / "store").rglob("*") if p.is_file()]
        got = max((p.stat().st_size for p in files), default=0)
        shutil.rmtree(tool.home, ignore_errors=True)
    else:
        got = out.stat().st_size if out.exists() else 0
        out.unlink(missing_ok=True)
    if got != size:
        raise BenchError(f"{tool.name} wrote {got} bytes, expected {size}")
    return result


# -- issue 10: one large file against curl made durable ----------------------------------------

RSS_TARGET_MIB = 64


def rss_verdict(name: str, maxrss_kb: Sequence[int]) -> tuple[str, dict[str, Any]]:
    """The peak RSS target for one tool's runs (the highest of them): a line and its JSON."""
    peak = max(maxrss_kb) / 1024
    passed = peak <= RSS_TARGET_MIB
    line = (
        f"peak RSS of {name}: {peak:.1f} MiB (target <= {RSS_TARGET_MIB} MiB: "
        f"{'PASS' if passed else 'FAIL'})"
    )
    return line, {"value": round(peak, 1), "target": RSS_TARGET_MIB, "pass": passed}


def large_tools(tmp: Path, config: Path, report: Report) -> list[Tool]:
    """curl, curl + sync -d (the durability offline-cli gives), aria2c on one connection,
    offline-cli, and offline-cli with its progress writes off (enhanced_download_management
    false: no progress rows, no metric rows, no light maintenance; for one large file the
    last two are a few rows)."""
    tools: list[Tool] = []
    if shutil.which("curl"):
        tools.append(Tool("curl", lambda url, out: ["curl", "-s", "-o", str(out), url]))
        if shutil.which("sync"):
            tools.append(
                Tool(
                    "curl+sync",
                    lambda url, out: [
                        "sh",
                        "-c",
                        'curl -s -o "$1" "$2" && sync -d "$1"',
                        "sh",
                        str(out),
                        url,
                    ],
                )
            )
    else:
        report.note("curl not installed: the large-file targets have no reference")
    if shutil.which("aria2c"):
        tools.append(
            Tool(
                "aria2c",
                lambda url, out: [
                    "aria2c",
                    "-q",
                    "--max-connection-per-server=1",
                    "--split=1",
                    "--allow-overwrite=true",
                    "--auto-file-renaming=false",
                    "--file-allocation=none",
                    "-d",
                    str(out.parent),
                    "-o",
                    out.name,
                    url,
                ],
            )
        )
    home = tmp / "home-large"
    tools.append(
        Tool(
            "offline-cli",
            lambda url, out: [*OFFLINE_CLI, "-q", "offline", url],
            env=cli_env(home, config),
            home=home,
        )
    )
    quiet_home = tmp / "home-large-noprogress"
    env = cli_env(quiet_home, config)
    env["OFFLINE_CLI_ENHANCED_DOWNLOAD_MANAGEMENT"] = "false"
    tools.append(
        Tool(
            "offline-cli (no progress writes)",
            lambda url, out: [*OFFLINE_CLI, "-q", "offline", url],
            env=env,
            home=quiet_home,
        )
    )
    return tools


def bench_large(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    """One large file (args.size_mb and args.large_mb): offline-cli against curl, curl made as
    durable (sync -d) and aria2c, runs interleaved, min and median; the targets of issue 10."""
    serve = tmp / "serve-large"
    serve.mkdir()
    sizes = sorted({args.size_mb * MB, args.large_mb * MB})
    for size in sizes:
        progress(f"large: generating {size // MB} MB")
        write_random_file(serve / f"f{size}.bin", size)
    tools = large_tools(tmp, config, report)
    out_dir = tmp / "out-large"
    out_dir.mkdir()
    results: dict[str, Any] = {}
    with SendfileServer(serve) as server:
        for size in sizes:
            url = server.url(f"f{size}.bin")
            for tool in tools:  # warm-up: page cache, binaries, bytecode
                download_once(tool, url, out_dir / "download.bin", size)
            walls: dict[str, list[float]] = {t.name: [] for t in tools}
            rss: dict[str, list[int]] = {t.name: [] for t in tools}
            for rep in range(args.repeat):
                progress(f"large: round {rep + 1}/{args.repeat} ({size // MB} MB)")
                # Interleaved, each round in another order: fsync timings here swing by 4x
                # from run to run, and drift must hit every tool alike.
                order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
                for tool in order:
                    subprocess.run(["sync"], check=False)  # no earlier run's dirty pages
                    r = download_once(tool, url, out_dir / "download.bin", size)
                    walls[tool.name].append(r.wall_s)
                    rss[tool.name].append(r.maxrss_kb)
            results[str(size // MB)] = _large_verdicts(size, tools, walls, rss, report)
    report.data["large"] = results


def _large_verdicts(
    size: int,
    tools: list[Tool],
    walls: dict[str, list[float]],
    rss: dict[str, list[int]],
    report: Report,
) -> dict[str, Any]:
    med = {name: median(w) for name, w in walls.items()}
    best = {name: min(w) for name, w in walls.items()}
    entry: dict[str, Any] = {
        name: {
            "wall_s_median": round(med[name], 3),
            "wall_s_min": round(best[name], 3),
            "wall_s_all": [round(w, 3) for w in walls[name]],
            "maxrss_mb_max": round(max(rss[name]) / 1024, 1),
        }
        for name in med
    }
    rows = [
        [
            name,
            f"{med[name]:.3f}",
            f"{best[name]:.3f}",
            f"{size / MB / med[name]:.0f}",
            f"{max(rss[name]) / 1024:.1f}",
        ]
        for name in med
    ]
    report.add_table(
        table(
            f"One {size // MB} MB file over loopback ({len(walls['offline-cli'])} interleaved "
            "rounds, sync before each run)",
            ["tool", "median s", "min s", "MB/s", "max RSS MiB"],
            rows,
        )
    )
    cli = "offline-cli"
    targets: list[tuple[str, float | None, float | None, float]] = [
        (label, ratio(med[cli], med[ref]), ratio(best[cli], best[ref]), limit)
        for ref, label, limit in (
            ("curl+sync", "time / (curl && sync -d)", 1.0),
            ("curl", "time / plain curl (moonshot)", 1.5),
            ("aria2c", "time / aria2c (one connection)", math.inf),
        )
        if ref in med
    ]
    quiet = "offline-cli (no progress writes)"
    cost = ratio(med[cli] - med[quiet], med[cli])
    cost_best = ratio(best[cli] - best[quiet], best[cli])
    lines = []
    verdicts: dict[str, Any] = {}
    for name, by_median, by_min, limit in targets:
        passed = by_median is not None and by_median <= limit
        shown = (
            "" if limit == math.inf else f" (target <= {limit:g}: {'PASS' if passed else 'FAIL'})"
        )
        lines.append(f"{name}: median {fmt_ratio(by_median)}, min {fmt_ratio(by_min)}{shown}")
        verdicts[name] = {
            "median": _round(by_median),
            "min": _round(by_min),
            "target": None if limit == math.inf else limit,
            "pass": None if limit == math.inf else passed,
        }
    cost_pass = cost is not None and cost <= 0.02
    lines.append(
        f"progress persistence: {100 * (cost or 0):+.1f} % of the time by median, "
        f"{100 * (cost_best or 0):+.1f} % by min (target <= 2 %: {'PASS' if cost_pass else 'FAIL'})"
    )
    verdicts["progress_persistence"] = {
        "median": _round(cost),
        "min": _round(cost_best),
        "target": 0.02,
        "pass": cost_pass,
    }
    peak = max(max(rss[cli]), max(rss[quiet])) / 1024
    rss_pass = peak <= RSS_TARGET_MIB
    lines.append(
        f"peak RSS of offline-cli: {peak:.1f} MiB (target <= {RSS_TARGET_MIB} MiB: "
        f"{'PASS' if rss_pass else 'FAIL'})"
    )
    verdicts["peak_rss_mib"] = {"value": round(peak, 1), "target": RSS_TARGET_MIB, "pass": rss_pass}
    text = "\n".join(f"  {line}" for line in lines)
    print(text, flush=True)
    report.tables.append(text)
    entry["targets"] = verdicts
    return entry


def bench_downloads(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    serve = tmp / "serve"
    serve.mkdir()
    big_size = args.size_mb * MB
    small_size = max(1, args.size_mb // 10) * MB
    progress(f"generating {big_size // MB} MB and {small_size // MB} MB test files")
    write_random_file(serve / "big.bin", big_size)
    write_random_file(serve / "small.bin", small_size)
    tools = download_tools(tmp, config, report)
    out_dir = tmp / "out"
    out_dir.mkdir()

    with SendfileServer(serve) as server:
        url = server.url("big.bin")
        # Warm up: the source file in the page cache, the binaries and Python's bytecode.
        for tool in tools:
            download_once(tool, url, out_dir / "download.bin", big_size)
        walls: dict[str, list[float]] = {t.name: [] for t in tools}
        rss: dict[str, list[int]] = {t.name: [] for t in tools}
        for rep in range(args.repeat):
            progress(f"throughput: round {rep + 1}/{args.repeat} ({big_size // MB} MB)")
            for tool in tools:  # interleaved, so drift hits every tool alike
                r = download_once(tool, url, out_dir / "download.bin", big_size)
                walls[tool.name].append(r.wall_s)
                rss[tool.name].append(r.maxrss_kb)
        cli = next(t for t in tools if t.name == "offline-cli")
        small_url = server.url("small.bin")
        small_rss, small_walls = [], []
        progress(f"memory: offline-cli on {small_size // MB} MB")
        for _ in range(args.repeat):
            r = download_once(cli, small_url, out_dir / "small.bin", small_size)
            small_rss.append(r.maxrss_kb)
            small_walls.append(r.wall_s)

    curl_wall = median(walls["curl"]) if "curl" in walls else None
    throughput: dict[str, Any] = {}
    rows = []
    for tool in tools:
        wall = median(walls[tool.name])
        speed = big_size / MB / wall
        entry = {
            "wall_s_median": round(wall, 4),
            "wall_s_all": [round(w, 4) for w in walls[tool.name]],
            "mb_per_s": round(speed, 1),
            "time_ratio_vs_curl": _round(ratio(wall, curl_wall)),
            "speed_ratio_vs_curl": _round(ratio(curl_wall, wall)),
            "maxrss_mb_median": round(median(rss[tool.name]) / 1024, 1),
        }
        throughput[tool.name] = entry
        rows.append(
            [
                tool.name,
                f"{wall:.3f}",
                f"{min(walls[tool.name]):.3f}",
                f"{speed:.0f}",
                fmt_ratio(entry["time_ratio_vs_curl"]),
                fmt_ratio(entry["speed_ratio_vs_curl"]),
                f"{entry['maxrss_mb_median']:.1f}",
            ]
        )
    report.data["throughput"] = {"size_mb": big_size // MB, "repeat": args.repeat, **throughput}
    report.add_table(
        table(
            f"Download of one {big_size // MB} MB file over loopback "
            f"(median of {args.repeat}, sendfile server)",
            ["tool", "wall s", "best s", "MB/s", "time/curl", "speed/curl", "max RSS MiB"],
            rows,
        )
    )

    big_rss = median(rss["offline-cli"]) / 1024
    small_rss_mb = median(small_rss) / 1024
    memory = {
        "offline_cli_small": {
            "size_mb": small_size // MB,
            "maxrss_mb_median": round(small_rss_mb, 1),
            "wall_s_median": round(median(small_walls), 4),
        },
        "offline_cli_large": {"size_mb": big_size // MB, "maxrss_mb_median": round(big_rss, 1)},
        "large_over_small": round(big_rss / small_rss_mb, 3),
    }
    if "curl" in rss:
        memory["curl_large_maxrss_mb"] = round(median(rss["curl"]) / 1024, 1)
    memory["rss_source"] = "GNU time %M" if GNU_TIME else "os.wait4 ru_maxrss (floor: bench RSS)"
    report.data["memory"] = memory

    # offline-cli's fixed cost (start, store, commit) and its speed once streaming, from the
    # two sizes: wall = fixed + size / marginal speed.
    t_big, t_small = median(walls["offline-cli"]), median(small_walls)
    if big_size > small_size and t_big > t_small:
        marginal = (big_size - small_size) / MB / (t_big - t_small)
        fixed = t_small - small_size / MB / marginal
        report.data["throughput"]["offline-cli"]["marginal_mb_per_s"] = round(marginal, 1)
        report.data["throughput"]["offline-cli"]["fixed_cost_s"] = round(fixed, 3)
        line = (
            f"offline-cli from its {small_size // MB} MB and {big_size // MB} MB runs: "
            f"fixed cost {fixed:.2f} s + {marginal:.0f} MB/s once streaming"
        )
        print(line, flush=True)
        report.tables.append(line)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def memory_table(report: Report) -> None:
    mem = report.data["memory"]
    base = report.data.get("latency", {}).get("baselines", {})
    rows = [
        [
            f"offline-cli offline ({mem['offline_cli_small']['size_mb']} MB)",
            f"{mem['offline_cli_small']['maxrss_mb_median']:.1f}",
        ],
        [
            f"offline-cli offline ({mem['offline_cli_large']['size_mb']} MB)",
            f"{mem['offline_cli_large']['maxrss_mb_median']:.1f}",
        ],
        ["  ratio large / small", fmt_ratio(mem["large_over_small"])],
    ]
    if "curl_large_maxrss_mb" in mem:
        rows.append(
            [
                f"curl ({mem['offline_cli_large']['size_mb']} MB), reference",
                f"{mem['curl_large_maxrss_mb']:.1f}",
            ]
        )
    for name, label in (
        ("python_pass", "python -c pass, reference"),
        ("python_import_cli", "python -c 'import offline_cli.cli', reference"),
    ):
        if name in base:
            rows.append([label, f"{base[name]['maxrss_mb']:.1f}"])
    report.add_table(table("Peak memory (max RSS, median)", ["process", "max RSS MiB"], rows))


# -- 3: latency of the read command -----------------------------------------------------------


# The floor of any typer command line: typer runs more than ``import typer`` (its adapters
# import pydantic when the app is invoked), so this is the fairer "framework" baseline.
TYPER_MINIMAL_APP = """
import typer
app = typer.Typer()
@app.command()
def hello(name: str = "x") -> None:
    pass
@app.command()
def bye() -> None:
    pass
app(["hello"])
"""


def populate(n: int, server: SendfileServer, home: Path, config: Path, tmp: Path) -> Run:
    """N committed products through the public path: one ``offline -i`` of N tiny URLs."""
    listing = tmp / f"products-{n}.txt"
    listing.write_text("".join(f"{server.url('tiny.bin')}?i={i}\n" for i in range(n)))
    cmd = [*OFFLINE_CLI, "-q", "offline", "-i", str(listing)]
    return run(cmd, env=cli_env(home, config), measure_rss=True)


def bench_latency(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    serve = tmp / "serve-tiny"
    serve.mkdir()
    (serve / "tiny.bin").write_bytes(os.urandom(1024))
    counts = sorted({1, args.products})
    homes = {n: tmp / f"home-state-{n}" for n in counts}
    populated: dict[str, Any] = {}
    with SendfileServer(serve) as server:
        for n in counts:
            progress(f"latency: populating a store with {n} product(s)")
            r = populate(n, server, homes[n], config, tmp).check()
            populated[str(n)] = {
                "wall_s": round(r.wall_s, 3),
                "products_per_s": round(n / r.wall_s, 1),
                "maxrss_mb": round(r.maxrss_kb / 1024, 1),
            }
    # The server is gone: `state` never touches the network, and now it provably cannot.
    for n in counts:
        listing = run([*OFFLINE_CLI, "state"], env=cli_env(homes[n], config)).check()
        lines = [ln for ln in listing.stdout.splitlines() if ln.strip()]
        valid = sum(ln.endswith("\tOFFLINED_AND_VALID") for ln in lines)
        if len(lines) != n or valid != n:
            raise BenchError(f"store of {n}: state listed {len(lines)} lines, {valid} valid")

    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "python_pass": ([PYTHON, "-c", "pass"], None),
        "python_import_typer": ([PYTHON, "-c", "import typer"], None),
        "python_import_cli": ([PYTHON, "-c", "import offline_cli.cli"], None),
        "typer_minimal_app": ([PYTHON, "-c", TYPER_MINIMAL_APP], None),
        "cli_version": ([*OFFLINE_CLI, "--version"], None),
    }
    for n in counts:
        env = cli_env(homes[n], config)
        commands[f"state_{n}"] = ([*OFFLINE_CLI, "state"], env)
        commands[f"state_json_{n}"] = ([*OFFLINE_CLI, "state", "--json"], env)
    one_product = f"http://127.0.0.1:{server.port}/tiny.bin?i=0"
    commands[f"state_one_of_{args.products}"] = (
        [*OFFLINE_CLI, "state", one_product],
        cli_env(homes[args.products], config),
    )
    walls: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, list[int]] = {k: [] for k in commands}
    for name, (cmd, env) in commands.items():
        # Warm-up (bytecode, page cache), under GNU time for the peak RSS; the timed runs
        # are bare, so the wrapper's own fork and exec are not in the latency.
        rss[name].append(run(cmd, env=env, measure_rss=True).check().maxrss_kb)
    progress(f"latency: {args.runs} rounds of {len(commands)} commands")
    for _ in range(args.runs):
        for name, (cmd, env) in commands.items():  # interleaved, so drift hits all alike
            walls[name].append(run(cmd, env=env).check().wall_s)

    base_pass = median(walls["python_pass"])
    base_typer = median(walls["python_import_typer"])
    base_app = median(walls["typer_minimal_app"])
    results: dict[str, Any] = {}
    for name in commands:
        m = median(walls[name])
        results[name] = {
            "median_ms": round(m * 1000, 1),
            "min_ms": round(min(walls[name]) * 1000, 1),
            "maxrss_mb": round(median(rss[name]) / 1024, 1),
            "ratio_vs_python_pass": _round(ratio(m, base_pass)),
            "ratio_vs_import_typer": _round(ratio(m, base_typer)),
            "ratio_vs_typer_app": _round(ratio(m, base_app)),
        }
    big = args.products
    per_product = None
    if big > 1:
        per_product = (median(walls[f"state_{big}"]) - median(walls["state_1"])) / (big - 1)
    labels = {
        "python_pass": 'python -c "pass"',
        "python_import_typer": 'python -c "import typer"',
        "python_import_cli": 'python -c "import offline_cli.cli"',
        "typer_minimal_app": "a minimal typer app (2 commands), run",
        "cli_version": "offline-cli --version",
    }
    for n in counts:
        labels[f"state_{n}"] = f"offline-cli state ({n} product{'s' if n > 1 else ''})"
        labels[f"state_json_{n}"] = f"offline-cli state --json ({n} product{'s' if n > 1 else ''})"
    labels[f"state_one_of_{big}"] = f"offline-cli state URL (1 of {big})"
    rows = [
        [
            labels[name],
            f"{r['median_ms']:.1f}",
            f"{r['min_ms']:.1f}",
            fmt_ratio(r["ratio_vs_python_pass"]),
            fmt_ratio(r["ratio_vs_import_typer"]),
            fmt_ratio(r["ratio_vs_typer_app"]),
            f"{r['maxrss_mb']:.1f}",
        ]
        for name, r in results.items()
    ]
    base_names = ("python_pass", "python_import_typer", "python_import_cli", "typer_minimal_app")
    baselines = {k: results[k] for k in base_names}
    report.data["latency"] = {
        "runs": args.runs,
        "populate": populated,
        "baselines": baselines,
        "commands": {k: v for k, v in results.items() if k not in baselines},
        "state_ms_per_extra_product": _round(
            None if per_product is None else per_product * 1000, 4
        ),
    }
    title = f"Command latency (median of {args.runs} runs, wall clock incl. interpreter start)"
    report.add_table(
        table(
            title,
            ["command", "median ms", "min ms", "/ pass", "/ import typer", "/ typer app", "MiB"],
            rows,
        )
    )
    extra = [
        f"populating {n} product(s) with one `offline -i`: {p['wall_s']:.2f} s "
        f"({p['products_per_s']:.0f} products/s)"
        for n, p in populated.items()
    ]
    if per_product is not None:
        extra.append(f"`state` cost per extra product: {per_product * 1000:.3f} ms")
    print("\n".join(extra), flush=True)
    report.tables.append("\n".join(extra))


def parse_importtime(stderr: str) -> dict[str, dict[str, Any]]:
    """``-X importtime`` lines by module: depth, self and cumulative milliseconds."""
    entries: dict[str, dict[str, Any]] = {}
    for line in stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        self_us, cumulative_us, name = parts
        entries[name.strip()] = {
            "module": name.strip(),
            "depth": (len(name) - len(name.lstrip()) - 1) // 2,
            "self_ms": int(self_us) / 1000,
            "cumulative_ms": int(cumulative_us) / 1000,
        }
    return entries


def importtime_median(
    cmd: list[str], env: dict[str, str] | None, runs: int
) -> list[dict[str, Any]]:
    """Per module, the run with the median cumulative time (imports are noisy)."""
    samples: dict[str, list[dict[str, Any]]] = {}
    for _ in range(runs):
        env_x = dict(env if env is not None else os.environ, PYTHONPROFILEIMPORTTIME="1")
        for name, entry in parse_importtime(run(cmd, env=env_x).check().stderr).items():
            samples.setdefault(name, []).append(entry)
    result = []
    for entries in samples.values():
        ordered = sorted(entries, key=lambda e: e["cumulative_ms"])
        result.append(ordered[len(ordered) // 2])
    return result


def bench_importtime(report: Report, state_home: Path, config: Path, top: int = 10) -> None:
    runs = 5
    at_import = importtime_median([PYTHON, "-c", "import offline_cli.cli"], None, runs)
    if not at_import:
        report.note("python -X importtime gave no output")
        return
    total = max(e["cumulative_ms"] for e in at_import)
    by_cumulative = sorted(at_import, key=lambda e: e["cumulative_ms"], reverse=True)[:top]
    by_self = sorted(at_import, key=lambda e: e["self_ms"], reverse=True)[:top]
    # What a real command imports beyond the module itself (typer's runtime, for one).
    env = cli_env(state_home, config)
    at_run = importtime_median([PYTHON, "-m", "offline_cli", "state"], env, runs)
    imported = {e["module"] for e in at_import}
    extra = [e for e in at_run if e["module"] not in imported]
    extra_roots = [e for e in extra if e["depth"] == min((x["depth"] for x in extra), default=0)]
    extra_top = sorted(extra, key=lambda e: e["cumulative_ms"], reverse=True)[:5]
    extra_total = sum(e["cumulative_ms"] for e in extra_roots)
    report.data["importtime"] = {
        "runs": runs,
        "total_ms": round(total, 1),
        "modules": len(at_import),
        "top_cumulative": by_cumulative,
        "top_self": by_self,
        "state_command_extra_modules": len(extra),
        "state_command_extra_ms": round(extra_total, 1),
        "state_command_extra_top": extra_top,
    }
    rows = [
        [e["module"], e["depth"], f"{e['cumulative_ms']:.1f}", f"{e['self_ms']:.1f}"]
        for e in by_cumulative
    ]
    rows.append(["", "", "", ""])
    rows.append([f"imported only when `state` runs ({len(extra)} modules):", "", "", ""])
    rows += [
        ["  " + e["module"], e["depth"], f"{e['cumulative_ms']:.1f}", f"{e['self_ms']:.1f}"]
        for e in extra_top
    ]
    report.add_table(
        table(
            f"Import time: python -X importtime -c 'import offline_cli.cli': {total:.0f} ms, "
            f"{len(at_import)} modules (median of {runs}, informative); top {top} cumulative",
            ["module", "depth", "cumulative ms", "self ms"],
            rows,
        )
    )


# -- startup: the read-only commands against the framework's floor ----------------------------

# Each target: the command's wall time over the minimal typer app's, both run as a user runs
# them (the console script, .venv/bin/offline-cli, against `python -c APP`).
STARTUP_TARGETS: dict[str, float] = {"state_product": 1.15, "version": 1.05, "help": 1.05}
# Packages a read-only command should not need; the section reports which ones each imports.
STARTUP_WATCH = ("httpx", "ssl", "peewee", "sqlite3", "filelock", "rich", "m3u8", "backoff")


def imported_modules(cmd: list[str], env: dict[str, str] | None) -> list[str]:
    """The modules ``cmd`` (a Python program) imports, from one ``-X importtime`` run."""
    env_x = dict(env if env is not None else os.environ, PYTHONPROFILEIMPORTTIME="1")
    return sorted(parse_importtime(run(cmd, env=env_x).check().stderr))


def bench_startup(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    """`state PRODUCT`, `--version` and `--help` against a minimal two-command typer app.

    Interleaved rounds (the order rotates each round), one run of each command per round;
    each round gives a paired ratio (command / app, run moments apart). The verdict is the
    median of those ratios; the ratio of the fastest runs is printed beside it.
    """
    runs = args.startup_runs
    home = tmp / "home-startup"
    serve = tmp / "serve-startup"
    serve.mkdir()
    (serve / "tiny.bin").write_bytes(os.urandom(1024))
    env = cli_env(home, config)
    # Bytecode as a user has it (pip compiles a regular install; an editable one writes it
    # on first run): with PYTHONDONTWRITEBYTECODE set, as in some CI and agent shells,
    # every run would compile offline_cli from source and that is what would be measured.
    import compileall

    compileall.compile_dir(str(REPO / "offline_cli"), quiet=1)
    progress("startup: a store of one product")
    with SendfileServer(serve) as server:
        url = server.url("tiny.bin")
        run([*OFFLINE_CLI, "-q", "offline", url], env=env).check()
    # The server is gone: `state` must not touch the network.
    commands: dict[str, list[str]] = {
        "typer_minimal_app": [PYTHON, "-c", TYPER_MINIMAL_APP],
        "state_product": [*OFFLINE_CLI, "state", url],
        "version": [*OFFLINE_CLI, "--version"],
        "help": [*OFFLINE_CLI, "--help"],
    }
    labels = {
        "typer_minimal_app": "a minimal typer app (2 commands), run",
        "state_product": "offline-cli state PRODUCT (1 stored)",
        "version": "offline-cli --version",
        "help": "offline-cli --help",
    }
    expected = {
        "state_product": lambda out: out.strip() == "OFFLINED_AND_VALID",
        "version": lambda out: out.startswith("offline-cli "),
        "help": lambda out: "Usage:" in out,
    }
    for name, cmd in commands.items():  # warm-up (bytecode, page cache) and a check
        out = run(cmd, env=env).check().stdout
        if name in expected and not expected[name](out):
            raise BenchError(f"{' '.join(cmd)}: unexpected output {out[:200]!r}")
    progress(f"startup: {runs} rounds of {len(commands)} commands")
    names = list(commands)
    walls: dict[str, list[float]] = {k: [] for k in names}
    for i in range(runs):
        order = names[i % len(names) :] + names[: i % len(names)]  # no fixed position
        for name in order:
            walls[name].append(run(commands[name], env=env).check().wall_s)
    app = walls["typer_minimal_app"]
    # What each imports (one run each, informative; the console script is Python too).
    modules = {name: imported_modules(cmd, env) for name, cmd in commands.items()}
    results: dict[str, Any] = {}
    rows = []
    app_row = {"median_ms": round(median(app) * 1000, 1), "min_ms": round(min(app) * 1000, 1)}
    for name in names:
        w = walls[name]
        tops = {m.split(".")[0] for m in modules[name]}
        entry: dict[str, Any] = {
            "median_ms": round(median(w) * 1000, 1),
            "min_ms": round(min(w) * 1000, 1),
            "modules": len(modules[name]),
            "imports": [p for p in STARTUP_WATCH if p in tops],
        }
        target = STARTUP_TARGETS.get(name)
        verdict = ""
        if target is not None:
            paired = [a / b for a, b in zip(w, app, strict=True)]
            entry |= {
                "ratio_median": _round(median(paired)),
                "ratio_min": _round(min(w) / min(app)),
                "paired_ratios": [round(x, 3) for x in paired],
                "target": target,
                "pass": median(paired) <= target,
            }
            verdict = "PASS" if entry["pass"] else "FAIL"
        results[name] = entry
        rows.append(
            [
                labels[name],
                f"{entry['median_ms']:.1f}",
                f"{entry['min_ms']:.1f}",
                fmt_ratio(entry.get("ratio_median", 1.0)),
                fmt_ratio(entry.get("ratio_min", 1.0)),
                f"<= {target:.2f}x" if target is not None else "",
                verdict,
                entry["modules"],
                ",".join(entry["imports"]) or "-",
            ]
        )
    report.data["startup"] = {
        "runs": runs,
        "command": OFFLINE_CLI,
        "baseline": app_row | {"modules": len(modules["typer_minimal_app"])},
        "targets": {k: v for k, v in results.items() if k in STARTUP_TARGETS},
        "walls_ms": {k: [round(x * 1000, 1) for x in v] for k, v in walls.items()},
    }
    report.add_table(
        table(
            f"Start-up against a minimal typer app ({runs} interleaved rounds; ratio = median "
            "of the paired ratios, and of the fastest runs)",
            [
                "command",
                "median ms",
                "min ms",
                "ratio",
                "min ratio",
                "target",
                "",
                "modules",
                "of " + ",".join(STARTUP_WATCH),
            ],
            rows,
        )
    )


# -- 4: resume efficiency ---------------------------------------------------------------------


def bench_resume(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from tests.netsim import NetSim, Resource  # type: ignore[import-not-found]
    except ImportError as exc:
        report.note(f"resume section skipped: cannot import tests.netsim ({exc})")
        return
    size = int(args.resume_mb * MB)
    rate = args.resume_rate_mb * MB
    body = os.urandom(size)
    home = tmp / "home-resume"
    env = cli_env(home, config)
    sim = NetSim()
    sim.add("/file", Resource(body, rate=rate))
    sim.start(poll_interval=0.05)
    try:
        url = sim.url("/file")
        partial_dir = home / "partial"
        progress(f"resume: {size / MB:g} MB at {rate / MB:g} MB/s, SIGKILL at half")
        child = Child([*OFFLINE_CLI, "-q", "offline", url], env)
        deadline = time.monotonic() + 60 + 2 * size / rate
        while time.monotonic() < deadline and child.running():
            if partial_dir.is_dir() and tree_size(partial_dir) >= size // 2:
                break
            time.sleep(0.005)
        child.kill()
        first = child.reap()
        if first.returncode != -signal.SIGKILL:
            raise BenchError(f"the first run was not killed (exit {first.returncode})")
        on_disk = tree_size(partial_dir)
        sim.wait_idle(10)
        sent_first = sim.bytes_sent("/file")
        requests_before = len(sim.requests("/file"))

        second = run([*OFFLINE_CLI, "-q", "resume"], env=env).check()
        sim.wait_idle(10)
        sent_resume = sim.bytes_sent("/file") - sent_first
        resume_requests = sim.requests("/file")[requests_before:]
        state = run([*OFFLINE_CLI, "state", url], env=env).check().stdout.strip()
        stored = [p for p in (home / "store").rglob("*") if p.is_file() and p.stat().st_size]
        intact = any(sha256_of(p) == hashlib.sha256(body).hexdigest() for p in stored)
    finally:
        sim.stop()
    missing = size - on_disk
    extra = sent_resume - missing
    data = {
        "size_bytes": size,
        "rate_bytes_per_s": rate,
        "killed_after_s": round(first.wall_s, 3),
        "partial_on_disk_at_kill": on_disk,
        "sent_before_kill": sent_first,
        "lost_in_flight_at_kill": sent_first - on_disk,
        "missing_bytes": missing,
        "sent_by_resume": sent_resume,
        "refetched_beyond_missing": extra,
        "resume_requests": [
            {"status": s.status, "range": s.range, "if_range": s.if_range, "bytes": s.bytes_sent}
            for s in resume_requests
        ],
        "resume_wall_s": round(second.wall_s, 3),
        "ideal_resume_s": round(missing / rate, 3),
        "final_state": state,
        "final_sha256_matches": intact,
        "total_sent_over_size": round((sent_first + sent_resume) / size, 4),
    }
    report.data["resume"] = data
    ranges = ", ".join(f"{r['status']} {r['range'] or 'no Range'}" for r in data["resume_requests"])
    rows = [
        ["file size", f"{size:,}"],
        ["on disk when killed (partial)", f"{on_disk:,}"],
        ["sent by the server before the kill", f"{sent_first:,}"],
        ["  lost in flight (socket buffers)", f"{sent_first - on_disk:,}"],
        ["missing after the kill", f"{missing:,}"],
        ["sent by the server for `resume`", f"{sent_resume:,}"],
        ["refetched beyond the missing part", f"{extra:,}"],
        ["resume requests", ranges],
        ["resume wall time s (ideal at the rate)", f"{second.wall_s:.2f} ({missing / rate:.2f})"],
        ["total sent / size", f"{data['total_sent_over_size']:.4f}"],
        ["final state, sha256 matches", f"{state}, {intact}"],
    ]
    report.add_table(
        table(
            f"Resume after SIGKILL half-way ({size / MB:g} MB at {rate / MB:g} MB/s, NetSim)",
            ["measure", "value"],
            rows,
        )
    )
    if extra != 0:
        report.note(f"resume refetched {extra} bytes beyond the missing part")
    if state != "OFFLINED_AND_VALID" or not intact:
        report.note(f"resumed product is {state}, sha256 match: {intact}")


# -- 5 + 6: many products at once (-j) -------------------------------------------------------


def jobs_option_supported() -> bool:
    """True when ``offline`` takes ``-j/--jobs`` (else the ``OFFLINE_CLI_JOBS`` setting)."""
    help_text = run([*OFFLINE_CLI, "offline", "--help"]).stdout
    return "--jobs" in help_text


@dataclass
class BatchTool:
    """A command that downloads every URL of one list (``BatchList``) into a folder."""

    name: str
    argv: Callable[[BatchList, Path], list[str]]  # (list, output folder) -> command
    env: dict[str, str] | None = None
    home: Path | None = None  # offline-cli: a fresh home per run
    jobs: int | None = None  # the parallelism asked for (for the ideal time)


@dataclass
class BatchList:
    """N URLs (distinct files, so every tool writes N distinct names) and the same as a curl
    config of url/output pairs pointing into ``out``."""

    urls: list[str]
    url_file: Path
    curl_config: Path

    @classmethod
    def write(cls, urls: list[str], folder: Path, name: str, out: Path) -> BatchList:
        url_file = folder / f"{name}.txt"
        url_file.write_text("".join(u + "\n" for u in urls))
        curl_config = folder / f"{name}.curlrc"
        curl_config.write_text(
            "".join(f'url = "{u}"\noutput = "{out / u.rsplit("/", 1)[-1]}"\n' for u in urls)
        )
        return cls(urls, url_file, curl_config)


def batch_tools(
    args: argparse.Namespace,
    tmp: Path,
    config: Path,
    report: Report,
    case: str,
    *,
    with_wget: bool,
    cli_jobs: Sequence[int],
) -> list[BatchTool]:
    """The references (a note for each one missing) and offline-cli with each of ``cli_jobs``."""
    j = args.jobs
    tools = [
        BatchTool(
            f"aria2c -j {j}",
            lambda lst, out: [
                "aria2c",
                "-q",
                "-j",
                str(j),
                "--max-connection-per-server=1",
                "--split=1",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "-d",
                str(out),
                "-i",
                str(lst.url_file),
            ],
            jobs=j,
        ),
        BatchTool(
            f"curl -Z --parallel-max {j} --parallel-immediate",
            lambda lst, out: [
                "curl",
                "-s",
                "--fail",
                "-Z",
                "--parallel-max",
                str(j),
                "--parallel-immediate",  # N connections at once, not one then see (HTTP/2)
                "-K",
                str(lst.curl_config),
            ],
            jobs=j,
        ),
    ]
    if with_wget:
        tools.append(
            BatchTool(
                "wget -i (one connection)",
                lambda lst, out: ["wget", "-q", "-P", str(out), "-i", str(lst.url_file)],
                jobs=1,
            )
        )
    available = []
    for tool in tools:
        exe = tool.name.split()[0]
        if shutil.which(exe) is None:
            hint = " (apt-get install -y aria2)" if exe == "aria2c" else ""
            report.note(f"{case}: {exe} not installed: skipped{hint}")
            continue
        available.append(tool)
    use_option = jobs_option_supported()
    for jobs in cli_jobs:
        home = tmp / f"home-{case}-j{jobs}"
        env = cli_env(home, config)
        jobs_args: list[str] = []
        if use_option:
            jobs_args = ["-j", str(jobs)]
        else:
            env["OFFLINE_CLI_JOBS"] = str(jobs)

        def argv(lst: BatchList, out: Path, jobs_args: list[str] = jobs_args) -> list[str]:
            return [*OFFLINE_CLI, "-q", "offline", *jobs_args, "-i", str(lst.url_file)]

        available.append(BatchTool(f"offline-cli -j {jobs}", argv, env=env, home=home, jobs=jobs))
    report.data.setdefault("jobs_passed_as", "-j" if use_option else "OFFLINE_CLI_JOBS")
    return available


def batch_once(tool: BatchTool, lst: BatchList, out: Path, size: int) -> Run:
    """One timed run of ``tool`` over ``lst`` into clean places; checks that every URL gave
    one file of ``size`` bytes."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if tool.home is not None:
        shutil.rmtree(tool.home, ignore_errors=True)
    result = run(tool.argv(lst, out), env=tool.env, measure_rss=True, timeout=900).check()
    folder = tool.home / "store" if tool.home is not None else out
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    good = sum(s == size for s in sizes)
    if tool.home is not None:
        shutil.rmtree(tool.home, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    if good != len(lst.urls) or len(sizes) != len(lst.urls):
        raise BenchError(
            f"{tool.name} wrote {len(sizes)} files, {good} of {size} bytes; "
            f"expected {len(lst.urls)}"
        )
    return result


def serve_files(folder: Path, count: int, size: int, prefix: str) -> list[str]:
    """``count`` distinct random files of ``size`` bytes in ``folder``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(count - 1))
    names = [f"{prefix}{i:0{width}d}.bin" for i in range(count)]
    for name in names:
        if size >= MB:
            write_random_file(folder / name, size)
        else:
            (folder / name).write_bytes(os.urandom(size))
    return names


def timed_rounds(
    tools: Sequence[BatchTool], lst: BatchList, out: Path, size: int, repeat: int, label: str
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    walls: dict[str, list[float]] = {t.name: [] for t in tools}
    rss: dict[str, list[int]] = {t.name: [] for t in tools}
    for rep in range(repeat):
        for tool in tools:  # interleaved, so drift hits every tool alike
            progress(f"{label}: round {rep + 1}/{repeat}: {tool.name}")
            r = batch_once(tool, lst, out, size)
            walls[tool.name].append(r.wall_s)
            rss[tool.name].append(r.maxrss_kb)
    return walls, rss


def bench_many(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    """Case 5: many small files from one list, N at once, against aria2c and curl."""
    count, size = args.many_files, args.many_kib * 1024
    progress(f"many: {count} files of {args.many_kib} KiB")
    names = serve_files(tmp / "serve-many", count, size, "f")
    out = tmp / "out-many"
    tools = batch_tools(args, tmp, config, report, "many", with_wget=True, cli_jobs=[args.jobs, 1])
    with SendfileServer(tmp / "serve-many") as server:
        lists = tmp / "lists-many"
        lists.mkdir()
        urls = [server.url(n) for n in names]
        full = BatchList.write(urls, lists, "all", out)
        warm = BatchList.write(urls[: min(count, 2 * args.jobs)], lists, "warm", out)
        for tool in tools:  # warm-up: binaries, bytecode, the files in the page cache
            batch_once(tool, warm, out, size)
        walls, rss = timed_rounds(tools, full, out, size, args.repeat, "many")

    ref_name = next((t.name for t in tools if t.name.startswith("aria2c")), None)
    if ref_name is None:
        ref_name = next((t.name for t in tools if t.name.startswith("curl")), None)
    ref_wall = median(walls[ref_name]) if ref_name else None
    total_mb = count * size / MB
    results: dict[str, Any] = {}
    rows = []
    for tool in tools:
        wall = median(walls[tool.name])
        entry = {
            "wall_s_median": round(wall, 4),
            "wall_s_all": [round(w, 4) for w in walls[tool.name]],
            "files_per_s": round(count / wall, 1),
            "mb_per_s": round(total_mb / wall, 2),
            "time_ratio_vs_ref": _round(ratio(wall, ref_wall)),
            "speed_ratio_vs_ref": _round(ratio(ref_wall, wall)),
            "maxrss_mb_median": round(median(rss[tool.name]) / 1024, 1),
        }
        results[tool.name] = entry
        rows.append(
            [
                tool.name,
                f"{wall:.3f}",
                f"{min(walls[tool.name]):.3f}",
                f"{count / wall:.0f}",
                f"{1000 * wall / count:.2f}",
                fmt_ratio(entry["time_ratio_vs_ref"]),
                fmt_ratio(entry["speed_ratio_vs_ref"]),
                f"{entry['maxrss_mb_median']:.1f}",
            ]
        )
    cli_name = f"offline-cli -j {args.jobs}"
    cli_wall = median(walls[cli_name])
    target: dict[str, Any] = {"goal": f"{cli_name} at least as fast as {ref_name}"}
    if ref_name is not None and ref_name.startswith("aria2c") and ref_wall is not None:
        target["ratio"] = round(cli_wall / ref_wall, 3)
        target["pass"] = cli_wall <= ref_wall
        verdict = "PASS" if target["pass"] else "FAIL"
        target_line = (
            f"target: {cli_name} at least as fast as {ref_name}: {verdict} "
            f"({cli_wall:.2f} s vs {ref_wall:.2f} s, {cli_wall / ref_wall:.2f}x its time)"
        )
    else:
        target["pass"] = None
        target_line = f"target: {cli_name} vs aria2c: skipped (aria2c not installed)"
    j1 = results.get("offline-cli -j 1")
    if j1 is not None:
        speedup = j1["wall_s_median"] / cli_wall
        target_line += f"\n{cli_name} is {speedup:.2f}x as fast as offline-cli -j 1"
        target["speedup_vs_j1"] = round(speedup, 3)
    rss_line, target["peak_rss_mib"] = rss_verdict(cli_name, rss[cli_name])
    target_line += f"\n{rss_line}"
    report.data["many"] = {
        "files": count,
        "file_bytes": size,
        "jobs": args.jobs,
        "repeat": args.repeat,
        "reference": ref_name,
        "tools": results,
        "target": target,
    }
    report.add_table(
        table(
            f"{count} files of {args.many_kib} KiB from one list, {args.jobs} at once "
            f"(median of {args.repeat}, sendfile server, wall clock incl. start-up)",
            ["tool", "wall s", "best s", "files/s", "ms/file", "time/ref", "speed/ref", "RSS MiB"],
            rows,
        )
        + f"\nref = {ref_name}\n{target_line}"
    )


def bench_throttled(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    """Case 6: files from a server that caps each connection: -j N against -j 1 and ideal."""
    count, size = args.throttle_files, int(args.throttle_kb * 1000)
    rate = int(args.throttle_rate_kb * 1000)
    total = count * size
    progress(f"throttled: {count} files of {size / 1000:g} kB at {rate / 1000:g} kB/s a connection")
    names = serve_files(tmp / "serve-throttled", count, size, "t")
    out = tmp / "out-throttled"
    tools = batch_tools(
        args, tmp, config, report, "throttled", with_wget=False, cli_jobs=[args.jobs, 1]
    )
    with SendfileServer(tmp / "serve-throttled", rate=rate) as server:
        lists = tmp / "lists-throttled"
        lists.mkdir()
        full = BatchList.write([server.url(n) for n in names], lists, "all", out)
        walls, rss = timed_rounds(tools, full, out, size, args.throttle_repeat, "throttled")

    def ideal(jobs: int) -> float:
        return total / (min(jobs, count) * rate)

    results: dict[str, Any] = {}
    rows = []
    for tool in tools:
        wall = median(walls[tool.name])
        best = ideal(tool.jobs or 1)
        entry = {
            "jobs": tool.jobs,
            "wall_s_median": round(wall, 4),
            "wall_s_all": [round(w, 4) for w in walls[tool.name]],
            "ideal_s": round(best, 3),
            "over_ideal": round(wall / best, 3),
            "mb_per_s": round(total / MB / wall, 3),
            "maxrss_mb_median": round(median(rss[tool.name]) / 1024, 1),
        }
        results[tool.name] = entry
        rows.append(
            [
                tool.name,
                f"{wall:.2f}",
                f"{best:.2f}",
                fmt_ratio(entry["over_ideal"]),
                f"{total / MB / wall:.2f}",
                f"{entry['maxrss_mb_median']:.1f}",
            ]
        )
    cli_name = f"offline-cli -j {args.jobs}"
    cli = results[cli_name]
    passed = cli["over_ideal"] <= 1.3
    target: dict[str, Any] = {"goal": f"{cli_name} within 1.3x of ideal", "pass": passed}
    lines = [
        f"ideal = total / (min(jobs, files) x rate) = {total / MB:g} MB / "
        f"({min(args.jobs, count)} x {rate / 1000:g} kB/s) = {ideal(args.jobs):.2f} s for -j "
        f"{args.jobs}",
        f"target: {cli_name} within 1.3x of ideal: {'PASS' if passed else 'FAIL'} "
        f"({cli['over_ideal']:.2f}x)",
    ]
    j1 = results.get("offline-cli -j 1")
    if j1 is not None:
        speedup = j1["wall_s_median"] / cli["wall_s_median"]
        target["speedup_vs_j1"] = round(speedup, 3)
        lines.append(f"{cli_name} is {speedup:.2f}x as fast as offline-cli -j 1")
    rss_line, target["peak_rss_mib"] = rss_verdict(cli_name, rss[cli_name])
    lines.append(rss_line)
    report.data["throttled"] = {
        "files": count,
        "file_bytes": size,
        "rate_bytes_per_s_per_connection": rate,
        "jobs": args.jobs,
        "repeat": args.throttle_repeat,
        "tools": results,
        "target": target,
    }
    report.add_table(
        table(
            f"{count} files of {size / 1000:g} kB, server capped at {rate / 1000:g} kB/s per "
            f"connection (median of {args.throttle_repeat}, wall clock incl. start-up)",
            ["tool", "wall s", "ideal s", "/ ideal", "MB/s", "RSS MiB"],
            rows,
        )
        + "\n"
        + "\n".join(lines)
    )


# -- a store of 100,000 entries -------------------------------------------------------------------


# The commands timed on the big store and on an empty one; the first five have a time limit,
# `state PRODUCT` a limit relative to the empty store's.
STORE_LIMIT_S = 1.0
STORE_ONE_RATIO = 1.10
# An offlined product of bench/fill_store.py (product 500: fate "offlined", a video).
STORE_ONE_PRODUCT = "video:000500"


def store_commands() -> dict[str, list[str]]:
    return {
        "state": ["state"],
        "state_json": ["state", "--json"],
        "health": ["health"],
        "health_json": ["health", "--json"],
        "cleanup_dry_run": ["cleanup", "--dry-run"],
        "state_one": ["state", STORE_ONE_PRODUCT],
    }


def bench_store(args: argparse.Namespace, tmp: Path, config: Path, report: Report) -> None:
    """A store of ``--store-products`` entries (filled by bench/fill_store.py through the
    store's own schema code and bulk SQL, with real small files), each read command timed
    against the same command on an empty store, interleaved."""
    n, runs = args.store_products, args.store_runs
    homes = {"big": tmp / "home-store-big", "empty": tmp / "home-store-empty"}
    fills: dict[str, Any] = {}
    for name, count in (("big", n), ("empty", 0)):
        progress(f"store: filling a store with {count} products")
        r = run([PYTHON, str(BENCH_DIR / "fill_store.py"), str(homes[name]), str(count)]).check()
        fills[name] = {"wall_s": round(r.wall_s, 2), **json.loads(r.stdout)}
    envs = {name: cli_env(home, config) for name, home in homes.items()}
    # What the big store holds, as `state` sees it (and the first run creates any index).
    listing = run([*OFFLINE_CLI, "state"], env=envs["big"]).check()
    lines = [ln for ln in listing.stdout.splitlines() if ln.strip()]
    if len(lines) != n:
        raise BenchError(f"store of {n}: state listed {len(lines)} products")
    states: dict[str, int] = {}
    for ln in lines:
        value = ln.rsplit("\t", 1)[-1]
        states[value] = states.get(value, 0) + 1
    commands = store_commands()
    walls: dict[str, dict[str, list[float]]] = {c: {"big": [], "empty": []} for c in commands}
    rss: dict[str, dict[str, int]] = {c: {} for c in commands}
    out_bytes: dict[str, int] = {}
    for cmd_name, argv in commands.items():  # warm-up: bytecode, page cache; peak RSS
        for name in ("big", "empty"):
            r = run([*OFFLINE_CLI, *argv], env=envs[name], measure_rss=True).check()
            rss[cmd_name][name] = r.maxrss_kb
            if name == "big":
                out_bytes[cmd_name] = len(r.stdout.encode())
    for i in range(runs):
        progress(f"store: round {i + 1}/{runs} of {len(commands)} commands x 2 stores")
        for cmd_name, argv in commands.items():  # interleaved, each big run paired with empty
            for name in ("big", "empty"):
                walls[cmd_name][name].append(
                    run([*OFFLINE_CLI, *argv], env=envs[name]).check().wall_s
                )

    results: dict[str, Any] = {}
    rows = []
    for cmd_name, argv in commands.items():
        big, empty = walls[cmd_name]["big"], walls[cmd_name]["empty"]
        m_big, m_empty = median(big), median(empty)
        if cmd_name == "state_one":
            figure, limit = m_big / m_empty, STORE_ONE_RATIO
            goal = f"<= {limit:.2f}x the empty store's"
        else:
            figure, limit = m_big, STORE_LIMIT_S
            goal = f"<= {limit:.1f} s"
        passed = figure <= limit
        results[cmd_name] = {
            "command": "offline-cli " + " ".join(argv),
            "big_s_median": round(m_big, 4),
            "big_s_min": round(min(big), 4),
            "big_s_all": [round(w, 4) for w in big],
            "empty_s_median": round(m_empty, 4),
            "empty_s_min": round(min(empty), 4),
            "empty_s_all": [round(w, 4) for w in empty],
            "ratio_big_vs_empty": round(m_big / m_empty, 3),
            "maxrss_mb_big": round(rss[cmd_name]["big"] / 1024, 1),
            "maxrss_mb_empty": round(rss[cmd_name]["empty"] / 1024, 1),
            "stdout_bytes_big": out_bytes[cmd_name],
            "target": {"goal": goal, "figure": round(figure, 3), "pass": passed},
        }
        rows.append(
            [
                "offline-cli " + " ".join(argv),
                f"{m_big:.3f}",
                f"{min(big):.3f}",
                f"{m_empty:.3f}",
                f"{min(empty):.3f}",
                fmt_ratio(m_big / m_empty),
                f"{rss[cmd_name]['big'] / 1024:.1f}",
                goal,
                "PASS" if passed else "FAIL",
            ]
        )
    report.data["store"] = {
        "products": n,
        "runs": runs,
        "fill": fills,
        "states_listed": states,
        "commands": results,
    }
    big_fill = fills["big"]
    report.add_table(
        table(
            f"A store of {n:,} entries vs an empty store (median and min of {runs} interleaved "
            "paired runs, wall clock incl. start-up)",
            [
                "command",
                "big s",
                "big min",
                "empty s",
                "empty min",
                "big/empty",
                "RSS MiB",
                "target",
                "",
            ],
            rows,
        )
        + f"\nfilled in {big_fill['wall_s']:.1f} s: "
        + ", ".join(f"{k} {v}" for k, v in big_fill.items() if k not in ("wall_s", "fill_ms"))
        + "\nstate lists: "
        + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    )


# -- main ---------------------------------------------------------------------------------------


SECTIONS = ["downloads", "large", "latency", "startup", "resume", "many", "throttled", "store"]


# --smoke: every section at sizes that take seconds (CI runs it to show the bench works).
SMOKE: dict[str, Any] = {
    "size_mb": 2,
    "large_mb": 4,
    "repeat": 1,
    "runs": 2,
    "products": 20,
    "startup_runs": 2,
    "resume_mb": 1,
    "resume_rate_mb": 2,
    "many_files": 20,
    "many_kib": 4,
    "throttle_files": 2,
    "throttle_kb": 100,
    "throttle_rate_kb": 200,
    "throttle_repeat": 1,
    "store_products": 2000,
    "store_runs": 1,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mb", type=int, default=200, help="large file size (default 200)")
    p.add_argument(
        "--large-mb", type=int, default=1024, help="the largest file of `large` (default 1024)"
    )
    p.add_argument("--repeat", type=int, default=3, help="timed downloads per tool (default 3)")
    p.add_argument("--runs", type=int, default=15, help="runs per latency command (default 15)")
    p.add_argument("--products", type=int, default=1000, help="products in the big store (1000)")
    p.add_argument(
        "--startup-runs", type=int, default=31, help="interleaved rounds of `startup` (31)"
    )
    p.add_argument("--resume-mb", type=float, default=8, help="resume file size (default 8)")
    p.add_argument("--resume-rate-mb", type=float, default=4, help="its rate, MB/s (default 4)")
    p.add_argument("--jobs", type=int, default=8, help="-j for many and throttled (8)")
    p.add_argument("--many-files", type=int, default=1000, help="files in `many` (1000)")
    p.add_argument("--many-kib", type=int, default=16, help="their size, KiB (16)")
    p.add_argument("--throttle-files", type=int, default=24, help="files in `throttled` (24)")
    p.add_argument("--throttle-kb", type=float, default=1000, help="their size, kB (1000)")
    p.add_argument("--throttle-rate-kb", type=float, default=500, help="kB/s per connection (500)")
    p.add_argument(
        "--throttle-repeat", type=int, default=1, help="timed runs per tool, throttled (1)"
    )
    p.add_argument(
        "--store-products", type=int, default=100_000, help="entries of the big store (100000)"
    )
    p.add_argument("--store-runs", type=int, default=5, help="timed runs per store command (5)")
    p.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only these sections (repeatable; default: $BENCH_CASES, comma-separated,\n"
        "else all); memory comes with downloads",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results" / "latest.json",
        help="JSON results (default bench/results/latest.json)",
    )
    p.add_argument("--tmp", type=Path, default=None, help="where the temporary folder goes")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every section at a tiny size, once (CI: shows the bench still works; its\n"
        "figures mean nothing)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    counts = (args.size_mb, args.repeat, args.runs, args.products, args.jobs, args.many_files)
    counts += (args.startup_runs,)
    counts += (args.many_kib, args.throttle_files, args.throttle_repeat)
    counts += (args.store_products, args.store_runs)
    if min(counts) < 1 or min(args.throttle_kb, args.throttle_rate_kb) <= 0:
        p.error("sizes and counts must be >= 1")
    if args.only is None and os.environ.get("BENCH_CASES", "").strip():
        cases = [c.strip() for c in os.environ["BENCH_CASES"].split(",") if c.strip()]
        unknown = [c for c in cases if c not in SECTIONS]
        if unknown:
            p.error(f"BENCH_CASES: unknown {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        args.only = cases
    return args


def meta(args: argparse.Namespace) -> dict[str, Any]:
    version = run([*OFFLINE_CLI, "--version"]).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "offline_cli"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "offline_cli": version,
        "git_commit": commit + ("+dirty" if dirty else ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tools": {
            "curl": tool_version(["curl", "--version"]),
            "wget": tool_version(["wget", "--version"]),
            "aria2c": tool_version(["aria2c", "--version"]),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the finally blocks kill children and servers."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        kill_all_children()
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sections = set(args.only or SECTIONS)
    report = Report()
    started = time.perf_counter()
    with cleanup_on_signals():
        report.data["meta"] = meta(args)
        m = report.data["meta"]
        print(
            f"offline-cli bench  {m['date']}  {m['offline_cli']} ({m['git_commit']})  "
            f"Python {m['python']}  {m['cpus']} CPUs  {m['platform']}",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="offline-cli-bench-", dir=args.tmp) as tmp_name:
            tmp = Path(tmp_name)
            config = tmp / "empty-config.toml"
            config.write_text("")
            if "downloads" in sections:
                bench_downloads(args, tmp, config, report)
            if "latency" in sections:
                bench_latency(args, tmp, config, report)
                bench_importtime(report, tmp / "home-state-1", config)
            if "startup" in sections:
                bench_startup(args, tmp, config, report)
            if "downloads" in sections:
                memory_table(report)
            if "large" in sections:
                bench_large(args, tmp, config, report)
            if "resume" in sections:
                bench_resume(args, tmp, config, report)
            if "many" in sections:
                bench_many(args, tmp, config, report)
            if "throttled" in sections:
                bench_throttled(args, tmp, config, report)
            if "store" in sections:
                bench_store(args, tmp, config, report)
    elapsed = time.perf_counter() - started
    report.data["meta"]["bench_wall_s"] = round(elapsed, 1)
    report.data["notes"] = report.notes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.data, indent=2, default=_json_default) + "\n")
    if report.notes:
        print("\nnotes:\n" + "\n".join(f"- {n}" for n in report.notes))
    print(f"\nbench took {elapsed:.0f} s; results in {_display(args.out)}", flush=True)
    return 0


def _json_default(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[call-overload]
    return str(obj)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
