"""HttpSource: repository files over HTTP from a server chain, through proxies, with failover."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from pycvmfs import __version__
from pycvmfs.errors import ConfigError, FetchError, IntegrityError, ObjectNotFoundError
from pycvmfs.storage.base import BLOCK_SIZE, Consumer
from pycvmfs.storage.local import check_relpath
from pycvmfs.storage.watchdog import WATCHED_POOLS, HeadersTooSlow

T = TypeVar("T")

#: The proxy name meaning "connect to the server directly".
DIRECT = "DIRECT"

#: What ``proxies=`` accepts: a ``CVMFS_HTTP_PROXY`` string, a list of such strings (each one or
#: more groups, in fail-over order), or a list of groups (lists of proxy URLs / ``DIRECT``).
ProxySpec = str | Sequence[str | Sequence[str]]

#: Headers asking caches on the way for a fresh copy (§8.6).
NO_CACHE_HEADERS = {"Pragma": "no-cache", "Cache-Control": "no-cache"}

# How one attempt ended. NET: connection error / timeout / 429, retried on the same URL, then the
# next proxy. PROXY: the proxy reported the error, next proxy. HOST: the server failed, next
# server. NOT_FOUND: a 404 (a host failure too). BAD_DATA: the consumer rejected the bytes.
_OK, _NET, _PROXY, _HOST, _NOT_FOUND, _BAD_DATA = "ok", "net", "proxy", "host", "404", "bad"


@dataclass
class _Outcome:
    kind: str
    reason: str = ""
    value: Any = None
    error: IntegrityError | None = None


class _TransferError(Exception):
    """The body could not be read to its end (dropped connection, read timeout)."""


@dataclass(frozen=True)
class _Pace:
    """How slow a transfer may be: under ``low_speed`` bytes/s for ``window`` seconds, or not
    finished ``deadline`` seconds after its request (0: no deadline), it fails."""

    low_speed: int
    window: float
    deadline: float
    started: float


class _Body:
    """The iterator of blocks handed to a consumer; remembers transfer errors and completion.
    Blocks are what each read from the connection brought, so that a transfer too slow for
    its :class:`_Pace` is noticed between reads, as libcurl's low-speed limit does."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, pace: _Pace) -> None:
        self._resp = resp
        self._pace = pace
        self.error: str | None = None
        self.complete = False

    def __iter__(self) -> Iterator[bytes]:
        pace = self._pace
        clock = time.monotonic
        since, got = clock(), 0  # the current low-speed window: its start, bytes in it
        try:
            while block := self._resp.read1(BLOCK_SIZE):
                now = clock()
                got += len(block)
                if now - since >= pace.window:
                    if got < pace.low_speed * (now - since):
                        self._fail(f"too slow: {got} bytes in {now - since:.1f} s, under the "
                                   f"low-speed limit of {pace.low_speed} bytes/s")
                    since, got = now, 0
                if pace.deadline and now - pace.started > pace.deadline:
                    self._fail(f"deadline: transfer not finished after {pace.deadline:g} s")
                yield block
        except (Urllib3Error, OSError) as e:
            self._fail(f"transfer interrupted: {_reason(e)}", e)
        self.complete = True

    def _fail(self, reason: str, cause: BaseException | None = None) -> None:
        self.error = reason
        raise _TransferError(reason) from cause

    def release(self) -> None:
        """Return the connection to the pool if the body was read, else drop the connection."""
        done = self.complete or getattr(self._resp, "length_remaining", None) == 0
        if not done or self.error is not None:
            self._resp.close()
        self._resp.release_conn()


