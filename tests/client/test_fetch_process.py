"""The mount's download process: read-ahead in a child process writing into the shared cache,
answering each object once; readers wait for it instead of fetching twice; its failures and
its death only stop read-ahead."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.fetcher import FetchProcess
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.http import HttpSource

from helpers.replica import GOLDEN_FQRN, recording_handler


def _small_files(golden_expected: dict, n: int) -> list[tuple[str, ContentHash]]:
    """(path, hash) of ``n`` unchunked non-empty files of distinct content."""
    published = golden_expected["published"]["files"]["rev2"]
    out: dict[ContentHash, str] = {}
    for p, f in sorted(published.items()):
        if f["chunks"] == 1 and golden_expected["trees"]["rev2"]["entries"][p]["size"] > 0:
            out.setdefault(ContentHash.parse(f["cvmfs_hash"]), p)
    return [(p, h) for h, p in out.items()][:n]


def _wait(fp: FetchProcess, hashes: list[ContentHash], timeout: float = 30) -> None:
    for h in hashes:
        event = fp.waiter(h)
        if event is not None:
            assert event.wait(timeout), f"no answer for {h}"


def _requested(handler, h: ContentHash) -> int:
    rel = h.object_path(ObjectKind.FILE)
    return sum(1 for p in handler.requests if p.endswith(rel))


def test_the_download_process_fills_the_cache_and_answers_each_object(
        golden_repo, golden_expected, http_server, tmp_path):
    handler = recording_handler()
    srv = http_server(golden_repo.parent, handler)
    files = _small_files(golden_expected, 12)
    cache = ObjectCache(tmp_path / "cache")
    source = HttpSource([f"{srv.url}/{GOLDEN_FQRN}"], timeout=5.0)
    fp = FetchProcess(source, cache)
    try:
        assert fp.pid != os.getpid()
        for _p, h in files:
            assert fp.submit(h, ObjectKind.FILE)
        assert not fp.submit(files[0][1], ObjectKind.FILE)  # asked for recently
        _wait(fp, [h for _p, h in files])
        assert fp.stats == {"submitted": 12, "fetched": 12, "failed": 0}
        entries = golden_expected["trees"]["rev2"]["entries"]
        for p, h in files:
            assert cache.contains(h)
            assert hashlib.sha1(cache.path_for(h).read_bytes()).hexdigest() == \
                entries[p]["sha1"], p
            assert _requested(handler, h) == 1
        assert source.stats["requests"] == 0  # all of it was the child's work
    finally:
        fp.close()
    assert cache.elsewhere is None and list(cache.txn.iterdir()) == []


def test_a_reader_waits_for_the_download_process_instead_of_fetching_again(
        golden_repo, golden_expected, http_server, tmp_path):
    handler = recording_handler(delay=0.5)  # the object stays in flight for a while
    srv = http_server(golden_repo.parent, handler)
    (_p, h), = _small_files(golden_expected, 1)
    cache = ObjectCache(tmp_path / "cache")
    source = HttpSource([f"{srv.url}/{GOLDEN_FQRN}"], timeout=5.0)
    fp = FetchProcess(source, cache)
    try:
        assert fp.submit(h, ObjectKind.FILE)
        t0 = time.monotonic()
        while not handler.requests and time.monotonic() - t0 < 10:
            time.sleep(0.01)  # the child's GET has reached the server
        path = cache.fetch(source, h, ObjectKind.FILE)  # in flight in the child: wait for it
        assert path.read_bytes() and cache.stats["waits"] == 1
        assert source.stats["requests"] == 0 and _requested(handler, h) == 1
    finally:
        fp.close()


def test_a_corrupted_object_is_answered_as_failed_and_never_cached(
        golden_copy, golden_expected, http_server, tmp_path):
    files = _small_files(golden_expected, 3)
    bad = files[1][1]
    obj = golden_copy / bad.object_path(ObjectKind.FILE)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x55
    obj.write_bytes(bytes(data))
    srv = http_server(golden_copy.parent)
    cache = ObjectCache(tmp_path / "cache")
    fp = FetchProcess(HttpSource([f"{srv.url}/{GOLDEN_FQRN}"], timeout=5.0), cache)
    try:
        for _p, h in files:
            fp.submit(h, ObjectKind.FILE)
        _wait(fp, [h for _p, h in files])
        assert fp.stats["fetched"] == 2 and fp.stats["failed"] == 1
        assert not cache.contains(bad)
        assert all(cache.contains(h) for _p, h in files if h != bad)
        assert fp.submit(bad, ObjectKind.FILE)  # a failure is forgotten: may be asked again
    finally:
        fp.close()
    assert list(cache.txn.iterdir()) == []


def test_when_the_download_process_dies_readers_go_on_by_themselves(
        golden_repo, golden_expected, http_server, tmp_path):
    handler = recording_handler(delay=30)  # nothing the child asks for comes back
    srv = http_server(golden_repo.parent, handler)
    (_p, h), = _small_files(golden_expected, 1)
    cache = ObjectCache(tmp_path / "cache")
    fp = FetchProcess(HttpSource([f"{srv.url}/{GOLDEN_FQRN}"], timeout=60.0), cache)
    try:
        assert fp.submit(h, ObjectKind.FILE)
        event = fp.waiter(h)
        assert event is not None and not event.is_set()
        os.kill(fp.pid, signal.SIGKILL)
        assert event.wait(10)  # released, not left waiting for an answer that never comes
        assert not fp.has_room() and not fp.submit(h, ObjectKind.FILE)
        handler.delay = 0.0
        good = HttpSource([f"{srv.url}/{GOLDEN_FQRN}"], timeout=5.0)
        assert cache.fetch(good, h, ObjectKind.FILE).read_bytes()  # fetched by the reader
        assert good.stats["requests"] == 1
    finally:
        fp.close()
