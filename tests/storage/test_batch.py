"""BatchFetcher: parallel GETs over libcurl's multi interface, against real loopback servers."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from pycvmfs.replica.snapshot import snapshot
from pycvmfs.storage.batch import BatchFetcher
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

GOLDEN_FQRN = "golden.example.org"


class _Collect:
    def __init__(self, relpath: str, results: dict, lock: threading.Lock) -> None:
        self.relpath = relpath
        self._parts: list[bytes] = []
        self._results, self._lock = results, lock

    def write(self, block: bytes) -> None:
        self._parts.append(block)

    def done(self, error: str | None) -> None:
        with self._lock:
            self._results[self.relpath] = (error, b"".join(self._parts))


def _objects(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.glob("data/*/*") if p.is_file())


def test_every_object_arrives_whole_with_a_few_connections(golden_server, golden_repo):
    objects = _objects(golden_repo)
    assert len(objects) > 1000
    results: dict = {}
    lock = threading.Lock()
    src = HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"])
    with BatchFetcher(src, parallel=4) as bf:
        for rel in objects:
            bf.submit(_Collect(rel, results, lock))
    assert sorted(results) == objects
    for rel in objects:
        error, body = results[rel]
        assert error is None, rel
        assert hashlib.sha1(body).digest() == hashlib.sha1((golden_repo / rel).read_bytes()
                                                           ).digest(), rel
    assert src.stats["requests"] == len(objects)


def test_missing_objects_and_dead_servers_are_reported_to_the_transfer(golden_server, tmp_path):
    results: dict = {}
    lock = threading.Lock()
    good = HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"])
    with BatchFetcher(good, parallel=2) as bf:
        bf.submit(_Collect("data/00/not-there", results, lock))
    assert results["data/00/not-there"][0] == "HTTP 404"
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler
                                         ) as dead:
        port = dead.server_address[1]  # bound, never accepting: then closed
    results.clear()
    gone = HttpSource([f"http://127.0.0.1:{port}/cvmfs/x"], timeout=2.0)
    with BatchFetcher(gone, parallel=2) as bf:
        bf.submit(_Collect(".cvmfspublished", results, lock))
    error, body = results[".cvmfspublished"]
    assert error and "HTTP" not in error and body == b""


def test_submit_after_close_is_refused(golden_server):
    bf = BatchFetcher(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), parallel=1)
    bf.close()
    with pytest.raises(RuntimeError, match="closed"):
        bf.submit(_Collect("x", {}, threading.Lock()))


class _Failing500(http.server.SimpleHTTPRequestHandler):
    """Answers 500 for file contents and chunks, serves everything else (manifest, whitelist,
    certificate, catalogs, history: so the snapshot starts copying objects from here)."""

    data_requests = 0

    def do_GET(self) -> None:
        if "/data/" in self.path and self.path[-1] in "0123456789abcdefP":
            type(self).data_requests += 1
            self.send_error(500, "broken on purpose")
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass


def test_a_snapshot_falls_back_to_the_second_server_when_the_first_fails_objects(
        golden_server, golden_dir, golden_keys, tmp_path, http_server):
    broken = http_server(golden_dir, _Failing500)
    src = HttpSource([f"{broken.url}/{GOLDEN_FQRN}", f"{golden_server.url}/{GOLDEN_FQRN}"],
                     pool_size=8, timeout=5.0)
    dest = LocalStorage(tmp_path / "replica", fsync=False)
    report = snapshot(src, dest, GOLDEN_FQRN, [golden_keys], state_dir=tmp_path / "state",
                      workers=4)
    assert report.objects_fetched > 100
    assert src.stats["failovers"] >= 1
    assert src.current_url.startswith(golden_server.url)  # later objects start there
    # ... in the copy engines too: only what was under way before the fail-over hit the
    # broken server (not every object once)
    assert _Failing500.data_requests < report.objects_fetched // 2, _Failing500.data_requests
    for rel in _objects(tmp_path / "replica"):
        assert (tmp_path / "replica" / rel).read_bytes() == (golden_dir / GOLDEN_FQRN / rel
                                                             ).read_bytes()


def test_a_path_that_must_not_be_requested_ends_its_transfer_with_the_reason(golden_server):
    results: dict = {}
    lock = threading.Lock()
    with BatchFetcher(HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"]), parallel=1) as bf:
        bf.submit(_Collect("../secret", results, lock))
        bf.submit(_Collect(".cvmfspublished", results, lock))  # the engine keeps going
    assert results["../secret"][0].startswith("not requested:")
    assert "'..'" in results["../secret"][0]
    assert results[".cvmfspublished"][0] is None and results[".cvmfspublished"][1]
