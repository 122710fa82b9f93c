"""The repository HTTP server's connection handling and small-file cache, with raw sockets."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import urllib3

from pycvmfs.server.files import CachedFile, SmallFileCache, classify
from pycvmfs.server.http import RepositoryServer

FQRN = "golden.example.org"
CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"  # 85919 bytes: sent with sendfile
SECRET = b"SECRET next to the storage\n"


def read_reply(f) -> tuple[int, dict[str, str], bytes]:
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` (recv sees EOF) within ``seconds``."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, golden_repo: Path) -> Path:
    """A storage with a few small objects old enough to be cached (their ctime, which no one
    can set, more than ``SmallFileCache.SETTLE`` seconds ago)."""
    base = tmp_path_factory.mktemp("cached")
    storage = base / "store"
    (storage / "data" / "ab").mkdir(parents=True)
    shutil.copyfile(golden_repo / ".cvmfspublished", storage / ".cvmfspublished")
    (base / "secret.txt").write_bytes(SECRET)
    for name in ("rewritten", "replaced", "spare"):
        (storage / "data" / "ab" / name).write_bytes(f"{name} version\n".encode())
    time.sleep(SmallFileCache.SETTLE + 0.1)
    return storage


def test_a_cached_small_file_rewritten_in_place_is_served_anew(store: Path) -> None:
    obj = store / "data" / "ab" / "rewritten"
    mtime = obj.stat().st_mtime_ns
    with RepositoryServer({FQRN: store}) as s, urllib3.PoolManager() as pm:
        url = f"{s.repository_url(FQRN)}/data/ab/rewritten"
        for _ in range(3):  # the second and third come from the cache
            assert pm.request("GET", url).data == b"rewritten version\n"
        # same size, same inode, same mtime: only the ctime tells
        with open(obj, "r+b") as f:
            f.write(b"REWRITTEN")
        os.utime(obj, ns=(mtime, mtime))
        assert pm.request("GET", url).data == b"REWRITTEN version\n"
        r = pm.request("GET", url, headers={"Range": "bytes=0-8"})
        assert r.status == 206 and r.data == b"REWRITTEN"


def test_a_cached_file_replaced_removed_or_turned_into_a_symlink_is_not_served_from_cache(
        store: Path) -> None:
    obj = store / "data" / "ab" / "replaced"
    with RepositoryServer({FQRN: store}) as s, urllib3.PoolManager() as pm:
        url = f"{s.repository_url(FQRN)}/data/ab/replaced"
        assert pm.request("GET", url).data == b"replaced version\n"
        assert pm.request("GET", url).data == b"replaced version\n"
        (store / "data" / "ab" / "spare").rename(obj)  # another inode under the same name
        assert pm.request("GET", url).data == b"spare version\n"
        obj.unlink()
        assert pm.request("GET", url).status == 404
        obj.symlink_to(store.parent / "secret.txt")  # leads out of the storage
        r = pm.request("GET", url)
        assert r.status == 404 and SECRET not in r.data


def test_idle_keep_alive_connections_are_closed_after_the_timeout(golden_repo: Path) -> None:
    with RepositoryServer({FQRN: golden_repo}, keepalive_timeout=1.5) as s, \
            socket.create_connection(("127.0.0.1", s.port), timeout=5) as used, \
            socket.create_connection(("127.0.0.1", s.port), timeout=5) as silent:
        used.sendall(f"GET /cvmfs/{FQRN}/.cvmfspublished HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_reply(used.makefile("rb"))[0] == 200
        assert not closed_within(used, 0.5)  # kept alive for now
        assert closed_within(used, 6)
        assert closed_within(silent, 1)


def test_http_1_0_connections_close_unless_keep_alive_is_asked_for(golden_repo: Path) -> None:
    with RepositoryServer({FQRN: golden_repo}) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(f"GET /cvmfs/{FQRN}/.cvmfspublished HTTP/1.0\r\n\r\n".encode())
            status, headers, body = read_reply(c.makefile("rb"))
            assert status == 200 and headers["connection"] == "close"
            assert body == (golden_repo / ".cvmfspublished").read_bytes()
            assert closed_within(c, 5)
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            f = c.makefile("rb")
            for _ in range(2):
                c.sendall(f"GET /cvmfs/{FQRN}/.cvmfspublished HTTP/1.0\r\n"
                          f"Connection: keep-alive\r\n\r\n".encode())
                status, headers, _body = read_reply(f)
                assert status == 200 and headers["connection"].lower() == "keep-alive"


def test_a_request_head_over_the_limit_gets_400_and_the_connection_closes(
        golden_repo: Path) -> None:
    with RepositoryServer({FQRN: golden_repo}) as s, \
            socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(f"GET /cvmfs/{FQRN}/.cvmfspublished HTTP/1.1\r\nHost: x\r\n".encode())
        filler = b"X-Filler: " + b"y" * 60_000 + b"\r\n"
        try:
            for _ in range(40):  # 2.4 MB of headers, never finished
                c.sendall(filler)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while chunk := c.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply.startswith(b"HTTP/1.1 400 ")


def test_pipelined_requests_behind_a_large_file_wait_for_a_slow_reader(
        golden_repo: Path) -> None:
    catalog = (golden_repo / CATALOG).read_bytes()
    published = (golden_repo / ".cvmfspublished").read_bytes()
    with RepositoryServer({FQRN: golden_repo}) as s, \
            socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        # 8 MB of answers: more than the socket buffers hold, so the server has to wait
        requests = [CATALOG, ".cvmfspublished", CATALOG, CATALOG, ".cvmfspublished"] * 32
        c.sendall(b"".join(f"GET /cvmfs/{FQRN}/{p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                           for p in requests))
        time.sleep(0.5)  # the server fills the socket buffers and must wait
        f = c.makefile("rb")
        for path in requests:
            status, _headers, body = read_reply(f)
            assert status == 200
            assert body == (catalog if path == CATALOG else published), path


def test_the_small_file_cache_keeps_to_its_budget_dropping_the_oldest(golden_repo: Path) -> None:
    files = sorted(p for p in (golden_repo / "data").glob("??/*") if p.stat().st_size < 1000)
    assert len(files) > 200
    cache = SmallFileCache(max_bytes=50_000)
    kind = classify(["data", "00", "x"])
    for i, p in enumerate(files):
        cache.put(b"/t/%d" % i, CachedFile(str(p), os.lstat(p), kind, b"HEAD", p.read_bytes()))
        cache.put(b"/empty/%d" % i, CachedFile(str(p), os.lstat(p), kind, b"", b""))
    assert 0 < len(cache) < 2 * len(files)
    assert cache._bytes <= 50_000
    last = len(files) - 1
    assert cache.get(b"/t/%d" % last).body == files[last].read_bytes()
    assert cache.get(b"/t/0") is None
