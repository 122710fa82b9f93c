"""What a snapshot refuses: tampered objects, wrong keys, unreplicable or older sources, a
reflog changed behind its back; and that nothing bad is left on the replica then."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pycvmfs.errors import (
    ConfigError,
    HashMismatchError,
    IntegrityError,
    OutdatedManifestError,
)
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.manifest import Manifest

from helpers.replica import GOLDEN_FQRN, SOURCE_FQRN, data_files


def _flip(path: Path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0xFF
    path.write_bytes(bytes(data))


def _all_objects_hash_to_their_names(root: Path) -> bool:
    for rel in data_files(root):
        name = rel[5:7] + rel[8:]
        digest = name[:40]
        if hashlib.sha1((root / rel).read_bytes()).hexdigest() != digest:
            return False
    return True


@pytest.mark.parametrize("suffix", ["P", "C"])
def test_a_corrupted_object_is_refused_by_name(golden_copy, golden_expected, http_server,
                                               replicate, tmp_path, suffix):
    m = Manifest.parse((golden_copy / ".cvmfspublished").read_bytes())
    if suffix == "P":  # a chunk
        victim = sorted(p for p in data_files(golden_copy) if p.endswith("P"))[0]
    else:  # the nested catalog of the head revision
        nested = next(c["catalog_hash"] for c in golden_expected["published"]["catalogs"]
                      ["rev2"].values() if c["catalog_mountpoint"] == "/nested")
        victim = ContentHash.parse(nested).object_path(ObjectKind.CATALOG)
    _flip(golden_copy / victim)
    srv = http_server(golden_copy.parent)
    dest = tmp_path / "replica"
    with pytest.raises(HashMismatchError) as e:
        replicate(f"{srv.url}/{GOLDEN_FQRN}", dest, tmp_path / "state", all_tags=True)
    name = victim[5:7] + victim[8:].removesuffix(suffix)
    assert name in str(e.value) and srv.url in str(e.value)
    assert victim not in data_files(dest)
    assert not (dest / ".cvmfspublished").exists()
    assert not (dest / m.root_catalog.object_path(ObjectKind.CATALOG)).exists()
    assert _all_objects_hash_to_their_names(dest)


def test_a_corrupted_new_object_leaves_the_old_revision_in_place(source_repo, http_server,
                                                                replicate, tmp_path):
    storage = source_repo.config.storage
    key = source_repo.config.key_path("pub")
    srv = http_server(storage.parent)
    url, dest, state = f"{srv.url}/{SOURCE_FQRN}", tmp_path / "replica", tmp_path / "state"
    replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    old = (dest / ".cvmfspublished").read_bytes()
    before = data_files(storage)
    with source_repo.transaction() as txn:
        for i in range(5):
            txn.add_file(f"/new/f{i}.txt", f"new {i}\n".encode() * 10)
    new_objects = sorted(p for p in data_files(storage) - before if p[-1] not in "CHXM")
    _flip(storage / new_objects[2], 5)
    with pytest.raises(HashMismatchError, match=new_objects[2][8:]):
        replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    assert (dest / ".cvmfspublished").read_bytes() == old
    head = source_repo.head()
    assert not (dest / head.root_catalog.object_path(ObjectKind.CATALOG)).exists()
    assert new_objects[2] not in data_files(dest)
    assert not (dest / ".cvmfs_is_snapshotting").exists()


def test_a_wrong_master_key_is_refused(golden_server, replicate, source_repo, tmp_path):
    dest = tmp_path / "replica"
    with pytest.raises(IntegrityError):
        replicate(f"{golden_server.url}/{GOLDEN_FQRN}", dest, tmp_path / "state",
                  keys=source_repo.config.key_path("pub"))
    assert not dest.exists() or not any(dest.iterdir())


def test_a_source_without_the_master_replica_marker_is_refused(golden_copy, http_server,
                                                               replicate, tmp_path):
    (golden_copy / ".cvmfs_master_replica").unlink()
    srv = http_server(golden_copy.parent)
    dest = tmp_path / "replica"
    with pytest.raises(ConfigError, match=r"\.cvmfs_master_replica not found.*replication"):
        replicate(f"{srv.url}/{GOLDEN_FQRN}", dest, tmp_path / "state")
    assert not dest.exists()


def test_a_source_going_back_to_an_older_revision_is_refused(source_repo, http_server,
                                                             replicate, tmp_path):
    storage = source_repo.config.storage
    key = source_repo.config.key_path("pub")
    srv = http_server(storage.parent)
    url, dest = f"{srv.url}/{SOURCE_FQRN}", tmp_path / "replica"
    old_manifest = (storage / ".cvmfspublished").read_bytes()
    with source_repo.transaction() as txn:
        txn.add_file("/x.txt", b"x")
    replicate(url, dest, tmp_path / "state", keys=key, fqrn=SOURCE_FQRN)
    current = (dest / ".cvmfspublished").read_bytes()
    (storage / ".cvmfspublished").write_bytes(old_manifest)  # a replayed, older manifest
    for state in ("state", "fresh-state"):  # the replica's own manifest is checked too
        with pytest.raises(OutdatedManifestError, match=r"older|go back"):
            replicate(url, dest, tmp_path / state, keys=key, fqrn=SOURCE_FQRN)
    assert (dest / ".cvmfspublished").read_bytes() == current


def test_a_reflog_changed_behind_the_replicas_back_is_refused(source_repo, http_server,
                                                              replicate, tmp_path):
    storage = source_repo.config.storage
    key = source_repo.config.key_path("pub")
    srv = http_server(storage.parent)
    url, dest, state = f"{srv.url}/{SOURCE_FQRN}", tmp_path / "replica", tmp_path / "state"
    replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    with source_repo.transaction() as txn:
        txn.add_file("/x.txt", b"x")
    _flip(dest / ".cvmfsreflog", 2000)
    with pytest.raises(IntegrityError, match=r"\.cvmfsreflog.*reflog\.chksum"):
        replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    m = Manifest.parse((dest / ".cvmfspublished").read_bytes())
    assert m.revision == source_repo.head().revision - 1
    # a crash between the reflog upload and the checksum update is not tampering
    (dest / ".cvmfsreflog").unlink()
    (state / "reflog.chksum").unlink()
    report = replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    assert report.revision == source_repo.head().revision
    known = ContentHash.parse((state / "reflog.chksum").read_text())
    pending = state / "reflog.chksum.pending"
    pending.write_text(str(known))
    (state / "reflog.chksum").unlink()
    with source_repo.transaction() as txn:
        txn.add_file("/y.txt", b"y")
    assert replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN).changed
    assert not pending.exists()
