"""The documented nginx configuration (docs/nginx-cvmfs.conf), run by a real nginx on 127.0.0.1."""

from __future__ import annotations

import hashlib
import subprocess
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
    GOLDEN_CATALOG,
    GOLDEN_FQRN,
    IN_FLIGHT,
    META_JSON,
    NGINX,
    OBJECT_MAX_AGE,
    STATUS_JSON,
    assert_cached_for,
    golden_storage_copy,
    nginx_server,
)


@pytest.fixture(scope="module")
def nginx(golden_dir: Path) -> Iterator[str]:
    """nginx serving a copy of the golden fixture folder; yields the ``/cvmfs/`` base URL."""
    require_binary(NGINX, "nginx-light")
    with golden_storage_copy(golden_dir) as storage, nginx_server(storage) as server:
        yield server.url


def test_golden_repository_read_through_nginx(nginx: str, golden_keys: Path,
                                              golden_expected: dict, tmp_path: Path) -> None:
    src = HttpSource([f"{nginx}/{GOLDEN_FQRN}"], timeout=5.0)
    repo = Repository(src, public_keys=load_public_keys([golden_keys]), fqrn=GOLDEN_FQRN,
                      cache=ObjectCache(tmp_path / "cache"))
    count = 0
    with repo:
        for tag, tree in (("v1", "rev1"), ("v2", "rev2")):
            entries = golden_expected["trees"][tree]["entries"]
            with repo.open_revision(tag=tag) as view:
                seen = set()
                for _dirpath, dirs, files in view.walk("/"):
                    for s in dirs + files:
                        path = s.path.lstrip("/")
                        seen.add(path)
                        if entries[path]["type"] == "file":
                            data = view.read_bytes(s.path)
                            assert hashlib.sha1(data).hexdigest() == entries[path]["sha1"], path
                            count += 1
                assert seen == set(entries)
    assert count > 1000
    assert src.stats["failovers"] == 0 and src.stats["nioerr"] == 0


@pytest.mark.parametrize("name", [".cvmfspublished", ".cvmfswhitelist", ".cvmfsreflog"])
def test_cvmfs_files_expire_after_61_seconds(nginx: str, golden_repo: Path, name: str) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{GOLDEN_FQRN}/{name}", retries=False)
    assert resp.status == 200 and resp.data == (golden_repo / name).read_bytes()
    assert resp.headers["Content-Type"] == "application/x-cvmfs"
    assert_cached_for(resp, 61)


@pytest.mark.parametrize(("name", "ctype", "body"), [
    (".cvmfs_status.json", "application/x-cvmfs", STATUS_JSON),
    ("meta.json", "application/json", META_JSON),
])
def test_json_files_expire_after_61_seconds(nginx: str, name: str, ctype: str,
                                            body: bytes) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{GOLDEN_FQRN}/{name}", retries=False)
    assert resp.status == 200 and resp.data == body
    assert resp.headers["Content-Type"] == ctype
    assert_cached_for(resp, 61)


def test_uploads_in_flight_are_not_served(nginx: str) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{GOLDEN_FQRN}/data/txn/upload.tmp", retries=False)
    assert resp.status == 404
    assert IN_FLIGHT not in resp.data


def test_data_objects_expire_after_three_days(nginx: str, golden_repo: Path) -> None:
    with urllib3.PoolManager() as pm:
        resp = pm.request("GET", f"{nginx}/{GOLDEN_FQRN}/{GOLDEN_CATALOG}", retries=False)
        assert resp.status == 200 and resp.data == (golden_repo / GOLDEN_CATALOG).read_bytes()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert_cached_for(resp, OBJECT_MAX_AGE)
        # If-Modified-Since is ignored: never a 304 a proxy could mishandle
        again = pm.request("GET", f"{nginx}/{GOLDEN_FQRN}/{GOLDEN_CATALOG}", retries=False,
                           headers={"If-Modified-Since": resp.headers["Date"]})
        assert again.status == 200 and again.data == resp.data
        missing = pm.request("GET", f"{nginx}/{GOLDEN_FQRN}/data/00/{'0' * 38}", retries=False)
        assert missing.status == 404
        assert "max-age" not in missing.headers.get("Cache-Control", "")


def test_connections_are_kept_alive(nginx: str) -> None:
    with urllib3.HTTPConnectionPool("127.0.0.1", int(nginx.split(":")[2].split("/")[0]),
                                    maxsize=1, block=True) as pool:
        for _ in range(3):
            resp = pool.request("GET", f"/cvmfs/{GOLDEN_FQRN}/.cvmfspublished", retries=False)
            assert resp.status == 200 and resp.headers.get("Connection") != "close"
        assert pool.num_connections == 1


def test_golden_repository_mounted_through_nginx(nginx: str, golden_keys: Path,
                                                 golden_expected: dict, tmp_path: Path) -> None:
    """The FUSE mount against nginx: every file of the newest revision through plain reads."""
    import hashlib
    import os
    import sys

    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0):
        if os.environ.get("CI"):
            raise RuntimeError("CI needs /dev/fuse and root for the FUSE tests")
        pytest.skip("needs /dev/fuse and root")
    mp = tmp_path / "mnt"
    mp.mkdir()
    cli = [sys.executable, "-m", "pycvmfs.cli.main"]
    res = subprocess.run([*cli, "mount", "golden.example.org", str(mp), "--server-url",
                          f"{nginx}/@fqrn@", "-k", str(golden_keys), "--cache-dir",
                          str(tmp_path / "cache")], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    try:
        entries = golden_expected["trees"]["rev2"]["entries"]
        for rel, e in entries.items():
            if e["type"] == "file":
                assert hashlib.sha1((mp / rel).read_bytes()).hexdigest() == e["sha1"], rel
            elif e["type"] == "symlink":
                assert os.readlink(mp / rel) == e["target"], rel
        assert os.getxattr(mp, "user.host").decode().startswith(nginx)
    finally:
        subprocess.run([*cli, "umount", str(mp)], capture_output=True, check=False)
