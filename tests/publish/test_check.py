"""The repository check: clean repositories pass; each kind of damage is found and named."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sqlite3
import zlib
from collections import Counter
from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.hashes import ContentHash, ObjectKind, md5_pair
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.publish.signing import switch_manifest

FQRN = "check.example.org"
SMALL_CHUNKS = ChunkingParams(65536, 131072, 262144)  # the golden fixture's sizes
BIG = bytes((i * 7919) % 251 for i in range(300_000))  # chunked with 64/128/256 KiB chunks


def _tree(root: Path) -> None:
    (root / "dir" / "empty").mkdir(parents=True)
    (root / "dir" / "a.txt").write_bytes(b"a\n")
    (root / "empty-file").write_bytes(b"")
    (root / "big.bin").write_bytes(BIG)
    (root / "hl").mkdir()
    (root / "hl" / "one").write_bytes(b"linked\n")
    os.link(root / "hl" / "one", root / "hl" / "two")
    os.symlink("dir/a.txt", root / "link")
    os.symlink("/cvmfs/$(ARCH:-x86)/abs", root / "variant-link")
    os.mkfifo(root / "fifo")
    (root / "attrs").write_bytes(b"x")
    os.setxattr(root / "attrs", "user.one", b"1")
    os.setxattr(root / "dir", "user.dir", b"on a directory")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / ".cvmfscatalog").write_bytes(b"")
    (root / "sub" / "inner.txt").write_bytes(b"in a nested catalog\n")
    (root / "sub" / "deeper" / ".cvmfscatalog").write_bytes(b"")
    (root / "sub" / "deeper" / "leaf.txt").write_bytes(b"two levels down\n")
    (root / "sub" / "plain").mkdir()
    (root / "sub" / "plain" / "f").write_bytes(b"f\n")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Two revisions (the second changes a nested file) and a tag, with every entry kind."""
    base = tmp_path_factory.mktemp("check-template")
    settings = ServerSettings(include_xattrs=True, chunking=SMALL_CHUNKS)
    pub = Publisher.mkfs(FQRN, base / "srv" / FQRN, config_dir=base / "etc", settings=settings)
    src = base / "src"
    _tree(src)
    with pub.transaction(tag="first") as txn:
        txn.add_tree(src, "/", delete=True)
    (src / "sub" / "inner.txt").write_bytes(b"changed\n")
    with pub.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    return base


@pytest.fixture
def repo(template, tmp_path) -> Publisher:
    """A private copy of the template repository (configuration, keys and storage)."""
    dest = tmp_path / "repo"
    for path in template.rglob("*"):  # files only: empty data/XX folders cost time to copy
        rel = path.relative_to(template)
        if path.is_file() and rel.parts[0] != "src":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
    conf = dest / "etc" / "repositories.d" / FQRN / "server.conf"
    conf.write_text(conf.read_text().replace(str(template), str(dest)))
    return Publisher.open(FQRN, config_dir=dest / "etc")


def _object(content: bytes, suffix: str = "") -> str:
    """Where the publisher stores ``content`` (zlib, SHA-1)."""
    h = hashlib.sha1(zlib.compress(content)).hexdigest()
    return f"data/{h[:2]}/{h[2:]}{suffix}"


def _stored_by_kind(storage: Path) -> Counter:
    kinds = {"": "data object", "P": "chunk", "C": "catalog", "H": "history database",
             "X": "certificate", "M": "meta-info object"}
    out = Counter()
    for p in (storage / "data").rglob("*"):
        if p.is_file() and p.parent.name != "txn":
            last = p.name[-1]
            out[kinds[last if last in "PCHXM" else ""]] += 1
    return out


