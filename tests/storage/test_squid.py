"""HttpSource and the verified reader through a real Squid proxy started on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository
from pycvmfs.format.signature import load_public_keys
from pycvmfs.storage.http import DIRECT, HttpSource

from helpers.squid import Squid

FQRN = "golden.example.org"
FAST = {"timeout": 2.0, "retries": 1, "backoff": (0.01, 0.05)}


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    s = Squid()
    yield s
    s.remove()


def open_repo(source: HttpSource, keys: Path, cache: Path) -> Repository:
    return Repository(source, public_keys=load_public_keys([keys]), fqrn=FQRN,
                      cache=ObjectCache(cache))


def read_everything(repo: Repository, expected: dict,
                    revisions: tuple[tuple[str, str], ...] = (("v1", "rev1"), ("v2", "rev2"))
                    ) -> int:
    """Read every file of the golden revisions, compare with expected.json; the file count."""
    count = 0
    for tag, tree in revisions:
        entries = expected["trees"][tree]["entries"]
        with repo.open_revision(tag=tag) as view:
            for _dirpath, _dirs, files in view.walk("/"):
                for s in files:
                    exp = entries[s.path.lstrip("/")]
                    if exp["type"] == "file":
                        data = view.read_bytes(s.path)
                        assert hashlib.sha1(data).hexdigest() == exp["sha1"], s.path
                        count += 1
    return count


def test_golden_repository_read_through_squid_and_reread_from_its_cache(
        squid: Squid, golden_server, golden_keys: Path, golden_expected: dict,
        tmp_path: Path) -> None:
    base = f"{golden_server.url}/{FQRN}"
    src = HttpSource([base], proxies=squid.url, **FAST)
    with open_repo(src, golden_keys, tmp_path / "cache1") as repo:
        files = read_everything(repo, golden_expected)
    assert files > 100
    assert src.current_proxy == squid.url and src.stats["proxy_failovers"] == 0
    first = [(code, url) for code, url in squid.log_lines() if url.startswith(f"{base}/data/")]
    assert first and all(code in ("TCP_MISS", "TCP_HIT", "TCP_MEM_HIT") for code, _ in first)
    assert any(code == "TCP_MISS" for code, _ in first)
    seen = len(squid.log_lines())

    src2 = HttpSource([base], proxies=[[squid.url]], **FAST)  # a new client, empty local cache
    with open_repo(src2, golden_keys, tmp_path / "cache2") as repo:
        assert read_everything(repo, golden_expected) == files
    second = [(code, url) for code, url in squid.log_lines()[seen:]
              if url.startswith(f"{base}/data/")]
    assert {url for _, url in second} == {url for _, url in first}
    assert all(code in ("TCP_HIT", "TCP_MEM_HIT") for code, _ in second), second

    catalog = f"{base}/data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"
    with urllib3.ProxyManager(squid.url) as pm:
        resp = pm.request("GET", catalog, retries=False)
    assert resp.status == 200 and resp.headers["X-Cache"].startswith("HIT from")


class LoggingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory and records (path, headers) of every request in ``self.log``."""

    log: list[tuple[str, dict[str, str]]]

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.log.append((self.path, dict(self.headers)))
        super().do_GET()


def test_corrupted_copy_in_squid_is_refetched_from_origin_with_no_cache(
        squid: Squid, http_server, golden_copy: Path, golden_keys: Path,
        golden_expected: dict, tmp_path: Path) -> None:
    log: list[tuple[str, dict[str, str]]] = []
    handler = type("Handler", (LoggingHandler,), {"log": log})
    origin = http_server(golden_copy.parent, handler)
    base = f"{origin.url}/{FQRN}"
    rel = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"  # the root catalog
    good = (golden_copy / rel).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (golden_copy / rel).write_bytes(bytes(bad))
    with urllib3.ProxyManager(squid.url) as pm:  # the proxy caches the corrupted bytes
        assert pm.request("GET", f"{base}/{rel}", retries=False).data == bytes(bad)
    (golden_copy / rel).write_bytes(good)  # the origin is fine again; the proxy is not
    log.clear()

    src = HttpSource([base], proxies=f"{squid.url};DIRECT", **FAST)
    with open_repo(src, golden_keys, tmp_path / "cache") as repo, repo.open_revision() as view:
        readme = view.read_bytes("README.txt")
    exp = golden_expected["trees"]["rev2"]["entries"]["README.txt"]
    assert hashlib.sha1(readme).hexdigest() == exp["sha1"]
    catalog_requests = [headers for path, headers in log if path == f"/{FQRN}/{rel}"]
    assert len(catalog_requests) == 1  # only the no-cache re-request reached the origin
    sent = {k.lower(): v for k, v in catalog_requests[0].items()}
    assert "no-cache" in sent.get("cache-control", "") + sent.get("pragma", "")
    stats = src.stats
    assert stats["bad_data"] == 1 and stats["failovers"] == 0 and stats["nioerr"] == 0
    assert src.current_proxy == squid.url  # no proxy failover for bad data

    log.clear()  # squid replaced its bad copy: a plain request is now a good hit
    with urllib3.ProxyManager(squid.url) as pm:
        resp = pm.request("GET", f"{base}/{rel}", retries=False)
    assert resp.data == good and resp.headers["X-Cache"].startswith("HIT") and log == []


def test_stopped_squid_falls_back_to_direct(golden_server, golden_keys: Path,
                                            golden_expected: dict, tmp_path: Path) -> None:
    own = Squid()
    try:
        base = f"{golden_server.url}/{FQRN}"
        src = HttpSource([base], proxies=f"{own.url};DIRECT", **FAST)
        assert src.proxy_groups == [[own.url], [DIRECT]]
        with open_repo(src, golden_keys, tmp_path / "cache1") as repo:
            repo.refresh()
        assert src.current_proxy == own.url and own.log_lines()
        own.stop(kill=True)
        entries = golden_expected["trees"]["rev2"]["entries"]
        with open_repo(src, golden_keys, tmp_path / "cache2") as repo, repo.open_revision() as view:
            paths = {s.path.lstrip("/") for _, dirs, files in view.walk() for s in dirs + files}
            assert paths == set(entries)
            for path in ("README.txt", "bin/blob-1m.bin"):
                assert hashlib.sha1(view.read_bytes(path)).hexdigest() == entries[path]["sha1"]
        stats = src.stats
        assert src.current_proxy == DIRECT
        assert stats["proxy_failovers"] == 1 and stats["retries"] == 1
        assert stats["failovers"] == 0 and stats["nioerr"] == 0
    finally:
        own.remove()
