"""HTTP to one registry: a urllib3 pool, https (plain HTTP on loopback only), retries, auth."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import ipaddress
import json
import random
import re
import time
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3

from pycvmfs import __version__
from pycvmfs.containers.credentials import Credentials
from pycvmfs.errors import ContainerError, RegistryError

__all__ = ["RegistryHttp", "Retries", "finish", "is_loopback", "read_capped", "shown_url"]

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_HOPS = 5
_MAX_TOKEN = 1 << 20
_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` (or ``[v6]:port``) is 127.0.0.0/8, ::1 or localhost."""
    name = urlsplit("//" + host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def shown_url(url: str) -> str:
    """A URL for messages: without its query (signed storage URLs carry secrets there)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}{u.path}"


def read_capped(resp: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    """The whole body of ``resp``, refused (by ``what``) when it is larger than ``limit``."""
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        finish(resp)
        raise ContainerError(f"{what}: {length} bytes, more than the {limit} allowed")
    try:
        data = resp.read(limit + 1)
    finally:
        finish(resp)
    if len(data) > limit:
        raise ContainerError(f"{what}: more than the {limit} bytes allowed")
    return data


def finish(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back to the pool, or close it when its body was not read to the
    end (a later request on it would read the rest as its answer)."""
    if not resp.closed:
        resp.close()
    resp.release_conn()


def _drain(resp: urllib3.BaseHTTPResponse) -> None:
    """Read and drop a (small) error or redirect body, keeping the connection if it can."""
    with contextlib.suppress(urllib3.exceptions.HTTPError):
        resp.read(1 << 16)
    finish(resp)


def _retried(resp: urllib3.BaseHTTPResponse, budget, url: str, what: str) -> bool:
    """Whether ``resp`` is a 429 or 5xx answer to try again (counted against ``budget``, which
    waits as ``Retry-After`` asks or backs off, and raises once it is spent)."""
    if resp.status != 429 and resp.status < 500:
        return False
    wait = _retry_after(resp.headers.get("Retry-After"))
    _drain(resp)
    budget.failed(url, what, f"HTTP {resp.status}", wait)
    return True


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of a ``WWW-Authenticate`` header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


class Retries:
    """The retry budget of one operation: exponential backoff with jitter, ``Retry-After``
    honoured up to ``max_wait`` seconds; past ``limit`` failures a RegistryError naming the
    URL and the last failure."""

    def __init__(self, limit: int, backoff: tuple[float, float], max_wait: float) -> None:
        self.limit = limit
        self.backoff = backoff
        self.max_wait = max_wait
        self.failures = 0

    def failed(self, url: str, what: str, why: str, retry_after: float | None = None) -> None:
        self.failures += 1
        if self.failures > self.limit:
            raise RegistryError(f"{what}: {shown_url(url)}: {why} (gave up after "
                                f"{self.limit} retries)")
        low, high = self.backoff
        delay = min(high, low * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            if retry_after > self.max_wait:
                raise RegistryError(f"{what}: {shown_url(url)}: {why}; the registry asks to "
                                    f"retry after {retry_after:.0f} s, more than "
                                    f"{self.max_wait:.0f} s")
            delay = max(delay, retry_after)
        time.sleep(delay)


class RegistryHttp:
    """GETs to one registry ``host[:port]`` with its credentials (if any).

    https with certificate verification, or plain HTTP when ``insecure`` and the host is on
    loopback. A 401 is answered once per request: a Bearer challenge by a token from its realm
    (cached per scope), a Basic one by the credentials; redirects are followed without the
    Authorization header when they leave the registry's host.
    """

    def __init__(self, host: str, *, credentials: Credentials | None = None,
                 insecure: bool = False, retries: int = 6, timeout: float = 30.0,
                 backoff: tuple[float, float] = (0.5, 30.0), max_wait: float = 120.0) -> None:
        if insecure and not is_loopback(host):
            raise ContainerError(f"registry {host}: --insecure (plain HTTP) is allowed only to "
                                 "a registry on loopback (127.0.0.0/8, ::1, localhost); use "
                                 "https for a remote registry")
        if retries < 0 or timeout <= 0 or backoff[0] < 0 or backoff[1] < backoff[0]:
            raise ContainerError(f"registry {host}: bad transfer settings (retries={retries}, "
                                 f"timeout={timeout}, backoff={backoff})")
        self.host = host
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self._login = credentials.lookup(host) if credentials else None
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=4, retries=False,
                                         timeout=urllib3.Timeout(connect=timeout, read=timeout),
                                         headers={"User-Agent": f"pycvmfs/{__version__}"})
        self._tokens: dict[str, str] = {}
        self._basic = False

    def __repr__(self) -> str:
        return f"RegistryHttp({self.base!r})"

    def close(self) -> None:
        self._pool.clear()

    def retry_budget(self) -> Retries:
        return Retries(self.retries, self.backoff, self.max_wait)

    def get(self, url: str, *, scope: str, what: str, headers: dict[str, str] | None = None,
            budget: Retries | None = None, method: str = "GET") -> urllib3.BaseHTTPResponse:
        """GET (or HEAD) ``url`` (on this registry) and return the unread response of the
        first answer that is neither a retryable failure (429, 5xx, a broken connection) nor
        a 401 that credentials can answer. The caller reads and releases it."""
        budget = budget or self.retry_budget()
        answered = False
        while True:
            sent = dict(headers or {})
            auth = self._authorization(scope)
            if auth:
                sent["Authorization"] = auth
            try:
                resp, final = self._follow(url, sent, what, method)
            except urllib3.exceptions.HTTPError as e:
                budget.failed(url, what, _reason(e))
                continue
            if resp.status == 401 and urlsplit(final).netloc == self.host:
                challenge = resp.headers.get("WWW-Authenticate", "")
                _drain(resp)
                if answered:
                    raise self._denied(url, what)
                self._answer(challenge, scope, url, what, budget)
                answered = True
                continue
            if _retried(resp, budget, url, what):
                continue
            return resp

    def get_document(self, url: str, *, scope: str, what: str, limit: int,
                     headers: dict[str, str] | None = None
                     ) -> tuple[int, urllib3.HTTPHeaderDict, bytes]:
        """Status, headers and body (at most ``limit`` bytes) of a GET; a connection broken
        while reading counts against the same retries."""
        budget = self.retry_budget()
        while True:
            resp = self.get(url, scope=scope, what=what, headers=headers, budget=budget)
            try:
                return resp.status, resp.headers, read_capped(resp, limit, what)
            except urllib3.exceptions.HTTPError as e:
                budget.failed(url, what, _reason(e))

    def _authorization(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._basic and self._login is not None:
            return _basic(self._login.username, self._login.password)
        return None

    def _answer(self, challenge: str, scope: str, url: str, what: str,
                budget: Retries) -> None:
        """Get what a 401's challenge asks for, or raise 'access denied'."""
        scheme, params = _challenge(challenge)
        if scheme == "bearer" and params.get("realm"):
            self._tokens[scope] = self._token(params["realm"], params.get("service"),
                                              params.get("scope") or scope, what, budget)
        elif scheme == "basic":
            if self._login is None or self._basic:
                raise self._denied(url, what)
            self._basic = True
        else:
            raise RegistryError(f"{what}: access denied by {shown_url(url)}: it asks for an "
                                "authentication this client does not speak "
                                f"({challenge[:80]!r})")

    def _denied(self, url: str, what: str) -> RegistryError:
        why = (f"the registry refused the credentials configured for {self.host}"
               if self._login is not None else
               f"no credentials are configured for {self.host} (give a credentials file or "
               "set them in the environment; registries answer so for a repository that "
               "does not exist, too)")
        return RegistryError(f"{what}: access denied by {shown_url(url)}: {why}")

    def _token(self, realm: str, service: str | None, scope: str, what: str,
               budget: Retries) -> str:
        """A Bearer token from the token service at ``realm`` (basic credentials if any)."""
        realm_host = urlsplit(realm).netloc
        if not (realm.startswith("https://") or (realm.startswith("http://") and self.insecure
                                                  and is_loopback(realm_host))):
            raise RegistryError(f"{what}: the token service {shown_url(realm)} is not https; "
                                "refused (plain HTTP only with --insecure on loopback)")
        query = urlencode([(k, v) for k, v in (("service", service), ("scope", scope)) if v])
        url = realm + ("&" if "?" in realm else "?") + query
        sent = {}
        if self._login is not None:
            sent["Authorization"] = _basic(self._login.username, self._login.password)
        twhat = f"{what}: token service"
        while True:
            try:
                resp, _final = self._follow(url, sent, twhat)
            except urllib3.exceptions.HTTPError as e:
                budget.failed(url, twhat, _reason(e))
                continue
            if _retried(resp, budget, url, twhat):
                continue
            try:
                body = read_capped(resp, _MAX_TOKEN, twhat)
            except urllib3.exceptions.HTTPError as e:
                budget.failed(url, twhat, _reason(e))
                continue
            break
        if resp.status in (401, 403):
            raise RegistryError(
                f"{twhat}: access denied by {shown_url(realm)} for {scope}: " + (
                    "it refused the credentials configured for " + self.host
                    if self._login is not None else
                    f"no credentials are configured for {self.host}"))
        if resp.status != 200:
            raise RegistryError(f"{twhat}: {shown_url(realm)} answered HTTP {resp.status}")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{twhat}: {shown_url(realm)} gave no token")
        return token

    def _follow(self, url: str, headers: dict[str, str], what: str, method: str = "GET"
                ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """GET, following redirects (at most 5): the response and the URL that gave it. The
        Authorization header is dropped once a redirect leaves the host of ``url``; plain
        HTTP only to loopback with --insecure."""
        origin = urlsplit(url).netloc
        for _ in range(_MAX_HOPS + 1):
            resp = self._pool.request(method, url, headers=headers, redirect=False,
                                      preload_content=False, retries=False)
            if resp.status not in _REDIRECTS:
                return resp, url
            location = resp.headers.get("Location")
            _drain(resp)
            if not location:
                raise RegistryError(f"{what}: {shown_url(url)}: HTTP {resp.status} without "
                                    "a Location")
            target = urljoin(url, location)
            parts = urlsplit(target)
            if not (parts.scheme == "https" or (parts.scheme == "http" and self.insecure
                                                 and is_loopback(parts.netloc))):
                raise RegistryError(f"{what}: {shown_url(url)} redirects to "
                                    f"{shown_url(target)}: not https; refused")
            if parts.netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError(f"{what}: {shown_url(url)}: more than {_MAX_HOPS} redirects")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _reason(e: BaseException) -> str:
    """A short description of a transfer failure, without the exception class noise."""
    cause = getattr(e, "reason", None) or (e.args[0] if e.args else e)
    text = str(cause)
    return f"connection failed ({text[:200]})"
