"""pycvmfs.web.repoinfo on a repository our publisher made (four revisions, named, automatic
and undo tags, a nested catalog, a chunked file), read over real loopback HTTP."""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.client.repository import Repository, open_repository
from pycvmfs.errors import HashMismatchError, NoSuchPathError, TagNotFoundError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.web.repoinfo import (
    entry_details,
    revision_diff,
    revisions,
    size_history,
)
from web.conftest import iso

from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository

FQRN = "browse.example.org"
MTIME = 1_700_000_000
BIG = random.Random(15).randbytes(700_000)  # four to eleven chunks of 64..256 KiB
NEW_REPOSITORY = f"New CernVM-FS repository for {FQRN}\n".encode()




@dataclass
class Published:
    """The repository, what each revision holds (path: kind and content) and its head."""

    pub: Publisher
    url: str
    trees: dict[int, dict[str, tuple]] = field(default_factory=dict)
    roots: dict[int, str] = field(default_factory=dict)
    published: dict[int, int] = field(default_factory=dict)

    def record(self, revision: int, tree: dict[str, tuple]) -> None:
        head = self.pub.head()
        assert head.revision == revision
        self.trees[revision] = dict(tree)
        self.roots[revision] = str(head.root_catalog)
        self.published[revision] = head.publish_timestamp

    def expected_totals(self, revision: int) -> dict:
        """The tree figures counted from what was published (parents included)."""
        tree = self.trees[revision]
        dirs = {p for p, e in tree.items() if e[0] == "dir"}
        for p in tree:
            parts = p.strip("/").split("/")[:-1]
            dirs |= {"/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        files = [e[1] for e in tree.values() if e[0] == "file"]
        return {"files": len(files), "directories": len(dirs),
                "symlinks": sum(e[0] == "symlink" for e in tree.values()),
                "bytes": sum(len(d) for d in files)}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    base = tmp_path_factory.mktemp("repoinfo")
    settings = ServerSettings()
    settings.chunking = ChunkingParams(65536, 131072, 262144)
    pub = new_repository(base, FQRN, settings)
    server = LoopbackServer(base / "srv")
    done = Published(pub, f"{server.url}/{FQRN}")
    tree: dict[str, tuple] = {"/new_repository": ("file", NEW_REPOSITORY)}
    done.record(1, tree)

    v1 = {"/README.txt": b"read me\n", "/bin/tool": b"#!/bin/sh\necho tool\n",
          "/lib/big.bin": BIG, "/sub/.cvmfscatalog": b"", "/sub/a.txt": b"aaaa",
          "/sub/deep/b.txt": b"bbb"}
    with pub.transaction(tag="v1", message="first release") as txn:
        for path, data in v1.items():
            txn.add_file(path, data, mtime=MTIME, mode=0o755 if path == "/bin/tool" else None)
        txn.symlink("/latest", "lib/big.bin", mtime=MTIME)
    tree.update({p: ("file", d) for p, d in v1.items()})
    tree["/latest"] = ("symlink", "lib/big.bin")
    done.record(2, tree)

    with pub.transaction() as txn:  # an automatic tag
        txn.add_file("/README.txt", b"read me again\n", mtime=MTIME + 100)
        txn.remove("/sub/deep/b.txt")
        txn.add_file("/docs/guide.txt", b"the guide\n", mtime=MTIME)
        txn.symlink("/latest", "bin/tool", mtime=MTIME)
    tree.update({"/README.txt": ("file", b"read me again\n"), "/sub/deep": ("dir",),
                 "/docs/guide.txt": ("file", b"the guide\n"), "/latest": ("symlink", "bin/tool")})
    del tree["/sub/deep/b.txt"]
    done.record(3, tree)

    pub.tag("stable", root_hash=ContentHash.parse(done.roots[2]), message="kept")
    with pub.transaction(tag="v2") as txn:
        txn.add_file("/sub/c.txt", b"cc", mtime=MTIME)
    tree["/sub/c.txt"] = ("file", b"cc")
    done.record(4, tree)
    yield done
    server.stop()


@pytest.fixture
def repo(published: Published, tmp_path: Path) -> Iterator[Repository]:
    with open_repository(published.url, keys=[published.pub.config.key_path("pub")],
                         cache_dir=tmp_path / "cache") as r:
        yield r


def test_revisions_newest_first_with_tags_and_tree_totals(published: Published,
                                                           repo: Repository) -> None:
    rows = revisions(repo)
    assert [r["revision"] for r in rows] == [4, 3, 2, 1]
    for r in rows:
        rev = r["revision"]
        assert r["root_hash"] == published.roots[rev]
        assert (r["timestamp"], r["date"]) == (published.published[rev],
                                               iso(published.published[rev]))
        totals = published.expected_totals(rev)
        assert {k: r[k] for k in totals} == totals, rev
        assert (r["special"], r["external_files"], r["branch"]) == (0, 0, "")
        assert r["catalog_size"] > 0
    by_rev = {r["revision"]: r for r in rows}
    assert [(r["named_tags"], r["trunk"], r["head"]) for r in rows] == [
        (["v2"], True, True), ([], False, False), (["stable", "v1"], False, False),
        ([], False, False)]
    kinds = {rev: sorted((t["kind"], t["name"]) for t in r["tags"]
                         if t["kind"] != "auto") for rev, r in by_rev.items()}
    assert kinds == {4: [("named", "v2"), ("undo", "trunk")],
                     3: [("undo", "trunk-previous")],
                     2: [("named", "stable"), ("named", "v1")], 1: []}
    autos = {rev: [t["name"] for t in r["tags"] if t["kind"] == "auto"]
             for rev, r in by_rev.items()}
    assert [len(autos[rev]) for rev in (4, 3, 2, 1)] == [0, 1, 0, 1]
    v1 = next(t for t in by_rev[2]["tags"] if t["name"] == "v1")
    assert (v1["description"], v1["date"]) == ("first release", iso(published.published[2]))
    # the chunked file and the nested catalog in the counters
    assert (by_rev[2]["chunked_files"], by_rev[1]["chunked_files"]) == (1, 0)
    assert by_rev[2]["file_chunks"] >= 3
    assert [by_rev[rev]["nested_catalogs"] for rev in (4, 3, 2, 1)] == [1, 1, 1, 0]
    assert revisions(repo, limit=2) == rows[:2]
    assert revisions(repo, limit=0) == []


def test_size_history_oldest_first(published: Published, repo: Repository) -> None:
    expected = [{"revision": rev, "date": iso(published.published[rev]),
                 "bytes": published.expected_totals(rev)["bytes"],
                 "files": published.expected_totals(rev)["files"]} for rev in (1, 2, 3, 4)]
    assert size_history(repo) == expected
    assert expected[1]["bytes"] == len(BIG) + 8 + 20 + 4 + 3 + len(NEW_REPOSITORY)


def test_revision_diff_between_tags_numbers_and_below_a_path(repo: Repository) -> None:
    diff = revision_diff(repo, "v1", "v2")
    assert (diff["a"]["revision"], diff["b"]["revision"], diff["truncated"]) == (2, 4, False)
    assert diff["added"] == [{"path": "/docs", "type": "dir"},
                             {"path": "/docs/guide.txt", "type": "file"},
                             {"path": "/sub/c.txt", "type": "file"}]
    assert diff["removed"] == [{"path": "/sub/deep/b.txt", "type": "file"}]
    assert diff["changed"] == [
        {"path": "/README.txt", "type": "file", "fields": ["content", "mtime"]},
        {"path": "/latest", "type": "symlink", "fields": ["target"]}]
    assert revision_diff(repo, 2, "4") == diff  # revision numbers, as ints or digits
    back = revision_diff(repo, None, "stable")  # head -> the named tag on revision 2
    assert (back["added"], back["removed"]) == (diff["removed"], diff["added"])

    capped = revision_diff(repo, "v1", "v2", limit=2)
    assert capped["truncated"] is True
    # the first two changes in path order: /README.txt, then /docs
    assert (capped["changed"], capped["added"], capped["removed"]) == (
        diff["changed"][:1], diff["added"][:1], [])
    assert revision_diff(repo, "v1", "v2", limit=6)["truncated"] is False

    sub = revision_diff(repo, "v1", "v2", path="/sub")
    assert (sub["added"], sub["removed"], sub["changed"]) == (
        [{"path": "/sub/c.txt", "type": "file"}], [{"path": "/sub/deep/b.txt", "type": "file"}],
        [])
    same = revision_diff(repo, 3, 3)
    assert (same["added"], same["removed"], same["changed"], same["truncated"]) == (
        [], [], [], False)
    with pytest.raises(TagNotFoundError, match="no-such-tag"):
        revision_diff(repo, "no-such-tag", None)


def _stored(published: Published, h: str, kind: ObjectKind) -> bytes:
    return (published.pub.config.storage / ContentHash.parse(h).object_path(kind)).read_bytes()


def test_entry_details_of_a_chunked_file(published: Published, repo: Repository) -> None:
    d = entry_details(repo, "/lib/big.bin", "v1")
    assert (d["revision"], d["root_hash"], d["path"], d["name"], d["type"]) == (
        2, published.roots[2], "/lib/big.bin", "big.bin", "file")
    assert (d["size"], d["mode"], d["mode_octal"], d["mtime"], d["mtime_timestamp"]) == (
        len(BIG), 0o644, "0644", iso(MTIME), MTIME)
    assert (d["chunked"], d["compression"], d["external"], d["links"]) == (
        True, "zlib", False, 1)
    chunks = d["chunks"]
    assert len(chunks) >= 3
    offset = 0
    for c in chunks:  # they tile the file, each one the stored object its hash names
        assert c["offset"] == offset
        raw = _stored(published, c["hash"], ObjectKind.PARTIAL)
        assert hashlib.sha1(raw).hexdigest() == c["hash"]
        assert zlib.decompress(raw) == BIG[offset:offset + c["size"]]
        offset += c["size"]
    assert offset == len(BIG)
    assert entry_details(repo, "/lib/big.bin", 2) == d


def test_entry_details_of_a_file_a_directory_and_a_symlink(published: Published,
                                                            repo: Repository) -> None:
    tool = entry_details(repo, "/bin/tool")
    assert (tool["revision"], tool["mode"], tool["chunked"], tool["chunks"]) == (
        4, 0o755, False, [])
    raw = _stored(published, tool["hash"], ObjectKind.FILE)
    assert hashlib.sha1(raw).hexdigest() == tool["hash"]
    assert zlib.decompress(raw) == b"#!/bin/sh\necho tool\n" and tool["size"] == 20

    sub = entry_details(repo, "/sub", "v1")
    assert [(c["name"], c["type"], c["size"]) for c in sub["children"]] == [
        (".cvmfscatalog", "file", 0), ("a.txt", "file", 4), ("deep", "dir", 4096)]
    assert sub["children"][1]["path"] == "/sub/a.txt" and sub["truncated"] is False
    nested = sub["nested_catalog"]  # the catalog mounted at /sub, stored under its hash
    raw = _stored(published, nested, ObjectKind.CATALOG)
    assert hashlib.sha1(raw).hexdigest() == nested
    assert entry_details(repo, "/", 1)["children"][0]["name"] == "new_repository"
    assert entry_details(repo, "/")["nested_catalog"] == published.roots[4]
    assert entry_details(repo, "/bin")["nested_catalog"] is None
    capped = entry_details(repo, "/sub", max_children=2)
    assert [c["name"] for c in capped["children"]] == [".cvmfscatalog", "a.txt"]
    assert capped["truncated"] is True

    assert entry_details(repo, "/latest", "v1")["target"] == "lib/big.bin"
    link = entry_details(repo, "/latest")
    assert (link["type"], link["target"], link["size"]) == ("symlink", "bin/tool", 8)
    with pytest.raises(NoSuchPathError, match=re.escape("/sub/deep/b.txt")):
        entry_details(repo, "/sub/deep/b.txt")
    assert entry_details(repo, "/sub/deep/b.txt", "v1")["size"] == 3


def test_a_tampered_catalog_of_an_old_revision_is_refused(published: Published,
                                                          tmp_path: Path) -> None:
    storage = tmp_path / FQRN
    shutil.copytree(published.pub.config.storage, storage)
    victim = storage / ContentHash.parse(published.roots[1]).object_path(ObjectKind.CATALOG)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    with open_repository(str(storage), keys=[published.pub.config.key_path("pub")],
                         cache_dir=tmp_path / "cache") as repo:
        assert [r["revision"] for r in revisions(repo, limit=3)] == [4, 3, 2]
        with pytest.raises(HashMismatchError, match=published.roots[1]):
            revisions(repo)
