"""The HTTP server for repository storage directories: ``/cvmfs/<fqrn>/...`` like stock Apache.

One standard asyncio event loop per process runs :class:`~pycvmfs.server.protocol.
HttpConnection` protocols that answer from a :class:`~pycvmfs.server.site.Site`; several worker
processes can share the port (``SO_REUSEPORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

from pycvmfs.errors import ConfigError, CvmfsError
from pycvmfs.server.files import LONG_TTL, SHORT_TTL, parse_range, split_target
from pycvmfs.server.protocol import REQUEST_TIMEOUT, Connections
from pycvmfs.server.site import Site

__all__ = ["LONG_TTL", "SHORT_TTL", "RepositoryServer", "Site", "find_repositories",
           "parse_range", "serve_forever", "split_target"]

#: the signals that stop a server (blocked until a handler is in place)
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

#: Seconds a keep-alive connection may stay idle.
KEEPALIVE_TIMEOUT = 75.0


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


async def _serve(site: Site, sock: socket.socket, shutdown_timeout: float,
                 started: Callable[[asyncio.Event], None],
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
    """Serve on ``sock`` until the event given to ``started`` is set, then shut down."""
    loop = asyncio.get_running_loop()
    connections = Connections(site, keepalive_timeout=keepalive_timeout,
                              request_timeout=request_timeout)
    server = await loop.create_server(connections, sock=sock, backlog=4096)
    connections.start()
    stop = asyncio.Event()
    try:
        started(stop)
        await stop.wait()
    finally:
        server.close()
        await connections.shutdown(shutdown_timeout)


class RepositoryServer:
    """The server in a background thread with its own event loop (tests, the demo, tools).

    ``port=0`` picks a free port; ``url`` is ``http://host:port`` once started, and a
    repository's URL is ``url + "/cvmfs/" + name`` (:meth:`repository_url`). Idle keep-alive
    connections are closed after ``keepalive_timeout`` seconds, a request not received whole
    within ``request_timeout`` seconds gets 408 and its connection closes.
    """

    def __init__(self, repositories: Mapping[str, Path], *, host: str = "127.0.0.1",
                 port: int = 0, access_log: Path | None = None,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.repositories = dict(repositories)
        self.host = host
        self.port = port
        self.access_log = access_log
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
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
        site = Site(self.repositories, access_log=self.access_log)
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(site, sock, ready),
                                        name=f"pycvmfs-http-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            self._thread.join()
            self._thread = None
            raise self._failure
        return self

    def _run(self, site: Site, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()

        def started(stop: asyncio.Event) -> None:
            self._loop, self._stop = loop, stop
            ready.set()

        try:
            loop.run_until_complete(_serve(site, sock, 2.0, started, self.keepalive_timeout,
                                           self.request_timeout))
        except BaseException as e:
            if not ready.is_set():
                self._failure = e
        finally:
            sock.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            ready.set()

    def stop(self) -> None:
        """Stop serving (closes open connections, flushes the access log); idempotent."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._thread = None
        self._loop = self._stop = None

    def __enter__(self) -> RepositoryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve_until_signalled(repositories: Mapping[str, Path], access_log: Path | None,
                                 sock: socket.socket, request_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    signals = _STOP_SIGNALS

    def started(stop: asyncio.Event) -> None:
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        # a forked worker starts with these blocked (see _run_workers): one that arrived
        # during its start-up is delivered now, to the handler just set
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    try:
        await _serve(Site(repositories, access_log=access_log), sock, 10.0, started,
                     request_timeout=request_timeout)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


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
                  ready: Callable[[str], None] | None = None,
                  request_timeout: float = REQUEST_TIMEOUT) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut down cleanly and return.

    Must run in the main thread. ``workers > 1`` forks that many processes (one event loop
    each; one loop uses one core), each with its own ``SO_REUSEPORT`` socket so that the kernel
    spreads connections evenly (one shared socket where that option is missing).
    ``ready(url)`` is called once the socket listens. A request not received whole within
    ``request_timeout`` seconds gets 408 and its connection closes.
    """
    Site(repositories, access_log=access_log)  # validate before binding
    if workers > 1 and not hasattr(os, "fork"):
        raise ConfigError("several workers need os.fork(), which this platform lacks")
    _raise_open_files_limit()
    reuse_port = workers > 1 and hasattr(socket, "SO_REUSEPORT")
    sock = _listen(host, port, reuse_port=reuse_port)
    port = sock.getsockname()[1]
    # SIGINT/SIGTERM wait (blocked) until a handler is in place: from the moment ``ready``
    # says the server listens, a stop always ends it cleanly, even during its start-up
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if workers <= 1:
            if ready is not None:
                ready(_base_url(host, port))
            asyncio.run(_serve_until_signalled(repositories, access_log, sock,
                                               request_timeout))
        else:
            _run_workers(repositories, access_log, sock, host, port, workers, reuse_port,
                         request_timeout, ready, mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run_workers(repositories: Mapping[str, Path], access_log: Path | None,
                 sock: socket.socket, host: str, port: int, workers: int,
                 reuse_port: bool, request_timeout: float,
                 ready: Callable[[str], None] | None, mask: set[int]) -> None:
    """Fork the workers, pass SIGINT/SIGTERM on to them, wait for all; raise if one failed.

    Called with the stop signals blocked: each worker inherits them blocked and unblocks them
    once its event loop handles them (a stop asked for while it starts ends it cleanly, and
    the parent's forwarding handler never runs in a worker); the parent restores ``mask``
    once every worker is forked and ``ready`` was told."""
    children: list[int] = []

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in _STOP_SIGNALS}
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                for sig in _STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                if reuse_port and i > 0:  # the first child keeps the parent's socket
                    sock.close()
                    sock = _listen(host, port, reuse_port=True)
                asyncio.run(_serve_until_signalled(repositories, access_log, sock,
                                                   request_timeout))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    if ready is not None:
        ready(_base_url(host, port))
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    failed: list[str] = []
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