class HttpSource:
    """A :class:`~pycvmfs.storage.base.Source` over a chain of repository base URLs.

    ``urls`` are tried in order (``http://host:port/cvmfs/<fqrn>``); the order is sticky: after a
    failover, later fetches start at the server that last delivered, until ``host_reset_after``
    seconds have passed since that failover (then the first server is preferred again; ``0``:
    never). One urllib3 pool manager per proxy keeps connections alive; the object is safe to
    share between threads.

    Proxies (§8.1) come in *groups* tried in fail-over order; the members of a group share the
    load: the current proxy is a random member, on its failure the other members of the group
    follow in random order, then the next groups (each starting at a random member), wrapping
    around. ``DIRECT`` (no proxy) may be a member. ``proxies`` is a ``CVMFS_HTTP_PROXY`` string
    (see :func:`parse_proxy_spec`), a list of such strings, or a list of groups. The working
    proxy is sticky; ``proxy_reset_after`` seconds after a fail-over to a later group the first
    group is preferred again (``0``: never). Requests through a proxy use ``timeout`` seconds,
    direct ones ``timeout_direct`` (default: ``timeout``).

    Slow transfers (``CVMFS_LOW_SPEED_LIMIT``, as the stock client sets libcurl's
    ``CURLOPT_LOW_SPEED_LIMIT``/``_TIME``): a body arriving at less than ``low_speed_limit``
    bytes/s (default 1024) over a window of the request's timeout fails, and so does a
    transfer not finished ``deadline`` seconds after its request (default 3600; 0: none). The
    response headers must be complete within twice the timeout.
    Either counts as a connection failure (retry, then the next proxy, then the next server);
    the error names the URL and says "too slow" or "deadline".

    Failover (§8.6): a connection error, timeout or HTTP 429 is retried on the same URL up to
    ``retries`` times, sleeping between ``backoff[0]`` and twice that for the first retry, doubled
    per retry, at most ``backoff[1]`` seconds; then the next proxy is tried, then the next server.
    A 3xx (redirects are never followed), 400, 404 or 5xx moves to the next server; so does an
    error a proxy reports about itself (``X-Squid-Error`` / ``Proxy-Status: ...error=`` headers,
    other 4xx through a proxy), after the remaining proxies have been tried. When the consumer
    raises :class:`~pycvmfs.errors.IntegrityError` the same URL is fetched once more with
    ``Pragma: no-cache`` and ``Cache-Control: no-cache`` (unless those were already sent), then
    the next server is tried.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        proxies: ProxySpec = (DIRECT,),
        timeout: float = 10.0,
        timeout_direct: float | None = None,
        retries: int = 1,
        backoff: tuple[float, float] = (0.05, 1.0),
        host_reset_after: float = 0.0,
        proxy_reset_after: float = 0.0,
        user_agent: str = f"pycvmfs/{__version__}",
        pool_size: int = 10,
        low_speed_limit: int = 1024,
        deadline: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        self._urls = [_check_url(u) for u in urls]
        if not self._urls:
            raise ConfigError("HttpSource: no server URL given")
        self._groups = _proxy_groups(proxies)
        if timeout_direct is None:
            timeout_direct = timeout
        if (timeout <= 0 or timeout_direct <= 0 or retries < 0 or backoff[0] < 0
                or backoff[1] < backoff[0] or host_reset_after < 0 or proxy_reset_after < 0
                or low_speed_limit < 0 or deadline < 0):
            raise ConfigError(f"HttpSource: invalid timeout={timeout}/{timeout_direct}, "
                              f"retries={retries}, backoff={backoff}, reset "
                              f"{host_reset_after}/{proxy_reset_after}, low_speed_limit="
                              f"{low_speed_limit} or deadline={deadline}")
        self.low_speed_limit = low_speed_limit
        self.deadline = deadline
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._timeout_direct = urllib3.Timeout(connect=timeout_direct, read=timeout_direct)
        self._retries = retries
        self._backoff = backoff
        self._host_reset_after = host_reset_after
        self._proxy_reset_after = proxy_reset_after
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.user_agent = user_agent
        self._headers = {"Connection": "keep-alive", "User-Agent": user_agent}
        self._pools = {p: self._make_pool(p, pool_size) for g in self._groups for p in g}
        self._lock = threading.Lock()
        self._server = 0
        self._host_failover_at = 0.0
        self._group = 0
        self._member = self._rng.randrange(len(self._groups[0]))
        self._proxy_failover_at = 0.0
        self._stats = {"requests": 0, "retries": 0, "failovers": 0, "proxy_failovers": 0,
                       "bad_data": 0, "nioerr": 0}

    def _make_pool(self, proxy: str, pool_size: int) -> urllib3.PoolManager:
        timeout = self._timeout_direct if proxy == DIRECT else self._timeout
        kw: dict[str, Any] = {"num_pools": max(10, len(self._urls)), "maxsize": pool_size,
                              "block": False, "retries": False, "timeout": timeout}
        manager = (urllib3.PoolManager(**kw) if proxy == DIRECT
                   else urllib3.ProxyManager(proxy, **kw))
        manager.pool_classes_by_scheme = WATCHED_POOLS  # (headers within the timeout)
        return manager

    def __repr__(self) -> str:
        return f"HttpSource({self._urls!r}, proxies={self.proxy_spec!r})"

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that make an equivalent source (JSON-serialisable), e.g. in
        another process."""
        return {"urls": list(self._urls), "proxies": [list(g) for g in self._groups],
                "timeout": float(self._timeout.connect_timeout),  # type: ignore[arg-type]
                "timeout_direct": float(self._timeout_direct.connect_timeout),  # type: ignore
                "retries": self._retries, "backoff": list(self._backoff),
                "host_reset_after": self._host_reset_after,
                "proxy_reset_after": self._proxy_reset_after, "user_agent": self.user_agent,
                "low_speed_limit": self.low_speed_limit, "deadline": self.deadline}

    def __enter__(self) -> HttpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection -----------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    @property
    def proxies(self) -> list[str]:
        """Every proxy, group after group (``DIRECT`` for none)."""
        return [p for g in self._groups for p in g]

    @property
    def proxy_groups(self) -> list[list[str]]:
        return [list(g) for g in self._groups]

    @property
    def proxy_spec(self) -> str:
        """The proxy groups in ``CVMFS_HTTP_PROXY`` syntax."""
        return ";".join("|".join(g) for g in self._groups)

    @property
    def current_url(self) -> str:
        """The server the next fetch starts with (the ``user.host`` xattr)."""
        with self._lock:
            self._maybe_reset()
            return self._urls[self._server]

    @property
    def current_proxy(self) -> str:
        """The proxy the next request starts with, ``DIRECT`` for none (``user.proxy``)."""
        with self._lock:
            self._maybe_reset()
            return self._groups[self._group][self._member]

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``requests`` sent, ``retries`` of a URL, ``failovers`` to another server,
        ``proxy_failovers`` to another proxy, ``bad_data`` (bodies the consumer rejected),
        ``nioerr`` (fetches that failed for good: the client's I/O errors)."""
        with self._lock:
            return dict(self._stats)

    def timeout_for(self, proxy: str) -> float:
        """The connect/read timeout in seconds for requests through ``proxy`` (or DIRECT)."""
        t = self._timeout_direct if proxy == DIRECT else self._timeout
        return float(t.connect_timeout)  # type: ignore[arg-type]

    def count_request(self, n: int = 1) -> None:
        """Count ``n`` requests made on this source's behalf (by a batch fetcher)."""
        self._count("requests", n)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def describe(self, relpath: str = "") -> str:
        rel = check_relpath(relpath, allow_empty=True)
        base = self.current_url
        return f"{base}/{rel}" if rel else base

    def close(self) -> None:
        """Close every pooled connection (the source stays usable; connections reopen)."""
        for pool in self._pools.values():
            pool.clear()

    # -- sticky choices ----------------------------------------------------------------------

    def _maybe_reset(self) -> None:
        """Return to the first server / proxy group once the reset delays passed (lock held)."""
        now = self._clock()
        if (self._server and self._host_reset_after
                and now - self._host_failover_at >= self._host_reset_after):
            self._server = 0
        if (self._group and self._proxy_reset_after
                and now - self._proxy_failover_at >= self._proxy_reset_after):
            self._group = 0
            self._member = self._rng.randrange(len(self._groups[0]))

    def _proxy_order(self) -> list[tuple[int, int]]:
        """(group, member) pairs in the order one server is tried through them."""
        with self._lock:
            order = [(self._group, self._member)]
            n = len(self._groups)
            for step in range(n):
                g = (self._group + step) % n
                members = [m for m in range(len(self._groups[g]))
                           if step or m != self._member]
                self._rng.shuffle(members)
                order += [(g, m) for m in members]
        return order

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self, relpath: str, consume: Consumer[T], *, what: str, fresh: bool = False) -> T:
        """GET ``<server>/<relpath>`` and stream the body into ``consume``; see the class doc."""
        path = quote_relpath(relpath)
        with self._lock:
            self._maybe_reset()
            start = self._server
        attempts: list[str] = []
        finals: list[_Outcome] = []
        n = len(self._urls)
        for step in range(n):
            index = (start + step) % n
            if step:
                self._count("failovers")
            out = self._from_server(index, path, consume, fresh, attempts)
            if out.kind == _OK:
                with self._lock:
                    if index != self._server:
                        self._host_failover_at = self._clock()
                    self._server = index
                return out.value
            finals.append(out)
        self._count("nioerr")
        if all(o.kind == _NOT_FOUND for o in finals):
            raise ObjectNotFoundError(what, attempts)
        if all(o.kind == _BAD_DATA for o in finals):
            error = finals[-1].error
            if error is not None:
                raise error
        raise FetchError(what, attempts)

    def _from_server(self, index: int, path: str, consume: Consumer[T], fresh: bool,
                     attempts: list[str]) -> _Outcome:
        """Try one server through each proxy in turn; returns success or the host's failure."""
        url = f"{self._urls[index]}/{path}"
        no_cache = fresh
        out = _Outcome(_NET)
        for pstep, (group, member) in enumerate(self._proxy_order()):
            proxy = self._groups[group][member]
            if pstep:
                self._count("proxy_failovers")
            tries = 0
            delay = 0.0
            while True:
                out = self._attempt(url, proxy, consume, no_cache)
                if out.kind == _OK:
                    with self._lock:
                        if group != self._group:
                            self._proxy_failover_at = self._clock()
                        self._group, self._member = group, member
                    return out
                attempts.append(f"{url}: {out.reason}"
                                + ("" if proxy == DIRECT else f" (via {proxy})"))
                if out.kind == _NET and tries < self._retries:
                    tries += 1
                    self._count("retries")
                    delay = self._next_backoff(delay)
                    time.sleep(delay)
                    continue
                if out.kind == _BAD_DATA and not no_cache:
                    no_cache = True
                    self._count("retries")
                    continue
                break
            if out.kind not in (_NET, _PROXY):
                return out
        return out

    def _next_backoff(self, previous: float) -> float:
        """Stock backoff: first in [init, 2*init], then doubled, capped at the maximum."""
        low, high = self._backoff
        if previous <= 0:
            with self._lock:
                previous = low * (1.0 + self._rng.random()) / 2
        return min(high, previous * 2)

    def _attempt(self, url: str, proxy: str, consume: Consumer[T], no_cache: bool) -> _Outcome:
        headers = {**self._headers, **NO_CACHE_HEADERS} if no_cache else dict(self._headers)
        via_proxy = proxy != DIRECT
        self._count("requests")
        started = time.monotonic()
        try:
            resp = self._pools[proxy].urlopen(
                "GET", url, headers=headers, redirect=False, retries=False,
                preload_content=False,
                timeout=self._timeout if via_proxy else self._timeout_direct)
        except (Urllib3Error, OSError) as e:
            return _Outcome(_NET, _reason(e))
        if resp.status != 200:
            out = _classify(resp, via_proxy)
            resp.drain_conn()
            resp.release_conn()
            return out
        pace = _Pace(self.low_speed_limit, self.timeout_for(proxy), self.deadline, started)
        body = _Body(resp, pace)
        try:
            value = consume(iter(body))
        except Exception as e:
            body.release()
            if body.error is not None:  # the transfer broke, whatever the consumer made of it
                return _Outcome(_NET, body.error)
            if isinstance(e, IntegrityError):
                self._count("bad_data")
                return _Outcome(_BAD_DATA, f"bad data: {e}", error=e)
            raise
        body.release()
        return _Outcome(_OK, value=value)


