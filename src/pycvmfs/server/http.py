"""The HTTP server for repository storage directories: ``/cvmfs/<fqrn>/...`` like stock Apache."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from pycvmfs import __version__
from pycvmfs.errors import ConfigError, CvmfsError
from pycvmfs.format.manifest import parse_keyval
from pycvmfs.server.files import (
    JSON_KIND,
    LONG_TTL,
    SHORT_TTL,
    UNSATISFIABLE,
    Kind,
    StorageDir,
    classify,
    open_regular_file,
    parse_range,
    split_target,
    usable_name,
)

__all__ = ["LONG_TTL", "SHORT_TTL", "RepositoryServer", "find_repositories", "make_app",
           "parse_range", "serve_forever", "split_target"]

_log = logging.getLogger(__name__)

#: Files up to this size go out in one write together with the headers; larger ones by sendfile.
SMALL_FILE = 64 * 1024
#: The server-wide JSON lives under ``/cvmfs/info/`` (``cvmfs_server_json.sh``).
INFO_NAME = "info"
SERVER_HEADER = f"pycvmfs/{__version__}"
_LOG_UNSAFE = re.compile(r'[^\x21\x23-\x5b\x5d-\x7e]')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class _Clock:
    """``Expires`` values and the log timestamp, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self.expires: dict[int, str] = {}
        self.log_time = ""

    def tick(self) -> None:
        now = int(time.time())
        if now == self._second:
            return
        self._second = now
        self.expires = {ttl: email.utils.formatdate(now + ttl, usegmt=True)
                        for ttl in (SHORT_TTL, LONG_TTL)}
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
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=f"{status} {text}\n",
                        headers={"Server": SERVER_HEADER, **(headers or {})})


class _Handler:
    """The one request handler of an application; holds the served repositories."""

    def __init__(self, repositories: Mapping[str, Path], access_log: Path | None) -> None:
        self.repos: dict[str, StorageDir] = {}
        for name, storage in repositories.items():
            if not usable_name(name) or name == INFO_NAME:
                raise ConfigError(f"{name!r}: not a usable repository name in a URL")
            if not os.path.isdir(storage):
                raise ConfigError(f"{storage}: repository storage is not a directory")
            self.repos[name] = StorageDir.of(storage)
        self.clock = _Clock()
        self.access_log = _AccessLog(access_log) if access_log is not None else None

    async def close(self, app: web.Application) -> None:
        if self.access_log is not None:
            self.access_log.flush()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.clock.tick()
        if request.method in ("GET", "HEAD"):
            resp, sent = await self._dispatch(request)
        else:
            resp, sent = _error(405, "Method Not Allowed", {"Allow": "GET, HEAD"}), None
        if self.access_log is not None:
            if request.method == "HEAD":
                sent = 0
            elif sent is None:
                sent = len(resp.body or b"") if isinstance(resp, web.Response) else 0
            version = request.version
            self.access_log.add(
                f'{request.remote or "-"} - - [{self.clock.log_time}] '
                f'"{_escape_for_log(request.method)} {_escape_for_log(request.raw_path)} '
                f'HTTP/{version.major}.{version.minor}" {resp.status} {sent or "-"}\n')
        return resp

    async def _dispatch(self, request: web.Request) -> tuple[web.StreamResponse, int | None]:
        segments = split_target(request.raw_path)
        if segments is None or len(segments) < 3 or segments[0] != "cvmfs":
            return _error(404, "Not Found"), None
        rel = segments[2:]
        repo = self.repos.get(segments[1])
        if repo is None:
            if segments[1] == INFO_NAME and rel == ["v1", "repositories.json"]:
                return self._info(request)
            return _error(404, "Not Found"), None
        if rel[0] == "data" and len(rel) > 1 and rel[1] == "txn":
            return _error(404, "Not Found"), None
        opened = open_regular_file(repo, "/".join(rel))
        if opened is None:
            return _error(404, "Not Found"), None
        fd, size = opened
        try:
            return await self._send_file(request, fd, size, classify(rel))
        finally:
            os.close(fd)

    async def _send_file(self, request: web.Request, fd: int, size: int,
                         kind: Kind) -> tuple[web.StreamResponse, int | None]:
        headers = {"Server": SERVER_HEADER, "Content-Type": kind.content_type,
                   "Cache-Control": kind.cache_control, "Expires": self.clock.expires[kind.ttl],
                   "Accept-Ranges": "bytes"}
        status, start, count = 200, 0, size
        if request.method == "GET" and "Range" in request.headers:
            # We never hand out validators, so an If-Range cannot match: send everything.
            rng = None if "If-Range" in request.headers else parse_range(
                request.headers["Range"], size)
            if rng == UNSATISFIABLE:
                return _error(416, "Range Not Satisfiable",
                              {"Content-Range": f"bytes */{size}"}), None
            if rng is not None:
                status, (start, count) = 206, rng
                headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
        if request.method == "HEAD" or count == 0:
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = count
            return resp, 0
        if count <= SMALL_FILE:
            data = os.pread(fd, count, start)
            if len(data) != count:
                return _error(500, "File Changed While Reading"), None
            return web.Response(status=status, body=data, headers=headers), count
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = count
        await resp.prepare(request)
        transport = request.transport
        if transport is None:
            return resp, 0
        try:
            with open(fd, "rb", buffering=0, closefd=False) as f:
                await asyncio.get_running_loop().sendfile(transport, f, start, count)
        except NotImplementedError:  # event loops without sendfile support (uvloop)
            await _copy(resp, fd, start, count)
        except ConnectionError:
            transport.close()
            return resp, 0
        await resp.write_eof()
        return resp, count

    def _info(self, request: web.Request) -> tuple[web.StreamResponse, int | None]:
        sections: dict[str, list] = {"repositories": [], "replicas": []}
        for name, repo in sorted(self.repos.items()):
            fqrn = _manifest_fqrn(repo) or name
            entry = {"name": fqrn, **({"alias": name} if fqrn != name else {}),
                     "url": f"/cvmfs/{name}"}
            replica = os.path.exists(repo.prefix + ".cvmfs_last_snapshot")
            sections["replicas" if replica else "repositories"].append(entry)
        body = (json.dumps({"schema": 1, **sections}, indent=2) + "\n").encode()
        headers = {"Server": SERVER_HEADER, "Content-Type": JSON_KIND.content_type,
                   "Cache-Control": JSON_KIND.cache_control,
                   "Expires": self.clock.expires[JSON_KIND.ttl]}
        sent = 0 if request.method == "HEAD" else len(body)
        return web.Response(body=body, headers=headers), sent


