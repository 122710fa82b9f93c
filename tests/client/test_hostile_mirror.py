"""The client against a hostile mirror (no key, real signed files otherwise): zlib bombs, files
larger than their size, dripping and silent servers. Every download stays bounded, fails with an
error that names the object or URL, leaves nothing partial, and fails over to a good server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.fetcher import FetchProcess
from pycvmfs.client.files import Prefetcher
from pycvmfs.client.repository import open_repository
from pycvmfs.client.verify import verify_repository
from pycvmfs.errors import FetchError, HashMismatchError, SizeLimitError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.batch import BatchFetcher
from pycvmfs.storage.http import HttpSource

from helpers.hostile import (
    PeakSize,
    SlowServer,
    endless,
    finishes_within,
    tree_size,
    zlib_bomb,
)

FQRN = "golden.example.org"
BOMB = 1 << 30  # inflated bytes of the bombs (about 1 MiB on the wire)
MiB = 1 << 20


@pytest.fixture(scope="module")
def golden_facts(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Hashes and sizes of the golden repository, read from its storage directly."""
    with open_repository(str(golden_dir / FQRN), keys=[golden_dir / "keys"],
                         cache_dir=tmp_path_factory.mktemp("facts")) as repo:
        m = repo.manifest
        view = repo.open_revision()
        readme = view.lstat("/README.txt").entry
        nested = {r.path: r for r in view.root_catalog.nested_catalogs()}[b"/nested"]
        facts = {"certificate": m.certificate, "root": m.root_catalog,
                 "root_size": m.root_catalog_size, "readme": readme.hash,
                 "readme_size": readme.size, "readme_bytes": view.read_bytes("/README.txt"),
                 "nested": nested.hash, "nested_size": nested.size}
        view.close()
    assert facts["root_size"] > 0 and facts["nested_size"] > 0
    return facts


def _url_path(h: ContentHash, kind: ObjectKind) -> str:
    return f"/{FQRN}/{h.object_path(kind)}"


def _open(urls: list[str], keys: Path, cache: Path, **kw):
    return open_repository(";".join(f"{u}/{FQRN}" for u in urls), keys=[keys], fqrn=FQRN,
                           cache_dir=cache, timeout=kw.pop("timeout", 5), **kw)


def _no_partial_files(cache: Path) -> None:
    assert not any((cache / "txn").iterdir()), list((cache / "txn").iterdir())


def test_zlib_bomb_for_a_file_stops_at_its_catalog_size(mirror, golden_facts, golden_keys,
                                                        tmp_path):
    h = golden_facts["readme"]
    mirror.answers[_url_path(h, ObjectKind.FILE)] = zlib_bomb(BOMB)
    cache = tmp_path / "cache"
    with _open([mirror.url], golden_keys, cache) as repo, repo.open_revision() as view, \
            PeakSize(cache / "txn") as peak, pytest.raises(SizeLimitError) as err:
        view.read_bytes("/README.txt")
    message = str(err.value)
    assert str(h) in message and f"size limit of {golden_facts['readme_size']} bytes" in message
    assert peak.peak <= MiB  # a 1 GiB bomb: not even one inflated piece was kept
    _no_partial_files(cache)
    assert not repo.cache.contains(h)


def test_zlib_bomb_for_a_chunk_stops_at_the_chunk_size(mirror, golden_keys, tmp_path):
    """A reader (no read-ahead) caps a chunk at its own size, not its file's (3 MiB here)."""
    cache = tmp_path / "cache"
    with _open([mirror.url], golden_keys, cache) as repo, repo.open_revision() as view:
        first = view.root_catalog.chunks(b"/bin/blob-3m.bin")[0]
        assert first.size < view.lstat("/bin/blob-3m.bin").st_size // 8
        mirror.answers[_url_path(first.hash, ObjectKind.PARTIAL)] = zlib_bomb(BOMB)
        with PeakSize(cache / "txn") as peak, pytest.raises(SizeLimitError) as err, \
                view.open("/bin/blob-3m.bin") as f:
            f.read(10)
    assert f"size limit of {first.size} bytes" in str(err.value)
    assert peak.peak <= first.size + MiB
    _no_partial_files(cache)


