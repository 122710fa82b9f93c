"""The wait for response headers, bounded: a server that sends them too slowly is cut off."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["WATCHED_POOLS", "HeadersTooSlow"]


class HeadersTooSlow(OSError):
    """The response headers were not complete within twice the read timeout (the socket was
    shut down): the low-speed limit of the wait for them. (A server that sends nothing at all
    meets the read timeout first; libcurl's low-speed check also ends a transfer between one
    and two of its windows.)"""


class _Watchdog:
    """One thread (started on first use) that shuts down the sockets whose time ran out."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._expired: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float) -> int:
        with self._cond:
            token = next(self._tokens)
            self._due[token] = (time.monotonic() + seconds, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="pycvmfs-header-watchdog")
                self._thread.start()
            self._cond.notify()
        return token

    def unwatch(self, token: int) -> bool:
        """Stop watching; True if the time had run out (the socket was shut down)."""
        with self._cond:
            self._due.pop(token, None)
            if token in self._expired:
                self._expired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (due, sock) in list(self._due.items()):
                    if due <= now:
                        del self._due[token]
                        self._expired.add(token)
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                nearest = min((due for due, _ in self._due.values()), default=None)
                self._cond.wait(None if nearest is None else max(0.0, nearest - now))


_WATCHDOG = _Watchdog()


class _Watched:
    """Mixed into urllib3's connections: the response headers must arrive within twice the
    read timeout in all (urllib3's own timeout is per read, which a trickle never reaches)."""

    sock: socket.socket | None

    def getresponse(self) -> Any:
        sock = self.sock
        read_timeout = sock.gettimeout() if sock is not None else None
        if sock is None or not read_timeout:
            return super().getresponse()  # type: ignore[misc]
        seconds = 2 * read_timeout
        token = _WATCHDOG.watch(sock, seconds)
        try:
            return super().getresponse()  # type: ignore[misc]
        except Exception as e:
            if _WATCHDOG.unwatch(token):
                raise HeadersTooSlow(f"too slow: no complete response headers after "
                                     f"{seconds:g} s") from e
            raise
        finally:
            _WATCHDOG.unwatch(token)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


#: ``pool_classes_by_scheme`` for a urllib3 PoolManager / ProxyManager whose connections
#: bound the wait for response headers
WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _WatchedHTTPPool,
                                                       "https": _WatchedHTTPSPool}
