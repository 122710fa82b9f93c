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

from helpers.fuse import mount, needs_fuse

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


def _eventually(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_reading_the_start_of_a_chunked_file_downloads_the_next_chunks(golden_mount,
                                                                       golden_expected):
    info = golden_expected["published"]["files"]["rev2"]["bin/blob-3m.bin"]
    chunks = [ContentHash.parse(c["hash"]) for c in info["chunk_list"]]
    mp, cache = golden_mount()
    fd = os.open(mp / "bin" / "blob-3m.bin", os.O_RDONLY)
    try:
        assert len(os.pread(fd, 4096, 0)) == 4096
        # chunks 3 and 4 lie beyond the kernel's own read-ahead of a 4 KiB read
        assert _eventually(lambda: all(cache.contains(h) for h in chunks[1:5])), \
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
    assert _eventually(lambda: all(cache.contains(h) for h in hashes[1:9])), \
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