def _classify(resp: urllib3.BaseHTTPResponse, via_proxy: bool) -> _Outcome:
    """The failure kind of a non-200 answer."""
    status = resp.status
    text = f"HTTP {status}"
    if 300 <= status < 400:
        return _Outcome(_HOST, f"{text} redirect to {resp.headers.get('Location')!r} "
                               "not followed")
    if via_proxy and status >= 400 and (
            "X-Squid-Error" in resp.headers
            or "error=" in resp.headers.get("Proxy-Status", "")):
        return _Outcome(_PROXY, f"{text} proxy error")
    if status == 404:
        return _Outcome(_NOT_FOUND, f"{text} not found")
    if status == 429:
        return _Outcome(_NET, f"{text} too many requests")
    if status == 400 or status >= 500:
        return _Outcome(_HOST, text)
    if 400 <= status < 500 and via_proxy:
        return _Outcome(_PROXY, f"{text} from proxy")
    return _Outcome(_HOST, f"unexpected {text}")


def _reason(e: BaseException) -> str:
    """A short description of a network exception."""
    if isinstance(e, urllib3.exceptions.ProxyError) and len(e.args) > 1:
        return f"proxy error: {_reason(e.args[1])}"
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        return f"connection failed: {str(e).rsplit('connection: ', 1)[-1]}"
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
        return "connect timeout"
    if isinstance(e, urllib3.exceptions.ReadTimeoutError):
        return "read timeout"
    if isinstance(e, urllib3.exceptions.ProtocolError):
        if len(e.args) > 1 and isinstance(e.args[1], HeadersTooSlow):
            return str(e.args[1])
        return f"protocol error: {e}"
    return f"{type(e).__name__}: {e}"


