#!/usr/bin/env python3
"""Where the time of many small downloads goes: ``offline-cli offline -j N -i LIST`` of
``--files`` files of ``--kib`` KiB from the bench's sendfile server, under a profiler.

  .venv/bin/python bench/profile_many.py                       # py-spy, -j 8, 1000 x 16 KiB
  .venv/bin/python bench/profile_many.py --jobs 1 --idle       # wall time of one thread
  .venv/bin/python bench/profile_many.py --profiler cprofile   # in-process, -j 1 only

py-spy (``pip install py-spy``) samples the real command, worker threads included; its
samples are folded into a cumulative time per function (a function counts once per sample
however deep it recurses). By default the samples of threads that run or wait for the GIL
count; ``--gil`` keeps only the thread holding the GIL (the Python CPU time, which with
several jobs is what they queue for); ``--idle`` adds waiting threads (fsync, sockets,
sleeps, locks), which for ``--jobs 1`` is the wall time. cProfile sees only the main
thread, so it needs ``--jobs 1`` (the engine then downloads in the calling thread); it also
gives call counts. The top functions go to stdout, by cumulative and by self time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from run import OFFLINE_CLI, PYTHON, cli_env, serve_files  # noqa: E402
from sendfile_server import SendfileServer  # noqa: E402

PY_SPY = shutil.which("py-spy", path=f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}")


def fold(raw: str, rate: int) -> dict[str, tuple[float, float]]:
    """function -> (cumulative s, self s) from py-spy's raw (collapsed) stacks."""
    cumulative: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        # the first frame names the process or thread when py-spy adds one
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        for frame in set(frames):
            cumulative[frame] += count
        if frames:
            own[frames[-1]] += count
    return {f: (n / rate, own[f] / rate) for f, n in cumulative.items()}


def shorten(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3", str(BENCH_DIR.parent) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/lib/python3":
                where = "stdlib" + where[where.index("/") :]
            break
    return f"{name} ({where})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--kib", type=int, default=16)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--profiler", choices=["py-spy", "cprofile"], default="py-spy")
    p.add_argument("--idle", action="store_true", help="py-spy: count waiting threads too")
    p.add_argument("--gil", action="store_true", help="py-spy: only the thread holding the GIL")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples a second (250)")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    if args.profiler == "cprofile" and args.jobs != 1:
        p.error("cProfile sees only the main thread: use --jobs 1")
    if args.profiler == "py-spy" and PY_SPY is None:
        p.error("py-spy not found: pip install py-spy, or --profiler cprofile --jobs 1")

    with tempfile.TemporaryDirectory(prefix="offline-cli-profile-") as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "empty-config.toml"
        config.write_text("")
        names = serve_files(tmp / "serve", args.files, args.kib * 1024, "f")
        env = cli_env(tmp / "home", config)
        with SendfileServer(tmp / "serve") as server:
            listing = tmp / "list.txt"
            listing.write_text("".join(server.url(n) + "\n" for n in names))
            cli = ["-q", "offline", "-j", str(args.jobs), "-i", str(listing)]
            started = time.perf_counter()
            if args.profiler == "py-spy":
                raw = tmp / "stacks.txt"
                cmd = [PY_SPY, "record", "-r", str(args.rate), "-f", "raw", "--function"]
                cmd += ["--idle"] if args.idle else []
                cmd += ["--gil"] if args.gil else []
                cmd += ["-o", str(raw), "--", *OFFLINE_CLI, *cli]
                subprocess.run(cmd, env=env, check=True, capture_output=True)
            else:
                stats_file = tmp / "profile.pstats"
                cmd = [PYTHON, "-m", "cProfile", "-o", str(stats_file), "-m", "offline_cli"]
                subprocess.run([*cmd, *cli], env=env, check=True)
            wall = time.perf_counter() - started
        stored = sum(1 for p in (tmp / "home" / "store").rglob("*") if p.is_file())
        print(
            f"offline-cli -j {args.jobs}: {args.files} x {args.kib} KiB in {wall:.2f} s under "
            f"{args.profiler} ({stored} stored; {1000 * wall / args.files:.1f} ms/product)"
        )
        if args.profiler == "py-spy":
            folded = fold(raw.read_text(), args.rate)
            if args.gil:
                kind = "holding the GIL (Python on CPU)"
            elif args.idle:
                kind = "wall (waiting included)"
            else:
                kind = "running or waiting for the GIL"
            for order, label in ((0, "cumulative"), (1, "self")):
                ranked = sorted(folded.items(), key=lambda kv: kv[1][order], reverse=True)
                print(f"\ntop {args.top} by {label} time, {kind}, summed over threads")
                print(f"{'cum s':>8} {'self s':>7} {'cum ms/product':>14}  function")
                for frame, (cum, own) in ranked[: args.top]:
                    per = 1000 * cum / args.files
                    print(f"{cum:8.2f} {own:7.2f} {per:14.2f}  {shorten(frame)}")
        else:
            stats = pstats.Stats(str(stats_file))
            stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
