"""The FUSE mount loads nested catalogs on first use and unloads those the kernel forgot."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pycvmfs.server.http import RepositoryServer

from helpers.fuse import mount, needs_fuse

pytestmark = needs_fuse

FQRN = "nested.example.org"
N_NESTED = 12


def _nclg(mp: Path) -> int:
    return int(os.getxattr(mp, "user.nclg"))


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def nested_mount(tmp_path):
    """A repository with N_NESTED nested catalogs (each with a nested catalog of its own
    under ``deep/``), mounted; yields the mount point."""
    from pycvmfs.publish.repository import Publisher

    pub = Publisher.mkfs(FQRN, tmp_path / "srv" / FQRN, config_dir=tmp_path / "etc")
    with pub.transaction() as txn:
        txn.add_file("/top.txt", b"top\n")
        for i in range(N_NESTED):
            txn.add_file(f"/d{i:02d}/.cvmfscatalog", b"")
            txn.add_file(f"/d{i:02d}/file.txt", f"file {i}\n".encode())
            txn.add_file(f"/d{i:02d}/deep/.cvmfscatalog", b"")
            txn.add_file(f"/d{i:02d}/deep/more.txt", f"more {i}\n".encode() * 100)
    with RepositoryServer({FQRN: pub.config.storage}) as srv:
        mp = mount(FQRN, tmp_path / "mnt", srv.repository_url(FQRN), pub.config.key_path("pub"),
                   tmp_path / "cache", log_file=tmp_path / "mount.log")
        try:
            yield mp
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)


def test_forgotten_nested_catalogs_are_unloaded_and_reloaded_on_use(nested_mount):
    mp = nested_mount
    assert _nclg(mp) == 1  # only the root catalog before anything below it is looked at
    for dirpath, _dirs, files in os.walk(mp):
        for name in files:
            (Path(dirpath) / name).read_bytes()
    walked = _nclg(mp)
    assert walked == 1 + 2 * N_NESTED

    # the kernel forgets unused dentries and inodes: FUSE forget requests follow
    def forgotten() -> bool:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
        return _nclg(mp) < walked

    _wait_for(forgotten, 20, "no nested catalog was unloaded after the kernel forgot them")
    _wait_for(lambda: _nclg(mp) <= 1 + N_NESTED // 2, 20, f"still {_nclg(mp)} catalogs loaded")

    # transparently reloaded (and verified again) on the next lookup
    assert (mp / "d03" / "deep" / "more.txt").read_bytes() == b"more 3\n" * 100
    assert (mp / "d07" / "file.txt").read_bytes() == b"file 7\n"
    assert _nclg(mp) >= 3
    assert int(os.getxattr(mp, "user.nioerr")) == 0


def test_a_catalog_with_an_open_file_stays_loaded(nested_mount):
    mp = nested_mount
    with open(mp / "d05" / "deep" / "more.txt", "rb") as kept:
        for i in range(N_NESTED):
            (mp / f"d{i:02d}" / "deep" / "more.txt").read_bytes()
        assert _nclg(mp) == 1 + 2 * N_NESTED

        def others_unloaded() -> bool:
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
            return _nclg(mp) <= 3

        _wait_for(others_unloaded, 20, f"still {_nclg(mp)} catalogs loaded")
        assert _nclg(mp) == 3  # the root, d05 and d05/deep: the open file needs them
        assert kept.read() == b"more 5\n" * 100
    assert (mp / "d01" / "file.txt").read_bytes() == b"file 1\n"
