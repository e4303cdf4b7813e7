"""A small loopback HTTP server with range support and injectable faults, for tests.

pytest-httpserver covers plain request/response cases; this server covers what needs
control of the socket: bodies cut mid-way, TCP resets, stalls, throttled bodies for
subprocess tests, hosts that go down and come back. It also runs standalone
(``python -m tests.netsim FILE``) for subprocess and soak tests.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    """What to do to one request. Faults are consumed in order; then requests are served."""

    kind: str  # "cut", "reset", "stall", "status", "ignore_range", "wrong_offset", "short",
    # "change" (the resource becomes ``body``, with a new ETag and Last-Modified, then this
    # request is served normally: an If-Range resume then gets the whole new file)
    at: int = 0  # byte offset in the body for cut/reset/stall
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 5.0
    body: bytes | None = None  # the new body for "change"
    # also "ignore_if_range": serve the range even when If-Range names another version, and
    # "hold": send nothing at all (not even a status line) for stall_s, then hang up, and
    # "extra": send ``body`` (or a line of junk) after the body, beyond Content-Length


@dataclass
class Resource:
    body: bytes
    etag: str | None = None
    last_modified: str | None = "Wed, 21 Oct 2026 07:28:00 GMT"
    faults: list[Fault] = field(default_factory=list)
    # bytes per second for the body (None: as fast as possible)
    rate: float | None = None
    # the body made per request from its query string (playlists naming signed URLs)
    render: Callable[[str], bytes] | None = None

    def __post_init__(self) -> None:
        if self.etag is None:
            self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclass
class Served:
    path: str
    status: int
    range: str | None
    if_range: str | None
    bytes_sent: int
    headers: dict[str, str] = field(default_factory=dict)  # the request's headers


class _QuietServer(http.server.ThreadingHTTPServer):
    """No stack trace on stderr when a client dies or hangs up mid-request (kill -9 tests)."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class NetSim:
    """A threaded HTTP/1.1 server on 127.0.0.1 with per-path resources and faults."""

    def __init__(self, port: int = 0) -> None:
        self.resources: dict[str, Resource] = {}
        self.log: list[Served] = []
        self._lock = threading.Lock()
        self._active = 0  # requests being handled right now (see wait_idle)
        self._changes = 0  # "change" faults served so far
        self.connections = 0  # TCP connections accepted (keep-alive reuse shows here)
        # Asked first for every request (path, query): a status to answer instead (an
        # expired signature's 403), or None to serve it.
        self.gate: Callable[[str, str], int | None] | None = None
        sim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with sim._lock:
                    sim.connections += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with sim._lock:
                    sim._active += 1
                try:
                    sim._handle(self)
                finally:
                    with sim._lock:
                        sim._active -= 1

        # port: bind a given port, e.g. to bring a stopped host back at the same address
        self._server = _QuietServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------

    def start(self, poll_interval: float = 0.5) -> NetSim:
        """Serve in a thread; a small ``poll_interval`` makes ``stop()`` return sooner."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(poll_interval,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, resource: Resource) -> Resource:
        self.resources[path] = resource
        return resource

    def bytes_sent(self, path: str) -> int:
        return sum(s.bytes_sent for s in self.log if s.path == path)

    def requests(self, path: str) -> list[Served]:
        return [s for s in self.log if s.path == path]

    @property
    def active(self) -> int:
        """Requests being handled right now (their bytes are not in ``log`` yet)."""
        with self._lock:
            return self._active

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled, so ``bytes_sent`` counts every byte sent."""
        return wait_for(lambda: self.active == 0, timeout)

    # -- serving --------------------------------------------------------------------------

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        path, _, query = req.path.partition("?")
        resource = self.resources.get(path)
        if resource is None:
            self._simple(req, path, 404, b"not found")
            return
        refused = self.gate(path, query) if self.gate is not None else None
        if refused is not None:
            self._simple(req, path, refused, b"refused")
            return
        if resource.render is not None:
            resource.body = resource.render(query)
        with self._lock:
            fault = resource.faults.pop(0) if resource.faults else None
            if fault is not None and fault.kind == "change" and fault.body is not None:
                resource.body = fault.body
                resource.etag = '"' + hashlib.sha256(fault.body).hexdigest()[:16] + '"'
                self._changes += 1
                resource.last_modified = email.utils.formatdate(
                    1_792_000_000 + 86400 * self._changes, usegmt=True
                )
        body = resource.body
        range_header = req.headers.get("Range")
        if_range = req.headers.get("If-Range")
        start = 0
        stop = len(body)  # exclusive
        status = 200
        match = _RANGE_RE.match(range_header or "")
        if match and (fault is None or fault.kind != "ignore_range"):
            valid = if_range is None or if_range in (resource.etag, resource.last_modified)
            valid = valid or (fault is not None and fault.kind == "ignore_if_range")
            if valid:
                start = int(match.group(1))
                if match.group(2):
                    stop = min(len(body), int(match.group(2)) + 1)
                if start >= len(body) or start >= stop:
                    self._simple(
                        req, path, 416, b"", {"Content-Range": f"bytes */{len(body)}"}, range_header
                    )
                    return
                status = 206
        if fault is not None and fault.kind == "status":
            self._simple(req, path, fault.status, b"fault", fault.headers, range_header)
            return
        if fault is not None and fault.kind == "hold":
            # Answer nothing (no status line) for stall_s, then hang up.
            time.sleep(fault.stall_s)
            req.close_connection = True
            return
        if fault is not None and fault.kind == "wrong_offset" and status == 206:
            start = max(0, start - 100)
        payload = body[start:stop]
        headers = {
            "Content-Length": str(len(payload)),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if fault is not None and fault.kind == "short":
            headers["Content-Length"] = str(len(payload) + 1000)
        if resource.etag:
            headers["ETag"] = resource.etag
        if resource.last_modified:
            headers["Last-Modified"] = resource.last_modified
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(body)}"
        req.send_response(status)
        for name, value in headers.items():
            req.send_header(name, value)
        req.end_headers()
        limit = len(payload)
        if fault is not None and fault.kind in ("cut", "reset", "stall"):
            limit = min(limit, max(0, fault.at - start))
        sent = self._send_body(req, payload[:limit], resource.rate)
        if fault is not None and fault.kind == "extra":
            # More than Content-Length said, on a connection kept alive (a file that grew
            # while it was served): the next answer on it starts with these bytes.
            with contextlib.suppress(OSError):
                req.wfile.write(fault.body or b"surplus bytes past the length\r\n")
                req.wfile.flush()
        entry = Served(path, status, range_header, if_range, sent, dict(req.headers.items()))
        with self._lock:
            self.log.append(entry)
        if fault is not None and fault.kind == "stall":
            time.sleep(fault.stall_s)
        if fault is not None and fault.kind == "reset":
            # SO_LINGER 0: close sends RST instead of FIN
            req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if fault is not None and fault.kind in ("cut", "reset", "stall", "short"):
            req.close_connection = True
            if fault.kind != "reset":
                with contextlib.suppress(OSError):
                    req.connection.shutdown(socket.SHUT_RDWR)
            req.connection.close()

    def _send_body(
        self, req: http.server.BaseHTTPRequestHandler, data: bytes, rate: float | None
    ) -> int:
        sent = 0
        chunk = 16 * 1024
        try:
            while sent < len(data):
                piece = data[sent : sent + chunk]
                req.wfile.write(piece)
                req.wfile.flush()
                sent += len(piece)
                if rate:
                    time.sleep(len(piece) / rate)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent

    def _simple(
        self,
        req: http.server.BaseHTTPRequestHandler,
        path: str,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        range_header: str | None = None,
    ) -> None:
        req.send_response(status)
        for name, value in (headers or {}).items():
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
        with self._lock:
            self.log.append(
                Served(
                    path,
                    status,
                    range_header,
                    req.headers.get("If-Range"),
                    0,
                    dict(req.headers.items()),
                )
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true (never a fixed sleep); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def main() -> None:  # pragma: no cover - used by subprocess tests by hand
    import argparse
    import pathlib

    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--rate", type=float, default=None)
    args = parser.parse_args()
    sim = NetSim()
    sim.add("/file", Resource(pathlib.Path(args.file).read_bytes(), rate=args.rate))
    print(sim.url("/file"), flush=True)
    sim._server.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
