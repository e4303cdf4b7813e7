"""Parallel downloads (-j) and the shared rate limit (--limit-rate), with real processes and
threads: many products at once through faults and kill -9, Ctrl-C and SIGTERM with several
downloads running, two processes on overlapping lists, the store written from many threads
and processes at once, and the token bucket under an injected clock.

Every child runs ``python -m offline_cli`` against the shared loopback NetSim (``sim``);
tests wait by polling the server, the database or the files, never by fixed sleeps.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offline_cli.paths import Layout
from offline_cli.ratelimit import BURST_S, MIN_BURST_BYTES, RateLimiter
from offline_cli.store import Store
from tests.conftest import new_download
from tests.netsim import Fault, NetSim, Resource, wait_for
from tests.procutil import Child, Procs, integrity, partial_files, query, stored_media

KB = 1000
# Retries in milliseconds: a cut body is taken up again at once, not after a second.
FAST_RETRIES = {"OFFLINE_CLI_BACKOFF_BASE": "0.02", "OFFLINE_CLI_BACKOFF_MAX": "0.1"}


def _until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    assert wait_for(predicate, timeout=timeout, interval=0.02), f"timed out waiting for {what}"


def _spawn(procs: Procs, *args: str, jobs: int, limit_rate: str | None = None) -> Child:
    """Start ``offline``/``resume`` with ``-j jobs`` (and ``--limit-rate``)."""
    options = ["-j", str(jobs)] + (["--limit-rate", limit_rate] if limit_rate else [])
    return procs.spawn(*args, *options)


def _run(procs: Procs, *args: str, jobs: int) -> subprocess.CompletedProcess[str]:
    child = _spawn(procs, *args, jobs=jobs)
    code = child.wait()
    return subprocess.CompletedProcess(child.popen.args, code, child.stdout(), child.stderr())


def _list_file(tmp_path: Path, name: str, urls: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{url}\n" for url in urls))
    return path


def _entries(home: Path) -> list[dict[str, Any]]:
    """Every download entry, with the bytes of its media on disk: the partial file, or the
    final file of a kill between the commit's rename and its database write (0: none)."""
    layout = Layout(home)
    sizes = {p.name[:32]: p.stat().st_size for p in partial_files(home) if p.is_file()}
    rows = query(home, "SELECT id, product_key, state, error_kind FROM download_entries")
    for row in rows:
        row["on_disk"] = sizes.get(row["id"], 0)
        if row["on_disk"] == 0 and row["state"] == "IN_PROGRESS":
            final = layout.final_media_path(row["product_key"], row["id"])
            row["on_disk"] = final.stat().st_size if final.is_file() else 0
    return rows


def _state_json(procs: Procs) -> dict[str, dict[str, Any]]:
    result = procs.run("state", "--json")
    assert result.returncode == 0, result.stderr
    return {row["product"]: row for row in json.loads(result.stdout)}


def _no_traceback(*children: Child | subprocess.CompletedProcess[str]) -> None:
    for child in children:
        err = child.stderr() if isinstance(child, Child) else child.stderr
        assert "Traceback" not in err, err


# -- 1. fifty products, faults, kill -9, resume ----------------------------------------------------


