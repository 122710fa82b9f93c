"""What the server answers: requests for ``/cvmfs/<name>/...`` mapped to responses (bytes)."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from pycvmfs import __version__
from pycvmfs.errors import ConfigError
from pycvmfs.format.manifest import parse_keyval
from pycvmfs.server.files import (
    JSON_KIND,
    LONG_TTL,
    SHORT_TTL,
    UNSATISFIABLE,
    CachedFile,
    Kind,
    SmallFileCache,
    StorageDir,
    classify,
    open_regular_file,
    parse_range,
    split_target,
    usable_name,
)

__all__ = ["INFO_NAME", "SERVER_HEADER", "SMALL_FILE", "Response", "Site"]

_log = logging.getLogger(__name__)

#: Files up to this size are read whole (and cached); larger ones are streamed in pieces.
SMALL_FILE = 64 * 1024
#: File bytes each server process keeps in its :class:`SmallFileCache`.
CACHE_BYTES = 64 * 1024 * 1024
#: The server-wide JSON lives under ``/cvmfs/info/`` (``cvmfs_server_json.sh``).
INFO_NAME = "info"
SERVER_HEADER = f"pycvmfs/{__version__}"
_LOG_UNSAFE = re.compile(r'[^\x21\x23-\x5b\x5d-\x7e]')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 414: "URI Too Long",
            416: "Range Not Satisfiable",
            500: "Internal Server Error"}


class Response(NamedTuple):
    """A response: ``head`` is the status line and headers up to, not including, the empty line
    (the connection adds ``Connection`` and the empty line); ``body`` follows it, then, if
    ``stream`` is set, ``count`` bytes of the open file ``fd`` from ``offset`` (the connection
    closes ``fd``). ``sent`` is the body size for the access log."""

    status: int
    head: bytes
    body: bytes
    sent: int
    stream: tuple[int, int, int] | None = None  # fd, offset, count


class _Clock:
    """``Date``/``Expires`` header lines and the log timestamp, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self.lines: dict[int | None, bytes] = {}
        self.log_time = ""
        self.tick()

    def tick(self) -> None:
        now = int(time.time())
        if now == self._second:
            return
        self._second = now
        date = email.utils.formatdate(now, usegmt=True)
        self.lines = {None: f"Date: {date}\r\n".encode()}
        for ttl in (SHORT_TTL, LONG_TTL):
            expires = email.utils.formatdate(now + ttl, usegmt=True)
            self.lines[ttl] = f"Date: {date}\r\nExpires: {expires}\r\n".encode()
        t = time.gmtime(now)
        self.log_time = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                         f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


class _AccessLog:
    """Common-log-format lines, appended in batches (a second or 64 KiB) with ``O_APPEND``.

    The file is opened for each batch, so log rotation by renaming needs no signal, and
    several worker processes can share one file without tearing lines.
    """

    FLUSH_BYTES = 64 * 1024
    FLUSH_DELAY = 1.0

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o644))
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot write the access log: "
                              f"{e.strerror or e}") from e
        self._lines: list[str] = []
        self._size = 0
        self._first = 0.0

    def add(self, line: str) -> None:
        if not self._lines:
            self._first = time.monotonic()
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()

    def flush_if_due(self) -> None:
        if self._lines and time.monotonic() - self._first >= self.FLUSH_DELAY:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = memoryview("".join(self._lines).encode("utf-8", "backslashreplace"))
        self._lines.clear()
        self._size = 0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        except OSError as e:
            _log.warning("access log %s: %s (%d bytes of log lines dropped)",
                         self.path, e.strerror or e, len(data))


def _escape_for_log(text: str) -> str:
    if not _LOG_UNSAFE.search(text):
        return text
    return _LOG_UNSAFE.sub(lambda m: "".join(
        f"\\x{b:02x}" for b in m.group().encode("utf-8", "surrogateescape")), text)


def _file_head(status: int, kind: Kind, length: int, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: {SERVER_HEADER}\r\n"
            f"Content-Type: {kind.content_type}\r\nCache-Control: {kind.cache_control}\r\n"
            f"Accept-Ranges: bytes\r\n{extra}Content-Length: {length}\r\n").encode()


