"""Download bounds in every transfer engine, against real loopback servers: the inflate cap,
the low-speed limit (CVMFS_LOW_SPEED_LIMIT) and the deadline of HttpSource (urllib3),
BatchFetcher (libcurl multi) and the compiled copy engine."""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from collections.abc import Iterator

import pytest

from pycvmfs.errors import FetchError, SizeLimitError
from pycvmfs.format.compression import Compression, Inflater, decompress, stored_bound
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind
from pycvmfs.storage.base import fetch_bytes
from pycvmfs.storage.batch import BatchFetcher
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.httpcopy import HttpCopier
from pycvmfs.storage.local import LocalStorage
from pycvmfs.storage.objects import fetch_object_bytes

from helpers.hostile import HostileMirror, SlowServer, endless, finishes_within, zlib_bomb

# above the old 1 byte/s read timeout of the curl engines, far under the default 1024 bytes/s
SLOW = {"piece": 100, "interval": 0.5}


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    s = SlowServer(**SLOW)
    yield s
    s.stop()


def test_inflater_stops_one_piece_past_its_limit():
    bomb = zlib_bomb(1 << 30)
    inf = Inflater(what="obj", limit=5 << 20)
    seen = 0
    with pytest.raises(SizeLimitError, match="obj: decompresses to more than its size limit "
                                             "of 5242880 bytes"):
        for piece in inf.feed(bomb):
            seen += len(piece)
    assert seen <= 5 << 20  # the piece that went past was not handed out
    with pytest.raises(SizeLimitError):
        decompress(bomb, what="obj", limit=1000)
    body = b"exactly this" * 100
    assert decompress(zlib.compress(body), limit=len(body)) == body
    assert b"".join(Inflater(Compression.NONE, limit=len(body)).feed(body)) == body
    with pytest.raises(SizeLimitError):
        list(Inflater(Compression.NONE, limit=len(body) - 1).feed(body))


def test_stored_bound_covers_what_zlib_makes_of_incompressible_bytes():
    for size in (0, 1, 45, 65536, 1 << 20):
        noise = hashlib.shake_128(b"x").digest(size) if size else b""
        assert len(zlib.compress(noise, 0)) <= stored_bound(size)
        assert len(zlib.compress(noise)) <= stored_bound(size)
    assert stored_bound(45, Compression.NONE) == 45


def test_an_object_past_its_size_fails_over_and_the_error_names_it(golden_dir, golden_server):
    mirror = HostileMirror(golden_dir)
    try:
        body = b"the real object, 33 bytes long.\n"
        stored = zlib.compress(body)
        h = ContentHash(Algorithm.SHA1, hashlib.sha1(stored).digest())
        rel = h.object_path(ObjectKind.FILE)
        mirror.answers[f"/x/{rel}"] = zlib_bomb(1 << 30)
        src = HttpSource([f"{mirror.url}/x"])
        with pytest.raises(SizeLimitError, match=f"{h}.*size limit of {len(body)} bytes"):
            fetch_object_bytes(src, h, ObjectKind.FILE, max_size=len(body))
        assert src.stats["bad_data"] == 2  # plain, then no-cache: both cut off
        assert mirror.sent[f"/x/{rel}"] <= 2 * len(zlib_bomb(1 << 30))
    finally:
        mirror.stop()


def test_an_oversized_small_file_fails_over_instead_of_ending_the_fetch(golden_dir,
                                                                       golden_server):
    mirror = HostileMirror(golden_dir)
    try:
        mirror.answers["/golden.example.org/.cvmfspublished"] = endless()
        src = HttpSource([f"{mirror.url}/golden.example.org",
                          f"{golden_server.url}/golden.example.org"])
        data = fetch_bytes(src, ".cvmfspublished", what="manifest", limit=1 << 20)
        assert data == (golden_dir / "golden.example.org" / ".cvmfspublished").read_bytes()
        assert src.stats["failovers"] == 1
    finally:
        mirror.stop()


def _timed(work) -> tuple[object, float]:
    start = time.monotonic()
    return work(), time.monotonic() - start