def test_fifty_products_with_faults_survive_kill9_and_resume(
    sim: NetSim, procs: Procs, home: Path, tmp_path: Path
) -> None:
    rng = random.Random(1)
    procs.extra_env.update(FAST_RETRIES)
    paths = [f"/p{i:02d}" for i in range(50)]
    # The faulty products come early in the list, so they are all taken up before the kill.
    missing = {paths[i] for i in (1, 4, 7, 10, 13)}
    cut = {paths[i] for i in (2, 5, 8, 11, 14)}
    changed = paths[3]
    bodies: dict[str, bytes] = {}
    cut_at: dict[str, int] = {}
    for path in paths:
        if path in missing:
            continue  # no resource: 404
        body = rng.randbytes(rng.randrange(100 * KB, 200 * KB))
        resource = sim.add(path, Resource(body, rate=400 * KB))
        bodies[path] = body
        if path in cut:
            cut_at[path] = len(body) // 2
            resource.faults.append(Fault("cut", at=cut_at[path]))
        if path == changed:
            # The first try is cut; when the client asks for the rest (If-Range: the old
            # ETag) the file has changed on the server: it must start over on the new one.
            cut_at[path] = len(body) // 3
            new_body = rng.randbytes(len(body) + 5 * KB)
            resource.faults += [Fault("cut", at=cut_at[path]), Fault("change", body=new_body)]
            bodies[path] = new_body
    urls = {path: sim.url(path) for path in paths}
    key_path = {url: path for path, url in urls.items()}
    products = _list_file(tmp_path, "products.txt", [urls[p] for p in paths])

    child = _spawn(procs, "offline", "-i", str(products), jobs=8)
    # Kill in the middle: the 404s have failed, some products are done, several are
    # running with bytes on disk, and some have not started yet.
    seen_running: list[int] = []

    def middle() -> bool:
        rows = _entries(home)
        failed = {key_path[r["product_key"]] for r in rows if r["state"] == "FAILED"}
        done = sum(r["state"] == "COMPLETED" for r in rows)
        running = [r for r in rows if r["state"] == "IN_PROGRESS" and r["on_disk"] > 0]
        seen_running.append(len(running))
        return missing <= failed and done >= 10 and len(running) >= 3 and len(rows) < 45

    _until(lambda: middle() or not child.running(), "the middle of the run")
    assert child.running(), f"the run ended before the kill: {child.stderr()}"
    child.popen.kill()
    assert child.wait(10) == -signal.SIGKILL
    # -j 8: several products were running at once
    assert max(seen_running) >= 3

    at_kill = {key_path[r["product_key"]]: r for r in _entries(home)}
    assert sim.wait_idle()
    sent_at_kill = {path: sim.bytes_sent(path) for path in paths}
    interrupted = {p for p, r in at_kill.items() if r["state"] == "IN_PROGRESS"}
    assert len(interrupted) >= 3
    assert sum(at_kill[p]["on_disk"] > 0 for p in interrupted) >= 3
    for path in missing:
        assert at_kill[path]["error_kind"] == "permanent"
        assert len(sim.requests(path)) == 1, f"{path} was requested again after its 404"
    log_at_kill = len(sim.log)

    resumed = _run(procs, "resume", jobs=4)
    _no_traceback(resumed)
    # The README: resume continues interrupted, paused and retryable failed downloads; a
    # permanent failure (the 404s) is not one of them, so nothing failed here: exit 0.
    assert resumed.returncode == 0, resumed.stderr
    assert sim.wait_idle()
    resume_log = sim.log[log_at_kill:]
    resumed_paths = {s.path for s in resume_log}
    assert not resumed_paths & missing, "resume asked again for a product that answered 404"
    # Only what was unfinished at the kill (and nothing that was done) was fetched; a body
    # already whole on disk (killed before its commit) needs no request at all.
    unfinished = {p for p, r in at_kill.items() if r["state"] in ("IN_PROGRESS", "PAUSED")}
    assert resumed_paths <= unfinished
    assert {p for p in unfinished if at_kill[p]["on_disk"] < len(bodies[p])} <= resumed_paths
    for path in interrupted:
        on_disk = at_kill[path]["on_disk"]
        if path in resumed_paths and on_disk and path != changed:
            first = next(s for s in resume_log if s.path == path)
            assert first.range == f"bytes={on_disk}-", (path, first)
        assert stored_media(home, urls[path]) == bodies[path], path

    # Products the killed run never reached are not known to `resume`: run the list again.
    log_at_second = len(sim.log)
    again = _run(procs, "offline", "-i", str(products), jobs=4)
    _no_traceback(again)
    assert again.returncode == 1, again.stderr  # the 404s
    assert sim.wait_idle()
    for path in missing:
        assert f"{urls[path]}: HTTP 404" in again.stderr
        assert sum(s.path == path for s in sim.log[log_at_second:]) == 1
    fetched_again = {s.path for s in sim.log[log_at_second:]} - missing
    assert fetched_again == set(paths) - set(at_kill)

    states = _state_json(procs)
    for path in paths:
        row = states[urls[path]]
        if path in missing:
            assert row["state"] == "NOT_OFFLINED"
            assert row["download"]["state"] == "FAILED"
            continue
        assert row["state"] == "OFFLINED_AND_VALID", row
        assert row["download"]["state"] == "COMPLETED"
        assert stored_media(home, urls[path]) == bodies[path], path
        # Nothing fetched twice beyond what was in flight at the kill: bytes the server
        # sent before the kill that never reached the disk.
        lost = sent_at_kill[path] - at_kill[path]["on_disk"] if path in interrupted else 0
        size = len(bodies[path])
        if path == changed:
            # the old version's first bytes, then the new file once
            assert sim.bytes_sent(path) <= cut_at[path] + size + lost, path
        else:
            assert sim.bytes_sent(path) <= size + lost, (path, sim.bytes_sent(path), size, lost)
        if path not in interrupted and path not in cut and path != changed:
            assert sim.bytes_sent(path) == size, path  # fetched once, in one piece
    # a cut body was taken up again from where it stopped, not from zero
    for path in cut:
        assert f"bytes={cut_at[path]}-" in [s.range for s in sim.requests(path)], path
    # the changed file: asked for the rest with If-Range, it got the whole new version
    tries = [(s.status, s.range is not None, s.if_range is not None) for s in sim.requests(changed)]
    assert tries[:2] == [(200, False, False), (200, True, True)], tries
    assert partial_files(home) == []
    assert integrity(home) == "ok"


