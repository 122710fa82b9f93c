"""Every catalog the stock tools wrote, read row by row with our catalog reader."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import FormatError
from pycvmfs.format.catalog import COUNTER_NAMES, Catalog, parent_path
from pycvmfs.format.hashes import ContentHash, ObjectKind, hash_bytes, md5_pair


def _catalog_objects(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "data").rglob("*C") if p.is_file())


@pytest.fixture(scope="module")
def golden_catalogs(golden_repo, tmp_path_factory) -> dict[str, Path]:
    """Every C object of the golden storage, decompressed: {textual hash: sqlite path}."""
    out = {}
    tmp = tmp_path_factory.mktemp("catalogs")
    for p in _catalog_objects(golden_repo):
        raw = p.read_bytes()
        name = p.parent.name + p.name[:-1]
        assert str(hash_bytes(raw)) == name  # named by the hash of the stored bytes
        assert zlib.compress(zlib.decompress(raw)) == raw  # our compressor gives stock bytes
        dest = tmp / name
        dest.write_bytes(zlib.decompress(raw))
        out[name] = dest
    return out


def test_the_golden_storage_has_every_catalog_of_every_revision(golden_catalogs):
    # revisions 0..3 root catalogs, /nested and /nested/deeper of two revisions (deeper unchanged)
    assert len(golden_catalogs) >= 6


def test_every_row_is_reachable_and_keyed_by_the_md5_of_its_path(golden_catalogs):
    for name, path in golden_catalogs.items():
        with Catalog.open(path, what=f"catalog {name}", hash=ContentHash.parse(name)) as cat:
            prefix = cat.root_prefix
            root = cat.lookup(prefix)
            assert root is not None and (root.is_nested_root == bool(prefix))
            expected_parent = (0, 0) if prefix == b"" else md5_pair(parent_path(prefix))
            assert root.parent == expected_parent
            seen = {root.rowid}
            stack = [prefix]
            mountpoints = {ref.path for ref in cat.nested_catalogs()}
            while stack:
                d = stack.pop()
                for e in cat.listing(d):
                    p = d + b"/" + e.name
                    assert e.md5path == md5_pair(p) and e.parent == md5_pair(d)
                    assert cat.lookup(p) == e
                    seen.add(e.rowid)
                    if e.is_nested_mountpoint:
                        assert p in mountpoints and cat.listing(p) == []
                    elif e.is_dir:
                        stack.append(p)
                    if e.is_chunked:
                        chunks = cat.chunks(p, e)
                        assert len(chunks) >= 2 and e.hash is None
                    if e.is_dir:
                        subdirs = [c for c in cat.listing(p) if c.is_dir]
                        if not e.is_nested_mountpoint:
                            assert e.linkcount == 2 + len(subdirs), p
            assert seen == {e.rowid for e in cat.entries()}, "orphan rows"
            assert cat.orphan_chunk_count() == 0


def test_counters_are_all_present_and_self_counts_match_rows(golden_catalogs):
    for name, path in golden_catalogs.items():
        with Catalog.open(path, what=name) as cat:
            stats = cat.statistics()
            raw = {r[0] for r in sqlite3.connect(path).execute("SELECT counter FROM statistics")}
            assert raw == set(COUNTER_NAMES)
            entries = list(cat.entries())
            assert stats["self_regular"] == sum(e.is_regular for e in entries)
            assert stats["self_symlink"] == sum(e.is_symlink for e in entries)
            assert stats["self_dir"] == sum(e.is_dir for e in entries)
            assert stats["self_chunked"] == sum(e.is_chunked for e in entries)
            assert stats["self_file_size"] == sum(e.size for e in entries if e.is_regular)
            assert stats["self_xattr"] == sum(e.xattr_blob is not None for e in entries)
            assert stats["self_nested"] == len(cat.nested_catalogs())
            assert stats["self_chunks"] == len(list(cat.all_chunk_hashes()))


def test_data_object_names_from_catalogs_exist_in_storage(golden_catalogs, golden_repo):
    for name, path in golden_catalogs.items():
        with Catalog.open(path, what=name) as cat:
            for h, _comp, _size in cat.all_file_hashes():
                assert (golden_repo / h.object_path()).is_file()
            for h, _comp, _size in cat.all_chunk_hashes():
                assert (golden_repo / h.object_path(ObjectKind.PARTIAL)).is_file()


def _downgrade(src: Path, dest: Path, *, schema: str, revision: int) -> None:
    dest.write_bytes(src.read_bytes())
    db = sqlite3.connect(dest)
    if revision < 7:
        db.execute("ALTER TABLE catalog DROP COLUMN mtimens")
    if revision < 4:
        db.execute("DROP TABLE bind_mountpoints")
    if revision < 2:
        db.execute("ALTER TABLE catalog DROP COLUMN xattr")
    if revision < 1:
        db.execute("ALTER TABLE nested_catalogs DROP COLUMN size")
    db.execute("UPDATE properties SET value=? WHERE key='schema'", (schema,))
    db.execute("UPDATE properties SET value=? WHERE key='schema_revision'", (str(revision),))
    db.commit()
    db.close()


@pytest.mark.parametrize(("schema", "revision"), [("2.5", 6), ("2.5", 3), ("2.4", 1), ("2.4", 0)])
def test_older_schema_revisions_read_by_column_name(golden_catalogs, tmp_path, schema, revision):
    src = golden_catalogs["434e2742ad19baa1f5be5ffcb3c755ecabae7562"]
    dest = tmp_path / "old.db"
    _downgrade(src, dest, schema=schema, revision=revision)
    with Catalog.open(src, what="new") as new, Catalog.open(dest, what="old") as old:
        assert old.schema_revision == revision
        for path in (b"/text/about-200k.txt", b"/xattr/with-xattr.txt", b"/links/rel-link"):
            a, b = new.lookup(path), old.lookup(path)
            assert (a.name, a.mode, a.size, a.hash, a.symlink) == (b.name, b.mode, b.size, b.hash,
                                                                  b.symlink)
            if revision < 2:
                assert b.xattr_blob is None
        assert old.chunks(b"/text/about-200k.txt") == new.chunks(b"/text/about-200k.txt")
        assert [r.path for r in old.nested_catalogs()] == [b"/nested"]
        if revision < 1:
            assert old.nested_catalogs()[0].size == 0
        assert old.bind_mountpoints() == []


@pytest.mark.parametrize("schema", ["2.0", "2.3", "2.6", "3.0", "abc"])
def test_schemas_the_stock_client_rejects_are_rejected(golden_catalogs, tmp_path, schema):
    src = golden_catalogs["434e2742ad19baa1f5be5ffcb3c755ecabae7562"]
    dest = tmp_path / "bad.db"
    dest.write_bytes(src.read_bytes())
    db = sqlite3.connect(dest)
    db.execute("UPDATE properties SET value=? WHERE key='schema'", (schema,))
    db.commit()
    db.close()
    with pytest.raises(FormatError, match="bad catalog"):
        Catalog.open(dest, what="bad catalog")