def test_zlib_bomb_fails_over_to_a_good_server(mirror, golden_server, golden_facts,
                                               golden_keys, tmp_path):
    h = golden_facts["readme"]
    mirror.answers[_url_path(h, ObjectKind.FILE)] = zlib_bomb(BOMB)
    cache = tmp_path / "cache"
    with _open([mirror.url, golden_server.url], golden_keys, cache) as repo, \
            repo.open_revision() as view, PeakSize(cache / "txn") as peak:
        assert view.read_bytes("/README.txt") == golden_facts["readme_bytes"]
        assert repo.source.stats["bad_data"] == 2  # the bomb, then its no-cache retry
    assert mirror.sent[_url_path(h, ObjectKind.FILE)] > 0 and peak.peak <= MiB
    _no_partial_files(cache)


def test_forged_certificate_that_inflates_hugely_is_stopped_before_any_check(
        mirror, golden_server, golden_facts, golden_keys, tmp_path):
    path = _url_path(golden_facts["certificate"], ObjectKind.CERTIFICATE)
    mirror.answers[path] = zlib_bomb(BOMB)
    cache = tmp_path / "cache"
    with _open([mirror.url], golden_keys, cache) as repo, PeakSize(cache) as peak, \
            pytest.raises(SizeLimitError, match=f"{golden_facts['certificate']}X.*1048576"):
        repo.refresh()
    assert peak.peak <= 3 * MiB  # the 1 MiB cap and one inflated piece at most
    _no_partial_files(cache)
    with _open([mirror.url, golden_server.url], golden_keys, tmp_path / "c2") as repo:
        assert repo.manifest.root_catalog == golden_facts["root"]


@pytest.mark.parametrize("name", [".cvmfspublished", ".cvmfswhitelist"])
def test_oversized_manifest_or_whitelist_is_cut_off_and_fails_over(
        mirror, golden_server, golden_keys, tmp_path, name):
    mirror.answers[f"/{FQRN}/{name}"] = endless()  # as many bytes as the client reads
    with _open([mirror.url], golden_keys, tmp_path / "c1") as repo, \
            pytest.raises(SizeLimitError) as err:
        finishes_within(60, repo.refresh)
    assert f"{name} of {mirror.url}/{FQRN}" in str(err.value) and "1048576" in str(err.value)
    # the client stopped reading: two tries (plain, no-cache) of 1 MiB and the socket buffers
    assert mirror.sent[f"/{FQRN}/{name}"] < 32 * MiB
    with _open([mirror.url, golden_server.url], golden_keys, tmp_path / "c2") as repo:
        assert repo.refresh().manifest.revision > 0
        assert repo.source.current_url == f"{golden_server.url}/{FQRN}"


@pytest.mark.parametrize("which", ["root", "nested"])
def test_catalog_larger_than_recorded_is_stopped_at_its_recorded_size(
        mirror, golden_server, golden_facts, golden_keys, tmp_path, which):
    h, size = golden_facts[which], golden_facts[f"{which}_size"]
    # a real zlib stream, one byte more than the manifest / parent catalog records: inflated
    # only up to that size, then hashed to the end, so the mirror's bytes are named for what
    # they are (not the object), and another server may still have the right ones
    mirror.answers[_url_path(h, ObjectKind.CATALOG)] = zlib_bomb(size + 1)
    cache = tmp_path / "cache"
    with _open([mirror.url], golden_keys, cache) as repo, \
            pytest.raises(HashMismatchError) as err, repo.open_revision() as view:
        view.listdir("/nested")
    assert f"catalog {h}C: content hash mismatch" in str(err.value)
    _no_partial_files(cache)
    assert not repo.cache.contains(h)
    with _open([mirror.url, golden_server.url], golden_keys, tmp_path / "c2") as repo, \
            repo.open_revision() as view:
        assert "added-in-rev2.txt" in view.listdir("/nested")


