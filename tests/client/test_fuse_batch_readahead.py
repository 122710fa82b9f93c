"""Read-ahead as batch transfers: bodies are hashed and inflated into the cache as they arrive,
only verified objects are kept, and an object in flight is downloaded once."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.errors import HashMismatchError
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.server.http import RepositoryServer
from pycvmfs.storage.http import HttpSource

from helpers.fuse import mount, needs_fuse

FQRN = "golden.example.org"


def _small_files(golden_expected: dict) -> list[tuple[str, ContentHash]]:
    """(name, hash) of the unchunked regular files of ``many/``, in listing order."""
    entries = golden_expected["trees"]["rev2"]["entries"]
    published = golden_expected["published"]["files"]["rev2"]
    names = sorted(p[len("many/"):] for p in entries
                   if p.startswith("many/") and "/" not in p[len("many/"):]
                   and entries[p]["type"] == "file" and published[p]["chunks"] == 1)
    return [(n, ContentHash.parse(published[f"many/{n}"]["cvmfs_hash"])) for n in names]


def _temporaries(cache: ObjectCache) -> list:
    return [p for p in cache.txn.iterdir() if p.name.startswith("obj.")]


def test_a_reader_waits_for_the_download_in_flight_instead_of_fetching_again(
        golden_server, golden_repo, golden_expected, tmp_path):
    name, h = _small_files(golden_expected)[0]
    cache = ObjectCache(tmp_path / "cache")
    source = HttpSource([f"{golden_server.url}/{FQRN}"])
    download = cache.begin_download(h, ObjectKind.FILE)
    assert download is not None
    assert cache.begin_download(h, ObjectKind.FILE) is None  # in flight once
    got: list = []
    reader = threading.Thread(target=lambda: got.append(cache.fetch(source, h, ObjectKind.FILE)))
    reader.start()
    time.sleep(0.3)
    assert reader.is_alive() and not cache.contains(h)
    body = (golden_repo / h.object_path(ObjectKind.FILE)).read_bytes()
    for i in range(0, len(body), 7):
        download.write(body[i:i + 7])
    path = download.finish()
    reader.join(5)
    assert got == [path] and source.stats["requests"] == 0
    sha1 = golden_expected["trees"]["rev2"]["entries"][f"many/{name}"]["sha1"]
    assert hashlib.sha1(path.read_bytes()).hexdigest() == sha1
    assert cache.begin_download(h, ObjectKind.FILE) is None  # cached now
    assert list(cache.txn.iterdir()) == []


def test_a_body_that_does_not_match_its_hash_never_reaches_the_cache(
        golden_repo, golden_expected, tmp_path):
    _name, h = _small_files(golden_expected)[1]
    cache = ObjectCache(tmp_path / "cache")
    download = cache.begin_download(h, ObjectKind.FILE)
    body = bytearray((golden_repo / h.object_path(ObjectKind.FILE)).read_bytes())
    body[-1] ^= 0xFF
    download.write(bytes(body))
    with pytest.raises(HashMismatchError):
        download.finish()
    download.abort()  # harmless after a failure
    assert not cache.contains(h) and list(cache.txn.iterdir()) == []
    again = cache.begin_download(h, ObjectKind.FILE)  # the object is free to download again
    assert again is not None
    again.abort()
    assert list(cache.txn.iterdir()) == []


@needs_fuse
def test_read_ahead_keeps_verified_objects_and_drops_a_corrupted_one(
        golden_copy, golden_keys, golden_expected, tmp_path):
    files = _small_files(golden_expected)
    entries = golden_expected["trees"]["rev2"]["entries"]
    bad_name, bad = files[3]
    obj = golden_copy / bad.object_path(ObjectKind.FILE)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x55
    obj.write_bytes(bytes(data))
    cache_dir, mp = tmp_path / "cache", tmp_path / "mnt"
    with RepositoryServer({FQRN: golden_copy}) as srv:
        mount(FQRN, mp, srv.repository_url(FQRN), golden_keys, cache_dir)
        try:
            cache = ObjectCache(cache_dir)
            assert [n for n, _h in files] == [n for n in sorted(os.listdir(mp / "many"))
                                              if n in dict(files)]
            (mp / "many" / files[0][0]).read_bytes()  # a scan of many/ starts
            good = [h for _n, h in files[1:9] if h != bad]
            deadline = time.monotonic() + 10
            while not all(cache.contains(h) for h in good) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all(cache.contains(h) for h in good)
            assert not cache.contains(bad)
            for n, h in files[1:9]:
                if h != bad:
                    got = hashlib.sha1(cache.path_for(h).read_bytes()).hexdigest()
                    assert got == entries[f"many/{n}"]["sha1"], n
            with pytest.raises(OSError) as e:
                (mp / "many" / bad_name).read_bytes()
            assert e.value.errno == errno.EIO
            assert not cache.contains(bad)
            # once the read-ahead in flight is over, no temporary file is left behind
            deadline = time.monotonic() + 10
            while _temporaries(cache) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _temporaries(cache) == []
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
    assert not os.path.ismount(mp)
