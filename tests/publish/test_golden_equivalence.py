"""Publishing the golden fixture's source trees gives what the stock tools published."""

from __future__ import annotations

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.format.hashes import ObjectKind

from helpers.publishing import reader


@pytest.fixture(scope="module")
def published(golden_source_trees, tmp_path_factory):
    """The fixture's rev1 then rev2 published like the golden repository (chunk sizes
    64/128/256 KiB, xattrs on), with tags v1 and v2."""
    from pycvmfs.format.chunking import ChunkingParams
    from pycvmfs.publish.config import ServerSettings
    from pycvmfs.publish.repository import Publisher

    base = tmp_path_factory.mktemp("equiv")
    settings = ServerSettings(include_xattrs=True,
                              chunking=ChunkingParams(65536, 131072, 262144))
    pub = Publisher.mkfs("golden.example.org", base / "srv" / "golden.example.org",
                         config_dir=base / "etc", settings=settings)
    with pub.transaction(tag="v1") as txn:
        txn.add_tree(golden_source_trees / "rev1", "/", delete=True)
    with pub.transaction(tag="v2") as txn:
        txn.add_tree(golden_source_trees / "rev2", "/", delete=True)
    return pub, base


@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_same_paths_kinds_modes_sizes_links_and_catalogs_as_stock(published, golden_repo,
                                                                   golden_keys, tmp_path, tag):
    pub, _ = published
    with reader(pub, tmp_path / "ours") as ours_repo, \
            open_repository(str(golden_repo), keys=[golden_keys],
                            cache_dir=tmp_path / "stock") as stock_repo, \
            ours_repo.open_revision(tag=tag) as ours, stock_repo.open_revision(tag=tag) as stock:
        mine = {s.path: s for _d, ds, fs in ours.walk("/") for s in ds + fs}
        theirs = {s.path: s for _d, ds, fs in stock.walk("/") for s in ds + fs}
        assert sorted(mine) == sorted(theirs)
        for path, t in theirs.items():
            m = mine[path]
            assert (m.type, m.permissions, m.st_size) == (t.type, t.permissions, t.st_size), path
            if t.is_symlink:
                assert m.raw_symlink == t.raw_symlink
            if t.is_file:
                # identical input gives identical object names (stock zlib output is reproduced)
                assert m.hash == t.hash, path
                assert m.is_chunked == t.is_chunked, path
                if t.is_chunked:
                    assert ours.chunks(path) == stock.chunks(path), path
                assert ours.xattrs(path) == stock.xattrs(path), path
                if not path.startswith("/hardlinks/"):  # stock (overlayfs) splits hard links
                    assert m.st_nlink == t.st_nlink
            if t.is_dir:
                assert (ours.nested_hash(path.encode()) is None) == (
                    stock.nested_hash(path.encode()) is None), path
                assert m.st_nlink == t.st_nlink, path
        # the same nested catalog mount points, and the same counters in each
        mine_cats = dict(ours.catalogs())
        theirs_cats = dict(stock.catalogs())
        assert sorted(mine_cats) == sorted(theirs_cats)
        for mp, cat in theirs_cats.items():
            a, b = mine_cats[mp].statistics(), cat.statistics()
            for k in a:
                if k.endswith(("_regular", "_symlink", "_dir", "_nested", "_chunked", "_chunks",
                               "_file_size", "_chunked_size", "_xattr", "_special")):
                    assert a[k] == b[k], (mp, k)


def test_every_stock_object_name_of_the_tree_exists_in_ours(published, golden_expected):
    pub, _ = published
    storage = pub.config.storage
    for tree in ("rev1", "rev2"):
        for path, info in golden_expected["published"]["files"][tree].items():
            if "chunk_list" in info:
                for c in info["chunk_list"]:
                    p = storage / f"data/{c['hash'][:2]}/{c['hash'][2:]}{ObjectKind.PARTIAL.value}"
                    assert p.is_file(), (path, c)
            else:
                h = info["cvmfs_hash"]
                assert (storage / f"data/{h[:2]}/{h[2:]}").is_file(), path


def test_revision_chain_and_tags(published, tmp_path):
    pub, _ = published
    head = pub.head()
    assert head.revision == 3  # mkfs made 0 and 1, then v1 and v2
    tags = {t.name: t for t in pub.tags()}
    assert tags["v2"].revision == 3 and tags["v1"].revision == 2
    assert tags["trunk"].root_hash == head.root_catalog
    assert tags["trunk-previous"].revision == 2
    assert not any(n.startswith("generic-") and t.revision > 1 for n, t in tags.items())
    with reader(pub, tmp_path / "c") as r:
        assert r.open_revision(revision=1).listdir("/") == ["new_repository"]
        root0 = r.open_revision(revision=0)
        assert root0.listdir("/") == [] and root0.root_catalog.previous_revision is None
