"""A real FUSE mount against a hostile mirror: a zlib bomb in place of a file gives EIO (or the
good server's bytes, with one configured) and never more than the file's size in the cache."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.format.hashes import ObjectKind

from helpers.fuse import mount, needs_fuse
from helpers.hostile import HostileMirror, PeakSize, tree_size, zlib_bomb

pytestmark = needs_fuse

FQRN = "golden.example.org"


@pytest.fixture
def mirror(golden_dir: Path) -> Iterator[HostileMirror]:
    m = HostileMirror(golden_dir)
    yield m
    m.stop()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for mp in mounted:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False)


def test_a_bombed_file_reads_as_eio_then_from_the_good_server(
        mirror, golden_server, golden_dir, golden_keys, tmp_path, mounts):
    with open_repository(str(golden_dir / FQRN), keys=[golden_keys],
                         cache_dir=tmp_path / "facts") as repo, repo.open_revision() as view:
        readme = view.lstat("/README.txt").entry
        expected = view.read_bytes("/README.txt")
    mirror.answers[f"/{FQRN}/{readme.hash.object_path(ObjectKind.FILE)}"] = zlib_bomb(1 << 30)
    cache = tmp_path / "cache"
    mp = mount(FQRN, tmp_path / "mnt", f"{mirror.url}/{FQRN}", golden_keys, cache,
               "--readahead-threads", "0")
    mounts.append(mp)
    before = tree_size(cache)
    with PeakSize(cache) as peak, pytest.raises(OSError) as err:
        (mp / "README.txt").read_bytes()
    assert err.value.errno == errno.EIO
    assert peak.peak - before < 2 << 20  # not the 1 GiB the bomb inflates to
    assert list((cache / "txn").glob("obj.*")) == []
    mp2 = mount(FQRN, tmp_path / "mnt2", f"{mirror.url}/{FQRN}", golden_keys,
                tmp_path / "cache2", "--server-url", f"{golden_server.url}/{FQRN}")
    mounts.append(mp2)
    assert (mp2 / "README.txt").read_bytes() == expected