def quote_relpath(relpath: str) -> str:
    """``relpath`` checked (no ``..``, no absolute path) and percent-encoded for a URL."""
    return quote(check_relpath(relpath), safe="/-._~,:@+=")


def _check_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{url!r}: server URL must be http:// or https:// with a host")
    if parts.query or parts.fragment:
        raise ConfigError(f"{url!r}: server URL must not have a query or fragment")
    return url


def _check_proxy(proxy: str) -> str:
    proxy = proxy.strip()
    if proxy.upper() == DIRECT:
        return DIRECT
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urlsplit(proxy)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{proxy!r}: proxy must be DIRECT or http://host:port")
    return proxy


def parse_proxy_spec(text: str) -> list[list[str]]:
    """The proxy groups of a ``CVMFS_HTTP_PROXY`` value (§8.1).

    ``;`` separates groups (fail-over order), ``|`` the members of a group (load-balanced);
    ``DIRECT`` (any case) means no proxy; a member without scheme gets ``http://``. Blank
    groups and members (``"a;;b"``, a trailing ``;``) are ignored. An empty value and ``auto``
    (proxy auto-discovery through PAC files, which pycvmfs does not implement) raise
    :class:`~pycvmfs.errors.ConfigError`: say ``DIRECT`` to mean no proxy.
    """
    groups = []
    for chunk in text.split(";"):
        members = [m.strip() for m in chunk.split("|") if m.strip()]
        if any(m.lower() == "auto" for m in members):
            raise ConfigError(f"proxy spec {text!r}: 'auto' (PAC proxy discovery) is not "
                              "supported; list the proxies or use DIRECT")
        if members:
            groups.append([_check_proxy(m) for m in members])
    if not groups:
        raise ConfigError(f"proxy spec {text!r} names no proxy (use 'DIRECT' for none)")
    return groups


def _proxy_groups(proxies: ProxySpec) -> list[list[str]]:
    """Normalize the ``proxies=`` argument of :class:`HttpSource` to a list of groups."""
    if isinstance(proxies, str):
        return parse_proxy_spec(proxies)
    groups: list[list[str]] = []
    for item in proxies:
        if isinstance(item, str):
            groups += parse_proxy_spec(item)
            continue
        group = [_check_proxy(m) for m in item]
        if not group:
            raise ConfigError(f"HttpSource: empty proxy group in {proxies!r}")
        groups.append(group)
    if not groups:
        raise ConfigError("HttpSource: empty proxy list (use 'DIRECT' for no proxy)")
    return groups