# -- 2. the rate limit is shared by all downloads ----------------------------------------------


def test_limit_rate_holds_across_parallel_downloads(
    sim: NetSim, procs: Procs, home: Path, tmp_path: Path
) -> None:
    limit = 512 * 1024  # 512k: K = 1024, as curl counts
    size = 600 * KB  # 2.4 MB in all: about 4.6 s at the limit
    bodies = {f"/r{i}": os.urandom(size) for i in range(4)}
    for path, body in bodies.items():
        sim.add(path, Resource(body))
    products = _list_file(tmp_path, "products.txt", [sim.url(p) for p in bodies])

    child = _spawn(procs, "offline", "-i", str(products), jobs=4, limit_rate="512k")
    # From the first request the server sees to the moment the client has exited: what
    # the kernel's socket buffers hold is not "sent" until the client has read it all.
    _until(lambda: sim.active > 0 or bool(sim.log) or not child.running(), "the first request")
    started = time.monotonic()
    most = [0]

    def finished() -> bool:
        # the client side: the kernel may hold a whole body the server "sent" at once
        running = [r for r in _entries(home) if r["state"] == "IN_PROGRESS" and r["on_disk"]]
        most[0] = max(most[0], len(running))
        return not child.running()

    _until(finished, "the downloads", timeout=30)
    elapsed = time.monotonic() - started
    assert child.wait() == 0, child.stderr()
    _no_traceback(child)
    assert most[0] == 4, "the four downloads did not run at once"
    assert sim.wait_idle()
    total = sum(sim.bytes_sent(p) for p in bodies)
    assert total == 4 * size
    rate = total / elapsed
    assert 0.9 * limit <= rate <= 1.1 * limit, f"{rate / 1024:.0f} KiB/s for a 512 KiB/s limit"
    for path, body in bodies.items():
        assert stored_media(home, sim.url(path)) == body


# -- 3. Ctrl-C and SIGTERM with eight downloads running ----------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_pauses_every_running_download_then_resume_completes_them(
    sim: NetSim, procs: Procs, home: Path, tmp_path: Path, signum: int, code: int
) -> None:
    size = 400 * KB
    bodies = {f"/s{i}": os.urandom(size) for i in range(8)}
    resources = [sim.add(path, Resource(body, rate=100 * KB)) for path, body in bodies.items()]
    urls = {path: sim.url(path) for path in bodies}
    products = _list_file(tmp_path, "products.txt", list(urls.values()))

    child = _spawn(procs, "offline", "-i", str(products), jobs=8)

    def all_running() -> bool:
        rows = _entries(home)
        return len(rows) == 8 and all(
            r["state"] == "IN_PROGRESS" and r["on_disk"] > 0 for r in rows
        )

    # All eight at once, each with bytes on disk: -j 8 runs them side by side.
    _until(lambda: all_running() or not child.running(), "eight downloads running at once")
    assert child.running(), child.stderr()
    child.popen.send_signal(signum)
    assert child.wait(15) == code, child.stderr()
    _no_traceback(child)
    assert "PAUSED" in child.stderr()

    rows = _entries(home)
    assert len(rows) == 8
    assert {r["state"] for r in rows} == {"PAUSED"}, rows  # none FAILED, none CANCELLED
    states = _state_json(procs)
    on_disk: dict[str, int] = {}
    for path, url in urls.items():
        row = states[url]
        assert row["state"] == "NOT_OFFLINED"
        assert row["download"]["state"] == "PAUSED", row
        entry = next(r for r in rows if r["product_key"] == url)
        assert 0 < entry["on_disk"] < size, entry  # the partial bytes are kept
        on_disk[path] = entry["on_disk"]

    assert sim.wait_idle()
    sent_before = {path: sim.bytes_sent(path) for path in bodies}
    for resource in resources:
        resource.rate = None  # the rest comes at full speed
    resumed = _run(procs, "resume", jobs=8)
    assert resumed.returncode == 0, resumed.stderr
    _no_traceback(resumed)
    assert sim.wait_idle()
    states = _state_json(procs)
    for path, url in urls.items():
        assert states[url]["state"] == "OFFLINED_AND_VALID"
        assert stored_media(home, url) == bodies[path]
        # resumed from the bytes kept, by range: only the missing bytes came again
        assert sim.requests(path)[-1].range == f"bytes={on_disk[path]}-"
        assert sim.bytes_sent(path) - sent_before[path] == size - on_disk[path]
    assert partial_files(home) == []
    assert integrity(home) == "ok"