def test_dripping_and_silent_servers_are_given_up_and_failed_over(golden_server, golden_keys,
                                                                  tmp_path):
    silent = SlowServer(silent=True)
    drip = SlowServer(piece=1, interval=2.0)  # one byte every 2 s
    try:
        start = time.monotonic()
        with _open([silent.url, drip.url, golden_server.url], golden_keys, tmp_path / "c",
                   timeout=3) as repo:
            manifest = finishes_within(60, lambda: repo.refresh().manifest)
            took = time.monotonic() - start
            assert manifest.revision > 0
            assert repo.source.current_url == f"{golden_server.url}/{FQRN}"
        # silent: 2 tries of a 3 s read timeout; drip: 2 tries of a 3 s low-speed window (the
        # one byte in 2 s is far under 1024 bytes/s), noticed at the next byte: 4 s at most
        assert took < 6 + 8 + 5, took
        assert drip.requests == 2 and silent.requests == 2
        with _open([drip.url], golden_keys, tmp_path / "c2", timeout=3) as repo, \
                pytest.raises(FetchError) as err:
            finishes_within(30, repo.refresh)
        assert f"{drip.url}/{FQRN}/.cvmfspublished: too slow" in str(err.value)
        assert "low-speed limit of 1024 bytes/s" in str(err.value)
        assert tree_size(tmp_path / "c2" / "txn") == 0
    finally:
        silent.stop()
        drip.stop()


@pytest.mark.parametrize("engine", ["download process", "in-process batch", "threads"])
def test_mount_read_ahead_stops_a_bomb_at_the_catalog_size(mirror, golden_facts, tmp_path,
                                                           engine):
    h, size = golden_facts["readme"], golden_facts["readme_size"]
    mirror.answers[_url_path(h, ObjectKind.FILE)] = zlib_bomb(1 << 30)
    cache = ObjectCache(tmp_path / "cache")
    source = HttpSource([f"{mirror.url}/{FQRN}"], timeout=5.0, retries=0)
    if engine == "download process":
        ahead = FetchProcess(source, cache)
    elif engine == "in-process batch":
        ahead = Prefetcher(lambda *a: None, cache.contains, batch=BatchFetcher(source),
                           begin=cache.begin_download)
    else:
        ahead = Prefetcher(lambda h, kind, comp, size: cache.fetch(source, h, kind, comp,
                                                                   max_size=size),
                           cache.contains, workers=1)
    try:
        with PeakSize(tmp_path / "cache" / "txn") as peak:
            assert ahead.submit(h, ObjectKind.FILE, Compression.ZLIB, size)
            finishes_within(30, lambda: _read_ahead_ended(ahead, h))
    finally:
        ahead.close()
    assert peak.peak <= MiB  # not the 1 GiB the bomb inflates to
    assert not cache.contains(h)
    _no_partial_files(tmp_path / "cache")


def _read_ahead_ended(ahead, h: ContentHash) -> None:
    if isinstance(ahead, FetchProcess):
        event = ahead.waiter(h)
        assert event is None or event.wait(30)
        return
    while ahead.stats["failed"] + ahead.stats["fetched"] == 0:
        time.sleep(0.01)


def test_verify_reports_a_bomb_by_its_size_limit(mirror, golden_facts, golden_keys, tmp_path):
    h = golden_facts["readme"]
    mirror.answers[_url_path(h, ObjectKind.FILE)] = zlib_bomb(BOMB)
    with _open([mirror.url], golden_keys, tmp_path / "c") as repo:
        report = finishes_within(120, lambda: verify_repository(repo))
    failures = dict(report.failures)
    assert f"size limit of {golden_facts['readme_size']} bytes" in failures[str(h)]
    assert len(failures) == 1
