"""The reader against the repository written by the real CernVM-FS 2.12 tools."""

from __future__ import annotations

import hashlib
import random
import stat

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.repository import Repository, open_repository
from pycvmfs.errors import TagNotFoundError
from pycvmfs.format.catalog import COUNTER_FIELDS
from pycvmfs.format.hashes import ObjectKind

# (selector for open_revision, tree name in expected.json)
REVISIONS = [({"tag": "v1"}, "rev1"), ({"tag": "v2"}, "rev2"), ({}, "rev2"),
             ({"revision": 2}, "rev1"), ({"date": "2026-11-24T20:48:42Z"}, "rev1")]


@pytest.fixture(params=["local", "http"])
def location(request, golden_repo, golden_server) -> str:
    if request.param == "local":
        return str(golden_repo)
    return f"{golden_server.url}/golden.example.org"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache per transport for the module: later tests read what earlier ones fetched."""
    return {"local": tmp_path_factory.mktemp("cache-local"),
            "http": tmp_path_factory.mktemp("cache-http")}


@pytest.fixture
def repo(location, golden_keys, shared_cache) -> Repository:
    kind = "http" if location.startswith("http") else "local"
    r = open_repository(location, keys=[golden_keys], cache_dir=shared_cache[kind])
    yield r
    r.close()


def _walk_all(view) -> dict:
    out = {}
    for _dirpath, dirs, files in view.walk("/"):
        for s in dirs + files:
            out[s.path.lstrip("/")] = s
    return out


@pytest.mark.parametrize(("selector", "tree"), REVISIONS,
                         ids=[f"{k}-{t}" for k, t in (("v1", 1), ("v2", 2), ("head", 2),
                                                        ("rev2", 1), ("date", 1))])
def test_every_path_matches_expected(repo, golden_expected, selector, tree):
    expected = golden_expected["trees"][tree]["entries"]
    with repo.open_revision(**selector) as view:
        got = _walk_all(view)
        assert sorted(got) == sorted(expected)  # nothing missing, nothing extra
        root = view.stat("/")
        assert root.is_dir
        assert f"{root.permissions:o}" == golden_expected["trees"][tree]["root"]["mode"]
        inodes = {}
        for path, exp in expected.items():
            s = got[path]
            assert s.type == exp["type"], path
            assert f"{s.permissions:o}" == exp["mode"], path
            assert s.st_mtime == exp["mtime"], path
            assert view.lstat(path).st_ino == s.st_ino
            inodes.setdefault(s.st_ino, []).append(path)
            if exp["type"] == "symlink":
                assert view.readlink(path) == exp["target"], path
                assert s.st_size == exp["size"], path
            elif exp["type"] == "file":
                assert s.st_size == exp["size"], path
                assert s.st_nlink == exp["published_nlink"], path
                assert hashlib.sha1(view.read_bytes(path)).hexdigest() == exp["sha1"], path
                xattrs = {k: v.hex() for k, v in view.xattrs(path).items()}
                assert xattrs == exp.get("xattrs_hex", {}), path
            else:
                nested = view.nested_hash(("/" + path).encode()) is not None
                assert nested == bool(exp.get("nested_catalog")), path
        # published as independent files: no two paths share an inode
        assert all(len(v) == 1 for v in inodes.values())


@pytest.mark.parametrize(("tag", "tree"), [("v1", "rev1"), ("v2", "rev2")])
def test_objects_and_chunks_match_what_stock_published(repo, golden_expected, tag, tree):
    files = golden_expected["published"]["files"][tree]
    with repo.open_revision(tag=tag) as view:
        for path, exp in files.items():
            s = view.stat(path)
            assert s.compression.config_name == exp["compression"]
            if "chunk_list" in exp:
                assert s.is_chunked and s.hash is None
                got = [{"hash": str(c.hash), "offset": c.offset, "size": c.size}
                       for c in view.chunks(path)]
                assert got == exp["chunk_list"], path
                assert exp["chunks"] == len(got)
            else:
                assert not s.is_chunked
                assert str(s.hash) == exp["cvmfs_hash"], path


@pytest.mark.parametrize(("tag", "tree"), [("v1", "rev1"), ("v2", "rev2")])
def test_catalog_hashes_and_counters_match(repo, golden_expected, tag, tree):
    expected = golden_expected["published"]["catalogs"][tree]
    with repo.open_revision(tag=tag) as view:
        cats = dict(view.catalogs())
        assert sorted(cats) == sorted(v["catalog_mountpoint"].encode() for v in expected.values())
        for info in expected.values():
            mp = info["catalog_mountpoint"].encode()
            assert str(view.nested_hash(mp)) == info["catalog_hash"]
            stats = cats[mp].statistics()
            for field in COUNTER_FIELDS:
                total = stats[f"self_{field}"] + stats[f"subtree_{field}"]
                assert total == info["counters"][field], (mp, field)


def test_first_revision_holds_only_new_repository(repo):
    with repo.open_revision(revision=1) as view:
        assert view.listdir("/") == ["new_repository"]
        assert view.read_bytes("new_repository") == (
            b"New CernVM-FS repository for golden.example.org\n")
    with repo.open_revision(revision=0) as view:  # made by mkfs, reached through previous_revision
        assert view.listdir("/") == []
        assert view.root_catalog.revision == 0


def test_tags_match_history(repo, golden_expected):
    got = {t.name: (str(t.root_hash), t.revision, t.timestamp, t.size, t.description)
           for t in repo.tags()}
    exp = {t["name"]: (t["root_hash"], t["revision"], t["timestamp"], t["root_catalog_size"],
                       t["description"]) for t in golden_expected["published"]["tags"]}
    assert got == exp


def test_manifest_fields_match(repo, golden_expected):
    m = repo.refresh().manifest
    exp = golden_expected["published"]["manifest"]
    assert str(m.root_catalog) == exp["C"] and m.revision == int(exp["S"])
    assert m.root_catalog_size == int(exp["B"]) and m.ttl == int(exp["D"])
    assert str(m.certificate) == exp["X"] and str(m.history) == exp["H"]
    assert m.publish_timestamp == int(exp["T"]) and m.fqrn == exp["N"]


def test_unknown_tag_and_revision_are_clear_errors(repo):
    with pytest.raises(TagNotFoundError, match="no-such-tag"):
        repo.open_revision(tag="no-such-tag")
    with pytest.raises(TagNotFoundError, match="revision 9"):
        repo.open_revision(revision=9)


def test_nested_mountpoint_stat_comes_from_parent_and_listing_from_child(repo):
    with repo.open_revision() as view:
        st = view.stat("/nested")
        assert st.is_dir and st.entry.is_nested_mountpoint
        assert view.loaded_catalog_count() == 1  # stat does not load the nested catalog
        names = view.listdir("/nested")
        assert ".cvmfscatalog" in names and "added-in-rev2.txt" in names
        assert view.loaded_catalog_count() == 2
        assert (view.read_bytes("nested/deeper/link-up")
                == view.read_bytes("nested/inside-nested.txt"))


def test_symlinks_are_followed_inside_the_repository(repo):
    with repo.open_revision() as view:
        hello = view.read_bytes("text/hello.txt")
        assert view.read_bytes("links/rel-link") == hello
        assert view.read_bytes("links/abs-link") == hello  # /cvmfs/<fqrn>/... maps into the repo
        assert view.read_bytes("links/dir-link/hello.txt") == hello
        assert view.lstat("links/rel-link").is_symlink
        assert view.stat("links/rel-link").is_file
        with pytest.raises(FileNotFoundError, match="dangling-link"):
            view.stat("links/dangling-link")


def test_random_reads_across_chunk_boundaries_fetch_only_needed_chunks(location, golden_keys,
                                                                       tmp_path):
    cache_dir = tmp_path / "cache"
    with open_repository(location, keys=[golden_keys], cache_dir=cache_dir) as repo, \
            repo.open_revision() as view:
        chunks = view.chunks("bin/blob-3m.bin")
        assert len(chunks) == 28
        whole = None
        # read across the border of chunks 5 and 6: exactly those two chunks are fetched
        border = chunks[6].offset
        with view.open("bin/blob-3m.bin") as f:
            before = repo.cache.stats["misses"]
            f.seek(border - 100)
            piece = f.read(200)
            assert repo.cache.stats["misses"] - before == 2
            for c in (chunks[5], chunks[6]):
                assert repo.cache.contains(c.hash)
            assert not repo.cache.contains(chunks[0].hash)
            whole = view.read_bytes("bin/blob-3m.bin")
            assert piece == whole[border - 100:border + 100]
            rng = random.Random(7)
            for _ in range(200):
                off = rng.randrange(0, len(whole))
                n = rng.randrange(0, 600_000)
                assert f.pread(n, off) == whole[off:off + n]
            f.seek(-10, 2)
            assert f.read() == whole[-10:]
            assert f.read() == b""


def test_cached_objects_are_not_fetched_again(golden_server, golden_keys, tmp_path):
    url = f"{golden_server.url}/golden.example.org"
    for round_ in range(2):
        with open_repository(url, keys=[golden_keys], cache_dir=tmp_path / "c") as repo, \
                repo.open_revision() as view:
            data = view.read_bytes("bin/blob-1m.bin")
            assert hashlib.sha1(data).hexdigest() == "97712686d5b80d123a83c725ac5397a68a73e739"
            misses = repo.cache.stats["misses"]
            if round_ == 0:
                assert misses > 11  # catalog, certificate and the 11 chunks
            else:
                assert misses == 0


def test_cache_objects_are_stored_decompressed_under_their_hash(repo):
    with repo.open_revision() as view:
        s = view.stat("README.txt")
        view.read_bytes("README.txt")
    path = repo.cache.path_for(s.hash)
    assert path.read_bytes() == b"Golden fixture repository golden.example.org\n"
    assert path.parent.name == str(s.hash)[:2]
    assert not any(repo.cache.txn.iterdir())  # nothing half-written left behind


def test_special_stat_fields(repo):
    with repo.open_revision() as view:
        s = view.stat("bin/run.sh")
        assert stat.S_ISREG(s.st_mode) and s.permissions == 0o755
        assert s.st_blocks == 1 + s.st_size // 512
        d = view.stat("many")
        assert d.st_nlink == 2 and d.st_size == 36864
        assert view.stat("/").st_nlink == 2 + len([x for x in view.scandir("/") if x.is_dir])


def test_cache_is_shared_between_repository_objects(golden_repo, golden_keys, tmp_path):
    from pycvmfs.format.signature import load_public_keys
    from pycvmfs.storage.local import LocalStorage

    cache = ObjectCache(tmp_path / "c")
    keys = load_public_keys([golden_keys])
    for _ in range(2):
        repo = Repository(LocalStorage(golden_repo), public_keys=keys,
                          fqrn="golden.example.org", cache=cache)
        with repo.open_revision() as view:
            view.read_bytes("text/about-200k.txt")
    assert cache.stats["hits"] >= 3
    assert cache.contains(repo.manifest.certificate)
    assert (tmp_path / "c" / "cvmfschecksum.golden.example.org").read_text().startswith(
        str(repo.manifest.root_catalog) + "T")
    _ = ObjectKind


def test_concurrent_reads_of_one_open_file_return_the_right_bytes(location, golden_keys,
                                                                   tmp_path):
    """The kernel reads ahead in parallel on one file handle: positional reads must not mix."""
    from concurrent.futures import ThreadPoolExecutor

    with open_repository(location, keys=[golden_keys], cache_dir=tmp_path / "c") as repo, \
            repo.open_revision() as view:
        whole = view.read_bytes("bin/blob-3m.bin")
        with view.open("bin/blob-3m.bin") as f:
            rng = random.Random(11)
            jobs = [(rng.randrange(0, len(whole)), rng.randrange(1, 300_000)) for _ in range(400)]
            with ThreadPoolExecutor(8) as pool:
                got = list(pool.map(lambda j: f.pread(j[1], j[0]), jobs))
        for (off, n), data in zip(jobs, got, strict=True):
            assert data == whole[off:off + n]
