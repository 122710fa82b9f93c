"""The documented Apache configuration (docs/apache-cvmfs.conf), run by a real Apache 2.4 on
127.0.0.1."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository
from pycvmfs.format.signature import load_public_keys
from pycvmfs.storage.http import HttpSource

from helpers.daemons import require_binary
from helpers.webservers import (
    APACHE,
    GOLDEN_CATALOG,
    GOLDEN_FQRN,
    IN_FLIGHT,
    META_JSON,
    OBJECT_MAX_AGE,
    STATUS_JSON,
    apache_server,
    assert_cached_for,
    golden_storage_copy,
)


@pytest.fixture(scope="module")
def apache(golden_dir: Path) -> Iterator[str]:
    """Apache serving a copy of the golden fixture folder; yields the ``/cvmfs/`` base URL."""
    require_binary(APACHE, "apache2")
    with golden_storage_copy(golden_dir) as storage, apache_server(storage) as server:
        yield server.url


def test_golden_repository_read_through_apache(apache: str, golden_keys: Path,
                                               golden_expected: dict, tmp_path: Path) -> None:
    src = HttpSource([f"{apache}/{GOLDEN_FQRN}"], timeout=5.0)
    repo = Repository(src, public_keys=load_public_keys([golden_keys]), fqrn=GOLDEN_FQRN,
                      cache=ObjectCache(tmp_path / "cache"))
    entries = golden_expected["trees"]["rev2"]["entries"]
    count = 0
    with repo, repo.open_revision() as view:
        for path, entry in entries.items():
            if entry["type"] == "file":
                data = view.read_bytes("/" + path)
                assert hashlib.sha1(data).hexdigest() == entry["sha1"], path
                count += 1
    assert count > 1000
    assert src.stats["failovers"] == 0 and src.stats["nioerr"] == 0


@pytest.mark.parametrize(("name", "body"), [
    (".cvmfspublished", None), (".cvmfswhitelist", None), (".cvmfsreflog", None),
    (".cvmfs_status.json", STATUS_JSON),
])
def test_cvmfs_files_expire_after_61_seconds(apache: str, golden_repo: Path, name: str,
                                             body: bytes | None) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/{name}", retries=False)
    assert resp.status == 200
    assert resp.data == (body if body is not None else (golden_repo / name).read_bytes())
    assert resp.headers["Content-Type"] == "application/x-cvmfs"
    assert_cached_for(resp, 61)


def test_json_files_expire_after_61_seconds(apache: str) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/meta.json", retries=False)
    assert resp.status == 200 and resp.data == META_JSON
    assert resp.headers["Content-Type"] == "application/json"
    assert_cached_for(resp, 61)


def test_data_objects_expire_after_three_days(apache: str, golden_repo: Path) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/{GOLDEN_CATALOG}", retries=False)
        assert resp.status == 200 and resp.data == (golden_repo / GOLDEN_CATALOG).read_bytes()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert_cached_for(resp, OBJECT_MAX_AGE)
        # If-Modified-Since is dropped: never a 304 a proxy could mishandle
        again = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/{GOLDEN_CATALOG}", retries=False,
                           headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
        assert again.status == 200 and again.data == resp.data
        part = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/{GOLDEN_CATALOG}", retries=False,
                          headers={"Range": "bytes=100-199"})
        assert part.status == 206 and part.data == resp.data[100:200]
        missing = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/data/00/{'0' * 38}", retries=False)
        assert missing.status == 404


def test_uploads_in_flight_and_listings_are_not_served(apache: str) -> None:
    with urllib3.PoolManager() as pm:
        for path in ("data/txn/upload.tmp", "data/", "data", ""):
            resp = pm.request("GET", f"{apache}/{GOLDEN_FQRN}/{path}", retries=False,
                              redirect=False)
            assert resp.status in (403, 404), path
            assert IN_FLIGHT not in resp.data and b"Index of" not in resp.data


def test_connections_are_kept_alive(apache: str) -> None:
    port = int(apache.split(":")[2].split("/")[0])
    with urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, block=True) as pool:
        for _ in range(3):
            resp = pool.request("GET", f"/cvmfs/{GOLDEN_FQRN}/.cvmfspublished", retries=False)
            assert resp.status == 200 and resp.headers.get("Connection") != "close"
        assert pool.num_connections == 1