# -- 4. two processes, overlapping lists ---------------------------------------------------------


def test_two_processes_with_overlapping_lists_download_each_product_once(
    sim: NetSim, procs: Procs, home: Path, tmp_path: Path
) -> None:
    size = 150 * KB
    bodies = {f"/o{i:02d}": os.urandom(size) for i in range(1, 19)}
    for path, body in bodies.items():
        sim.add(path, Resource(body, rate=200 * KB))  # 0.75 s each
    urls = {path: sim.url(path) for path in bodies}
    ordered = list(urls.values())
    # Both start with the shared products 7-12, so they meet on them at once.
    list_a = _list_file(tmp_path, "a.txt", ordered[6:12] + ordered[0:6])
    list_b = _list_file(tmp_path, "b.txt", ordered[6:18])

    first = _spawn(procs, "offline", "-i", str(list_a), jobs=4)
    second = _spawn(procs, "offline", "-i", str(list_b), jobs=4)
    assert first.wait() == 0, first.stderr()
    assert second.wait() == 0, second.stderr()
    _no_traceback(first, second)
    # They did meet: one waited for a product the other was downloading.
    errors = first.stderr() + second.stderr()
    assert "downloaded by another process" in errors, errors

    assert sim.wait_idle()
    for path, body in bodies.items():
        served = sim.requests(path)
        assert [(s.status, s.range, s.bytes_sent) for s in served] == [(200, None, size)], path
        assert stored_media(home, urls[path]) == body
        assert (
            len(query(home, "SELECT id FROM download_entries WHERE product_key = ?", (urls[path],)))
            == 1
        )
    states = _state_json(procs)
    assert {row["state"] for row in states.values()} == {"OFFLINED_AND_VALID"}
    assert len(states) == 18
    assert integrity(home) == "ok"


# -- 5. the store from many threads and processes ------------------------------------------------

_WRITER = """
import sys, threading, time
from pathlib import Path
from offline_cli.store import Store

path, go, rounds, ids = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
errors = []

def write(download_id):
    store = Store(path)  # one Store per thread in this process
    try:
        while not go.exists():
            time.sleep(0.005)
        for n in range(1, rounds + 1):
            store.downloads.update_progress(download_id, bytes_done=n, bytes_total=rounds)
    except BaseException as exc:
        errors.append(repr(exc))
    finally:
        store.close()

threads = [threading.Thread(target=write, args=(i,)) for i in ids]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(errors), file=sys.stderr)
sys.exit(1 if errors else 0)
"""

_READER = """
import sys
from pathlib import Path
from offline_cli.engine import OfflineEngine

home, ready, stop = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
expected, rounds = int(sys.argv[4]), int(sys.argv[5])
last = {}
reads = midway = 0
while not stop.exists():
    with OfflineEngine(home) as engine:
        statuses = engine.product_statuses(with_downloads=True)
    assert len(statuses) == expected, len(statuses)
    done = [status.download.bytes_done or 0 for status in statuses]
    for status, now in zip(statuses, done):
        # progress is only ever written upwards: a reader never sees it go back
        assert now >= last.get(status.key, 0), (status.key, now, last.get(status.key))
        last[status.key] = now
    reads += 1
    midway += any(0 < n < rounds for n in done)
    ready.touch()
print(reads, midway)
"""


