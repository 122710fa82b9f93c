"""The stock CernVM-FS client mounts what pycvmfs writes and serves (run by hand; see
``conftest.py`` and ``docs/stock-client.md``).

Every repository here is served by ``pycvmfs serve``'s server on loopback and mounted by the
stock ``cvmfs2`` (FUSE 3), then walked with plain OS calls and compared with what the source
was, or with what pycvmfs's own verified reader says of the same revision.
"""

from __future__ import annotations

import copy
import io
import os
import stat
import tarfile

import pytest

from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.server.http import RepositoryServer
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

from helpers.mount_walk import assert_matches_expected, walk_mount
from helpers.publishing import describe_tree, describe_view, reader
from helpers.stock_client import ENV, StockClient, keys_dir, same_links

GOLDEN = "golden.example.org"
TAGS = {"head": ("rev2", {}), "v1": ("rev1", {"CVMFS_REPOSITORY_TAG": "v1"})}


@pytest.fixture(scope="module")
def stock() -> StockClient:
    return StockClient(os.environ[ENV])


@pytest.fixture(scope="module")
def served_golden(golden_repo):
    with RepositoryServer({GOLDEN: golden_repo}) as srv:
        yield srv.repository_url(GOLDEN)


# -- the golden (stock-written) repository through pycvmfs serve and a pycvmfs replica ------

@pytest.mark.parametrize("which", sorted(TAGS))
def test_stock_client_reads_the_golden_repository_from_pycvmfs_serve(
        stock, served_golden, golden_keys, golden_expected, tmp_path, which):
    tree, config = TAGS[which]
    with stock.mount(GOLDEN, served_golden, keys_dir(tmp_path, golden_keys), tmp_path,
                     config) as m:
        assert_matches_expected(walk_mount(m.mountpoint), golden_expected["trees"][tree]["entries"])


@pytest.fixture(scope="module")
def golden_replica(served_golden, golden_keys, tmp_path_factory):
    """A stratum 1 of the golden repository made by ``pycvmfs snapshot`` with its defaults."""
    base = tmp_path_factory.mktemp("replica")
    src = HttpSource([served_golden])
    try:
        report = snapshot(src, LocalStorage(base / GOLDEN), GOLDEN, [golden_keys],
                          state_dir=base / "state")
    finally:
        src.close()
    assert sorted(report.tags) == sorted(["v1", "v2", "trunk", "trunk-previous"] + [
        t for t in report.tags if t.startswith("generic-")])
    return base / GOLDEN


@pytest.mark.parametrize("which", sorted(TAGS))
def test_stock_client_mounts_a_pycvmfs_stratum1_of_the_golden_repository(
        stock, golden_replica, golden_keys, golden_expected, tmp_path, which):
    """Issue 5's "done when": a stratum 1 made by pycvmfs from a stock-written repository,
    mounted by the stock client (head, and the tag ``v1`` replicated by default as stock
    ``cvmfs_server snapshot`` does)."""
    tree, config = TAGS[which]
    with RepositoryServer({GOLDEN: golden_replica}) as srv, \
            stock.mount(GOLDEN, srv.repository_url(GOLDEN), keys_dir(tmp_path, golden_keys),
                        tmp_path, config) as m:
        assert_matches_expected(walk_mount(m.mountpoint), golden_expected["trees"][tree]["entries"])
        assert m.talk("revision").strip() == ("3" if tree == "rev2" else "2")


# -- repositories published by pycvmfs ---------------------------------------------------------

@pytest.fixture(scope="module")
def published_golden_trees(golden_source_trees, tmp_path_factory):
    """The golden source trees published by pycvmfs with the golden repository's settings."""
    base = tmp_path_factory.mktemp("pub")
    settings = ServerSettings(include_xattrs=True, chunking=ChunkingParams(65536, 131072, 262144))
    pub = Publisher.mkfs(GOLDEN, base / "srv" / GOLDEN, config_dir=base / "etc",
                         settings=settings)
    with pub.transaction(tag="v1") as txn:
        txn.add_tree(golden_source_trees / "rev1", "/", delete=True)
    with pub.transaction(tag="v2") as txn:
        txn.add_tree(golden_source_trees / "rev2", "/", delete=True)
    return pub


@pytest.mark.parametrize("which", sorted(TAGS))
def test_stock_client_mounts_what_the_pycvmfs_publisher_wrote(
        stock, published_golden_trees, golden_expected, tmp_path, which):
    pub = published_golden_trees
    tree, config = TAGS[which]
    expected = copy.deepcopy(golden_expected["trees"][tree]["entries"])
    for e in expected.values():  # pycvmfs keeps hard links (as stock does on AUFS)
        if e["type"] == "file":
            e["published_nlink"] = e["nlink"]
    with RepositoryServer({GOLDEN: pub.config.storage}) as srv, \
            stock.mount(GOLDEN, srv.repository_url(GOLDEN),
                        keys_dir(tmp_path, pub.config.key_path("pub")), tmp_path, config) as m:
        assert_matches_expected(walk_mount(m.mountpoint), expected)
        links = os.lstat(m.mountpoint / "hardlinks" / "a.txt")
        assert links.st_ino == os.lstat(m.mountpoint / "hardlinks" / "c.txt").st_ino


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(30):
            data = f"from a tarball {i}\n".encode() * (i + 1)
            info = tarfile.TarInfo(f"pkg/share/doc-{i:02d}.txt")
            info.size, info.mtime, info.mode = len(data), 1_600_000_000 + i, 0o644
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/share/latest.txt")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "doc-29.txt", 1_600_000_100
        tar.addfile(link)
    return buf.getvalue()


