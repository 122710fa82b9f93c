"""A snapshot of the repository written by the stock tools, read back through our reader."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository, open_repository
from pycvmfs.errors import RepositoryBusyError
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.manifest import Manifest
from pycvmfs.format.reflog import Reflog, reflog_hash
from pycvmfs.format.signature import load_public_keys
from pycvmfs.publish.lock import publish_lock
from pycvmfs.server.http import RepositoryServer
from pycvmfs.storage.local import LocalStorage

from helpers.replica import GOLDEN_FQRN, REVISIONS, check_tree, data_files

DATE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 123][0-9] "
                  r"[0-2][0-9]:[0-5][0-9]:[0-5][0-9] UTC [0-9]{4}$")
@pytest.mark.parametrize(("selector", "tree"), REVISIONS, ids=["head", "v1", "v2"])
def test_reader_on_the_replica_directory_matches_expected(golden_replica, golden_keys,
                                                          golden_expected, tmp_path, selector,
                                                          tree):
    dest, _report = golden_replica
    with open_repository(str(dest), keys=[golden_keys], fqrn=GOLDEN_FQRN,
                         cache_dir=tmp_path / "cache") as repo:
        check_tree(repo, selector, golden_expected["trees"][tree]["entries"])


def test_reader_over_http_from_the_replica_matches_expected(golden_replica, golden_keys,
                                                            golden_expected, tmp_path):
    dest, _report = golden_replica
    with RepositoryServer({GOLDEN_FQRN: dest}) as srv:
        url = srv.repository_url(GOLDEN_FQRN)
        with open_repository(url, keys=[golden_keys], fqrn=GOLDEN_FQRN,
                             cache_dir=tmp_path / "cache") as repo:
            for selector, tree in REVISIONS:
                check_tree(repo, selector, golden_expected["trees"][tree]["entries"])
            assert {t.name for t in repo.tags()} == {
                t["name"] for t in golden_expected["published"]["tags"]}


def test_replicated_objects_are_the_source_bytes(golden_replica, golden_repo):
    dest, report = golden_replica
    mine, theirs = data_files(dest), data_files(golden_repo)
    assert mine <= theirs
    for rel in mine:
        assert (dest / rel).read_bytes() == (golden_repo / rel).read_bytes(), rel
    # everything but the revision-0 catalog of mkfs, which no tag names and an initial
    # snapshot does not walk back to, and the older history databases (stock S1s copy only
    # the current one)
    m = Manifest.parse((golden_repo / ".cvmfspublished").read_bytes())
    missing = theirs - mine
    assert sorted(p[-1] for p in missing) == ["C", "H", "H", "H", "H"]
    assert m.history.object_path(ObjectKind.HISTORY) in mine
    for name in (".cvmfspublished", ".cvmfswhitelist"):
        assert (dest / name).read_bytes() == (golden_repo / name).read_bytes()
    for h, kind in ((m.certificate, ObjectKind.CERTIFICATE), (m.meta_info, ObjectKind.METAINFO)):
        data = (dest / h.object_path(kind)).read_bytes()  # §12.11: still hashes to its name
        assert ContentHash(h.algorithm, hashlib.sha1(data).digest()) == h
    assert report.objects_fetched + report.catalogs_fetched + 3 == len(mine)  # + H, X, M
    assert report.initial and report.changed and report.revision == 3


def test_reflog_status_and_markers(golden_replica):
    dest, _report = golden_replica
    state = dest.parent / "state"
    known = ContentHash.parse((state / "reflog.chksum").read_text().strip())
    assert reflog_hash(dest / ".cvmfsreflog", known.algorithm) == known
    m = Manifest.parse((dest / ".cvmfspublished").read_bytes())
    with Reflog.open(dest / ".cvmfsreflog") as reflog:
        assert reflog.fqrn == GOLDEN_FQRN
        for h, kind in ((m.root_catalog, ObjectKind.CATALOG),
                        (m.certificate, ObjectKind.CERTIFICATE),
                        (m.history, ObjectKind.HISTORY), (m.meta_info, ObjectKind.METAINFO)):
            assert reflog.contains(h, kind)
        roots = [e for e in reflog.entries() if e.kind is ObjectKind.CATALOG]
        assert len(roots) == 3  # head and the two other tagged revisions; no nested catalog
    status = json.loads((dest / ".cvmfs_status.json").read_text())
    assert DATE.match(status["last_snapshot"])
    assert (dest / ".cvmfs_last_snapshot").read_text() == status["last_snapshot"] + "\n"
    assert not (dest / ".cvmfs_is_snapshotting").exists()


def test_trunk_only_then_all_tags_then_no_op(golden_server, replicate, golden_keys, tmp_path):
    url = f"{golden_server.url}/{GOLDEN_FQRN}"
    dest, state = tmp_path / "replica", tmp_path / "state"
    first = replicate(url, dest, state, all_tags=False)
    v1_root = "data/94/c073f2"  # prefix of the v1 root catalog (README)
    assert not any(p.startswith(v1_root) for p in data_files(dest))
    with open_repository(str(dest), keys=[golden_keys], cache_dir=tmp_path / "c1") as repo:
        assert repo.open_revision().stat("/bin/blob-3m.bin").st_size > 0
    again = replicate(url, dest, state)  # the default: all tags (the manifest did not change)
    assert again.changed and again.catalogs_fetched == 3 and again.objects_fetched > 0
    assert again.objects_fetched + first.objects_fetched == 1075  # as one --all-tags run
    assert any(p.startswith(v1_root) for p in data_files(dest))
    noop = replicate(url, dest, state)  # its speed: benchmarks/replica.py
    assert not noop.changed and noop.objects_fetched == 0 and noop.bytes_fetched == 0
    assert noop.catalogs_fetched == 0


def test_a_second_snapshot_of_the_same_replica_waits_for_none(golden_server, replicate,
                                                              tmp_path):
    state = tmp_path / "state"
    with publish_lock(state / "snapshot.lock", what="test"), \
            pytest.raises(RepositoryBusyError, match="another process"):
        replicate(f"{golden_server.url}/{GOLDEN_FQRN}", tmp_path / "replica", state)
    assert not (tmp_path / "replica" / ".cvmfspublished").exists()


def test_replica_of_the_replica_is_identical(golden_replica, golden_keys, replicate, tmp_path):
    """A stratum 1 can serve as the source of another (it has its own master-replica marker
    only if the operator adds one; here the marker is copied in)."""
    dest, _report = golden_replica
    src = tmp_path / "s1" / GOLDEN_FQRN
    store = LocalStorage(src)
    for rel in data_files(dest) | {".cvmfspublished", ".cvmfswhitelist"}:
        store.put_bytes(rel, (dest / rel).read_bytes())
    store.put_bytes(".cvmfs_master_replica", b"x\n")
    with RepositoryServer({GOLDEN_FQRN: src}) as srv:
        report = replicate(srv.repository_url(GOLDEN_FQRN), tmp_path / "s2", tmp_path / "st",
                           all_tags=True)
    assert data_files(tmp_path / "s2") == data_files(dest)
    assert report.objects_present == 0
    repo = Repository(LocalStorage(tmp_path / "s2"), public_keys=load_public_keys([golden_keys]),
                      cache=ObjectCache(tmp_path / "cache"))
    assert repo.refresh().manifest.revision == 3
