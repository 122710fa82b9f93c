"""Tests of HttpSource against real HTTP servers and a real forwarding proxy on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import itertools
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pycvmfs import __version__
from pycvmfs.errors import (
    ConfigError,
    FetchError,
    HashMismatchError,
    IntegrityError,
    ObjectNotFoundError,
)
from pycvmfs.storage.base import Source, fetch_bytes
from pycvmfs.storage.http import HttpSource, parse_proxy_spec
from pycvmfs.storage.locate import open_source

FQRN = "golden.example.org"
CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"

# small timeouts keep the failure paths fast
FAST = {"timeout": 0.5, "retries": 1, "backoff": (0.01, 0.05)}

Behaviour = Callable[[http.server.SimpleHTTPRequestHandler], bool]


def make_handler(behaviour: Behaviour | None = None, log: list | None = None,
                 http11: bool = False) -> type:
    """A file-serving handler that records each request and may misbehave.

    ``behaviour(handler)`` returns True when it answered the request itself.
    """

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if http11 else "HTTP/1.0"

        def log_message(self, format: str, *args) -> None:
            pass

        def do_GET(self) -> None:
            if log is not None:
                log.append({"path": self.path, "headers": dict(self.headers),
                            "port": self.client_address[1]})
            if behaviour is None or not behaviour(self):
                super().do_GET()

    return Handler


def reply(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    def answer(h) -> bool:
        reply(h, code, b"nope\n", headers)
        return True

    return answer


def verify_sha1(expected: str):
    def consume(blocks: Iterator[bytes]) -> bytes:
        data = b"".join(blocks)
        actual = hashlib.sha1(data).hexdigest()
        if actual != expected:
            raise HashMismatchError("object", expected, actual)
        return data

    return consume


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/cvmfs/{FQRN}"


@pytest.fixture
def golden_url(golden_server) -> str:
    return f"{golden_server.url}/{FQRN}"


@pytest.fixture
def manifest(golden_repo: Path) -> bytes:
    return (golden_repo / ".cvmfspublished").read_bytes()


@pytest.fixture
def catalog(golden_repo: Path) -> bytes:
    return (golden_repo / CATALOG).read_bytes()


def test_http_source_is_a_source(golden_url: str) -> None:
    assert isinstance(HttpSource([golden_url]), Source)


def test_fetch_golden_manifest(golden_url: str, manifest: bytes) -> None:
    src = HttpSource([golden_url])
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    assert src.stats["requests"] == 1
    assert src.describe(CATALOG) == f"{golden_url}/{CATALOG}"


def test_default_headers_and_fresh_no_cache(http_server, golden_dir: Path, manifest: bytes) -> None:
    log: list = []
    srv = http_server(golden_dir, make_handler(log=log))
    src = HttpSource([f"{srv.url}/{FQRN}"])
    fetch_bytes(src, ".cvmfspublished", what="manifest")
    fetch_bytes(src, ".cvmfspublished", what="manifest", fresh=True)
    first, second = (entry["headers"] for entry in log)
    assert first["User-Agent"] == f"pycvmfs/{__version__}"
    assert first["Connection"].lower() == "keep-alive"
    assert "Pragma" not in first and "Cache-Control" not in first
    assert second["Pragma"] == "no-cache" and second["Cache-Control"] == "no-cache"


def test_connections_are_kept_alive(http_server, golden_dir: Path) -> None:
    log: list = []
    srv = http_server(golden_dir, make_handler(log=log, http11=True))
    src = HttpSource([f"{srv.url}/{FQRN}"])
    for _ in range(5):
        fetch_bytes(src, CATALOG, what="catalog")
    assert len(log) == 5
    assert len({entry["port"] for entry in log}) == 1


def test_first_server_down_fails_over_and_sticks(golden_url: str, manifest: bytes) -> None:
    dead = closed_port_url()
    src = HttpSource([dead, golden_url], **FAST)
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    stats = src.stats
    assert stats["retries"] == 1 and stats["failovers"] == 1 and stats["requests"] == 3
    assert src.current_url == golden_url
    fetch_bytes(src, ".cvmfspublished", what="manifest")  # starts at the working server
    assert src.stats["requests"] == 4


def test_first_server_500_moves_on_without_retry(http_server, golden_dir: Path,
                                                golden_url: str, manifest: bytes) -> None:
    log: list = []
    bad = http_server(golden_dir, make_handler(status(500), log))
    src = HttpSource([f"{bad.url}/{FQRN}", golden_url], **FAST)
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    assert len(log) == 1
    assert src.stats["retries"] == 0 and src.stats["failovers"] == 1


def test_object_missing_on_first_server_found_on_second(http_server, tmp_path: Path,
                                                        golden_url: str, catalog: bytes) -> None:
    (tmp_path / "data" / "43").mkdir(parents=True)
    partial = http_server(tmp_path)  # an S1 that does not have the catalog yet
    src = HttpSource([partial.url, golden_url], **FAST)
    got = src.fetch(CATALOG, verify_sha1("434e2742ad19baa1f5be5ffcb3c755ecabae7562"),
                    what="root catalog")
    assert got == catalog


def test_all_servers_404_is_object_not_found(http_server, tmp_path: Path, golden_url: str) -> None:
    empty = http_server(tmp_path)
    src = HttpSource([empty.url, golden_url], **FAST)
    with pytest.raises(ObjectNotFoundError) as err:
        fetch_bytes(src, "data/00/00000000000000000000000000000000000000", what="chunk 00")
    assert "chunk 00" in str(err.value)
    assert len(err.value.attempts) == 2
    assert all("404" in a for a in err.value.attempts)


def test_404_and_down_server_is_a_fetch_error_listing_attempts(http_server, tmp_path: Path) -> None:
    empty = http_server(tmp_path)
    dead = closed_port_url()
    src = HttpSource([empty.url, dead], **FAST)
    with pytest.raises(FetchError) as err:
        fetch_bytes(src, "data/ab/cdef", what="object abcdef")
    assert not isinstance(err.value, ObjectNotFoundError)
    attempts = err.value.attempts
    assert attempts[0].startswith(f"{empty.url}/data/ab/cdef: HTTP 404")
    assert len(attempts) == 3 and all(a.startswith(f"{dead}/data/ab/cdef: ") for a in attempts[1:])


def test_bad_data_retried_with_no_cache_then_next_server(http_server, golden_dir: Path,
                                                        golden_url: str, catalog: bytes) -> None:
    log: list = []

    def corrupt(h) -> bool:
        reply(h, 200, b"X" + catalog[1:])
        return True

    bad = http_server(golden_dir, make_handler(corrupt, log))
    src = HttpSource([f"{bad.url}/{FQRN}", golden_url], **FAST)
    got = src.fetch(CATALOG, verify_sha1("434e2742ad19baa1f5be5ffcb3c755ecabae7562"),
                    what="root catalog")
    assert got == catalog
    assert len(log) == 2
    assert "Pragma" not in log[0]["headers"]
    assert log[1]["headers"]["Pragma"] == "no-cache"
    assert log[1]["headers"]["Cache-Control"] == "no-cache"
    assert src.stats["bad_data"] == 2 and src.current_url == golden_url


def test_bad_data_everywhere_raises_the_integrity_error(http_server, golden_dir: Path,
                                                       catalog: bytes) -> None:
    def corrupt(h) -> bool:
        reply(h, 200, catalog[:-1])
        return True

    a = http_server(golden_dir, make_handler(corrupt))
    b = http_server(golden_dir, make_handler(corrupt))
    src = HttpSource([a.url, b.url], **FAST)
    with pytest.raises(IntegrityError) as err:
        src.fetch(CATALOG, verify_sha1("434e2742ad19baa1f5be5ffcb3c755ecabae7562"),
                  what="root catalog")
    assert isinstance(err.value, HashMismatchError)
    assert src.stats["bad_data"] == 4


def test_redirect_is_not_followed(http_server, golden_dir: Path, golden_url: str,
                                  manifest: bytes) -> None:
    target_log: list = []
    target = http_server(golden_dir, make_handler(log=target_log))
    redirector = http_server(golden_dir, make_handler(
        status(302, {"Location": f"{target.url}/{FQRN}/.cvmfspublished"})))
    alone = HttpSource([f"{redirector.url}/{FQRN}"], **FAST)
    with pytest.raises(FetchError) as err:
        fetch_bytes(alone, ".cvmfspublished", what="manifest")
    assert "HTTP 302 redirect" in str(err.value)
    assert target_log == []
    chained = HttpSource([f"{redirector.url}/{FQRN}", golden_url], **FAST)
    assert fetch_bytes(chained, ".cvmfspublished", what="manifest") == manifest
    assert target_log == []


def test_stalling_server_times_out_and_next_is_used(http_server, golden_dir: Path,
                                                   golden_url: str, manifest: bytes) -> None:
    release = threading.Event()

    def stall(h) -> bool:
        release.wait(5)
        return True

    slow = http_server(golden_dir, make_handler(stall))
    src = HttpSource([f"{slow.url}/{FQRN}", golden_url], timeout=0.3, retries=1,
                     backoff=(0.01, 0.01))
    try:
        assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    finally:
        release.set()
    assert src.stats["retries"] == 1 and src.stats["failovers"] == 1


def test_connection_dropped_mid_body_is_retried(http_server, golden_dir: Path,
                                                catalog: bytes) -> None:
    log: list = []

    def drop_first(h) -> bool:
        if len(log) > 1:
            return False
        h.send_response(200)
        h.send_header("Content-Length", str(len(catalog)))
        h.end_headers()
        h.wfile.write(catalog[: len(catalog) // 2])
        h.wfile.flush()
        h.close_connection = True
        return True

    srv = http_server(golden_dir, make_handler(drop_first, log))
    src = HttpSource([f"{srv.url}/{FQRN}"], **FAST)
    got = src.fetch(CATALOG, verify_sha1("434e2742ad19baa1f5be5ffcb3c755ecabae7562"),
                    what="root catalog")
    assert got == catalog
    assert len(log) == 2
    assert src.stats["retries"] == 1 and src.stats["bad_data"] == 0


def test_429_is_retried_on_the_same_server(http_server, golden_dir: Path, manifest: bytes) -> None:
    log: list = []

    def busy_once(h) -> bool:
        if len(log) > 1:
            return False
        reply(h, 429)
        return True

    srv = http_server(golden_dir, make_handler(busy_once, log))
    src = HttpSource([f"{srv.url}/{FQRN}"], **FAST)
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    assert len(log) == 2 and src.stats["retries"] == 1


# -- proxies -------------------------------------------------------------------------------------


def make_proxy(log: list, refuse: Behaviour | None = None) -> type:
    """A forwarding HTTP proxy: answers absolute-URI GETs by fetching them itself."""

    class Proxy(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            pass

        def do_GET(self) -> None:
            log.append({"path": self.path, "headers": dict(self.headers)})
            if refuse is not None and refuse(self):
                return
            target = urlsplit(self.path)
            if target.scheme != "http" or target.hostname != "127.0.0.1":
                reply(self, 400, b"absolute http://127.0.0.1 URI expected\n")
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
            try:
                fwd = {k: v for k, v in self.headers.items()
                       if k.lower() in ("user-agent", "pragma", "cache-control")}
                conn.request("GET", target.path, headers=fwd)
                resp = conn.getresponse()
                reply(self, resp.status, resp.read(), {"Via": "1.1 test-proxy"})
            finally:
                conn.close()

    return Proxy


def test_fetch_through_a_forwarding_proxy(http_server, tmp_path: Path, golden_url: str,
                                          manifest: bytes) -> None:
    log: list = []
    proxy = http_server(tmp_path, make_proxy(log))
    src = HttpSource([golden_url], proxies=[proxy.url], **FAST)
    assert fetch_bytes(src, ".cvmfspublished", what="manifest", fresh=True) == manifest
    assert log[0]["path"] == f"{golden_url}/.cvmfspublished"
    assert log[0]["headers"]["Pragma"] == "no-cache"


def test_stopped_proxy_falls_back_to_direct(http_server, tmp_path: Path, golden_url: str,
                                            manifest: bytes) -> None:
    log: list = []
    proxy = http_server(tmp_path, make_proxy(log))
    proxy.stop()
    src = HttpSource([golden_url], proxies=[proxy.url, "DIRECT"], **FAST)
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    stats = src.stats
    assert stats["requests"] == 3 and stats["retries"] == 1 and stats["proxy_failovers"] == 1
    assert stats["failovers"] == 0
    assert src.current_proxy == "DIRECT"
    fetch_bytes(src, ".cvmfspublished", what="manifest")  # the working proxy is sticky
    assert src.stats["requests"] == 4
    assert log == []


def test_proxy_reporting_its_own_error_moves_to_next_proxy(http_server, tmp_path: Path,
                                                           golden_url: str,
                                                           manifest: bytes) -> None:
    log: list = []
    squid_error = status(503, {"X-Squid-Error": "ERR_DNS_FAIL 0"})
    proxy = http_server(tmp_path, make_proxy(log, squid_error))
    src = HttpSource([golden_url], proxies=[proxy.url, "DIRECT"], **FAST)
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    assert len(log) == 1 and src.stats["proxy_failovers"] == 1 and src.stats["retries"] == 0


def test_concurrent_fetches_from_eight_threads(golden_repo: Path, golden_url: str) -> None:
    objects = sorted(p.relative_to(golden_repo).as_posix()
                     for p in (golden_repo / "data").rglob("*") if p.is_file())[:160]
    src = HttpSource([closed_port_url(), golden_url], **FAST)

    def get(rel: str) -> bool:
        name = rel[5:7] + rel[8:46]
        data = src.fetch(rel, verify_sha1(name), what=rel)
        return data == (golden_repo / rel).read_bytes()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(get, objects))
    assert len(results) == 160 and all(results)
    assert src.current_url == golden_url
    assert src.stats["bad_data"] == 0


def test_open_source_splits_http_url_chains(golden_url: str, manifest: bytes) -> None:
    dead = closed_port_url()
    src = open_source(f"{dead};{golden_url}", timeout=0.5, retries=0)
    assert isinstance(src, HttpSource)
    assert src.urls == [dead, golden_url]
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest


# -- proxy groups, resets, timeouts ---------------------------------------------------------------


def test_parse_proxy_spec_groups_members_and_direct() -> None:
    spec = " http://p1:3128 | p2:3128 ;DIRECT; ;direct|http://p3:8080 "
    assert parse_proxy_spec(spec) == [["http://p1:3128", "http://p2:3128"], ["DIRECT"],
                                      ["DIRECT", "http://p3:8080"]]
    assert parse_proxy_spec("DIRECT") == [["DIRECT"]]


@pytest.mark.parametrize("spec", ["", " ; ", "auto", "http://p1:3128;auto", "ftp://p1:21"])
def test_parse_proxy_spec_rejects_empty_auto_and_bad_urls(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_proxy_spec(spec)


def test_proxies_argument_forms_give_groups() -> None:
    url = "http://127.0.0.1:1/cvmfs/x"
    assert HttpSource([url]).proxy_groups == [["DIRECT"]]
    assert HttpSource([url], proxies=["http://a:1", "DIRECT"]).proxy_groups == [
        ["http://a:1"], ["DIRECT"]]
    src = HttpSource([url], proxies=[["http://a:1", "http://b:1"], ["DIRECT"]])
    assert src.proxy_groups == [["http://a:1", "http://b:1"], ["DIRECT"]]
    assert src.proxies == ["http://a:1", "http://b:1", "DIRECT"]
    assert src.proxy_spec == "http://a:1|http://b:1;DIRECT"
    assert HttpSource([url], proxies="http://a:1|http://b:1;DIRECT").proxy_groups == \
        src.proxy_groups
    with pytest.raises(ConfigError):
        HttpSource([url], proxies=[[]])


def test_group_members_are_load_balanced(http_server, tmp_path: Path, golden_url: str) -> None:
    logs: list[list] = [[], []]
    members = [http_server(tmp_path, make_proxy(log)).url for log in logs]
    firsts = set()
    for seed in range(12):
        src = HttpSource([golden_url], proxies=[members, ["DIRECT"]], rng=random.Random(seed))
        firsts.add(src.current_proxy)
        assert src.current_proxy in members
    assert firsts == set(members)  # each member is picked first by some client


def test_dead_group_member_moves_to_the_other_member_before_next_group(
        http_server, tmp_path: Path, golden_url: str, manifest: bytes) -> None:
    log: list = []
    alive = http_server(tmp_path, make_proxy(log)).url
    dead = closed_port_url().rsplit("/cvmfs", 1)[0]
    failovers = 0
    for seed in range(6):  # whichever member comes first
        src = HttpSource([golden_url], proxies=[[dead, alive], ["DIRECT"]],
                         rng=random.Random(seed), **FAST)
        assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
        assert src.current_proxy == alive  # DIRECT (the next group) was not needed
        assert src.stats["proxy_failovers"] <= 1 and src.stats["nioerr"] == 0
        failovers += src.stats["proxy_failovers"]
    assert len(log) == 6 and failovers >= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_host_reset_after_returns_to_the_first_server(http_server, golden_dir: Path,
                                                      golden_url: str, manifest: bytes) -> None:
    log: list = []
    flaky_down = [True]

    def down_while_flagged(h) -> bool:
        if flaky_down[0]:
            reply(h, 503, b"down\n")
            return True
        return False

    first = http_server(golden_dir, make_handler(down_while_flagged, log))
    clock = Clock()
    src = HttpSource([f"{first.url}/{FQRN}", golden_url], host_reset_after=60, clock=clock,
                     **FAST)
    fetch_bytes(src, ".cvmfspublished", what="manifest")
    assert src.current_url == golden_url and src.stats["failovers"] == 1
    flaky_down[0] = False
    clock.now += 59
    fetch_bytes(src, ".cvmfspublished", what="manifest")
    assert len(log) == 1 and src.current_url == golden_url  # still sticky
    clock.now += 1
    assert src.current_url == f"{first.url}/{FQRN}"
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    assert len(log) == 2


def test_proxy_reset_after_returns_to_the_first_group(http_server, tmp_path: Path,
                                                      golden_url: str, manifest: bytes) -> None:
    log: list = []
    refusing = [True]
    squid_error = status(503, {"X-Squid-Error": "ERR_CONNECT_FAIL 111"})

    def refuse_while_flagged(h) -> bool:
        return squid_error(h) if refusing[0] else False

    proxy = http_server(tmp_path, make_proxy(log, refuse_while_flagged)).url
    clock = Clock()
    src = HttpSource([golden_url], proxies=f"{proxy};DIRECT", proxy_reset_after=30,
                     clock=clock, **FAST)
    fetch_bytes(src, ".cvmfspublished", what="manifest")
    assert src.current_proxy == "DIRECT" and src.stats["proxy_failovers"] == 1
    refusing[0] = False
    clock.now += 29
    assert src.current_proxy == "DIRECT"
    clock.now += 1
    assert src.current_proxy == proxy
    assert fetch_bytes(src, ".cvmfspublished", what="manifest") == manifest
    assert len(log) == 2 and src.stats["proxy_failovers"] == 1


def test_direct_and_proxy_timeouts_are_separate(http_server, golden_dir: Path,
                                                tmp_path: Path) -> None:
    def stall(h) -> bool:
        time.sleep(0.6)
        return False

    slow = http_server(golden_dir, make_handler(stall))
    url = f"{slow.url}/{FQRN}"
    src = HttpSource([url], timeout=5.0, timeout_direct=0.2, retries=0)
    with pytest.raises(FetchError, match="read timeout"):
        fetch_bytes(src, ".cvmfspublished", what="manifest")
    assert src.stats["nioerr"] == 1
    proxy = http_server(tmp_path, make_proxy([])).url
    via = HttpSource([url], proxies=proxy, timeout=5.0, timeout_direct=0.2, retries=0)
    assert fetch_bytes(via, ".cvmfspublished", what="manifest")  # 0.6 s < 5 s through a proxy


def test_retries_back_off_exponentially_between_bounds(http_server, golden_dir: Path) -> None:
    times: list[float] = []

    def busy(h) -> bool:
        times.append(time.monotonic())
        reply(h, 429, b"busy\n")
        return True

    srv = http_server(golden_dir, make_handler(busy))
    src = HttpSource([f"{srv.url}/{FQRN}"], retries=3, backoff=(0.1, 0.25))
    with pytest.raises(FetchError):
        fetch_bytes(src, ".cvmfspublished", what="manifest")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3 and src.stats["retries"] == 3 and src.stats["nioerr"] == 1
    assert 0.1 <= gaps[0] < 0.35  # first: between init and twice init
    assert 0.2 <= gaps[1] < 0.39 and 0.24 <= gaps[2] < 0.39  # doubled, capped at 0.25