def _problems(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_a_published_repository_passes_with_every_object_checked_once(repo):
    storage = repo.config.storage
    calls = []
    report = check_repository(repo, all_revisions=True, progress=lambda *a: calls.append(a))
    assert report.ok, _problems(report)
    assert report.revisions == [3, 2, 1, 0]
    assert calls[-1] == ("checking", report.objects, None)
    # never collected: every stored object belongs to a checked revision, each counted once;
    # of the history objects only the current one is part of a revision
    expected = _stored_by_kind(storage)
    assert expected["history database"] > 1
    expected["history database"] = 1
    assert report.checked == expected
    assert report.catalogs == expected["catalog"]
    current_history = repo.head().history.object_path(ObjectKind.HISTORY)
    assert report.stored_bytes == sum(
        p.stat().st_size for p in (storage / "data").rglob("*") if p.is_file()
        and (p.name[-1] != "H" or p.relative_to(storage).as_posix() == current_history))
    # the storage alone is enough (manifest checked against its own certificate)
    alone = check_repository(storage)
    assert alone.ok, _problems(alone)
    assert alone.revisions == [3]
    assert alone.objects < report.objects


def test_the_golden_fixture_passes(golden_copy):
    report = check_repository(golden_copy, all_revisions=True)
    assert report.ok, _problems(report)
    assert report.fqrn == "golden.example.org"
    assert report.revisions == [3, 2, 1, 0]
    expected = _stored_by_kind(golden_copy)
    expected["history database"] = 1
    assert report.checked == expected


def test_a_missing_object_is_named_with_its_path(repo):
    (repo.config.storage / _object(b"changed\n")).unlink()
    report = check_repository(repo)
    assert len(report.problems) == 1, _problems(report)
    p = report.problems[0]
    assert p.object == "data object " + _object(b"changed\n")[5:].replace("/", "")
    assert p.path == "/sub/inner.txt"
    assert "missing" in p.message


def _nested_hash(pub, path: str, tmp: Path) -> str:
    """The hash of the nested catalog at ``path`` in the newest revision (via plain SQL)."""
    h, at = str(pub.head().root_catalog), ""
    for part in path.strip("/").split("/"):
        at += "/" + part
        db = tmp / "lookup.db"
        db.write_bytes(zlib.decompress((pub.store.root / f"data/{h[:2]}/{h[2:]}C").read_bytes()))
        conn = sqlite3.connect(db)
        (h,) = conn.execute("SELECT sha1 FROM nested_catalogs WHERE path = ?", (at,)).fetchone()
        conn.close()
    return h


@pytest.mark.parametrize("kind", ["chunk", "catalog"])
def test_a_corrupted_object_is_named(repo, tmp_path, kind):
    storage = repo.config.storage
    if kind == "chunk":
        target = next(p for p in (storage / "data").rglob("*P"))
        path = "/big.bin"
    else:
        h = _nested_hash(repo, "/sub/deeper", tmp_path)
        target = storage / f"data/{h[:2]}/{h[2:]}C"
        path = "/sub/deeper"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    report = check_repository(repo)
    assert len(report.problems) == 1, _problems(report)
    p = report.problems[0]
    assert p.object == f"{kind} {target.parent.name}{target.name}"
    assert p.path == path
    assert "hash mismatch" in p.message


def test_a_tampered_manifest_is_found(repo):
    path = repo.config.storage / ".cvmfspublished"
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\nD240\n", b"\nD241\n"))
    report = check_repository(repo.config.storage)
    assert [p.object for p in report.problems] == [".cvmfspublished"]
    assert "signature" in report.problems[0].message


def _edit(pub, mountpoint: str, sql: str, tmp: Path) -> str:
    """Change a catalog of the newest revision with ``sql`` (the root's or that of a direct
    nested catalog), store it under its new hash, re-point its parent and publish the result
    as a properly signed manifest. Returns the edited catalog's new hash."""
    store, head = pub.store, pub.head()

    def load(h: str) -> Path:
        db = tmp / f"{h}.db"
        db.write_bytes(zlib.decompress((store.root / f"data/{h[:2]}/{h[2:]}C").read_bytes()))
        return db

    def save(db: Path) -> tuple[str, int]:
        raw = db.read_bytes()
        packed = zlib.compress(raw)
        h = hashlib.sha1(packed).hexdigest()
        store.put_bytes(f"data/{h[:2]}/{h[2:]}C", packed)
        return h, len(raw)

    def run(db: Path, statement: str, params: tuple = ()) -> None:
        conn = sqlite3.connect(db)
        conn.execute(statement, params)
        conn.commit()
        conn.close()

    root = load(str(head.root_catalog))
    if mountpoint:
        conn = sqlite3.connect(root)
        (child_hash,) = conn.execute("SELECT sha1 FROM nested_catalogs WHERE path = ?",
                                     (mountpoint,)).fetchone()
        conn.close()
        child = load(child_hash)
        run(child, sql)
        edited, size = save(child)
        run(root, "UPDATE nested_catalogs SET sha1 = ?, size = ? WHERE path = ?",
            (edited, size, mountpoint))
    else:
        run(root, sql)
    root_hash, root_size = save(root)
    new = dataclasses.replace(head, root_catalog=ContentHash.parse(root_hash),
                              root_catalog_size=root_size)
    switch_manifest(store, pub.config, pub.keys, new, previous=head)
    return root_hash if not mountpoint else edited


GHOST = md5_pair(b"/sub/ghost") + md5_pair(b"/sub")
IN_MOUNTPOINT = ("INSERT INTO catalog SELECT {}, {}, {}, {}, hardlinks, hash, size, mode, mtime, "
                 "mtimens, flags, 'ghost', symlink, uid, gid, xattr FROM catalog "
                 "WHERE name = 'a.txt'").format(*GHOST)
ORPHAN = ("INSERT INTO catalog SELECT md5path_1 + 1, md5path_2, 12345, 67890, hardlinks, hash, "
          "size, mode, mtime, mtimens, flags, 'ghost', symlink, uid, gid, xattr FROM catalog "
          "WHERE name = 'a.txt'")


# case -> (catalog to edit, SQL, expected problems as (object, path, message)); in objects,
# EDITED is the edited catalog, SUB the nested catalog at /sub, ROOT the new root catalog
CASES = {
    "counter": ("/sub", "UPDATE statistics SET value = value + 1 WHERE counter = 'self_regular'",
                [("EDITED", "/sub", "counter self_regular is 4, the rows give 3")]),
    "subtree": ("", "UPDATE statistics SET value = value + 1 WHERE counter = 'subtree_dir'",
                [("EDITED", "/", "counter subtree_dir is 5, the rows give 4")]),
    "linkcount": ("", "UPDATE catalog SET hardlinks = 4 WHERE name = 'dir'",
                  [("EDITED", "/dir", "directory linkcount is 4, expected 3 "
                                      "(2 + 1 subdirectories)")]),
    "orphan": ("", ORPHAN, [("EDITED", "/", "1 rows not reachable from the catalog root "
                                            "(e.g. 'ghost')")]),
    "orphan-nested": ("/sub", ORPHAN.replace("'a.txt'", "'inner.txt'"),
                      [("EDITED", "/sub", "1 rows not reachable from the catalog root "
                                          "(e.g. 'ghost')")]),
    "hardlink-count": ("", "UPDATE catalog SET hardlinks = hardlinks + 1 WHERE name = 'one'",
                       [("EDITED", "/hl/one", "hard-link group 1 has 2 members here, linkcount "
                                              "is 3"),
                        ("EDITED", "/hl/two", "hard-link group 1: attributes differ from one")]),
    "hardlink-directories": ("", "UPDATE catalog SET hardlinks = (1 << 32) | 2 "
                                 "WHERE name = 'a.txt'",
                             [("EDITED", "/dir/a.txt", "hard-link group 1 has 1 members here, "
                                                       "linkcount is 2"),
                              ("EDITED", "/", "hard-link group 1 spans several directories "
                                              "(a.txt, one, two)")]),
    "mountpoint-not-empty": ("", IN_MOUNTPOINT,
                             [("EDITED", "/sub", "mount point is not empty in the parent "
                                                 "catalog"),
                              ("EDITED", "/", "1 rows not reachable from the catalog root "
                                              "(e.g. 'ghost')")]),
    "file-without-hash": ("", "UPDATE catalog SET hash = NULL WHERE name = 'attrs'",
                          [("EDITED", "/attrs", "regular file without a content hash")]),
    "symlink-with-hash": ("", "UPDATE catalog SET hash = x'00112233445566778899aabbccddeeff"
                              "00112233' WHERE name = 'link'",
                          [("EDITED", "/link", "symbolic link with a content hash"),
                           ("data object 00112233445566778899aabbccddeeff00112233", "/link",
                            "missing from the storage")]),
    "fifo-with-target": ("", "UPDATE catalog SET symlink = 'x' WHERE name = 'fifo'",
                         [("EDITED", "/fifo", "special file with a symlink target")]),
    "chunk-tiling": ("", "UPDATE chunks SET offset = offset + 1 WHERE offset > 0",
                     [("EDITED", "/big.bin", "chunks do not tile the file: chunk at offset "
                                             "262145, expected 262144"),
                      ("EDITED", "/big.bin", "chunks cover 300001 bytes, the file has 300000")]),
    "nested-size": ("", "UPDATE nested_catalogs SET size = size + 1024 WHERE path = '/sub'",
                    [("SUB", "/sub", "uncompressed size is {sub} bytes, but {sub+1024} is "
                                     "recorded for it")]),
    "transition-point": ("", "UPDATE catalog SET mtime = mtime + 1 WHERE name = 'sub'",
                         [("SUB", "/sub", "the nested root entry differs from the mount point "
                                          "entry in the parent in mtime")]),
    "marker": ("/sub", "DELETE FROM catalog WHERE name = '.cvmfscatalog'",
               [("EDITED", "/sub", "nested catalog without its .cvmfscatalog marker"),
                ("EDITED", "/sub", "counter self_regular is 3, the rows give 2"),
                ("ROOT", "/", "counter subtree_regular is 5, the rows give 4")]),
    "empty-name": ("/sub", "UPDATE catalog SET name = '' WHERE name = 'inner.txt'",
                   [("EDITED", "/sub/", "path hashes (md5path/parent) do not match the path"),
                    ("EDITED", "/sub/", "empty name")]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_catalog_invariant_is_named(repo, tmp_path, case):
    mountpoint, sql, expected = CASES[case]
    edited = _edit(repo, mountpoint, sql, tmp_path)
    root = str(repo.head().root_catalog)
    conn = sqlite3.connect(tmp_path / "root.db")
    (tmp_path / "root.db").write_bytes(zlib.decompress(
        (repo.store.root / f"data/{root[:2]}/{root[2:]}C").read_bytes()))
    sub, sub_size = conn.execute(
        "SELECT sha1, size FROM nested_catalogs WHERE path = '/sub'").fetchone()
    conn.close()
    names = {"EDITED": f"catalog {edited}C", "SUB": f"catalog {sub}C",
             "ROOT": f"catalog {root}C"}
    real_sub = len(zlib.decompress((repo.store.root / f"data/{sub[:2]}/{sub[2:]}C")
                                   .read_bytes()))
    want = [(names.get(o, o), p, m.replace("{sub}", str(real_sub))
             .replace("{sub+1024}", str(sub_size))) for o, p, m in expected]
    report = check_repository(repo)
    assert [(p.object, p.path, p.message) for p in report.problems] == want
