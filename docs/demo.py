"""`make demo`: offline-cli against a loopback server that misbehaves, as a shell transcript.

No internet is needed. The demo starts two small HTTP hosts on 127.0.0.1 (a playback-info
source with media and licenses, and a mirror host for one video), each with a fault to show:

- track:1: the connection is cut a third of the way in (a retry resumes by range);
- track:2: the first answer is 503 with ``Retry-After: 1`` (honoured);
- video:3: its host goes down for a few seconds mid-way (the download pauses, then continues);
- file:4: a slow server (a couple of hundred KB/s);
- video:5: the download is killed with SIGKILL mid-way, then ``offline-cli resume`` finishes it.

It runs the real console script (the ``offline-cli`` beside this Python, else the one on
PATH) in a temporary OFFLINE_CLI_HOME, echoing each command as ``$ offline-cli ...``; the
commands' own output (progress bars on a terminal, plain lines when piped) follows. Lines
starting with ``#`` are the demo's comments: what the server did, and what the demo checked.
It exits 1 when a step does not do what it should, 130/143 on Ctrl-C/SIGTERM, and always
removes its temporary folder, stops its hosts and kills any offline-cli it started.

Standard library only (http.server with threads): it must run wherever offline-cli does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

KIB = 1024
MIB = 1024 * KIB
CHUNK = 16 * KIB
# How long the mirror host stays down: a few probes of the network monitor (one a second).
OUTAGE_S = 3.0
# Where video:5 is killed: this share of it sent by the server.
KILL_AT = 0.4
# A bound on any one command, so a broken build cannot hang the demo (or CI) for ever.
COMMAND_TIMEOUT_S = 120.0
# How long an interrupted offline-cli gets to save its download before it is killed.
STOP_GRACE_S = 10.0
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
_RANGE_RE = re.compile(r"bytes=(\d+)-$")
MIME_TYPES = {"tracks": "audio/flac", "videos": "video/mp4", "files": "application/pdf"}


class DemoFailed(Exception):
    """A step did not do what the demo says it does: the demo exits 1."""


class Stopped(Exception):
    """SIGTERM or SIGHUP: clean up and exit like offline-cli does (143)."""


@dataclass
class Media:
    """One product's file on a host, with the fault the demo shows on it."""

    product: str  # TYPE:ID
    name: str  # the file name in its URL
    size: int
    rate: float  # bytes a second: slow enough that progress is visible
    fault: str = ""  # "cut", "503", "outage", "" (none)
    license: bool = False
    body: bytes = b""
    etag: str = ""
    sent: int = 0  # bytes of the body sent so far, over every request
    fault_used: bool = False

    def __post_init__(self) -> None:
        self.body = random.Random(self.name).randbytes(self.size)
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclass
class Host:
    """A threaded HTTP/1.1 server on 127.0.0.1 that can go down and come back on its port."""

    demo: DemoServer
    port: int = 0
    server: http.server.ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    down: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        handler = _handler_for(self)
        # The port is given again when the host comes back; a moment after it went down the
        # bind can fail, so it is tried for a little while.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self.server = server
        self.down.clear()
        self.thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Refuse new connections and cut the ones being served (they see the down flag)."""
        self.down.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class DemoServer:
    """The playback-info source, media and licenses, on a main host and a mirror host."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[str] = []  # what the server did, told after each command
        self.ranges: dict[str, list[int]] = {}  # media name: the start of each range asked
        self.closing = threading.Event()  # cleanup: no host comes back after this
        self.main = Host(self)
        self.mirror = Host(self)
        self.media = [
            Media("track:1", "track-1.flac", 3 * MIB, 1.5 * MIB, fault="cut", license=True),
            Media("track:2", "track-2.flac", 2 * MIB, 1.5 * MIB, fault="503", license=True),
            Media("video:3", "video-3.mp4", 4 * MIB, 1.5 * MIB, fault="outage"),
            Media("file:4", "manual.pdf", 1 * MIB, 200 * KIB),
            Media("video:5", "video-5.mp4", 6 * MIB, 1.5 * MIB),
        ]
        self.outage: threading.Thread | None = None

    def start(self) -> None:
        self.main.start()
        self.mirror.start()

    def close(self) -> None:
        self.closing.set()
        if self.outage is not None:
            self.outage.join()  # it brings its host back only when not closing
        self.main.stop()
        self.mirror.stop()

    def by_product(self, product: str) -> Media:
        return next(m for m in self.media if m.product == product)

    def host_of(self, media: Media) -> Host:
        return self.mirror if media.fault == "outage" else self.main

    def media_url(self, media: Media) -> str:
        return f"{self.host_of(media).url}/media/{media.name}"

    def note(self, text: str) -> None:
        with self.lock:
            self.events.append(text)

    def take_events(self) -> list[str]:
        with self.lock:
            events, self.events = self.events, []
        return events

    def sent(self, media: Media) -> int:
        with self.lock:
            return media.sent

    # -- answers ---------------------------------------------------------------------------

    def playback_info(self, kind: str, pid: str) -> bytes | None:
        product = f"{kind.removesuffix('s')}:{pid}"
        media = next((m for m in self.media if m.product == product), None)
        if media is None:
            return None
        info: dict[str, object] = {
            "productType": kind.removesuffix("s").upper(),
            "productId": pid,
            "manifestMimeType": MIME_TYPES.get(kind, "application/octet-stream"),
            "url": self.media_url(media),
            "sha256": hashlib.sha256(media.body).hexdigest(),
            "size": media.size,
        }
        if media.license:
            info["licenseUrl"] = f"{self.main.url}/license/{media.name}"
            info["licenseExpiresAt"] = "2099-01-01T00:00:00Z"
        return json.dumps(info).encode()

    def serve_media(self, req: http.server.BaseHTTPRequestHandler, host: Host, name: str) -> None:
        media = next((m for m in self.media if m.name == name), None)
        if media is None or self.host_of(media) is not host:
            _answer(req, 404, b"not found")
            return
        with self.lock:
            first = not media.fault_used
            media.fault_used = True
        if first and media.fault == "503":
            self.note(f"{media.name}: answered 503 Service Unavailable, Retry-After: 1")
            _answer(req, 503, b"busy", {"Retry-After": "1"})
            return
        start = 0
        match = _RANGE_RE.match(req.headers.get("Range") or "")
        if_range = req.headers.get("If-Range")
        if match and (if_range is None or if_range == media.etag):
            start = min(int(match.group(1)), media.size)
            with self.lock:
                self.ranges.setdefault(media.name, []).append(start)
            self.note(f"{media.name}: asked for bytes {start}- (a resume), sent 206")
        status = 206 if start else 200
        headers = {
            "Content-Length": str(media.size - start),
            "Accept-Ranges": "bytes",
            "ETag": media.etag,
            "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT",
        }
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{media.size - 1}/{media.size}"
        req.send_response(status)
        for name_, value in headers.items():
            req.send_header(name_, value)
        req.end_headers()
        cut_at = media.size // 3 if first and media.fault == "cut" else None
        outage_at = media.size * 3 // 8 if first and media.fault == "outage" else None
        self._send_body(req, host, media, start, cut_at, outage_at)

    def _send_body(
        self,
        req: http.server.BaseHTTPRequestHandler,
        host: Host,
        media: Media,
        start: int,
        cut_at: int | None,
        outage_at: int | None,
    ) -> None:
        position = start
        try:
            while position < media.size:
                if host.down.is_set():
                    break  # the host "went away": the connection ends short
                if cut_at is not None and position >= cut_at:
                    self.note(f"{media.name}: cut the connection after {_mb(position)}")
                    break
                if outage_at is not None and position >= outage_at:
                    self.go_down(host, media, position)
                    break
                piece = media.body[position : position + CHUNK]
                req.wfile.write(piece)
                req.wfile.flush()
                position += len(piece)
                with self.lock:
                    media.sent += len(piece)
                time.sleep(len(piece) / media.rate)
        except OSError:
            pass  # the client went away (killed): nothing to tell
        if position < media.size:
            req.close_connection = True
            with contextlib.suppress(OSError):
                req.connection.shutdown(socket.SHUT_RDWR)

    def go_down(self, host: Host, media: Media, position: int) -> None:
        """Take ``host`` off the network for OUTAGE_S seconds, then bring it back."""
        self.note(
            f"{media.name}: host 127.0.0.1:{host.port} went down after {_mb(position)}, "
            f"for {OUTAGE_S:.0f} s"
        )
        host.down.set()

        def outage() -> None:
            assert host.server is not None
            host.server.shutdown()
            host.server.server_close()
            host.server = None
            if self.closing.wait(OUTAGE_S):
                return
            host.start()
            self.note(f"host 127.0.0.1:{host.port} is back")

        self.outage = threading.Thread(target=outage, daemon=True)
        self.outage.start()


