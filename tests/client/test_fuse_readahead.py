"""Read-ahead of the FUSE mount: the next chunks of a sequentially read file and the next small
files of a directory read in listing order are downloaded (and verified) in the background."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.format.hashes import ContentHash
from pycvmfs.server.http import RepositoryServer

from helpers.fuse import eventually, mount, needs_fuse

pytestmark = needs_fuse

FQRN = "golden.example.org"


@pytest.fixture
def golden_mount(golden_repo, golden_keys, tmp_path):
    """``mount(*opts)`` -> (mount point, cache); unmounted at teardown."""
    mounted = []
    with RepositoryServer({FQRN: golden_repo}) as srv:

        def mount_next(*opts: str):
            n = len(mounted)
            cache = tmp_path / f"cache{n}"
            mounted.append(mount(FQRN, tmp_path / f"mnt{n}", srv.repository_url(FQRN),
                                 golden_keys, cache, *opts))
            return mounted[-1], ObjectCache(cache)

        try:
            yield mount_next
        finally:
            for mp in mounted:
                subprocess.run(["fusermount3", "-u", str(mp)], check=False)


def test_reading_the_start_of_a_chunked_file_downloads_the_next_chunks(golden_mount,
                                                                       golden_expected):
    info = golden_expected["published"]["files"]["rev2"]["bin/blob-3m.bin"]
    chunks = [ContentHash.parse(c["hash"]) for c in info["chunk_list"]]
    mp, cache = golden_mount()
    fd = os.open(mp / "bin" / "blob-3m.bin", os.O_RDONLY)
    try:
        assert len(os.pread(fd, 4096, 0)) == 4096
        # chunks 3 and 4 lie beyond the kernel's own read-ahead of a 4 KiB read
        assert eventually(lambda: all(cache.contains(h) for h in chunks[1:5])), \
            [cache.contains(h) for h in chunks[:8]]
        assert not any(cache.contains(h) for h in chunks[12:])  # only a window ahead
    finally:
        os.close(fd)
    data = (mp / "bin" / "blob-3m.bin").read_bytes()
    assert hashlib.sha1(data).hexdigest() == golden_expected["trees"]["rev2"]["entries"][
        "bin/blob-3m.bin"]["sha1"]


def test_opening_files_in_listing_order_downloads_the_next_ones(golden_mount,
                                                                golden_expected):
    entries = golden_expected["trees"]["rev2"]["entries"]
    published = golden_expected["published"]["files"]["rev2"]
    mp, cache = golden_mount()
    names = sorted(os.listdir(mp / "many"))
    files = [n for n in names if entries[f"many/{n}"]["type"] == "file"
             and published[f"many/{n}"]["chunks"] == 1]
    assert len(files) >= 10
    hashes = [ContentHash.parse(published[f"many/{n}"]["cvmfs_hash"]) for n in files]
    assert (mp / "many" / files[0]).read_bytes() is not None  # the scan starts at the top
    assert eventually(lambda: all(cache.contains(h) for h in hashes[1:9])), \
        [cache.contains(h) for h in hashes[:10]]
    for n in files[:40]:  # and every byte read is right
        got = hashlib.sha1((mp / "many" / n).read_bytes()).hexdigest()
        assert got == entries[f"many/{n}"]["sha1"], n


def test_no_read_ahead_when_turned_off(golden_mount, golden_expected):
    info = golden_expected["published"]["files"]["rev2"]["bin/blob-3m.bin"]
    chunks = [ContentHash.parse(c["hash"]) for c in info["chunk_list"]]
    mp, cache = golden_mount("--readahead-threads", "0")
    fd = os.open(mp / "bin" / "blob-3m.bin", os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        time.sleep(1.0)
        assert not any(cache.contains(h) for h in chunks[4:])
    finally:
        os.close(fd)


def test_a_tree_scan_reads_ahead_into_directories_not_listed_yet(tmp_path):
    """``tar`` and ``cp -r`` walk depth first in listing order: once files are read in order,
    listing a directory starts the downloads of what the walk meets next, below it and after
    it (directories the reader has not listed yet), in that order and a window ahead only."""
    from pycvmfs.client.repository import open_repository
    from pycvmfs.publish.repository import Publisher

    fqrn = "scan.example.org"
    pub = Publisher.mkfs(fqrn, tmp_path / "srv" / fqrn, config_dir=tmp_path / "etc")
    with pub.transaction() as txn:
        for d in range(4):
            for f in range(3):
                txn.add_file(f"/a/d{d}/f{f}.txt", f"file {d}.{f}\n".encode() * 50)
            for f in range(2):
                txn.add_file(f"/a/d{d}/sub/g{f}.txt", f"deep {d}.{f}\n".encode() * 50)
        txn.add_file("/z/far.txt", b"far away\n" * 50)
    with open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                         cache_dir=tmp_path / "reader") as repo:
        view = repo.head()
        hashes = {p: view.lstat(p).hash for p in
                  [f"/a/d{d}/{n}" for d in range(4)
                   for n in ("f0.txt", "f1.txt", "f2.txt", "sub/g0.txt", "sub/g1.txt")]
                  + ["/z/far.txt"]}
    with RepositoryServer({fqrn: pub.config.storage}) as srv:
        cache_dir = tmp_path / "cache"
        mp = mount(fqrn, tmp_path / "mnt", srv.repository_url(fqrn), pub.config.key_path("pub"),
                   cache_dir)
        try:
            cache = ObjectCache(cache_dir)
            assert sorted(os.listdir(mp / "a" / "d0")) == ["f0.txt", "f1.txt", "f2.txt", "sub"]
            assert (mp / "a" / "d0" / "f0.txt").read_bytes() == b"file 0.0\n" * 50  # a scan
            assert os.listdir(mp / "a" / "d0" / "sub") == ["g0.txt", "g1.txt"]
            # d1..d3 and their subdirectories were never listed by the reader
            later = [f"/a/d{d}/{n}" for d in (1, 2, 3) for n in ("f0.txt", "sub/g1.txt")]
            assert eventually(lambda: all(cache.contains(hashes[p]) for p in later)), \
                {p: cache.contains(hashes[p]) for p in later}
            assert eventually(lambda: cache.contains(hashes["/z/far.txt"]))  # after /a
            for p in later:  # and what the reader then reads is right
                d, name = p.split("/")[2], p.rsplit("/", 1)[1]
                want = (f"file {d[1]}.{name[1]}\n" if name.startswith("f")
                        else f"deep {d[1]}.{name[1]}\n").encode() * 50
                assert (mp / p.lstrip("/")).read_bytes() == want
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