def _manifest_fqrn(repo: StorageDir) -> str | None:
    try:
        with open(repo.prefix + ".cvmfspublished", "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    name = parse_keyval(head.split(b"\n--\n", 1)[0]).get("N")
    return name if name and usable_name(name) else None


class Site:
    """The served repositories, with the small-file cache, the clock and the access log of one
    server process; :meth:`respond` maps one request to its :class:`Response`.

    GET and HEAD only; headers as the stock Apache configuration sets them (§1.7): no
    ``Last-Modified``, no ``ETag``, conditional requests ignored; single byte ranges honoured.
    ``/cvmfs/info/v1/repositories.json`` lists the repositories.
    """

    def __init__(self, repositories: Mapping[str, Path], *, access_log: Path | None = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.repos: dict[str, StorageDir] = {}
        for name, storage in repositories.items():
            if not usable_name(name) or name == INFO_NAME:
                raise ConfigError(f"{name!r}: not a usable repository name in a URL")
            if not os.path.isdir(storage):
                raise ConfigError(f"{storage}: repository storage is not a directory")
            self.repos[name] = StorageDir.of(storage)
        self.clock = _Clock()
        self.cache = SmallFileCache(cache_bytes)
        self.access_log = _AccessLog(access_log) if access_log is not None else None
        self._errors: dict[tuple[int, str], tuple[bytes, bytes]] = {}

    def log(self, remote: str, method: str | None, target: str, version: str, status: int,
            sent: int) -> None:
        """Add the access-log line of one request (if there is an access log); ``method``
        ``None``: a request that could not be parsed (logged as ``"-"``)."""
        if self.access_log is None:
            return
        request = "-" if method is None else (
            f"{_escape_for_log(method)} {_escape_for_log(target)} HTTP/{version}")
        self.access_log.add(f'{remote} - - [{self.clock.log_time}] "{request}" {status} '
                            f'{sent or "-"}\n')

    def error(self, status: int, extra: str = "", head_only: bool = False) -> Response:
        """A short plain-text error response (``extra``: more header lines)."""
        built = self._errors.get((status, extra))
        if built is None:
            body = f"{status} {_REASONS[status]}\n".encode()
            built = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nServer: {SERVER_HEADER}\r\n"
                     f"Content-Type: text/plain; charset=utf-8\r\n{extra}"
                     f"Content-Length: {len(body)}\r\n").encode(), body
            if len(self._errors) < 64:
                self._errors[(status, extra)] = built
        head, body = built
        head += self.clock.lines[None]
        return Response(status, head, b"", 0) if head_only else Response(status, head, body,
                                                                             len(body))

    def respond(self, method: bytes, target: bytes, range_value: bytes | None,
                if_range: bool) -> Response:
        """The response to ``method target`` with the request's ``Range`` header (if any) and
        whether it had an ``If-Range`` header."""
        self.clock.tick()
        head_only = method == b"HEAD"
        if not head_only and method != b"GET":
            return self.error(405, "Allow: GET, HEAD\r\n")
        entry = self.cache.get(target)
        if entry is None:
            found = self._open(target, head_only)
            if isinstance(found, Response):
                return found
            fd, st, kind, path = found
            size = st.st_size
            if size > SMALL_FILE:
                return self._large(fd, size, kind, head_only, range_value, if_range)
            try:
                body = os.pread(fd, size, 0) if size else b""
            finally:
                os.close(fd)
            if len(body) != size:
                return self.error(500, head_only=head_only)
            entry = CachedFile(path, st, kind, _file_head(200, kind, size), body)
            self.cache.put(target, entry)
        kind = entry.kind
        if range_value is None or head_only or if_range:
            head = entry.head + self.clock.lines[kind.ttl]
            if head_only:
                return Response(200, head, b"", 0)
            return Response(200, head, entry.body, len(entry.body))
        body = entry.body
        size = len(body)
        rng = parse_range(range_value.decode("latin-1"), size)
        if rng is None:
            return Response(200, entry.head + self.clock.lines[kind.ttl], body, size)
        if rng == UNSATISFIABLE:
            return self.error(416, f"Content-Range: bytes */{size}\r\n")
        start, count = rng
        head = _file_head(206, kind, count,
                          f"Content-Range: bytes {start}-{start + count - 1}/{size}\r\n")
        return Response(206, head + self.clock.lines[kind.ttl], body[start:start + count], count)

    def _open(self, target: bytes, head_only: bool
              ) -> Response | tuple[int, os.stat_result, Kind, str]:
        segments = split_target(target.decode("latin-1"))
        if segments is None or len(segments) < 3 or segments[0] != "cvmfs":
            return self.error(404, head_only=head_only)
        rel = segments[2:]
        repo = self.repos.get(segments[1])
        if repo is None:
            if segments[1] == INFO_NAME and rel == ["v1", "repositories.json"]:
                return self._info(head_only)
            return self.error(404, head_only=head_only)
        if rel[0] == "data" and len(rel) > 1 and rel[1] == "txn":
            return self.error(404, head_only=head_only)
        rel_path = "/".join(rel)
        opened = open_regular_file(repo, rel_path)
        if opened is None:
            return self.error(404, head_only=head_only)
        return opened[0], opened[1], classify(rel), repo.prefix + rel_path

    def _large(self, fd: int, size: int, kind: Kind, head_only: bool,
               range_value: bytes | None, if_range: bool) -> Response:
        status, start, count, extra = 200, 0, size, ""
        if range_value is not None and not head_only and not if_range:
            rng = parse_range(range_value.decode("latin-1"), size)
            if rng == UNSATISFIABLE:
                os.close(fd)
                return self.error(416, f"Content-Range: bytes */{size}\r\n")
            if rng is not None:
                status, (start, count) = 206, rng
                extra = f"Content-Range: bytes {start}-{start + count - 1}/{size}\r\n"
        head = _file_head(status, kind, count, extra) + self.clock.lines[kind.ttl]
        if head_only:
            os.close(fd)
            return Response(status, head, b"", 0)
        return Response(status, head, b"", count, (fd, start, count))

    def _info(self, head_only: bool) -> Response:
        sections: dict[str, list] = {"repositories": [], "replicas": []}
        for name, repo in sorted(self.repos.items()):
            fqrn = _manifest_fqrn(repo) or name
            entry = {"name": fqrn, **({"alias": name} if fqrn != name else {}),
                     "url": f"/cvmfs/{name}"}
            replica = os.path.exists(repo.prefix + ".cvmfs_last_snapshot")
            sections["replicas" if replica else "repositories"].append(entry)
        body = (json.dumps({"schema": 1, **sections}, indent=2) + "\n").encode()
        head = (f"HTTP/1.1 200 OK\r\nServer: {SERVER_HEADER}\r\n"
                f"Content-Type: {JSON_KIND.content_type}\r\n"
                f"Cache-Control: {JSON_KIND.cache_control}\r\n"
                f"Content-Length: {len(body)}\r\n").encode() + self.clock.lines[JSON_KIND.ttl]
        return Response(200, head, b"", 0) if head_only else Response(200, head, body, len(body))

    def close(self) -> None:
        """Flush the access log."""
        if self.access_log is not None:
            self.access_log.flush()
