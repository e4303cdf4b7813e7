"""A small, fast loopback HTTP/1.1 file server for the benchmarks (GET/HEAD, ranges, sendfile).

Python's ``http.server`` copies the body through Python buffers and tops out well below what
curl can take; this one hands the body to the kernel with ``socket.sendfile`` (zero copy),
so on loopback the client, not the server, is what gets measured.

It serves the files of one folder on 127.0.0.1 only. The query string is ignored, so
``/small.bin?i=1`` and ``/small.bin?i=2`` are two URLs (two products) for one file. It sends
``ETag``, ``Last-Modified`` and ``Accept-Ranges`` and honours ``Range: bytes=N-`` (and
``N-M``) with ``If-Range``, like a CDN, and counts the body bytes it sent per path.

``SendfileServer(root, rate=BYTES_PER_S)`` throttles each connection to that rate (a CDN's
per-connection cap): each body goes out in small ``sendfile`` slices paced so that a response
never runs ahead of ``rate``; N connections together get up to N times the rate. Without
``rate`` (the default) a body is one ``sendfile`` call, as fast as the client takes it.
"""

from __future__ import annotations

import email.utils
import os
import re
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")
_MAX_HEADER_BYTES = 64 * 1024


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, root: Path, rate: int | None = None) -> None:
        self.root = root
        self.rate = rate  # bytes a second per connection; None: unthrottled
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client killed mid-body (the resume benchmark) is expected, not an error


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
                if len(buffer) > _MAX_HEADER_BYTES:
                    return
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not self._answer(sock, head.decode("latin-1")):
                return

    def _answer(self, sock: socket.socket, head: str) -> bool:
        """Answer one request; False to close the connection."""
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split()
        if len(parts) != 3:
            return False
        method, target, version = parts
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        path = unquote(urlsplit(target).path)
        file = (self.server.root / path.lstrip("/")).resolve()
        if method not in ("GET", "HEAD"):
            self._send_head(sock, 405, {"Content-Length": "0"}, keep_alive)
            return keep_alive
        if self.server.root not in file.parents or not file.is_file():
            self._send_head(sock, 404, {"Content-Length": "0"}, keep_alive)
            return keep_alive
        info = file.stat()
        size = info.st_size
        etag = f'"{info.st_ino:x}-{size:x}-{info.st_mtime_ns:x}"'
        modified = email.utils.formatdate(info.st_mtime, usegmt=True)
        fields = {
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": etag,
            "Last-Modified": modified,
        }
        start, end, status = 0, size - 1, 200
        range_header = headers.get("range")
        match = _RANGE_RE.match(range_header or "")
        if_range = headers.get("if-range")
        if match and (if_range is None or if_range in (etag, modified)):
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            if start >= size or start > end:
                fields["Content-Range"] = f"bytes */{size}"
                fields["Content-Length"] = "0"
                self._send_head(sock, 416, fields, keep_alive)
                return keep_alive
            status = 206
            fields["Content-Range"] = f"bytes {start}-{end}/{size}"
        count = end - start + 1
        fields["Content-Length"] = str(count)
        with self.server.lock:
            self.server.requests.append((path, range_header))
        self._send_head(sock, status, fields, keep_alive)
        if method == "HEAD":
            return keep_alive
        sent = 0
        try:
            with file.open("rb") as f:
                if self.server.rate:
                    sent = self._send_paced(sock, f, start, count, self.server.rate)
                else:
                    sent = sock.sendfile(f, start, count)
        except OSError:
            return False
        finally:
            with self.server.lock:
                self.server.sent[path] = self.server.sent.get(path, 0) + sent
        return keep_alive and sent == count

    @staticmethod
    def _send_paced(sock: socket.socket, f: BinaryIO, start: int, count: int, rate: int) -> int:
        """Send ``count`` bytes from ``start`` at most ``rate`` bytes a second: slices of
        about 20 ms of data, each followed by a sleep until the bytes sent so far are due, so
        the response (and the next one on this connection) takes at least ``count / rate``."""
        piece = max(1024, min(256 * 1024, rate // 50))
        began = time.monotonic()
        sent = 0
        while sent < count:
            n = sock.sendfile(f, start + sent, min(piece, count - sent))
            if n == 0:
                break
            sent += n
            delay = began + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return sent

    @staticmethod
    def _send_head(sock: socket.socket, status: int, fields: dict[str, str], keep: bool) -> None:
        reason = {200: "OK", 206: "Partial Content", 404: "Not Found"}.get(status, "Error")
        fields["Connection"] = "keep-alive" if keep else "close"
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in fields.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


class SendfileServer:
    """Serve ``root`` on 127.0.0.1 in a background thread; use as a context manager.

    ``rate``: bytes a second per connection (None, the default: unthrottled)."""

    def __init__(self, root: Path, rate: int | None = None) -> None:
        self._server = _Server(root.resolve(), rate)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    def __enter__(self) -> SendfileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def bytes_sent(self, name: str) -> int:
        with self._server.lock:
            return self._server.sent.get("/" + name, 0)


if __name__ == "__main__":  # pragma: no cover - by hand: python bench/sendfile_server.py DIR
    import sys
    import time

    with SendfileServer(Path(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())) as srv:
        print(srv.url(""), flush=True)
        while True:
            time.sleep(3600)