def _handler_for(host: Host) -> type[http.server.BaseHTTPRequestHandler]:
    demo = host.demo

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # the demo tells what matters itself

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            parts = path.strip("/").split("/")
            if parts[:1] == ["media"] and len(parts) == 2:
                demo.serve_media(self, host, parts[1])
            elif host is demo.main and parts[:1] == ["license"] and len(parts) == 2:
                _answer(self, 200, f'{{"license": "demo", "for": "{parts[1]}"}}'.encode())
            elif host is demo.main and len(parts) == 4 and parts[0] == "v1":
                info = demo.playback_info(parts[1], parts[2])
                if info is None:
                    _answer(self, 404, b"no such product")
                else:
                    _answer(self, 200, info, {"Content-Type": "application/json"})
            else:
                _answer(self, 404, b"not found")

    return Handler


def _answer(
    req: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    req.send_response(status)
    for name, value in (headers or {}).items():
        req.send_header(name, value)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    with contextlib.suppress(OSError):
        req.wfile.write(body)


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


# -- the transcript ----------------------------------------------------------------------------


def say(line: str = "") -> None:
    """A transcript line on stdout, flushed before any child writes to the same stream."""
    print(line, flush=True)


def comment(text: str) -> None:
    say(f"# {text}")


class Demo:
    """Runs offline-cli commands on a temporary home, as a user would at a shell."""

    def __init__(self, cli: str, root: Path, server: DemoServer) -> None:
        self.cli = cli
        self.root = root
        self.home = root / "home"
        self.config = root / "config.toml"
        self.server = server
        self.children: list[subprocess.Popen[bytes]] = []
        self.env = _child_env()
        self.env["OFFLINE_CLI_HOME"] = str(self.home)
        self.env["OFFLINE_CLI_CONFIG"] = str(self.config)

    def echo(self, args: list[str]) -> None:
        say("$ " + " ".join(["offline-cli", *(shlex.quote(a) for a in args)]))

    def spawn(self, args: list[str], capture: bool = False) -> subprocess.Popen[bytes]:
        self.echo(args)
        child = subprocess.Popen(
            [self.cli, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            # Its own process group: Ctrl-C at the terminal reaches the demo only, which
            # passes it on once (stop_children), whatever step it was in.
            process_group=0,
        )
        self.children.append(child)
        return child

    def run(self, args: list[str], capture: bool = False) -> str:
        """``offline-cli ARGS``; the demo fails unless it exits 0. Returns captured stdout,
        which is then printed as the command would have printed it."""
        child = self.spawn(args, capture)
        out, _ = child.communicate(timeout=COMMAND_TIMEOUT_S)
        text = out.decode(errors="replace") if out is not None else ""
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
        if child.returncode != 0:
            raise DemoFailed(f"`offline-cli {' '.join(args)}` exited {child.returncode}")
        self.tell_server_events()
        return text

    def tell_server_events(self) -> None:
        for event in self.server.take_events():
            comment(f"server: {event}")

    def stop_children(self) -> None:
        """Interrupt each offline-cli still running as Ctrl-C would (it saves its download
        as PAUSED and says so), then kill what has not ended within STOP_GRACE_S."""
        running = [child for child in self.children if child.poll() is None]
        for child in running:
            child.send_signal(signal.SIGINT)
        killed = False
        for child in running:
            try:
                child.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                killed = True
        if killed:
            _restore_terminal()

    # -- the steps -----------------------------------------------------------------------

    def setup(self) -> None:
        source = f"{self.server.main.url}/v1/{{type}}s/{{id}}/playbackinfo"
        self.config.write_text(f'source = "{source}"\n')
        comment("offline-cli demo: a loopback server with injected faults, no internet needed")
        comment(f"playback info, media and licenses at {self.server.main.url}")
        comment(f"a mirror host for video:3 at {self.server.mirror.url}")
        say(f"$ export OFFLINE_CLI_HOME={shlex.quote(str(self.home))}")
        say(f"$ export OFFLINE_CLI_CONFIG={shlex.quote(str(self.config))}")
        say("$ cat $OFFLINE_CLI_CONFIG")
        sys.stdout.write(self.config.read_text())
        self.run(["--version"])

    def batch(self) -> None:
        say()
        comment("four products, all at once (-j 4); the server cuts track:1 a third of the")
        comment("way in, answers track:2 with a 503 and Retry-After: 1, takes video:3's host")
        comment("down for a few seconds, and serves file:4 slowly")
        self.run(["offline", "-j", "4", "track:1", "track:2", "video:3", "file:4"])
        resumed = self.server.ranges
        for name in ("track-1.flac", "video-3.mp4"):
            if not any(start > 0 for start in resumed.get(name, [])):
                raise DemoFailed(f"{name} was not resumed by range after its fault")
        comment("track:1 and video:3 continued from the bytes they had (Range requests)")

    def kill_and_resume(self) -> None:
        say()
        media = self.server.by_product("video:5")
        comment(f"video:5 ({_mb(media.size)}), killed with SIGKILL {KILL_AT:.0%} of the way")
        child = self.spawn(["offline", "video:5"])
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while self.server.sent(media) < media.size * KILL_AT:
            if child.poll() is not None:
                raise DemoFailed(f"`offline video:5` ended ({child.returncode}) before the kill")
            if time.monotonic() > deadline:
                raise DemoFailed("video:5 made no progress")
            time.sleep(0.05)
        # Killed first, told after: a line printed while the child still draws its bars
        # would be drawn over.
        child.kill()
        child.wait(timeout=COMMAND_TIMEOUT_S)
        _restore_terminal()
        say(f"$ kill -9 {child.pid}")
        self.tell_server_events()
        state = self.run(["state", "video:5"], capture=True)
        if state.strip() != "NOT_OFFLINED":
            raise DemoFailed(f"video:5 after kill -9: {state.strip()!r}, not NOT_OFFLINED")
        self.run(["resume"])
        starts = self.server.ranges.get(media.name, [])
        if not any(start > 0 for start in starts):
            raise DemoFailed("resume fetched video:5 from the start")
        comment(f"resume continued video:5 from byte {max(starts)}: nothing fetched twice")

    def export(self) -> None:
        say()
        self.run(["path", "track:1"], capture=True)
        exports = self.root / "exports"
        say(f"$ mkdir {shlex.quote(str(exports))}")
        exports.mkdir()
        self.run(["export", "track:1", str(exports)])
        media = self.server.by_product("track:1")
        target = exports / media.name  # a folder DEST keeps the URL's last path segment
        if not target.is_file() or target.read_bytes() != media.body:
            raise DemoFailed(f"the exported {target} is not what the server holds")
        comment(f"{target.name} is byte for byte what the server holds")

    def report(self) -> None:
        say()
        lines = self.run(["state"], capture=True).splitlines()
        states = dict(line.split("\t", 1) for line in lines if "\t" in line)
        for media in self.server.media:
            if states.get(media.product) != "OFFLINED_AND_VALID":
                raise DemoFailed(f"{media.product} is {states.get(media.product)}")
        self.run(["health"])


def _child_env() -> dict[str, str]:
    """The user's environment without offline-cli settings or proxies: the demo talks to
    127.0.0.1 only, with its own home and config."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OFFLINE_CLI_") and k.lower() not in proxies
    }


def _restore_terminal() -> None:
    """A child killed while drawing progress bars leaves the cursor hidden: show it again."""
    if sys.stderr.isatty():
        sys.stderr.write("\x1b[?25h\n")
        sys.stderr.flush()


def _find_cli(given: str | None) -> str:
    """The offline-cli console script beside this Python (a venv's), else the one on PATH."""
    if given:
        return given
    beside = Path(sys.executable).with_name("offline-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("offline-cli")
    if found is None:
        raise DemoFailed("no offline-cli found: run `make install` first")
    return found


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo through its cleanup, as Ctrl-C does."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, *_STOP_SIGNALS)}
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cli", help="the offline-cli to run (default: the venv's)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    code, message = 0, ""
    with _stopping_on_signals():
        root: Path | None = None
        server = DemoServer()
        demo: Demo | None = None
        try:
            cli = _find_cli(args.cli)
            root = Path(tempfile.mkdtemp(prefix="offline-cli-demo-"))
            server.start()
            demo = Demo(cli, root, server)
            demo.setup()
            demo.batch()
            demo.kill_and_resume()
            demo.export()
            demo.report()
        except DemoFailed as exc:
            code, message = 1, f"FAILED: {exc}"
        except KeyboardInterrupt:
            code, message = EXIT_SIGINT, "interrupted"
        except Stopped:
            code, message = EXIT_SIGTERM, "terminated"
        finally:
            # Also on a bug: no offline-cli, host or temporary folder outlives the demo, and
            # a second Ctrl-C does not cut the cleanup short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            if demo is not None:
                demo.stop_children()
            server.close()
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)
    if code:
        # Told once the children have ended: a line written while one of them still draws
        # its progress bars would be drawn over.
        print(f"demo: {message}; cleaned up", file=sys.stderr, flush=True)
        return code
    say()
    comment(f"demo done in {time.monotonic() - started:.0f} s; its temporary home is removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
