"""Objects too large to keep in memory while they arrive (past copying.SPILL_AT): streamed
into a directory replica's pending file, or through a temporary file into S3, and refused
without leftovers when their bytes are wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycvmfs.errors import HashMismatchError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.replica.copying import SPILL_AT
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.s3 import S3Storage

from helpers.replica import SOURCE_FQRN, data_files


@pytest.fixture
def big_source(tmp_path: Path) -> tuple[Publisher, dict[str, bytes]]:
    """A repository with two whole-file objects of a few MiB (random bytes barely compress,
    so the stored objects are larger than SPILL_AT) and some small ones."""
    settings = ServerSettings()
    settings.chunking = ChunkingParams(16 << 20, 32 << 20, 64 << 20)  # nothing gets chunked
    pub = Publisher.mkfs(SOURCE_FQRN, tmp_path / "s0" / SOURCE_FQRN,
                         config_dir=tmp_path / "s0-etc", settings=settings)
    files = {f"/big{i}.bin": os.urandom(3 << 20) for i in range(2)}
    files.update({f"/small{i}.txt": f"small {i}\n".encode() * 40 for i in range(5)})
    with pub.transaction() as txn:
        for path, data in files.items():
            txn.add_file(path, data)
    return pub, files


def _large_objects(root: Path) -> list[str]:
    return sorted(r for r in data_files(root) if (root / r).stat().st_size > SPILL_AT)


def test_large_objects_are_streamed_into_a_directory_replica(big_source, http_server, replicate,
                                                             tmp_path):
    pub, _files = big_source
    storage = pub.config.storage
    large = _large_objects(storage)
    assert len(large) == 2
    srv = http_server(storage.parent)
    dest = tmp_path / "replica"
    report = replicate(f"{srv.url}/{SOURCE_FQRN}", dest, tmp_path / "state",
                       keys=pub.config.key_path("pub"), fqrn=SOURCE_FQRN)
    assert report.objects_fetched >= 7
    for rel in data_files(storage) & data_files(dest):
        assert (dest / rel).read_bytes() == (storage / rel).read_bytes(), rel
    assert set(large) <= data_files(dest)
    assert list((dest / "data" / "txn").iterdir()) == []  # every pending file was committed
    assert not [p for p in (tmp_path / "state").rglob("pull.*")]


def test_a_corrupted_large_object_is_refused_and_leaves_nothing(big_source, http_server,
                                                                replicate, tmp_path):
    pub, _files = big_source
    storage = pub.config.storage
    victim = _large_objects(storage)[0]
    data = bytearray((storage / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # past SPILL_AT: found only once the whole body is in
    (storage / victim).write_bytes(bytes(data))
    srv = http_server(storage.parent)
    dest = tmp_path / "replica"
    with pytest.raises(HashMismatchError) as e:
        replicate(f"{srv.url}/{SOURCE_FQRN}", dest, tmp_path / "state",
                  keys=pub.config.key_path("pub"), fqrn=SOURCE_FQRN)
    assert victim[5:7] + victim[8:] in str(e.value)
    assert victim not in data_files(dest)
    assert not (dest / ".cvmfspublished").exists()
    assert list((dest / "data" / "txn").iterdir()) == []


def test_large_objects_reach_s3_whole(big_source, http_server, seaweed, tmp_path):
    pub, _files = big_source
    storage = pub.config.storage
    srv = http_server(storage.parent)
    bucket = seaweed.new_bucket("large")
    dest = S3Storage.from_config_file(seaweed.write_s3_conf(tmp_path / "s3.conf", bucket))
    src = HttpSource([f"{srv.url}/{SOURCE_FQRN}"], timeout=5.0)
    try:
        report = snapshot(src, dest, SOURCE_FQRN, [pub.config.key_path("pub")],
                          state_dir=tmp_path / "state")
        assert report.changed
        for rel in _large_objects(storage):
            assert dest.fetch(rel, lambda blocks: b"".join(blocks), what=rel) == \
                (storage / rel).read_bytes(), rel
    finally:
        src.close()
        dest.close()
    assert not [p for p in (tmp_path / "state").rglob("pull.*")]