def test_http_source_gives_up_a_slow_body_and_fails_over(slow_server, golden_server):
    src = HttpSource([slow_server.url, f"{golden_server.url}/golden.example.org"],
                     timeout=2.0, retries=0)
    data, took = _timed(lambda: fetch_bytes(src, ".cvmfspublished", what="manifest"))
    assert data.startswith(b"C") and 2.0 <= took < 5.0, took
    alone = HttpSource([slow_server.url], timeout=2.0, retries=0)
    with pytest.raises(FetchError) as err:
        fetch_bytes(alone, ".cvmfspublished", what="manifest")
    assert f"{slow_server.url}/.cvmfspublished: too slow: " in str(err.value)
    assert "under the low-speed limit of 1024 bytes/s" in str(err.value)
    # the same server is fast enough for a lower limit: the whole 600 bytes arrive
    slow_server.length = 600
    ok = HttpSource([slow_server.url], timeout=2.0, retries=0, low_speed_limit=100)
    assert len(fetch_bytes(ok, ".cvmfspublished", what="manifest")) == 600


def test_http_source_gives_up_response_headers_that_trickle_in():
    trickle = SlowServer(header_interval=1.0, length=5)  # a byte a second: under the timeout
    try:
        src = HttpSource([trickle.url], timeout=2.0, retries=0)
        with pytest.raises(FetchError) as err:
            finishes_within(10, lambda: fetch_bytes(src, "f", what="f"))
        assert f"{trickle.url}/f: too slow: no complete response headers after 4 s" in \
            str(err.value)
    finally:
        trickle.stop()


def test_http_source_deadline_ends_a_transfer_fast_enough_but_endless():
    fast_enough = SlowServer(piece=4000, interval=0.1)  # 40 kB/s, for ever
    try:
        src = HttpSource([fast_enough.url], timeout=2.0, retries=0, deadline=1.5)
        with pytest.raises(FetchError) as err:
            _timed(lambda: fetch_bytes(src, "f", what="f"))
        assert "deadline: transfer not finished after 1.5 s" in str(err.value)
    finally:
        fast_enough.stop()


class _Collect:
    def __init__(self, relpath: str) -> None:
        self.relpath = relpath
        self.got = 0
        self.error: str | None = None
        self.ended = threading.Event()

    def write(self, block: bytes) -> None:
        self.got += len(block)

    def done(self, error: str | None) -> None:
        self.error = error
        self.ended.set()


def test_batch_fetcher_follows_the_low_speed_limit_and_the_deadline(slow_server):
    src = HttpSource([slow_server.url], timeout=2.0)
    t = _Collect("slow")
    start = time.monotonic()
    with BatchFetcher(src, parallel=1) as bf:
        bf.submit(t)
        assert t.ended.wait(10)
    assert time.monotonic() - start < 5.0 and "too slow" in (t.error or "").lower(), t.error
    fast_enough = SlowServer(piece=4000, interval=0.1)
    try:
        src = HttpSource([fast_enough.url], timeout=2.0, deadline=1.5)
        t = _Collect("endless")
        with BatchFetcher(src, parallel=1) as bf:
            bf.submit(t)
            assert t.ended.wait(10)
        assert t.error is not None and "timed out" in t.error.lower(), t.error
    finally:
        fast_enough.stop()


def test_batch_fetcher_ends_a_body_past_its_size(golden_dir):
    mirror = HostileMirror(golden_dir)
    try:
        mirror.answers["/endless"] = endless()
        t = _Collect("endless")
        with BatchFetcher(HttpSource([mirror.url], timeout=2.0), parallel=1) as bf:
            bf.submit(t, max_size=100_000)
            assert t.ended.wait(10)
        assert t.error == "more than 100000 bytes, its size limit; stopped there"
        assert t.got <= 100_000 and mirror.sent["/endless"] < 16 << 20
    finally:
        mirror.stop()


def test_copy_engine_follows_the_low_speed_limit(slow_server, tmp_path):
    dest = LocalStorage(tmp_path / "dest", fsync=False)
    dest.create_skeleton()
    h = ContentHash(Algorithm.SHA1, bytes(range(20)))
    rel = h.object_path(ObjectKind.FILE)
    results: dict = {}
    ended = threading.Event()

    def on_done(batch: list) -> None:
        for token, size, error in batch:
            results[token] = (size, error)
        ended.set()

    start = time.monotonic()
    with HttpCopier(HttpSource([slow_server.url], timeout=2.0), dest, on_done,
                    parallel=1) as copier:
        copier.submit([(rel, h.algorithm.value, h.digest, "t")])
        assert ended.wait(10)
    size, error = results["t"]
    assert size == 0 and "too slow" in error.lower(), error
    assert time.monotonic() - start < 5.0
    assert sorted((tmp_path / "dest" / "data" / "txn").iterdir()) == []
    assert not (tmp_path / "dest" / rel).exists()

