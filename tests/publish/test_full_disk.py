"""A storage that fills up during a publish: a clear error, and the repository is unchanged."""

from __future__ import annotations

import os
import subprocess

import pytest

from pycvmfs.client.verify import verify_repository
from pycvmfs.errors import PublishError
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.publishing import reader

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root "
                                "(CI runs as root)")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@needs_root
@pytest.mark.parametrize("processes", [False, True])
def test_a_full_disk_aborts_the_publish_and_keeps_the_revision(small_disk, tmp_path, processes):
    settings = ServerSettings(ingest_processes=processes)
    pub = Publisher.mkfs("full.example.org", small_disk / "srv", config_dir=tmp_path / "etc",
                         settings=settings)
    before = pub.head()
    stored_before = sorted(p.name for p in (small_disk / "srv" / "data").rglob("*")
                           if p.is_file())
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):  # incompressible, 9 MB > 4 MB disk; > 256 files: workers start
        (src / f"f{i}").write_bytes(os.urandom(30_000))
    with pytest.raises(PublishError, match="No space left on device"), \
            pub.transaction() as txn:
        txn.add_tree(src, "/")
    assert pub.head() == before
    with reader(pub, tmp_path / "cache") as repo:
        assert verify_repository(repo).ok
    # the aborted publish took back every object it had stored: the storage is as before
    objects = sorted(p.name for p in (small_disk / "srv" / "data").rglob("*") if p.is_file())
    assert objects == stored_before
    # with fewer files the next publish succeeds
    for i in range(20, 300):
        (src / f"f{i}").unlink()
    with pub.transaction() as txn:
        txn.add_tree(src, "/")
    assert pub.head().revision == before.revision + 1
