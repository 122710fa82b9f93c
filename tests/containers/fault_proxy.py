"""A real HTTP reverse proxy in front of a registry that injects faults and counts requests.

Faults (:class:`Fault`) apply to requests whose path contains ``match``, ``times`` times:
``status`` (answer e.g. 429 with ``Retry-After`` or 500 without asking the registry),
``truncate`` (a shorter body with a matching Content-Length), ``corrupt`` (same length,
different bytes), ``drop`` (the full Content-Length announced, ``keep`` bytes sent, then the
connection closed) and ``redirect`` (a 307 to ``http://localhost:PORT/storage/...`` on this
proxy, another host name, which records the Authorization header it receives).
With ``page_size`` the proxy pages ``tags/list`` answers itself (``n``, ``last`` and a
``Link: <...>; rel="next"`` header, as the Distribution spec says): docker-registry 2.8
ignores ``n`` and always sends the whole list.
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from helpers.loopback import HandlerServer

_FORWARDED = ("Authorization", "Accept", "Range")
_RETURNED = ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Link",
             "Content-Range", "Location", "Docker-Distribution-Api-Version", "Retry-After")


@dataclass
class Fault:
    match: str
    kind: str  # status | truncate | corrupt | drop | redirect
    times: int = 1
    status: int = 500
    retry_after: str | None = None
    keep: int = 0
    headers: dict[str, str] | None = None  # more headers of a ``status`` answer
    body: bytes = b'{"errors":[]}'  # the body of a ``status`` answer
    method: str = "GET"  # the requests it applies to


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int


class FaultProxy(HandlerServer):
    """Listens on 127.0.0.1; ``log`` holds every request (:class:`Seen`)."""

    def __init__(self, upstream: str, *, storage_auth: str | None = None,
                 page_size: int | None = None) -> None:
        self.upstream = urlsplit(upstream)
        self.page_size = page_size
        self.storage_auth = storage_auth  # Authorization the proxy itself uses for /storage/
        self.faults: list[Fault] = []
        self.log: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_HEAD(self) -> None:
                self._handle()

            def _handle(self) -> None:
                try:
                    proxy._handle(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up early
                    self.close_connection = True

        super().__init__(Handler)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def requests(self, match: str, method: str | None = "GET") -> list[Seen]:
        """The requests for paths containing ``match`` (of any method with None)."""
        with self._lock:
            return [s for s in self.log if match in s.path and method in (None, s.method)]

    def _take_fault(self, path: str, method: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.match in path and f.times > 0 and f.method == method:
                    f.times -= 1
                    return f
        return None

    def _upstream(self, method: str, path: str, headers: dict[str, str]
                  ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                          timeout=30)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def _page(self, path: str, headers: dict[str, str], body: bytes
              ) -> tuple[dict[str, str], bytes]:
        """One page of a tag list: at most ``n`` (and ``page_size``) tags after ``last``."""
        url = urlsplit(path)
        query = parse_qs(url.query)
        n = min(int(query.get("n", [self.page_size])[0]), self.page_size)
        last = query.get("last", [""])[0]
        doc = json.loads(body)
        tags = sorted(t for t in doc.get("tags") or [] if t > last)
        doc["tags"] = tags[:n]
        headers = dict(headers)
        if len(tags) > n:
            nxt = urlencode({"n": n, "last": tags[n - 1]})
            headers["link"] = f'<{url.path}?{nxt}>; rel="next"'
        return headers, json.dumps(doc).encode()

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        headers = {k: h.headers[k] for k in _FORWARDED if h.headers.get(k)}
        path = h.path
        storage = path.startswith("/storage/")
        if storage:
            path = path[len("/storage"):]
            headers.pop("Authorization", None)
            if self.storage_auth:
                headers["Authorization"] = self.storage_auth
        fault = None if storage else self._take_fault(path, h.command)
        if fault is not None and fault.kind == "status":
            status, out_headers, body = fault.status, {}, fault.body
            if fault.retry_after is not None:
                out_headers["retry-after"] = fault.retry_after
            out_headers.update({k.lower(): v for k, v in (fault.headers or {}).items()})
        elif fault is not None and fault.kind == "redirect":
            status, body = 307, b""
            out_headers = {"location": f"http://localhost:{self.port}/storage{path}"}
        else:
            status, out_headers, body = self._upstream(h.command, path, headers)
            if self.page_size and "/tags/list" in path and status == 200:
                out_headers, body = self._page(path, out_headers, body)
        with self._lock:
            self.log.append(Seen(h.command, h.path, h.headers.get("Range"),
                                 h.headers.get("Authorization"), status))
        length = len(body)
        if fault is not None and status < 300:
            if fault.kind == "truncate":
                body = body[: len(body) // 2]
                length = len(body)
            elif fault.kind == "corrupt":
                body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
            elif fault.kind == "drop":
                body = body[: fault.keep]
        h.send_response(status)
        for k in _RETURNED:
            if k.lower() in out_headers:
                h.send_header(k, out_headers[k.lower()])
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        if fault is not None and fault.kind == "drop":
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
