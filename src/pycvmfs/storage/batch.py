"""BatchFetcher: many GETs at once over libcurl's multi interface, driven by one thread."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Protocol

import pycurl

from pycvmfs.storage.http import DIRECT, HttpSource, quote_relpath

__all__ = ["BatchFetcher", "Transfer"]

#: libcurl hands over bodies in blocks of up to this size (``CURLOPT_BUFFERSIZE``).
_BUFFER = 256 * 1024
#: How long the driver waits on sockets before it looks at the queue of new transfers again.
_SELECT = 0.005


class Transfer(Protocol):
    """One GET. ``write`` gets the body's blocks, then ``done`` once, in the driver thread.

    ``done(None)`` means a 200 whose body arrived whole; otherwise the argument says what went
    wrong (status, connection error, timeout) and the caller retries through the slow path
    (:meth:`HttpSource.fetch`, which knows fail-over, no-cache retries and backoff).
    """

    relpath: str

    def write(self, block: bytes) -> None: ...

    def done(self, error: str | None) -> None: ...


class BatchFetcher:
    """Fetches from ``source``'s current server through its current proxy, ``parallel``
    transfers at a time on keep-alive connections, with the HTTP work done in C.

    :meth:`submit` is thread-safe and returns at once; ``Transfer.write``/``done`` run in the
    driver thread, so they must be quick (hash, buffer, store). Only the first choice of server
    and proxy is used here: a transfer that fails is reported to ``done`` with the reason, and
    the caller falls back to ``source.fetch`` for it, which then also moves the source's
    current server/proxy on for the transfers that follow.
    """

    def __init__(self, source: HttpSource, *, parallel: int = 16,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.source = source
        self.parallel = max(1, parallel)
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[Transfer, int | None] | None] = \
            queue.SimpleQueue()
        self._multi = pycurl.CurlMulti()
        self._free = [self._easy() for _ in range(self.parallel)]
        self._active: dict[pycurl.Curl, Transfer] = {}
        self._routes: dict[pycurl.Curl, tuple[str, float]] = {}  # proxy, timeout set on each
        self._capped: dict[pycurl.Curl, _Capped] = {}  # the transfers with a size limit
        self._closed = False
        self._thread = threading.Thread(target=self._drive, name="pycvmfs-batch", daemon=True)
        self._thread.start()

    def _easy(self) -> pycurl.Curl:
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.FOLLOWLOCATION, 0)
        c.setopt(pycurl.BUFFERSIZE, _BUFFER)
        c.setopt(pycurl.HTTPHEADER, [f"User-Agent: {self.source.user_agent}",
                                      "Connection: keep-alive"])
        # libcurl's own proxy environment variables must not override CVMFS_HTTP_PROXY
        c.setopt(pycurl.NOPROXY, "")
        return c

    def submit(self, transfer: Transfer, max_size: int | None = None) -> None:
        """Queue a transfer; with ``max_size``, a body of more bytes ends it at once (its
        ``done`` gets the reason)."""
        if self._closed:
            raise RuntimeError("BatchFetcher is closed")
        self._queue.put((transfer, max_size))

    def close(self) -> None:
        """Finish what was submitted, then stop the driver thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            for c in self._free:
                c.close()
            self._multi.close()

    def __enter__(self) -> BatchFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the driver thread --------------------------------------------------------------------

    def _route(self) -> tuple[str, str, float]:
        """The source's current server, proxy and timeout (asked once per run of starts)."""
        proxy = self.source.current_proxy
        return self.source.current_url, proxy, self.source.timeout_for(proxy)

    def _start(self, t: Transfer, max_size: int | None, route: tuple[str, str, float]) -> None:
        base, proxy, timeout = route
        try:
            url = f"{base}/{quote_relpath(t.relpath)}"
        except Exception as e:  # e.g. a path that must not be asked for: the slow path says why
            self._done(t, f"not requested: {e}")
            return
        c = self._free.pop()
        c.setopt(pycurl.URL, url)
        if self._routes.get(c) != (proxy, timeout):  # set once per handle while unchanged
            self._routes[c] = (proxy, timeout)
            c.setopt(pycurl.PROXY, "" if proxy == DIRECT else proxy)
            c.setopt(pycurl.CONNECTTIMEOUT_MS, int(timeout * 1000))
            # as the stock client: under CVMFS_LOW_SPEED_LIMIT bytes/s for the timeout fails
            # (at least 1 byte/s: a read timeout), and so does the source's deadline
            c.setopt(pycurl.LOW_SPEED_LIMIT, max(1, self.source.low_speed_limit))
            c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(timeout)))
            c.setopt(pycurl.TIMEOUT_MS, int(self.source.deadline * 1000))
        if max_size is None:
            c.setopt(pycurl.WRITEFUNCTION, t.write)
        else:
            self._capped[c] = capped = _Capped(t, max_size)
            c.setopt(pycurl.WRITEFUNCTION, capped.write)
        self._active[c] = t
        self._multi.add_handle(c)
        self.source.count_request()

    def _finish(self, c: pycurl.Curl, error: str | None) -> None:
        t = self._active.pop(c)
        self._multi.remove_handle(c)
        if error is None:
            status = c.getinfo(pycurl.RESPONSE_CODE)
            if status != 200:
                error = f"HTTP {status}"
        capped = self._capped.pop(c, None)
        if capped is not None and capped.over:
            error = f"more than {capped.limit} bytes, its size limit; stopped there"
        c.setopt(pycurl.WRITEFUNCTION, _discard)  # drop the transfer's reference
        self._free.append(c)
        self._done(t, error)

    def _done(self, t: Transfer, error: str | None) -> None:
        try:
            t.done(error)
        except BaseException as e:  # the caller's bookkeeping failed: report, keep driving
            if self._on_error is None:
                raise
            self._on_error(e)

    def _drive(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # never leave a transfer without its done(): callers wait
            reason = f"transfer engine failed: {e}"
            for c, t in list(self._active.items()):
                with contextlib.suppress(Exception):
                    self._multi.remove_handle(c)
                self._free.append(c)
                self._done(t, reason)
            self._active.clear()
            self._capped.clear()
            while (queued := self._queue.get()) is not None:
                self._done(queued[0], reason)

    def _loop(self) -> None:
        stopping = False
        while not stopping or self._active:
            # take new transfers while handles are free; block only when idle
            route = None
            while self._free and not stopping:
                try:
                    queued = self._queue.get(block=not self._active, timeout=None)
                except queue.Empty:
                    break
                if queued is None:
                    stopping = True
                    break
                if route is None:
                    route = self._route()
                self._start(*queued, route)
            if not self._active:
                continue
            while True:
                ret, _ = self._multi.perform()
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
            while True:
                left, ok, failed = self._multi.info_read()
                for c in ok:
                    self._finish(c, None)
                for c, _code, message in failed:
                    self._finish(c, message or "transfer failed")
                if not left:
                    break
            if self._active and (not self._free or self._queue.empty()):
                self._multi.select(_SELECT)


def _discard(block: bytes) -> None:
    return None


class _Capped:
    """A transfer's ``write`` that ends the transfer (returns 0) past ``limit`` bytes."""

    __slots__ = ("got", "limit", "over", "transfer")

    def __init__(self, transfer: Transfer, limit: int) -> None:
        self.transfer, self.limit = transfer, limit
        self.got = 0
        self.over = False

    def write(self, block: bytes) -> int | None:
        self.got += len(block)
        if self.got > self.limit:
            self.over = True
            return 0
        return self.transfer.write(block)  # type: ignore[func-returns-value]
