"""HTTP/1.1 connections of the server: an asyncio protocol on the ``httptools`` request parser."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque

import httptools

from pycvmfs.server.site import Response, Site

__all__ = ["Connections", "HttpConnection"]

_log = logging.getLogger(__name__)

#: Pieces in which files larger than ``SMALL_FILE`` are read and written.
CHUNK = 256 * 1024
#: A request head (request line and headers) larger than this is refused.
MAX_HEAD = 1024 * 1024
#: A request target longer than this gets 414 (Apache's LimitRequestLine is 8190 bytes).
MAX_TARGET = 8192
#: More header fields than this, or one longer than MAX_FIELD, get 400 (Apache's limits).
MAX_FIELDS = 100
MAX_FIELD = 8192
#: Seconds a client may take from the first byte of a request to its end (slowloris; Apache's
#: RequestReadTimeout allows 20-40 s for the head); then 408 and the connection closes.
REQUEST_TIMEOUT = 20.0
_Request = tuple[bytes, bytes, "bytes | None", bool, bool, str]  # method, target, Range,
# If-Range seen, keep-alive, HTTP version


class _Stream:
    """A file being sent as a response body."""

    __slots__ = ("count", "fd", "offset", "remaining", "req", "status", "task")

    def __init__(self, fd: int, offset: int, count: int, req: _Request, status: int) -> None:
        self.fd = fd
        self.offset = offset
        self.remaining = count
        self.count = count
        self.req = req
        self.status = status
        self.task: asyncio.Task | None = None


class Connections:
    """The open connections of one listening server and what they share: the :class:`Site`,
    the keep-alive timeout, periodic chores (closing idle connections, flushing the access log)
    and the graceful shutdown."""

    SWEEP = 1.0

    def __init__(self, site: Site, *, keepalive_timeout: float = 75.0,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.site = site
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.open: set[HttpConnection] = set()
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self) -> HttpConnection:
        """A protocol for a new connection (the factory given to ``loop.create_server``)."""
        return HttpConnection(self)

    def start(self) -> None:
        """Start the periodic chores on the running loop."""
        self._timer = asyncio.get_running_loop().call_later(self.SWEEP, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        late = loop.time() - self.request_timeout
        for conn in list(self.open):
            if conn.started is not None:  # a request not complete yet
                if conn.busy():  # reading waits for our answers: not the client's time
                    conn.started = loop.time()
                elif conn.started < late:  # slowloris, or a stalled client
                    conn.refuse(408)
                    continue
            if conn.requests != conn.seen or conn.busy():
                conn.seen, conn.idle = conn.requests, 0.0
            else:
                conn.idle += self.SWEEP
                # a connection yet to send its first request has the request timeout
                limit = self.keepalive_timeout if conn.requests else min(
                    self.keepalive_timeout, self.request_timeout)
                if conn.idle >= limit and conn.started is None:
                    conn.close()
        if self.site.access_log is not None:
            self.site.access_log.flush_if_due()
        self._timer = asyncio.get_running_loop().call_later(self.SWEEP, self._sweep)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections at once, let the others finish the responses they are
        sending (at most ``timeout`` seconds, then cut them), flush the access log."""
        self.closing = True
        for conn in list(self.open):
            if not conn.busy():
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.open):
            conn.abort()
        for _ in range(3):  # let aborted connections and their file senders finish
            await asyncio.sleep(0)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.site.close()


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests (pipelined or not), writes the responses in order.

    Small responses go out in one write (headers and body together). Larger files are read in
    :data:`CHUNK` pieces while the transport's buffer has room; meanwhile further pipelined
    requests wait, and reading from the client pauses.
    """

    __slots__ = ("conns", "fields", "head_bytes", "idle", "if_range", "in_head", "parser",
                 "pending", "range", "reading_paused", "refusal", "remote", "requests", "seen",
                 "site", "started", "stream", "transport", "url", "write_paused")

    def __init__(self, conns: Connections) -> None:
        self.conns = conns
        self.site = conns.site
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = "-"
        self.url = b""
        self.range: bytes | None = None
        self.if_range = False
        self.in_head = False
        self.head_bytes = 0
        self.fields = 0
        self.started: float | None = None  # loop time of the first byte of an unfinished request
        self.refusal = 400  # the status of the error answered when parsing stops
        self.requests = 0
        self.seen = 0
        self.idle = 0.0
        self.pending: deque[_Request | None] = deque()
        self.stream: _Stream | None = None
        self.write_paused = False
        self.reading_paused = False

    # --- transport events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
        self.conns.open.add(self)
        if self.conns.closing:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.open.discard(self)
        self.pending.clear()
        stream = self.stream
        if stream is not None:
            if stream.task is not None:
                stream.task.cancel()  # it closes the file
                return
            self.stream = None
            os.close(stream.fd)
            self._log(stream.req, stream.status, stream.count - stream.remaining)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stream is not None:
            if self.stream.task is None:
                self._pump()
        else:
            self._drain()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # the request was answered; we switch to no other protocol, so the rest is noise
            self.pending.append(None)
        except httptools.HttpParserError as e:
            _log.debug("%s: malformed request: %s", self.remote, e)
            self.pending.append(None)
            self.started = None
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self.pending.append(None)
                self.in_head = False
        if self.pending:
            self._drain()
            if self.pending and not self.reading_paused and self.transport is not None:
                self.transport.pause_reading()
                self.reading_paused = True

    # --- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.range = None
        self.if_range = False
        self.in_head = True
        self.fields = 0
        self.started = asyncio.get_running_loop().time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_TARGET:
            self.refusal = 414
            raise ValueError(f"request target over {MAX_TARGET} bytes")  # stops the parser

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if self.fields > MAX_FIELDS or len(name) + len(value) > MAX_FIELD:
            raise ValueError("too many or too long header fields")  # stops the parser: 400
        n = len(name)
        if n == 5 and name.lower() == b"range":
            self.range = value
        elif n == 8 and name.lower() == b"if-range":
            self.if_range = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0

    def on_message_complete(self) -> None:
        self.requests += 1
        self.started = None
        p = self.parser
        req = (p.get_method(), self.url, self.range, self.if_range, p.should_keep_alive(),
               p.get_http_version())
        if self.pending or self.stream is not None or self.write_paused:
            self.pending.append(req)
        else:
            self._serve(req)

    # --- responses ----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether a response is being sent or requests wait for their turn."""
        return self.stream is not None or bool(self.pending)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def refuse(self, status: int) -> None:
        """Answer ``status`` after the responses already due, then close; read no more."""
        self.refusal = status
        self.started = None
        self.pending.append(None)
        if self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self._drain()

    def _drain(self) -> None:
        """Answer waiting requests while nothing else is being sent."""
        pending = self.pending
        while pending and self.stream is None and not self.write_paused:
            transport = self.transport
            if transport is None or transport.is_closing():
                pending.clear()
                return
            self._serve(pending.popleft())
        if not pending and self.stream is None and self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _serve(self, req: _Request | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if req is None:
            resp = self.site.error(self.refusal)
            transport.write(resp.head + b"Connection: close\r\n\r\n" + resp.body)
            if self.site.access_log is not None:
                self.site.log(self.remote, None, "", "", self.refusal, resp.sent)
            self.pending.clear()
            transport.close()
            return
        method, target, range_value, if_range, keep_alive, version = req
        try:
            resp = self.site.respond(method, target, range_value, if_range)
        except Exception:
            _log.exception("%s %s: internal error", method.decode("latin-1"),
                           target.decode("latin-1"))
            resp = self.site.error(500)
        if self.conns.closing:
            keep_alive = False
        if not keep_alive:
            connection = b"Connection: close\r\n\r\n"
        elif version == "1.0":
            connection = b"Connection: keep-alive\r\n\r\n"
        else:
            connection = b"\r\n"
        transport.write(b"".join((resp.head, connection, resp.body)))
        if resp.stream is None:
            self._done(req, resp)
            return
        fd, offset, count = resp.stream
        self.stream = _Stream(fd, offset, count, req, resp.status)
        self.stream.task = asyncio.get_running_loop().create_task(self._sendfile(self.stream))

    def _done(self, req: _Request, resp: Response) -> None:
        if self.site.access_log is not None:
            self._log(req, resp.status, resp.sent)
        if not req[4] or self.conns.closing:
            self.pending.clear()
            if self.transport is not None:
                self.transport.close()

    async def _sendfile(self, stream: _Stream) -> None:
        """Send the file with ``loop.sendfile`` (``os.sendfile`` on the standard event loop),
        or by :meth:`_pump` where the loop cannot."""
        transport = self.transport
        assert transport is not None
        try:
            with open(stream.fd, "rb", buffering=0, closefd=False) as f:
                await asyncio.get_running_loop().sendfile(transport, f, stream.offset,
                                                          stream.remaining)
        except NotImplementedError:
            stream.task = None
            self._pump()
            return
        except asyncio.CancelledError:  # the connection was lost
            self._end_stream(stream, failed="connection lost")
            return
        except (OSError, RuntimeError) as e:
            self._end_stream(stream, failed=str(e))
            return
        stream.remaining = 0
        self._end_stream(stream)

    def _pump(self) -> None:
        """Write pieces of the file being sent until it is done or the transport is full."""
        stream = self.stream
        assert stream is not None and self.transport is not None
        try:
            while stream.remaining and not self.write_paused:
                piece = os.pread(stream.fd, min(CHUNK, stream.remaining), stream.offset)
                if not piece:
                    raise OSError(f"file shrank while being sent ({stream.remaining} bytes "
                                  f"short)")
                stream.offset += len(piece)
                stream.remaining -= len(piece)
                self.transport.write(piece)
                if self.stream is None:  # the connection was lost during write()
                    return
        except OSError as e:
            self._end_stream(stream, failed=str(e))
            return
        if not stream.remaining:
            self._end_stream(stream)

    def _end_stream(self, stream: _Stream, failed: str | None = None) -> None:
        self.stream = None
        stream.task = None
        os.close(stream.fd)
        if failed is not None:
            _log.info("%s: sending %s: %s", self.remote, stream.req[1].decode("latin-1"),
                      failed)
            self._log(stream.req, stream.status, stream.count - stream.remaining)
            self.pending.clear()
            if self.transport is not None:
                self.transport.abort()  # the client sees a short body, never wrong bytes
            return
        self._done(stream.req, Response(stream.status, b"", b"", stream.count))
        self._drain()

    def _log(self, req: _Request, status: int, sent: int) -> None:
        if self.site.access_log is None:
            return
        method, target, _range, _if_range, _keep_alive, version = req
        with contextlib.suppress(Exception):
            self.site.log(self.remote, method.decode("latin-1"), target.decode("latin-1"),
                          version, status, 0 if method == b"HEAD" else sent)