async def _copy(resp: web.StreamResponse, fd: int, start: int, count: int) -> None:
    end = start + count
    while start < end:
        chunk = os.pread(fd, min(256 * 1024, end - start), start)
        if not chunk:
            raise ConnectionResetError("file shrank while being sent")
        await resp.write(chunk)
        start += len(chunk)


def _manifest_fqrn(repo: StorageDir) -> str | None:
    try:
        with open(repo.prefix + ".cvmfspublished", "rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    name = parse_keyval(head.split(b"\n--\n", 1)[0]).get("N")
    return name if name and usable_name(name) else None


def make_app(repositories: Mapping[str, Path], *,
             access_log: Path | None = None) -> web.Application:
    """An aiohttp application serving each storage directory at ``/cvmfs/<name>/``.

    GET and HEAD only; headers as the stock Apache configuration sets them (§1.7): no
    ``Last-Modified``, no ``ETag``, conditional requests ignored; single byte ranges honoured.
    ``/cvmfs/info/v1/repositories.json`` lists the repositories. ``access_log``: a file to
    which common-log-format lines are appended.
    """
    handler = _Handler(repositories, access_log)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    app.on_cleanup.append(handler.close)
    return app


def find_repositories(storage_root: Path) -> dict[str, Path]:
    """The repositories in a folder: the folder itself if it has ``.cvmfspublished`` (named
    after it), else each subfolder that has one."""
    root = Path(storage_root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory")
    if (root / ".cvmfspublished").is_file():
        return {root.resolve().name: root}
    found = {p.name: p for p in sorted(root.iterdir())
             if p.is_dir() and (p / ".cvmfspublished").is_file()}
    if not found:
        raise ConfigError(f"{root}: no repository storage (no .cvmfspublished in it or in any "
                          f"of its subfolders)")
    return found


def _listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=4096,
                                    reuse_port=reuse_port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger, with malformed requests (scanners, broken clients) reduced from
    a traceback at ERROR level to one INFO line."""

    def exception(self, msg: object, *args: object, exc_info: object = True,
                  **kwargs: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            reason = (exc_info.message or "").strip().splitlines() or [str(exc_info.code)]
            self.info(f"{msg}: %s", *args, reason[0])
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _runner(app: web.Application, shutdown_timeout: float) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, keepalive_timeout=75.0,
                         shutdown_timeout=shutdown_timeout,
                         logger=_ServerLog(logging.getLogger("aiohttp.server")))


class RepositoryServer:
    """The server in a background thread with its own event loop (tests, the demo, tools).

    ``port=0`` picks a free port; ``url`` is ``http://host:port`` once started, and a
    repository's URL is ``url + "/cvmfs/" + name`` (:meth:`repository_url`).
    """

    def __init__(self, repositories: Mapping[str, Path], *, host: str = "127.0.0.1",
                 port: int = 0, access_log: Path | None = None) -> None:
        self.repositories = dict(repositories)
        self.host = host
        self.port = port
        self.access_log = access_log
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("RepositoryServer.url: the server is not running")
        return _base_url(self.host, self.port)

    def repository_url(self, name: str) -> str:
        return f"{self.url}/cvmfs/{name}"

    def start(self) -> RepositoryServer:
        if self._thread is not None:
            raise RuntimeError("RepositoryServer.start: already running")
        app = make_app(self.repositories, access_log=self.access_log)
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(app, sock, ready),
                                        name=f"pycvmfs-http-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            self._thread.join()
            self._thread = None
            raise self._failure
        return self

    def _run(self, app: web.Application, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        runner = _runner(app, shutdown_timeout=2.0)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as e:
            self._failure = e
            sock.close()
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Stop serving (closes open connections, flushes the access log); idempotent."""
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> RepositoryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve_until_signalled(repositories: Mapping[str, Path], access_log: Path | None,
                                 sock: socket.socket) -> None:
    runner = _runner(make_app(repositories, access_log=access_log), shutdown_timeout=10.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop when it is installed (about 40 % more requests per core), else on
    the standard event loop."""
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def _raise_open_files_limit() -> None:
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def serve_forever(repositories: Mapping[str, Path], *, host: str = "127.0.0.1",
                  port: int = 8000, access_log: Path | None = None, workers: int = 1,
                  ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut down cleanly and return.

    Must run in the main thread. ``workers > 1`` forks that many processes (one event loop
    each; one loop uses one core), each with its own ``SO_REUSEPORT`` socket so that the kernel
    spreads connections evenly (one shared socket where that option is missing). Runs on uvloop
    when it is installed. ``ready(url)`` is called once the socket listens.
    """
    make_app(repositories, access_log=access_log)  # validate before binding
    if workers > 1 and not hasattr(os, "fork"):
        raise ConfigError("several workers need os.fork(), which this platform lacks")
    _raise_open_files_limit()
    reuse_port = workers > 1 and hasattr(socket, "SO_REUSEPORT")
    sock = _listen(host, port, reuse_port=reuse_port)
    port = sock.getsockname()[1]
    if ready is not None:
        ready(_base_url(host, port))
    if workers <= 1:
        _run(_serve_until_signalled(repositories, access_log, sock))
    else:
        _run_workers(repositories, access_log, sock, host, port, workers, reuse_port)


def _run_workers(repositories: Mapping[str, Path], access_log: Path | None,
                 sock: socket.socket, host: str, port: int, workers: int,
                 reuse_port: bool) -> None:
    """Fork the workers, pass SIGINT/SIGTERM on to them, wait for all; raise if one failed."""
    children: list[int] = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                if reuse_port and i > 0:  # the first child keeps the parent's socket
                    sock.close()
                    sock = _listen(host, port, reuse_port=True)
                _run(_serve_until_signalled(repositories, access_log, sock))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    failed: list[str] = []
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while children:
            pid, status = os.wait()
            if pid in children:
                children.remove(pid)
                if (code := os.waitstatus_to_exitcode(status)) != 0:
                    failed.append(f"worker {pid} exited with {code}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise CvmfsError(f"serving on {_base_url(host, port)}: " + "; ".join(failed))
