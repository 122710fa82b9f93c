"""Hostile mirrors on loopback: a real HTTP server that serves a repository's real files except
for the answers a test replaces (zlib bombs, oversized files), and raw socket servers that drip
their bodies or never answer."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from helpers.loopback import LoopbackServer

_BOMBS: dict[int, bytes] = {}


def zlib_bomb(inflated: int) -> bytes:
    """A valid zlib stream of ``inflated`` zero bytes (1 GiB: about 1 MiB), cached per size.
    Whole MiB are one compressed MiB repeated (a full flush after each makes them alike), then
    the end of the stream and the Adler-32 of all the zeros: never the inflated bytes in memory,
    and fast."""
    if inflated not in _BOMBS:
        mib = 1 << 20
        zeros = bytes(mib)
        z = zlib.compressobj(9)
        first = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
        same = z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH)
        if inflated % mib or inflated < 2 * mib:
            _BOMBS[inflated] = zlib.compress(bytes(inflated), 9)
        else:
            adler = 1
            for _ in range(inflated // mib):
                adler = zlib.adler32(zeros, adler)
            _BOMBS[inflated] = (first + same * (inflated // mib - 1) + b"\x03\x00"
                                + adler.to_bytes(4, "big"))
    return _BOMBS[inflated]


#: a replacement answer: the blocks of a 200 body (sent with a Content-Length when the answer
#: is bytes, else chunked)
Answer = bytes | Callable[[], Iterable[bytes]]


class HostileMirror(LoopbackServer):
    """A threaded HTTP server serving ``directory``, except for the URL paths in
    :attr:`answers`, which get the given body instead. :attr:`sent` counts the body bytes
    written per replaced path."""

    def __init__(self, directory: Path) -> None:
        self.answers: dict[str, Answer] = {}
        self.sent: dict[str, int] = {}
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                answer = mirror.answers.get(self.path)
                if answer is None:
                    return super().do_GET()
                mirror.sent.setdefault(self.path, 0)
                self.send_response(200)
                try:
                    if isinstance(answer, bytes):
                        self.send_header("Content-Length", str(len(answer)))
                        self.end_headers()
                        self._send(answer)
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for block in answer():
                        self.wfile.write(f"{len(block):x}\r\n".encode())
                        self._send(block)
                        self.wfile.write(b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up: what a bounded client does
                    self.close_connection = True

            def _send(self, data: bytes) -> None:
                view = memoryview(data)
                for start in range(0, len(view), 65536):
                    self.wfile.write(view[start:start + 65536])
                    mirror.sent[self.path] += len(view[start:start + 65536])

        super().__init__(directory, Handler)
        self.httpd.handle_error = lambda request, address: None  # (clients that hang up)


def endless(block: bytes = b"x" * 65536, total: int = 1 << 40) -> Callable[[], Iterator[bytes]]:
    """An answer of ``total`` bytes (by default: as many as the client takes)."""

    def blocks() -> Iterator[bytes]:
        left = total
        while left > 0:
            yield block[:left]
            left -= len(block)

    return blocks


class SlowServer:
    """A raw socket server on 127.0.0.1: every request gets a 200 header announcing
    ``length`` bytes, then ``piece`` bytes every ``interval`` seconds; with ``silent`` it
    accepts and reads the request but never answers; with ``header_interval`` the header
    itself comes one byte at a time, that many seconds apart. :attr:`requests` counts
    connections."""

    def __init__(self, *, piece: int = 1, interval: float = 2.0, length: int = 1 << 20,
                 silent: bool = False, header_interval: float = 0.0) -> None:
        self.piece, self.interval, self.length, self.silent = piece, interval, length, silent
        self.header_interval = header_interval
        self.requests = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if self.silent:
                    self._stop.wait()
                    return
                header = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.length
                if not self.header_interval:
                    conn.sendall(header)
                for i in range(len(header) if self.header_interval else 0):
                    conn.sendall(header[i:i + 1])
                    if self._stop.wait(self.header_interval):
                        return
                sent = 0
                while sent < self.length and not self._stop.wait(self.interval):
                    conn.sendall(b"x" * self.piece)
                    sent += self.piece
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


class PeakSize:
    """Polls the total size of the files below ``directory`` every few milliseconds while in
    use; :attr:`peak` is the largest total seen."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_size(self.directory))
            time.sleep(0.002)

    def __enter__(self) -> PeakSize:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_size(self.directory))


def tree_size(directory: Path) -> int:
    """The bytes of the regular files below ``directory`` (files vanishing meanwhile skipped)."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def finishes_within(seconds: float, work: Callable[[], object]) -> object:
    """``work()`` run in a thread: its value or its exception; fails (instead of hanging the
    suite) when it takes longer than ``seconds``."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]