def _feature_tree(txn, big: bytes) -> None:
    """Every kind of entry a publish can make, across automatic and dirtab catalogs."""
    txn.add_file("/README", b"pycvmfs feature repository\n", mtime=1_700_000_000)
    txn.add_file("/empty", b"", mtime=1_700_000_001)
    txn.add_file("/data/big.bin", big, mtime=1_700_000_002)  # chunked with the stock sizes
    txn.add_file("/data/exec.sh", b"#!/bin/sh\necho hi\n", mode=0o755, mtime=1_700_000_003)
    txn.add_file("/data/xattr.txt", b"with xattrs\n", mtime=1_700_000_004,
                 xattrs={b"user.kind": b"test", b"user.bin": bytes(range(16))})
    txn.add_file("/data/" + "n" * 200 + "-ünïcødé-日本語.txt", b"long name\n",
                 mtime=1_700_000_005)
    txn.symlink("/data/rel-link", "exec.sh", mtime=1_700_000_006)
    txn.symlink("/data/abs-link", "/cvmfs/elsewhere/x", mtime=1_700_000_007)
    txn.special("/dev/fifo", stat.S_IFIFO, mode=0o600, mtime=1_700_000_008)
    txn.special("/dev/null-like", stat.S_IFCHR, mode=0o666, rdev=os.makedev(1, 3),
                mtime=1_700_000_009)
    txn.mkdir("/empty-dir", mtime=1_700_000_010)
    txn.add_file("/.cvmfsdirtab", b"/sw/*\n", mtime=1_700_000_011)
    for pkg in ("alpha", "beta"):
        for i in range(20):
            txn.add_file(f"/sw/{pkg}/lib/f{i:02d}.so", f"{pkg} {i}\n".encode() * 100,
                         mtime=1_700_000_100 + i)
    for d in range(6):  # enough entries for automatic catalogs with the small weights below
        for i in range(60):
            txn.add_file(f"/auto/d{d}/f{i:03d}", f"auto {d} {i}\n".encode(),
                         mtime=1_700_000_200 + i)
    txn.add_tarball(io.BytesIO(_tarball()), "/tar")


FEATURES = {
    "sha1-zlib": (Algorithm.SHA1, Compression.ZLIB),
    "rmd160-none": (Algorithm.RMD160, Compression.NONE),
    "shake128-zlib": (Algorithm.SHAKE128, Compression.ZLIB),
}


@pytest.mark.parametrize("variant", sorted(FEATURES))
def test_stock_client_agrees_with_pycvmfs_on_every_kind_of_entry(stock, tmp_path, variant):
    algorithm, compression = FEATURES[variant]
    settings = ServerSettings(hash_algorithm=algorithm, compression=compression,
                              include_xattrs=True, autocatalogs=True,
                              autocatalogs_max_weight=100, autocatalogs_min_weight=20)
    fqrn = f"{variant}.example.org"
    pub = Publisher.mkfs(fqrn, tmp_path / "srv" / fqrn, config_dir=tmp_path / "etc",
                         settings=settings)
    big = os.urandom(3 << 20) * 7  # 21 MiB: several 4-16 MiB chunks, some repeated
    with pub.transaction() as txn:
        _feature_tree(txn, big)
    with reader(pub, tmp_path / "ours") as repo, repo.open_revision() as view:
        ours = describe_view(view)
        nested = [p for p, _c in view.catalogs()]
    assert len(nested) > 4, nested  # root, the dirtab catalogs and automatic ones
    with RepositoryServer({fqrn: pub.config.storage}) as srv, \
            stock.mount(fqrn, srv.repository_url(fqrn),
                        keys_dir(tmp_path, pub.config.key_path("pub")), tmp_path / "s") as m:
        theirs = describe_tree(m.mountpoint)
        assert int(os.getxattr(m.mountpoint / "data" / "big.bin", "user.chunks")) > 1
    assert same_links(theirs) == same_links(ours)
    assert theirs["data/big.bin"]["size"] == len(big)


def test_stock_client_follows_new_pycvmfs_revisions(stock, tmp_path):
    """A mounted stock client switches to the revision pycvmfs published on a remount,
    while a file opened before keeps reading the old content."""
    fqrn = "moving.example.org"
    pub = Publisher.mkfs(fqrn, tmp_path / "srv" / fqrn, config_dir=tmp_path / "etc")
    with pub.transaction() as txn:
        txn.add_file("/state.txt", b"first\n")
        txn.add_file("/keep.txt", b"unchanged\n")
    with RepositoryServer({fqrn: pub.config.storage}) as srv, \
            stock.mount(fqrn, srv.repository_url(fqrn),
                        keys_dir(tmp_path, pub.config.key_path("pub")), tmp_path / "s") as m:
        path = m.mountpoint / "state.txt"
        assert path.read_bytes() == b"first\n"
        with open(path, "rb") as before:
            with pub.transaction() as txn:
                txn.add_file("/state.txt", b"second, longer\n")
                txn.add_file("/new.txt", b"new\n")
            m.talk("remount", "sync")
            assert path.read_bytes() == b"second, longer\n"
            assert (m.mountpoint / "new.txt").read_bytes() == b"new\n"
            assert before.read() == b"first\n"
        assert m.talk("revision").strip() == str(pub.head().revision)