def test_store_is_safe_across_threads_and_processes(
    procs: Procs, home: Path, tmp_path: Path
) -> None:
    rounds = 30
    layout = Layout(home)
    layout.ensure()
    store = Store(layout.database)
    ids: list[str] = []
    for i in range(32):
        ids.append(new_download(store, f"track:{i}").id)
    mine, theirs = ids[:16], ids[16:]

    ready, go, stop = tmp_path / "ready", tmp_path / "go", tmp_path / "stop"
    env = procs.env()
    python = [sys.executable, "-c"]
    reader = subprocess.Popen(
        [*python, _READER, str(home), str(ready), str(stop), str(len(ids)), str(rounds)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = subprocess.Popen(
        [*python, _WRITER, str(layout.database), str(go), str(rounds), *theirs],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Eight threads of this process share one Store (each gets its own connection
        # inside it), and write progress of two entries each.
        errors: list[BaseException] = []

        def write(chunk: list[str]) -> None:
            try:
                assert wait_for(go.exists, timeout=30)
                for n in range(1, rounds + 1):
                    for download_id in chunk:
                        store.downloads.update_progress(
                            download_id, bytes_done=n, bytes_total=rounds
                        )
            except BaseException as exc:
                errors.append(exc)
            finally:
                store.close()  # this thread's connection

        threads = [threading.Thread(target=write, args=(mine[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        _until(lambda: ready.exists() or reader.poll() is not None, "the reader's first read")
        go.touch()  # all writers at once, while the reader reads in its loop
        cli_reads = 0
        # and the real command line reads too, while they write
        while cli_reads == 0 or any(t.is_alive() for t in threads):
            result = procs.run("state", "--json")
            assert result.returncode == 0, result.stderr
            assert len(json.loads(result.stdout)) == len(ids)
            cli_reads += 1
        for thread in threads:
            thread.join()
        assert errors == []
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
        if writer.poll() is None:
            writer.kill()
    assert reader.returncode == 0, err
    reads, midway = map(int, out.split())
    assert midway >= 1, f"the reader never read while progress was being written ({reads})"
    for download_id in ids:
        entry = store.get_download(download_id)
        assert entry is not None
        assert (entry.bytes_done, entry.bytes_total, entry.progress) == (rounds, rounds, 1.0)
    store.close()
    assert integrity(home) == "ok"


# -- 6. RateLimiter with an injected clock ---------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "chunk"),
    [(512 * 1024, 16 * 1024), (100 * 1024, 64 * 1024), (10 * 1024 * 1024, 65536), (1000, 100)],
)
def test_rate_limiter_average_equals_the_limit(rate: int, chunk: int) -> None:
    clock = _Clock()
    limiter = RateLimiter(rate, monotonic=clock)
    start = clock.now
    total = 0
    while total < 200 * limiter.burst:  # long enough that the first burst weighs 0.5%
        clock.now += limiter.consume(chunk)  # the caller waits what it is told
        total += chunk
    elapsed = clock.now - start
    # the bucket's first fill is free; the rest is paid at exactly the limit
    assert elapsed == pytest.approx((total - limiter.burst) / rate, rel=1e-9, abs=1e-9)
    assert total / elapsed == pytest.approx(rate, rel=0.01)


def test_rate_limiter_does_not_slow_a_reader_under_the_limit() -> None:
    clock = _Clock()
    limiter = RateLimiter(1_000_000, monotonic=clock)
    for _ in range(1000):
        assert limiter.consume(1000) == 0.0
        clock.now += 0.002  # 500 kB/s: half the limit


def test_rate_limiter_burst_is_bounded() -> None:
    for rate in (1000, 100 * 1024, 512 * 1024, 50 * 1024 * 1024):
        clock = _Clock()
        limiter = RateLimiter(rate, monotonic=clock)
        assert limiter.burst == max(MIN_BURST_BYTES, rate * BURST_S)
        clock.now += 3600  # a long idle time does not save up more than the bucket
        free = 0
        while limiter.consume(1024) == 0.0:
            free += 1024
        assert limiter.burst - 1024 <= free <= limiter.burst
        # one read larger than the bucket goes through, and is paid for by the next one
        clock.now += 3600
        assert limiter.consume(int(10 * limiter.burst)) == pytest.approx(9 * limiter.burst / rate)


def test_rate_limiter_counts_every_byte_under_many_threads() -> None:
    frozen = _Clock()
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] % 7 == 0:
            time.sleep(0)  # let another thread in, inside consume
        return frozen()

    rate = 1_000_000
    limiter = RateLimiter(rate, monotonic=clock)
    threads, per_thread, nbytes = 16, 500, 100
    start = threading.Barrier(threads)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def run() -> None:
        start.wait()
        for _ in range(per_thread):
            limiter.consume(nbytes)

    try:
        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch)
    # The clock never moved: the debt is every byte taken beyond the bucket, to the byte.
    debt = threads * per_thread * nbytes - limiter.burst
    assert limiter.consume(0) == debt / rate


# -- review fixes: what a signal says about a batch, long names, rates, -i twice -----------------


def test_signal_names_the_products_that_never_started(
    sim: NetSim, procs: Procs, home: Path, tmp_path: Path
) -> None:
    """`resume` knows only downloads that started: the message says how to finish the rest."""
    urls = []
    for i in range(6):
        sim.add(f"/n{i}", Resource(os.urandom(300 * KB), rate=60 * KB))
        urls.append(sim.url(f"/n{i}"))
    child = _spawn(procs, "offline", "-i", str(_list_file(tmp_path, "l.txt", urls)), jobs=2)
    _until(
        lambda: sum(1 for r in _entries(home) if r["on_disk"] > 0) == 2 or not child.running(),
        "two downloads running",
    )
    child.popen.send_signal(signal.SIGINT)
    assert child.wait(15) == 130, child.stderr()
    assert "4 product(s) not started: run the same command again" in child.stderr()
    assert len(_entries(home)) == 2


def test_progress_rows_keep_their_columns_with_a_long_name(sim: NetSim, home: Path) -> None:
    """On a terminal a 200-character signed URL is shortened, so bytes and speed still show."""
    import pty

    long_query = "?Signature=" + "x" * 200
    sim.add("/long.bin", Resource(os.urandom(200 * KB), rate=200 * KB))
    url = sim.url("/long.bin") + long_query
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLINE_CLI_")}
    env.update({"OFFLINE_CLI_HOME": str(home), "COLUMNS": "80", "TERM": "xterm"})
    main, child_end = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline_cli", "offline", url],
        stdin=child_end,
        stdout=child_end,
        stderr=child_end,
        env=env,
        close_fds=True,
    )
    os.close(child_end)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert proc.wait(30) == 0, output
    text = output.decode("utf-8", "replace")
    assert "…" in text  # the name was shortened in the middle
    assert "kB" in text and "/s" in text, text[-2000:]  # and the columns are there


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.5", "less than 1 byte a second"),
        ("2MB", "a number, or with k, M or g"),
        ("-1k", "malformed rate"),
        ("inf", "malformed rate"),
    ],
)
def test_bad_rates_are_refused_with_the_accepted_forms(
    cli, home: Path, value: str, message: str
) -> None:
    result = cli("offline", "--limit-rate", value, "http://127.0.0.1:9/x")
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (home / "offline.db").exists()  # nothing was done


def test_a_rate_in_the_config_file_may_be_a_number_or_a_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offline_cli.config import load_settings

    config = tmp_path / "config.toml"
    monkeypatch.setenv("OFFLINE_CLI_CONFIG", str(config))
    for text, rate in (("1.5", 1), ("2048", 2048), ('"2M"', 2 << 20), ('"1.5k"', 1536)):
        config.write_text(f"limit_rate = {text}\n")
        assert load_settings(tmp_path / "home").limit_rate == rate, text


def test_input_may_be_given_several_times(cli, sim: NetSim, home: Path, tmp_path: Path) -> None:
    urls = []
    for i in range(3):
        sim.add(f"/i{i}", Resource(os.urandom(10 * KB)))
        urls.append(sim.url(f"/i{i}"))
    first = _list_file(tmp_path, "a.txt", urls[:1])
    second = _list_file(tmp_path, "b.txt", urls[1:2])
    result = cli("offline", "-i", str(first), "-i", str(second), urls[2])
    assert result.exit_code == 0, result.output
    for url in urls:
        assert cli("state", url).stdout.strip() == "OFFLINED_AND_VALID"
